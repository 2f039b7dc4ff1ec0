"""f. Every shipped GPU config (*.yaml whose ds_config is written for CUDA) in
its real form steps on one GPU at a reduced micro-batch, and its training micro-batches
make no host sync in the model beyond reading back real_frames that arrive on the GPU
(bench/gpu.py check_shipped: what is changed from the shipped form, and why)."""
import pytest

import gpu

CHECK = "shipped"
NAMES = [path.stem for path in gpu.shipped_configs()]


def row_of(record, name):
    row = record["configs"][name]
    assert "error" not in row, row.get("output", row)
    return row


@pytest.mark.parametrize("name", NAMES)
def test_the_real_form_steps_on_one_gpu_over_nccl(record, name):
    row = row_of(record, name)
    assert row["backend"] == "nccl"
    assert row["steps_done"] == record["steps"] and len(row["losses"]) == record["steps"]
    assert row["finite"], row["losses"]
    assert "video" in row["by_source"] and row["by_source"]["video"]["tokens_per_s"] > 0, row["by_source"]
    if row["images"]:  # the image steps ran too
        assert "images" in row["by_source"], row["by_source"]  # by source name


@pytest.mark.parametrize("name", NAMES)
def test_the_model_syncs_the_host_only_to_read_real_frames_from_the_gpu(record, name):
    s = row_of(record, name)["syncs"]
    assert s["control"] == 1, "the sync counter saw no sync in a .item(): it counts nothing here"
    assert s["micro_batches"] > 0, s
    assert s["model"] <= s["model_allowed"], [x for x in s["sites"] if x["origin"] == "model"]
