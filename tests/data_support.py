"""Tiny test data for the tests/test_data_*.py files, made once per session.

The fixtures are imported by each test module (no shared conftest.py); the results are
cached in this module, so the synthetic benchmark, its shards and its tokenizer are built
once per pytest session however many modules use them.
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from longvivit.data.load.tokenizer import train_tokenizer
from longvivit.data.prepare.shards import ShardOptions, write_shards
from longvivit.data.prepare.synth import write_benchmark

# 16 videos x 16 frames at 48 px: "all" (train + val, 16 samples) fills 2 ranks x 2 workers x
# 2 batches x batch 2 exactly; small enough to build in seconds on a busy 2-core machine.
SYNTH = dict(videos=16, frames=16, seed=3, size=48)
SHARD_SIZE = 48  # short side of the shards (== synth size: no resize in the writer)

_cache: dict[str, object] = {}


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> dict:
    """{"dir", "train", "val", "shards_train", "shards_val", "shards_all", "tokenizer"}:
    paths; "all" is train + val in one shard set."""
    if "synth" not in _cache:
        root = tmp_path_factory.mktemp("synth")
        bench = root / "bench"
        write_benchmark(bench, **SYNTH)
        (bench / "all.jsonl").write_text((bench / "train.jsonl").read_text() +
                                         (bench / "val.jsonl").read_text())
        opts = ShardOptions(size=SHARD_SIZE)
        for split in ("train", "val", "all"):
            summary = write_shards(root / "bench" / f"{split}.jsonl", root / f"shards_{split}",
                                   opts, progress=False, shard_size="200kb")
            assert summary["skipped"] == 0, summary
        model = train_tokenizer([root / "bench" / "train.jsonl"], root / "tok" / "spm")
        _cache["synth"] = {
            "dir": root / "bench", "train": root / "bench" / "train.jsonl",
            "val": root / "bench" / "val.jsonl", "shards_train": root / "shards_train",
            "shards_val": root / "shards_val", "shards_all": root / "shards_all",
            "tokenizer": model,
        }
    return _cache["synth"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def moving_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(n, H, W, 3) uint8: a noisy background and a bright square moving right."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(30, 90, (n, height, width, 3), dtype=np.uint8)
    side = max(4, height // 3)
    for t in range(n):
        x = (t * 3) % max(1, width - side)
        frames[t, height // 3: height // 3 + side, x: x + side] = (240, 40, 40)
    return frames


def pattern_frames(n: int, height: int, width: int) -> np.ndarray:
    """(n, H, W, 3) uint8 frames that survive resampling and lossy coding but not a wrong
    frame, orientation or aspect: a red/green gradient, a black corner block (top left)
    and a white block that jumps (7, 5) pixels per frame."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1),
                     np.full_like(x, 128)], -1).astype(np.uint8)
    bh, bw = max(2, height // 4), max(2, width // 4)
    frames = np.repeat(base[None], n, 0)
    frames[:, : height // 6 + 1, : width // 6 + 1] = 0
    for t in range(n):
        top, left = (5 * t) % (height - bh), (7 * t) % (width - bw)
        frames[t, top: top + bh, left: left + bw] = 255
    return frames


def write_video(path: Path, frames: np.ndarray, fps: float, codec: str, fmt: str,
                first_pts: int = 0, rotation: int | None = None, hflip: bool = False,
                sar: Fraction | None = None, options: dict | None = None,
                gop: int | None = None) -> Path:
    """Encode RGB frames with PyAV into any container/codec (sources for the writer tests).
    first_pts: timestamp of the first frame in frames (10 at 2 FPS: the video starts at
    5 s; negative: an mp4 gets an edit list that hides those frames); rotation/hflip: the
    display matrix (a player turns the stored frames counter-clockwise, then mirrors);
    sar: the sample aspect ratio written into the stream."""
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w", format=fmt, options=options or {}) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if gop:
            stream.gop_size = gop
        if sar:
            stream.codec_context.sample_aspect_ratio = sar
        if rotation is not None:
            stream.set_display_rotation(rotation, hflip=hflip)
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            frame.pts, frame.time_base = first_pts + i, 1 / rate
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def remux(src: Path, dst: Path, fmt: str, offset_s: float | None = None) -> Path:
    """Copy the video packets of `src` into another container, as
    `ffmpeg -i SRC -c copy [-output_ts_offset OFFSET_S] DST` does (no ffmpeg binary here:
    PyAV's muxer takes the same option): the same coded frames, every timestamp shifted by
    `offset_s`, so the copy starts late and the header says so however its muxer writes it."""
    options = {"output_ts_offset": str(offset_s)} if offset_s is not None else {}
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=fmt, options=options) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is None:  # the demuxer's end-of-stream flush packet
                continue
            packet.stream = stream
            out.mux(packet)
    return dst


def files_under(root: Path) -> set[str]:
    """Every path under `root`, relative: what a command created or removed shows as a
    difference of two calls."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def refused(main, argv: list, capsys, root: Path, prog: str) -> str:
    """Run a command's main(argv) on bad input and check the refusal: exit status 2 (an
    argparse error too), nothing on stdout, exactly one line on stderr starting with
    "longvivit PROG: ", no traceback, and nothing created or removed under `root`.
    Returns the line."""
    before = files_under(root)
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as err:  # argparse: its own exit, whose code must be 2 as well
        rc = err.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2, (rc, captured.err)
    assert captured.out == "" and len(lines) == 1, captured
    assert lines[0].startswith(f"longvivit {prog}: ") and "Traceback" not in captured.err, lines
    assert files_under(root) == before, "a refused command must create and remove nothing"
    return lines[0]


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    """An .ogg with one Opus audio stream and no video."""
    rate = 48000
    with av.open(str(path), "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=rate)
        samples = (np.sin(np.arange(int(rate * seconds)) / 20) * 8000).astype(np.int16)
        for i in range(0, len(samples), 960):
            chunk = samples[None, i:i + 960]
            if chunk.shape[1] < 960:
                break
            frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
            frame.sample_rate = rate
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def garble_sample(shard_dir: Path, sample: int) -> bytes:
    """Overwrite sample `sample`'s video bytes inside its .mds shard file with random bytes
    (all but the 4-byte container magic, so that the loader's cheap header check passes and
    the bytes reach the decoder). The shard stays readable; the video does not decode.
    Returns the original video bytes."""
    from streaming import LocalDataset
    video = LocalDataset(str(shard_dir))[sample]["video"]
    for path in sorted(shard_dir.glob("shard.*.mds")):
        data = bytearray(path.read_bytes())
        at = data.find(video)
        if at >= 0:
            break
    else:
        raise AssertionError(f"sample {sample}'s video not found in {shard_dir}")
    rng = np.random.default_rng(sample)
    data[at + 4: at + len(video)] = rng.integers(0, 256, len(video) - 4, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return video
