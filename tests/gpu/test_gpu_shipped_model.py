"""g. Each shipped config's model outside the engine: its video tower's attention runs a fused
SDPA kernel (never the math fallback), with the CLS key repeated T' times where the config
has a CLS token (the record shows which kernel, and the same pass with the CLS key once);
and the whole model's forward + backward makes no host sync when real_frames comes as None
or on the host, one when it comes on the GPU (bench/gpu.py check_shipped_model)."""
import pytest

import gpu

CHECK = "shipped_model"
NAMES = [path.stem for path in gpu.shipped_configs()]


def row_of(record, name):
    row = record["configs"][name]
    assert "error" not in row, row.get("traceback", row)
    return row


@pytest.mark.parametrize("name", NAMES)
def test_the_video_tower_runs_a_fused_attention_kernel(record, name):
    row = row_of(record, name)
    assert row["fused"] and not row["math"], (row["kernels"], row["ops"])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("variant", list(gpu.MODEL_SYNCS_ALLOWED))
def test_host_syncs_per_micro_batch(record, name, variant):
    assert record["control"] == 1, "the sync counter saw no sync in a .item(): it counts nothing here"
    s = row_of(record, name)["syncs"][variant]
    assert s["per_micro_batch"] <= s["allowed"], s["sites"]
