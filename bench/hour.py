"""An hour of video at 1 FPS (3,600 frames): the tiny model's training step on CPU, and
`longvivit plan` for the large configs at that length.

    .venv/bin/python bench/hour.py [--frames 3600] [--ratio 0.9] [--batch 2] [--rounds 5] \
        [--threads 1] [--configs g_1b long_L256] [--gpus 8] [--gpu-mem 80GiB]

step: the tiny model (32 px, tubelet 2x8x8) built for --frames, --batch random clips and
captions, one forward (both towers, InfoNCE), backward, fused AdamW step at --ratio random
masking. Recorded: bytes saved for backward (exact, longvivit.model.saved_bytes), the same
for --frames * (1 - ratio) frames unmasked (the same visible tokens), the video tower's alone,
and its at 0% masking counted on FakeTensors (too slow to run), the first step's peak resident memory above
where it started (common.peak_rss_increase), and the step time (median over --rounds, after
that first step).

plans: `longvivit plan CONFIG model.video.frames=F model.video.mask_ratio=R --gpus N
--gpu-mem M` for each of --configs (the same object the CLI's JSON line holds).

Prints one JSON object.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

import torch

from longvivit.model import build_model, model_config
from longvivit.train.config import load_run_config, repo_path
from longvivit.train.plan import make_plan, parse_bytes

import common


def tiny_step(frames: int, ratio: float, batch: int, rounds: int) -> dict:
    cfg = model_config("tiny", [f"video.frames={frames}", f"video.mask_ratio={ratio}"])
    v = cfg.video
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = common.adamw(model.parameters())
    g = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (batch, frames, v.image_size, v.image_size, 3), dtype=torch.uint8, generator=g)
    ids = torch.randint(4, cfg.text.vocab_size, (batch, cfg.text.context_length), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731 -- the same masks every step
    forward = lambda: model(video, ids, mask, generator=gen())[0]  # noqa: E731

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward().backward()
        optimizer.step()

    peak = common.peak_rss_increase(step)  # first: on a heap that has not held a step yet
    samples = common.interleaved({"step": step}, rounds, warmup=0)["step"]
    short = round(frames * (1 - ratio))
    short_model = build_model(model_config("tiny", [f"video.frames={short}"])).train()
    return {"preset": "tiny", "frames": frames, "mask_ratio": ratio, "batch": batch, "image_size": v.image_size,
            "tubelet": list(v.tubelet), "tokens": v.tokens, "visible_tokens": v.visible_tokens(),
            "params": sum(p.numel() for p in model.parameters()),
            "saved_bytes": common.real_saved_bytes(forward, model),
            "short_frames": short, "short_visible_tokens": short_model.cfg.video.visible_tokens(),
            "short_saved_bytes": common.real_saved_bytes(
                lambda: short_model(video[:, :short], ids, mask)[0], short_model),
            "video_saved_bytes": common.real_saved_bytes(
                lambda: model.video(video, ratio, v.mask_scheme, gen()), model),
            "video_saved_bytes_unmasked_fake": common.fake_video_saved_bytes(cfg, batch, 0.0),
            "uint8_batch_bytes": video.numel(),
            "peak_rss_bytes": peak,
            "step_s": round(common.median(samples), 4), "step_s_samples": [round(s, 4) for s in samples]}


# At an hour, g_1b needs activation checkpointing that its own 128 frames do not: `longvivit
# plan g_1b.yaml model.video.frames=3600 model.video.mask_ratio=0.9 --gpus 8
# --gpu-mem 80GiB` gives min_grad_checkpointing 28 of its 32 blocks; every block is checkpointed here.
HOUR_OVERRIDES = {"g_1b": ["model.video.grad_checkpointing=32"]}


def plan(name: str, frames: int, ratio: float, gpus: int, gpu_mem: str) -> dict:
    config = f"{name}.yaml"
    overrides = [f"model.video.frames={frames}", f"model.video.mask_ratio={ratio}", *HOUR_OVERRIDES.get(name, [])]
    out = asdict(make_plan(config, overrides, gpus, parse_bytes(gpu_mem)))
    v = load_run_config(repo_path(config), overrides=overrides).model.video
    out.update(tokens=v.tokens, visible_tokens=v.visible_tokens(), image_size=v.image_size,
               command=f"longvivit plan {config} {' '.join(overrides)} --gpus {gpus} --gpu-mem {gpu_mem}")
    common.log(f"{name}: total {out['total'] / 2**30:.2f} GiB, fits {out['fits']}, "
               f"max micro-batch {out['max_micro_batch']}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=3600)
    p.add_argument("--ratio", type=float, default=0.9)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--configs", nargs="+", default=["g_1b", "long_L256"])
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu-mem", default="80GiB")
    common.add_threads_arg(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    common.set_threads(args.threads)
    step = tiny_step(args.frames, args.ratio, args.batch, args.rounds)
    plans = [plan(name, args.frames, args.ratio, args.gpus, args.gpu_mem) for name in args.configs]
    common.emit({"benchmark": "hour", "fps": 1.0, "step": step, "plans": plans})
    return 0


if __name__ == "__main__":
    sys.exit(main())
