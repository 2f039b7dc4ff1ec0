"""`longvivit smoke`: build a model, run one masked forward/backward on random input,
print one JSON line {"loss", "params", "seconds", ...}; exit 1 unless the loss and every
gradient are finite.

    longvivit smoke [--preset tiny] [--batch 2] [--mask-ratio 0.75] [--seed 0]
"""
from __future__ import annotations

import json
import math
import sys

from longvivit.config import ArgumentParser, ConfigError
from longvivit.model.presets import PRESETS
from longvivit.model.smoke import smoke


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="longvivit smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"argument --batch: {args.batch} must be >= 1")
    try:
        result = smoke(args.preset, args.batch, args.mask_ratio, args.seed)
    except ConfigError as err:  # the preset with this mask ratio (model.video.mask_ratio)
        print(f"longvivit smoke: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0 if math.isfinite(result["loss"]) and result["grads_finite"] else 1
