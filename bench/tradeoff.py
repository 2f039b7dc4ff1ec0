"""The paper's trade-off in miniature: masking buys frames, and frames buy accuracy.

    .venv/bin/python bench/tradeoff.py [--out runs/tradeoff] [--steps 250] [--videos 400] \
        [--runs a b ...] [--seeds 0 1 2]

On the synthetic long-video benchmark (`longvivit synth`: 64-frame clips at 1 FPS whose
captions name 3-4 events in order, with hard negatives), the tiny model trains with the
demo's recipe (demo.yaml: batch 16, AdamW lr 2e-3, warmup + cosine, weight
decay 0.05, clip 1.0, the trainer's optimizer and schedule from longvivit.train.engine) for
the same number of steps in every run (equal samples seen), then is evaluated zero-shot
on the held-out split, unmasked, text->video and video->text Recall@1.

Runs:
  a   16 frames, unmasked           a 16 s window at 1 FPS (the paper's short clips):
                                    8 slices x 16 positions = 128 tokens per clip
  a'  16 frames spread uniformly    the same tokens, sparse over the whole minute
  b   64 frames, 75% masking        the whole clip at about a's tokens (128 of 512)
  c   64 frames, unmasked           the whole clip, 4x the tokens
  and 64 frames with joint vs factorized attention at 0, 50 and 75% masking (tube masking
  for factorized, which needs the same positions in every slice; random for joint).

Frames: every clip is decoded once with longvivit's loader (all 64 frames, centred crop),
held in memory, and each step picks its frames with the loader's own select_frames (a
random 1 FPS window while training, the centred one for evaluation; uniform spreads them)
and flips half the clips, as the loader would. Decoding once keeps the runs about the
model, not the decoder, on a 2-core machine.

Per run: val R@1 both ways, median train step time, bytes saved for backward by one
training forward (a batch of 16), tokens per clip. With several --seeds (initial weights,
batch order, windows and masks; the data stay the same) the recalls are the mean over
seeds and `per_seed` keeps each. One JSON object on stdout.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

import common

RUNS = {  # name -> (frames, sampling, mask_ratio, attention, mask_scheme)
    "a: 16f window, 0%": (16, "fps", 0.0, "joint", "random"),
    "a': 16f uniform, 0%": (16, "uniform", 0.0, "joint", "random"),
    "b: 64f, 75% (joint)": (64, "fps", 0.75, "joint", "random"),
    "c: 64f, 0% (joint)": (64, "fps", 0.0, "joint", "random"),
    "64f, 50% (joint)": (64, "fps", 0.5, "joint", "random"),
    "64f, 0% (factorized)": (64, "fps", 0.0, "factorized", "tube"),
    "64f, 50% (factorized)": (64, "fps", 0.5, "factorized", "tube"),
    "64f, 75% (factorized)": (64, "fps", 0.75, "factorized", "tube"),
}
CLIP_FRAMES = 64


# ---------------------------------------------------------------------------- data

def prepare(out: Path, videos: int, seed: int, frames: int = CLIP_FRAMES, long_range: bool = False) -> dict:
    """Synthetic benchmark -> shards (the demo's own preparation, no stills) -> the
    tokenizer demo.yaml reads, trained on the training captions; returns the data.*
    overrides. Reused when present."""
    from longvivit.data import train_tokenizer
    from longvivit.train.demo import prepare_data

    data = {"data.train": out / "shards" / "train", "data.val": out / "shards" / "val",
            "data.tokenizer": out / "tokenizer" / "spm.model"}
    if not ((out / "shards" / "val" / "index.json").is_file() and data["data.tokenizer"].is_file()):
        with contextlib.redirect_stdout(sys.stderr):  # its progress lines; stdout is the JSON's
            prepare_data(out, videos=videos, images=0, frames=frames, seed=seed, long_range=long_range)
        train_tokenizer([out / "synth" / "train.jsonl"], out / "tokenizer" / "spm")
    return data


def decode_split(cfg, split: str, items: bool = False) -> dict:
    """Every clip of a split, all frames, centred crop: video (N, T, H, W, C) uint8,
    text_ids, text_mask, index; items: also each clip's multiple-choice items ("mc", a
    list per clip) and the loader's tokenizer."""
    from longvivit.data import build_loader
    from longvivit.eval.multichoice import items_of
    from longvivit.train.sources import source_data

    data = source_data(cfg.data, 0, cfg.data.sources[0]) if split == "train" else cfg.data
    loader = build_loader(data, split, torch.device("cpu"), 0, 1, training=False)
    try:
        batches = list(loader)
        out = {k: torch.cat([b[k] for b in batches]) for k in ("video", "text_ids", "text_mask", "index")}
        if items:
            out.update(mc=items_of(loader.dataset, out["index"].tolist()), tokenizer=loader.tokenizer)
    finally:
        loader.close()
    return out


def pick_frames(video: torch.Tensor, frames: int, sampling: str, rng: np.random.Generator | None,
                flip: bool) -> torch.Tensor:
    """(B, 64, H, W, C) -> (B, frames, H, W, C) with the loader's frame selection; rng None:
    evaluation (centred window, no flip)."""
    from longvivit.data.load.decode import select_frames

    out = []
    for clip in video:
        idx, _ = select_frames(clip.shape[0], frames, sampling, rng)
        clip = clip[torch.from_numpy(idx.astype(np.int64))]
        if flip and rng is not None and rng.random() < 0.5:
            clip = clip.flip(2)  # horizontal: (T, H, W, C)
        out.append(clip)
    return torch.stack(out)


# ---------------------------------------------------------------------------- one run

def run_config(base: list[str], spec):
    from longvivit.train.config import CONFIG_DIR, load_run_config

    frames, sampling, ratio, attention, scheme = spec
    return load_run_config(CONFIG_DIR / "demo.yaml", overrides=base + [
        f"model.video.frames={frames}", f"data.sampling={sampling}", f"model.video.mask_ratio={ratio}",
        f"model.video.attention={attention}", f"model.video.mask_scheme={scheme}"])


def train_and_eval(cfg, train: dict, val: dict, seed: int) -> dict:
    from longvivit.model import build_model
    from longvivit.train.engine import build_optimizer

    torch.manual_seed(seed)
    model = build_model(cfg.model).train()
    optimizer, schedule = build_optimizer(model, cfg)
    order = np.random.default_rng(seed)  # the same batches and windows in every run
    v, bs, times = cfg.model.video, cfg.data.batch_size, []
    for step in range(cfg.steps):
        rows = torch.from_numpy(order.choice(len(train["index"]), bs, replace=False))
        video = pick_frames(train["video"][rows], v.frames, cfg.data.sampling, order, cfg.data.flip)
        t0 = time.perf_counter()
        loss, _ = model(video, train["text_ids"][rows], train["text_mask"][rows],
                        generator=torch.Generator().manual_seed(seed * 100_003 + step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip)
        optimizer.step()
        schedule.step()
        times.append(time.perf_counter() - t0)
        if step % 50 == 0:
            common.log(f"    step {step}: loss {loss.item():.3f}, {times[-1]:.2f} s")
    saved = common.real_saved_bytes(lambda: model(video, train["text_ids"][rows], train["text_mask"][rows]), model)
    return {"step_s": round(common.median(times), 4), "train_s": round(sum(times), 1),
            "saved_bytes": saved, "final_loss": round(loss.item(), 4), **evaluate(model, cfg, val)}


@torch.no_grad()
def evaluate(model, cfg, val: dict) -> dict:
    """Held-out retrieval, unmasked; multiple choice too where val holds items (decode_split)."""
    from longvivit.eval.evaluate import retrieval_metrics

    model.eval()
    v = cfg.model.video
    videos, texts = [], []
    for start in range(0, len(val["index"]), 32):
        part = slice(start, start + 32)
        clip = pick_frames(val["video"][part], v.frames, cfg.data.sampling, None, False)
        videos.append(model.encode_video(clip, mask_ratio=0.0, normalize=True))
        texts.append(model.encode_text(val["text_ids"][part], val["text_mask"][part], normalize=True))
    m = retrieval_metrics(torch.cat(texts) @ torch.cat(videos).t())
    out = {k: round(m[k], 2) for k in ("t2v_r1", "v2t_r1", "t2v_r5", "chance_r1")} | {"val_pairs": m["pairs"]}
    if any(val.get("mc", [])):
        out |= multiple_choice(model, torch.cat(videos), val)
    return out


def multiple_choice(model, video: torch.Tensor, val: dict) -> dict:
    """Top-1 accuracy (%) of val's items (answers alone) against the clips' embeddings."""
    from longvivit.eval.multichoice import embed_items, mc_metrics
    from longvivit.eval.zeroshot import text_embedder

    items = [it for clip in val["mc"] for it in clip]
    rows = [row for row, clip in enumerate(val["mc"]) for _ in clip]
    embed_texts = text_embedder(model, val["tokenizer"], model.cfg.text.context_length)
    m = mc_metrics(video, embed_items(items, rows, embed_texts))
    return {"mc_top1": round(m["top1"], 2), "mc_chance": round(m["chance_top1"], 2), "mc_items": m["items"]}


def run_name(arg: str) -> str:
    """A run by its full name or by its letter ("a", "a'", "b", "c")."""
    for name in RUNS:
        if arg in (name, name.split(":")[0]):
            return name
    raise argparse.ArgumentTypeError(f"unknown run {arg!r}; runs: {', '.join(RUNS)}")


def over_seeds(results: list[dict], seeds: list[int]) -> dict:
    """One row from the runs of several seeds: recalls and loss averaged, times pooled."""
    if len(results) == 1:
        return results[0]
    out = dict(results[0])
    for key in ("t2v_r1", "v2t_r1", "t2v_r5", "final_loss"):
        out[key] = round(sum(r[key] for r in results) / len(results), 4)
    out["step_s"] = round(common.median([r["step_s"] for r in results]), 4)
    out["train_s"] = round(sum(r["train_s"] for r in results), 1)
    out["seeds"] = seeds
    out["per_seed"] = [{"seed": s, **{k: r[k] for k in ("t2v_r1", "v2t_r1", "t2v_r5", "final_loss")}}
                       for s, r in zip(seeds, results)]
    return out


def load_benchmark(out: Path, videos: int, seed: int, steps: int, clip_frames: int = CLIP_FRAMES,
                   long_range: bool = False) -> tuple[list[str], object, dict, dict]:
    """The benchmark in `out` (written when absent), decoded: the overrides every run
    shares, the config of the whole clip, the train split and the val split (with its
    multiple-choice items on the long-range benchmark)."""
    data = prepare(out, videos, seed, clip_frames, long_range)
    base = [f"{k}={v}" for k, v in data.items()] + [f"steps={steps}", "data.num_workers=0",
                                                   f"model.video.frames={clip_frames}"]
    full = run_config(base, (clip_frames, "fps", 0.0, "joint", "random"))
    train, val = decode_split(full, "train"), decode_split(full, "val", items=long_range)
    common.log(f"decoded {len(train['index'])} train and {len(val['index'])} val clips of {out}")
    return base, full, train, val


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/tradeoff", help="benchmark data (reused when present)")
    p.add_argument("--videos", type=int, default=400)
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="training seeds, each run once per seed (default: --seed)")
    p.add_argument("--runs", nargs="+", default=list(RUNS), type=run_name, metavar="RUN",
                   help="run names or letters (default: all)")
    common.add_threads_arg(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    common.set_threads(args.threads)
    seeds = args.seeds or [args.seed]
    base, full, train, val = load_benchmark(Path(args.out).resolve(), args.videos, args.seed, args.steps)
    rows = []
    for name in args.runs:
        cfg = run_config(base, RUNS[name])
        common.log(f"run {name}")
        row = {"run": name, "frames": cfg.model.video.frames, "sampling": cfg.data.sampling,
               "mask_ratio": cfg.model.video.mask_ratio, "attention": cfg.model.video.attention,
               "tokens_per_clip": cfg.model.video.visible_tokens()}
        rows.append(row | over_seeds([train_and_eval(cfg, train, val, s) for s in seeds], seeds))
        common.log(f"  {rows[-1]}")
    common.emit({"benchmark": "tradeoff", "steps": args.steps, "batch": full.data.batch_size,
                 "videos": args.videos, "clip_frames": CLIP_FRAMES, "image_size": full.model.video.image_size,
                 "seeds": seeds, "runs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
