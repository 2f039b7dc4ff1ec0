"""`longvivit export CHECKPOINT --out DIR`: one safetensors file + config + tokenizer.

Consolidates the ZeRO shards of a checkpoint with DeepSpeed's own zero_to_fp32 utilities
into fp32 weights, and writes

    DIR/model.safetensors   the full state dict (fp32)
    DIR/config.yaml         the ModelConfig: all that build_model needs
    DIR/run_config.yaml     the resolved run config the weights were trained with
    DIR/tokenizer.model     a copy of the sentencepiece model

`load_exported(DIR)` rebuilds the DualEncoder from that directory in plain PyTorch (no
DeepSpeed, no process group).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from longvivit.config import load_config
from longvivit.model.config import ModelConfig


from . import checkpoint

WEIGHTS = "model.safetensors"


def is_export(path: str | Path) -> bool:
    return (Path(path) / WEIGHTS).is_file()


def consolidated_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """fp32 weights of a (possibly ZeRO-partitioned) DeepSpeed checkpoint tag. Trained
    parameters come from the fp32 master copy; frozen ones (trainable_last_k) have none and
    are stored in the engine's dtype (bf16 in a bf16 run), so they are cast up here."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    sd = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def weights_source(path: str | Path) -> Path:
    """What load_state_dict_any(path) reads: an export's weights file (its header read,
    so a file that is not safetensors fails here) or a complete checkpoint tag. Raises
    FileNotFoundError when `path` is neither."""
    if is_export(path):
        from safetensors import safe_open

        weights = Path(path) / WEIGHTS
        with safe_open(str(weights), framework="pt") as f:
            f.keys()
        return weights
    return checkpoint.find_checkpoint(path)


def load_state_dict_any(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from an export directory or from any checkpoint location (see find_checkpoint)."""
    source = weights_source(path)
    if source.name == WEIGHTS:
        from safetensors.torch import load_file

        return load_file(str(source))
    return consolidated_state_dict(source)


def export(ckpt: str | Path, out: str | Path) -> Path:
    tag = checkpoint.find_checkpoint(ckpt)
    run_cfg = checkpoint.stored_config(tag)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file(consolidated_state_dict(tag), str(out / WEIGHTS), metadata={"checkpoint": str(tag)})
    (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(run_cfg["model"])))
    (out / "run_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(run_cfg)))
    tokenizer = Path(run_cfg["data"]["tokenizer"])
    if tokenizer.is_file():
        shutil.copy2(tokenizer, out / "tokenizer.model")
    return out


def load_exported(path: str | Path, device: str | torch.device = "cpu"):
    """The DualEncoder of an export directory, in eval mode. (Plain PyTorch; could live in
    longvivit.model next to build_model.)"""
    from safetensors.torch import load_file

    from longvivit.model import build_model

    path = Path(path)
    model = build_model(load_config(ModelConfig, path / "config.yaml"))
    model.load_state_dict(load_file(str(path / WEIGHTS), device=str(device)))
    return model.to(device).eval()


def load_any(path: str | Path):
    """(model in eval mode, RunConfig) from an export directory or a checkpoint."""
    from longvivit.model import build_model

    from .config import RunConfig

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="longvivit export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="run dir, checkpoints dir or tag dir (newest complete)")
    p.add_argument("--out", required=True, help="directory to write")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    out = export(args.checkpoint, args.out)
    print(json.dumps({"out": str(out), "weights": str(out / WEIGHTS), "config": str(out / "config.yaml")}))
    return 0
