"""e. MFU of the whole ZeRO-3 bf16 training step as the trainer logs it, median after warm-up
(the floor and why: bench/gpu.py check_mfu)."""
import pytest

import gpu

CHECK = "mfu"


@pytest.mark.parametrize("cell", [c.name for c in gpu.MFU_CELLS])
def test_mfu_is_that_of_a_bf16_tensor_core_step(record, cell):
    (row,) = [r for r in record["rows"] if r["cell"] == cell]
    assert "error" not in row, row.get("output", row)
    assert row["steps_measured"] == gpu.TIMED_STEPS - gpu.WARMUP_STEPS
    assert gpu.MFU_FLOOR <= row["mfu_median"] <= 1.0, row
