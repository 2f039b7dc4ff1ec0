"""Peers benchmark: our video encoder against Hugging Face transformers' VideoMAE and ViViT
encoders of the same size, at the same frames and tokens, side by side.

    .venv/bin/python bench/peers.py [--frames 16 64] [--ratios 0 0.75] [--rounds 3] \
        [--max-tokens 1568] [--threads 1] [--profile]

All three are ViT-B-sized (hidden 768, 12 layers, 12 heads, MLP 3072, exact GELU, no
dropout), 224 px, tubelet (2, 16, 16), built from configs with random weights, in fp32,
with torch's scaled_dot_product_attention (`attn_implementation="sdpa"` for the HF models,
the same kernel ours calls). Each step: encoder forward on a float video, mean over the
output tokens (ours pools inside), a scalar loss, backward, fused AdamW step (common.py).

  ours      longvivit VideoEncoder: masked tubelets are dropped before the tubelet
            embedding (only kept pixels are embedded and saved)
  videomae  transformers.VideoMAEModel with bool_masked_pos: embeds every tubelet, then
            drops the masked tokens before the encoder (the same sequence length as ours)
  vivit     transformers.VivitModel (CLS token, no pooler): has no masking, so it runs at
            mask ratio 0 only

A cell runs if its visible token count is at most --max-tokens (a 6,272-token ViT-B step
takes minutes on a CPU core). Prints one JSON object: per (frames, ratio, model) the
median step time, saved-for-backward bytes, and ours relative to each peer: the ratio of
the medians, and the median of the per-round ratios (each round runs every cell once,
back to back, so the pairs share the machine's state; on a shared 2-core box single
steps vary by +-8%, more than the models differ).
"""
from __future__ import annotations

import argparse
import sys

import torch

from longvivit.model import build_model, model_config
from longvivit.model.masking import sample_visible, visible_count

import common

SIZE, TUBELET, PATCH = 224, 2, 16
HF_COMMON = dict(image_size=SIZE, num_channels=3, hidden_size=768, num_hidden_layers=12,
                 num_attention_heads=12, intermediate_size=3072, hidden_act="gelu",
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, qkv_bias=True)


def grid(frames: int) -> tuple[int, int]:
    return frames // TUBELET, (SIZE // PATCH) ** 2


def ours(frames: int):
    cfg = model_config("B", [f"video.frames={frames}", f"video.image_size={SIZE}"])
    encoder = build_model(cfg).video.train()
    # video (B, T, H, W, C) float, already normalised
    return encoder, lambda video, ratio, masked: encoder(video, ratio)


def videomae(frames: int):
    from transformers import VideoMAEConfig, VideoMAEModel

    cfg = VideoMAEConfig(**HF_COMMON, patch_size=PATCH, num_frames=frames, tubelet_size=TUBELET,
                         use_mean_pooling=True, attn_implementation="sdpa")
    model = VideoMAEModel(cfg).train()

    def forward(video, ratio, masked):
        pixels = video.permute(0, 1, 4, 2, 3)  # (B, T, C, H, W), HF's layout
        out = model(pixel_values=pixels, bool_masked_pos=masked if ratio > 0 else None)
        return out.last_hidden_state.mean(1)
    return model, forward


def vivit(frames: int):
    from transformers import VivitConfig, VivitModel

    cfg = VivitConfig(**HF_COMMON, num_frames=frames, tubelet_size=[TUBELET, PATCH, PATCH],
                      attn_implementation="sdpa")
    model = VivitModel(cfg, add_pooling_layer=False).train()

    def forward(video, ratio, masked):
        assert ratio == 0, "ViViT has no token masking"
        return model(pixel_values=video.permute(0, 1, 4, 2, 3)).last_hidden_state.mean(1)
    return model, forward


PEERS = {"ours": ours, "videomae": videomae, "vivit": vivit}
MASKABLE = {"ours", "videomae"}


def visible(frames: int, ratio: float) -> int:
    return visible_count(*grid(frames), ratio)


def bool_mask(frames: int, ratio: float, batch: int) -> torch.Tensor | None:
    """(B, N) True = masked, the same count per sample as our random masking keeps."""
    slices, spatial = grid(frames)
    keep = sample_visible(batch, slices, spatial, ratio, generator=torch.Generator().manual_seed(0))
    if keep is None:
        return None
    masked = torch.ones(batch, slices * spatial, dtype=torch.bool)
    return masked.scatter(1, keep, False)


def cells_for(frames_list, ratios, max_tokens: int) -> list[tuple[int, float, str]]:
    out = []
    for frames in frames_list:
        for ratio in ratios:
            if visible(frames, ratio) > max_tokens:
                continue
            out += [(frames, ratio, name) for name in PEERS if ratio == 0 or name in MASKABLE]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", nargs="+", type=int, default=[16, 64])
    p.add_argument("--ratios", nargs="+", type=float, default=[0.0, 0.75])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=1568)
    p.add_argument("--profile", action="store_true",
                   help="also profile one step per cell: the ops taking most of its time")
    common.add_threads_arg(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    common.set_threads(args.threads)

    cells, cases, models = [], {}, {}
    for frames, ratio, name in cells_for(args.frames, args.ratios, args.max_tokens):
        torch.manual_seed(0)
        if (name, frames) not in models:
            module, forward = PEERS[name](frames)
            models[(name, frames)] = (module, forward, common.adamw(module.parameters()))
        module, forward, optimizer = models[(name, frames)]
        video = torch.randn(args.batch, frames, SIZE, SIZE, 3)
        masked = bool_mask(frames, ratio, args.batch)
        fwd = (lambda f=forward, v=video, r=ratio, m=masked: f(v, r, m))
        key = f"{name}/{frames}f/{ratio}"
        cases[key] = common.encoder_step(module, optimizer, fwd)
        cells.append({"model": name, "frames": frames, "mask_ratio": ratio, "batch": args.batch,
                      "tokens": visible(frames, ratio),
                      "params": sum(p.numel() for p in module.parameters()),
                      "saved_bytes": common.real_saved_bytes(fwd, module)})
        common.log(f"{key}: {cells[-1]['saved_bytes']} bytes saved for backward")
    samples = common.interleaved(cases, args.rounds)
    for c in cells:
        s = samples[f"{c['model']}/{c['frames']}f/{c['mask_ratio']}"]
        c["step_s"], c["step_s_samples"] = round(common.median(s), 4), [round(x, 4) for x in s]
    result = {"benchmark": "peers", "precision": "fp32", "attention": "sdpa (all models)",
              "cells": cells, "ours_vs_peers": compare(cells)}
    if args.profile:
        result["profile"] = {key: profile(step) for key, step in cases.items()}
    common.emit(result)
    return 0


def profile(step, top: int = 8) -> dict:
    """One step under torch.profiler: its time and the ops with the most self time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    return {"total_s": round(total / 1e6, 3),
            "top_ops": [[e.key, round(e.self_cpu_time_total / total, 4)] for e in ops[:top]]}


def compare(cells: list[dict]) -> list[dict]:
    """Our step time and saved bytes over each peer's at the same frames and ratio."""
    by = {(c["model"], c["frames"], c["mask_ratio"]): c for c in cells}
    out = []
    for (name, frames, ratio), peer in by.items():
        mine = by.get(("ours", frames, ratio))
        if name == "ours" or mine is None:
            continue
        # Per round: both steps ran back to back, so a slow spell of the machine hits both.
        per_round = [a / b for a, b in zip(mine["step_s_samples"], peer["step_s_samples"])]
        out.append({"peer": name, "frames": frames, "mask_ratio": ratio,
                    "time_ratio": round(mine["step_s"] / peer["step_s"], 4),
                    "time_ratio_paired": round(common.median(per_round), 4),
                    "time_ratio_per_round": [round(r, 4) for r in per_round],
                    "rounds_ours_faster": sum(r < 1 for r in per_round),
                    "bytes_ratio": round(mine["saved_bytes"] / peer["saved_bytes"], 4)})
    return out


if __name__ == "__main__":
    sys.exit(main())
