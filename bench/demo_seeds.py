"""The demo's comparison over seeds: does stage 2 (LongViViT) beat stage 1 (ShortViViT at its
own 16 frames) on the long-range benchmark whatever the seed?

    .venv/bin/python bench/demo_seeds.py [--out runs/demo-seeds] [--seeds 0 1 2] [--short-range | --objects K] [--tune] \
        [overrides ...]

Runs `longvivit demo --long-range --seed S` (the benchmark's clips, captions and items
change with S; the recipe and the initial CLIP do not) once per seed, each in its own
folder under --out, and keeps each run's last line (longvivit/train/demo.py): held-out
text->video R@1, multiple-choice accuracy (overall, per kind) and multi-label mAP of both
stages, with chance (and stage 3's with --tune). --short-range: the default benchmark instead (no multiple choice).
One JSON object on stdout; bench/report.py renders the table and counts the seeds where
stage 2 wins.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

import common

KEYS = ("t2v_r1", "v2t_r1", "mc_top1", "mc_top1_action", "mc_top1_order", "mc_top1_event", "multilabel_map")
CHANCE = {"t2v_r1": "chance", "mc_top1": "mc_chance_top1", "mc_top1_action": "mc_chance_top1_action",
          "mc_top1_order": "mc_chance_top1_order", "mc_top1_event": "mc_chance_top1_event",
          "multilabel_map": "multilabel_chance_map"}


def run_seed(out: Path, seed: int, long_range: bool, objects: int | None, tune: bool, overrides: list[str]) -> dict:
    """One demo; its stages' numbers. Raises if the demo fails (its log is kept)."""
    log = out / f"seed-{seed}.log"
    cmd = [sys.executable, "-m", "longvivit.cli", "demo", "--out", str(out / f"seed-{seed}"), "--seed", str(seed),
           *(["--long-range"] if long_range else []), *(["--objects", str(objects)] if objects else []),
           *(["--tune"] if tune else []), *overrides]
    common.log(f"[demo_seeds] {' '.join(cmd)}")
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=common.REPO).returncode
    if rc != 0:
        raise SystemExit(f"demo_seeds: seed {seed}'s demo exited {rc}; see {log}")
    return seed_result(out, seed)


def seed_result(out: Path, seed: int) -> dict:
    """A finished demo's numbers (its log's last line) and each stage's steps, learning
    rate and video shards folder (its run_config.yaml: "short_clips" for the long-range
    demo's stage 1, "train" for the long clips)."""
    log = out / f"seed-{seed}.log"
    try:
        line = json.loads(log.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError) as e:
        raise SystemExit(f"demo_seeds: {log}: no finished demo's result line ({e})")
    pick = lambda d: {k: d[k] for k in KEYS if k in d}  # noqa: E731
    stages = {}
    for stage in ("short", "long", "tune"):
        config = out / f"seed-{seed}" / stage / "run_config.yaml"
        if stage in ("short", "long") or "tune" in line:
            if not config.is_file():
                raise SystemExit(f"demo_seeds: {config}: missing (seed {seed}'s demo ran its stage {stage} elsewhere)")
            run = OmegaConf.load(config)
            video = next(src for src in run.data.sources if src.kind == "video")  # what its clips were
            stages[stage] = {"steps": int(run.steps), "lr": float(run.optim.lr), "clips": Path(video.shards).name}
    return {"seed": seed, "seconds": line["seconds"], "short": pick(line["short"]), "long": pick(line),
            **({"tune": pick(line["tune"])} if "tune" in line else {}),
            "chance": {k: line[c] for k, c in CHANCE.items() if c in line}, "stages": stages}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/demo-seeds")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--short-range", action="store_true", help="the default benchmark, not --long-range")
    p.add_argument("--objects", type=int, help="the long-range clips share this many objects (demo --objects)")
    p.add_argument("--tune", action="store_true", help="also the optional third stage (demo --tune)")
    p.add_argument("--collect", action="store_true", help="train nothing: the results of the demos already "
                   "run in --out (seed-S.log and its stages' run_config.yaml), with the options they ran with")
    p.add_argument("overrides", nargs="*", help="key=value overrides of both stages (the demo's)")
    args = p.parse_args(argv)
    if args.objects and args.short_range:
        p.error("--objects applies to the long-range benchmark only")
    out = Path(args.out).resolve()
    if args.collect:
        runs = [seed_result(out, s) for s in args.seeds]
    else:
        out.mkdir(parents=True, exist_ok=True)
        runs = [run_seed(out, s, not args.short_range, args.objects, args.tune, args.overrides)
                for s in args.seeds]
    benchmark = "synth" if args.short_range else "synth --long-range" + (f" --objects {args.objects}" if args.objects else "")
    common.emit({"benchmark": benchmark,
                 "overrides": args.overrides, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
