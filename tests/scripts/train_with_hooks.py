"""`longvivit train` with the tests' hooks (tests/hooks_support.py: faults, the eval's
embeddings, a record of every hook call), run as the CLI would be, under any launcher:

    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --master_port PORT tests/scripts/train_with_hooks.py \\
        [--faults NAME:STEPS[:RANK],...] [--eval-embeddings FILE] [--record FILE] CONFIG [key=value ...]

Every other argument goes to `longvivit train` as it is (the launcher's --local_rank too,
which it drops); the exit status is train's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for hooks_support

from hooks_support import FaultHooks  # noqa: E402

from longvivit.cli.train import main  # noqa: E402


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="train_with_hooks.py", allow_abbrev=False)
    p.add_argument("--faults", default="", help="NAME:STEPS[:RANK],... (tests/hooks_support.py)")
    p.add_argument("--eval-embeddings", type=Path, help="rank 0 saves each eval's embeddings here")
    p.add_argument("--record", type=Path, help="append a JSON line per hook call here")
    return p.parse_known_args(argv)


if __name__ == "__main__":
    args, train_argv = parse(sys.argv[1:])
    sys.exit(main(train_argv, hooks=FaultHooks(args.faults, args.eval_embeddings, args.record)))
