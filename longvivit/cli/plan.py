"""`longvivit plan CONFIG [key=value ...] [--gpus N] [--gpu-mem 80GiB]`: what fits on a GPU.

    longvivit plan g_1b.yaml --gpus 8 --gpu-mem 80GiB
    longvivit plan long_L256.yaml model.video.mask_ratio=0.5 --gpus 8

Prints a table, then the plan (longvivit/train/plan.py) as one JSON line, the last line of
stdout. An invalid config or argument is one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from longvivit.config import ArgumentParser, ConfigError
from longvivit.train.plan import make_plan, parse_bytes, table


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="longvivit plan", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="run config YAML")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the run config")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs the job runs on (ZeRO world size)")
    parser.add_argument("--gpu-mem", default="80GiB", help="memory per GPU, e.g. 80GiB, 16GB")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.gpus < 1:
            raise ConfigError(f"--gpus: {args.gpus} must be >= 1")
        plan = make_plan(args.config, args.overrides, args.gpus, parse_bytes(args.gpu_mem))
    except ConfigError as err:
        print(f"longvivit plan: {err}".splitlines()[0], file=sys.stderr)
        return 2
    print(table(plan))
    print(json.dumps(asdict(plan)), flush=True)
    return 0
