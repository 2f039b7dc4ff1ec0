"""h. Two ranks over NCCL on two GPUs (torchrun), then the run resumed on one GPU from their
checkpoint (bench/gpu.py check_two_gpu); skipped on a machine with one GPU."""
import gpu

CHECK = "two_gpu"


def test_two_ranks_over_nccl_then_the_resume_on_one_gpu(record):
    assert record["exit_codes"] == {"two_ranks": 0, "one_rank": 0}, record.get("failed_output", record)
    two, one = record["starts"]["two_ranks"], record["starts"]["one_rank"]
    assert [(s["rank"], s["world_size"], s["backend"], s["device"]) for s in two] == \
        [(0, 2, "nccl", "cuda:0"), (1, 2, "nccl", "cuda:1")]
    assert [(s["world_size"], s["backend"], s["step"]) for s in one] == [(1, "nccl", gpu.TWO_GPU_STEPS[0])]
    assert record["rescale"] and record["rescale"]["world_size"] == [2, 1], record["rescale"]
    assert record["steps_logged"] == list(range(1, gpu.TWO_GPU_STEPS[1] + 1)) and record["finite"]
