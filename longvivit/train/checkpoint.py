"""Checkpoints: DeepSpeed's sharded save plus what an exact resume needs.

Layout under the run's output directory:

    checkpoints/
      step00000100/                 one tag per save
        zero_pp_rank_*_...pt        DeepSpeed's files (model, optimizer, scheduler shards)
        rank00000.pt ...            per rank: {part name: its state_dict()}
        run_config.yaml             the resolved run config
        complete                    written last, by rank 0, after every rank has finished
      latest                        the newest complete tag (DeepSpeed's own pointer file)
      universal-step00000100/       only while a run on another world size resumes that tag:
                                    DeepSpeed's universal form of it (see to_universal)

A tag counts only once `complete` exists: it is written atomically (tmp + os.replace)
after a barrier that every rank reaches only when its own files are on disk, so a run
killed mid-save leaves a tag without it, which resume skips and deletes.

What a checkpoint holds besides the engine is a dict of named parts, each with
state_dict() / load_state_dict() (the trainer's step, its data loader, the RNGs: see
run.checkpoint_parts). save and load go over whatever parts they are given, so a second
loader or a new counter is one more entry in that dict and no change here. The engine is
not a part: DeepSpeed writes its model, optimizer and schedule shards itself.

Resuming on another world size (M ranks from a tag written by N): rank 0 converts the
tag's ZeRO shards to DeepSpeed's universal checkpoint (to_universal), the engine, built
with "checkpoint": {"load_universal": true}, loads that, and each part's state for the
new rank is derived from the N saved ones (rescaled_states).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
import zipfile
from argparse import Namespace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Protocol

import numpy as np
import torch
from omegaconf import OmegaConf

from longvivit.config import ConfigError, load_yaml
from longvivit.distributed import collectives as dist

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

MARKER = "complete"
CONFIG_FILE = "run_config.yaml"
# Model config keys that training may change between runs without changing the weights' shapes.
NOT_ARCHITECTURE = {"preset", "gather", "init_logit_scale", "max_logit_scale", "video.mask_ratio",
                    "video.mask_scheme", "video.grad_checkpointing", "video.packing", "compile"}


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def ckpt_root(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def is_complete(tag_dir: Path) -> bool:
    return (tag_dir / MARKER).is_file()


def list_tags(root: Path) -> list[Path]:
    """Tag directories, oldest first (the tag names sort by step)."""
    return sorted(p for p in root.glob("step*") if p.is_dir()) if root.is_dir() else []


def newest_complete(root: Path) -> Path | None:
    done = [t for t in list_tags(root) if is_complete(t)]
    return done[-1] if done else None


def find_checkpoint(path: str | Path) -> Path:
    """A tag directory from a run dir, a checkpoints/ dir or a tag dir (newest complete)."""
    path = Path(path)
    for root in (ckpt_root(path), path):
        tag = newest_complete(root)
        if tag is not None:
            return tag
    if is_complete(path):
        return path
    raise FileNotFoundError(f"{path}: no complete checkpoint (a tag directory with a '{MARKER}' file)")


def no_checkpoint_reason(path: str | Path) -> str:
    """Why find_checkpoint found nothing at `path`, in a few words (for a one-line error)."""
    path = Path(path)
    if not path.exists():
        return "no such file or directory"
    if not path.is_dir():
        return "is a file, not a run, checkpoints or tag directory"
    if (path / "index.json").is_file():
        return "holds MDS shards (index.json), not a checkpoint"
    roots = [r for r in (ckpt_root(path), path) if r.is_dir()]
    tags = [t for r in roots for t in list_tags(r)] + ([path] if path.name.startswith("step") else [])
    if tags:
        names, has = ", ".join(t.name for t in tags[-3:]), "has" if len(tags) == 1 else "have"
        return f"no complete checkpoint: {names} {has} no '{MARKER}' marker (a save that did not finish)"
    latest = next((r / "latest" for r in roots if (r / "latest").is_file()), None)
    if latest is not None:
        return f"no checkpoint: {latest} names {latest.read_text(errors='replace').strip()!r}, which is not there"
    return "holds no checkpoint (no step* tag directory)"


# ---------------------------------------------------------------------------- integrity

def check_files(tag_dir: Path, key: str, parts: bool = True) -> None:
    """Read-only, before anything loads `tag_dir`: every file a load of it reads is there
    and whole, or one ConfigError ('KEY: TAG: what is wrong') naming the file. Its marker
    and run_config.yaml parse; every torch file (DeepSpeed's model and optimizer shards,
    with `parts` the ranks' part files too) is a readable zip archive (a truncated one has
    lost its central directory, which sits at the end); and each rank's shards are there
    for the ZeRO stage and world size the model states record. Reads the small model
    states memory-mapped, no optimizer state."""
    step, world_size = _marker(tag_dir, key)
    config = tag_dir / CONFIG_FILE
    if not config.is_file():
        raise ConfigError(f"{key}: {tag_dir}: no {CONFIG_FILE} in it")
    try:
        load_yaml(config)
    except ConfigError as err:
        problem = str(err).split(": ", 2)[-1]  # load_yaml's 'config: PATH: what'
        raise ConfigError(f"{key}: {tag_dir}: {CONFIG_FILE} cannot be read ({problem})") from None
    model = sorted(tag_dir.glob("*model_states.pt"))
    if not model:
        raise ConfigError(f"{key}: {tag_dir}: no DeepSpeed model states (*_model_states.pt) in it")
    files = sorted(tag_dir.glob("*.pt")) if parts else sorted({*model, *tag_dir.glob("*optim_states.pt")})
    for file in files:
        _check_torch_file(file, key)
    stage, ranks = _zero_layout(model[0], key)
    expected = [f"zero_pp_rank_{r}_mp_rank_*_model_states.pt" for r in range(ranks)] if stage == 3 \
        else ["mp_rank_*_model_states.pt"]
    expected += [f"*zero_pp_rank_{r}_mp_rank_*_optim_states.pt" for r in range(ranks) if stage >= 1]
    expected += [rank_file(tag_dir, r).name for r in range(world_size) if parts]
    for pattern in expected:
        if not any(tag_dir.glob(pattern)):
            name = pattern.lstrip("*").replace("_*", "_00")
            raise ConfigError(f"{key}: {tag_dir}: {name} is missing (a ZeRO-{stage} checkpoint of {ranks} "
                              f"rank(s) at step {step} has one per rank)")


def _marker(tag_dir: Path, key: str) -> tuple[int, int]:
    """(step, world size) from a tag's marker."""
    try:
        meta = json.loads((tag_dir / MARKER).read_text())
        return int(meta["step"]), int(meta["world_size"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{key}: {tag_dir}: its '{MARKER}' marker cannot be read ({_reason(err)})") from None


def _check_torch_file(file: Path, key: str) -> None:
    try:
        with zipfile.ZipFile(file) as z:
            size = file.stat().st_size
            whole = bool(z.infolist()) and all(i.header_offset + i.compress_size <= size for i in z.infolist())
    except (OSError, zipfile.BadZipFile) as err:
        raise ConfigError(f"{key}: {file}: truncated or not a torch file ({_reason(err)})") from None
    if not whole:
        raise ConfigError(f"{key}: {file}: truncated (its entries run past the end of the file)")


def _zero_layout(model_states: Path, key: str) -> tuple[int, int]:
    """(ZeRO stage, data-parallel ranks) that DeepSpeed recorded in a model states file."""
    try:
        states = torch.load(model_states, map_location="cpu", mmap=True, weights_only=False)
        zero = states.get("ds_config", {}).get("zero_optimization", {})
        return int(zero.get("stage", 0) if isinstance(zero, dict) else 0), int(states.get("dp_world_size", 1))
    except Exception as err:  # noqa: BLE001 -- unpickling a damaged file raises many types
        raise ConfigError(f"{key}: {model_states}: cannot be read ({_reason(err)})") from None


def _reason(err: BaseException) -> str:
    """An exception's message on one short line."""
    words = " ".join(str(err).split())
    return words if len(words) <= 120 else words[:117] + "..."


def param_shapes(tag_dir: Path) -> dict[str, tuple[int, ...]]:
    """Every parameter's full shape, by name, as DeepSpeed recorded it in the tag's model
    states (trained and frozen ones; read memory-mapped, no weights)."""
    model = sorted(tag_dir.glob("*model_states.pt"))[0]
    states = torch.load(model, map_location="cpu", mmap=True, weights_only=False)
    shapes: dict[str, tuple[int, ...]] = {}
    for group in [*(states.get("param_shapes") or []), states.get("frozen_param_shapes") or {}]:
        shapes.update({name: tuple(shape) for name, shape in group.items()})
    return shapes


# ---------------------------------------------------------------------------- parts

class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class RNGState:
    """This process's torch / numpy / python (and CUDA) generators, as a part."""

    def state_dict(self) -> dict:
        state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


def rank_file(tag_dir: Path, rank: int) -> Path:
    return tag_dir / f"rank{rank:05d}.pt"


# ---------------------------------------------------------------------------- save

def save(engine: DeepSpeedEngine, out: str | Path, step: int, parts: Mapping[str, Stateful],
         config_yaml: str, keep_last: int, on_written: Callable[[], None] = lambda: None) -> Path:
    """Save the engine and this rank's `parts` on every rank; the tag becomes complete
    after all ranks are done. `on_written()` is called on each rank once its own files are
    on disk (the trainer's hooks.on_checkpoint_written).

    Never writes into a complete tag: a tag of this step already on disk is left over from
    another run in the same directory (resume=never), and rank 0 removes it before any rank
    writes, so a kill mid-save leaves an incomplete tag (skipped and deleted on restart),
    never a complete marker over half-written files. (A run that resumed from this very
    step does not save it again: see run.finish.)"""
    root = ckpt_root(out)
    tag = tag_for(step)
    tag_dir = root / tag
    rank = engine.global_rank
    if rank == 0 and tag_dir.exists():
        _remove_tag(tag_dir)
    dist.barrier()  # no rank writes before the old tag is gone
    engine.save_checkpoint(str(root), tag=tag, client_state={"step": step}, save_latest=False)
    torch.save({name: part.state_dict() for name, part in parts.items()}, rank_file(tag_dir, rank))
    if rank == 0:
        _write_atomic(tag_dir / CONFIG_FILE, config_yaml)
    on_written()
    dist.barrier()  # every rank's files are on disk past this point
    if rank == 0:
        meta = {"step": step, "world_size": engine.world_size, "time": time.time()}
        _write_atomic(tag_dir / MARKER, json.dumps(meta))
        _write_atomic(root / "latest", tag)
        prune(root, keep_last)
    dist.barrier()
    return tag_dir


def _remove_tag(tag_dir: Path) -> None:
    """Remove a tag: its marker first, so that a kill part-way leaves it incomplete."""
    (tag_dir / MARKER).unlink(missing_ok=True)
    shutil.rmtree(tag_dir, ignore_errors=True)


def prune(root: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` complete tags; drop older ones and any incomplete tag."""
    tags = list_tags(root)
    complete = [t for t in tags if is_complete(t)]
    keep = set(complete[-keep_last:])
    for t in tags:
        if t not in keep:
            _remove_tag(t)


# ---------------------------------------------------------------------------- resume

def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def stored_config(tag_dir: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(tag_dir / CONFIG_FILE), resolve=True)


def check_compatible(tag_dir: Path, model_cfg: dict) -> None:
    """Refuse to resume a checkpoint whose model architecture differs (another world size
    is fine: see to_universal)."""
    old = _flatten(stored_config(tag_dir)["model"])
    new = _flatten(model_cfg)
    for key in sorted(set(old) | set(new)):
        if key in NOT_ARCHITECTURE:
            continue
        if old.get(key) != new.get(key):
            raise ConfigError(
                f"model.{key}: the checkpoint {tag_dir} was trained with {old.get(key)!r}, this run "
                f"has {new.get(key)!r}; refusing to resume another architecture (use another out= "
                f"or resume=never with init=checkpoint:{tag_dir})")


def resume_tag(out: str | Path, resume: str) -> Path | None:
    """The checkpoint to resume from: resume=auto -> newest complete in out/, never -> None."""
    if resume == "never":
        return None
    if resume == "auto":
        return newest_complete(ckpt_root(out))
    try:
        return find_checkpoint(resume)
    except FileNotFoundError as err:
        raise ConfigError(f"resume: {err}") from None


def rank0_choice(tag: Path | None) -> Path | None:
    """Rank 0's resume target on every rank (call once the process group is up). Ranks can
    see the checkpoints directory differently (on a shared filesystem, another node's
    cached listing lags behind a save), and a tag's ZeRO shards only load together."""
    chosen = dist.broadcast_object(None if tag is None else str(tag))
    return None if chosen is None else Path(chosen)


def tag_step(tag_dir: Path) -> int:
    """The step a complete tag holds (from its marker)."""
    return int(json.loads((tag_dir / MARKER).read_text())["step"])


def saved_world_size(tag_dir: Path) -> int:
    """The number of ranks that wrote a complete tag (from its marker)."""
    return int(json.loads((tag_dir / MARKER).read_text())["world_size"])


def load(engine: DeepSpeedEngine, tag_dir: Path, parts: Mapping[str, Stateful],
         universal: Path | None = None) -> None:
    """Restore the engine (model, optimizer, schedule) and this rank's `parts`. With
    `universal` (to_universal's folder; the engine built with load_universal) the engine
    loads that, and the parts get states derived from every saved rank's."""
    load_dir = tag_dir.parent if universal is None else universal
    _, client = engine.load_checkpoint(str(load_dir), tag=tag_dir.name,
                                       load_optimizer_states=True, load_lr_scheduler_states=True)
    if client is None:
        raise RuntimeError(f"DeepSpeed could not load {load_dir / tag_dir.name}")
    if universal is None:
        states = torch.load(rank_file(tag_dir, engine.global_rank), weights_only=False)
    else:
        states = rescaled_states(tag_dir, parts, engine.global_rank, engine.world_size)
    missing = sorted(set(parts) - set(states))
    if missing:  # a part this trainer has and the one that wrote the checkpoint had not
        raise RuntimeError(f"{tag_dir}: no saved state for {', '.join(missing)} "
                           f"(it holds {', '.join(states)})")
    for name, part in parts.items():
        part.load_state_dict(states[name])
    if universal is not None:
        dist.barrier()  # every rank has read the universal copy: it is not needed again
        if engine.global_rank == 0:
            shutil.rmtree(universal, ignore_errors=True)


# ---------------------------------------------------------------------------- another world size

def universal_dir(tag_dir: Path) -> Path:
    """Where to_universal puts a tag's universal form: a sibling of the tag (the name does
    not match step*, so list_tags, prune and resume never take it for a tag)."""
    return tag_dir.parent / f"universal-{tag_dir.name}"


def to_universal(tag_dir: Path, rank: int, on_converted: Callable[[], None] = lambda: None) -> Path:
    """Convert `tag_dir`'s ZeRO shards (any stage) to DeepSpeed's universal checkpoint, on
    rank 0 while the others wait; returns the folder to hand to load(universal=...).
    `on_converted()` is called on rank 0 between the conversion and its rename.

    Written aside and renamed into place: a run killed mid-conversion leaves only the
    .tmp folder, which the next conversion (or remove_incomplete) deletes, and the tag
    itself is never touched. The result holds the tag's DeepSpeed files only (the parts
    stay in the tag); load deletes it once every rank has loaded."""
    final = universal_dir(tag_dir)
    if rank == 0 and not final.is_dir():
        # deepspeed: slow to import and logs on import; a run that never rescales needs none of it
        from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

        work = final.with_name(f".{final.name}.tmp")
        shutil.rmtree(work, ignore_errors=True)
        # one worker each: no process pool inside a rank (and the CPU ranks are busy anyway)
        ds_to_universal(Namespace(input_folder=str(tag_dir), output_folder=str(work / tag_dir.name),
                                  num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False,
                                  strict=True, inject_missing_state=False))
        on_converted()
        os.replace(work, final)
    dist.barrier()  # no rank loads before rank 0 has renamed the result into place
    return final


def rescaled_states(tag_dir: Path, parts: Mapping[str, Stateful], rank: int, world_size: int) -> dict:
    """This rank's state of each part, derived from the states every saved rank wrote.

    A part that knows how to redistribute its state over another world size (a data
    loader's position) has a static `rescale_state(states, rank, world_size)`, `states`
    being the saved ranks' in rank order; any other part (the step counter, identical on
    every rank; the RNGs) takes saved rank `rank % N`'s."""
    n = saved_world_size(tag_dir)
    saved = [torch.load(rank_file(tag_dir, r), weights_only=False) for r in range(n)]
    out = {}
    for name in saved[0]:
        states = [s[name] for s in saved]
        rescale = getattr(parts.get(name), "rescale_state", None)
        out[name] = rescale(states, rank, world_size) if rescale is not None else states[rank % n]
    return out


def remove_incomplete(out: str | Path) -> list[Path]:
    """Delete tags a killed run left half-written, and universal conversions a killed run
    left behind (call on rank 0 before training starts)."""
    root = ckpt_root(out)
    removed = [t for t in list_tags(root) if not is_complete(t)]
    for t in removed:
        shutil.rmtree(t, ignore_errors=True)
    for p in (*root.glob("universal-step*"), *root.glob(".universal-step*.tmp")) if root.is_dir() else ():
        shutil.rmtree(p, ignore_errors=True)
    return removed


__all__ = ["Stateful", "RNGState", "save", "load", "prune", "resume_tag", "rank0_choice", "find_checkpoint",
           "check_compatible", "remove_incomplete", "newest_complete", "tag_for", "tag_step", "ckpt_root",
           "saved_world_size", "to_universal", "rescaled_states", "check_files", "no_checkpoint_reason", "param_shapes"]
