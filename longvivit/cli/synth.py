"""`longvivit synth --out DIR [--videos N] [--frames F] [--seed S] [--size 64] [--images N]`:
the synthetic long-video benchmark (longvivit/data/prepare/synth.py).

Prints the summary as one JSON line; bad arguments (a count, size or fraction out of range,
more videos than there are distinct captions, an --out that cannot be a folder) exit 2 with
one line on stderr, before anything is created.
"""
from __future__ import annotations

import json
import sys

from longvivit.config import ArgumentParser
from longvivit.data.prepare import synth
from longvivit.data.prepare.synth import SynthConfig, write_benchmark


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="longvivit synth", description=synth.__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--videos", type=int, default=SynthConfig.videos)
    p.add_argument("--frames", type=int, default=SynthConfig.frames,
                   help="frames per video at 1 FPS (16 to 256+)")
    p.add_argument("--min-frames", type=int, default=0,
                   help="if set, video lengths vary uniformly in [min-frames, frames]")
    p.add_argument("--size", type=int, default=SynthConfig.size, help="frame side, pixels")
    p.add_argument("--events", type=int, nargs=2, default=[3, 4], metavar=("MIN", "MAX"))
    p.add_argument("--hard-negatives", type=float, default=SynthConfig.hard_negatives)
    p.add_argument("--val-fraction", type=float, default=SynthConfig.val_fraction)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=0,
                   help="also write this many image-caption pairs (stills; images.jsonl)")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    try:
        summary = write_benchmark(a.out, a.videos, a.frames, a.seed, overwrite=a.overwrite,
                                  min_frames=a.min_frames, size=a.size, min_events=a.events[0],
                                  max_events=a.events[1], hard_negatives=a.hard_negatives,
                                  val_fraction=a.val_fraction, images=a.images)
    except (ValueError, OSError) as err:  # bad arguments, an output refused
        print(f"longvivit synth: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
