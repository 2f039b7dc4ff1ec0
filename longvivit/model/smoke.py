"""One masked forward/backward of a preset's model on random input: does it build, run and
give finite gradients (`longvivit smoke`, longvivit/cli/smoke.py)."""
from __future__ import annotations

import time

import torch

from longvivit.model.dual import build_model
from longvivit.model.presets import model_config


def smoke(preset: str = "tiny", batch: int = 2, mask_ratio: float = 0.75, seed: int = 0) -> dict:
    """{"loss", "params", "seconds", "preset", "mask_ratio", "grads_finite"} of one training
    forward and backward of `preset` at `mask_ratio` on `batch` random clips."""
    torch.manual_seed(seed)
    cfg = model_config(preset, [f"video.mask_ratio={mask_ratio}"])
    model = build_model(cfg).train()
    v, x = cfg.video, cfg.text
    video = torch.randint(0, 256, (batch, v.frames, v.image_size, v.image_size, 3), dtype=torch.uint8)
    ids = torch.randint(1, x.vocab_size, (batch, x.context_length))
    mask = torch.ones_like(ids, dtype=torch.bool)

    start = time.perf_counter()
    loss, metrics = model(video, ids, mask)
    loss.backward()
    seconds = time.perf_counter() - start
    grads_ok = all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    return {"loss": round(loss.item(), 6), "params": model.num_params(), "seconds": round(seconds, 3),
            "preset": preset, "mask_ratio": mask_ratio, "grads_finite": bool(grads_ok)}
