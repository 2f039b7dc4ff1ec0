"""`longvivit export CHECKPOINT --out DIR`: one safetensors file + config + tokenizer.

Writes the export (longvivit/train/export.py) and prints where as one JSON line. Bad input
(no complete checkpoint, a missing or truncated shard, an unreadable run_config.yaml, an
--out that cannot be written) is one line on stderr, exit 2, before anything is written.
"""
from __future__ import annotations

import json
import sys

from longvivit.config import ArgumentParser, ConfigError
from longvivit.train.export import WEIGHTS, check_export_args, export


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="longvivit export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="run dir, checkpoints dir or tag dir (newest complete)")
    p.add_argument("--out", required=True, help="directory to write")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        tag = check_export_args(args.checkpoint, args.out)
    except ConfigError as err:
        print(f"longvivit export: {err}".splitlines()[0], file=sys.stderr)
        return 2
    out = export(tag, args.out)
    print(json.dumps({"out": str(out), "weights": str(out / WEIGHTS), "config": str(out / "config.yaml")}))
    return 0
