"""`longvivit synth --out DIR [--videos N] [--frames F] [--seed S] [--size 64] [--images N]
[--long-range [--event-frames L] [--objects K]]`: the synthetic long-video benchmark
(longvivit/data/prepare/synth.py).

Prints the summary as one JSON line; bad arguments (a count, size or fraction out of range,
more videos than there are distinct captions, an --out that cannot be a folder) exit 2 with
one line on stderr, before anything is created.
"""
from __future__ import annotations

import argparse
import json
import sys

from longvivit.config import ArgumentParser
from longvivit.data.prepare import synth
from longvivit.data.prepare.synth import LONG_RANGE_FRAMES, SynthConfig, write_benchmark

LONG_RANGE = """--long-range: the variant only long context can solve. Clips of 128 frames (1 FPS;
--frames 128 to 256) in which each event lasts --event-frames seconds (default 4) between
stretches where nothing happens, every object of a clip different, two events back to
back. 16 frames spread over a clip see each event in at most one frame: where an object
is, not where it goes (up or down, grows or shrinks), and at most one of the back-to-back
pair, so not their order. Hard negatives (all videos, unless --hard-negatives) flip one
event's direction or swap the back-to-back pair; captions name 3-4 events and fit the
CLIP text tower's 32 tokens. Rows add "spans" (each event's frames [start, end)) and "mc":
three multiple-choice items a clip, what one event did after the one before it (4 answers),
which of the pair came first (2 answers), and which of 4 events happens in the clip (the
others done by objects it never shows; 16 frames miss about half of the events outright),
scored by `longvivit eval --tasks mc`.
--objects K: every clip draws its objects from the same K (of 24), so that captions differ
in what the objects do and in what order, not in which objects appear."""


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="longvivit synth", description=synth.__doc__.split("\n\n")[0], epilog=LONG_RANGE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--videos", type=int, default=SynthConfig.videos)
    p.add_argument("--frames", type=int, help=f"frames per video at 1 FPS (16 to 256+; default "
                   f"{SynthConfig.frames}, {LONG_RANGE_FRAMES} with --long-range)")
    p.add_argument("--min-frames", type=int, default=0,
                   help="if set, video lengths vary uniformly in [min-frames, frames]")
    p.add_argument("--size", type=int, default=SynthConfig.size, help="frame side, pixels")
    p.add_argument("--events", type=int, nargs=2, default=[3, 4], metavar=("MIN", "MAX"))
    p.add_argument("--hard-negatives", type=float, help="share of videos in hard-negative families "
                   f"(default {SynthConfig.hard_negatives}; 1 with --long-range)")
    p.add_argument("--val-fraction", type=float, default=SynthConfig.val_fraction)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=0,
                   help="also write this many image-caption pairs (stills; images.jsonl)")
    p.add_argument("--long-range", action="store_true", help="the long-range variant (below)")
    p.add_argument("--event-frames", type=int, help="--long-range: frames (seconds) each event lasts "
                   f"(default {SynthConfig.event_frames})")
    p.add_argument("--objects", type=int, help="--long-range: the clips share this many objects "
                   "(default: all 24)")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    for flag, value in (("--event-frames", a.event_frames), ("--objects", a.objects)):
        if value is not None and not a.long_range:
            p.error(f"{flag} applies to --long-range only")
    event_frames = a.event_frames if a.event_frames is not None else SynthConfig.event_frames
    frames = a.frames if a.frames is not None else LONG_RANGE_FRAMES if a.long_range else SynthConfig.frames
    hard = a.hard_negatives if a.hard_negatives is not None else 1.0 if a.long_range else SynthConfig.hard_negatives
    try:
        summary = write_benchmark(a.out, a.videos, frames, a.seed, overwrite=a.overwrite,
                                  min_frames=a.min_frames, size=a.size, min_events=a.events[0],
                                  max_events=a.events[1], hard_negatives=hard,
                                  val_fraction=a.val_fraction, images=a.images, long_range=a.long_range,
                                  event_frames=event_frames, objects=a.objects or 0)
    except (ValueError, OSError) as err:  # bad arguments, an output refused
        print(f"longvivit synth: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
