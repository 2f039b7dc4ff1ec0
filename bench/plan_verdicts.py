"""`longvivit plan` on the project's large run configs, as one benchmark record.

    .venv/bin/python bench/plan_verdicts.py [--configs g_1b long_L256] [--gpus 8] [--gpu-mem 80GiB]

Prints one JSON object: the plan (the same object `longvivit plan CONFIG --gpus N
--gpu-mem M` ends with) for each config, with the command that reproduces it.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from longvivit.train.plan import make_plan, parse_bytes

import common


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=["g_1b", "long_L256"])
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu-mem", default="80GiB")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    plans = []
    for name in args.configs:
        config = f"{name}.yaml"
        plan = asdict(make_plan(config, [], args.gpus, parse_bytes(args.gpu_mem)))
        plan["command"] = f"longvivit plan {config} --gpus {args.gpus} --gpu-mem {args.gpu_mem}"
        plans.append(plan)
        common.log(f"{name}: total {plan['total'] / 2**30:.2f} GiB, fits {plan['fits']}")
    common.emit({"benchmark": "plan", "plans": plans})
    return 0


if __name__ == "__main__":
    sys.exit(main())
