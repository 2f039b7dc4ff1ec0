"""d. `longvivit plan` against torch.cuda.max_memory_allocated of real training steps through
the ZeRO-3 engine, one process per cell (what is compared and why: bench/gpu.py memory_row)."""
import pytest

import gpu

CHECK = "plan_memory"


@pytest.mark.parametrize("cell", [c.name for c in gpu.MEMORY_CELLS])
def test_plan_predicts_the_allocated_peak_within_10_percent(record, cell):
    (row,) = [r for r in record["rows"] if r["cell"] == cell]
    assert "error" not in row, row.get("output", row)
    assert row["backend"] == "nccl"
    assert row["within"], (f"plan {row['predicted_allocated'] / 2**30:.2f} GiB vs measured "
                           f"{row['measured_peak'] / 2**30:.2f} GiB", row["plan_bytes"])
