"""Masking benchmark: what dropping tokens buys, frames x mask ratio, side by side.

    .venv/bin/python bench/masking.py [--dims B tiny] [--frames 16 64 256] \
        [--ratios 0 0.5 0.75 0.9] [--rounds 3] [--max-tokens 6272] [--threads 1]

For every (dims, frames, mask ratio) cell: the train step time of the video encoder alone
(forward, a scalar loss of the embedding, backward, fused AdamW step; fp32, micro-batch
--batch) and the bytes it saves for backward. Cells of one dims run interleaved (see
common.py) and report the median over --rounds.

B dims: ViT-B/16 (768 wide, 12 deep, 12 heads) at 224 px, tubelet (2, 16, 16): 16 frames
are 1,568 tokens, 64 are 6,272, 256 are 25,088. A cell with more than --max-tokens visible
tokens per clip is not timed (on 2 CPU cores a 25,088-token ViT-B step takes most of an
hour); its saved bytes are still counted, on FakeTensors (`bytes_source: fake`), as the
planner counts them (tests/test_plan.py checks that count against real runs: within 10%).
tiny dims (128 wide, 4 deep, 32 px, tubelet (2, 8, 8)) run every cell.

Prints one JSON object: per cell tokens, step_s (median), step_s_samples, saved_bytes, and
ratios against the unmasked cell of the same frames.
"""
from __future__ import annotations

import argparse
import sys

import torch

from longvivit.model import build_model, model_config

import common

DIMS = {"B": ("B", 224, 1), "tiny": ("tiny", 32, 8)}  # preset, image size, micro-batch


def cell_config(preset: str, size: int, frames: int):
    return model_config(preset, [f"video.frames={frames}", f"video.image_size={size}"])


def run_dims(name: str, frames_list, ratios, rounds: int, max_tokens: int) -> list[dict]:
    preset, size, batch = DIMS[name]
    cells, cases = [], {}
    for frames in frames_list:
        cfg = cell_config(preset, size, frames)
        torch.manual_seed(0)
        encoder = build_model(cfg).video.train()
        optimizer = common.adamw(encoder.parameters())
        video = torch.randn(batch, frames, size, size, 3)
        # one untimed step of the cheapest cell allocates AdamW's state and warms the threads
        common.encoder_step(encoder, optimizer, lambda: encoder(video, max(ratios)))()
        for ratio in ratios:
            cell = {"dims": name, "frames": frames, "mask_ratio": ratio, "batch": batch,
                    "image_size": size, "tokens": cfg.video.visible_tokens(ratio)}
            forward = (lambda e=encoder, v=video, r=ratio: e(v, r))
            if cell["tokens"] <= max_tokens:
                cell["saved_bytes"] = common.real_saved_bytes(forward, encoder)
                cell["bytes_source"] = "real"
                cases[f"{name}/{frames}f/{ratio}"] = common.encoder_step(encoder, optimizer, forward)
            else:
                cell["saved_bytes"] = common.fake_video_saved_bytes(cfg, batch, ratio)
                cell["bytes_source"] = "fake"
                cell["skipped"] = f"not timed: {cell['tokens']} tokens > --max-tokens {max_tokens}"
            cells.append(cell)
    common.log(f"{name}: timing {len(cases)} cells x {rounds} rounds")
    samples = common.interleaved(cases, rounds, warmup=0)
    for cell in cells:
        key = f"{name}/{cell['frames']}f/{cell['mask_ratio']}"
        if key in samples:
            cell["step_s"] = round(common.median(samples[key]), 4)
            cell["step_s_samples"] = [round(s, 4) for s in samples[key]]
    add_ratios(cells)
    return cells


def add_ratios(cells: list[dict]) -> None:
    """Each cell against the unmasked cell of the same dims and frames."""
    base = {(c["dims"], c["frames"]): c for c in cells if c["mask_ratio"] == 0}
    for c in cells:
        ref = base.get((c["dims"], c["frames"]))
        if ref is None:
            continue
        c["bytes_vs_unmasked"] = round(c["saved_bytes"] / ref["saved_bytes"], 4)
        if "step_s" in c and "step_s" in ref:
            c["time_vs_unmasked"] = round(c["step_s"] / ref["step_s"], 4)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dims", nargs="+", default=["B", "tiny"], choices=sorted(DIMS))
    p.add_argument("--frames", nargs="+", type=int, default=[16, 64, 256])
    p.add_argument("--ratios", nargs="+", type=float, default=[0.0, 0.5, 0.75, 0.9])
    p.add_argument("--rounds", type=int, default=3)
    common.add_threads_arg(p)
    p.add_argument("--max-tokens", type=int, default=6272, help="time cells up to this many visible tokens")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    common.set_threads(args.threads)
    cells = []
    for name in args.dims:
        cells += run_dims(name, args.frames, args.ratios, args.rounds, args.max_tokens)
    common.emit({"benchmark": "masking", "precision": "fp32", "cells": cells})
    return 0


if __name__ == "__main__":
    sys.exit(main())
