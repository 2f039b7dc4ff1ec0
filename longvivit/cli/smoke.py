"""`longvivit smoke`: build a model, run one masked forward/backward on random input,
print one JSON line {"loss", "params", "seconds", ...}; exit 1 unless the loss and every
gradient are finite.

    longvivit smoke [--preset tiny] [--batch 2] [--mask-ratio 0.75] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import math

from longvivit.model.smoke import smoke


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="longvivit smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = smoke(args.preset, args.batch, args.mask_ratio, args.seed)
    print(json.dumps(result))
    return 0 if math.isfinite(result["loss"]) and result["grads_finite"] else 1
