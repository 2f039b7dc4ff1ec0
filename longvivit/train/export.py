"""A checkpoint as one safetensors file + config + tokenizer, and the way back to a model.

`export` (the command: `longvivit export CHECKPOINT --out DIR`, longvivit/cli/export.py)
consolidates the ZeRO shards of a checkpoint with DeepSpeed's own zero_to_fp32 utilities
into fp32 weights, and writes

    DIR/model.safetensors   the full state dict (fp32)
    DIR/config.yaml         the ModelConfig: all that build_model needs
    DIR/run_config.yaml     the resolved run config the weights were trained with
    DIR/tokenizer.model     a copy of the sentencepiece model
    DIR/preprocess.json     how the run's clips were made (shard FPS and short side, frames,
                            sampling, size): what longvivit.load preprocesses raw videos with

`load_exported(DIR)` rebuilds the DualEncoder from that directory in plain PyTorch (no
DeepSpeed, no process group). `check_export_args` checks every input before anything is
written, and the files are written into a folder beside DIR and moved into it at the end,
so a failed export leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from longvivit.config import ConfigError, load_config
from longvivit.data.config import DataConfig
from longvivit.data.preprocessing import PREPROCESS_FILE, config_for, write_preprocess_json
from longvivit.model import build_model
from longvivit.model.config import ModelConfig
from longvivit.model.video import PositionEmbedding
from longvivit.train import checkpoint
from longvivit.train.config import RunConfig, check_writable_dir, one_line

WEIGHTS = "model.safetensors"


def is_export(path: str | Path) -> bool:
    return (Path(path) / WEIGHTS).is_file()


def consolidated_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """fp32 weights of a (possibly ZeRO-partitioned) DeepSpeed checkpoint tag. Trained
    parameters come from the fp32 master copy; frozen ones (trainable_last_k) have none and
    are stored in the engine's dtype (bf16 in a bf16 run), so they are cast up here."""
    # deepspeed is slow to import and logs on import: only when a checkpoint is read
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    sd = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def weights_source(path: str | Path) -> Path:
    """What load_state_dict_any(path) reads: an export's weights file (its header read,
    so a file that is not safetensors fails here) or a complete checkpoint tag. Raises
    FileNotFoundError when `path` is neither."""
    if is_export(path):
        weights = Path(path) / WEIGHTS
        with safe_open(str(weights), framework="pt") as f:
            f.keys()
        return weights
    return checkpoint.find_checkpoint(path)


def load_state_dict_any(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from an export directory or from any checkpoint location (see find_checkpoint)."""
    source = weights_source(path)
    if source.name == WEIGHTS:
        return load_file(str(source))
    return consolidated_state_dict(source)


@contextlib.contextmanager
def written_aside(out: Path, suffix: str) -> Iterator[Path]:
    """A fresh folder to write `out`'s files into, in the nearest folder of `out` that exists
    (its filesystem: a rename away); they move into `out` (made if needed, files of the
    same names replaced) when the block ends without an error. A failure leaves neither a
    partial file nor an empty `out` behind."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    work = existing / f".{out.name}{suffix}{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        yield work
        out.mkdir(parents=True, exist_ok=True)
        for file in work.iterdir():
            os.replace(file, out / file.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def export(ckpt: str | Path, out: str | Path) -> Path:
    """Write the export of checkpoint `ckpt` into `out` (made if needed; files already in it
    with the same names are replaced). Returns `out`."""
    tag = checkpoint.find_checkpoint(ckpt)
    run_cfg = checkpoint.stored_config(tag)
    out = Path(out)
    with written_aside(out, ".tmp") as work:
        save_file(consolidated_state_dict(tag), str(work / WEIGHTS), metadata={"checkpoint": str(tag)})
        (work / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(run_cfg["model"])))
        (work / "run_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(run_cfg)))
        write_preprocess_json(config_for(load_config(DataConfig, run_cfg["data"])), work / PREPROCESS_FILE)
        tokenizer = Path(run_cfg["data"]["tokenizer"])
        if tokenizer.is_file():
            shutil.copy2(tokenizer, work / "tokenizer.model")
    return out


# ---------------------------------------------------------------------------- validation

def checked_source(path: str | Path, key: str) -> Path:
    """weights_source(path), or one ConfigError naming `key` for what loading it would
    fail on: no export or complete checkpoint there (and why), an export whose weights file
    is not whole safetensors, a tag with a missing or truncated shard (checkpoint.check_files)."""
    if is_export(path):
        weights = Path(path) / WEIGHTS
        try:
            with safe_open(str(weights), framework="pt") as f:
                f.keys()
        except Exception as err:  # noqa: BLE001 -- SafetensorError, OSError
            raise ConfigError(f"{key}: {weights}: not a whole safetensors file ({one_line(err)})") from None
        return weights
    try:
        tag = checkpoint.find_checkpoint(path)
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path}: {checkpoint.no_checkpoint_reason(path)}") from None
    checkpoint.check_files(tag, key, parts=False)
    return tag


def saved_shapes(source: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor `source` (checked_source's) holds, by name, from headers only."""
    if source.name != WEIGHTS:
        return checkpoint.param_shapes(source)
    with safe_open(str(source), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def check_fits(source: Path, model_cfg: ModelConfig, key: str) -> None:
    """The weights of `source` load into the model `model_cfg` builds (built on the meta
    device: no memory): the same parameters, each of the same shape, except the video
    position tables, which loading interpolates. ConfigError naming the first difference."""
    with torch.device("meta"):
        model = build_model(model_cfg)
    here = {name: tuple(p.shape) for name, p in model.named_parameters()}
    resized = {f"{m}.{n}" for m, mod in model.named_modules() if isinstance(mod, PositionEmbedding)
               for n, _ in mod.named_parameters(recurse=False)}
    buffers = {name for name, _ in model.named_buffers()}
    there = {k: v for k, v in saved_shapes(source).items() if k not in buffers}
    for name, shape in here.items():
        if name in there and name not in resized and there[name] != shape:
            raise ConfigError(f"{key}: {source} does not fit this model: {name} is {list(there[name])} there, "
                              f"{list(shape)} here (another width, patch size or vocabulary?)")
    missing, unexpected = sorted(set(here) - set(there)), sorted(set(there) - set(here))
    if missing or unexpected:
        what = [f"{len(names)} {label} (first {names[0]})" for names, label in
                ((missing, "parameters of this model not in it"), (unexpected, "tensors in it that this model lacks"))
                if names]
        raise ConfigError(f"{key}: {source} does not fit this model: {'; '.join(what)} "
                          "(another depth or architecture?)")


def check_export_args(ckpt: str, out: str) -> Path:
    """The tag `export` would read, after checking everything it reads and where it writes."""
    source = checked_source(ckpt, "checkpoint")
    if source.name == WEIGHTS:
        raise ConfigError(f"checkpoint: {ckpt}: is already an export ({WEIGHTS}); give a run, checkpoints or "
                          "tag directory")
    try:
        run_cfg = checkpoint.stored_config(source)
        model_cfg = load_config(ModelConfig, run_cfg["model"])
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"checkpoint: {source / checkpoint.CONFIG_FILE}: no usable model config in it "
                          f"({one_line(err)})") from None
    check_fits(source, model_cfg, "checkpoint")
    check_writable_dir("--out", out)
    return source


def load_exported(path: str | Path, device: str | torch.device = "cpu"):
    """The DualEncoder of an export directory, in eval mode (plain PyTorch)."""
    path = Path(path)
    model = build_model(load_config(ModelConfig, path / "config.yaml"))
    model.load_state_dict(load_file(str(path / WEIGHTS), device=str(device)))
    return model.to(device).eval()


def load_any(path: str | Path):
    """(model in eval mode, RunConfig) from an export directory or a checkpoint."""
    if is_export(path):
        run = load_config(RunConfig, Path(path) / "run_config.yaml")
        tok = Path(path) / "tokenizer.model"
        if tok.is_file():
            run.data.tokenizer = str(tok)
        return load_exported(path), run
    tag = checkpoint.find_checkpoint(path)
    run = load_config(RunConfig, tag / checkpoint.CONFIG_FILE)
    model = build_model(run.model)
    model.load_state_dict(consolidated_state_dict(tag))
    return model.eval(), run
