"""`longvivit demo [--out DIR]`: the paper's two-stage recipe on this machine, end to end.

Runs longvivit/train/demo.py's run_demo; its last line of stdout is the result as JSON. A
stage whose launcher fails ends the demo with that stage's exit status and one line on
stderr naming its log.
"""
from __future__ import annotations

import argparse
import sys

from longvivit.config import ArgumentParser, ConfigError
from longvivit.train.demo import StageFailed, run_demo


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ArgumentParser(prog="longvivit demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/demo", help="everything the demo writes (default runs/demo)")
    p.add_argument("--videos", type=int, default=400, help="synthetic videos (80%% train, 20%% val)")
    p.add_argument("--images", type=int, default=800, help="synthetic image-caption pairs (stage 1)")
    p.add_argument("--frames", type=int, help="frames per clip at 1 FPS (stage 2's; default 64, "
                   "128 with --long-range)")
    p.add_argument("--long-range", action="store_true", help="stage 2 and both evaluations on "
                   "`synth --long-range` data, whose clips hold multiple-choice items; stage 1 on the "
                   "default benchmark's 64-frame short clips (5-10 minutes on 2 cores)")
    p.add_argument("--objects", type=int, help="with --long-range: the clips share this many objects "
                   "(`synth --objects`; default all 24)")
    p.add_argument("--tune", action="store_true", help="then stage 3: demo_tune.yaml, a short unmasked "
                   "fine-tune of stage 2 at a tenth of its rate (ViCLIP's closing step)")
    p.add_argument("--procs", type=int, default=2, help="training processes (ZeRO-3 ranks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="key=value overrides of both stages' configs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.objects is not None and not args.long_range:
            print("longvivit demo: --objects applies to --long-range only", file=sys.stderr)
            return 2
        frames = args.frames if args.frames is not None else 128 if args.long_range else 64
        run_demo(args.out, args.videos, args.images, frames, args.procs, args.seed, args.overrides,
                 args.long_range, args.objects or 0, args.tune)
    except StageFailed as err:
        print(f"longvivit demo: {err}", file=sys.stderr)
        return err.status
    except ConfigError as err:  # the benchmark's counts or variant, refused before anything is written
        print(f"longvivit demo: {err}", file=sys.stderr)
        return 2
    return 0
