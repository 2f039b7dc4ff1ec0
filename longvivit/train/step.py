"""One optimizer step: its micro-batches through the engine (or one contrastive batch over
them: accumulate.py), its masks as a function of (seed, rank, step, micro-batch), and what
makes a step non-finite (a NaN/inf loss or gradient, which DeepSpeed then skips, or an
update that made the weights non-finite, which nothing can undo)."""
from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Iterator

import torch

from longvivit.distributed import sequence
from longvivit.train.accumulate import whole_batch_step

if TYPE_CHECKING:
    from longvivit.train.trainer import Trainer


def mask_generator(trainer: Trainer, micro: int) -> torch.Generator:
    """Masks are a function of (seed, data rank, step, micro-batch): resume replays them
    exactly, and the ranks of a sequence group (parallel.sequence), which share a clip,
    keep the same tokens of it."""
    key = ((trainer.cfg.seed * 1_000_003 + trainer.layout.data_rank) * 1_000_003 + trainer.state.step) * 131 + micro
    return torch.Generator().manual_seed(key % (2**63 - 1))


def train_step(trainer: Trainer, stream: Iterator[dict], mask_ratio: float | None = None) -> dict:
    """One optimizer step over grad_accum micro-batches of one source."""
    if trainer.cfg.grad_accum_loss == "whole_batch":
        return whole_batch_train_step(trainer, stream, mask_ratio)
    engine, losses, indices = trainer.engine, [], []
    lr = engine.get_lr()[0]  # the rate this step uses (DeepSpeed steps the schedule after it)
    for micro in range(trainer.cfg.grad_accum):
        batch = next(stream)
        loss, metrics = engine(batch["video"], batch["text_ids"], batch["text_mask"], mask_ratio=mask_ratio,
                               generator=mask_generator(trainer, micro), real_frames=batch["real_frames"],
                               sequence=sequence.shard())
        loss = trainer.hooks.on_before_backward(trainer, trainer.state.step + 1, micro, loss)
        engine.backward(nan_grads_if_nonfinite(loss))
        engine.step()
        losses.append(loss.detach().float())
        indices.append(batch["index"])
    # tensors, read on the host once per step (log_step), not once per micro-batch
    return {"loss": torch.stack(losses).mean(), "logit_scale": metrics["logit_scale"].detach(),
            "indices": torch.cat(indices).tolist(), "lr": lr, "skipped": not engine.was_step_applied()}


def whole_batch_train_step(trainer: Trainer, stream: Iterator[dict], mask_ratio: float | None = None) -> dict:
    """One optimizer step whose grad_accum micro-batches form one contrastive batch
    (longvivit/train/accumulate.py): their inputs are kept for the second pass."""
    engine = trainer.engine
    lr = engine.get_lr()[0]
    batches = [next(stream) for _ in range(trainer.cfg.grad_accum)]
    generators = [lambda micro=micro: mask_generator(trainer, micro) for micro in range(trainer.cfg.grad_accum)]
    micros = itertools.count()  # whole_batch_step runs forward once per micro-batch, in order

    def embed(b: dict, g: torch.Generator):
        return engine.module.embed(b["video"], b["text_ids"], b["text_mask"], mask_ratio, generator=g,
                                   real_frames=b["real_frames"], sequence=sequence.shard())

    def forward(b: dict, g: torch.Generator, negatives):
        loss, metrics = engine(b["video"], b["text_ids"], b["text_mask"], mask_ratio=mask_ratio, generator=g,
                               real_frames=b["real_frames"], negatives=negatives, sequence=sequence.shard())
        return trainer.hooks.on_before_backward(trainer, trainer.state.step + 1, next(micros), loss), metrics

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


class NonFiniteStop(Exception):
    """Non-finite steps `first`..`last` in a row end the run, with no checkpoint of them."""

    def __init__(self, first: int, last: int, why: str):
        steps = f"step {last}" if first == last else f"steps {first}-{last}"
        count = last - first + 1
        super().__init__(f"{steps}: {count} non-finite step{'s in a row' * (count > 1)} ({why})")
        self.first, self.last = first, last


def nonfinite_since(trainer: Trainer, out: dict, loss: float, since: int) -> int:
    """The first of the non-finite steps in a row that end at this one; 0 if this one is
    finite. Non-finite: the loss (mean over ranks), or the gradient norm (DeepSpeed skipped
    the step; under fp16 that is the loss scaler's overflow, which is not counted). Both are
    reduced over ranks, so every rank returns the same. Raises NonFiniteStop at
    max_nonfinite_steps in a row, or at once if DeepSpeed applied one, or if the update made
    a parameter non-finite on any rank (finite gradients, e.g. optim.lr=inf: nothing
    DeepSpeed checks, and the weights are lost)."""
    step, limit, skipped = trainer.state.step, trainer.cfg.max_nonfinite_steps, out["skipped"]
    if out.get("params_nonfinite"):
        raise NonFiniteStop(since or step, step, "its update made parameters non-finite, which cannot be undone; "
                                                 "is optim.lr too large for the precision?")
    if math.isfinite(loss) and (not skipped or trainer.cfg.precision == "fp16"):
        return 0
    since = since or step
    if not skipped:  # e.g. ZeRO stage 0, whose optimizer has no overflow check: the weights are lost
        raise NonFiniteStop(since, step, "DeepSpeed applied this one: its optimizer does not skip non-finite "
                                         "gradients under this ds_config")
    if limit and step - since + 1 >= limit:
        raise NonFiniteStop(since, step, f"max_nonfinite_steps={limit}; each was skipped")
    return since
