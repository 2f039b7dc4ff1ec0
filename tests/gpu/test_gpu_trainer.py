"""a. `longvivit train` on one GPU: NCCL at world size 1, ZeRO-3 in bf16, synthetic clips;
a run stopped at step 10 and resumed reproduces the straight run (bench/gpu.py
check_trainer; the tolerance and why it is not bitwise are there)."""
import gpu

CHECK = "trainer"


def test_runs_exit_zero_over_nccl_with_finite_losses(record):
    assert record["exit_codes"] == {"straight": 0, "first_half": 0, "second_half": 0}, \
        record.get("failed_output", record["exit_codes"])
    assert set(record["backend"].values()) == {"nccl"}, record["backend"]  # the start line's process group
    assert record["steps_straight"] == list(range(1, record["steps"] + 1))
    assert record["finite"], (record["losses_straight"], record["losses_resumed"])


def test_stopped_and_resumed_run_reproduces_the_straight_run(record):
    assert record["steps_resumed"] == list(range(1, record["steps"] + 1))
    assert record["indices_equal"]
    assert record["max_rel_diff"] <= gpu.RESUME_RTOL, (record["max_abs_diff"], record["max_rel_diff"])
