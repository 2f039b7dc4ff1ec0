"""The trainer's state right after setup (tests/test_train_elastic.py), run under a real launcher:

    DS_ACCELERATOR=cpu deepspeed --num_gpus N --master_port PORT tests/scripts/resumed_state.py \\
        DUMP BATCHES CONFIG [key=value ...]

Builds the Trainer and runs its setup as `longvivit train` does (resume from the newest
checkpoint in `out`, through the universal conversion when it was written by another
number of ranks), then writes to DUMP, from rank 0: every trained parameter's fp32 master
weights and Adam moments gathered whole (under any ZeRO stage), Adam's step counts, the
schedule's state, the step, the optimizer state the resume checked (and any found off its
parameter's device), and the sample indices every rank's loader yields in its next
BATCHES batches (the metrics log records rank 0's only). Nothing is trained or saved.
"""
from __future__ import annotations

import sys

import torch
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

from longvivit.distributed import collectives as dist
from longvivit.train import checkpoint
from longvivit.train.engine import misplaced_optimizer_state
from longvivit.train.trainer import Trainer


def params(engine) -> dict:
    out = {}
    for name, p in engine.module.named_parameters():
        if p.requires_grad:  # every rank takes part: under ZeRO-3 these gather
            out[name] = {"fp32": safe_get_full_fp32_param(p),
                         "exp_avg": safe_get_full_optimizer_state(p, "exp_avg"),
                         "exp_avg_sq": safe_get_full_optimizer_state(p, "exp_avg_sq")}
    return out


def next_indices(loader, batches: int) -> list[list[int]]:
    """[rank 0's next indices, rank 1's, ...]."""
    it, mine = iter(loader), []
    for _ in range(batches):
        mine += next(it)["index"].tolist()
    return dist.all_gather_object(mine)


def main() -> None:
    dump, batches = sys.argv[1], int(sys.argv[2])
    argv = [a for a in sys.argv[3:] if not a.startswith("--local_rank")]
    with Trainer.from_argv(argv) as r:
        r.setup()
        opt = r.engine.optimizer.optimizer
        # a fresh engine has no Adam moments yet
        state = {"params": params(r.engine) if r.tag is not None else {}, "step": r.state.step,
                 "adam_steps": sorted({float(s["step"]) for s in opt.state.values() if "step" in s}),
                 "scheduler": {k: v for k, v in r.engine.lr_scheduler.state_dict().items() if k != "lr_lambdas"},
                 "universal_left": sorted(p.name for p in checkpoint.ckpt_root(r.cfg.out).glob("*universal-*")),
                 "placed": r.optimizer_state, "misplaced": misplaced_optimizer_state(opt)}
        state["indices"] = next_indices(r.loader, batches)
        if r.d.is_main:
            torch.save(state, dump)


if __name__ == "__main__":
    main()
