"""k. Sequence parallelism over NCCL: a sequence group of two GPUs (parallel.sequence=2)
against one GPU alone on the same batches (bench/gpu.py check_ulysses); skipped on a machine
with one GPU."""
import math

import gpu

CHECK = "ulysses"


def test_a_clip_over_two_gpus_trains_like_one_gpu(record):
    assert record["exit_codes"] == {"split": 0, "one_gpu": 0}, record.get("failed_output", record)
    assert [(s["rank"], s["world_size"], s["backend"]) for s in record["starts"]["split"]] == \
        [(0, 2, "nccl"), (1, 2, "nccl")]
    assert record["same_batches"]
    losses = record["losses"]
    assert len(losses["split"]) == len(losses["one_gpu"]) == gpu.ULYSSES_STEPS
    assert all(math.isfinite(x) for x in losses["split"])
    assert record["first_step_rel_diff"] <= gpu.ULYSSES_RTOL, record["first_step_rel_diff"]
