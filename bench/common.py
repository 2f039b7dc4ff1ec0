"""What the performance benchmarks (masking, mfu, peers, tradeoff) share: the machine and
library record, interleaved timing with medians, the encoder train step, saved bytes
measured for real or on FakeTensors, and a step's peak resident memory.

Threads: one by default on CPU. On a machine shared with other jobs, a torch op split over
2 OpenMP threads waits at a barrier for whichever thread was descheduled: on the 2-core
CI machine with a load average of 6 a tiny step took 0.13 s on 1 thread and 0.5-5 s on 2.
Ratios measured side by side on 1 thread are stable; `--threads` changes it (the matmul
peak that MFU divides by is always measured on the same threads).

Timing on a shared machine: every case of a benchmark runs once per round, round after
round (not all repeats of one case, then the next), so a burst of load from another
process lands on all cases alike; the median over rounds is reported, with all samples.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Callable

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine() -> dict:
    """Where and with what a benchmark ran (recorded next to every number)."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "nproc": os.cpu_count(), "cpu": cpu, "torch_threads": torch.get_num_threads(),
            "load_avg_1m": round(os.getloadavg()[0], 2), "python": platform.python_version(),
            "torch": torch.__version__}
    for name in ("deepspeed", "transformers"):
        info[name] = _version(name)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def command() -> str:
    """The command line that ran, quoted as a shell needs it to run again."""
    return shlex.join([".venv/bin/python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


def emit(result: dict) -> None:
    """The benchmark's one JSON object on stdout, with its command and machine."""
    print(json.dumps({"command": command(), "machine": machine(), **result}), flush=True)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def add_threads_arg(parser) -> None:
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: stable on a shared machine, see common.py)")


def set_threads(n: int) -> None:
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------- timing

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device = torch.device("cpu")) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved(cases: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                device: torch.device = torch.device("cpu"), alternate: bool = False) -> dict[str, list[float]]:
    """Seconds per call of each case, `rounds` samples each, the cases taking turns.
    alternate: every other round runs them in reverse order, for cases whose time depends
    on which ran just before (bench/offload.py)."""
    for name, fn in cases.items():
        for _ in range(warmup):
            fn()
        log(f"  warmed up {name}")
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(rounds):
        order = list(cases.items())
        for name, fn in (order[::-1] if alternate and r % 2 else order):
            samples[name].append(timed(fn, device))
        log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {s[-1]:.2f}s" for n, s in samples.items()))
    return samples


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# ---------------------------------------------------------------------------- steps and bytes

def encoder_step(encoder: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 forward: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """One training step of a video encoder alone: forward to a (B, D) embedding, a scalar
    loss of it (its cost is nil next to the encoder's; any scalar exercises the same
    backward), backward, AdamW step."""
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward().float().square().mean().backward()
        optimizer.step()
    return step


def adamw(params, lr: float = 1e-4) -> torch.optim.Optimizer:
    """AdamW over parameters (frozen ones left out) or parameter groups, fused where torch
    has a fused kernel for the device (CPU and CUDA): on CPU the per-tensor loop is ~4x
    slower for ViT-B and would dominate a masked step."""
    params = list(params)
    if params and not isinstance(params[0], dict):
        params = [p for p in params if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=lr)


def peak_rss_increase(fn: Callable[[], object]) -> int | None:
    """Bytes by which the process's resident set rose, at its highest, above where it stood
    when fn() began: Linux's peak mark (VmHWM) is reset through /proc/self/clear_refs, then
    read. It counts what fn touches, the allocator's slack included, but not memory freed
    earlier and reused by fn, so it is a step's own peak only on a heap that has not yet
    held such a step (measure the first one). None where /proc does not allow it."""
    try:
        before = proc_status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    fn()
    return proc_status_bytes("VmHWM") - before


def proc_status_bytes(key: str) -> int:
    """A /proc/self/status memory entry (VmRSS, VmHWM, ...) in bytes."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(key + ":"))
    return int(line.split()[1]) * 1024  # kB


def real_saved_bytes(forward: Callable[[], object], module: torch.nn.Module) -> int:
    from longvivit.model import saved_bytes

    return saved_bytes(forward, ignore=list(module.parameters()))


def fake_video_saved_bytes(cfg, batch: int, mask_ratio: float, precision: str = "fp32") -> int:
    """Saved-for-backward bytes of the video tower on FakeTensors (nothing allocated; the
    planner's count, see longvivit.train.plan), for cells too slow to run."""
    from longvivit.config import to_dict
    from longvivit.model import saved_bytes
    from longvivit.train.plan import fake_model

    model, mode = fake_model(json.dumps(to_dict(cfg)), precision)
    v = cfg.video
    with mode:
        video = torch.empty((batch, v.frames, v.image_size, v.image_size, 3), dtype=torch.float32)
        return saved_bytes(lambda: model.video(video, mask_ratio, v.mask_scheme),
                           ignore=list(model.parameters()))

