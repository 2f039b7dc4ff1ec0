"""The DALI pipeline: encoded clip bytes -> (B, T, S, S, 3) uint8 frames on the device.

    fn.external_source (bytes, frame indices, crop box)
      -> fn.decoders.video(frames=indices)     "mixed" (NVDEC) on GPU, "cpu" otherwise
      -> fn.resize(roi=crop box, size=S x S)   crop, resize and flip in one resampling pass

Frame selection and crop boxes are planned in Python (`plan_clip`) from each clip's
metadata and a per-sample generator, and handed to DALI as per-sample arguments: the
decoder decodes only the selected frames (seeking from the nearest keyframe), and every
random choice is reproducible from (seed, epoch, index).

A DALI error poisons the pipeline (every later run fails), so `VideoDecoder.decode`
rebuilds it and decodes the batch again one sample at a time to find the bad ones, which
it reports to the caller instead of raising.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

# Containers the shards hold: webm/mkv (EBML magic) and mp4 (an 'ftyp' box first).
_EBML = b"\x1a\x45\xdf\xa3"


@dataclass
class ClipPlan:
    """What to decode from one clip and where to crop it."""

    frames: np.ndarray  # int32 (T,) frame indices, edge-padded past the clip's end
    real_frames: int  # how many of them are distinct frames of the clip
    roi_start: np.ndarray  # float32 (2,) crop box corner (y, x) in source pixels
    roi_end: np.ndarray  # float32 (2,) opposite corner; x_end < x_start flips horizontally


def select_frames(num_frames: int, wanted: int, sampling: str,
                  rng: np.random.Generator | None) -> tuple[np.ndarray, int]:
    """(indices (wanted,), real count). uniform: `wanted` frames spread over the whole clip
    (segment centres); fps: `wanted` consecutive frames, at a random start when `rng` is
    given, else centred. A clip shorter than `wanted` gives all its frames, then the last
    one repeated."""
    if num_frames <= wanted:
        idx = np.minimum(np.arange(wanted), num_frames - 1)
        return idx.astype(np.int32), num_frames
    if sampling == "uniform":
        idx = ((np.arange(wanted) + 0.5) * num_frames / wanted).astype(np.int64)
    else:
        slack = num_frames - wanted
        start = int(rng.integers(slack + 1)) if rng is not None else slack // 2
        idx = start + np.arange(wanted)
    return idx.astype(np.int32), wanted


def crop_box(width: int, height: int, rng: np.random.Generator | None,
             flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """The largest centred (rng None) or randomly placed square, as (y, x) corners: the
    same as resizing the short side to the model's size and cropping a square."""
    side = min(width, height)
    u, v = (rng.random(), rng.random()) if rng is not None else (0.5, 0.5)
    y0, x0 = (height - side) * u, (width - side) * v
    start, end = [y0, x0], [y0 + side, x0 + side]
    if flip:  # DALI's resize mirrors an ROI whose end lies before its start
        start[1], end[1] = end[1], start[1]
    return np.array(start, np.float32), np.array(end, np.float32)


def plan_clip(sample: dict, frames: int, sampling: str, rng: np.random.Generator | None,
              flip: bool) -> ClipPlan:
    """rng None: evaluation (centred window and crop, no flip)."""
    idx, real = select_frames(int(sample["num_frames"]), frames, sampling, rng)
    do_flip = flip and rng is not None and rng.random() < 0.5
    start, end = crop_box(int(sample["width"]), int(sample["height"]), rng, do_flip)
    return ClipPlan(idx, real, start, end)


def looks_like_video(data: bytes) -> bool:
    """A cheap header check that turns empty or obviously garbled bytes into a decode
    failure before they reach DALI."""
    return len(data) > 12 and (data[:4] == _EBML or data[4:8] == b"ftyp")


class DecodeError(RuntimeError):
    pass


class VideoDecoder:
    """Decodes batches of clips with one DALI pipeline; rebuilt after a failure."""

    def __init__(self, batch_size: int, image_size: int, device: torch.device,
                 num_threads: int | None = None):
        if device.type == "cuda" and device.index is None:
            # pin the index now: the pipeline may be rebuilt in the prefetch thread, whose
            # current CUDA device is 0 whatever the main thread set
            device = torch.device("cuda", torch.cuda.current_device())
        self.batch_size, self.image_size, self.device = batch_size, image_size, device
        # The one difference between the GPU and the CPU path: NVDEC ("mixed") on GPU.
        self.dali_device = "mixed" if device.type == "cuda" else "cpu"
        self.num_threads = num_threads or max(1, min(4, (os.cpu_count() or 2) // 2))
        self.pipe = self._build()

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        # prefetch_queue_depth=1: we feed one batch per run() ourselves (a deeper queue
        # would wait for inputs we have not fed); prefetching happens in the loader.
        device_id = self.device.index if self.dali_device == "mixed" else None

        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads,
                      device_id=device_id, exec_dynamic=True, prefetch_queue_depth=1)
        def clip_pipeline():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
            roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)
            roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)
            video = fn.decoders.video(encoded, device=self.dali_device, frames=frames)
            return fn.resize(video, size=[self.image_size, self.image_size],
                             roi_start=roi_start, roi_end=roi_end, roi_relative=False)

        pipe = clip_pipeline()
        pipe.build()
        return pipe

    def _run(self, encoded: list[bytes], plans: list[ClipPlan]) -> torch.Tensor:
        self.pipe.feed_input("encoded", [np.frombuffer(e, np.uint8) for e in encoded])
        self.pipe.feed_input("frames", [p.frames for p in plans])
        self.pipe.feed_input("roi_start", [p.roi_start for p in plans])
        self.pipe.feed_input("roi_end", [p.roi_end for p in plans])
        (out,) = self.pipe.run()
        return _to_torch(out, self.device)

    def decode(self, encoded: list[bytes], plans: list[ClipPlan]
               ) -> tuple[torch.Tensor | None, list[int], str]:
        """(video (b, T, S, S, 3) of the samples that decoded, their positions in the input,
        the first error message or ""). Never raises for bad bytes."""
        ok = [i for i, e in enumerate(encoded) if looks_like_video(e)]
        error = "" if len(ok) == len(encoded) else "not a webm/mp4 container"
        if not ok:
            return None, [], error
        try:
            return self._run([encoded[i] for i in ok], [plans[i] for i in ok]), ok, error
        except Exception as err:  # noqa: BLE001 -- DALI raises several types for bad bytes
            self.pipe = self._build()
            return self._decode_one_by_one(encoded, plans, ok, str(err).splitlines()[-1])

    def _decode_one_by_one(self, encoded, plans, candidates, error):
        videos, good = [], []
        for i in candidates:
            try:
                videos.append(self._run([encoded[i]], [plans[i]]))
                good.append(i)
            except Exception:  # noqa: BLE001
                self.pipe = self._build()
        return (torch.cat(videos) if videos else None), good, error


def _to_torch(out, device: torch.device) -> torch.Tensor:
    """DALI TensorList (B x (T, S, S, 3)) -> one torch tensor on `device`."""
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dense = out.as_tensor()
    target = torch.empty(dense.shape(), dtype=torch.uint8, device=device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    feed_ndarray(dense, target, cuda_stream=stream)
    return target
