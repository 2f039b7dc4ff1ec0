"""A video file, its bytes or its frames -> the model's input, as training and eval see a clip.

What the shards hold of a clip is the clip as a player shows it (rotation, sample aspect
ratio, the file's own start time), resampled to the shard FPS with its short side at the
shard size (longvivit/data/prepare/video.py `read_resampled`), encoded as VP9. The loader
decodes the frames `data.sampling` selects (`select_frames`, the centred window in eval)
and crops the largest centred square, resized to the model's size by DALI
(longvivit/data/load/decode.py). `Preprocess` runs the same steps on a raw video, less the
VP9 round trip: the same PyAV reading, the same YUV -> RGB (RGB_FLAGS), the same frame
selection and the same DALI resize (`VideoDecoder.resize`), so a raw clip and its shard
sample differ only by what VP9 lost (tests/test_use_api.py measures it).

A uint8 array (T, H, W, 3) is taken as the clip's RGB frames at the shard FPS (no decode,
no resampling); its crop and resize are the same.

`Preprocess.windows` cuts a clip longer than the model's into overlapping windows of
`window` frames every `stride` frames (frames at the shard FPS, so frames / fps seconds),
each reduced to the model's frame count by data.sampling, streaming: a window is handed
out as soon as its frames are read, and only a window's frames are held (an hour at 1 FPS
is never in memory at once). The last window ends at the clip's end.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Union

import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from longvivit.config import validated
from longvivit.data.load.decode import ClipPlan, VideoDecoder, crop_box, select_frames
from longvivit.data.prepare.video import RGB_FLAGS, read_resampled
from longvivit.data.preprocessing import PreprocessConfig

Source = Union[str, Path, bytes, np.ndarray]
RESIZE_CHUNK = 32  # frames resized per DALI run: bounded memory for any clip length


class Clip(NamedTuple):
    """One clip as the model takes it."""
    video: torch.Tensor  # (T, S, S, 3) uint8 on the CPU, T = frames (the last frame repeated past the clip)
    real_frames: int  # how many of them are the clip's own
    duration_s: float  # the source time the clip covers


class Window(NamedTuple):
    """One window of a long clip, as the model takes it."""
    start_s: float  # seconds from the start of the file (the player's timeline)
    end_s: float
    video: torch.Tensor  # (T, S, S, 3) uint8
    real_frames: int


class Preprocess:
    """source (a path, bytes, or a uint8 (T, H, W, 3) array) -> Clip. Call it for the
    whole clip (or [start, end) seconds of it), `windows` for a long one."""

    def __init__(self, cfg: PreprocessConfig, threads: int = 1):
        self.cfg = validated(cfg)
        self.resizer = VideoDecoder(1, cfg.image_size, torch.device("cpu"), num_threads=threads, backend="pyav")

    def __call__(self, source: Source, start: float | None = None, end: float | None = None) -> Clip:
        frames, duration = self._resized(source, start, end)
        idx, real = select_frames(len(frames), self.cfg.frames, self.cfg.sampling, None)
        return Clip(frames[torch.from_numpy(idx).long()], real, duration)

    def windows(self, source: Source, window: int, stride: int, start: float | None = None,
                end: float | None = None) -> Iterator[Window]:
        """The clip's windows of `window` frames every `stride` frames, in order; the last
        one ends where the clip does (one window for a clip of `window` frames or fewer)."""
        offset = float(start or 0.0)
        held, first = [], 0  # resized frames from index `first` on
        next_start, last_end, n = 0, 0, 0
        for chunk in self._chunks(source, start, end):
            held.extend(chunk)
            n += len(chunk)
            while next_start + window <= n:
                yield self._window(held[next_start - first: next_start - first + window], next_start, offset)
                last_end, next_start = next_start + window, next_start + stride
            keep = min(next_start, n - window) - first  # the tail window may need the last `window`
            if keep > 0:
                del held[:keep]
                first += keep
        if n and last_end < n:
            tail = max(0, n - window)
            yield self._window(held[tail - first:], tail, offset)

    def _window(self, frames: list[torch.Tensor], begin: int, offset: float) -> Window:
        idx, real = select_frames(len(frames), self.cfg.frames, self.cfg.sampling, None)
        video = torch.stack([frames[i] for i in idx])
        fps = self.cfg.fps
        return Window(offset + begin / fps, offset + (begin + len(frames)) / fps, video, real)

    # ------------------------------------------------------------------ reading

    def _resized(self, source: Source, start: float | None, end: float | None) -> tuple[torch.Tensor, float]:
        """Every frame of the clip, cropped and resized: ((n, S, S, 3) uint8, seconds)."""
        chunks = list(self._chunks(source, start, end))
        frames = torch.cat(chunks) if chunks else torch.empty(0)
        if not len(frames):
            raise ValueError("the clip has no frames")
        return frames, len(frames) / self.cfg.fps

    def _chunks(self, source: Source, start: float | None, end: float | None) -> Iterator[torch.Tensor]:
        """The clip's frames, cropped and resized, RESIZE_CHUNK at a time ((n, S, S, 3) uint8)."""
        batch: list[np.ndarray] = []
        for rgb in self._rgb_frames(source, start, end):
            batch.append(rgb)
            if len(batch) == RESIZE_CHUNK:
                yield self._resize(batch)
                batch = []
        if batch:
            yield self._resize(batch)

    def _rgb_frames(self, source: Source, start: float | None, end: float | None) -> Iterable[np.ndarray]:
        """(H, W, 3) uint8 RGB frames at the shard FPS and short side, as the shards hold
        them before VP9 (an array: its own frames)."""
        if isinstance(source, np.ndarray):
            if source.ndim != 4 or source.shape[-1] != 3 or source.dtype != np.uint8:
                raise ValueError(f"a video array must be uint8 (T, H, W, 3); got {source.dtype} {source.shape}")
            return iter(source)
        source = str(source) if isinstance(source, Path) else source
        frames = read_resampled(source, self.cfg.fps, self.cfg.short_side or None, start, end)
        rgb = VideoReformatter()  # one swscale context per clip
        return (rgb.reformat(f, format="rgb24", interpolation=RGB_FLAGS).to_ndarray() for f in frames)

    def _resize(self, frames: list[np.ndarray]) -> torch.Tensor:
        height, width = frames[0].shape[:2]
        roi_start, roi_end = crop_box(width, height, None, False)
        plan = ClipPlan(np.zeros(0, np.int32), len(frames), roi_start, roi_end, width=width, height=height)
        return self.resizer.resize([np.ascontiguousarray(np.stack(frames))], [plan])[0]
