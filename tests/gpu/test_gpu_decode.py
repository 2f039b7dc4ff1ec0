"""b. DALI "mixed" (NVDEC) decoding of H.264 and VP9 shards matches PyAV on the same bytes,
the loader feeds the training step, and the trainer on GPU-decoded shards waits for data at
most gpu.FEED_WAIT_MAX of its time (bench/gpu.py check_decode, trainer_feed: the bound and
why; skipped where DALI or PyAV is missing)."""
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


def test_the_trainer_on_gpu_decoded_shards_waits_little_for_data(record):
    feed = record["trainer_feed"]
    if "skipped" in feed:
        pytest.skip(feed["skipped"])
    assert "error" not in feed, feed.get("output", feed)
    assert feed["backend"] == "nccl" and feed["steps_done"] == feed["steps"], feed
    assert feed["decode_failures"] == 0, feed
    assert feed["data_wait"] <= gpu.FEED_WAIT_MAX, feed["data_wait_per_step"]
