"""What the gloo tests of losses and accumulation share (tests/test_model_loss.py,
tests/test_accumulate.py)."""
import torch
import torch.distributed as dist

# model overrides per loss: InfoNCE in both gather modes, and SigLIP at its paper's start
LOSSES = {"gather_with_grad": ["gather=gather_with_grad"], "local_loss": ["gather=local_loss"],
          "siglip": ["loss=siglip", "init_logit_scale=2.302585", "init_logit_bias=-2"]}


def data_parallel(loss: torch.Tensor, grads: dict, world: int) -> tuple[torch.Tensor, dict]:
    """Every rank's loss, (world,), and `grads` averaged over the ranks in place, as DDP and
    DeepSpeed do with data-parallel gradients."""
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss)
    for g in grads.values():
        dist.all_reduce(g)
        g /= world
    return torch.stack(losses), grads
