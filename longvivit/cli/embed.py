"""`longvivit embed MODEL INPUT --out DIR`: an embedding index of videos and texts.

    longvivit embed MODEL INPUT --out DIR [--text FILE] [--window FRAMES [--stride FRAMES]]
                    [--dtype float16|float32] [--batch-size N] [--chunk-size N] [--overwrite]
    torchrun --nproc_per_node 8 -m longvivit.cli embed MODEL INPUT --out DIR ...
    deepspeed --num_gpus 8 --module longvivit.cli embed MODEL INPUT --out DIR ...

MODEL is an export, a run directory, its checkpoints directory or a checkpoint tag. INPUT is
a manifest, a folder of videos, one video, or shards (a folder or s3://...); --text adds
one text per line. Rerunning the same command resumes: finished chunks are kept. The index
(longvivit/use/index.py) and how it is made (longvivit/use/embed.py): docs/use.md. Prints
the index's summary as one JSON line. Bad input is one line on stderr naming the argument,
exit 2, before anything is created.
"""
from __future__ import annotations

import argparse
import json
import sys

from longvivit.cli.eval import start_process_group
from longvivit.config import ArgumentParser, ConfigError
from longvivit.distributed import collectives as dist
from longvivit.distributed.config import TimeoutConfig
from longvivit.use.embed import EmbedOptions, check_embed_args, embed
from longvivit.use.index import DTYPES


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="longvivit embed", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="export, run dir, checkpoints dir or tag dir")
    p.add_argument("input", nargs="?", help="manifest, folder of videos, a video, or shards (folder or s3://)")
    p.add_argument("--out", required=True, help="index folder to write (or to resume)")
    p.add_argument("--text", metavar="FILE", help="also embed these texts, one per line")
    p.add_argument("--window", type=int, default=0, metavar="FRAMES",
                   help="embed windows of FRAMES frames (at the shard FPS) with their times, and pool them per video")
    p.add_argument("--stride", type=int, default=0, metavar="FRAMES", help="frames between windows (default: --window)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float16", help="of the stored embeddings (default float16)")
    p.add_argument("--batch-size", type=int, default=8, help="clips or windows per forward (default 8)")
    p.add_argument("--chunk-size", type=int, default=64, help="videos per chunk: the unit a rerun skips (default 64)")
    p.add_argument("--no-captions", action="store_true", help="do not embed the captions of INPUT's videos")
    p.add_argument("--overwrite", action="store_true", help="replace an index of other inputs or options in --out")
    p.add_argument("--local-cache", default="", help="local copy of remote shards (default: a folder under /tmp)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: on a terminal)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    opts = EmbedOptions(args.batch_size, args.chunk_size, args.window, args.stride, args.dtype,
                        not args.no_captions, args.local_cache)
    try:
        check_embed_args(args.model, args.input, args.text, args.out, opts, args.overwrite)
    except ConfigError as err:
        print(f"longvivit embed: {err}".splitlines()[0], file=sys.stderr)
        return 2
    d = dist.read_env()
    try:
        saved_env = start_process_group(d, TimeoutConfig.collective_s)
    except ConfigError as err:  # no device for this rank (dist.rank_device)
        print(f"longvivit embed: {err}", file=sys.stderr)
        return 2
    try:
        summary = embed(args.model, args.input, args.text, args.out, opts, d, args.overwrite, args.progress)
        if summary is not None:
            print(json.dumps({"out": str(args.out), **summary}), flush=True)
    finally:
        dist.shutdown(d)
        if d.world_size == 1:  # called in-process (a notebook, the tests): leave no RANK=0 behind
            dist.restore_env(saved_env)
    return 0

