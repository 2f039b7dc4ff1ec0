"""The run config: one typed structure for everything `longvivit train` needs.

    RunConfig
      model: ModelConfig   (starts from the preset named by model.preset, then YAML, then CLI)
      data:  DataConfig    (sources: what it trains on; val shards, tokenizer, frames/sampling/resolution,
                            batch size per device)
      optim: OptimConfig   (AdamW + warmup/cosine + clipping)
      timeouts: TimeoutConfig  (the process group's timeout, the watchdog's limit per phase)
      parallel: ParallelConfig (sequence: ranks that share each clip, Ulysses)
      ... steps, grad_accum, global_batch, ds_config, precision, intervals, out, seed, init, resume

`load_run_config(path, overrides)` returns it validated, or raises ConfigError naming the
key, before anything heavy happens (no process group, no model, no output directory); a
config's older data.train/data.images form is converted to data.sources there (with_sources).
`keep_global_batch(cfg, world_size)` derives grad_accum or data.batch_size from a fixed
global_batch once the world size is known; `resolve_ds_config` fills the DeepSpeed JSON's
"auto" entries from the run config, rejects explicit entries that disagree with it, and
checks the result against what DeepSpeed itself accepts (check_ds_keys). The check_*
functions below are the file checks the commands share (shards, tokenizer, output paths).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, List, Sequence

import torch
from omegaconf import OmegaConf

from longvivit import configs
from longvivit.config import ConfigError, check, choice, load_config, load_yaml, to_dict, validated
from longvivit.data.config import DataConfig, shard_streams, with_sources
from longvivit.data.load.tokenizer import make_tokenizer
from longvivit.distributed.config import ParallelConfig, TimeoutConfig
from longvivit.model import model_config
from longvivit.model.config import ModelConfig
from longvivit.model.masking import visible_count
from longvivit.train.local import finish_local_form, local_changes

CONFIG_DIR = configs.HERE  # the shipped run configs


@dataclass
class OptimConfig:
    lr: float = 5e-4  # peak learning rate, reached after warmup_steps
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1  # not applied to norms, biases, position embeddings, logit scale
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    clip: float = 1.0  # global grad-norm clipping (DeepSpeed's gradient_clipping); 0 disables

    def validate(self) -> None:
        for key in ("lr", "weight_decay", "eps", "clip"):  # inf or nan would train to NaN weights
            check(math.isfinite(getattr(self, key)), key, f"{getattr(self, key)} is not a finite number")
        check(self.lr > 0, "lr", f"{self.lr} must be > 0")
        check(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", f"{self.min_lr_ratio} is outside [0, 1]")
        check(self.warmup_steps >= 0, "warmup_steps", f"{self.warmup_steps} must be >= 0")
        check(self.weight_decay >= 0, "weight_decay", f"{self.weight_decay} must be >= 0")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas",
              f"expected two values in [0, 1), got {self.betas}")
        check(self.clip >= 0, "clip", f"{self.clip} must be >= 0")


@dataclass
class RunConfig:
    # Keys that no longer exist but that run configs stored before (a checkpoint's
    # run_config.yaml, read by resume, `longvivit eval` and export) still hold: load_config
    # drops them from files and refuses them, with the reason, as overrides.
    RETIRED_KEYS: ClassVar[dict[str, str]] = {
        "save_eval_embeddings": "an eval's embeddings reach code outside the trainer through its hooks "
                                "(longvivit/train/hooks.py on_evaluate), or `longvivit eval --save-embeddings`",
    }
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    timeouts: TimeoutConfig = field(default_factory=TimeoutConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    steps: int = 1000  # optimizer steps
    grad_accum: int = 1  # micro-batches per optimizer step
    # per_micro_batch: each micro-batch its own loss (its samples the only negatives), the
    # step their mean; whole_batch: the micro-batches form one contrastive batch of
    # grad_accum * batch_size per rank (open_clip's --accum-freq; longvivit/train/accumulate.py)
    grad_accum_loss: str = choice("per_micro_batch", "whole_batch")
    # samples per optimizer step over all ranks (data.batch_size * grad_accum * world size),
    # kept on any world size by deriving global_batch_by's key from it at startup
    # (keep_global_batch: the given value of that key is replaced); 0: not fixed, the global
    # batch follows the world size
    global_batch: int = 0
    global_batch_by: str = choice("grad_accum", "batch_size")  # the key derived: grad_accum | data.batch_size
    ds_config: str = "zero3_cpu.json"  # a path, or a shipped one's name (longvivit.configs.resolve)
    precision: str = choice("fp32", "bf16", "fp16")  # must agree with the ds_config
    out: str = "runs/default"  # checkpoints, TensorBoard logs, metrics.jsonl
    seed: int = 0
    init: str = ""  # "" (random) | open_clip:PATH | checkpoint:PATH (a run dir, DS checkpoint or export)
    resume: str = "auto"  # auto (newest complete checkpoint in out/) | never | PATH to a checkpoint
    log_every: int = 1
    eval_every: int = 0  # 0: only at the end
    eval_mask_ratio: float = 0.0  # eval is unmasked by default
    eval_max_batches: int = 0  # 0: the whole val split
    eval_gallery: int = 4  # query captions in each eval's retrieval gallery (TensorBoard eval/gallery); 0: none
    checkpoint_every: int = 0  # 0: only at the end
    keep_last: int = 3
    # stop after this many non-finite steps in a row (each one skipped, not applied), with
    # no checkpoint of them and exit status 3; 0: skip them and never stop
    max_nonfinite_steps: int = 3
    peak_tflops: float = 0.0  # MFU denominator per device; 0: measured (CPU) or spec table (GPU)
    progress: bool = True  # tqdm bar on rank 0
    local: bool = False  # the config's local form: tiny dims, synthetic data, CPU twin (longvivit/train/local.py)
    local_dir: str = "runs/local"  # local runs, data and open_clip files

    def validate(self) -> None:
        check(self.steps > 0, "steps", f"{self.steps} must be > 0")
        # torch.manual_seed takes [-2**63, 2**64); ranks and steps are added to the seed (run.py)
        check(0 <= self.seed < 2**63, "seed", f"{self.seed} is outside [0, 2**63)")
        check(self.grad_accum > 0, "grad_accum", f"{self.grad_accum} must be > 0")
        check(self.global_batch >= 0, "global_batch", f"{self.global_batch} must be >= 0 (0: not fixed)")
        check(0.0 <= self.eval_mask_ratio < 1.0, "eval_mask_ratio", f"{self.eval_mask_ratio} is outside [0, 1)")
        for key in ("log_every", "eval_every", "checkpoint_every", "eval_max_batches", "eval_gallery",
                    "max_nonfinite_steps"):
            check(getattr(self, key) >= 0, key, f"{getattr(self, key)} must be >= 0")
        check(self.keep_last >= 1, "keep_last", f"{self.keep_last} must be >= 1")
        check(self.init == "" or self.init.split(":", 1)[0] in ("open_clip", "checkpoint"), "init",
              f"{self.init!r}: expected '', open_clip:PATH or checkpoint:PATH")
        check(self.data.frames == self.model.video.frames, "data.frames",
              f"{self.data.frames} differs from model.video.frames={self.model.video.frames}")
        check(self.data.image_size == self.model.video.image_size, "data.image_size",
              f"{self.data.image_size} differs from model.video.image_size={self.model.video.image_size}")
        check(self.data.text_length <= self.model.text.context_length, "data.text_length",
              f"{self.data.text_length} exceeds model.text.context_length={self.model.text.context_length}")
        self.check_sequence()
        t = self.model.video.tubelet[0]
        for i, src in enumerate(self.data.sources):  # empty until with_sources (load_run_config)
            check(src.frames is None or src.frames % t == 0, f"data.sources.{i}.frames",
                  f"{src.frames} is not a multiple of the tubelet's {t} frames (model.video.tubelet)")


    def check_sequence(self) -> None:
        """parallel.sequence against the model (the world size is checked at launch:
        data_world): heads divisible, joint attention, a padded batch masked (packing
        packs a batch into one sequence per rank), at least one token of a whole clip per rank."""
        n, video = self.parallel.sequence, self.model.video
        if n == 1:
            return
        check(video.heads % n == 0, "parallel.sequence",
              f"{n} does not divide model.video.heads={video.heads}: each rank of a sequence group attends "
              "with heads / parallel.sequence of them")
        check(video.attention == "joint", "parallel.sequence",
              f"{n} splits joint attention's one sequence per clip; model.video.attention is {video.attention}")
        check(video.packing != "packed", "parallel.sequence",
              f"{n} runs padded batches masked; model.video.packing=packed packs them instead (use auto or masked)")
        check(not self.model.compile, "parallel.sequence",
              f"{n} with model.compile=true: the compiled blocks do not trace the all-to-all inside each attention "
              "(not supported yet; set one of them off)")
        t, p, _ = video.tubelet
        tokens = int(video.cls_token) + visible_count(video.frames // t, (video.image_size // p) ** 2,
                                                      video.mask_ratio, video.mask_scheme)
        check(tokens >= n, "parallel.sequence",
              f"{n} ranks per clip but a clip keeps {tokens} token{'s' * (tokens != 1)} "
              f"(model.video.mask_ratio={video.mask_ratio}): "
              "every rank needs one")


def data_world(cfg: RunConfig, world_size: int) -> int:
    """Ranks with clip batches of their own: the world size over parallel.sequence, which
    must divide it (ConfigError before any process group otherwise)."""
    n = cfg.parallel.sequence
    check(world_size % n == 0, "parallel.sequence",
          f"{n} does not divide the world size {world_size}: the ranks form world size / "
          "parallel.sequence groups of parallel.sequence")
    return world_size // n


def _preset_name(sources: Sequence[Any], overrides: Sequence[str]) -> str:
    """model.preset as the YAML files and overrides set it (last one wins)."""
    name = "B"
    for src in sources:
        node = load_yaml(src) if isinstance(src, (str, Path)) else src
        if isinstance(node, dict) or OmegaConf.is_dict(node):
            name = OmegaConf.select(OmegaConf.create(node), "model.preset", default=name)
    for item in overrides:
        if item.startswith("model.preset="):
            name = item.split("=", 1)[1]
    return name


def load_run_config(*sources: Any, overrides: Sequence[str] = ()) -> RunConfig:
    """Preset defaults, then `sources` (YAML paths or dicts), then ``key=value`` overrides.
    With local=true, the local form of that config (longvivit/train/local.py) goes under the overrides."""
    preset = _preset_name(sources, overrides)
    check_list_overrides(overrides)
    try:
        base = {"model": to_dict(model_config(preset))}
    except (KeyError, ValueError) as err:
        raise ConfigError(f"model.preset: {preset!r} is not a known preset ({err})") from None
    cfg = with_data_sources(load_config(RunConfig, base, *sources, overrides=overrides))
    if not cfg.local:
        return cfg
    cfg = with_data_sources(load_config(RunConfig, base, *sources, local_changes(cfg), overrides=overrides))
    finish_local_form(cfg)
    return cfg


def check_list_overrides(overrides: Sequence[str]) -> None:
    """An override of one entry of a list (data.sources.0.shards=X, optim.betas.1=0.9) is
    refused in one line: the config loader merges overrides as mappings, which cannot index
    a list."""
    for item in overrides:
        key = item.split("=", 1)[0]
        if any(part.isdigit() for part in key.split(".")):
            raise ConfigError(f"{key}: an entry of a list cannot be set on the command line; set it in the "
                              "YAML file (data.train and data.images.* set the sources named video and images)")


def with_data_sources(cfg: RunConfig) -> RunConfig:
    """`cfg` with its data in the form of data.sources (data.config.with_sources), validated."""
    data = with_sources(cfg.data)
    return cfg if data is cfg.data else validated(dataclasses.replace(cfg, data=data))


def keep_global_batch(cfg: RunConfig, world_size: int) -> RunConfig:
    """`cfg` with grad_accum (global_batch_by=grad_accum) or data.batch_size (batch_size)
    derived so that data.batch_size * grad_accum * world_size == global_batch; `cfg` itself
    when global_batch is 0. ConfigError naming the keys and the world size when
    global_batch is not a multiple of the other two."""
    if not cfg.global_batch:
        return cfg
    by_accum = cfg.global_batch_by == "grad_accum"
    kept, kept_key = (cfg.data.batch_size, "data.batch_size") if by_accum else (cfg.grad_accum, "grad_accum")
    per_unit = kept * world_size
    check(cfg.global_batch % per_unit == 0, "global_batch",
          f"{cfg.global_batch} is not a multiple of {kept_key}={kept} x world_size={world_size} (= {per_unit}), "
          f"so no whole {'grad_accum' if by_accum else 'data.batch_size'} gives it (global_batch_by="
          f"{cfg.global_batch_by}; change global_batch, {kept_key} or global_batch_by)")
    derived = cfg.global_batch // per_unit
    if by_accum:
        return dataclasses.replace(cfg, grad_accum=derived)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=derived))


def repo_path(path: str) -> Path:
    """A config path as the run config or command line gives it (longvivit.configs.resolve)."""
    return configs.resolve(path)


def check_data(cfg: RunConfig) -> None:
    """Shards and tokenizer are there and whole (local paths only; remote URLs are the
    loader's to check): check_shards of each source's shards and of val, the tokenizer file
    read. A synthetic source needs neither."""
    if cfg.data.source == "synthetic":
        return
    for key, path in [*source_shards(cfg), ("data.val", cfg.data.val)]:
        if "://" not in path:
            check_shards(key, path)
    if cfg.model.text.tokenizer != "open_clip":
        check(Path(cfg.data.tokenizer).is_file(), "data.tokenizer", f"no tokenizer model at {cfg.data.tokenizer!r}")


def source_shards(cfg: RunConfig) -> list[tuple[str, str]]:
    """(the key naming it, path) of every shard folder or URL the sources read: the old
    form's key where a source came from it (data.train, data.images.train)."""
    found = []
    for i, src in enumerate(cfg.data.sources):
        streams = shard_streams(src.shards)
        if isinstance(src.shards, str):
            found.append((src.shards_key or f"data.sources.{i}.shards", src.shards))
        else:
            found += [(f"data.sources.{i}.shards.{j}.path", path) for j, (path, _) in enumerate(streams)]
    return found


def one_line(err: BaseException, limit: int = 160) -> str:
    """An exception as a short single line: its type and its message, whitespace folded."""
    reason = " ".join(str(err).split())
    reason = reason if len(reason) <= limit else reason[:limit - 3] + "..."
    return f"{type(err).__name__}: {reason}" if reason else type(err).__name__


def check_shards(key: str, path: str) -> None:
    """A local MDS shard folder that streaming can read: index.json is JSON listing the
    shards, and each shard file (or its compressed form) is there at the size the index
    records. Reads the index and the files' sizes, never the shards."""
    folder = Path(path)
    index = folder / "index.json"
    check(bool(path) and index.is_file(), key, f"no MDS shards at {path!r} (missing index.json)")
    try:
        content = json.loads(index.read_bytes())
    except (OSError, ValueError) as err:  # ValueError: not JSON, or not UTF-8
        raise ConfigError(f"{key}: {index} is not an MDS index ({one_line(err)})") from None
    shards = content.get("shards") if isinstance(content, dict) else None
    check(isinstance(shards, list) and len(shards) > 0, key, f"{index} lists no shards (not an MDS index?)")
    for number, shard in enumerate(shards):
        check_shard_file(key, folder, index, number, shard)


def check_shard_file(key: str, folder: Path, index: Path, number: int, shard: Any) -> None:
    """One entry of an MDS index: its raw shard file at its recorded size, or else its
    compressed file (zip_data) at that one's."""
    forms = [shard.get(form) for form in ("raw_data", "zip_data")] if isinstance(shard, dict) else []
    forms = [f for f in forms if isinstance(f, dict) and isinstance(f.get("basename"), str)
             and isinstance(f.get("bytes"), int)]
    check(bool(forms), key, f"{index}: shard {number} names no file (raw_data/zip_data basename and bytes)")
    for form in forms:
        file = folder / form["basename"]
        if file.is_file():
            size = file.stat().st_size
            check(size == form["bytes"], key, f"{file} is {size} bytes, {index.name} says {form['bytes']} "
                                              "(truncated or rewritten: write the shards again)")
            return
    check(False, key, f"{folder / forms[-1]['basename']} is missing ({index.name} lists it)")


def check_tokenizer_file(key: str, kind: str, path: str):
    """The tokenizer model.text.tokenizer names, read from `path` (sentencepiece): the
    tokenizer, or ConfigError naming `key` when the file is missing or not a model."""
    check(kind == "open_clip" or Path(path).is_file(), key, f"no tokenizer model at {path!r}")
    try:
        return make_tokenizer(kind, path)
    except (OSError, ValueError, RuntimeError) as err:  # sentencepiece raises RuntimeError / OSError
        raise ConfigError(f"{key}: cannot read {path!r} as a tokenizer ({one_line(err)})") from None


def check_writable_dir(key: str, path: str | Path) -> None:
    """`path` is a directory this process can write in, or one it can make: its nearest
    existing ancestor is a directory where a probe directory can be made. The probe, not
    os.access, because root passes os.access on /proc and on read-only mounts; it is
    removed at once and the folder's modification time put back, so nothing changes."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())
    check(existing.is_dir(), key, f"{str(path)!r} is a file, not a directory" if existing == path
          else f"{str(path)!r}: {existing} is a file, not a directory")
    before = existing.stat()
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".longvivit-probe-", dir=existing))
    except OSError as err:
        raise ConfigError(f"{key}: {str(path)!r}: cannot create anything in {existing} ({err.strerror})") from None
    try:
        os.utime(existing, ns=(before.st_atime_ns, before.st_mtime_ns))
    except OSError:  # the probe worked: a folder whose time cannot be set is still writable
        pass


def check_writable_file(key: str, path: str | Path) -> None:
    """`path` can be written as a file: not a directory, and its folder exists and is
    writable (a file's folder is not made for it)."""
    path = Path(path)
    check(not path.is_dir(), key, f"{str(path)!r} is a directory, expected a file name")
    check(path.parent.is_dir(), key, f"{str(path)!r}: {path.parent} is not a directory"
          + ("" if path.parent.exists() else " (it does not exist)"))
    check_writable_dir(key, path.parent)


def check_precision(precision: str, device_type: str) -> None:
    """Refuse a precision this device cannot train in."""
    if device_type == "cpu":
        check(precision != "fp16", "precision", "fp16 is not supported on CPU (use fp32 or bf16)")
    elif precision == "bf16":
        check(torch.cuda.is_bf16_supported(), "precision", "this GPU does not support bf16")


# ---------------------------------------------------------------------------- ds_config

def load_ds_json(path: str) -> dict:
    p = repo_path(path)
    check(p.is_file(), "ds_config", f"no such file {path!r}")
    try:
        ds = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"ds_config: {path} is not valid JSON ({err})") from None
    check(isinstance(ds, dict), "ds_config", f"{path} holds a JSON {type(ds).__name__}, expected an object")
    return ds


def _section(ds: dict, key: str, name: str) -> dict:
    """ds[key] (created empty when absent), which must be a JSON object."""
    section = ds.setdefault(key, {})
    check(isinstance(section, dict), f"ds_config.{key}", f"{section!r} in {name} is not a JSON object")
    return section


def _fill(ds: dict, key: str, want: Any, run_key: str, name: str) -> None:
    """ds[key] = want when absent or "auto"; otherwise it must already equal want."""
    have = ds.get(key, "auto")
    if have == "auto":
        ds[key] = want
    else:
        check(have == want, f"ds_config.{key}",
              f"{have} in {name} disagrees with {run_key}={want} (set it to \"auto\" or match)")


def _fill_precision(ds: dict, precision: str, name: str) -> None:
    for key in ("bf16", "fp16"):
        section = _section(ds, key, name)
        want = precision == key
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = want
        check(section["enabled"] == want, f"ds_config.{key}.enabled",
              f"{section['enabled']} in {name} disagrees with precision={precision}")


def ds_config_accelerator(path: str) -> str | None:
    """What a ds_config is written for: its "_accelerator" entry ("cuda" or "cpu"; every
    shipped one says), None when it does not say."""
    return load_ds_json(path).get("_accelerator")


def resolve_ds_config(cfg: RunConfig, world_size: int) -> dict:
    """The DeepSpeed config dict for this run: "auto" filled in, disagreements rejected."""
    ds = {k: v for k, v in load_ds_json(cfg.ds_config).items() if not k.startswith("_")}  # "_comment"
    name = cfg.ds_config
    _fill(ds, "train_micro_batch_size_per_gpu", cfg.data.batch_size, "data.batch_size", name)
    _fill(ds, "gradient_accumulation_steps", cfg.grad_accum, "grad_accum", name)
    _fill(ds, "train_batch_size", cfg.data.batch_size * cfg.grad_accum * world_size,
          "data.batch_size*grad_accum*world_size", name)
    _fill(ds, "gradient_clipping", float(cfg.optim.clip), "optim.clip", name)
    _fill_precision(ds, cfg.precision, name)
    check("optimizer" not in ds and "scheduler" not in ds, "ds_config.optimizer",
          f"{name} defines an optimizer/scheduler; the run config's optim section owns them")
    zero = _section(ds, "zero_optimization", name)
    check(zero.get("stage", 0) in (0, 1, 2, 3), "ds_config.zero_optimization.stage",
          f"{zero.get('stage')} is not one of 0, 1, 2, 3")
    check_ds_keys(ds, name)
    return ds


# Top-level entries DeepSpeed reads without checking their type (get_scalar_param), which
# would fail only once the engine uses them ("often" % step); gradient_clipping and the
# batch sizes are _fill's.
DS_SCALARS = {"steps_per_print": int, "gradient_predivide_factor": float, "dump_state": bool,
              "disable_allgather": bool, "prescale_gradients": bool, "wall_clock_breakdown": bool,
              "memory_breakdown": bool, "sparse_gradients": bool, "zero_allow_untested_optimizer": bool,
              "zero_force_ds_cpu_optimizer": bool, "dataloader_drop_last": bool}


class _ReadKeys(dict):
    """A dict that notes every key looked up in it (get, [], in, keys())."""

    def __init__(self, data: dict, read: set):
        super().__init__(data)
        self.read = read

    def get(self, key, *default):
        self.read.add(key)
        return super().get(key, *default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)

    def keys(self):
        return _ReadKeyView(self)

    def __reduce_ex__(self, protocol):  # copy.copy (DeepSpeedConfig copies it) keeps the notes
        return (_ReadKeys, (dict(self), self.read))


class _ReadKeyView:
    def __init__(self, d: _ReadKeys):
        self.d = d

    def __contains__(self, key):
        return key in self.d

    def __iter__(self):
        return iter(dict.keys(self.d))


def check_ds_keys(ds: dict, name: str) -> None:
    """The resolved ds_config is one DeepSpeed accepts, checked before anything starts:
    the zero_optimization section by DeepSpeed's own model of it (an unknown key, a
    string where a section or a number belongs), the top-level scalars it would take
    unchecked (DS_SCALARS), and every top-level key one that DeepSpeed reads. The first
    problem is one ConfigError naming the key."""
    # deepspeed (and its pydantic): slow to import and logs on import; only checking a ds_config needs it
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from pydantic import ValidationError

    try:
        DeepSpeedZeroConfig(**ds["zero_optimization"])
    except ValidationError as err:
        raise ConfigError(_pydantic_problem(err, "ds_config.zero_optimization", name)) from None
    for key, kind in DS_SCALARS.items():
        if key in ds:
            check(_is_a(ds[key], kind), f"ds_config.{key}", f"{ds[key]!r} in {name} is not {_KIND_NAMES[kind]}")
    check(ds.get("steps_per_print", 1) >= 1, "ds_config.steps_per_print",
          f"{ds.get('steps_per_print')} in {name} must be >= 1")
    unknown = [k for k in ds if k not in keys_deepspeed_reads(ds, name)]
    if unknown:
        import deepspeed  # heavy: see check_ds_keys

        raise ConfigError(f"ds_config.{unknown[0]}: not a key DeepSpeed {deepspeed.__version__} reads (in {name}; "
                          "a typo? keys of our own start with _)")


def keys_deepspeed_reads(ds: dict, name: str) -> set:
    """The top-level keys DeepSpeedConfig looks up while it parses `ds` (built on a dict
    that notes them, so the list is the installed DeepSpeed's own); ConfigError when
    DeepSpeed refuses `ds` (its asserts, a section's model)."""
    # heavy: see check_ds_keys
    from deepspeed.runtime.config import DeepSpeedConfig
    from pydantic import ValidationError

    read = {"train_batch_size", "sequence_parallel_size"}  # looked up only with a process group up
    # without train_batch_size: DeepSpeed, with no process group, checks it against a world size of 1
    given = _ReadKeys(copy.deepcopy({k: v for k, v in ds.items() if k != "train_batch_size"}), read)
    try:
        DeepSpeedConfig(given)
    except ValidationError as err:
        raise ConfigError(_pydantic_problem(err, None, name)) from None
    except Exception as err:  # noqa: BLE001 -- DeepSpeed's asserts, ValueError, DeepSpeedConfigError
        raise ConfigError(f"ds_config: {name}: DeepSpeed rejects it ({one_line(err)})") from None
    return read


_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false"}


def _is_a(value: Any, kind: type) -> bool:
    """JSON's types: true is not an integer, 2 is a number."""
    if kind is bool:
        return isinstance(value, bool)
    return isinstance(value, (int, float) if kind is float else kind) and not isinstance(value, bool)


def _pydantic_problem(err, section: str | None, name: str) -> str:
    """The first error of a DeepSpeed config model as one line: under `section`'s key when
    the model is that section's, else naming the model (DeepSpeedFP16Config: loss_scale)."""
    first = err.errors()[0]
    loc = ".".join(str(part) for part in first["loc"])
    problem = f"{first['msg']}, got {first.get('input')!r}"
    if section is None:
        return f"ds_config: {name}: DeepSpeed rejects it ({err.title}: {loc + ': ' if loc else ''}{problem})"
    return f"{section}.{loc}: {problem} in {name}" if loc else f"{section}: {problem} in {name}"


def zero_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


__all__ = ["RunConfig", "OptimConfig", "TimeoutConfig", "ParallelConfig", "data_world", "load_run_config", "keep_global_batch", "resolve_ds_config",
           "check_data", "check_shards", "check_tokenizer_file", "check_writable_dir", "check_writable_file",
           "check_ds_keys", "keys_deepspeed_reads", "one_line", "check_precision", "ds_config_accelerator",
           "repo_path", "zero_stage", "ConfigError"]
