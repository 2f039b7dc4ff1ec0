"""k. Compiled blocks (model.compile=true) against eager in the trainer's own loop: the MFU
cell (B, ZeRO-3 bf16) both ways; compiled must keep at least COMPILE_MFU_MIN of eager's MFU
and agree on every step's loss within COMPILE_LOSS_RTOL (bench/gpu.py check_compile says
why these bounds). Not run on a GPU yet."""
import gpu

CHECK = "compile"


def test_both_cells_trained_their_measured_steps(record):
    for name, row in record["rows"].items():
        assert "error" not in row, (name, row.get("output", row))
        assert row["steps_measured"] == gpu.TIMED_STEPS - gpu.WARMUP_STEPS, (name, row)


def test_compiled_blocks_keep_the_mfu_of_eager(record):
    e, c = record["rows"]["eager"], record["rows"]["compiled"]
    print(f"MFU eager {e['mfu_median']:.3f}, compiled {c['mfu_median']:.3f}; "
          f"step time ratio {record['step_ratio']:.3f}")
    assert gpu.MFU_FLOOR <= c["mfu_median"] <= 1.0, c
    assert record["mfu_ratio"] >= gpu.COMPILE_MFU_MIN, (e["mfu_per_step"], c["mfu_per_step"])


def test_compiled_blocks_train_with_the_losses_of_eager(record):
    losses = record["losses"]
    assert len(losses["compiled"]) == len(losses["eager"]) == gpu.TIMED_STEPS
    assert record["loss_max_rel_diff"] <= gpu.COMPILE_LOSS_RTOL, losses
