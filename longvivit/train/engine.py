"""The DeepSpeed engine around the model: optimizer groups, schedule, initialize.

The engine wraps one nn.Module, the DualEncoder, whose forward returns the contrastive
loss (the loss owns the cross-rank gather). ZeRO stage, offload and precision come from the
ds_config dict (see config.resolve_ds_config); nothing here branches on them.
"""
from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from longvivit.train.compile import compile_blocks

if TYPE_CHECKING:
    from longvivit.train.config import RunConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed, and the names the model lists in no_weight_decay() (the
    model owns that rule). Frozen parameters (trainable_last_k) are left out."""
    skip = model.no_weight_decay()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup from 1/warmup to 1, then cosine down to min_ratio at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, cfg: RunConfig) -> tuple[torch.optim.Optimizer, object]:
    o = cfg.optim
    # fused: one kernel for all tensors (CPU and CUDA); the per-tensor loop measured 4-10x
    # slower on CPU for the B preset (bench/RESULTS.md, MFU section). Under ZeRO-Offload it
    # steps the fp32 partitions on the CPU: train steps measured as fast as with DeepSpeedCPUAdam
    # (offload section); the offload ds_configs let it in ("zero_force_ds_cpu_optimizer": false).
    optimizer = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr,
                                  betas=tuple(o.betas), eps=o.eps, fused=True)
    schedule = functools.partial(warmup_cosine, warmup=o.warmup_steps, total=cfg.steps,
                                 min_ratio=o.min_lr_ratio)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def build_engine(model: nn.Module, cfg: RunConfig, ds_config: dict):
    """deepspeed.initialize on (model, AdamW, warmup-cosine); DeepSpeed steps the schedule
    once per optimizer step (after gradient accumulation). model.compile: the blocks are
    compiled first (compile.py: before initialize, which reads their ZeRO-3 leaf flag)."""
    import deepspeed  # slow to import and logs on import: only when an engine is built

    if cfg.model.compile:
        compile_blocks(model)
    optimizer, scheduler = build_optimizer(model, cfg)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config, dist_init_required=False)
    return engine


def apply_schedule(engine) -> None:
    """Set the optimizer's rate to this run's schedule at the step the engine is at. A loaded
    checkpoint restores the rate its own run's schedule last set, so a resume with another
    `steps` (another cosine) would run its first step at the old schedule's rate."""
    sched = engine.lr_scheduler
    for group, base, lam in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * lam(sched.last_epoch)


def partitioned_numel(module: nn.Module) -> tuple[int, int]:
    """(parameters this rank holds, parameters of the whole model) of an engine's module (or
    a model deepspeed.zero.Init built) under any ZeRO stage."""
    local = total = 0
    for p in module.parameters():
        if hasattr(p, "ds_tensor"):  # ZeRO-3: the partition lives in ds_tensor
            local += p.ds_tensor.numel()
            total += p.ds_numel
        else:
            local += p.numel()
            total += p.numel()
    return local, total


def base_optimizer(engine) -> torch.optim.Optimizer:
    """The torch optimizer an engine steps (ZeRO's and the bf16 optimizers wrap it as .optimizer)."""
    opt = engine.optimizer
    while not isinstance(opt, torch.optim.Optimizer) and hasattr(opt, "optimizer"):
        opt = opt.optimizer
    return opt


def _state_home(flags: dict, param: torch.Tensor, key: str, value: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    """Where a state tensor must live for the optimizer's kernel: with its parameter; a
    'step' too under fused or capturable (as a float32 scalar), where torch's own
    load_state_dict puts it. (A plain optimizer's 'step' may stay where it is.)"""
    if key == "step" and not (flags.get("fused") or flags.get("capturable")):
        return value.device, value.dtype
    return param.device, (torch.float32 if key == "step" else value.dtype)


def _state_tensors(optimizer: torch.optim.Optimizer):
    """(name, its state dict, key, parameter, where it belongs) of every state tensor. Over
    optimizer.state, not param_groups: ZeRO-3 lists a group's flat partition in
    param_groups only while it steps it."""
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for i, (param, state) in enumerate(optimizer.state.items()):
        flags = groups.get(id(param), optimizer.defaults)
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                yield f"{i}.{key}", state, key, value, _state_home(flags, param, key, value)


def place_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """Move every state tensor that is not where the kernel reads it (_state_home) there,
    then check that none is left elsewhere. A universal-checkpoint load sets the state
    itself (DeepSpeed's load_hp_checkpoint_state_from_checkpoint_dir_stage3) and leaves
    'step' where torch.load put it, on the CPU, which the fused AdamW kernel on a GPU reads
    without checking. Returns {"tensors": state tensors seen, "moved": [their names]}."""
    seen, moved = 0, []
    for name, state, key, value, (device, dtype) in list(_state_tensors(optimizer)):
        seen += 1
        if value.device != device or value.dtype != dtype:
            state[key] = value.to(device=device, dtype=dtype)
            moved.append(name)
    if wrong := misplaced_optimizer_state(optimizer):
        raise RuntimeError(f"optimizer state off its parameters' devices after loading: {', '.join(wrong[:5])}")
    return {"tensors": seen, "moved": moved}


def misplaced_optimizer_state(optimizer: torch.optim.Optimizer) -> list[str]:
    """"name: device dtype, wants device dtype" of each state tensor not where the kernel
    reads it."""
    return [f"{name}: {value.device} {value.dtype}, wants {device} {dtype}"
            for name, _, _, value, (device, dtype) in _state_tensors(optimizer)
            if value.device != device or value.dtype != dtype]
