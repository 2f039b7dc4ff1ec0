"""Padded clips: dropping the padding (rows with a key mask, or packed) against encoding it as frames.

    .venv/bin/python bench/padding.py [--frames 64] [--batch 8] [--real 64 16] \
        [--ratio 0.75] [--rounds 5] [--threads 1]

A batch of --batch clips at --frames frames where the clips cycle through the --real
lengths (64 16: half whole, half a quarter long, their last frame repeated as the loader
pads). Cases, timed interleaved (common.py) on the tiny video encoder's train step:

  content   real_frames not passed: padding is encoded and pooled like frames (the old way)
  dropped   real_frames passed: padding tokens dropped before the encoder, rows padded to the
            longest clip with a key mask (longvivit/model/video.py)
  packed    real_frames passed, video.packing=packed: every clip's tokens of content in one
            sequence, attention per clip without a mask (on the CPU one SDPA call per clip;
            the varlen kernel is CUDA's: tests/gpu/test_gpu_packed.py times it there). A
            second encoder with the same initial weights
  whole     every clip whole (the cost of a batch without padding, for scale)

Prints one JSON object: visible tokens per row (the encoder's sequence length; packed: the
longest clip's), tokens the blocks run over in the batch, tokens of content, saved bytes,
step time (median) and ratios against `content`.
"""
from __future__ import annotations

import argparse
import sys

import torch

from longvivit.model import build_model, model_config

import common


def batch(frames: int, size: int, n: int, real: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (n, frames, size, size, 3), dtype=torch.uint8, generator=g)
    lengths = torch.tensor([real[i % len(real)] for i in range(n)])
    for i, r in enumerate(lengths.tolist()):
        video[i, r:] = video[i, r - 1]
    return video, lengths


def build_encoder(frames: int, packing: str):
    """The tiny video encoder in train mode (weights from seed 0) and its config."""
    torch.manual_seed(0)
    cfg = model_config("tiny", [f"video.frames={frames}", f"video.packing={packing}"])
    return build_model(cfg).video.train(), cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--real", nargs="+", type=int, default=[64, 16])
    p.add_argument("--ratio", type=float, default=0.75)
    p.add_argument("--rounds", type=int, default=5)
    common.add_threads_arg(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    common.set_threads(args.threads)
    encoder, cfg = build_encoder(args.frames, "masked")
    packed, _ = build_encoder(args.frames, "packed")  # the same initial weights
    video, real = batch(args.frames, cfg.video.image_size, args.batch, args.real)
    whole = torch.full_like(real, args.frames)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731 -- the same masks every step
    forwards = {"content": (encoder, lambda: encoder(video, args.ratio, "random", gen())),
                "dropped": (encoder, lambda: encoder(video, args.ratio, "random", gen(), real)),
                "packed": (packed, lambda: packed(video, args.ratio, "random", gen(), real)),
                "whole": (encoder, lambda: encoder(video, args.ratio, "random", gen(), whole))}
    optimizers = {id(m): common.adamw(m.parameters()) for m in (encoder, packed)}
    cases = {name: common.encoder_step(m, optimizers[id(m)], f) for name, (m, f) in forwards.items()}
    samples = common.interleaved(cases, args.rounds)
    per_slice = (cfg.video.image_size // cfg.video.tubelet[1]) ** 2
    slices = (real + cfg.video.tubelet[0] - 1) // cfg.video.tubelet[0]
    content_tokens = [round((1 - args.ratio) * int(s) * per_slice) for s in slices]
    full = cfg.video.visible_tokens(args.ratio)
    rows = {"content": full, "dropped": max(content_tokens), "packed": max(content_tokens), "whole": full}
    tokens = {name: args.batch * rows[name] for name in rows} | {"packed": sum(content_tokens)}
    cells = {name: {"row_tokens": rows[name], "batch_tokens": tokens[name],
                    "step_s": round(common.median(samples[name]), 4),
                    "step_s_samples": [round(s, 4) for s in samples[name]],
                    "saved_bytes": common.real_saved_bytes(f, m)}
             for name, (m, f) in forwards.items()}
    for cell in cells.values():
        cell["time_vs_content"] = round(cell["step_s"] / cells["content"]["step_s"], 4)
        cell["bytes_vs_content"] = round(cell["saved_bytes"] / cells["content"]["saved_bytes"], 4)
    common.emit({"benchmark": "padding", "frames": args.frames, "batch": args.batch, "real_frames": args.real,
                 "mask_ratio": args.ratio, "content_tokens_per_clip": content_tokens, "cases": cells})
    return 0


if __name__ == "__main__":
    sys.exit(main())
