"""b. DALI "mixed" (NVDEC) decoding of H.264 and VP9 shards matches PyAV on the same bytes,
and the loader feeds the training step (bench/gpu.py check_decode; skipped where DALI or
PyAV is missing)."""
import pytest

import gpu

CHECK = "decode"


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_mixed_decoding_matches_pyav(record, codec):
    r = record["codecs"][codec]
    assert r["decode_failures"] == 0 and r["clips"] == record["videos"], r
    assert r["psnr_min_db"] >= gpu.PSNR_MIN_DB, r


def test_loader_feeds_the_step_without_failures(record):
    feed = record["feed"]
    assert feed["decode_failures"] == 0 and feed["steps"] == record["steps"], feed
    assert 0.0 <= feed["data_wait"] <= 1.0, feed
