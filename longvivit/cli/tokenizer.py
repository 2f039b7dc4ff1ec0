"""`longvivit tokenizer INPUT [INPUT ...] --out PREFIX [--vocab-size 8000]`: a sentencepiece
model trained on captions (longvivit/data/load/tokenizer.py).

INPUT is a shard folder (its captions column), a manifest (.jsonl / .json / .csv) or a
UTF-8 text file (one caption per line). Writes PREFIX.model and PREFIX.vocab and prints a
JSON line. Bad input (an INPUT missing, not UTF-8, not shards, or with no caption; a
--vocab-size or --character-coverage sentencepiece refuses; a PREFIX under a file or where
no folder can be made) exits 2 with one line on stderr and leaves nothing behind.
"""
from __future__ import annotations

import json
import sys

from longvivit.config import ArgumentParser
from longvivit.data.load.tokenizer import MODEL_TYPES, Tokenizer, train_tokenizer


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="longvivit tokenizer", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="shard folders, manifests or text files")
    p.add_argument("--out", required=True, help="output prefix: writes PREFIX.model")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--character-coverage", type=float, default=0.9995)
    p.add_argument("--model-type", choices=MODEL_TYPES, default="bpe")
    a = p.parse_args(argv)
    try:
        path = train_tokenizer(a.inputs, a.out, a.vocab_size, a.character_coverage, a.model_type)
    except (ValueError, OSError) as err:  # bad input, an output refused
        print(f"longvivit tokenizer: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"model": path, "vocab_size": Tokenizer(path).vocab_size}))
    return 0
