"""What fits on a GPU: the memory one GPU needs for a run config, predicted before any job
is queued (`longvivit plan`, longvivit/cli/plan.py; docs/performance.md, "Planning memory").

Model states follow the ZeRO paper's accounting (Rajbhandari et al. 2020) by stage, offload
and world size; activations are MEASURED by one forward of the real model on FakeTensors
(CPU kernels, nothing allocated) with the config's masking, checkpointing, freezing and
precision, the same count as longvivit.model.saved_bytes; inputs, DeepSpeed's buffers (upper
bounds from the ds_config) and a reserve for the CUDA context and fragmentation complete it.
Activations are affine in the micro-batch (measured at 1 and 2); the largest frame count and
the fewest checkpointed blocks that fit are searched, each candidate measured. With
parallel.sequence = N the forward runs as the first rank of a sequence group (PlannedShard:
its chunk of each clip's tokens, the whole sequence for 1/N of the heads in attention), so
the frames that fit grow with N.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from longvivit.config import ConfigError, load_config, to_dict
from longvivit.distributed.sequence import SequenceShard
from longvivit.model import build_model, saved_bytes
from longvivit.model.config import ModelConfig
from longvivit.train.config import (
    RunConfig,
    data_world,
    keep_global_batch,
    load_run_config,
    repo_path,
    resolve_ds_config,
    zero_stage,
)

CONTEXT_BYTES = 2**30  # CUDA context + cuBLAS/NCCL workspaces, outside the caching allocator
FRAGMENTATION = 0.10  # allocator fragmentation and transients not counted as saved tensors
MAX_FRAMES_CAP = 1 << 16  # the frame search stops here (about 18 hours at 1 FPS)

ASSUMPTIONS = [
    "model states per the ZeRO paper: bf16/fp16 2+2+12 bytes per trainable parameter, fp32 4+4+8",
    "activations: bytes saved for backward, measured on FakeTensors with CPU kernels "
    "(flash-style attention: no N x N matrix is saved, as with CUDA flash/mem-efficient SDPA)",
    f"reserve: {CONTEXT_BYTES / 2**30:.0f} GiB CUDA context + {FRAGMENTATION:.0%} of the rest "
    "for fragmentation and unmodelled transients",
    "zero_buffers: upper bounds (gradient buckets; ZeRO-3 live gathered parameters up to "
    "stage3_max_live_parameters + prefetch bucket)",
]

# DeepSpeed 0.19's defaults for the zero_optimization keys the plan reads
DS_DEFAULTS = {"reduce_bucket_size": int(5e8), "allgather_bucket_size": int(5e8),
               "stage3_prefetch_bucket_size": int(5e7), "stage3_max_live_parameters": int(1e9),
               "stage3_param_persistence_threshold": int(1e5)}

# The run-config keys (and the sections under them) that change the plan; an override of
# any other key (steps, optim.*, data.train, out, ...) has no effect on memory and is
# reported in the plan's `ignored`. global_batch, global_batch_by and grad_accum set the
# micro-batch under global_batch_by=batch_size (keep_global_batch).
PLAN_KEYS = ("model", "precision", "ds_config", "data.batch_size", "data.text_length", "data.frames",
             "data.image_size", "local", "global_batch", "global_batch_by", "grad_accum", "parallel")

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20,
          "g": 2**30, "t": 2**40}


def parse_bytes(text: str) -> int:
    """'80GiB', '16GB', '81559MiB', '80G' (binary) or a plain byte count -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"--gpu-mem: cannot read {text!r} (e.g. 80GiB, 16GB)")
    n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n <= 0:
        raise ConfigError(f"--gpu-mem: {text!r} is no memory (e.g. 80GiB, 16GB)")
    return n


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


# ---------------------------------------------------------------------------- model states

@dataclass
class ParamCounts:
    total: int
    trainable: int
    persistent: int  # elements in parameters ZeRO-3 keeps whole on every GPU
    persistent_trainable: int


def count_params(cfg: ModelConfig, persistence_threshold: int) -> ParamCounts:
    """Parameter counts of the model `cfg` builds, on the meta device (no allocation)."""
    with torch.device("meta"):
        model = build_model(cfg)
    params = list(model.parameters())
    small = [p for p in params if p.numel() <= persistence_threshold]
    return ParamCounts(total=sum(p.numel() for p in params),
                       trainable=sum(p.numel() for p in params if p.requires_grad),
                       persistent=sum(p.numel() for p in small),
                       persistent_trainable=sum(p.numel() for p in small if p.requires_grad))


def zero_settings(ds: dict) -> dict:
    zero = ds.get("zero_optimization", {})
    # "auto" (left for a framework to fill in) is DeepSpeed's default, as DeepSpeedZeroConfig reads it
    out = {k: int(v if zero.get(k, v) == "auto" else zero.get(k, v)) for k, v in DS_DEFAULTS.items()}
    out["stage"] = zero_stage(ds)
    out["overlap_comm"] = bool(zero.get("overlap_comm", out["stage"] == 3))
    out["offload_optimizer"] = _offloaded(zero.get("offload_optimizer"))
    out["offload_param"] = _offloaded(zero.get("offload_param")) and out["stage"] == 3
    return out


def _offloaded(section) -> bool:
    return isinstance(section, dict) and section.get("device", "none") in ("cpu", "nvme")


def state_bytes(n: ParamCounts, precision: str, zero: dict, gpus: int) -> dict:
    """Per-GPU bytes of parameters, gradients, optimizer state and ZeRO buffers, plus what
    offload moves to the host (`host`)."""
    pb = 4 if precision == "fp32" else 2  # parameter and gradient bytes
    k = 8 if precision == "fp32" else 12  # optimizer bytes per trainable parameter
    stage = zero["stage"]
    sharded = n.total - n.persistent
    params = (n.persistent + sharded / gpus) * pb if stage == 3 else n.total * pb
    grads = n.trainable * pb / (gpus if stage >= 2 else 1)
    optimizer = n.trainable * k / (gpus if stage >= 1 else 1)
    host = 0.0
    if zero["offload_optimizer"]:
        host, optimizer = host + optimizer, 0.0
    if zero["offload_param"]:
        host, params = host + params - n.persistent * pb, n.persistent * pb
    return {"params": params, "grads": grads, "optimizer": optimizer,
            "zero_buffers": zero_buffers(n, pb, zero), "host": host}


def zero_buffers(n: ParamCounts, pb: int, zero: dict) -> float:
    """Gradient reduction buckets (two when communication overlaps compute) and, for ZeRO-1/2,
    the all-gather bucket of updated parameters; for ZeRO-3, the parameters it may hold
    gathered at once (max live + prefetch), capped at the model."""
    stage = zero["stage"]
    if stage == 0:
        return 0.0
    buckets = 2 if zero["overlap_comm"] else 1
    reduce = min(zero["reduce_bucket_size"], n.trainable) * pb * buckets
    if stage in (1, 2):
        return reduce + min(zero["allgather_bucket_size"], n.total) * pb
    live = zero["stage3_max_live_parameters"] + zero["stage3_prefetch_bucket_size"]
    return reduce + min(live, n.total - n.persistent) * pb


# ---------------------------------------------------------------------------- activations

def compute_dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@lru_cache(maxsize=4)
def fake_model(cfg_json: str, precision: str):
    """The model (its config as JSON, hashable for the cache) as DeepSpeed trains it (every floating tensor in the compute dtype), built
    on the meta device and moved to FakeTensors on 'cpu': no memory, but CPU kernel
    dispatch (the same attention kernel choice as a real CPU run). Returns (model, mode)."""
    cfg = load_config(ModelConfig, json.loads(cfg_json))
    dtype = compute_dtype(precision)
    with torch.device("meta"):
        meta = build_model(cfg)
    mode = FakeTensorMode()
    with mode:
        model = meta._apply(lambda t: torch.empty(
            t.shape, dtype=dtype if t.is_floating_point() else t.dtype, device="cpu"))
    return model.train(), mode


@dataclass
class Activations:
    saved: int  # bytes saved for backward by the whole model
    recompute: int  # saved bytes of one checkpointed block (0 without checkpointing)


def measure_activations(cfg: RunConfig, batch: int, frames: int | None = None) -> Activations:
    """Saved-for-backward bytes of one training forward at `batch` clips of `frames` frames
    (default: the config's), measured on the fake model."""
    model, mode = fake_model(json.dumps(to_dict(cfg.model)), cfg.precision)
    v = cfg.model.video
    frames = frames or v.frames
    first = _first_checkpointed_block(model)
    captured: dict = {}
    hook = (first.register_forward_pre_hook(lambda _, args, kwargs: captured.setdefault("call", (args, kwargs)),
                                            with_kwargs=True) if first else None)
    params = list(model.parameters())
    try:
        with mode:
            video = torch.empty((batch, frames, v.image_size, v.image_size, 3), dtype=torch.uint8)
            ids = torch.ones((batch, cfg.data.text_length), dtype=torch.int64)
            mask = torch.ones((batch, cfg.data.text_length), dtype=torch.bool)
            shard = PlannedShard(cfg.parallel.sequence) if cfg.parallel.sequence > 1 else None
            saved = saved_bytes(lambda: model(video, ids, mask, sequence=shard), ignore=params)
            recompute = _block_bytes(first, *captured["call"], params) if first else 0
    finally:
        if hook is not None:
            hook.remove()
    return Activations(saved, recompute)


class PlannedShard(SequenceShard):
    """The first place of a sequence group of `size` ranks (parallel.sequence), for the
    fake model: each exchange hands back a tensor of the shape the real one would (the
    whole sequence for 1/size of the heads, or the place's chunk of it for all of them) and,
    like the real ones (longvivit/distributed/sequence.py), saves nothing for backward. The
    first place holds the largest chunk, so its count bounds every rank's."""

    def __init__(self, size: int, length: int = 0):
        super().__init__(None, 0, size, length)

    def for_length(self, length: int) -> "PlannedShard":
        return PlannedShard(self.size, length)

    def heads_to_sequence(self, qkv: torch.Tensor) -> torch.Tensor:
        B, _, three, H, d = qkv.shape
        return _Shaped.apply(qkv, (B, self.length, three, H // self.size, d))

    def sequence_to_heads(self, y: torch.Tensor) -> torch.Tensor:
        B, _, h, d = y.shape
        return _Shaped.apply(y, (B, self.sizes()[self.place], h * self.size, d))

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return _Shaped.apply(x, (x.shape[0], self.length, *x.shape[2:]))


class _Shaped(torch.autograd.Function):
    """A new tensor of `shape` (a collective's output, for counting); saves nothing."""

    @staticmethod
    def forward(ctx, x, shape):
        ctx.shape = x.shape
        return x.new_zeros(shape)

    @staticmethod
    def backward(ctx, grad):
        return grad.new_zeros(ctx.shape), None


def _first_checkpointed_block(model):
    """The first video block that runs under activation checkpointing with autograd, or None."""
    video = model.video
    if video.checkpointed <= video.frozen_prefix:
        return None
    return video.blocks[video.frozen_prefix]


def _block_bytes(block, args, kwargs, params) -> int:
    """Saved bytes of `block` run without checkpointing on the input (and attention
    keywords) it saw: what its recomputation holds while its backward runs."""
    x, *rest = args
    x = x.detach().requires_grad_(True)
    return saved_bytes(lambda: block(x, *rest, **kwargs), ignore=params)


# ---------------------------------------------------------------------------- the plan

@dataclass
class Plan:
    config: str
    preset: str
    params: int
    trainable_params: int
    gpus: int
    gpu_mem: int
    sequence: int  # parallel.sequence: GPUs that share each clip's tokens
    zero_stage: int
    offload_optimizer: bool
    offload_param: bool
    precision: str
    micro_batch: int
    frames: int
    mask_ratio: float
    grad_checkpointing: int
    bytes: dict = field(default_factory=dict)  # per GPU, by part
    host_bytes: float = 0.0  # per GPU process, offloaded to CPU memory
    total: int = 0
    headroom: int = 0
    fits: bool = False
    max_micro_batch: int = 0
    max_frames: int = 0
    min_grad_checkpointing: int | None = None  # fewest checkpointed video blocks that fit; None: not even all
    ignored: list = field(default_factory=list)  # overrides that do not change the plan
    assumptions: list = field(default_factory=lambda: list(ASSUMPTIONS))


def with_reserve(parts: dict) -> dict:
    """Adds the reserve part: a fixed context plus a fraction of everything modelled."""
    modelled = sum(parts.values())
    return {**parts, "reserve": CONTEXT_BYTES + FRAGMENTATION * modelled}


def input_bytes(cfg: RunConfig, batch: int, frames: int) -> int:
    v = cfg.model.video
    return batch * (frames * v.image_size**2 * 3 + cfg.data.text_length * (8 + 1))


def gpu_parts(cfg: RunConfig, states: dict, act: Activations, batch: int, frames: int) -> dict:
    """Per-GPU bytes by part for one micro-batch of `batch` clips of `frames` frames."""
    parts = {k: states[k] for k in ("params", "grads", "optimizer")}
    parts.update(activations=act.saved, recompute=act.recompute,
                 inputs=input_bytes(cfg, batch, frames), zero_buffers=states["zero_buffers"])
    return with_reserve(parts)


def affine_in_batch(cfg: RunConfig) -> tuple[Activations, Activations]:
    """(intercept, per-clip slope) of the activation counts, from micro-batches 1 and 2."""
    one, two = measure_activations(cfg, 1), measure_activations(cfg, 2)
    slope = Activations(two.saved - one.saved, two.recompute - one.recompute)
    return Activations(one.saved - slope.saved, one.recompute - slope.recompute), slope


def at_batch(base: Activations, slope: Activations, batch: int) -> Activations:
    return Activations(base.saved + slope.saved * batch, base.recompute + slope.recompute * batch)


def largest_batch(cfg: RunConfig, states: dict, base: Activations, slope: Activations,
                  gpu_mem: int) -> int:
    """The largest micro-batch whose predicted total fits (0 if not even one clip)."""
    frames = cfg.model.video.frames
    total = lambda b: sum(gpu_parts(cfg, states, at_batch(base, slope, b), b, frames).values())  # noqa: E731
    per_clip = total(2) - total(1)
    b = max(0, int((gpu_mem - total(0)) // per_clip)) if per_clip > 0 else 0
    while b > 0 and total(b) > gpu_mem:  # the division can land one over after rounding
        b -= 1
    while total(b + 1) <= gpu_mem:
        b += 1
    return b


def largest_frames(cfg: RunConfig, states: dict, gpu_mem: int) -> int:
    """Most frames (a multiple of the tubelet's t) that fit at the configured micro-batch
    and mask ratio: double until it does not fit, then bisect; each candidate re-measured."""
    t = cfg.model.video.tubelet[0]
    batch = cfg.data.batch_size

    def fits(slices: int) -> bool:
        frames = slices * t
        parts = gpu_parts(cfg, states, measure_activations(cfg, batch, frames), batch, frames)
        return sum(parts.values()) <= gpu_mem

    if not fits(1):
        return 0
    lo = 1
    while lo * 2 * t <= MAX_FRAMES_CAP and fits(lo * 2):
        lo *= 2
    hi = lo * 2  # does not fit, or is past the cap
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if mid * t <= MAX_FRAMES_CAP and fits(mid) else (lo, mid)
    return lo * t


def with_checkpointing(cfg: RunConfig, blocks: int) -> RunConfig:
    """`cfg` with its first `blocks` video blocks under activation checkpointing."""
    video = replace(cfg.model.video, grad_checkpointing=blocks)
    return replace(cfg, model=replace(cfg.model, video=video))


def fewest_checkpointed(cfg: RunConfig, states: dict, gpu_mem: int) -> int | None:
    """The fewest video blocks (from the first) to checkpoint for the configured micro-batch
    and frames to fit, each candidate measured; None if not even all of them fit. Past none,
    the total falls as blocks are added, and one block costs more than none (its saved input
    and its recomputation on top of what it saved), so a bisection over 1..depth finds it."""
    v, batch = cfg.model.video, cfg.data.batch_size

    def fits(blocks: int) -> bool:
        c = with_checkpointing(cfg, blocks)
        parts = gpu_parts(c, states, measure_activations(c, batch), batch, v.frames)
        return sum(parts.values()) <= gpu_mem

    if fits(0):
        return 0
    if not fits(v.depth):
        return None
    lo, hi = 0, v.depth  # lo does not fit, hi does
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def ignored_overrides(overrides: list[str]) -> list[str]:
    """The keys of `overrides` that the plan does not read (see PLAN_KEYS)."""
    keys = [item.split("=", 1)[0].lstrip("+~") for item in overrides]
    return [k for k in keys if not any(k == used or k.startswith(used + ".") for used in PLAN_KEYS)]


def make_plan(config: str, overrides: list[str], gpus: int, gpu_mem: int,
              search: bool = True) -> Plan:
    # the micro-batch training would run on `gpus` (global_batch_by=batch_size derives it)
    # parallel.sequence: ZeRO shards over all `gpus`, each clip batch spans `sequence` of them
    cfg = load_run_config(repo_path(config), overrides=overrides)
    cfg = keep_global_batch(cfg, data_world(cfg, gpus))
    zero = zero_settings(resolve_ds_config(cfg, gpus))
    counts = count_params(cfg.model, zero["stage3_param_persistence_threshold"])
    states = state_bytes(counts, cfg.precision, zero, gpus)
    base, slope = affine_in_batch(cfg)
    v, batch = cfg.model.video, cfg.data.batch_size
    parts = gpu_parts(cfg, states, at_batch(base, slope, batch), batch, v.frames)
    total = int(sum(parts.values()))
    plan = Plan(config=config, preset=cfg.model.preset, params=counts.total,
                trainable_params=counts.trainable, gpus=gpus, gpu_mem=gpu_mem,
                sequence=cfg.parallel.sequence, zero_stage=zero["stage"], offload_optimizer=zero["offload_optimizer"],
                offload_param=zero["offload_param"], precision=cfg.precision, micro_batch=batch,
                frames=v.frames, mask_ratio=v.mask_ratio, grad_checkpointing=v.grad_checkpointing,
                bytes={k: int(round(b)) for k, b in parts.items()}, host_bytes=int(states["host"]),
                total=total, headroom=gpu_mem - total, fits=total <= gpu_mem,
                ignored=ignored_overrides(overrides))
    if search:
        plan.max_micro_batch = largest_batch(cfg, states, base, slope, gpu_mem)
        plan.max_frames = largest_frames(cfg, states, gpu_mem)
        plan.min_grad_checkpointing = fewest_checkpointed(cfg, states, gpu_mem)
    return plan


# ---------------------------------------------------------------------------- output

def table(plan: Plan) -> str:
    offload = [name for name, on in (("optimizer", plan.offload_optimizer), ("params", plan.offload_param)) if on]
    lines = [
        f"{plan.config}: preset {plan.preset}, {plan.params / 1e6:.1f}M parameters "
        f"({plan.trainable_params / 1e6:.1f}M trainable), {plan.precision}",
        f"ZeRO-{plan.zero_stage} over {plan.gpus} GPU(s)"
        + (f", offload: {', '.join(offload)}" if offload else "")
        + (f", each clip over {plan.sequence} of them (parallel.sequence)" if plan.sequence > 1 else "")
        + f"; micro-batch {plan.micro_batch} x {plan.frames} frames at {plan.mask_ratio:.0%} masking, "
        f"checkpointing {plan.grad_checkpointing} video blocks",
        "",
        f"{'per GPU':<14}{'bytes':>12}",
    ]
    lines += [f"{name:<14}{gib(value):>12}" for name, value in plan.bytes.items()]
    lines += [f"{'total':<14}{gib(plan.total):>12}",
              f"{'gpu memory':<14}{gib(plan.gpu_mem):>12}",
              f"{'headroom':<14}{gib(plan.headroom):>12}   {'fits' if plan.fits else 'DOES NOT FIT'}"]
    if plan.host_bytes:
        lines.append(f"{'host (offload)':<14}{gib(plan.host_bytes):>12}   per GPU process, CPU memory")
    lines += ["", f"largest micro-batch that fits: {plan.max_micro_batch}",
              f"most frames that fit (micro-batch {plan.micro_batch}, {plan.mask_ratio:.0%} masking): "
              f"{plan.max_frames}",
              f"fewest checkpointed video blocks that fit (micro-batch {plan.micro_batch}, "
              f"{plan.frames} frames): {_blocks(plan.min_grad_checkpointing)}", ""]
    if plan.ignored:
        lines.append(f"ignored (no effect on memory): {', '.join(plan.ignored)}")
    lines += [f"assumption: {a}" for a in plan.assumptions]
    return "\n".join(lines)


def _blocks(n: int | None) -> str:
    return "not even all" if n is None else str(n)


__all__ = ["make_plan", "measure_activations", "state_bytes", "parse_bytes", "Plan"]
