"""The run's model with its initial weights, partitioned as it is built under ZeRO-3.

    model = build_model(cfg, resuming, ds_config)   # longvivit/train/trainer.py's setup, then build_engine

ZeRO stage 3 (the resolved ds_config's stage): the model is built inside
deepspeed.zero.Init, which partitions each module's parameters over the ranks as soon as
that module's __init__ returns, in the ds_config's dtype, on this rank's device. No rank
ever holds the whole model: a rank's peak is its share plus the module being built
(bench/zero_init.py measures it against the whole build). The initial weights are the
whole build's for the same seed, bit for bit: each module draws its own parameters in its
own __init__, before zero.Init partitions them, from one CPU generator in fp32 whatever
device and dtype zero.Init gives them (longvivit/model/transformer.py). Stages 0-2 (or no ds_config)
build the whole model on every rank, which is what DeepSpeed keeps there.

Initial weights from a file (init=open_clip:PATH, init=checkpoint:PATH) into a partitioned
model: rank 0 reads the file (an open_clip torch.save file memory-mapped, an export or a
checkpoint whole) and maps it onto the model's names; then, module by module, every rank
gathers that module's own parameters (deepspeed.zero.GatheredParameters, modifier_rank=0),
rank 0 copies its entries in with the module's own _load_from_state_dict (which resizes
position tables), and leaving the context broadcasts rank 0's values and partitions them
again. Not "load before partitioning on rank 0": rank 0 would then build and hold the
whole model, which zero.Init is there to avoid (and every other rank would wait for it);
gathering costs one all-gather and one broadcast per module, once. Only rank 0 reads the
file because the broadcast discards the other ranks' copies; an error in it (a missing
file part, a shape that does not fit) rank 0 tells the others before any rank enters a
collective it would wait in alone.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar

import torch
from torch import nn

from longvivit.distributed import collectives as dist
from longvivit.train.config import zero_stage

if TYPE_CHECKING:
    from longvivit.train.config import RunConfig

T = TypeVar("T")


def build_model(cfg: RunConfig, resuming: bool, ds_config: dict | None = None) -> nn.Module:
    """The model of `cfg` with its initial weights (seed cfg.seed; cfg.init unless
    resuming): partitioned as it is built when `ds_config` is ZeRO stage 3, whole otherwise
    (and without a ds_config)."""
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    if ds_config is not None and zero_stage(ds_config) == 3:
        return build_partitioned(cfg, resuming, ds_config)
    return build_whole(cfg, resuming)


def build_whole(cfg: RunConfig, resuming: bool) -> nn.Module:
    from longvivit.model import build_model as build

    model = build(cfg.model)
    if resuming or not cfg.init:
        return model
    kind, path = cfg.init.split(":", 1)
    if kind == "open_clip":
        from longvivit.model import init_from_open_clip

        init_from_open_clip(model, path)
    else:
        from longvivit.train.export import load_state_dict_any

        model.load_state_dict(load_state_dict_any(path))  # interpolates position tables
    return model


def build_partitioned(cfg: RunConfig, resuming: bool, ds_config: dict) -> nn.Module:
    import deepspeed

    from longvivit.model import build_model as build

    with deepspeed.zero.Init(config_dict_or_path=ds_config):  # its dtype, device, offload
        model = build(cfg.model)
    if not resuming and cfg.init:
        init_partitioned(model, cfg.init)
    return model


def init_partitioned(model: nn.Module, init: str) -> None:
    """init=KIND:PATH into a partitioned model (the module docstring says how), checked as
    init_from_open_clip and a strict load_state_dict check the whole model."""
    kind, path = init.split(":", 1)
    if kind == "open_clip":
        from longvivit.model.init import check_loaded, open_clip_state

        state = on_rank0(lambda: open_clip_state(model, path)[0])
        missing, unexpected = load_partitioned(model, state)
        on_rank0(lambda: check_loaded(model, state, missing, unexpected))
        return
    from longvivit.train.export import load_state_dict_any

    missing, unexpected = load_partitioned(model, on_rank0(lambda: load_state_dict_any(path)))
    if missing or unexpected:
        raise RuntimeError(f"init={init}: parameters not in it: {missing[:6]}; "
                           f"tensors in it with no parameter: {unexpected[:6]}")


def load_partitioned(model: nn.Module, state: dict[str, torch.Tensor] | None) -> tuple[list[str], list[str]]:
    """model.load_state_dict(state, strict=False) for a model zero.Init partitioned, from
    rank 0's `state` (None on the others): each module's own parameters gathered in turn,
    rank 0's entries copied in, broadcast and partitioned again. Returns rank 0's
    (missing, unexpected) keys on every rank; raises on every rank if an entry did not fit."""
    import deepspeed

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


__all__ = ["build_model", "load_partitioned"]
