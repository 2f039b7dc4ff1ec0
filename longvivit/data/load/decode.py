"""Encoded clip bytes -> (B, T, S, S, 3) uint8 frames on the device.

Each clip goes to one of four pipelines (`VideoDecoder.route`), all ending in the same
resize (crop, resize and flip in one resampling pass):
    nvdec  fn.decoders.video(frames=indices, device="mixed")   NVDEC, on a CUDA device, for
           the clips NVDEC decodes (`decoder_kind`: codec and frame size)
    dali   fn.decoders.video(frames=indices, device="cpu")     DALI's CPU decoder
    pyav   video.decode_frames: seek to the keyframe before the wanted frames, decode from
           there, RGB -> fn.external_source (frames)
    image  fn.decoders.image (device "mixed", nvJPEG, on a CUDA device; "cpu" otherwise):
           a JPEG still (`longvivit shards --still-images`), its one frame repeated T times
      -> fn.resize(roi=crop box, size=S x S)
A clip NVDEC cannot take on a CUDA device (the 32-px VP9 clips of the demo and of the
local forms: NVDEC's smallest VP9 frame is 128x128) is decoded and resized on the CPU,
like every clip on a CPU device, and its frames are copied to the device.

On the CPU, a clip goes to whichever of DALI's decoder and PyAV decodes fewer frames for it.
DALI's CPU decoder does not seek: it decodes every frame from the start of the clip up to
the last one wanted (DALI 2.4; neither `build_index` nor `start_frame` changes that), so a
16-frame window at the end of a 250-frame clip costs ~10x one at its start
(bench/RESULTS.md, decode). PyAV seeks, but pays Python per frame, so a clip whose wanted
frames start early (uniform sampling, a window near the start) goes to DALI and the others
to PyAV. PyAV's frames are bit-identical to DALI's decoder's (the same FFmpeg decoders and
YUV->RGB; tests/test_data_decode.py), so which decoder a clip gets changes nothing in the
batch. (torchcodec seeks too, but needs FFmpeg's shared libraries installed on the machine;
PyAV bundles its own and is already a dependency.)

A frame index at or past the end of a clip repeats its last frame in every decoder
(DALI's pad_mode "edge", decode_frames likewise): the loader plans indices from the frame
count PyAV saw when the shard was written, and a decoder that counts fewer frames (H.264
with B-frames or edit lists) must not answer with black frames.

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

from longvivit.data.prepare.video import decode_frames

# Containers the shards hold: webm/mkv (EBML magic) and mp4 (an 'ftyp' box first); and the
# start of a JPEG (SOI marker, then another marker): a still written by --still-images.
_EBML = b"\x1a\x45\xdf\xa3"
_JPEG = b"\xff\xd8\xff"

# NVDEC's smallest frame (width, height) per codec (the shards' codec names). Below it
# NVDEC refuses the clip: DALI's mixed decoder asserts "width >= caps_.nMinWidth && height
# >= caps_.nMinHeight ... Video is too small in at least one dimension" (NVIDIA/DALI#2197),
# nMinWidth/nMinHeight being what cuvidGetDecoderCaps reports for the GPU. NVIDIA's table
# (Video Codec SDK, "NVDEC video decoder capabilities") could not be read from here; the
# numbers are those caps as tools print them on recent GPUs: H.264 48x16 (nvdecinfo on an
# RTX 3050, philipl/nv-video-info#7; GStreamer's nvh264dec, Xpra-org/xpra#3703), HEVC
# 144x144 and VP8 48x16 (GStreamer's nvdecoder caps, batocera-linux/batocera.linux#12360),
# AV1 128x128 (nvidia-vaapi-driver#148 and #365), VP9 128x128 (nvidia-vaapi-driver#365;
# shiguredo/sora-cpp-sdk#1: NVIDIA's hardware decoder cannot decode VP9 below 128x128).
NVDEC_MIN_SIZE = {"h264": (48, 16), "vp8": (48, 16), "hevc": (144, 144), "vp9": (128, 128),
                  "av1": (128, 128)}
# Codecs DALI's CPU decoder lacks (design.md: its CPU build decodes VP8, VP9 and MJPEG);
# PyAV's FFmpeg decodes them.
_NOT_ON_DALI_CPU = ("h264", "hevc", "av1")


@dataclass
class ClipPlan:
    """What to decode from one clip and where to crop it."""

    frames: np.ndarray  # int32 (T,) frame indices, edge-padded past the clip's end
    real_frames: int  # how many of them are distinct frames of the clip
    roi_start: np.ndarray  # float32 (2,) crop box corner (y, x) in source pixels
    roi_end: np.ndarray  # float32 (2,) opposite corner; x_end < x_start flips horizontally
    codec: str = ""  # the shard's codec column: which decoder can take the clip ("": unknown)
    width: int = 0  # the clip's frame size in pixels (0: unknown)
    height: int = 0


def decoder_kind(codec: str, width: int, height: int, device_type: str) -> str:
    """Where a clip of `codec` at width x height is decoded on a device of `device_type`:
    "mixed" (NVDEC) on a CUDA device when NVDEC takes that size, else "cpu". A codec or
    size the caller does not know ("", 0) goes to NVDEC on CUDA, as every clip did before
    sizes were checked; a JPEG too (nvJPEG, whose hardware limits DALI handles itself)."""
    if device_type != "cuda":
        return "cpu"
    min_width, min_height = NVDEC_MIN_SIZE.get(codec, (0, 0))
    too_small = 0 < width < min_width or 0 < height < min_height
    return "cpu" if too_small else "mixed"


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
    width, height = int(sample["width"]), int(sample["height"])
    start, end = crop_box(width, height, rng, do_flip)
    return ClipPlan(idx, real, start, end, str(sample.get("codec", "")), width, height)


def looks_like_video(data: bytes) -> bool:
    """A cheap header check that turns empty or obviously garbled bytes into a decode
    failure before they reach DALI."""
    return len(data) > 12 and (data[:4] == _EBML or data[4:8] == b"ftyp")


class DecodeError(RuntimeError):
    pass


class VideoDecoder:
    """Decodes batches of clips, each by the pipeline `route` gives it: NVDEC where the
    device is CUDA and NVDEC takes the clip, DALI's image decoder for a JPEG still, and on
    the CPU (every clip on a CPU device, the others on a CUDA one) whichever of DALI's
    decoder and PyAV decodes fewer frames for it; then DALI's resize.

    backend: "auto" (the CPU default): a clip goes to DALI's CPU decoder when the frames
    before its first wanted one are no more than the span it wants (first <= last - first:
    uniform sampling, a window near the start), so that DALI decodes at most twice what is
    needed and its lower cost per frame (~1.5x PyAV's at 64 px, which pays Python per
    frame) wins; otherwise, or for a codec DALI's CPU build lacks, to PyAV, which seeks (a
    window deep in a clip). "dali": always DALI's decoder (the only choice on GPU, where it
    means NVDEC for the clips NVDEC takes and "auto" for the others); "pyav": always PyAV
    (CPU). All give the same frames, bit for bit. num_threads: DALI's threads and, with
    PyAV, the clips of a batch decoded at once. Pipelines are built on first use (a CPU
    run never needs NVDEC's, a run of large clips never needs the CPU ones)."""

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
        self.pipes: dict = {}  # route -> DALI pipeline, built by _pipe
        self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="longvivit-pyav") \
            if self.num_threads > 1 else None

    def route(self, data: bytes, plan: ClipPlan) -> str:
        """The pipeline that decodes a clip: "image" (a JPEG still), "nvdec", "dali" (DALI's
        CPU decoder) or "pyav"; "" for bytes that are neither a webm/mp4 container nor a
        JPEG. Only reads the plan and the first bytes: no pipeline is built."""
        if data[:3] == _JPEG:
            return "image"
        if not looks_like_video(data):
            return ""
        if decoder_kind(plan.codec, plan.width, plan.height, self.device.type) == "mixed":
            return "nvdec"
        return "dali" if self._dali_decodes(plan) else "pyav"

    def _dali_decodes(self, plan: ClipPlan) -> bool:
        """Whether DALI's CPU decoder, not PyAV, decodes a clip the CPU decodes."""
        if self.backend != "auto" and self.dali_device == "cpu":
            return self.backend == "dali"
        if plan.codec in _NOT_ON_DALI_CPU:
            return False
        first, last = int(plan.frames.min()), int(plan.frames.max())
        return first <= last - first  # DALI decodes 0..last: at most ~2x the span wanted

    def decode(self, encoded: list[bytes], plans: list[ClipPlan]
               ) -> tuple[torch.Tensor | None, list[int], str]:
        """(video (b, T, S, S, 3) of the samples that decoded, their positions in the input,
        the first error message or ""). Never raises for bad bytes."""
        routes = [self.route(e, p) for e, p in zip(encoded, plans)]
        errors = [] if all(routes) else ["neither a webm/mp4 container nor a JPEG"]
        clips: dict[int, torch.Tensor] = {}
        whole = []  # (positions, video) of each pipeline run that took all its samples
        for kind in ("pyav", "dali", "nvdec", "image"):
            positions = [i for i, r in enumerate(routes) if r == kind]
            if positions:
                whole += self._decode_route(kind, encoded, plans, positions, clips, errors)
        good = sorted(clips)
        error = next((e for e in errors if e), "")
        if len(whole) == 1 and whole[0][0] == good:  # one run, nothing to reorder: no copy
            return whole[0][1], good, error
        return (torch.stack([clips[i] for i in good]) if good else None), good, error

    def resize(self, frames: list[np.ndarray], plans: list[ClipPlan]) -> torch.Tensor:
        """Frames decoded elsewhere, (T, H, W, 3) uint8 per clip -> (b, T, S, S, 3) on the
        device: the crop and resize of every route (longvivit/use/preprocess.py reads raw
        videos with PyAV and ends in it, as the loader's clips do)."""
        return self._run("pyav", frames, plans)

    def _decode_route(self, kind, encoded, plans, positions, clips, errors) -> list:
        """Decode the samples at `positions` by pipeline `kind` into `clips` (PyAV first
        decodes them to frames in Python); returns _run_checked's."""
        if kind != "pyav":
            return self._run_checked(kind, [encoded[i] for i in positions], plans, positions,
                                     clips, errors)
        positions, frames, error = self._decode_pyav(encoded, plans, positions)
        errors.append(error)
        return self._run_checked(kind, frames, plans, positions, clips, errors) if positions else []

    def _pipe(self, kind: str):
        if kind not in self.pipes:
            self.pipes[kind] = self._build(kind)
        return self.pipes[kind]

    def _build(self, kind: str):
        # DALI (here and below) loads its CUDA libraries on import: only where a pipeline is built
        from nvidia.dali import fn, pipeline_def, types

        # nvdec, and JPEGs on a CUDA device (nvJPEG), run "mixed"; the rest on the CPU,
        # whose output _to_torch copies to the device.
        gpu = kind == "nvdec" or (kind == "image" and self.dali_device == "mixed")
        device_id = self.device.index if gpu else None

        # prefetch_queue_depth=1: we feed one batch per run() ourselves (a deeper queue
        # would wait for inputs we have not fed); prefetching happens in the loader.
        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads,
                      device_id=device_id, exec_dynamic=True, prefetch_queue_depth=1)
        def clip_pipeline():
            video = _decoded(kind, "mixed" if gpu else "cpu")
            roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)
            roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)
            return fn.resize(video, size=[self.image_size, self.image_size],
                             roi_start=roi_start, roi_end=roi_end, roi_relative=False)

        pipe = clip_pipeline()
        pipe.build()
        return pipe

    def _run(self, kind: str, inputs: list, plans: list[ClipPlan]) -> torch.Tensor:
        """inputs: decoded (T, H, W, 3) frames ("pyav") or encoded bytes (the others)."""
        pipe = self._pipe(kind)
        if kind == "pyav":
            pipe.feed_input("decoded", inputs)
        else:
            pipe.feed_input("encoded", [np.frombuffer(e, np.uint8) for e in inputs])
        if kind in ("dali", "nvdec"):
            pipe.feed_input("frames", [p.frames for p in plans])
        pipe.feed_input("roi_start", [p.roi_start for p in plans])
        pipe.feed_input("roi_end", [p.roi_end for p in plans])
        (out,) = pipe.run()
        video = _to_torch(out, self.device)
        if kind == "image":  # (b, S, S, 3): every frame of a still is the picture
            video = video.unsqueeze(1).expand(-1, len(plans[0].frames), -1, -1, -1).contiguous()
        return video

    def _run_checked(self, kind, inputs, plans, positions, clips, errors) -> list:
        """Run a pipeline over `positions` into `clips`; on a DALI error, rebuild it and run
        the samples one at a time to keep the good ones. Returns [(positions, video)] when
        the batch went through whole, else []."""
        try:
            video = self._run(kind, inputs, [plans[i] for i in positions])
            clips.update(zip(positions, video))
            return [(positions, video)]
        except Exception as err:  # noqa: BLE001 -- DALI raises several types for bad bytes
            self.pipes.pop(kind, None)  # dead: _pipe builds it again
            errors.append(dali_reason(err))
        for item, i in zip(inputs, positions):
            try:
                clips[i] = self._run(kind, [item], [plans[i]])[0]
            except Exception:  # noqa: BLE001
                self.pipes.pop(kind, None)
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


def _decoded(kind: str, device: str):
    """The pipeline's frames before the resize, by route: PyAV's (fed), a JPEG's picture
    (H, W, 3), or DALI's video decoder's (T, H, W, 3). Called inside a pipeline definition."""
    from nvidia.dali import fn, types  # heavy: see _build

    if kind == "pyav":
        return fn.external_source(name="decoded", dtype=types.UINT8, ndim=4, layout="FHWC")
    encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
    if kind == "image":  # jpeg_fancy_upsampling: nvJPEG's chroma upsampling as libjpeg's (CPU)
        return fn.decoders.image(encoded, device=device, output_type=types.RGB,
                                 jpeg_fancy_upsampling=True)
    frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
    # pad_mode "edge": an index at or past DALI's own frame count repeats the last frame;
    # the default, "constant", answers with black frames. (DALI 2.4's docstring calls
    # pad_mode "not relevant" with `frames`, yet applies it: tests/test_data_decode.py.)
    return fn.decoders.video(encoded, device=device, frames=frames, pad_mode="edge")


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
    """DALI TensorList (B x (T, S, S, 3)) -> one torch tensor on `device` (a CPU pipeline's
    output on a CUDA device is copied there)."""
    # heavy: see VideoDecoder._build
    from nvidia.dali.backend import TensorGPU
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dense = out.as_tensor()
    on_gpu = isinstance(dense, TensorGPU)
    target = torch.empty(dense.shape(), dtype=torch.uint8, device=device if on_gpu else "cpu")
    feed_ndarray(dense, target, cuda_stream=torch.cuda.current_stream(device) if on_gpu else None)
    return target.to(device)
