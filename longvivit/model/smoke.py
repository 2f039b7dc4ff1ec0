"""`longvivit smoke`: build a model, run one masked forward/backward on random input,
print one JSON line {"loss", "params", "seconds", ...}.

    longvivit smoke [--preset tiny] [--batch 2] [--mask-ratio 0.75] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

from longvivit.model.dual import build_model
from longvivit.model.presets import model_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="longvivit smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    cfg = model_config(args.preset, [f"video.mask_ratio={args.mask_ratio}"])
    model = build_model(cfg).train()
    v, x = cfg.video, cfg.text
    video = torch.randint(0, 256, (args.batch, v.frames, v.image_size, v.image_size, 3), dtype=torch.uint8)
    ids = torch.randint(1, x.vocab_size, (args.batch, x.context_length))
    mask = torch.ones_like(ids, dtype=torch.bool)

    start = time.perf_counter()
    loss, metrics = model(video, ids, mask)
    loss.backward()
    seconds = time.perf_counter() - start
    grads_ok = all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    print(json.dumps({"loss": round(loss.item(), 6), "params": model.num_params(),
                      "seconds": round(seconds, 3), "preset": args.preset,
                      "mask_ratio": args.mask_ratio, "grads_finite": bool(grads_ok)}))
    return 0 if math.isfinite(loss.item()) and grads_ok else 1
