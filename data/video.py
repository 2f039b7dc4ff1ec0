"""PyAV helpers: read a clip at a fixed frame rate and size, encode frames in memory.

Everything here works with PyAV alone (its bundled FFmpeg libraries); no `ffmpeg` binary
is needed. `synth` encodes its videos with `encode`, `shards` transcodes with
`read_resampled` + `encode`, and the tests and the decode benchmark use `frames_at` as the
reference decoder that DALI's output is compared against.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Iterator, Sequence

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

CODECS = {  # name on the command line -> (encoder, container)
    "vp9": ("libvpx-vp9", "webm"),
    "h264": ("libx264", "mp4"),
}
# A frame shown at time t is the last frame whose timestamp is <= t; timestamps are floats,
# so allow for rounding when a frame lands exactly on t.
_EPS = 1e-6
_DALI_LIKE = Interpolation.BILINEAR | Interpolation.ACCURATE_RND


class VideoError(Exception):
    """A video that cannot be used; `reason` is a short category for the rejects report."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class ClipInfo:
    num_frames: int
    fps: float
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side at `short_side`, aspect kept, both even
    (4:2:0 chroma needs even dimensions)."""
    scale = short_side / min(width, height)
    even = lambda x: max(2, int(round(x * scale / 2)) * 2)  # noqa: E731
    return even(width), even(height)


def _open(source: str | bytes) -> av.container.InputContainer:
    """Open a path or in-memory bytes; unreadable or corrupt input raises VideoError."""
    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes) else source, "r")
    except FileNotFoundError as err:
        raise VideoError("missing file", str(err)) from None
    except (PermissionError, IsADirectoryError) as err:
        raise VideoError("unreadable file", str(err)) from None
    except av.FFmpegError as err:
        raise VideoError("corrupt file", str(err)) from None


def _video_stream(container) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoError("no video stream", "the container holds no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _timed_frames(container, stream, start: float) -> Iterator[tuple[float, av.VideoFrame]]:
    """Decoded frames with their presentation time in seconds; seeks near `start` first so a
    late start in a long file does not decode everything before it."""
    if start > 0:
        container.seek(int(start / stream.time_base), stream=stream, backward=True)
    rate = float(stream.average_rate or 25)
    try:
        for i, frame in enumerate(container.decode(stream)):
            yield (frame.time if frame.pts is not None else i / rate), frame
    except av.FFmpegError as err:
        raise VideoError("corrupt file", f"decoding failed: {err}") from None


def _resample(timed: Iterable[tuple[float, av.VideoFrame]], start: float, end: float | None,
              fps: float, frame_dur: float) -> Iterator[av.VideoFrame]:
    """Frames at times start, start + 1/fps, ... up to `end` or the end of the stream: each
    is the frame on screen at that time (the last one whose timestamp is <= it; the first
    frame for times before it). `frame_dur` is the nominal frame duration, used for the
    time the last frame stays on screen."""
    k, shown, last_time, stop = 0, None, None, None
    target = lambda: start + k / fps  # noqa: E731
    for t, frame in timed:
        if end is not None and t >= end - _EPS:
            stop = end
            break
        if last_time is not None and t > last_time:
            frame_dur = t - last_time
        last_time = t
        while shown is not None and target() < t - _EPS:
            yield shown
            k += 1
        shown = frame
    if shown is None:
        return
    if stop is None:  # the stream ended first: its last frame lasts one frame duration
        stop = last_time + frame_dur if end is None else min(end, last_time + frame_dur)
    while target() < stop - _EPS:
        yield shown
        k += 1


def read_resampled(path: str | bytes, fps: float = 1.0, short_side: int | None = 256,
                   start: float | None = None, end: float | None = None,
                   pix_fmt: str = "yuv420p") -> Iterator[av.VideoFrame]:
    """Yield the clip [start, end) of `path` at `fps`, resized to `short_side` (None: keep),
    as frames in `pix_fmt`. Raises VideoError for missing, corrupt or video-less input."""
    start = float(start or 0.0)
    if end is not None and end <= start:
        raise VideoError("empty range", f"end {end} <= start {start}")
    with _open(path) as container:
        stream = _video_stream(container)
        size, frame_dur = None, 1 / float(stream.average_rate or fps)
        scaler = VideoReformatter()  # one swscale context for the clip (per frame: ~10x slower)
        timed = _timed_frames(container, stream, start)
        for frame in _resample(timed, start, end, fps, frame_dur):
            if size is None:  # even sides either way: H.264 4:2:0 refuses odd ones
                size = (scaled_size(frame.width, frame.height, short_side) if short_side
                        else (frame.width // 2 * 2, frame.height // 2 * 2))
            yield scaler.reformat(frame, width=size[0], height=size[1], format=pix_fmt,
                                 interpolation=Interpolation.AREA | Interpolation.ACCURATE_RND)


def encode(frames: Iterable[av.VideoFrame | np.ndarray], fps: float = 1.0, codec: str = "vp9",
           keyframe_interval: int = 8, crf: int = 20) -> tuple[bytes, ClipInfo]:
    """Encode frames (VideoFrames or (H, W, 3) uint8 RGB arrays) into an in-memory webm (VP9)
    or mp4 (H.264) file; returns the bytes and the clip's frame count, rate and size."""
    encoder, container_format = CODECS[codec]
    rate = Fraction(fps).limit_denominator(1001)
    buf = io.BytesIO()
    n, stream = 0, None
    # bitexact: no random segment UID or library version in the container, so the same
    # frames give the same bytes (synth is deterministic by seed down to the file).
    with av.open(buf, "w", format=container_format, options={"fflags": "+bitexact"}) as out:
        for item in frames:
            frame = item if isinstance(item, av.VideoFrame) else \
                av.VideoFrame.from_ndarray(np.ascontiguousarray(item), format="rgb24")
            if stream is None:
                stream = _add_stream(out, encoder, rate, frame.width, frame.height,
                                     keyframe_interval, crf)
            frame.pts, frame.time_base = n, 1 / rate
            out.mux(stream.encode(frame))
            n += 1
        if stream is None:
            raise VideoError("zero frames", "no frame in the requested range")
        out.mux(stream.encode(None))
    return buf.getvalue(), ClipInfo(n, float(rate), stream.width, stream.height)


def _add_stream(out, encoder: str, rate: Fraction, width: int, height: int,
                keyframe_interval: int, crf: int):
    stream = out.add_stream(encoder, rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.time_base = 1 / rate
    stream.gop_size = keyframe_interval  # a keyframe at least this often: cheap seeks
    # One thread per encoder: `shards` runs one encoder per worker process already, and a
    # single-threaded libvpx/x264 is deterministic (same input, same bytes).
    stream.codec_context.thread_count = 1
    if encoder == "libvpx-vp9":
        # Constant quality (b=0 + crf); "good" at cpu-used 5 is ~4x faster than the
        # default while staying within ~0.5 dB of it on our content.
        stream.options = {"crf": str(crf), "b": "0", "deadline": "good", "cpu-used": "5",
                          "keyint_min": str(keyframe_interval)}
    else:
        stream.options = {"crf": str(crf), "preset": "fast", "keyint_min": str(keyframe_interval)}
    return stream


def probe(source: str | bytes) -> ClipInfo:
    """Frame count, rate and size of a video, counting decoded frames (container
    metadata is often missing or wrong)."""
    with _open(source) as container:
        stream = _video_stream(container)
        n, first = 0, None
        for _, frame in _timed_frames(container, stream, 0.0):
            first = first or frame
            n += 1
        if first is None:
            raise VideoError("zero frames", "the video stream has no frames")
        return ClipInfo(n, float(stream.average_rate or 0), first.width, first.height)


def frames_at(source: str | bytes, times: Sequence[float]) -> np.ndarray:
    """RGB frames (N, H, W, 3) uint8 shown at each of `times` (seconds, any order): the
    reference decoder the tests and the benchmark compare DALI against."""
    wanted = sorted(set(times))
    found: dict[float, np.ndarray] = {}
    with _open(source) as container:
        stream = _video_stream(container)
        shown, i, rgb = None, 0, VideoReformatter()
        for t, frame in _timed_frames(container, stream, 0.0):
            while shown is not None and i < len(wanted) and wanted[i] < t - _EPS:
                found[wanted[i]] = _rgb(shown, rgb)
                i += 1
            if i == len(wanted):
                break
            shown = frame
        if shown is None:
            raise VideoError("zero frames", "the video stream has no frames")
        for t in wanted[i:]:
            found[t] = _rgb(shown, rgb)
    return np.stack([found[t] for t in times])


def _rgb(frame: av.VideoFrame, reformatter: VideoReformatter) -> np.ndarray:
    # Bilinear chroma upsampling with accurate rounding is what DALI's decoder does: with
    # these flags PyAV's RGB is bit-identical to DALI's for the same bytes (checked on VP9).
    return reformatter.reformat(frame, format="rgb24", interpolation=_DALI_LIKE).to_ndarray()


def num_output_frames(duration_s: float, fps: float) -> int:
    """Frames a clip of `duration_s` has at `fps` (the resampler's count)."""
    return max(1, math.ceil(duration_s * fps - _EPS))
