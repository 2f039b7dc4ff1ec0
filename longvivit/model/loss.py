"""Symmetric InfoNCE (CLIP/ALIGN) and the pairwise sigmoid loss (SigLIP) over video and text
embeddings, and the cross-rank gather.

This is the only file in model/ that touches torch.distributed (train/ and data/ reach it
only through longvivit/distributed/collectives.py). Without an initialised process group the loss is plain
in-batch InfoNCE. With W ranks of B samples each (equal B on every rank), embeddings are
gathered with gradient:

  gather_with_grad  every rank computes the full (W*B, W*B) logits and the full-batch loss.
  local_loss        every rank computes its own B rows against all W*B columns, with
                    labels offset by rank * B; the ranks' losses average to the full one
                    and the (W*B)^2 matrix is never built on one rank.

In both modes the gather's backward sums the gradient over ranks, so after the usual data
parallel averaging of parameter gradients (DDP, DeepSpeed) every parameter gets exactly
the gradient of one process on the concatenated batch.

SigLipLoss scores every video-text pair on its own (a binary problem: the pair matches or
not), so it always works like local_loss: each rank's B videos against all W*B texts, the
ranks' mean being the loss of one process on the concatenated batch. Gathering the texts
costs one (W*B, E) all_gather; open_clip's neighbour exchange trades it for W - 1
point-to-point steps, which matters only when W*B*E embeddings do not fit beside the model.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from longvivit.distributed import sequence

MODES = ("gather_with_grad", "local_loss")
LOSSES = ("infonce", "siglip")


def world() -> tuple[int, int]:
    """(rank, size) of the group the loss gathers over: the default process group, or under
    sequence parallelism this rank's data group (longvivit/distributed/sequence.py: the N
    ranks of a sequence group hold the same embeddings, gathered once per data group);
    (0, 1) without a process group."""
    return sequence.data_rank_world()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward hands each rank the gradient of its own slice
    summed over all ranks (every rank's loss depends on every rank's embeddings). Written
    out rather than torch.distributed.nn.all_gather so it needs only all_gather and
    all_reduce, which every backend (gloo included) has."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, size = world()
        ctx.rank, ctx.size, ctx.group = rank, size, sequence.data_group()
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous(), group=ctx.group)
        return torch.cat(parts)  # (W*B, E)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad.chunk(ctx.size)[ctx.rank]  # (B, E)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, E) on each rank -> (W*B, E), rank-major, differentiable. Runs whenever a process
    group exists, at world size 1 too (a one-GPU run then exercises the NCCL path); the
    tensors stay on x's device, which is the one the backend takes (the model's)."""
    return _GatherWithGrad.apply(x) if dist.is_available() and dist.is_initialized() else x


class ContrastiveLoss(nn.Module):
    def __init__(self, mode: str = "gather_with_grad"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"gather mode {mode!r} is not one of {', '.join(MODES)}")
        self.mode = mode

    def forward(self, video: torch.Tensor, text: torch.Tensor, scale: torch.Tensor):
        """video, text (B, E) L2-normalised; scale: the logit multiplier exp(logit_scale).
        Returns (loss, logits of the local videos against all texts (B, W*B), labels (B,))."""
        rank, size = world()
        B = video.shape[0]
        all_video, all_text = gather_with_grad(video), gather_with_grad(text)  # (W*B, E)
        if self.mode == "local_loss" or size == 1:
            per_video = scale * video @ all_text.t()  # (B, W*B)
            per_text = scale * text @ all_video.t()  # (B, W*B)
            labels = torch.arange(B, device=video.device) + rank * B
            loss = (F.cross_entropy(per_video, labels) + F.cross_entropy(per_text, labels)) / 2
            return loss, per_video, labels
        logits = scale * all_video @ all_text.t()  # (W*B, W*B)
        labels = torch.arange(size * B, device=video.device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        local = slice(rank * B, (rank + 1) * B)
        return loss, logits[local], labels[local]


class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss (Zhai et al. 2023, open_clip's SigLipLoss): for logits
    z = scale * v.t + bias, -sum(log sigmoid(+z)) over matching pairs and
    -sum(log sigmoid(-z)) over all others, divided by the number of videos."""

    def forward(self, video: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor):
        """video, text (B, E) L2-normalised; scale exp(logit_scale); bias the learnable
        logit bias. Returns (loss, logits of the local videos against all texts (B, W*B),
        labels (B,)) like ContrastiveLoss."""
        rank, _ = world()
        B = video.shape[0]
        logits = scale * video @ gather_with_grad(text).t() + bias  # (B, W*B)
        labels = torch.arange(B, device=video.device) + rank * B
        signs = torch.full_like(logits, -1.0)
        signs[torch.arange(B, device=video.device), labels] = 1.0
        return -F.logsigmoid(signs * logits).sum() / B, logits, labels
