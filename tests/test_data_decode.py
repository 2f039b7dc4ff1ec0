"""The decoders: PyAV's RGB is DALI's bit for bit, the CPU path seeks (a late window costs
what an early one does, counted in decoded frames, not timed), and the CPU path gives the
batches DALI's own CPU decoder gives; each clip's decoder is chosen from what the device
can decode (NVDEC's minimum sizes: planned on CPU, checked on a GPU where one is lent), and
a frame index past a clip's end repeats its last frame in every decoder."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from longvivit.data.load.decode import VideoDecoder, plan_clip
from longvivit.data.prepare.video import decode_frames, encode, frames_at

from data_support import synth_data  # noqa: F401 (fixture)

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
    from longvivit.data.load.decode import dali_reason

    message = ("Critical error in pipeline:\nCritical error in pipeline:\nError in CPU operator "
               "`nvidia.dali.fn.decoders.video`,\nwhich was used in the pipeline definition with the "
               "following traceback:\n\n  File \"longvivit/data/load/decode.py\", line 157, in clip_pipeline\n\n"
               "encountered:\n\nAssert on \"frames_decoders_[s]->IsValid()\" failed: Failed to create "
               "video decoder for \"memory file\"\nC++ context: [video_decoder_base.h:246] \n"
               "Current pipeline object is no longer valid.\nCurrent pipeline object is no longer valid.")
    assert dali_reason(RuntimeError(message)).endswith('Failed to create video decoder for "memory file"')
    assert dali_reason(RuntimeError("Critical error in pipeline:\nbad frame index 9")) == "bad frame index 9"


# ----------------------------------------------------------------------------- decoder kinds

@pytest.mark.parametrize("codec,below,above", [
    ("vp9", [(32, 32), (126, 128), (128, 126), (1280, 64)], [(128, 128), (224, 224), (1920, 1080)]),
    ("h264", [(32, 32), (46, 16), (64, 14)], [(48, 16), (64, 64), (1920, 1080)]),
])
def test_nvdec_takes_a_clip_only_from_its_minimum_size(codec, below, above):
    """NVDEC's smallest frame: VP9 128x128, H.264 48x16 (longvivit/data/load/decode.py NVDEC_MIN_SIZE says
    where the numbers come from). A CPU device decodes everything on the CPU."""
    from longvivit.data.load.decode import decoder_kind

    assert [decoder_kind(codec, w, h, "cuda") for w, h in below] == ["cpu"] * len(below)
    assert [decoder_kind(codec, w, h, "cuda") for w, h in above] == ["mixed"] * len(above)
    assert {decoder_kind(codec, w, h, "cpu") for w, h in below + above} == {"cpu"}
    assert decoder_kind("", 0, 0, "cuda") == "mixed"  # unknown: NVDEC, as before


def test_a_cuda_decoder_routes_what_nvdec_cannot_take_to_the_cpu(shard_samples):
    """The routing of a decoder on a CUDA device, planned without CUDA (no pipeline is built
    until a batch runs): clips NVDEC takes go to it; smaller ones to the CPU decoder the
    CPU device would choose (PyAV for an H.264 clip, which DALI's CPU build cannot decode);
    JPEG stills to the image decoder (nvJPEG); garbage nowhere."""
    gpu, cpu = VideoDecoder(4, 24, torch.device("cuda", 0)), VideoDecoder(4, 24, CPU)
    assert gpu.backend == "dali" and gpu.dali_device == "mixed"
    sample = shard_samples[0]  # a 48-px VP9 clip: below NVDEC's 128
    for sampling, rng in (("uniform", None), ("fps", np.random.default_rng(5))):
        plan = plan_clip(sample, 8, sampling, rng, flip=False)
        assert plan.codec == "vp9" and gpu.route(sample["video"], plan) == cpu.route(sample["video"], plan)
        assert gpu.route(sample["video"], plan) in ("dali", "pyav")
    large = plan_clip({**sample, "width": 224, "height": 224}, 8, "uniform", None, False)
    assert gpu.route(sample["video"], large) == "nvdec" and cpu.route(sample["video"], large) == "dali"
    h264 = encode(np.zeros((2, 32, 32, 3), np.uint8), codec="h264")[0]
    small = plan_clip({"num_frames": 2, "width": 32, "height": 32, "codec": "h264"}, 2, "uniform", None, False)
    assert gpu.route(h264, small) == "pyav"
    assert gpu.route(h264, plan_clip({"num_frames": 2, "width": 64, "height": 64, "codec": "h264"},
                                     2, "uniform", None, False)) == "nvdec"
    assert gpu.route(b"\xff\xd8\xff\xe0" + bytes(20), small) == "image"
    assert gpu.route(b"not a video at all", small) == ""
    assert gpu.pipes == {}


@pytest.fixture(scope="module")
def demo_and_local_shards(tmp_path_factory) -> dict:
    """The shards `longvivit demo` and the local forms (`local=true`) write, made by their own
    code (longvivit/train/demo.py prepare_data with few videos; longvivit/train/local.py make_data)."""
    from longvivit.train import demo, local

    root = tmp_path_factory.mktemp("forms")
    demo.prepare_data(root / "demo", videos=4, images=4, frames=8, seed=0)
    local.make_data(root / "local")
    return {f"{form}/{split}": root / form / ("shards" if form == "demo" else "") / split
            for form in ("demo", "local") for split in ("train", "val", "images")}


def test_demo_and_local_clips_take_a_decoder_that_decodes_them(demo_and_local_shards):
    """On a CUDA device every clip of the demo's and the local forms' shards goes to a
    decoder that can decode it: NVDEC only at or above its minimum size for the codec, the
    CPU otherwise; and those CPU decoders (the ones a CPU device uses) decode them all.
    (Their videos are VP9 at 32 px, below NVDEC's 128x128: before routing, every clip
    went to NVDEC and failed.)"""
    from streaming import LocalDataset

    from longvivit.data.load.decode import NVDEC_MIN_SIZE

    gpu = VideoDecoder(8, 16, torch.device("cuda", 0))
    routes = {}
    for name, path in demo_and_local_shards.items():
        dataset = LocalDataset(str(path))
        samples = [dataset[i] for i in range(len(dataset))]
        plans = [plan_clip(s, 8, "uniform", None, False) for s in samples]
        routes[name] = {gpu.route(s["video"], p) for s, p in zip(samples, plans)}
        for s, p in zip(samples, plans):
            min_width, min_height = NVDEC_MIN_SIZE.get(s["codec"], (0, 0))
            fits = s["width"] >= min_width and s["height"] >= min_height
            where = (name, s["codec"], s["width"], s["height"])
            assert gpu.route(s["video"], p) != "nvdec" or fits, where
        cpu = VideoDecoder(8, 16, CPU)
        for i in range(0, len(samples), 8):
            video, good, error = cpu.decode([s["video"] for s in samples[i:i + 8]], plans[i:i + 8])
            assert error == "" and good == list(range(len(samples[i:i + 8]))), (name, error)
    print(routes)  # today: the videos to DALI's CPU decoder, the stills to the image decoder
    for name, kinds in routes.items():
        assert kinds <= ({"image"} if name.endswith("images") else {"nvdec", "dali", "pyav"}), (name, kinds)


@pytest.mark.parametrize("backend", ["dali", "pyav"])
def test_a_frame_index_past_the_end_repeats_the_last_frame(backend):
    """Indices at and past the clip's end (DALI may count fewer frames than the shard says)
    give its last frame, not black ones (DALI's default pad_mode "constant"), and PyAV
    gives the same instead of refusing."""
    from longvivit.data.load.decode import ClipPlan

    frames = np.stack([np.full((32, 32, 3), 40 * (i + 1), np.uint8) for i in range(5)])
    data = encode(frames, fps=1)[0]
    wanted = np.array([0, 4, 5, 9, 2], np.int32)  # a 5-frame clip: 5 and 9 are past its end
    plan = ClipPlan(wanted, 5, np.zeros(2, np.float32), np.full(2, 32, np.float32), "vp9", 32, 32)
    video, good, error = VideoDecoder(1, 32, CPU, backend=backend).decode([data], [plan])
    assert (good, error) == ([0], ""), error
    expected = decode_frames(data, [0, 4, 4, 4, 2])  # a 32 px crop of 32 px frames: no resampling
    assert np.array_equal(video[0].numpy(), expected)
    assert np.array_equal(decode_frames(data, wanted), expected)
    assert video[0, 2:4].float().mean() > 150  # frame 4 is ~200, black is 0


# ----------------------------------------------------------------------------- on a GPU

def nvdec_frames(data: bytes, indices) -> np.ndarray:
    """NVDEC alone (DALI mixed, no resize), with the loader's pad_mode."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=torch.cuda.current_device(),
                  exec_dynamic=True, prefetch_queue_depth=1)
    def pipe():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        return fn.decoders.video(encoded, device="mixed", frames=frames, pad_mode="edge")

    p = pipe()
    p.build()
    p.feed_input("encoded", [np.frombuffer(data, np.uint8)])
    p.feed_input("frames", [np.asarray(indices, np.int32)])
    (out,) = p.run()
    return np.array(out.as_cpu().as_tensor())[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (NVDEC, nvJPEG)")
def test_on_cuda_each_clip_decodes_where_it_can():
    """This GPU's NVDEC refuses VP9 just below NVDEC_MIN_SIZE and takes it there (with
    past-the-end indices repeating the last frame); a batch of a 32-px VP9 clip (decoded on
    the CPU), a 128-px one (NVDEC) and a JPEG still (nvJPEG) decodes whole on the device, the
    CPU-decoded clip equal to the CPU device's bit for bit, the others within the GPU
    suite's 35 dB (NVDEC's and nvJPEG's YUV->RGB and the GPU resize against the CPU's)."""
    from longvivit.data.load.decode import NVDEC_MIN_SIZE, ClipPlan
    from longvivit.data.prepare.video import encode_jpeg

    from data_support import moving_frames, psnr

    side = NVDEC_MIN_SIZE["vp9"][0]
    edge, small = (encode(moving_frames(5, s, s), fps=1)[0] for s in (side, 32))
    with pytest.raises(Exception):  # noqa: B017 -- DALI raises several types
        nvdec_frames(encode(moving_frames(5, side - 2, side - 2), fps=1)[0], [0])
    got = nvdec_frames(edge, [0, 4, 6])
    assert got.shape == (3, side, side, 3) and np.array_equal(got[2], got[1]) and got[2].mean() > 20
    jpeg = encode_jpeg(moving_frames(1, 32, 32)[0])
    box = lambda s: (np.zeros(2, np.float32), np.full(2, s, np.float32))  # noqa: E731
    plans = [ClipPlan(np.array([0, 4, 6], np.int32), 3, *box(32), "vp9", 32, 32),
             ClipPlan(np.array([0, 4, 6], np.int32), 3, *box(side), "vp9", side, side),
             ClipPlan(np.zeros(3, np.int32), 1, *box(32), "jpeg", 32, 32)]
    gpu = VideoDecoder(3, 32, torch.device("cuda", torch.cuda.current_device()))
    assert [gpu.route(e, p) for e, p in zip((small, edge, jpeg), plans)] == ["dali", "nvdec", "image"]
    (video, good, error), (ref, _, _) = (d.decode([small, edge, jpeg], plans)
                                         for d in (gpu, VideoDecoder(3, 32, CPU)))
    assert (good, error) == ([0, 1, 2], "") and video.is_cuda and video.shape == (3, 3, 32, 32, 3)
    video = video.cpu()
    assert torch.equal(video[0], ref[0])
    assert min(psnr(video[i].numpy(), ref[i].numpy()) for i in (1, 2)) >= 35.0
