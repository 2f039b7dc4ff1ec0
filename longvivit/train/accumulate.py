"""Gradient accumulation that grows the contrastive batch (open_clip's --accum-freq).

    grad_accum: k          micro-batches of m samples per optimizer step
    grad_accum_loss: whole_batch

Plain accumulation (`per_micro_batch`) gives each micro-batch its own loss: its m samples
are each other's only negatives, and the step averages k small losses. `whole_batch`
gives the step the loss of one batch of k*m (times the ranks), at the memory of m:

  1. every micro-batch is embedded without gradients (activations freed at once);
  2. each micro-batch is run again with gradients, its embeddings put in place among the
     others' cached ones, and the loss over all k*m is backpropagated. Only its own rows
     carry gradient, so the k backward passes sum to the gradient of the one loss
     (d L / d theta = sum_i dL/df_i * df_i/dtheta); DeepSpeed is told not to divide them
     by k. The temperature (and SigLIP's bias), which every pass sees, takes its gradient
     from the first pass only.

Each micro-batch draws the same masks both times: its generator is made afresh from the
same seed (`generators[i]()`). The cost is one extra forward per micro-batch without
gradients, about a third more compute than plain accumulation.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from longvivit.model.dual import Negatives

Embed = Callable[[dict, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
Forward = Callable[[dict, torch.Generator, Negatives], tuple[torch.Tensor, dict]]


def whole_batch_step(batches: Sequence[dict], generators: Sequence[Callable[[], torch.Generator]],
                     embed: Embed, forward: Forward, backward: Callable[[torch.Tensor], None],
                     step: Callable[[], None]) -> tuple[torch.Tensor, dict]:
    """One optimizer step's micro-batches as one contrastive batch (see the module
    docstring). embed(batch, generator) -> (video, text) normalised float embeddings;
    forward(batch, generator, negatives) -> (loss, metrics) with gradients; backward(loss)
    must not scale by the number of micro-batches. Returns the last pass's loss and metrics
    (every pass computes the same loss value)."""
    with torch.no_grad():
        cached = [embed(batch, make()) for batch, make in zip(batches, generators)]
    videos, texts = torch.cat([v for v, _ in cached]), torch.cat([t for _, t in cached])
    start = 0
    for i, (batch, make) in enumerate(zip(batches, generators)):
        loss, metrics = forward(batch, make(), Negatives(videos, texts, start, temperature_grad=i == 0))
        backward(loss)
        step()
        start += cached[i][0].shape[0]
    return loss, metrics
