"""ZeRO-3 offload: the trainer's fused torch AdamW against DeepSpeed's CPUAdam, side by side.

    .venv/bin/python bench/offload.py [--dims tiny B] [--frames 16] [--rounds 6] [--threads 1] \
        [--warm-build]

Both optimizers step the fp32 partitions that ZeRO-3 with offload_optimizer + offload_param
(zero3_offload_cpu.json, 1 CPU process over gloo) hands them. Each dims gets two
engines built from the same run config (demo.yaml, shrunk or grown by
--dims): (a) the trainer's own build_engine, torch.optim.AdamW(fused=True) as a client
optimizer, which the ds_config allows with "zero_force_ds_cpu_optimizer": false (what the
trainer runs); (b) deepspeed.ops.adam.DeepSpeedCPUAdam over the same parameter groups and
schedule (what DeepSpeed would have it run). Their steps take turns on the same batch,
every other round in the other order (see common.py); the median over rounds is reported
for the whole train step (engine forward, backward, engine.step), for the optimizer's own
step() inside it (timed in place, summed over ZeRO's sub-groups) and for the rest.

DeepSpeedCPUAdam is a C++ op built by torch's JIT on first use (c++, ninja, Python
headers); the script first builds it in an empty TORCH_EXTENSIONS_DIR and records how long
that took and with which flags (--warm-build: use the usual cache instead).

dims: tiny = the demo's tiny preset at 32 px, micro-batch 4; B = ViT-B/16 video tower at
224 px with its text tower (129M parameters), micro-batch 1. Both at --frames frames with
75% masking.

Prints one JSON object: per dims the step and optimizer seconds of each optimizer (median
and samples) and their ratios (DeepSpeedCPUAdam over torch AdamW), plus the build record.
"""
from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
from mfu import batch_for

import common

DEMO = Path(common.REPO) / "longvivit" / "configs" / "demo.yaml"
DS_CONFIG = "zero3_offload_cpu.json"
DIMS = {"tiny": ["model.preset=tiny", "model.video.image_size=32", "data.batch_size=4"],
        "B": ["model.preset=B", "model.video.image_size=224", "data.batch_size=1"]}
CASES = ("torch_adamw", "ds_cpu_adam")  # (a), (b)


def build_cpu_adam(cold: bool) -> dict:
    """JIT-build (or load) the cpu_adam op; seconds, flags and toolchain."""
    if cold:  # before deepspeed reads it
        os.environ["TORCH_EXTENSIONS_DIR"] = tempfile.mkdtemp(prefix="cpu_adam_build_")
    from deepspeed.ops.op_builder import CPUAdamBuilder

    builder = CPUAdamBuilder()
    t0 = time.perf_counter()
    builder.load()
    seconds = time.perf_counter() - t0
    return {"cold": cold, "seconds": round(seconds, 1), "cxx_args": builder.cxx_args(),
            "compiler": _first_line(["c++", "--version"]), "ninja": _first_line(["ninja", "--version"])}


def _first_line(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "not found"


def init_single_process():
    """Rank 0 of 1 on a free port (dist.shutdown(d) removes its /dev/shm buffer)."""
    from longvivit.distributed import collectives as dist

    d = dist.read_env({})
    dist.setup_env(d)
    dist.bind_device(d)
    dist.init_process_group(timedelta(minutes=10))
    return d


def run_config(name: str, frames: int):
    from longvivit.train.config import load_run_config

    return load_run_config(DEMO, overrides=[*DIMS[name], f"model.video.frames={frames}",
                                            "model.video.mask_ratio=0.75", f"ds_config={DS_CONFIG}"])


def ds_cpu_adam_engine(model, cfg, ds_config: dict):
    """(b): what the trainer would build with DeepSpeedCPUAdam in place of torch AdamW."""
    import deepspeed
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    from longvivit.train.engine import param_groups, warmup_cosine

    o = cfg.optim
    optimizer = DeepSpeedCPUAdam(param_groups(model, o.weight_decay), lr=o.lr, betas=tuple(o.betas),
                                 eps=o.eps, adamw_mode=True)
    schedule = functools.partial(warmup_cosine, warmup=o.warmup_steps, total=cfg.steps,
                                 min_ratio=o.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config, dist_init_required=False)
    return engine


class OffloadStep:
    """One engine train step (forward, backward, engine.step); keeps the seconds of each
    step and of the optimizer's own step() inside it (summed over ZeRO's sub-groups)."""

    def __init__(self, engine, inputs):
        self.engine, self.inputs = engine, inputs
        self.optimizer_s: list[float] = []
        self._pending = 0.0
        inner = engine.optimizer.optimizer  # what ZeRO-3 steps on each fp32 sub-group
        original = inner.step

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = original(*args, **kwargs)
            self._pending += time.perf_counter() - t0
            return out

        inner.step = timed

    def __call__(self) -> None:
        self._pending = 0.0
        loss, _ = self.engine(*self.inputs, generator=torch.Generator().manual_seed(0))
        self.engine.backward(loss)
        self.engine.step()
        self.optimizer_s.append(self._pending)


def run_dims(name: str, frames: int, rounds: int) -> dict:
    from longvivit.model import build_model
    from longvivit.train.config import resolve_ds_config
    from longvivit.train.engine import build_engine

    cfg = run_config(name, frames)
    ds_config = resolve_ds_config(cfg, world_size=1)
    builders = {"torch_adamw": functools.partial(build_engine, cfg=cfg, ds_config=ds_config),
                "ds_cpu_adam": functools.partial(ds_cpu_adam_engine, cfg=cfg, ds_config=ds_config)}
    inputs = batch_for(cfg.model, cfg.data.batch_size, torch.device("cpu"))
    steps, params = {}, 0
    for case in CASES:
        torch.manual_seed(cfg.seed)  # the same initial weights for both
        model = build_model(cfg.model)
        params = model.num_params()
        steps[case] = OffloadStep(builders[case](model), inputs)
    common.log(f"{name}: {params / 1e6:.1f}M parameters, {rounds} rounds")
    # warm-up: Adam's state, ZeRO-3's prefetch trace. alternate: in a B run with a fixed
    # order the second engine's step came out 9% faster while its optimizer step was 17%
    # slower; swapping the order every round keeps such effects out of the ratios
    samples = common.interleaved(steps, rounds, warmup=2, alternate=True)
    result = {"dims": name, "frames": frames, "mask_ratio": cfg.model.video.mask_ratio,
              "image_size": cfg.model.video.image_size, "batch": cfg.data.batch_size, "params": params}
    for case in CASES:
        step, opt = samples[case], steps[case].optimizer_s[-rounds:]  # after the warm-up steps
        result[case] = summary(step, opt)
    result.update(ratios(result["torch_adamw"], result["ds_cpu_adam"]))
    return result


def summary(step: list[float], opt: list[float]) -> dict:
    rest = [s - o for s, o in zip(step, opt)]  # forward, backward, ZeRO's gathers and copies
    return {"step_s": round(common.median(step), 4), "optimizer_s": round(common.median(opt), 4),
            "rest_s": round(common.median(rest), 4), "step_s_samples": [round(s, 4) for s in step],
            "optimizer_s_samples": [round(s, 4) for s in opt]}


def ratios(a: dict, b: dict) -> dict:
    """(b) over (a), < 1: DeepSpeedCPUAdam faster; of the medians and round by round."""
    out = {f"{k}_ratio": round(b[f"{k}_s"] / a[f"{k}_s"], 4) for k in ("step", "optimizer", "rest")}
    for k in ("step", "optimizer"):
        out[f"{k}_ratio_per_round"] = [round(y / x, 4) for x, y in zip(a[f"{k}_s_samples"], b[f"{k}_s_samples"])]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dims", nargs="+", default=["tiny", "B"], choices=sorted(DIMS))
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--rounds", type=int, default=6, help="even: each order equally often")
    p.add_argument("--warm-build", action="store_true", help="load cpu_adam from the usual JIT cache")
    common.add_threads_arg(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    # cpu_adam's OpenMP loop runs in torch's libgomp (the op leaves GOMP_* to the process),
    # so torch's thread count is its thread count too
    common.set_threads(args.threads)
    build = build_cpu_adam(cold=not args.warm_build)
    common.log(f"cpu_adam: {build['seconds']} s ({'cold' if build['cold'] else 'cached'})")
    from longvivit.distributed import collectives as dist

    d = init_single_process()
    try:
        results = [run_dims(name, args.frames, args.rounds) for name in args.dims]
    finally:
        dist.shutdown(d)
    common.emit({"benchmark": "offload", "ds_config": DS_CONFIG, "precision": "fp32", "world_size": 1,
                 "cpu_adam_build": build, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
