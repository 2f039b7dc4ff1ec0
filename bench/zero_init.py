"""Building a model whole on every rank vs partitioned under deepspeed.zero.Init: peak memory.

    .venv/bin/python bench/zero_init.py [--preset B] [--ranks 2] [--ways whole partitioned] \
        [--check] [--mmap-threshold 131072] [--port PORT]

For each way of building, --ranks fresh CPU processes (DeepSpeed's CPU accelerator, gloo,
1 torch thread) start a process group and build the preset's model as `longvivit train`
does (train/construct.build_for_run; the run config demo.yaml with
model.preset=PRESET and zero3_cpu.json, fp32, seed 0):
  whole        every rank builds the whole model (what ZeRO stages 0-2 keep)
  partitioned  built inside deepspeed.zero.Init (ZeRO-3): each rank keeps its partition
Each rank reports how far its resident set rose above where it stood just before the build,
at its highest (common.peak_rss_increase: Linux's VmHWM, reset first), the VmHWM itself,
the parameters it holds, and the build's seconds. A process builds one model only, so the
peak is that build's on a heap that has held nothing like it.

The allocator: glibc's malloc serves a block below its mmap threshold from its heap and
keeps it there when it is freed (resident, for reuse), and raises that threshold to the
size of each large block freed (up to 32 MiB). A partitioned build frees each module's
whole tensors once its partition is made, so with glibc's default much of what it frees
stays resident, by an amount that varies from run to run (gloo's threads allocate too).
The ranks therefore run with MALLOC_MMAP_THRESHOLD_=--mmap-threshold (fixed, so blocks
above it are mapped and unmapped): the peak is then what the build held. 0: glibc's
default, for comparison.

--check: afterwards each partitioned rank builds the whole model with the same seed and
compares, one parameter gathered at a time, every parameter (torch.equal) and the names
excluded from weight decay (DualEncoder.no_weight_decay, which reads shapes).

Prints one JSON object: per way, every rank's numbers; the ratio of the partitioned
peak increase to the whole one (highest rank of each).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch

import common

DEMO = Path(common.REPO) / "longvivit" / "configs" / "demo.yaml"
DS_CONFIG = "zero3_cpu.json"
WAYS = ("whole", "partitioned")


def run_config(preset: str):
    from longvivit.train.config import load_run_config

    return load_run_config(DEMO, overrides=[f"model.preset={preset}", f"ds_config={DS_CONFIG}",
                                            "precision=fp32", "seed=0"])


# ---------------------------------------------------------------------------- one rank

def compare_with_whole(model: torch.nn.Module, cfg) -> dict:
    """Every parameter of the partitioned `model`, gathered one at a time, against a whole
    build with the same seed; and their no-weight-decay names."""
    from deepspeed.runtime.zero import GatheredParameters

    from longvivit.train.construct import build_for_run

    whole_model = build_for_run(cfg, resuming=False)
    whole = dict(whole_model.named_parameters())
    names = [name for name, _ in model.named_parameters()]
    differ = []
    for name, p in model.named_parameters():
        with GatheredParameters([p]):  # read only: nothing is written back
            if not torch.equal(p.detach(), whole[name].detach().to(p.dtype)):
                differ.append(name)
    return {"compared": len(names), "differ": differ, "same_names": names == list(whole),
            "same_no_weight_decay": model.no_weight_decay() == whole_model.no_weight_decay()}


def rank_main(way: str, preset: str, check: bool) -> None:
    from longvivit.distributed import collectives as dist
    from longvivit.train.config import resolve_ds_config
    from longvivit.train.construct import build_for_run
    from longvivit.train.engine import partitioned_numel

    torch.set_num_threads(1)
    d = dist.read_env()
    dist.setup_env(d)
    dist.bind_device(d)
    dist.init_process_group(timedelta(seconds=600))
    try:
        cfg = run_config(preset)
        ds_config = resolve_ds_config(cfg, d.world_size) if way == "partitioned" else None
        built: dict = {}
        t0 = time.perf_counter()
        rise = common.peak_rss_increase(lambda: built.update(model=build_for_run(cfg, False, ds_config)))
        seconds = time.perf_counter() - t0
        local, total = partitioned_numel(built["model"])
        row = {"rank": d.rank, "peak_rss_increase_bytes": rise, "vm_hwm_bytes": common.proc_status_bytes("VmHWM"),
               "params_held": local, "params_total": total, "build_s": round(seconds, 2)}
        if check and way == "partitioned":
            row["check"] = compare_with_whole(built["model"], cfg)
        # Partitioned parameters hold the process group (ds_process_group): freed here, its
        # gloo threads end with shutdown, not during the interpreter's exit, where one still
        # releasing a finished all-gather's tensors aborts the process (seen 1 run in ~10).
        built.clear()
        gc.collect()
        rows = dist.all_gather_object(row)
        if d.is_main:
            print(json.dumps({"way": way, "ranks": rows}), flush=True)
    finally:
        dist.shutdown(d)


# ---------------------------------------------------------------------------- the ranks of one way

def launch(way: str, args) -> dict:
    """Start args.ranks processes building `way`; their rank 0's JSON line."""
    from longvivit.distributed import collectives as dist

    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "WORLD_SIZE": str(args.ranks),
           "LOCAL_WORLD_SIZE": str(args.ranks), "LOCAL_SIZE": str(args.ranks), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(args.port)}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if args.mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    cmd = [sys.executable, os.path.abspath(__file__), "--rank-of", way, "--preset", args.preset,
           *(["--check"] if args.check else [])]
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              text=True, cwd=common.REPO) for r in range(args.ranks)]
    try:
        outputs = [p.communicate(timeout=args.timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
        world = dist.DistEnv(0, args.ranks, 0, args.ranks, "127.0.0.1", args.port)
        for path in dist.shm_buffers(world):
            path.unlink(missing_ok=True)
    failed = [(r, p.returncode) for r, p in enumerate(procs) if p.returncode != 0]
    if failed:
        raise SystemExit(f"zero_init: {way}: ranks exited with {failed}")
    return json.loads(next(line for line in outputs[0].splitlines() if line.startswith('{"way"')))


def summary(results: dict) -> dict:
    """The partitioned build's highest per-rank peak rise over the whole build's."""
    highest = {way: max(r["peak_rss_increase_bytes"] for r in results[way]["ranks"]) for way in results}
    out = {"highest_peak_rss_increase_bytes": highest}
    if set(WAYS) <= set(results):
        out["partitioned_over_whole"] = round(highest["partitioned"] / highest["whole"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="B")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    p.add_argument("--check", action="store_true", help="compare the partitioned weights with a whole build's")
    p.add_argument("--mmap-threshold", type=int, default=131072,
                   help="glibc's MALLOC_MMAP_THRESHOLD_ for the ranks, bytes (0: glibc's default, dynamic)")
    p.add_argument("--port", type=int, default=0, help="the process groups' port (default: a free one)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds each way may take")
    p.add_argument("--rank-of", choices=WAYS, help=argparse.SUPPRESS)  # internal: run as one rank
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.rank_of:
        rank_main(args.rank_of, args.preset, args.check)
        return 0
    from longvivit.distributed.collectives import free_port

    torch.set_num_threads(1)  # what the ranks run on (recorded by common.machine)
    args.port = args.port or free_port()
    results = {way: launch(way, args) for way in args.ways}
    common.emit({"preset": args.preset, "ranks": args.ranks, "ds_config": DS_CONFIG, "precision": "fp32",
                 "mmap_threshold": args.mmap_threshold or None, "results": results, **summary(results)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
