"""`longvivit shards`: manifest -> MDS shards (longvivit/data/prepare/shards.py).

    longvivit shards MANIFEST --out DIR|URL [--fps 1] [--size 256] [--codec vp9|h264]
                     [--keyframe-interval 8] [--crf 20] [--workers N]
                     [--shard-size 64mb] [--compression zstd] [--overwrite] [--part I/N]
                     [--still-images [--jpeg-quality 95]]
    longvivit shards --merge DIR      (join DIR/*/ written by slurm/shards.sbatch parts)

The last line of stdout is the summary as one JSON line. Exit 0 when something was
written, 1 when nothing could be, 2 with one line on stderr and nothing created for bad
input: an option out of range (--workers -1, --shard-size lots, --compression bogus,
--part 3/2, --fps 0), a manifest that is missing, a folder, UTF-16 or without a row, an
--out that cannot be a folder, or a store that cannot be reached or written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from longvivit.config import ArgumentParser
from longvivit.data.prepare import shards
from longvivit.data.prepare.shards import ShardOptions, merge_parts, write_shards
from longvivit.data.prepare.video import CODECS


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="longvivit shards", description=shards.__doc__.split("\n\n")[0])
    p.add_argument("manifest", nargs="?", help="JSONL or CSV manifest")
    p.add_argument("--out", help="output directory for the MDS shards, or a remote URL "
                   "(s3://bucket/prefix; S3_ENDPOINT_URL for an S3-compatible server)")
    p.add_argument("--merge", metavar="DIR", help="instead of writing: merge the part folders "
                   "DIR/*/ (one per slurm/shards.sbatch array task) into one dataset in DIR")
    p.add_argument("--fps", type=float, default=ShardOptions.fps)
    p.add_argument("--size", type=int, default=ShardOptions.size,
                   help="short side in pixels (0: keep the source size)")
    p.add_argument("--codec", choices=list(CODECS), default=ShardOptions.codec)
    p.add_argument("--keyframe-interval", type=int, default=ShardOptions.keyframe_interval)
    p.add_argument("--crf", type=int, default=ShardOptions.crf)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="transcoding processes (0: in this process)")
    p.add_argument("--shard-size", default="64mb", help="shard size limit, e.g. 64mb")
    p.add_argument("--compression", default=None, help="e.g. zstd (video bytes are already "
                   "compressed: this mostly helps the captions)")
    p.add_argument("--overwrite", action="store_true", help="replace existing shards in --out")
    p.add_argument("--part", default=(0, 1), type=_parse_part, metavar="I/N",
                   help="write only rows I, I+N, I+2N, ... (array jobs; see slurm/shards.sbatch)")
    p.add_argument("--still-images", action="store_true",
                   help="take still images (PNG, JPEG, ...): one frame, stored as a JPEG, or "
                        "with an end, a clip of the picture held from start to end "
                        "(default: rejected)")
    p.add_argument("--jpeg-quality", type=int, default=ShardOptions.jpeg_quality,
                   help="JPEG quality of the still images (--still-images)")
    a = p.parse_args(argv)
    if a.merge:
        return _print_summary(merge_parts, a.merge)
    if not a.manifest or not a.out:
        p.error("a MANIFEST and --out are required (or --merge DIR)")
    opts = ShardOptions(a.fps, a.size, a.codec, a.keyframe_interval, a.crf, a.still_images,
                        a.jpeg_quality)
    return _print_summary(write_shards, a.manifest, a.out, opts, a.workers, a.shard_size,
                          a.compression, a.overwrite, None, a.part)


def _parse_part(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected I/N, e.g. 3/16") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= I < N")
    return i, n


def _print_summary(fn, *args) -> int:
    """Run a writer; its summary is the last line of stdout. Exit 1 when nothing was written."""
    try:
        summary = fn(*args)
    except (ValueError, OSError) as err:  # bad options, an output refused, a store unreachable
        print(f"longvivit shards: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0 if summary["written"] else 1
