"""`longvivit export CHECKPOINT --out DIR [--hf HF_DIR]`: one safetensors file + config + tokenizer,
and the same model as a Hugging Face folder.

--out DIR: the export (longvivit/train/export.py). --hf HF_DIR: a folder that
transformers' AutoModel.from_pretrained(HF_DIR, trust_remote_code=True) loads where
longvivit is installed, with a model card (longvivit/use/hf.py); CHECKPOINT may then also be
an export. Prints where as one JSON line. Bad input (no complete checkpoint, a missing or
truncated shard, an unreadable run_config.yaml, an --out or --hf that cannot be written) is
one line on stderr, exit 2, before anything is written.
"""
from __future__ import annotations

import json
import sys

from longvivit.config import ArgumentParser, ConfigError
from longvivit.train.export import WEIGHTS, check_export_args, export
from longvivit.use.hf import check_hf_args, write_hf


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="longvivit export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="run dir, checkpoints dir or tag dir (newest complete); with --hf alone "
                   "also an export")
    p.add_argument("--out", help="directory to write the export to")
    p.add_argument("--hf", metavar="HF_DIR", help="directory to write the Hugging Face folder to")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not (args.out or args.hf):
        p.error("give --out DIR, --hf DIR or both")
    try:
        tag = check_export_args(args.checkpoint, args.out) if args.out else None
        if args.hf:
            check_hf_args(args.checkpoint, args.hf)
    except ConfigError as err:
        print(f"longvivit export: {err}".splitlines()[0], file=sys.stderr)
        return 2
    written = {}
    if args.out:
        out = export(tag, args.out)
        written.update(out=str(out), weights=str(out / WEIGHTS), config=str(out / "config.yaml"))
    if args.hf:
        written["hf"] = str(write_hf(args.checkpoint, args.hf))
    print(json.dumps(written))
    return 0
