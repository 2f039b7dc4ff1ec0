"""Encoded clip bytes -> (B, T, S, S, 3) uint8 frames on the device.

On GPU, one DALI pipeline:
    fn.external_source (bytes, frame indices, crop box)
      -> fn.decoders.video(frames=indices, device="mixed")   NVDEC
      -> fn.resize(roi=crop box, size=S x S)   crop, resize and flip in one resampling pass
On CPU, each clip is decoded by whichever of two decoders decodes fewer frames for it:
    DALI's CPU decoder, in the pipeline above with device="cpu", or
    PyAV (video.decode_frames): seek to the keyframe before the wanted frames, decode
      from there, RGB -> fn.external_source (frames, crop box) -> fn.resize(...)  (DALI)
DALI's CPU decoder does not seek: it decodes every frame from the start of the clip up to
the last one wanted (DALI 2.4; neither `build_index` nor `start_frame` changes that), so a
16-frame window at the end of a 250-frame clip costs ~10x one at its start
(bench/RESULTS.md, decode). PyAV seeks, but pays Python per frame, so a clip whose wanted
frames start early (uniform sampling, a window near the start) goes to DALI and the others
to PyAV. PyAV's frames are bit-identical to DALI's decoder's (the same FFmpeg decoders and
YUV->RGB; tests/test_data_decode.py), so which decoder a clip gets changes nothing in the
batch. (torchcodec seeks too, but needs FFmpeg's shared libraries installed on the machine;
PyAV bundles its own and is already a dependency.)

Frame selection and crop boxes are planned in Python (`plan_clip`) from each clip's
metadata and a per-sample generator: every random choice is reproducible from (seed,
epoch, index), and only the selected frames are decoded, from the nearest keyframe on.

A DALI error poisons the pipeline (every later run fails), so `VideoDecoder.decode`
rebuilds it and decodes the batch again one sample at a time to find the bad ones, which
it reports to the caller instead of raising; a clip PyAV cannot decode is reported the same
way.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .video import decode_frames

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
    """Decodes batches of clips: DALI (NVDEC) on GPU; on CPU, each clip by whichever of
    DALI's decoder and PyAV decodes fewer frames for it, then DALI's resize.

    backend: "auto" (the CPU default): a clip goes to DALI's CPU decoder when the frames
    before its first wanted one are no more than the span it wants (first <= last - first:
    uniform sampling, a window near the start), so that DALI decodes at most twice what is
    needed and its lower cost per frame (~1.5x PyAV's at 64 px, which pays Python per
    frame) wins; otherwise to PyAV, which seeks (a window deep in a clip). "dali": always
    DALI's decoder (the only choice on GPU); "pyav": always PyAV (CPU). All give the same
    frames, bit for bit. num_threads: DALI's threads and, with PyAV, the clips of a batch
    decoded at once."""

    def __init__(self, batch_size: int, image_size: int, device: torch.device,
                 num_threads: int | None = None, backend: str | None = None):
        if device.type == "cuda" and device.index is None:
            # pin the index now: the pipeline may be rebuilt in the prefetch thread, whose
            # current CUDA device is 0 whatever the main thread set
            device = torch.device("cuda", torch.cuda.current_device())
        self.batch_size, self.image_size, self.device = batch_size, image_size, device
        self.dali_device = "mixed" if device.type == "cuda" else "cpu"
        self.backend = backend or ("dali" if self.dali_device == "mixed" else "auto")
        if self.backend not in ("auto", "dali", "pyav") or (
                self.dali_device == "mixed" and self.backend != "dali"):
            raise ValueError(f"backend must be 'dali', or 'auto' or 'pyav' on CPU; got "
                             f"{self.backend!r} on {device}")
        self.num_threads = num_threads or default_threads()
        self.pipes = {kind: self._build(kind) for kind in self._kinds()}
        self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="longvivit-pyav") \
            if self.backend != "dali" and self.num_threads > 1 else None

    def _kinds(self) -> tuple[str, ...]:
        """Pipelines: "decode" (DALI decodes and resizes), "resize" (PyAV's frames in)."""
        kinds = {"dali": ("decode",), "pyav": ("resize",), "auto": ("decode", "resize")}
        return kinds[self.backend]

    def _build(self, kind: str):
        from nvidia.dali import fn, pipeline_def, types

        # prefetch_queue_depth=1: we feed one batch per run() ourselves (a deeper queue
        # would wait for inputs we have not fed); prefetching happens in the loader.
        device_id = self.device.index if self.dali_device == "mixed" else None

        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads,
                      device_id=device_id, exec_dynamic=True, prefetch_queue_depth=1)
        def clip_pipeline():
            if kind == "resize":
                video = fn.external_source(name="decoded", dtype=types.UINT8, ndim=4,
                                           layout="FHWC")
            else:
                encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
                frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
                video = fn.decoders.video(encoded, device=self.dali_device, frames=frames)
            roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)
            roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)
            return fn.resize(video, size=[self.image_size, self.image_size],
                             roi_start=roi_start, roi_end=roi_end, roi_relative=False)

        pipe = clip_pipeline()
        pipe.build()
        return pipe

    def _run(self, kind: str, inputs: list, plans: list[ClipPlan]) -> torch.Tensor:
        """inputs: encoded bytes ("decode") or decoded (T, H, W, 3) frames ("resize")."""
        pipe = self.pipes[kind]
        if kind == "resize":
            pipe.feed_input("decoded", inputs)
        else:
            pipe.feed_input("encoded", [np.frombuffer(e, np.uint8) for e in inputs])
            pipe.feed_input("frames", [p.frames for p in plans])
        pipe.feed_input("roi_start", [p.roi_start for p in plans])
        pipe.feed_input("roi_end", [p.roi_end for p in plans])
        (out,) = pipe.run()
        return _to_torch(out, self.device)

    def decode(self, encoded: list[bytes], plans: list[ClipPlan]
               ) -> tuple[torch.Tensor | None, list[int], str]:
        """(video (b, T, S, S, 3) of the samples that decoded, their positions in the input,
        the first error message or ""). Never raises for bad bytes."""
        ok = [i for i, e in enumerate(encoded) if looks_like_video(e)]
        errors = [] if len(ok) == len(encoded) else ["not a webm/mp4 container"]
        by_dali = [i for i in ok if self._dali_decodes(plans[i])]
        by_pyav = [i for i in ok if i not in set(by_dali)]
        clips: dict[int, torch.Tensor] = {}
        whole = []  # (positions, video) of each pipeline run that took all its samples
        if by_pyav:
            by_pyav, frames, error = self._decode_pyav(encoded, plans, by_pyav)
            errors.append(error)
            if by_pyav:
                whole += self._run_checked("resize", frames, plans, by_pyav, clips, errors)
        if by_dali:
            whole += self._run_checked("decode", [encoded[i] for i in by_dali], plans, by_dali,
                                       clips, errors)
        good = sorted(clips)
        error = next((e for e in errors if e), "")
        if len(whole) == 1 and whole[0][0] == good:  # one run, nothing to reorder: no copy
            return whole[0][1], good, error
        return (torch.stack([clips[i] for i in good]) if good else None), good, error

    def _dali_decodes(self, plan: ClipPlan) -> bool:
        if self.backend != "auto":
            return self.backend == "dali"
        first, last = int(plan.frames.min()), int(plan.frames.max())
        return first <= last - first  # DALI decodes 0..last: at most ~2x the span wanted

    def _run_checked(self, kind, inputs, plans, positions, clips, errors) -> list:
        """Run a pipeline over `positions` into `clips`; on a DALI error, rebuild it and run
        the samples one at a time to keep the good ones. Returns [(positions, video)] when
        the batch went through whole, else []."""
        try:
            video = self._run(kind, inputs, [plans[i] for i in positions])
            clips.update(zip(positions, video))
            return [(positions, video)]
        except Exception as err:  # noqa: BLE001 -- DALI raises several types for bad bytes
            self.pipes[kind] = self._build(kind)
            errors.append(dali_reason(err))
        for item, i in zip(inputs, positions):
            try:
                clips[i] = self._run(kind, [item], [plans[i]])[0]
            except Exception:  # noqa: BLE001
                self.pipes[kind] = self._build(kind)
        return []

    def _decode_pyav(self, encoded, plans, candidates) -> tuple[list[int], list, str]:
        """(positions that decoded, their frames, the first error or "")."""
        def one(i):
            try:
                return decode_frames(encoded[i], plans[i].frames)
            except Exception as err:  # noqa: BLE001 -- VideoError, or PyAV on garbage
                return f"{type(err).__name__}: {err}"
        results = list(self._pool.map(one, candidates) if self._pool else map(one, candidates))
        good = [(i, r) for i, r in zip(candidates, results) if not isinstance(r, str)]
        error = next((r for r in results if isinstance(r, str)), "")
        return [i for i, _ in good], [r for _, r in good], error


def dali_reason(err: Exception) -> str:
    """The line of a DALI error that says what went wrong ("Assert ... failed: Failed to create
    video decoder ..."), not the trailing "Current pipeline object is no longer valid." that
    DALI appends once the pipeline is dead."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if "encountered:" in lines[:-1]:  # DALI: where the operator was defined, then the reason
        return lines[lines.index("encountered:") + 1]
    generic = ("Critical error in pipeline", "Current pipeline object is no longer valid")
    return next((line for line in lines if not line.startswith(generic)), lines[-1] if lines else repr(err))


def default_threads() -> int:
    """Decode threads when none are asked for: half the cores (the training step and the
    DataLoader workers run on the rest), 1 to 4. On 2 cores a second thread moved neither
    the loader's samples/s nor the training steps/s it fed beyond the noise
    (bench/RESULTS.md, decode)."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _to_torch(out, device: torch.device) -> torch.Tensor:
    """DALI TensorList (B x (T, S, S, 3)) -> one torch tensor on `device`."""
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dense = out.as_tensor()
    target = torch.empty(dense.shape(), dtype=torch.uint8, device=device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    feed_ndarray(dense, target, cuda_stream=stream)
    return target
