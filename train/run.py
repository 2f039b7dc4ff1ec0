"""`longvivit train CONFIG.yaml [key=value ...]`: the training entry point and loop.

Runs the same way as one plain process, under the deepspeed launcher, torchrun or srun
(rank and world size from the environment, see dist.py):

    longvivit train train/configs/demo.yaml
    deepspeed --num_gpus 2 --master_port 29600 --module longvivit.train.cli train CONFIG.yaml
    torchrun --nproc_per_node 8 -m longvivit.train.cli train CONFIG.yaml
    srun longvivit train CONFIG.yaml      (slurm/train.sbatch)

Phases: validate (config, shards, precision, ds_config, out, resume target, init weights;
exit 2 on any error, before a process group or output directory exists; what only a file
can tell is read cheaply here: a shard index and its files' sizes, the tokenizer, every
file of the checkpoint to resume or initialise from and its recorded shapes) -> setup (process
group, model, engine, loaders, resume) -> loop (step, log, checkpoint, eval, stop on
request; skip a non-finite step, exit 3 after max_nonfinite_steps of them in a row) ->
finish (checkpoint, eval, summary.json). Each rank validates what it sees of `out`; once
the process group is up, every rank takes the resume target rank 0 chose. A finished run
(that checkpoint is at `steps`) stops there: one line says so, nothing is written.
From setup on, each rank's watchdog (watchdog.py) times its phases: setup, step, and within
a step data, checkpoint and eval; a rank stuck in one past its timeouts.*_s limit says so
and exits 4.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import torch

from longvivit.config import ConfigError, check, to_dict, to_yaml
from longvivit.data.config import DataConfig

from . import checkpoint, dist, faults, watchdog
from .construct import build_model
from .config import (RunConfig, check_data, check_precision, check_tokenizer_file, check_writable_dir,
                     ds_config_accelerator, keep_global_batch, load_run_config, one_line, repo_path,
                     resolve_ds_config)

if TYPE_CHECKING:  # heavy imports, deferred to setup at run time
    from deepspeed import DeepSpeedEngine

    from longvivit.data.loader import VideoLoader
    from longvivit.data.synthetic_batches import SyntheticBatches

    from .logging import RunLogger, StepTimer
    from .preemption import StopRequest

    Loader = VideoLoader | SyntheticBatches  # what open_loader returns

EXIT_CONFIG = 2
# max_nonfinite_steps non-finite steps in a row; not 75: a requeued run would replay them
EXIT_NONFINITE = 3
# a rank made no progress within its phase's limit (timeouts.*_s): watchdog.EXIT_HANG
EXIT_HANG = watchdog.EXIT_HANG


# ---------------------------------------------------------------------------- validate

HELP = """usage: longvivit train CONFIG.yaml [key=value ...]

Train the dual encoder described by CONFIG (see train/configs/); each key=value
overrides one entry with OmegaConf's dotted syntax, e.g. model.video.frames=128
steps=2000 data.batch_size=4 out=runs/exp1. The whole config is checked before any
process group, buffer or output file exists; a bad key or value exits 2 naming it.

Run it as one process, or one process per GPU under `deepspeed`, `torchrun` or `srun`
(RANK/WORLD_SIZE/LOCAL_RANK or SLURM's variables are read). It resumes by itself from
the newest complete checkpoint in `out` (resume=never|PATH to change that);
SIGUSR1/SIGTERM stop all ranks after the same step with a checkpoint (exit 75: requeue
me). A step whose loss or gradient norm is not finite is skipped; max_nonfinite_steps of
them in a row stop the run with no checkpoint of them (exit 3). A rank that stays in one
phase (setup, data, step, checkpoint, eval) longer than timeouts.PHASE_s ends the job with
a line naming it, the phase and the step (exit 4)."""


def split_argv(argv: list[str]) -> tuple[str, list[str]]:
    """CONFIG and key=value overrides; drops the --local_rank the deepspeed launcher appends."""
    args = [a for a in argv if not a.startswith("--local_rank")]
    if not args or args[0] in ("-h", "--help"):
        raise ConfigError("usage: longvivit train CONFIG.yaml [key=value ...]")
    return args[0], args[1:]


def check_tokenizer(cfg: RunConfig) -> None:
    if cfg.data.source == "synthetic":
        return
    vocab = check_tokenizer_file("data.tokenizer", cfg.model.text.tokenizer, cfg.data.tokenizer).vocab_size
    if vocab > cfg.model.text.vocab_size:  # larger embedding tables are harmless
        raise ConfigError(f"model.text.vocab_size: {cfg.model.text.vocab_size} is smaller than the "
                          f"tokenizer's {vocab} pieces ({cfg.data.tokenizer})")


def tokenizer_for(cfg: RunConfig):
    """The tokenizer the model's text tower reads (model.text.tokenizer; data.tokenizer is
    the sentencepiece file)."""
    from longvivit.data.tokenizer import make_tokenizer

    return make_tokenizer(cfg.model.text.tokenizer, cfg.data.tokenizer)


def check_init(cfg: RunConfig) -> None:
    """init=KIND:PATH names weights this run can read and that fit its model: an open_clip
    file's image tower is read (memory-mapped); an export's or a checkpoint's files are
    checked whole (export.checked_source) and their recorded shapes compared with this
    run's model (export.check_fits), no weights read."""
    if not cfg.init:
        return
    kind, path = cfg.init.split(":", 1)
    if not Path(path).exists():
        raise ConfigError(f"init: {cfg.init!r}: no such file or directory")
    if kind == "checkpoint":
        from .export import check_fits, checked_source

        check_fits(checked_source(path, "init"), cfg.model, "init")
        return
    try:
        from longvivit.model.init import load_image_tower

        load_image_tower(path, mmap=True)
    except Exception as err:  # noqa: BLE001 -- torch.load/safetensors raise many types for bad files
        raise ConfigError(f"init: {cfg.init!r}: cannot read it ({one_line(err)})") from None


def check_accelerator(cfg: RunConfig, device: torch.device) -> None:
    """Without a usable GPU, refuse a run meant for GPUs instead of training it on CPUs over
    gloo without a word: a ds_config written for CUDA ("_accelerator": "cuda"), or bf16
    with a ds_config not written for the CPU. The local form (local=true) is any config's
    CPU form; a *_cpu.json ds_config says the CPU is meant."""
    if device.type != "cpu" or cfg.local:
        return
    meant = ds_config_accelerator(cfg.ds_config)
    if meant == "cuda":
        key, what = "ds_config", f"{cfg.ds_config} is written for GPUs"
    elif cfg.precision == "bf16" and meant != "cpu":
        key, what = "precision", f"bf16 with {cfg.ds_config} (not marked \"_accelerator\": \"cpu\") is a GPU run"
    else:
        return
    raise ConfigError(f"{key}: {what}, and there is no CUDA device ({dist.cuda_problem()}): it would train on "
                      "CPUs over gloo; run it on a GPU node, or its CPU form with local=true")


def check_out(cfg: RunConfig) -> None:
    """`out` is a directory, or can be made one: its nearest existing ancestor is a
    directory this process can create in (config.check_writable_dir)."""
    check_writable_dir("out", cfg.out)


def check_resume(cfg: RunConfig, tag: Path) -> None:
    """The checkpoint to resume from is whole (every shard and part file there and
    readable: checkpoint.check_files) and fits this run: same architecture (any world
    size: see rescale), and not past `steps`."""
    try:
        checkpoint.check_files(tag, "resume", parts=True)
    except ConfigError as err:
        hint = "" if cfg.resume != "auto" else " (move that tag aside to resume from an older one, or resume=never)"
        raise ConfigError(f"{err}{hint}") from None
    checkpoint.check_compatible(tag, to_dict(cfg.model))
    step = checkpoint.tag_step(tag)
    check(step <= cfg.steps, "steps", f"{cfg.steps} is below step {step} of the checkpoint {tag} "
          "this run would resume from (raise steps=, or start over with resume=never and another out=)")


def validate(argv: list[str], d: dist.DistEnv) -> tuple[RunConfig, dict, Path | None]:
    """Everything that can be wrong with a run, checked before any heavy work."""
    path, overrides = split_argv(argv)
    # a fixed global_batch derives grad_accum or data.batch_size for this world size: the
    # stored run_config.yaml and the ds_config hold what runs
    cfg = keep_global_batch(load_run_config(repo_path(path), overrides=overrides), d.world_size)
    device = dist.device_for(d)
    check_precision(cfg.precision, device.type)
    ds_config = resolve_ds_config(cfg, d.world_size)
    check_accelerator(cfg, device)
    check_out(cfg)
    if cfg.local:  # the config is valid: make the synthetic data / open_clip file it reads
        from .local import prepare

        prepare(cfg)
    check_data(cfg)
    check_tokenizer(cfg)
    tag = checkpoint.resume_tag(cfg.out, cfg.resume)
    if tag is not None:
        check_resume(cfg, tag)
    else:  # init weights load only when not resuming
        check_init(cfg)
    return cfg, ds_config, tag


def eval_left_undone(cfg: RunConfig, tag: Path | None) -> bool:
    """The eval due at the resumed checkpoint's step began and did not finish (a killed
    run): the final one wrote no summary.json, a periodic one no eval line in
    metrics.jsonl. Read on rank 0, which writes both."""
    from .logging import read_metrics

    if tag is None:
        return False
    step = checkpoint.tag_step(tag)
    if step == cfg.steps:
        return not (Path(cfg.out) / "summary.json").is_file()
    if not every(cfg.eval_every, step, cfg.steps):
        return False
    return not any(x.get("kind") == "eval" and x.get("step") == step for x in read_metrics(cfg.out))


def finished(cfg: RunConfig, tag: Path | None) -> bool:
    """The checkpoint this run would resume from is already at cfg.steps."""
    return tag is not None and checkpoint.tag_step(tag) == cfg.steps


def report_finished(cfg: RunConfig, tag: Path, d: dist.DistEnv) -> int:
    """A finished run run again: nothing is trained, evaluated or written (a checkpoint is
    never rewritten); rank 0 says so in one JSON line."""
    if d.is_main:
        summary = Path(cfg.out) / "summary.json"
        print(json.dumps({"event": "finished", "step": cfg.steps, "checkpoint": str(tag),
                          "summary": str(summary) if summary.is_file() else None,
                          "message": f"already trained to steps={cfg.steps}: nothing to do (raise steps= to "
                                     "train on; `longvivit eval` to evaluate again)"}), flush=True)
    return 0


# ---------------------------------------------------------------------------- setup

@dataclass
class TrainState:
    """The loop's own counters (the checkpoint part "train")."""
    step: int = 0

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, state[f.name])


@dataclass
class Throughput:
    """Samples trained over some steps, their visible tokens and model FLOPs, their wall
    time, and of it the time spent waiting for batches (mean over ranks)."""
    samples: int = 0
    seconds: float = 0.0
    data_wait: float = 0.0
    tokens: float = 0.0
    flops: float = 0.0

    def add(self, other: Throughput) -> None:
        self.samples += other.samples
        self.seconds += other.seconds
        self.data_wait += other.data_wait
        self.tokens += other.tokens
        self.flops += other.flops

    def per_second(self, amount: float) -> float:
        return amount / max(self.seconds, 1e-9)


@dataclass
class Run:
    cfg: RunConfig
    d: dist.DistEnv
    device: torch.device
    engine: DeepSpeedEngine
    loader: Loader
    log: RunLogger
    config_yaml: str
    state: TrainState
    images: Loader | None = None  # the image-text pairs beside the videos (data.images)
    # source -> (visible tokens, model FLOPs) per sample: an image is one tubelet slice
    per_sample: dict = field(default_factory=dict)
    peak: float = 0.0
    window: Throughput = field(default_factory=Throughput)  # the steps since the last TensorBoard line
    total: Throughput = field(default_factory=Throughput)  # every step this process logged, for the summary
    saved: Path | None = None  # the newest checkpoint of this run's state (written or resumed from)
    saved_step: int = -1
    source_losses: dict = field(default_factory=dict)  # source -> its losses since the last TensorBoard line
    optimizer_state: dict | None = None  # after a resume: the state tensors checked and moved (place_optimizer_state)


def checkpoint_parts(state: TrainState, loader: Loader, images: Loader | None = None) -> dict[str, checkpoint.Stateful]:
    """What a checkpoint holds of this rank besides the engine, by name: the image loader
    or another kind of state is one more entry here (checkpoint.save/load take any)."""
    # they load in this order: the RNGs last, so that nothing loaded after them draws from them
    parts = {"train": state, "loader": loader}
    if images is not None:
        parts["images"] = images
    return {**parts, "rng": checkpoint.RNGState()}


def clean_streaming_shm(cfg: RunConfig) -> None:
    """Drop shared memory a killed run left behind, on every rank, before any rank creates
    its own (the loaders are then built with clean_shm=False)."""
    if cfg.data.source == "shards":  # synthetic batches use no shared memory
        from longvivit.data.reader import clean_stale_shared_memory

        clean_stale_shared_memory()
    dist.barrier()


def open_loader(cfg: RunConfig, split: str, device: torch.device, d: dist.DistEnv, training: bool,
                data: DataConfig | None = None) -> Loader:
    """This rank's loader of `split` from the configured source (shards or synthetic);
    `data` in place of cfg.data (image_data)."""
    data = data or cfg.data
    if data.source == "synthetic":
        from longvivit.data.synthetic_batches import SyntheticBatches

        return SyntheticBatches(data, split, device, d.rank, d.world_size, training,
                                cfg.model.text.vocab_size, cfg.model.text.tokenizer)
    from longvivit.data import build_loader

    return build_loader(data, split, device=device, rank=d.rank, world_size=d.world_size,
                        training=training, clean_shm=False, tokenizer=tokenizer_for(cfg))


def image_data(cfg: RunConfig) -> DataConfig | None:
    """The data config of the image loader (the stills of data.images.train at its
    batch size), None without images."""
    images = cfg.data.images
    if images.proportion == 0:
        return None
    return dataclasses.replace(cfg.data, train=images.train, batch_size=images.batch_size, frames=1,
                               sampling="uniform")


def setup(cfg: RunConfig, ds_config: dict, tag: Path | None, d: dist.DistEnv) -> Run:
    from longvivit.model import flops_per_sample

    from .engine import apply_schedule, base_optimizer, build_engine, place_optimizer_state
    from .logging import RunLogger, peak_tflops

    device = dist.bound_device()
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    if d.is_main:
        checkpoint.remove_incomplete(cfg.out)
    universal = rescale(cfg, tag, d) if tag is not None else None
    if universal is not None:  # the engine reads the universal form instead of the rank shards
        ds_config = {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}
    # under ZeRO-3 built partitioned (deepspeed.zero.Init), see construct.py
    engine = build_engine(build_model(cfg, tag is not None, ds_config), cfg, ds_config)
    clean_streaming_shm(cfg)
    loader = open_loader(cfg, "train", device, d, training=True)
    images = image_data(cfg)
    images = open_loader(cfg, "train", device, d, True, images) if images is not None else None
    state, placed = TrainState(), None
    if tag is not None:
        checkpoint.load(engine, tag, checkpoint_parts(state, loader, images), universal)
        apply_schedule(engine)
        placed = place_optimizer_state(base_optimizer(engine))
    step = state.step
    torch.manual_seed(cfg.seed + 1000 * d.rank + step)  # anything unseeded differs per rank
    v = cfg.model.video
    log = RunLogger(cfg.out, d.rank, cfg.steps, step, cfg.progress and d.is_main)
    run = Run(cfg, d, device, engine, loader, log, resolved_yaml(cfg), state, images)
    if tag is not None:  # the state at `step` is that checkpoint: finish() must not write it again
        run.saved, run.saved_step, run.optimizer_state = tag, step, placed
    run.per_sample = {"video": (v.visible_tokens(), flops_per_sample(cfg.model, v.mask_ratio))}
    if images is not None:
        ratio = cfg.data.images.mask_ratio
        still = dataclasses.replace(cfg.model, video=dataclasses.replace(v, frames=v.tubelet[0]))
        run.per_sample["image"] = (still.video.visible_tokens(ratio), flops_per_sample(still, ratio))
    run.peak = peak_tflops(device, cfg.peak_tflops)
    return run


def rescale(cfg: RunConfig, tag: Path, d: dist.DistEnv) -> Path | None:
    """Resuming a checkpoint written by another number of ranks: rank 0 converts it to
    DeepSpeed's universal form (the others wait) and says in one JSON line what changed
    and what was kept (rescale_kept). None when the world size is the checkpoint's."""
    saved_world = checkpoint.saved_world_size(tag)
    if saved_world == d.world_size:
        return None
    if d.is_main:
        old = checkpoint.stored_config(tag)
        batch, accum = [old["data"]["batch_size"], cfg.data.batch_size], [old.get("grad_accum", 1), cfg.grad_accum]
        global_batch = [batch[0] * accum[0] * saved_world, batch[1] * accum[1] * d.world_size]
        kept, why = rescale_kept(cfg, batch, accum, global_batch)
        print(json.dumps({"event": "rescale", "checkpoint": str(tag), "step": checkpoint.tag_step(tag),
                          "world_size": [saved_world, d.world_size], "batch_per_rank": batch,
                          "grad_accum": accum, "global_batch": global_batch, "kept": kept,
                          "message": f"resuming a checkpoint of {saved_world} ranks on {d.world_size}: "
                                     f"converting it to a universal checkpoint; {why}"}), flush=True)
    return checkpoint.to_universal(tag, d.rank)


def rescale_kept(cfg: RunConfig, batch: list[int], accum: list[int], global_batch: list[int]) -> tuple[str, str]:
    """What a resume on another world size keeps ("global_batch" or "batch_per_rank") and
    why, in words; the arguments are [checkpoint's, this run's]."""
    if not cfg.global_batch:
        return "batch_per_rank", (f"the per-rank batch ({batch[1]}) and grad_accum ({accum[1]}) are the run "
                                  "config's (global_batch=0: not fixed), so the global batch follows the world "
                                  f"size: {global_batch[0]} -> {global_batch[1]} (set global_batch= to keep it)")
    derived = (f"grad_accum {accum[0]} -> {accum[1]}" if cfg.global_batch_by == "grad_accum"
               else f"the per-rank batch {batch[0]} -> {batch[1]}")
    if global_batch[0] == global_batch[1]:
        held = f"the global batch ({cfg.global_batch}) is kept, as global_batch= fixes it"
    else:  # global_batch itself was changed for this run
        held = f"the global batch is global_batch={cfg.global_batch} (the checkpoint's was {global_batch[0]})"
    return "global_batch", f"{held}: {derived} (global_batch_by={cfg.global_batch_by})"


def resolved_yaml(cfg: RunConfig) -> str:
    """The config as it runs, stored with every checkpoint: a local form is stored already
    applied (local=false), so running the stored file gives this run again."""
    return to_yaml(dataclasses.replace(cfg, local=False))


def announce(run: Run, tag: Path | None, redo_eval: bool = False) -> None:
    """The start event on every rank; on rank 0 the run config, and after a resume a
    "resume" line in metrics.jsonl (logging.read_metrics: it supersedes the lines of later
    steps, which a killed run wrote and this one runs again, and with redo_eval the eval
    of its own step that did not finish)."""
    from .engine import partitioned_numel

    local, total = partitioned_numel(run.engine.module)
    line = {"event": "start", "rank": run.d.rank, "pid": os.getpid(), "world_size": run.d.world_size,
            "backend": dist.backend(), "device": str(run.device),
            "params_local": local, "params_total": total, "step": run.state.step,
            "resumed_from": str(tag) if tag else None, "optimizer_state": run.optimizer_state,
            "peak_tflops_per_device": run.peak}
    print(json.dumps(line), flush=True)
    run.log.config(run.config_yaml)
    if tag is not None:
        run.log.record(run.state.step, kind="resume", checkpoint=str(tag), redo_eval=redo_eval)
    if run.d.is_main:
        (Path(run.cfg.out) / "run_config.yaml").write_text(run.config_yaml)


# ---------------------------------------------------------------------------- loop

def batches(loader: Iterable[dict], timer: StepTimer) -> Iterator[dict]:
    """Batches forever (epoch after epoch), timing how long each one was waited for."""
    while True:
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            with watchdog.phase("data"):
                batch = next(it, None)
            timer.data_ready(time.perf_counter() - t0)
            if batch is None:
                break
            yield batch


def mask_generator(run: Run, micro: int) -> torch.Generator:
    """Masks are a function of (seed, rank, step, micro-batch): resume replays them exactly."""
    key = ((run.cfg.seed * 1_000_003 + run.d.rank) * 1_000_003 + run.state.step) * 131 + micro
    return torch.Generator().manual_seed(key % (2**63 - 1))


def step_source(run: Run) -> str:
    """What the next optimizer step trains on: "image" on data.images.proportion of the
    steps (a function of the step alone: the same on every rank and after a resume)."""
    return "image" if run.images is not None and run.cfg.data.images.is_image_step(run.state.step + 1) else "video"


def source_mask_ratio(run: Run, source: str) -> float | None:
    """The mask ratio of `source`'s batches (None: the model config's)."""
    return run.cfg.data.images.mask_ratio if source == "image" else None


def train_step(run: Run, stream: Iterator[dict], mask_ratio: float | None = None) -> dict:
    """One optimizer step over grad_accum micro-batches of one source."""
    if run.cfg.grad_accum_loss == "whole_batch":
        return whole_batch_train_step(run, stream, mask_ratio)
    engine, losses, indices = run.engine, [], []
    lr = engine.get_lr()[0]  # the rate this step uses (DeepSpeed steps the schedule after it)
    for micro in range(run.cfg.grad_accum):
        batch = next(stream)
        loss, metrics = engine(batch["video"], batch["text_ids"], batch["text_mask"], mask_ratio=mask_ratio,
                               generator=mask_generator(run, micro), real_frames=batch["real_frames"])
        loss = faults.nan_point("nan_loss", run.state.step + 1, run.d.rank, loss)
        engine.backward(nan_grads_if_nonfinite(loss))
        engine.step()
        losses.append(loss.detach().float())
        indices.append(batch["index"])
    # tensors, read on the host once per step (log_step), not once per micro-batch
    return {"loss": torch.stack(losses).mean(), "logit_scale": metrics["logit_scale"].detach(),
            "indices": torch.cat(indices).tolist(), "lr": lr, "skipped": not engine.was_step_applied()}


def whole_batch_train_step(run: Run, stream: Iterator[dict], mask_ratio: float | None = None) -> dict:
    """One optimizer step whose grad_accum micro-batches form one contrastive batch
    (train/accumulate.py): their inputs are kept for the second pass."""
    from .accumulate import whole_batch_step

    engine = run.engine
    lr = engine.get_lr()[0]
    batches = [next(stream) for _ in range(run.cfg.grad_accum)]
    generators = [lambda micro=micro: mask_generator(run, micro) for micro in range(run.cfg.grad_accum)]

    def embed(b: dict, g: torch.Generator):
        return engine.module.embed(b["video"], b["text_ids"], b["text_mask"], mask_ratio, generator=g,
                                   real_frames=b["real_frames"])

    def forward(b: dict, g: torch.Generator, negatives):
        loss, metrics = engine(b["video"], b["text_ids"], b["text_mask"], mask_ratio=mask_ratio, generator=g,
                               real_frames=b["real_frames"], negatives=negatives)
        return faults.nan_point("nan_loss", run.state.step + 1, run.d.rank, loss), metrics

    def backward(loss: torch.Tensor) -> None:  # the k passes sum to the whole batch's gradient: no division by k
        engine.backward(nan_grads_if_nonfinite(loss), scale_wrt_gas=False)

    loss, metrics = whole_batch_step(batches, generators, embed, forward, backward, engine.step)
    return {"loss": loss.detach().float(), "logit_scale": metrics["logit_scale"].detach(),
            "indices": [i for b in batches for i in b["index"].tolist()], "lr": lr,
            "skipped": not engine.was_step_applied()}


def nan_grads_if_nonfinite(loss: torch.Tensor) -> torch.Tensor:
    """`loss` unchanged if its value is finite, else `loss` * NaN, whose gradients are all NaN.

    Skipping a step is DeepSpeed's: at the accumulation boundary its ZeRO optimizer (stages
    1-3; fp32 and bf16 as fp16) skips the update when the global gradient norm, reduced over
    ranks, is not finite: weights, optimizer state and LR schedule stay as they were, the
    gradients are dropped, engine.skipped_steps counts it. A loss can be NaN while its
    gradients are finite (a NaN that came in without a gradient): this makes them NaN, so a
    non-finite loss on any rank skips the step on every rank. No host sync."""
    finite = torch.isfinite(loss.detach())
    return loss * torch.where(finite, 1.0, float("nan")).to(loss.dtype)


def params_finite(module: torch.nn.Module) -> torch.Tensor:
    """Whether every trained parameter this rank holds is finite (its ZeRO-3 partition,
    ds_tensor, or the whole tensor), as a 0-dim tensor: read on the host with the step's
    loss, in one all-reduce (log_step). One norm pass over the local weights."""
    tensors = [getattr(p, "ds_tensor", p).detach() for p in module.parameters() if p.requires_grad]
    tensors = [t for t in tensors if t.numel()]
    if not tensors:
        return torch.tensor(True)
    return torch.isfinite(torch.stack(torch._foreach_norm(tensors)).sum())


def grad_norm(engine: DeepSpeedEngine) -> float:
    norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None else float("nan")


def log_step(run: Run, out: dict, timer: StepTimer) -> float:
    """metrics.jsonl every step (loss, lr, source, batch indices, skipped); TensorBoard every
    log_every and at every skipped step. Returns the loss (mean over ranks: non-finite on
    every rank if it is on one)."""
    failures = sum(loader.decode_failures for loader in (run.loader, run.images) if loader is not None)
    loss, failures, data_wait, broken = dist.dist_mean([out["loss"].item(), failures, timer.data,
                                                        float(not out.get("params_finite", True))])
    out["params_nonfinite"] = broken > 0  # on any rank (nonfinite_since)
    seconds, _ = timer.lap()
    source = out.get("source", "video")
    batch = run.cfg.data.images.batch_size if source == "image" else run.cfg.data.batch_size
    samples = batch * run.cfg.grad_accum * run.d.world_size
    tokens, flops = run.per_sample[source]
    run.window.add(Throughput(samples, seconds, data_wait, samples * tokens, samples * flops))
    run.source_losses.setdefault(source, []).append(loss)
    step = run.state.step
    run.log.record(step, kind="step", loss=loss, lr=out["lr"], source=source, indices=out["indices"],
                   skipped=out["skipped"])
    run.log.progress(step, loss, run.window.per_second(run.window.samples))
    due = step % max(1, run.cfg.log_every) == 0 or step == run.cfg.steps
    if due or out["skipped"] or not math.isfinite(loss):
        log_scalars(run, out, loss, failures * run.d.world_size)
    return loss


def log_scalars(run: Run, out: dict, loss: float, failures: float) -> None:
    """The TensorBoard line of the steps since the last one."""
    from .logging import memory_gb, throughput

    w = run.window
    scalars = {"loss": loss, "lr": out["lr"], "logit_scale": float(out["logit_scale"]),
               "grad_norm": grad_norm(run.engine), "skipped_steps": run.engine.skipped_steps,
               "data_wait": w.per_second(w.data_wait),
               "decode_failures": failures, "memory_gb": memory_gb(run.device),
               **throughput(w.samples, w.tokens, w.seconds, w.flops / max(w.samples, 1), run.peak,
                            run.d.world_size)}
    if run.images is not None:  # each source's mean loss over its steps since the last line
        scalars.update({f"loss_{source}": sum(losses) / len(losses) for source, losses in run.source_losses.items()})
    run.source_losses = {}
    run.log.scalars(run.state.step, scalars)
    run.total.add(w)
    run.window = Throughput()


@watchdog.phased("eval")
def run_eval(run: Run) -> dict:
    from .evaluate import evaluate

    cfg = run.cfg
    # written for tests that compare the engine's embeddings against an export
    keep = Path(cfg.out) / "eval_embeddings.safetensors" if cfg.save_eval_embeddings and run.d.is_main else None
    loader = open_loader(cfg, "val", run.device, run.d, training=False)
    try:
        metrics, gallery = evaluate(run.engine.module, loader, cfg.eval_mask_ratio, cfg.eval_max_batches, keep,
                                    cfg.eval_gallery)
    finally:
        loader.close()
    faults.fault_point("kill_during_eval", run.state.step, run.d.rank)
    run.log.scalars(run.state.step, {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, "eval")
    if gallery is not None and run.log.active:  # rendered on rank 0 only
        from .gallery import render

        run.log.image(run.state.step, "eval/gallery", render(gallery))
    return metrics


@watchdog.phased("checkpoint")
def save(run: Run) -> Path:
    cfg, parts = run.cfg, checkpoint_parts(run.state, run.loader, run.images)
    run.saved = checkpoint.save(run.engine, cfg.out, run.state.step, parts, run.config_yaml, cfg.keep_last)
    run.saved_step = run.state.step
    return run.saved


def every(n: int, step: int, last: int) -> bool:
    return n > 0 and step % n == 0 and step != last


class NonFiniteStop(Exception):
    """Non-finite steps `first`..`last` in a row end the run, with no checkpoint of them."""

    def __init__(self, first: int, last: int, why: str):
        steps = f"step {last}" if first == last else f"steps {first}-{last}"
        count = last - first + 1
        super().__init__(f"{steps}: {count} non-finite step{'s in a row' * (count > 1)} ({why})")
        self.first, self.last = first, last


def nonfinite_since(run: Run, out: dict, loss: float, since: int) -> int:
    """The first of the non-finite steps in a row that end at this one; 0 if this one is
    finite. Non-finite: the loss (mean over ranks), or the gradient norm (DeepSpeed skipped
    the step; under fp16 that is the loss scaler's overflow, which is not counted). Both are
    reduced over ranks, so every rank returns the same. Raises NonFiniteStop at
    max_nonfinite_steps in a row, or at once if DeepSpeed applied one, or if the update made
    a parameter non-finite on any rank (finite gradients, e.g. optim.lr=inf: nothing
    DeepSpeed checks, and the weights are lost)."""
    step, limit, skipped = run.state.step, run.cfg.max_nonfinite_steps, out["skipped"]
    if out.get("params_nonfinite"):
        raise NonFiniteStop(since or step, step, "its update made parameters non-finite, which cannot be undone; "
                                                 "is optim.lr too large for the precision?")
    if math.isfinite(loss) and (not skipped or run.cfg.precision == "fp16"):
        return 0
    since = since or step
    if not skipped:  # e.g. ZeRO stage 0, whose optimizer has no overflow check: the weights are lost
        raise NonFiniteStop(since, step, "DeepSpeed applied this one: its optimizer does not skip non-finite "
                                         "gradients under this ds_config")
    if limit and step - since + 1 >= limit:
        raise NonFiniteStop(since, step, f"max_nonfinite_steps={limit}; each was skipped")
    return since


def loop(run: Run, stop: StopRequest) -> bool:
    """Train to cfg.steps; False if a stop request ended it early (after a checkpoint).
    Raises NonFiniteStop (nonfinite_since)."""
    from .logging import StepTimer

    cfg, rank, timer = run.cfg, run.d.rank, StepTimer()
    streams = {"video": batches(run.loader, timer)}
    if run.images is not None:
        streams["image"] = batches(run.images, timer)
    bad_since = 0  # the first of the non-finite steps in a row up to the last one (0: it was finite)
    while run.state.step < cfg.steps:
        watchdog.begin("step", run.state.step + 1)
        faults.raise_point("raise_in_step", run.state.step + 1, rank)
        source = step_source(run)
        out = {**train_step(run, streams[source], source_mask_ratio(run, source)), "source": source}
        out["params_finite"] = params_finite(run.engine.module)
        run.state.step += 1
        step = run.state.step
        faults.fault_point("stop_in_step", step, rank, signal.SIGTERM)
        bad_since = nonfinite_since(run, out, log_step(run, out, timer), bad_since)
        # no checkpoint at a non-finite step: if the run stops on them, the newest one is from before
        if every(cfg.checkpoint_every, step, cfg.steps) and not bad_since:
            save(run)
        if every(cfg.eval_every, step, cfg.steps):
            run_eval(run)
        faults.hold_point("hold_for_signal", step, rank, lambda: stop.requested)
        # after the final step the run is complete whatever was asked: finish() saves,
        # evaluates and exits 0 (a requeued job would have nothing left to do)
        if step < cfg.steps and stop.agreed():
            return False
    return True


# ---------------------------------------------------------------------------- finish

def finish(run: Run, stop: StopRequest, completed: bool, t_start: float) -> int:
    from .preemption import EXIT_REQUEUE, report_stop

    step = run.state.step
    tag = run.saved if run.saved_step == step else save(run)
    if not completed:
        print(json.dumps({"event": "stop", "rank": run.d.rank, "step": step, "checkpoint": str(tag),
                          "signal": stop.signum, "exit": EXIT_REQUEUE}), flush=True)
        if run.d.is_main:
            report_stop(step, str(tag))
        return EXIT_REQUEUE
    metrics = run_eval(run)
    if run.d.is_main:
        write_summary(run, tag, metrics, time.time() - t_start)
    return 0


def report_nonfinite(run: Run, err: NonFiniteStop) -> int:
    """Every rank says where it stopped; rank 0 says why in one line on stderr."""
    tag = str(run.saved) if run.saved is not None else None
    print(json.dumps({"event": "nonfinite", "rank": run.d.rank, "first": err.first, "step": err.last,
                      "checkpoint": tag, "exit": EXIT_NONFINITE}), flush=True)
    if run.d.is_main:
        newest = f"the newest checkpoint, {tag}, is from before them" if tag else "no checkpoint was written"
        print(f"longvivit train: {err}: stopped at step {err.last} without saving; {newest} "
              f"(exit {EXIT_NONFINITE})", file=sys.stderr, flush=True)
    return EXIT_NONFINITE


def write_summary(run: Run, tag: Path, metrics: dict, seconds: float) -> None:
    summary = {"steps": run.state.step, "seconds": seconds,
               "samples_per_s": run.total.per_second(run.total.samples),
               "checkpoint": str(tag), "checkpoints": str(checkpoint.ckpt_root(run.cfg.out)),
               "tensorboard": str(Path(run.cfg.out) / "tb"), "eval": metrics}
    (Path(run.cfg.out) / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({"event": "done", **summary}), flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(HELP)
        return 0
    d = dist.read_env()
    try:
        cfg, ds_config, tag = validate(argv, d)
    except ConfigError as err:
        print(f"longvivit train: {err}".splitlines()[0], file=sys.stderr)
        return EXIT_CONFIG
    return train(cfg, ds_config, tag, d)


def train(cfg: RunConfig, ds_config: dict, tag: Path | None, d: dist.DistEnv) -> int:
    """Set up, train and finish on this rank. The device is bound before the process group
    starts (dist.bind_device). A rank leaving on an exception waits for no peer on its way
    out (dist.shutdown failed=True): its exit is what ends the job."""
    from .preemption import StopRequest

    t_start = time.time()
    dist.setup_env(d)
    stop = StopRequest()
    watchdog.start(cfg.timeouts.limits(), d.rank, cleanup=lambda: dist.remove_shm_buffer(d))
    built: list[Run] = []  # the Run setup() made, for the cleanup
    failed = True
    try:
        status = train_phases(cfg, ds_config, tag, d, stop, built, t_start)
        failed = False
        return status
    finally:
        watchdog.stop()
        for run in built:
            run.log.close()
            run.loader.close()
            if run.images is not None:
                run.images.close()
        stop.restore()
        dist.shutdown(d, failed=failed)


def train_phases(cfg: RunConfig, ds_config: dict, tag: Path | None, d: dist.DistEnv, stop: StopRequest,
                 built: list, t_start: float) -> int:
    dist.bind_device(d)
    dist.init_process_group(timedelta(seconds=cfg.timeouts.collective_s))
    try:
        dist.check_distinct_gpus()
    except ConfigError as err:  # the same on every rank: rank 0 says it
        if d.is_main:
            print(f"longvivit train: {err}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    tag = checkpoint.rank0_choice(tag)
    redo_eval = dist.broadcast_object(eval_left_undone(cfg, tag) if d.is_main else None)
    if finished(cfg, tag) and not redo_eval:
        return report_finished(cfg, tag, d)
    run = setup(cfg, ds_config, tag, d)
    built.append(run)
    announce(run, tag, redo_eval)
    if redo_eval and run.state.step < cfg.steps:  # the final one: finish() runs it
        run_eval(run)
    try:
        completed = loop(run, stop)
    except NonFiniteStop as err:
        return report_nonfinite(run, err)
    return finish(run, stop, completed, t_start)


__all__ = ["main", "validate", "train"]
