"""The decoders: PyAV's RGB is DALI's bit for bit, the CPU path seeks (a late window costs
what an early one does, counted in decoded frames, not timed), and the CPU path gives the
batches DALI's own CPU decoder gives."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from data_support import synth_data  # noqa: F401 (fixture)

from longvivit.data.decode import VideoDecoder, plan_clip
from longvivit.data.video import decode_frames, encode, frames_at

CPU = torch.device("cpu")
KEYFRAME_INTERVAL = 8  # the shards' default


@pytest.fixture(scope="module")
def long_clip() -> bytes:
    """250 frames of noise at 25 FPS, 96x64, VP9 with a keyframe every 8 frames."""
    frames = np.random.default_rng(0).integers(0, 256, (250, 64, 96, 3), dtype=np.uint8)
    return encode(frames, fps=25, keyframe_interval=KEYFRAME_INTERVAL)[0]


@pytest.fixture(scope="module")
def shard_samples(synth_data):  # noqa: F811
    from streaming import LocalDataset
    dataset = LocalDataset(str(synth_data["shards_all"]))
    return [dataset[i] for i in range(len(dataset))]


def dali_frames(data: bytes, indices) -> np.ndarray:
    """DALI's CPU decoder alone (no resize)."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, exec_dynamic=True,
                  prefetch_queue_depth=1)
    def pipe():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        return fn.decoders.video(encoded, device="cpu", frames=frames)

    p = pipe()
    p.build()
    p.feed_input("encoded", [np.frombuffer(data, np.uint8)])
    p.feed_input("frames", [np.asarray(indices, np.int32)])
    (out,) = p.run()
    return np.array(out.as_tensor())[0]


def test_pyav_rgb_is_dalis_bit_for_bit(shard_samples, long_clip):
    """Same bytes, same frames: max |diff| 0 (PyAV converts YUV->RGB with swscale's
    FULL_CHR_H_INT; without it the chroma differs by up to ~50 levels)."""
    picks = [249, 0, 0, 131, 7, 8, 240]  # any order, repeats, across keyframes
    assert np.array_equal(decode_frames(long_clip, picks), dali_frames(long_clip, picks))
    for sample in shard_samples[:3]:
        n = int(sample["num_frames"])
        ids = list(range(n))[::-1]
        ours = decode_frames(sample["video"], ids)
        assert np.array_equal(ours, dali_frames(sample["video"], ids))
        assert np.array_equal(frames_at(sample["video"], [i / float(sample["fps"]) for i in ids]), ours)


@pytest.mark.parametrize("start", [0, 120, 234])
def test_a_window_decodes_only_from_its_keyframe(long_clip, start):
    """16 frames from `start`: decoded from the keyframe at or before it, never from the
    start of the clip (DALI's CPU decoder decodes start + 16 frames: bench/RESULTS.md)."""
    stats = {}
    window = decode_frames(long_clip, range(start, start + 16), stats)
    assert window.shape == (16, 64, 96, 3)
    assert 16 <= stats["decoded"] <= 16 + (start % KEYFRAME_INTERVAL), stats
    stats = {}
    decode_frames(long_clip, [3, 200, 201, 249], stats)  # far apart: one seek each
    assert stats["decoded"] == 4 + 2 + 2, stats  # 0..3, 200..201, 248..249


def test_cpu_path_gives_the_batches_dalis_cpu_decoder_gives(shard_samples):
    """What the loader gets on CPU ("auto": each clip to DALI's decoder or to PyAV, then
    DALI's resize) is bit-identical to DALI decoding and resizing the same clips, and to
    PyAV decoding all of them: same shapes, dtype, values."""
    decoders = {b: VideoDecoder(4, 24, CPU, backend=b) for b in ("auto", "dali", "pyav")}
    routed = set()
    for sampling in ("uniform", "fps"):
        plans = [plan_clip(s, 8, sampling, np.random.default_rng(i), flip=True)
                 for i, s in enumerate(shard_samples)]
        routed |= {decoders["auto"]._dali_decodes(p) for p in plans}
        for i in range(0, 8, 4):
            encoded = [s["video"] for s in shard_samples[i:i + 4]]
            got = {b: d.decode(encoded, plans[i:i + 4]) for b, d in decoders.items()}
            for video, good, error in got.values():
                assert (good, error) == ([0, 1, 2, 3], "")
                assert video.dtype == torch.uint8 and video.shape == (4, 8, 24, 24, 3)
                assert torch.equal(video, got["dali"][0])
    assert routed == {True, False}  # both decoders took part


def test_auto_sends_a_clip_to_the_decoder_that_decodes_less():
    decoder = VideoDecoder(1, 24, CPU)
    assert decoder.backend == "auto" and decoder.dali_device == "cpu"
    sample = {"num_frames": 250, "width": 96, "height": 64}
    uniform = plan_clip(sample, 16, "uniform", None, False)  # frames 7..242: DALI, 0..242
    early = plan_clip({**sample, "num_frames": 20}, 16, "fps", None, False)  # 2..17
    late = plan_clip(sample, 16, "fps", np.random.default_rng(1), False)
    assert late.frames[0] > 16
    assert [decoder._dali_decodes(p) for p in (uniform, early, late)] == [True, True, False]


def test_a_clip_that_does_not_decode_is_reported_not_raised(shard_samples):
    good = shard_samples[0]["video"]
    garbled = good[:4] + bytes(np.random.default_rng(0).integers(0, 256, len(good) - 4, np.uint8))
    plans = [plan_clip(s, 4, "uniform", None, False) for s in shard_samples[:3]]
    for backend in ("auto", "dali", "pyav"):
        decoder = VideoDecoder(3, 24, CPU, backend=backend)
        video, ok, error = decoder.decode([good, garbled, b"not a video"], plans)
        assert ok == [0] and video.shape == (1, 4, 24, 24, 3) and error, backend
        assert "no longer valid" not in error, error  # the reason, not DALI's follow-on line
        video, ok, error = decoder.decode([good, good], plans[:2])  # the pipeline still works
        assert ok == [0, 1] and error == "", backend
    with pytest.raises(ValueError, match="backend"):
        VideoDecoder(2, 24, CPU, backend="nvdec")


def test_the_reason_of_a_dali_error_is_its_first_cause():
    from longvivit.data.decode import dali_reason

    message = ("Critical error in pipeline:\nCritical error in pipeline:\nError in CPU operator "
               "`nvidia.dali.fn.decoders.video`,\nwhich was used in the pipeline definition with the "
               "following traceback:\n\n  File \"data/decode.py\", line 157, in clip_pipeline\n\n"
               "encountered:\n\nAssert on \"frames_decoders_[s]->IsValid()\" failed: Failed to create "
               "video decoder for \"memory file\"\nC++ context: [video_decoder_base.h:246] \n"
               "Current pipeline object is no longer valid.\nCurrent pipeline object is no longer valid.")
    assert dali_reason(RuntimeError(message)).endswith('Failed to create video decoder for "memory file"')
    assert dali_reason(RuntimeError("Critical error in pipeline:\nbad frame index 9")) == "bad frame index 9"
