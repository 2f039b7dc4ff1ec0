"""The Trainer: one rank's run from a validated run config to its exit status
(`longvivit train`, longvivit/cli/train.py, is its command line).

Phases: validate (everything a config, its files and its checkpoint can be wrong in: exit 2
before a process group or output directory exists) -> start (device, process group, the
resume target rank 0 chose) -> setup (engine, data sources, resume) -> loop (step, log,
checkpoint, eval, stop on request; non-finite steps: step.py) -> finish (checkpoint, eval,
summary.json). A finished run stops at start: one line says so, nothing is written. Each
rank's watchdog (distributed/watchdog.py) times its phases; hooks (hooks.py) let callers
act at named moments.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import torch

from longvivit import events
from longvivit.config import ConfigError, check, to_dict, to_yaml
from longvivit.data.config import DataConfig
from longvivit.data.load import Loader, clean_shared_memory
from longvivit.data.load import open_loader as data_loader
from longvivit.data.load.tokenizer import make_tokenizer
from longvivit.distributed import collectives as dist
from longvivit.distributed import sequence, watchdog
from longvivit.distributed.preemption import EXIT_REQUEUE, StopRequest, write_stop_note
from longvivit.eval.evaluate import evaluate
from longvivit.eval.gallery import render
from longvivit.model.init import load_image_tower
from longvivit.train import checkpoint
from longvivit.train.config import (
    RunConfig,
    check_data,
    check_precision,
    check_tokenizer_file,
    check_writable_dir,
    data_world,
    ds_config_accelerator,
    keep_global_batch,
    load_run_config,
    one_line,
    repo_path,
    resolve_ds_config,
)
from longvivit.train.construct import build_for_run
from longvivit.train.engine import (
    apply_schedule,
    base_optimizer,
    build_engine,
    partitioned_numel,
    place_optimizer_state,
)
from longvivit.train.export import check_fits, checked_source
from longvivit.train.hooks import TrainerHooks
from longvivit.train.local import prepare
from longvivit.train.metrics import RunLogger, StepTimer, Throughput, log_step, peak_tflops, read_metrics
from longvivit.train.sources import Sources, saved_part_names
from longvivit.train.step import NonFiniteStop, nonfinite_since, params_finite, train_step

if TYPE_CHECKING:  # for annotations only: deepspeed is imported by the engine when it is built
    from deepspeed import DeepSpeedEngine

EXIT_CONFIG = 2
# max_nonfinite_steps non-finite steps in a row; not 75: a requeued run would replay them
EXIT_NONFINITE = 3
# a rank made no progress within its phase's limit (timeouts.*_s): watchdog.EXIT_HANG
EXIT_HANG = watchdog.EXIT_HANG


# ---------------------------------------------------------------------------- validate

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

        check_fits(checked_source(path, "init"), cfg.model, "init")
        return
    try:

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


def check_resume(cfg: RunConfig, tag: Path, world_size: int) -> None:
    """The checkpoint to resume from is whole (every shard and part file there and
    readable: checkpoint.check_files) and fits this run: same architecture (any world
    size: see rescale, but the same ranks and parallel.sequence where either run splits
    clips), and not past `steps`."""
    try:
        checkpoint.check_files(tag, "resume", parts=True)
    except ConfigError as err:
        hint = "" if cfg.resume != "auto" else " (move that tag aside to resume from an older one, or resume=never)"
        raise ConfigError(f"{err}{hint}") from None
    checkpoint.check_compatible(tag, to_dict(cfg.model))
    saved = (checkpoint.saved_world_size(tag),
             int(checkpoint.stored_config(tag).get("parallel", {}).get("sequence", 1)))
    if saved != (world_size, cfg.parallel.sequence) and max(saved[1], cfg.parallel.sequence) > 1:
        # the loaders' positions are per data rank; converting them across layouts is not written
        raise ConfigError(f"parallel.sequence: the checkpoint {tag} was written by {saved[0]} ranks with "
                          f"parallel.sequence={saved[1]}, this run has {world_size} with {cfg.parallel.sequence}: "
                          "a run that splits clips resumes on the same ranks and parallel.sequence (changing "
                          "them is not supported yet)")
    step = checkpoint.tag_step(tag)
    check(step <= cfg.steps, "steps", f"{cfg.steps} is below step {step} of the checkpoint {tag} "
          "this run would resume from (raise steps=, or start over with resume=never and another out=)")


def validate(argv: list[str], d: dist.DistEnv) -> tuple[RunConfig, dict, Path | None]:
    """Everything that can be wrong with a run, checked before any heavy work."""
    path, overrides = split_argv(argv)
    # a fixed global_batch derives grad_accum or data.batch_size for this world size: the
    # stored run_config.yaml and the ds_config hold what runs
    cfg = load_run_config(repo_path(path), overrides=overrides)
    cfg = keep_global_batch(cfg, data_world(cfg, d.world_size))
    device = dist.device_for(d)
    check_precision(cfg.precision, device.type)
    ds_config = resolve_ds_config(cfg, d.world_size)
    check_accelerator(cfg, device)
    check_out(cfg)
    if cfg.local:  # the config is valid: make the synthetic data / open_clip file it reads

        prepare(cfg)
    check_data(cfg)
    check_tokenizer(cfg)
    tag = checkpoint.resume_tag(cfg.out, cfg.resume)
    if tag is not None:
        check_resume(cfg, tag, d.world_size)
    else:  # init weights load only when not resuming
        check_init(cfg)
    return cfg, ds_config, tag


def eval_left_undone(cfg: RunConfig, tag: Path | None) -> bool:
    """The eval due at the resumed checkpoint's step began and did not finish (a killed
    run): the final one wrote no summary.json, a periodic one no eval line in
    metrics.jsonl. Read on rank 0, which writes both."""
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


def announce_finished(cfg: RunConfig, tag: Path, d: dist.DistEnv) -> int:
    """A finished run run again: nothing is trained, evaluated or written (a checkpoint is
    never rewritten); rank 0 says so in one JSON line."""
    if d.is_main:
        summary = Path(cfg.out) / "summary.json"
        events.emit("finished", step=cfg.steps, checkpoint=str(tag), summary=str(summary) if summary.is_file() else None,
                    message=f"already trained to steps={cfg.steps}: nothing to do (raise steps= to train on; "
                            "`longvivit eval` to evaluate again)")
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


class Trainer:
    """One rank's training run, from a validated run config to its exit status.

        trainer = Trainer.from_argv(["demo.yaml", "steps=10"])  # validate: ConfigError, nothing made
        with trainer:                    # start: environment, watchdog, device, process group
            status = trainer.train()     # setup (engine, loaders, resume), loop, finish
        # close: logger, loaders, signal handlers, watchdog, process group (no barrier after an error)

    `setup()` alone builds the engine and loaders at the resumed state without training
    (tests/scripts/resumed_state.py, bench/gpu.py); `state_dict()` is what a checkpoint holds
    of this rank besides the engine (`parts()`, saved and loaded by name). `hooks` are
    called at named moments of the run (hooks.py; the tests' faults: tests/hooks_support.py)."""
    def __init__(self, cfg: RunConfig, ds_config: dict, tag: Path | None = None, d: dist.DistEnv | None = None,
                 hooks: TrainerHooks | None = None):
        self.cfg, self.ds_config, self.tag = cfg, ds_config, tag
        self.d = d or dist.read_env()
        self.hooks = hooks or TrainerHooks()
        self.state = TrainState()
        self.stop: StopRequest | None = None
        self.engine: DeepSpeedEngine | None = None
        self.device: torch.device | None = None
        self.sources = Sources(cfg)  # what it trains on (data.sources): their loaders open in setup
        self.log: RunLogger | None = None
        self.config_yaml = resolved_yaml(cfg)
        self.peak = 0.0
        self.window = Throughput()  # the steps since the last TensorBoard line
        self.total = Throughput()  # every step this process logged, for the summary
        self.saved: Path | None = None  # the newest checkpoint of this run's state (written or resumed from)
        self.saved_step = -1
        self.source_losses: dict = {}  # source -> its losses since the last TensorBoard line
        self.optimizer_state: dict | None = None  # after a resume: the tensors checked and moved
        self.redo_eval = False  # the eval due at the resumed step did not finish (eval_left_undone)
        self.t_start = time.time()
        # where this rank sits with parallel.sequence (its data rank: loaders, masks; its groups: start())
        self.layout = sequence.Layout(self.d.rank, self.d.world_size, cfg.parallel.sequence)

    @classmethod
    def from_argv(cls, argv: list[str], d: dist.DistEnv | None = None, hooks: TrainerHooks | None = None) -> Trainer:
        """CONFIG [key=value ...] validated (ConfigError before anything is made)."""
        d = d or dist.read_env()
        return cls(*validate(argv, d), d, hooks)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Trainer:
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close(failed=exc_type is not None)
        return False

    def start(self) -> None:
        """The process environment, this rank's watchdog and stop handlers, its device (bound
        before any collective), the process group, and the resume target rank 0 chose."""
        d, cfg = self.d, self.cfg
        dist.setup_env(d)
        self.stop = StopRequest()
        watchdog.start(cfg.timeouts.limits(), d.rank, cleanup=lambda: dist.remove_shm_buffer(d),
                       on_enter=lambda phase, step: self.hooks.on_phase_start(self, phase, step))
        dist.bind_device(d)
        dist.init_process_group(timedelta(seconds=cfg.timeouts.collective_s))
        dist.check_distinct_gpus()
        sequence.setup(self.layout)
        self.tag = checkpoint.rank0_choice(self.tag)
        self.redo_eval = dist.broadcast_object(eval_left_undone(cfg, self.tag) if d.is_main else None)

    def setup(self) -> None:
        """The engine (under ZeRO-3 built partitioned: construct.py), the loaders, and the
        checkpoint's state when resuming."""
        cfg, d, tag = self.cfg, self.d, self.tag
        self.device = dist.bound_device()
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        if d.is_main:
            checkpoint.remove_incomplete(cfg.out)
        universal = rescale(self, tag) if tag is not None else None
        ds_config = self.ds_config
        if universal is not None:  # the engine reads the universal form instead of the rank shards
            ds_config = {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}
        self.engine = build_engine(build_for_run(cfg, tag is not None, ds_config), cfg, ds_config)
        clean_shared_memory(cfg.data)
        self.sources.open(lambda data: open_loader(cfg, "train", self.device, d, True, data))
        if tag is not None:  # a checkpoint written before data.sources names its video loader "loader"
            checkpoint.load(self.engine, tag, self.parts(saved_part_names(checkpoint.stored_config(tag))), universal)
            apply_schedule(self.engine)
            self.optimizer_state = place_optimizer_state(base_optimizer(self.engine))
            self.saved, self.saved_step = tag, self.state.step  # finish() must not write it again
        torch.manual_seed(cfg.seed + 1000 * d.rank + self.state.step)  # anything unseeded differs per rank
        self.log = RunLogger(cfg.out, d.rank, cfg.steps, self.state.step, cfg.progress and d.is_main)
        self.peak = peak_tflops(self.device, cfg.peak_tflops)

    def train(self) -> int:
        """Set up, train to cfg.steps, finish: the exit status (0 done, 75 stopped on a
        signal after a checkpoint, 3 non-finite steps). A finished run does nothing."""
        cfg = self.cfg
        if finished(cfg, self.tag) and not self.redo_eval:
            return announce_finished(cfg, self.tag, self.d)
        self.setup()
        announce(self, self.tag, self.redo_eval)
        if self.redo_eval and self.state.step < cfg.steps:  # the final one: finish() runs it
            run_eval(self)
        try:
            completed = loop(self, self.stop)
        except NonFiniteStop as err:
            return announce_nonfinite(self, err)
        return finish(self, self.stop, completed, self.t_start)

    def parts(self, saved_names: dict[str, str] | None = None) -> dict[str, checkpoint.Stateful]:
        """What a checkpoint holds of this rank besides the engine, by name: the loop's
        counters, each source's loader (named after the source, or as `saved_names` says a
        checkpoint being loaded named it), the RNGs. checkpoint.save/load take any parts;
        they load in this order: the RNGs last, so that nothing loaded after them draws from them."""
        return {"train": self.state, **self.sources.parts(saved_names), "rng": checkpoint.RNGState()}

    @property
    def loader(self) -> Loader | None:
        """The first source's loader (of a one-source run: its loader)."""
        return next(iter(self.sources)).loader

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self.parts().items()}

    def close(self, failed: bool = True) -> None:
        """Release everything start() and setup() took. A rank leaving on an error waits for
        no peer on its way out (dist.shutdown failed=True): its exit is what ends the job."""
        watchdog.stop()
        if self.log is not None:
            self.log.close()
        self.sources.close()
        if self.stop is not None:
            self.stop.restore()
        sequence.teardown()
        dist.shutdown(self.d, failed=failed)


def open_loader(cfg: RunConfig, split: str, device: torch.device, d: dist.DistEnv, training: bool,
                data: DataConfig | None = None) -> Loader:
    """This rank's loader of `split` (longvivit.data.load.open_loader) for the model's text
    tower; `data` in place of cfg.data (a source's: sources.source_data). The training split
    hands each sequence group (parallel.sequence) one clip batch; evaluation runs every
    clip whole on one rank, so the val split is dealt over all ranks."""
    replication = cfg.parallel.sequence if split == "train" else 1
    return data_loader(data or cfg.data, split, device, d.rank, d.world_size, training, cfg.model.text.tokenizer,
                       cfg.model.text.vocab_size, replication=replication)


def rescale(trainer: Trainer, tag: Path) -> Path | None:
    """Resuming a checkpoint written by another number of ranks: rank 0 converts it to
    DeepSpeed's universal form (the others wait) and says in one JSON line what changed
    and what was kept (rescale_kept). None when the world size is the checkpoint's."""
    cfg, d = trainer.cfg, trainer.d
    saved_world = checkpoint.saved_world_size(tag)
    if saved_world == d.world_size:
        return None
    if d.is_main:
        old = checkpoint.stored_config(tag)
        batch, accum = [old["data"]["batch_size"], cfg.data.batch_size], [old.get("grad_accum", 1), cfg.grad_accum]
        global_batch = [batch[0] * accum[0] * saved_world, batch[1] * accum[1] * d.world_size]
        kept, why = rescale_kept(cfg, batch, accum, global_batch)
        events.emit("rescale", checkpoint=str(tag), step=checkpoint.tag_step(tag), world_size=[saved_world, d.world_size],
                    batch_per_rank=batch, grad_accum=accum, global_batch=global_batch, kept=kept,
                    message=f"resuming a checkpoint of {saved_world} ranks on {d.world_size}: converting it to a "
                            f"universal checkpoint; {why}")
    step = checkpoint.tag_step(tag)
    return checkpoint.to_universal(tag, d.rank, lambda: trainer.hooks.on_checkpoint_converted(trainer, step))


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


def announce(trainer: Trainer, tag: Path | None, redo_eval: bool = False) -> None:
    """The start event on every rank; on rank 0 the run config, and after a resume a
    "resume" line in metrics.jsonl (logging.read_metrics: it supersedes the lines of later
    steps, which a killed run wrote and this one runs again, and with redo_eval the eval
    of its own step that did not finish)."""
    local, total = partitioned_numel(trainer.engine.module)
    events.emit("start", rank=trainer.d.rank, pid=os.getpid(), world_size=trainer.d.world_size, backend=dist.backend(),
                device=str(trainer.device), params_local=local, params_total=total, step=trainer.state.step,
                resumed_from=str(tag) if tag else None, optimizer_state=trainer.optimizer_state,
                peak_tflops_per_device=trainer.peak)
    trainer.log.config(trainer.config_yaml)
    if tag is not None:
        trainer.log.record(trainer.state.step, kind="resume", checkpoint=str(tag), redo_eval=redo_eval)
    if trainer.d.is_main:
        (Path(trainer.cfg.out) / "run_config.yaml").write_text(trainer.config_yaml)


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


def step_source(trainer: Trainer) -> str:
    """The name of the source the next optimizer step trains on (sources.Schedule: a
    function of the step alone, the same on every rank and after a resume)."""
    return trainer.sources.at(trainer.state.step + 1).name


def source_mask_ratio(trainer: Trainer, source: str) -> float | None:
    """The mask ratio of `source`'s batches (None: the model config's)."""
    return trainer.sources[source].mask_ratio


@watchdog.phased("eval")
def run_eval(trainer: Trainer) -> dict:

    cfg = trainer.cfg
    loader = open_loader(cfg, "val", trainer.device, trainer.d, training=False)
    try:
        metrics, embeddings = evaluate(trainer.engine.module, loader, cfg.eval_mask_ratio, cfg.eval_max_batches,
                                       cfg.eval_gallery)
    finally:
        loader.close()
    trainer.hooks.on_evaluate(trainer, trainer.state.step, metrics, embeddings)
    trainer.log.scalars(trainer.state.step, {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, "eval")
    if embeddings.gallery is not None and trainer.log.active:  # rendered on rank 0 only

        trainer.log.image(trainer.state.step, "eval/gallery", render(embeddings.gallery))
    return metrics


@watchdog.phased("checkpoint")
def save(trainer: Trainer) -> Path:
    cfg, parts = trainer.cfg, trainer.parts()
    step = trainer.state.step
    trainer.saved = checkpoint.save(trainer.engine, cfg.out, step, parts, trainer.config_yaml, cfg.keep_last,
                                    lambda: trainer.hooks.on_checkpoint_written(trainer, step))
    trainer.saved_step = step
    return trainer.saved


def every(n: int, step: int, last: int) -> bool:
    return n > 0 and step % n == 0 and step != last


def loop(trainer: Trainer, stop: StopRequest) -> bool:
    """Train to cfg.steps; False if a stop request ended it early (after a checkpoint).
    Raises NonFiniteStop (nonfinite_since)."""
    cfg, hooks, timer = trainer.cfg, trainer.hooks, StepTimer()
    streams = {source.name: batches(source.loader, timer) for source in trainer.sources}
    bad_since = 0  # the first of the non-finite steps in a row up to the last one (0: it was finite)
    while trainer.state.step < cfg.steps:
        watchdog.begin("step", trainer.state.step + 1)
        hooks.on_step_start(trainer, trainer.state.step + 1)
        source = step_source(trainer)
        out = {**train_step(trainer, streams[source], source_mask_ratio(trainer, source)), "source": source}
        out["params_finite"] = params_finite(trainer.engine.module)
        trainer.state.step += 1
        step = trainer.state.step
        bad_since = nonfinite_since(trainer, out, log_step(trainer, out, timer), bad_since)
        # no checkpoint at a non-finite step: if the run stops on them, the newest one is from before
        if every(cfg.checkpoint_every, step, cfg.steps) and not bad_since:
            save(trainer)
        if every(cfg.eval_every, step, cfg.steps):
            run_eval(trainer)
        hooks.on_step_end(trainer, step)
        # after the final step the run is complete whatever was asked: finish() saves,
        # evaluates and exits 0 (a requeued job would have nothing left to do)
        if step < cfg.steps and stop.agreed():
            return False
    return True


# ---------------------------------------------------------------------------- finish

def finish(trainer: Trainer, stop: StopRequest, completed: bool, t_start: float) -> int:

    step = trainer.state.step
    tag = trainer.saved if trainer.saved_step == step else save(trainer)
    if not completed:
        events.emit("stop", rank=trainer.d.rank, step=step, checkpoint=str(tag), signal=stop.signum, exit=EXIT_REQUEUE)
        if trainer.d.is_main:
            write_stop_note(step, str(tag))
        return EXIT_REQUEUE
    metrics = run_eval(trainer)
    if trainer.d.is_main:
        write_summary(trainer, tag, metrics, time.time() - t_start)
    return 0


def announce_nonfinite(trainer: Trainer, err: NonFiniteStop) -> int:
    """Every rank says where it stopped; rank 0 says why in one line on stderr."""
    tag = str(trainer.saved) if trainer.saved is not None else None
    events.emit("nonfinite", rank=trainer.d.rank, first=err.first, step=err.last, checkpoint=tag, exit=EXIT_NONFINITE)
    if trainer.d.is_main:
        newest = f"the newest checkpoint, {tag}, is from before them" if tag else "no checkpoint was written"
        print(f"longvivit train: {err}: stopped at step {err.last} without saving; {newest} "
              f"(exit {EXIT_NONFINITE})", file=sys.stderr, flush=True)
    return EXIT_NONFINITE


def write_summary(trainer: Trainer, tag: Path, metrics: dict, seconds: float) -> None:
    summary = {"steps": trainer.state.step, "seconds": seconds,
               "samples_per_s": trainer.total.per_second(trainer.total.samples),
               "checkpoint": str(tag), "checkpoints": str(checkpoint.ckpt_root(trainer.cfg.out)),
               "tensorboard": str(Path(trainer.cfg.out) / "tb"), "eval": metrics}
    (Path(trainer.cfg.out) / "summary.json").write_text(json.dumps(summary, indent=1))
    events.emit("done", **summary)


__all__ = ["Trainer", "TrainState", "validate"]
