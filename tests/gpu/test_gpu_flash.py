"""i. Every config's video tower at its real size, whole clips, bf16: forward + backward runs
with scaled_dot_product_attention held to FlashAttention and cuDNN, so no call carries a
mask that only the memory-efficient or math kernel takes (the record also says which of
the two runs alone, and whether the memory-efficient kernel alone does: bench/gpu.py
check_flash)."""
import pytest

import gpu

CHECK = "flash"
NAMES = [path.stem for path in gpu.every_config()]


@pytest.mark.parametrize("name", NAMES)
def test_the_video_tower_runs_on_flash_or_cudnn_attention(record, name):
    row = record["configs"][name]
    assert "error" not in row, row.get("traceback", row)
    assert row["flash_or_cudnn"]["ran"], {k: row[k] for k in gpu.FLASH_SETS}
