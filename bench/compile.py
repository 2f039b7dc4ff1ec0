"""Compiled blocks (model.compile=true) against eager: the train step under ZeRO-3 with
activation checkpointing, side by side.

    .venv/bin/python bench/compile.py [--dims tiny B] [--frames 16] [--rounds 6] [--threads 1] \
        [--warm-cache]

Each dims gets two engines from the trainer's own build_engine, built from the same run
config (demo.yaml, zero3_cpu.json, fp32, 1 CPU process over gloo, every block of both towers
checkpointed) with the same initial weights, one with model.compile=false and
one with model.compile=true (longvivit/train/compile.py: torch.compile, inductor, on each
block's forward, each block a ZeRO-3 leaf). Their steps (engine forward, backward,
engine.step) take turns on the same batch, every other round in the other order
(common.py); medians over rounds. The compiled engine's first step, which compiles (both
towers, training graphs), is timed apart and left out of the rounds with the other warm-up
step. Both engines train from the same weights on the same batch, so their losses should
agree step by step: the largest difference is reported next to the times.

dims: tiny = the demo's tiny preset at 32 px, micro-batch 4; B = ViT-B/16 video tower at
224 px with its text tower (129M parameters), micro-batch 2 (at 1 the contrastive loss of a
lone pair is 0 whatever the weights, and the loss comparison would say nothing). Both at
--frames frames with 75% masking.

Compile time: the first compiled step is cold unless --warm-cache: the script points
inductor's on-disk cache (TORCHINDUCTOR_CACHE_DIR: compiled kernels, FX and AOTAutograd
graphs) at an empty folder first, as a fresh machine would have it.

Prints one JSON object: per dims the step seconds of each engine (median and samples), the
ratio compiled / eager (of the medians and round by round; < 1: compiled faster), the first
steps' seconds, the graphs dynamo compiled and the largest loss difference.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from mfu import batch_for
from offload import init_single_process

import common

DEMO = Path(common.REPO) / "longvivit" / "configs" / "demo.yaml"
DS_CONFIG = "zero3_cpu.json"
DIMS = {"tiny": ["model.preset=tiny", "model.video.image_size=32", "data.batch_size=4"],
        "B": ["model.preset=B", "model.video.image_size=224", "data.batch_size=2"]}
CASES = ("eager", "compiled")


class EngineStep:
    """One engine train step (forward, backward, engine.step); keeps each step's loss."""

    def __init__(self, engine, inputs):
        self.engine, self.inputs, self.losses = engine, inputs, []

    def __call__(self) -> None:
        loss, _ = self.engine(*self.inputs, generator=torch.Generator().manual_seed(0))
        self.engine.backward(loss)
        self.engine.step()
        self.losses.append(loss.item())


def run_config(name: str, frames: int, compiled: bool):
    from longvivit.train.config import load_run_config

    return load_run_config(DEMO, overrides=[*DIMS[name], f"model.video.frames={frames}", "model.video.mask_ratio=0.75",
                                            f"ds_config={DS_CONFIG}", f"model.compile={str(compiled).lower()}"])


def build_step(name: str, frames: int, compiled: bool) -> tuple[EngineStep, dict]:
    """The engine's train step, and what the record says of its model and batch."""
    from longvivit.train.config import resolve_ds_config
    from longvivit.train.construct import build_for_run
    from longvivit.train.engine import build_engine, partitioned_numel

    cfg = run_config(name, frames, compiled)
    ds_config = resolve_ds_config(cfg, world_size=1)
    model = build_for_run(cfg, False, ds_config)  # seeded: the same weights for both, partitioned
    model.set_grad_checkpointing(True)  # every block of both towers
    inputs = batch_for(cfg.model, cfg.data.batch_size, torch.device("cpu"))
    about = {"dims": name, "frames": frames, "params": partitioned_numel(model)[1], "batch": cfg.data.batch_size}
    return EngineStep(build_engine(model, cfg, ds_config), inputs), about


def first_steps(steps: dict[str, EngineStep]) -> dict[str, float]:
    """Seconds of each engine's first step (the compiled one compiles in it)."""
    out = {}
    for case, step in steps.items():
        t0 = time.perf_counter()
        step()
        out[case] = round(time.perf_counter() - t0, 2)
        common.log(f"  first step {case}: {out[case]} s")
    return out


def run_dims(name: str, frames: int, rounds: int) -> dict:
    import torch._dynamo.utils

    built = {case: build_step(name, frames, case == "compiled") for case in CASES}
    steps = {case: step for case, (step, _) in built.items()}
    stats = torch._dynamo.utils.counters["stats"]
    graphs_before = stats["unique_graphs"]
    first = first_steps(steps)
    samples = common.interleaved(steps, rounds, warmup=1, alternate=True)
    losses = [steps[case].losses for case in CASES]
    return {**built["eager"][1], "first_step_s": first, "graphs": stats["unique_graphs"] - graphs_before,
            **timings(samples), "steps": len(losses[0]),
            "max_loss_diff": max(abs(a - b) for a, b in zip(*losses))}


def timings(samples: dict[str, list[float]]) -> dict:
    """Each engine's median and samples; compiled over eager, of the medians and round by round."""
    eager, compiled = (samples[case] for case in CASES)
    return {**{case: {"step_s": round(common.median(samples[case]), 4),
                      "step_s_samples": [round(s, 4) for s in samples[case]]} for case in CASES},
            "ratio": round(common.median(compiled) / common.median(eager), 4),
            "ratio_per_round": [round(c / e, 4) for e, c in zip(eager, compiled)]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dims", nargs="+", default=["tiny", "B"], choices=sorted(DIMS))
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--rounds", type=int, default=6, help="even: each order equally often")
    p.add_argument("--warm-cache", action="store_true", help="inductor's usual on-disk cache, not an empty one")
    common.add_threads_arg(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    common.set_threads(args.threads)
    cold = None if args.warm_cache else tempfile.mkdtemp(prefix="inductor_cold_")
    if cold:  # read at each compile (torch/_inductor/runtime/cache_dir_utils.py)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cold
    from longvivit.distributed import collectives as dist

    d = init_single_process()
    try:
        results = [run_dims(name, args.frames, args.rounds) for name in args.dims]
    finally:
        dist.shutdown(d)
        if cold:
            shutil.rmtree(cold, ignore_errors=True)
    common.emit({"benchmark": "compile", "ds_config": DS_CONFIG, "precision": "fp32", "world_size": 1,
                 "backend": "inductor", "inductor_cache": "warm" if args.warm_cache else "cold", "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
