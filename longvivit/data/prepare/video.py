"""PyAV helpers: read a video as a player shows it, resample it, encode frames in memory.

Everything here works with PyAV alone (its bundled FFmpeg libraries); no `ffmpeg` binary
is needed. `synth` encodes its videos with `encode`, `shards` transcodes with
`read_resampled` + `encode` (a still image with `encode_jpeg`, through Pillow), the CPU
decode path (decode.py) uses `decode_frames`, and the tests and the decode benchmark use
`frames_at` as the reference decoder.

What a player shows, and so what `read_resampled` and `frames_at` return:
- Time 0 is the start of the file (the container's start time): an MPEG-TS stream starts
  near 1.4 s, a remux with copied timestamps where its cut began; an mp4 edit list is
  applied by the demuxer. Manifest `start`/`end` are seconds on this timeline.
- The display matrix is applied (a phone video stored sideways with "rotate 90" is shown
  upright; mirrors too; angles other than multiples of 90 degrees are rounded to one).
- The sample aspect ratio is applied (a 720x480 frame with SAR 32:27 is shown 853x480;
  as in mpv, the shown size only ever grows).
A decode error is an error (`VideoError("decode error")`), a file whose data ends before
its header says it does is `"truncated file"`, and a still image (a PNG or JPEG, whatever
its name says) is `"still image"` unless the caller asks for it as a clip.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterable, Iterator, Sequence

import av
import numpy as np
from av.sidedata.sidedata import Type as SideDataType
from av.video.reformatter import Interpolation, VideoReformatter
from PIL import Image

CODECS = {  # name on the command line -> (encoder, container)
    "vp9": ("libvpx-vp9", "webm"),
    "h264": ("libx264", "mp4"),
}
# A frame shown at time t is the last frame whose timestamp is <= t; timestamps are floats,
# so allow for rounding when a frame lands exactly on t.
_EPS = 1e-6
# YUV -> RGB as DALI's decoder does it: with FULL_CHR_H_INT (full horizontal chroma
# interpolation) PyAV's RGB is bit-identical to DALI's for the same bytes (max |diff| 0,
# tests/test_data_decode.py); without it swscale's chroma differs by up to ~50 levels.
RGB_FLAGS = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
_SCALE_FLAGS = Interpolation.AREA | Interpolation.ACCURATE_RND  # downscaling for the shards
# Containers whose header holds the duration the muxer wrote when it finished: a file of
# these whose packets stop well before that was cut short (a half-copied download, a full
# disk) or is unreadable from there on.
_HEADER_DURATION = ("matroska,webm", "mov,mp4,m4a,3gp,3g2,mj2")
_TRUNCATION_SLACK_S = 0.5


class VideoError(Exception):
    """A video that cannot be used; `reason` is a short category for the rejects report."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class ClipInfo:
    num_frames: int
    fps: float
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps


def scaled_size(width: float, height: float, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side at `short_side`, aspect kept, both even
    (4:2:0 chroma needs even dimensions)."""
    scale = short_side / min(width, height)
    even = lambda x: max(2, int(round(x * scale / 2)) * 2)  # noqa: E731
    return even(width), even(height)


# ---------------------------------------------------------------------------- opening

def _open(source: str | bytes) -> av.container.InputContainer:
    """Open a path or in-memory bytes; unreadable or corrupt input raises VideoError.
    (A path with bytes that are not UTF-8 arrives as Python spells it, with lone
    surrogates, and PyAV opens it as such.)"""
    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes) else source, "r")
    except FileNotFoundError as err:
        raise VideoError("missing file", str(err)) from None
    except (PermissionError, IsADirectoryError) as err:
        raise VideoError("unreadable file", str(err)) from None
    except av.FFmpegError as err:
        raise VideoError("corrupt file", str(err)) from None


def _video_stream(container, threads: int = 0) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoError("no video stream", "the container holds no video stream")
    stream = container.streams.video[0]
    # Slice threads, never frame threads: with frame threading FFmpeg's decode errors do
    # not reach PyAV (a file cut in half decodes as a shorter video without a word).
    stream.thread_type = "SLICE"
    stream.thread_count = threads
    return stream


def is_still_image(container) -> bool:
    """A picture demuxer (png_pipe, jpeg_pipe, image2, ...): one frame, not a video."""
    name = container.format.name
    return name == "image2" or name.endswith("_pipe")


def _origin(container, stream) -> float:
    """The stream time a player shows as 0:00: the start of the file."""
    if container.start_time is not None:
        return container.start_time / av.time_base
    if stream.start_time is not None:
        return float(stream.start_time * stream.time_base)
    return 0.0


# ---------------------------------------------------------------------------- decoding

def _packet_end(packet) -> float | None:
    ts = packet.pts if packet.pts is not None else packet.dts
    if ts is None or packet.time_base is None:
        return None
    return float((ts + (packet.duration or 0)) * packet.time_base)


def _timed_frames(container, stream, start: float, origin: float,
                  complete: bool = True) -> Iterator[tuple[float, av.VideoFrame]]:
    """Decoded frames with their time in seconds on the player's timeline, seeking near
    `start` first. Raises VideoError for a decode error once frames have come (before the
    first frame, undecodable packets are skipped: a stream cut mid-GOP starts that way)
    and, with `complete`, for a file whose packets end before its header says."""
    if start > 0:
        container.seek(int((origin + start) / stream.time_base), stream=stream, backward=True)
        frames = _decoded_from_here(container, stream, origin, complete)
        first = next(frames, None)
        if first is not None and first[0] <= start + _EPS:  # landed at or before start
            yield first
            yield from frames
            return
        # Landed after start, or nowhere (MPEG-TS seeks by guessing; start may be past the
        # end): decode from the top instead.
        frames.close()
        container.seek(0, backward=True)
    yield from _decoded_from_here(container, stream, origin, complete)


def _decoded_from_here(container, stream, origin: float,
                       complete: bool) -> Iterator[tuple[float, av.VideoFrame]]:
    rate = float(stream.average_rate or 25)
    n, t, data_end, first_error = 0, 0.0, None, None
    for packet in container.demux():  # every stream: their ends tell a cut file from a short video
        end = _packet_end(packet)
        if end is not None and packet.size:
            data_end = end if data_end is None else max(data_end, end)
        if packet.stream_index != stream.index:
            continue
        try:
            frames = packet.decode()
        except av.FFmpegError as err:
            if n:
                raise VideoError("decode error", f"after {t:.2f} s: {err}") from None
            first_error = first_error or err
            continue
        for frame in frames:
            t = frame.time - origin if frame.pts is not None else n / rate
            n += 1
            yield t, frame
    if not n and first_error is not None:
        raise VideoError("decode error", str(first_error))
    if complete:
        _check_complete(container, data_end, origin, 1 / rate)


def _check_complete(container, data_end: float | None, origin: float, frame_dur: float) -> None:
    """A file cut short: its packets end well before the end its header gives (slack:
    half a second, or two frames when a packet's duration is unknown at low frame rates)."""
    if container.format.name not in _HEADER_DURATION or not container.duration or data_end is None:
        return
    declared = _header_end(container)
    if data_end < declared - max(_TRUNCATION_SLACK_S, 2 * frame_dur):
        raise VideoError("truncated file", f"its data ends at {data_end - origin:.2f} s, its "
                         f"header says {declared - origin:.2f} s (cut short, or unreadable "
                         "from there on)")


def _header_end(container) -> float:
    """Where the header says the data ends, in seconds of stream time. FFmpeg gives the
    duration as a length from the start time, and for mp4 it is one (the mov demuxer works
    it out from the sample tables). A Matroska header's Duration is passed on as written,
    and muxers disagree on what they write there: the length (mkvmerge), or the end
    timestamp (FFmpeg's own muxer: `ffmpeg -c copy -output_ts_offset 30` of a 10 s clip says
    start 30 s, duration 40 s). Where the two readings differ (the file starts late) and
    both are possible (the end after the start), the earlier end is taken: a complete file
    always passes, and a late-starting mkv cut short is still caught unless the cut falls in
    its last `start` seconds."""
    start = (container.start_time or 0) / av.time_base
    duration = container.duration / av.time_base
    if container.format.name == "matroska,webm" and duration > start:
        return duration  # the end-timestamp reading: the earlier of the two
    return start + duration


def _resample(timed: Iterable[tuple[float, av.VideoFrame]], start: float, end: float | None,
              fps: float, frame_dur: float,
              show: Callable[[av.VideoFrame], av.VideoFrame]) -> Iterator[av.VideoFrame]:
    """show(frame) at times start, start + 1/fps, ... up to `end` or the end of the stream:
    each frame is the one on screen at that time (the last one whose timestamp is <= it;
    the first frame for times before it). `frame_dur` is the nominal frame duration, the
    time the last frame stays on screen. Returns the end of the span covered (None when
    the stream has no frame)."""
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
            yield show(shown)
            k += 1
        shown = frame
    if shown is None:
        return None
    if stop is None:  # the stream ended first: its last frame lasts one frame duration
        stop = last_time + frame_dur if end is None else min(end, last_time + frame_dur)
    while target() < stop - _EPS:
        yield show(shown)
        k += 1
    return stop


# ---------------------------------------------------------------------------- display

def _orientation(frame: av.VideoFrame) -> tuple[bool, bool, bool]:
    """(transpose, flip_x, flip_y) turning the stored picture into the shown one, from the
    frame's display matrix [a b u; c d v; x y w] (FFmpeg's convention: a stored point
    (x, y) is shown at (a*x + c*y, b*x + d*y), up to a translation)."""
    for side in frame.side_data:
        if side.type == SideDataType.DISPLAYMATRIX:
            m = np.frombuffer(bytes(side), np.int32)
            a, b, c, d = (int(v) for v in (m[0], m[1], m[3], m[4]))
            if abs(a) + abs(d) >= abs(b) + abs(c):  # 0 or 180 degrees, maybe mirrored
                return False, a < 0, d < 0
            return True, c < 0, b < 0  # 90 or 270
    return False, False, False


class _Display:
    """Turns decoded frames into what a player shows (orientation, sample aspect ratio),
    scaled so that the short side is `short_side` (None: the shown size)."""

    def __init__(self, first: av.VideoFrame, stream, short_side: int | None, pix_fmt: str,
                 interpolation: Interpolation):
        self.transpose, self.flip_x, self.flip_y = _orientation(first)
        sar = stream.sample_aspect_ratio or Fraction(1)
        w, h = first.width, first.height  # shown size before rotating: mpv's, never smaller
        w, h = (w * sar, h) if sar >= 1 else (w, h / sar)
        if self.transpose:
            w, h = h, w
        even = pix_fmt == "yuv420p"  # H.264/VP9 4:2:0 refuse odd sides
        if short_side:
            self.width, self.height = scaled_size(w, h, short_side)
        else:
            size = lambda x: max(2, int(round(x / 2)) * 2) if even else int(round(x))  # noqa: E731
            self.width, self.height = size(w), size(h)
        self.pix_fmt, self.interpolation = pix_fmt, interpolation
        self.scaler = VideoReformatter()  # one swscale context per clip (per frame: ~10x slower)

    def __call__(self, frame: av.VideoFrame) -> av.VideoFrame:
        w, h = (self.height, self.width) if self.transpose else (self.width, self.height)
        out = self.scaler.reformat(frame, width=w, height=h, format=self.pix_fmt,
                                   interpolation=self.interpolation)
        if self.transpose or self.flip_x or self.flip_y:
            out = self._reorient(out)
        return out

    def _turn(self, plane: np.ndarray) -> np.ndarray:
        if self.transpose:
            plane = plane.swapaxes(0, 1)
        if self.flip_y:
            plane = plane[::-1]
        if self.flip_x:
            plane = plane[:, ::-1]
        return np.ascontiguousarray(plane)

    def _reorient(self, frame: av.VideoFrame) -> av.VideoFrame:
        """Rotate/mirror the pixels themselves (each plane on its own: exact, no resampling)."""
        if frame.format.name != "yuv420p":
            return av.VideoFrame.from_ndarray(self._turn(frame.to_ndarray()),
                                              format=frame.format.name)
        packed, h, w = frame.to_ndarray(), frame.height, frame.width  # (3h/2, w): Y, U, V
        y, chroma = packed[:h], packed[h:].reshape(2, h // 2, w // 2)
        y, u, v = self._turn(y), self._turn(chroma[0]), self._turn(chroma[1])
        planes = np.concatenate([y.ravel(), u.ravel(), v.ravel()])
        return av.VideoFrame.from_ndarray(planes.reshape(-1, y.shape[1]), format="yuv420p")


# ---------------------------------------------------------------------------- reading

class Resampled:
    """The clip [start, end) of a video at `fps`, as a player shows it, short side
    `short_side` (None: the shown size), as frames in `pix_fmt`: iterate once. Afterwards
    `duration_s` is the source time the frames cover (from `start` to `end` or to the end
    of the stream, whose last frame lasts one frame duration). Raises VideoError for a
    missing, corrupt, truncated or video-less input, a decode error, nothing in range, or
    a still image unless `still_images` (then the picture is shown from `start` to `end`,
    or for one frame)."""

    def __init__(self, source: str | bytes, fps: float = 1.0, short_side: int | None = 256,
                 start: float | None = None, end: float | None = None,
                 pix_fmt: str = "yuv420p", still_images: bool = False):
        self.start, self.end = float(start or 0.0), end
        if end is not None and end <= self.start:
            raise VideoError("empty range", f"end {end} <= start {self.start}")
        self.source, self.fps, self.short_side, self.pix_fmt = source, fps, short_side, pix_fmt
        self.still_images = still_images
        self.duration_s: float | None = None

    def __iter__(self) -> Iterator[av.VideoFrame]:
        with _open(self.source) as container:
            stream = _video_stream(container)
            still = is_still_image(container)
            if still and not self.still_images:
                raise VideoError("still image", f"a single picture ({container.format.name}), "
                                 "not a video (`longvivit shards --still-images` takes it)")
            frame_dur = 1 / float(stream.average_rate or self.fps)
            if still:  # on screen from 0 to `end`, or for one frame from `start`
                frame_dur = self.end if self.end is not None else self.start + 1 / self.fps
            origin = 0.0 if still else _origin(container, stream)
            timed = _timed_frames(container, stream, 0.0 if still else self.start, origin,
                                  complete=not still)
            if still:  # the picture is on screen from 0 on
                timed = ((0.0, frame) for _, frame in timed)
            display = None

            def show(frame):
                nonlocal display
                display = display or _Display(frame, stream, self.short_side, self.pix_fmt,
                                              _SCALE_FLAGS)
                return display(frame)

            stop = yield from _resample(timed, self.start, self.end, self.fps, frame_dur, show)
            if display is None:
                shown = "has no frames" if stop is None else f"ends at {stop:.2f} s"
                until = "end" if self.end is None else f"{self.end:g}"
                raise VideoError("zero frames",
                                 f"nothing in [{self.start:g}, {until}) s: the video {shown}")
            self.duration_s = round(stop - self.start, 6)


def read_resampled(source: str | bytes, fps: float = 1.0, short_side: int | None = 256,
                   start: float | None = None, end: float | None = None,
                   pix_fmt: str = "yuv420p", still_images: bool = False) -> Resampled:
    """Resampled(...): the clip's frames (iterate) and the source time they cover."""
    return Resampled(source, fps, short_side, start, end, pix_fmt, still_images)


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


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """An (H, W, 3) uint8 RGB picture as JPEG bytes (Pillow's libjpeg: baseline, 4:2:0
    chroma like the shards' VP9, no EXIF): the form image data sets store, which DALI's
    image decoder decodes with nvJPEG on a GPU (baseline is the form the GPUs' hardware
    JPEG decoders take; progressive JPEGs go to its slower CUDA path)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def is_picture(source: str | bytes) -> bool:
    """Whether `source` is a still image (PNG, JPEG, ...: a picture demuxer, whatever its
    name says) rather than a video; unreadable input raises VideoError as `read_resampled`
    does."""
    with _open(source) as container:
        return is_still_image(container)


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
    """Frame count, rate and shown size of a video, counting decoded frames (container
    metadata is often missing or wrong)."""
    with _open(source) as container:
        stream = _video_stream(container)
        n, first = 0, None
        for _, frame in _timed_frames(container, stream, 0.0, _origin(container, stream)):
            first = first or frame
            n += 1
        if first is None:
            raise VideoError("zero frames", "the video stream has no frames")
        shown = _Display(first, stream, None, "rgb24", RGB_FLAGS)
        return ClipInfo(n, float(stream.average_rate or 0), shown.width, shown.height)


def decode_frames(data: bytes, indices: Sequence[int], stats: dict | None = None) -> np.ndarray:
    """RGB frames (len(indices), H, W, 3) uint8 of an encoded clip by frame index (any
    order, repeats allowed), bit-identical to DALI's decoder. Indices count frames in
    presentation order from the first one with a non-negative timestamp, as DALI does; an
    index past the last frame gives the last frame, as DALI's pad_mode "edge" does.

    Decoding starts at the keyframe before each wanted frame (found from the packets'
    flags, read without decoding) unless the decoder is already between the two, so a
    16-frame window at the end of a clip costs what one at its start does: the frames
    from its keyframe on. `stats["decoded"]` counts the frames decoded."""
    wanted = sorted(set(int(i) for i in indices))
    with _open(data) as container:
        stream = _video_stream(container, threads=1)  # callers decode clips in parallel
        pts, last_key = _keyframe_index(container, stream)
        if not pts or wanted[0] < 0:
            raise VideoError("frame out of range", f"frames {wanted[0]}..{wanted[-1]} of a "
                             f"{len(pts)}-frame clip")
        last = len(pts) - 1
        wanted = sorted({min(i, last) for i in wanted})
        index = {p: i for i, p in enumerate(pts)}
        rgb, found, decoded = VideoReformatter(), {}, 0
        frames, next_index = None, None  # the decoder's output stream, the index it gives next
        for target in wanted:
            key = last_key[target]
            if next_index is None or target < next_index or key > next_index:
                container.seek(pts[key], stream=stream, backward=True)
                frames, next_index = _decoded(container, stream), key
            for frame in frames:
                decoded += 1
                i = index.get(frame.pts)
                if i is None:
                    continue  # a negative timestamp: DALI skips those too
                next_index = i + 1
                if i >= target:
                    break
            if i != target:
                raise VideoError("decode error", f"frame {target} never came out of the decoder")
            found[target] = rgb.reformat(frame, format="rgb24",
                                         interpolation=RGB_FLAGS).to_ndarray()
    if stats is not None:
        stats["decoded"] = stats.get("decoded", 0) + decoded
    return np.stack([found[min(int(i), last)] for i in indices])


def _keyframe_index(container, stream) -> tuple[list[int], list[int]]:
    """(pts of each frame in presentation order, index of the last keyframe at or before
    each frame), from the packets alone (no decoding)."""
    packets = sorted((p.pts, p.is_keyframe) for p in container.demux(stream)
                     if p.size and p.pts is not None and p.pts >= 0)
    last, last_key = 0, []
    for i, (_, key) in enumerate(packets):
        last = i if key else last
        last_key.append(last)
    return [p for p, _ in packets], last_key


def _decoded(container, stream) -> Iterator[av.VideoFrame]:
    try:
        yield from container.decode(stream)
    except av.FFmpegError as err:
        raise VideoError("decode error", str(err)) from None


def frames_at(source: str | bytes, times: Sequence[float]) -> np.ndarray:
    """RGB frames (N, H, W, 3) uint8 a player shows at each of `times` (seconds from the
    start of the file, any order), at the shown size: the reference decoder the tests and
    the benchmark compare against. For an upright, square-pixel stream (the shards) it is
    bit-identical to DALI's decoder (RGB_FLAGS)."""
    wanted = sorted(set(times))
    found: dict[float, np.ndarray] = {}
    with _open(source) as container:
        stream = _video_stream(container)
        shown, i, display = None, 0, None
        for t, frame in _timed_frames(container, stream, 0.0, _origin(container, stream)):
            display = display or _Display(frame, stream, None, "rgb24", RGB_FLAGS)
            while shown is not None and i < len(wanted) and wanted[i] < t - _EPS:
                found[wanted[i]] = display(shown).to_ndarray()
                i += 1
            if i == len(wanted):
                break
            shown = frame
        if shown is None:
            raise VideoError("zero frames", "the video stream has no frames")
        for t in wanted[i:]:
            found[t] = display(shown).to_ndarray()
    return np.stack([found[t] for t in times])
