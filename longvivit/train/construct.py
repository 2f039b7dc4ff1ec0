"""The run's model with its initial weights, partitioned as it is built under ZeRO-3.

    model = build_for_run(cfg, resuming, ds_config)   # the trainer's setup, then build_engine

Under ZeRO stage 3 the model is built inside deepspeed.zero.Init, which partitions each
module's parameters as soon as its __init__ returns: no rank ever holds the whole model
(bench/zero_init.py). The initial weights are the whole build's for the same seed, bit for
bit, because each module draws its own in its __init__ from one CPU generator in fp32
(longvivit/model/transformer.py). Stages 0-2 build the whole model on every rank.

Initial weights from a file (init=open_clip:PATH or checkpoint:PATH) go into a partitioned
model one module at a time: rank 0 reads the file, every rank gathers that module's
parameters, rank 0 copies its entries in (the module's own _load_from_state_dict, which
resizes position tables), and leaving the gather broadcasts and partitions them again. Not
"load on rank 0 before partitioning": rank 0 would then hold the whole model, which
zero.Init is there to avoid. An error on rank 0 is told to every rank before any of them
enters a collective it would wait in alone.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar

import torch
from torch import nn

from longvivit.distributed import collectives as dist
from longvivit.model import build_model, init_from_open_clip
from longvivit.model.init import check_loaded, open_clip_state
from longvivit.train.config import zero_stage
from longvivit.train.export import load_state_dict_any

if TYPE_CHECKING:
    from longvivit.train.config import RunConfig

T = TypeVar("T")


def build_for_run(cfg: RunConfig, resuming: bool, ds_config: dict | None = None) -> nn.Module:
    """The model of `cfg` with its initial weights (seed cfg.seed; cfg.init unless
    resuming): partitioned as it is built when `ds_config` is ZeRO stage 3, whole otherwise
    (and without a ds_config)."""
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    if ds_config is not None and zero_stage(ds_config) == 3:
        return build_partitioned(cfg, resuming, ds_config)
    return build_whole(cfg, resuming)


def build_whole(cfg: RunConfig, resuming: bool) -> nn.Module:
    model = build_model(cfg.model)
    if resuming or not cfg.init:
        return model
    kind, path = cfg.init.split(":", 1)
    if kind == "open_clip":
        init_from_open_clip(model, path)
    else:
        model.load_state_dict(load_state_dict_any(path))  # interpolates position tables
    return model


def build_partitioned(cfg: RunConfig, resuming: bool, ds_config: dict) -> nn.Module:
    import deepspeed  # slow to import, and it logs on import: only where ZeRO-3 builds the model

    with deepspeed.zero.Init(config_dict_or_path=ds_config):  # its dtype, device, offload
        model = build_model(cfg.model)
    if not resuming and cfg.init:
        init_partitioned(model, cfg.init)
    return model


def init_partitioned(model: nn.Module, init: str) -> None:
    """init=KIND:PATH into a partitioned model (the module docstring says how), checked as
    init_from_open_clip and a strict load_state_dict check the whole model."""
    kind, path = init.split(":", 1)
    if kind == "open_clip":
        state = on_rank0(lambda: open_clip_state(model, path)[0])
        missing, unexpected = load_partitioned(model, state)
        on_rank0(lambda: check_loaded(model, state, missing, unexpected))
        return
    missing, unexpected = load_partitioned(model, on_rank0(lambda: load_state_dict_any(path)))
    if missing or unexpected:
        raise RuntimeError(f"init={init}: parameters not in it: {missing[:6]}; "
                           f"tensors in it with no parameter: {unexpected[:6]}")


def load_partitioned(model: nn.Module, state: dict[str, torch.Tensor] | None) -> tuple[list[str], list[str]]:
    """model.load_state_dict(state, strict=False) for a model zero.Init partitioned, from
    rank 0's `state` (None on the others): each module's own parameters gathered in turn,
    rank 0's entries copied in, broadcast and partitioned again. Returns rank 0's
    (missing, unexpected) keys on every rank; raises on every rank if an entry did not fit."""
    import deepspeed  # slow to import, and it logs on import: only where ZeRO-3 builds the model

    missing: list[str] = []
    unexpected: list[str] = []
    errors: list[str] = []

    def load(module: nn.Module, prefix: str) -> None:
        with deepspeed.zero.GatheredParameters(list(module.parameters(recurse=False)), modifier_rank=0):
            if state is not None:
                try:  # every rank goes on gathering in step whatever this entry does
                    module._load_from_state_dict(state, prefix, {}, True, missing, unexpected, errors)
                except Exception as err:  # noqa: BLE001 -- reported on every rank below
                    errors.append(f"{prefix or 'model'}: {type(err).__name__}: {err}")
        for name, child in module.named_children():
            load(child, f"{prefix}{name}.")

    with torch.no_grad():
        load(model, "")
    missing, unexpected, errors = dist.broadcast_object((missing, unexpected, errors))
    if errors:
        raise RuntimeError("loading the initial weights: " + "; ".join(errors))
    return missing, unexpected


def on_rank0(fn: Callable[[], T]) -> T | None:
    """fn()'s result on rank 0, None on the others. An exception it raises there is raised
    on every rank (as a RuntimeError naming it), so that none goes on into a collective."""
    result, error = None, None
    if dist.read_env().is_main:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 -- re-raised below, on every rank
            error = err
    reason = dist.broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if reason is not None:
        raise RuntimeError(f"on rank 0: {reason}")
    return result


__all__ = ["build_for_run", "load_partitioned"]
