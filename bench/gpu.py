"""The GPU acceptance checks: what the CPU suite cannot see, measured on one CUDA device.

    python3 bench/gpu.py --out bench/results/gpu [--only attention trainer ...]
    make gpu-check           (the same checks through pytest, tests/gpu/, which asserts them)

Each check is one function writing one JSON file into --out; summary.json records the GPU,
the torch / CUDA / NCCL / deepspeed versions, the date and the command. Without CUDA the
script prints a JSON line saying it skipped, writes nothing and exits 0; a check whose
libraries are missing (DALI, PyAV) records {"skipped": reason}. A check that raises records
{"error": ...} and the others still run (device time is scarce); the exit status is then 1.

Budgets on one H200 (each `longvivit train` process pays ~25-35 s of imports, NCCL and
ZeRO-3 set-up before its first step; steps themselves take 0.05-0.3 s):

  attention    ~20 s   SDPA kernels of the B video tower in bf16 under torch.profiler, and
                       bf16 against fp32 on the same weights and clip
  trainer      ~100 s  `longvivit train` ZeRO-3 bf16 over NCCL at world size 1: a straight
                       20-step run and a run stopped at step 10 (the two at once), then the
                       stopped run resumed to 20; losses and batch indices compared
  plan_memory  ~120 s  `longvivit plan` against torch.cuda.max_memory_allocated of real steps,
                       one process per cell (the untimed cells run at once: the allocator's
                       peak is per process, so they cannot mix)
  mfu          ~5 s    the trainer's logged MFU of the timed cells above (run alone), median
                       after warm-up, next to a measured bf16 matmul peak
  decode       ~60 s   DALI "mixed" H.264/VP9 against PyAV, and the loader against the step;
                       ~0 s when DALI or PyAV is absent (skipped)

Child processes run in the check's scratch folder (deleted afterwards, checkpoints and all),
with their output in a log file there; a failed one's last lines go into the record.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch

import common

ROOT = Path(common.REPO)
DEMO = ROOT / "train" / "configs" / "demo.yaml"  # its shard paths are ignored by data.source=synthetic
NO_CUDA = "no CUDA device (torch.cuda.is_available() is False): the GPU acceptance suite needs one"

# Acceptance thresholds (tests/gpu asserts them; the records carry them for the report).
RESUME_RTOL = 1e-3  # resumed vs straight per-step loss, relative (see check_trainer)
PSNR_MIN_DB = 35.0  # DALI mixed vs PyAV on the same bytes (see check_decode)
EMBED_COSINE_MIN = 0.99  # bf16 vs fp32 embeddings, per clip (see check_attention)
GRAD_COSINE_MIN = 0.99  # bf16 vs fp32 gradient of all parameters, flattened
GRAD_NORM_RTOL = 0.02  # bf16 vs fp32 gradient norm
PLAN_RTOL = 0.10  # plan's allocated parts vs max_memory_allocated, relative to the measured
MFU_FLOOR = 0.05  # below this the step cannot have run on bf16 tensor cores (see check_mfu)

# Every trainer process: synthetic data on the device, ZeRO-3 in bf16, 224 px, a learning
# rate that is flat after 5 warm-up steps (min_lr_ratio 1), so the schedule does not depend
# on `steps` and a run stopped early shares every step's rate with the straight run.
BASE = ["data.source=synthetic", f"ds_config={ROOT / 'ds_configs' / 'zero3.json'}", "precision=bf16",
        "model.video.image_size=224", "model.video.grad_checkpointing=0", "optim.lr=5e-4",
        "optim.warmup_steps=5", "optim.min_lr_ratio=1.0", "log_every=1", "progress=false",
        "eval_max_batches=1"]
WARMUP_STEPS = 3  # steps left out of the MFU median (allocator growth, autotuning, first gathers)
ERROR_TAIL = 3000  # characters of a failed process's output kept in the record


@dataclass(frozen=True)
class Cell:
    """One training configuration, run as its own process."""

    preset: str
    frames: int
    mask_ratio: float
    batch: int
    steps: int
    timed: bool = False  # run alone on the GPU: its step times feed the MFU check

    @property
    def name(self) -> str:
        return f"{self.preset}{self.frames}f{round(self.mask_ratio * 100)}"

    def overrides(self) -> list[str]:
        return [*BASE, f"model.preset={self.preset}", f"model.video.frames={self.frames}",
                f"model.video.mask_ratio={self.mask_ratio}", f"data.batch_size={self.batch}",
                f"steps={self.steps}"]


TIMED_STEPS = WARMUP_STEPS + 10
TRAINER_CELL = Cell("B", 16, 0.0, 8, steps=20)  # ShortViViT's shape; checkpoint and stop at 10
MEMORY_CELLS = [Cell("B", 16, 0.0, 8, TIMED_STEPS, timed=True), Cell("B", 16, 0.75, 8, 3),
                Cell("B", 64, 0.0, 4, 3), Cell("B", 64, 0.75, 4, 3),
                Cell("L", 256, 0.75, 2, TIMED_STEPS, timed=True)]
MFU_CELLS = [c for c in MEMORY_CELLS if c.timed]


# ---------------------------------------------------------------------------- records

def skipped(reason: str) -> dict:
    return {"skipped": reason}


def missing_modules(names) -> list[str]:
    """The modules among `names` that cannot be imported here (found by spec, not imported)."""
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a missing parent package (nvidia for nvidia.dali)
            found = False
        if not found:
            missing.append(name)
    return missing


TRAINER_NEEDS = ("deepspeed", "omegaconf", "sentencepiece", "tensorboard")  # what a train process imports


def require(names) -> None:
    """Fail a check in a second, naming what is missing, rather than after its processes'
    half-minute start-ups."""
    missing = missing_modules(names)
    if missing:
        raise ModuleNotFoundError(f"{', '.join(missing)} not importable here")


def invocation() -> dict:
    """How this process was started: the command line as typed and where."""
    return {"command": shlex.join(sys.orig_argv), "cwd": os.path.relpath(os.getcwd(), ROOT),
            "date": common.machine()["date"]}


def write_json(path: Path, record: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record) + "\n")  # one line, as every bench/results file
    return path


def status(record: dict) -> str:
    return "error" if "error" in record else "skipped" if "skipped" in record else "measured"


def gpu_machine() -> dict:
    """common.machine() plus what a GPU result depends on."""
    info = common.machine()
    info["cuda"] = torch.version.cuda
    info["nccl"] = ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}")
    for module in ("nvidia.dali", "av", "streaming"):
        info[module] = module_version(module)
    return info


def module_version(name: str) -> str:
    if missing_modules([name]):
        return "not installed"
    return getattr(importlib.import_module(name), "__version__", "unknown")


def write_summary(out: Path) -> dict:
    """summary.json: the machine, this command, and every check record found in `out`."""
    checks = {}
    for path in sorted(out.glob("*.json")):
        if path.name != "summary.json":
            r = json.loads(path.read_text())
            checks[path.stem] = {"status": status(r), "date": r.get("date"), "wall_s": r.get("wall_s")}
    summary = {**invocation(), "machine": gpu_machine(), "checks": checks}
    write_json(out / "summary.json", summary)
    return summary


def run_check(name: str, out: Path) -> dict:
    """Run check `name` in a scratch folder; write and return its record (never raises for
    the check's own failure: it becomes {"error": ...})."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"longvivit-gpu-{name}-") as work:
        try:
            record = CHECKS[name](Path(work))
        except Exception as err:  # noqa: BLE001 -- recorded; the other checks still run
            record = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-ERROR_TAIL:]}
    record = {"check": name, **invocation(), "wall_s": round(time.perf_counter() - t0, 1), **record}
    write_json(out / f"{name}.json", record)
    write_summary(out)
    return record


# ---------------------------------------------------------------------------- processes

@dataclass
class Finished:
    returncode: int
    output: str

    def tail(self) -> str:
        return self.output[-ERROR_TAIL:]


def lone_env() -> dict:
    """This environment minus any launcher's rank variables: each child is rank 0 of 1 and
    picks its own free rendezvous port, so several can run at once."""
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
    return {k: v for k, v in os.environ.items() if k not in drop}


def launch(commands: dict[str, list[str]], work: Path, timeout: float = 300,
           env: dict | None = None) -> dict[str, Finished]:
    """Start every command at once (output to work/NAME.log, `env` added to lone_env()), wait
    for all of them; a command still running after `timeout` seconds is killed with its
    process group."""
    started = {}
    for name, cmd in commands.items():
        log = open(work / f"{name}.log", "w")
        started[name] = (subprocess.Popen(cmd, cwd=work, env={**lone_env(), **(env or {})}, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True), log)
    deadline = time.monotonic() + timeout
    done = {}
    for name, (proc, log) in started.items():
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        done[name] = Finished(proc.returncode, (work / f"{name}.log").read_text(errors="replace"))
    return done


def metrics(out: Path, kind: str) -> list[dict]:
    """The `kind` lines ("step": every step's loss/lr/indices; "train": scalars) of a run's
    metrics.jsonl; [] when the run never wrote one."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [x for x in lines if x.get("kind") == kind]


# ---------------------------------------------------------------------------- a. trainer + resume

def trainer_command(out: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "longvivit.train.cli", "train", str(DEMO), *overrides, f"out={out}"]


def start_backend(text: str) -> str | None:
    """The process-group backend a run's {"event": "start"} line reports, or None."""
    for line in text.splitlines():
        if line.startswith("{") and '"event": "start"' in line:
            return json.loads(line).get("backend")
    return None


def compare_runs(straight: list[dict], resumed: list[dict]) -> dict:
    """Per-step losses and batch indices of a stopped-and-resumed run against the straight run
    (metrics.jsonl "step" lines)."""
    ref = {x["step"]: x for x in straight}
    pairs = [(x, ref[x["step"]]) for x in resumed if x["step"] in ref]
    diffs = [abs(x["loss"] - r["loss"]) for x, r in pairs]
    rel = [d / max(abs(r["loss"]), 1e-12) for d, (_, r) in zip(diffs, pairs)]
    return {"steps_straight": [x["step"] for x in straight], "steps_resumed": [x["step"] for x in resumed],
            "losses_straight": [x["loss"] for x in straight], "losses_resumed": [x["loss"] for x in resumed],
            "finite": all(math.isfinite(x["loss"]) for x in straight + resumed),
            "max_abs_diff": max(diffs, default=float("nan")), "max_rel_diff": max(rel, default=float("nan")),
            "exact": bool(pairs) and all(d == 0 for d in diffs),
            "indices_equal": bool(pairs) and all(x["indices"] == r["indices"] for x, r in pairs)}


def check_trainer(work: Path) -> dict:
    """a. `longvivit train` as one plain process on the GPU: the process group is NCCL's at
    world size 1, ZeRO-3 in bf16, synthetic clips; then exact resume.

    The straight run goes to 20 steps with a checkpoint at 10. A second run into a fresh
    folder stops at 10 (steps=10, its final checkpoint), then the same command with steps=20
    resumes from it. Its batch indices must equal the straight run's exactly (a wrong data
    position) and its per-step losses within RESUME_RTOL relative (lost optimizer state,
    learning rate or RNG change what every later step computes). Why not bitwise: on CUDA
    some kernels (atomics in attention backward, split reductions) add in a run-dependent
    order, so two runs of the same steps may differ in the last bits of bf16 values and
    carry that into later losses. 1e-3 assumes that drift stays well below the loss's third
    significant digit over 10 steps; the record holds the measured maximum and whether it
    was bitwise, which is what the first GPU run confirms or corrects."""
    require(TRAINER_NEEDS)
    cell = TRAINER_CELL
    half = cell.steps // 2
    common_args = [*cell.overrides(), f"checkpoint_every={half}", "keep_last=2"]
    straight, resumed = work / "straight", work / "resumed"
    runs = launch({"straight": trainer_command(straight, common_args),
                   "first_half": trainer_command(resumed, [*common_args, f"steps={half}"])}, work)
    if runs["first_half"].returncode == 0:
        runs.update(launch({"second_half": trainer_command(resumed, common_args)}, work))
    return trainer_record(cell, common_args, runs, metrics(straight, "step"), metrics(resumed, "step"))


def trainer_record(cell: Cell, overrides: list[str], runs: dict[str, Finished], straight: list[dict],
                   resumed: list[dict]) -> dict:
    record = {"cell": cell.name, "preset": cell.preset, "frames": cell.frames, "mask_ratio": cell.mask_ratio,
              "batch": cell.batch, "steps": cell.steps, "stopped_at": cell.steps // 2, "rtol": RESUME_RTOL,
              "overrides": overrides, "exit_codes": {n: r.returncode for n, r in runs.items()},
              "backend": {n: start_backend(r.output) for n, r in runs.items()}, **compare_runs(straight, resumed)}
    failed = {n: r.tail() for n, r in runs.items() if r.returncode != 0}
    if failed:
        record["failed_output"] = failed
    return record


# ---------------------------------------------------------------------------- d/e. training cells

class _NeverStop:
    """The loop's stop request, never raised (cells run a fixed number of steps)."""

    def agreed(self) -> bool:
        return False


def run_train_cell(out: Path, overrides: list[str]) -> dict:
    """One `longvivit train` process minus its finish (final checkpoint and eval, which would
    only add minutes of disk writes): the trainer's own validate, setup and step loop, so
    metrics.jsonl holds its logged mfu/tflops/memory_gb. Called in a child process by
    `bench/gpu.py --train-cell OUT -- OVERRIDES`."""
    import torch.distributed as tdist

    from longvivit.train import dist, run
    from longvivit.train.logging import memory_gb

    d = dist.read_env()
    cfg, ds_config, _ = run.validate([str(DEMO), *overrides, f"out={out}", "resume=never"], d)
    dist.setup_env(d)
    dist.bind_device(d)
    dist.init_process_group(timedelta(minutes=10))
    try:
        trainer = run.setup(cfg, ds_config, None, d)
        after_setup = memory_gb(trainer.device) * 2**30
        try:
            run.loop(trainer, _NeverStop())
        finally:
            trainer.log.close()
            trainer.loader.close()
        cuda = trainer.device.type == "cuda"
        return {"backend": tdist.get_backend(), "steps": trainer.state.step, "peak_tflops": trainer.peak,
                "peak_bytes": memory_gb(trainer.device) * 2**30, "peak_bytes_after_setup": after_setup,
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(trainer.device) if cuda else None}
    finally:
        dist.shutdown(d)


def cell_command(cell: Cell, out: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--train-cell", str(out), "--", *cell.overrides()]


_CELL_RESULTS: dict[Cell, dict] = {}  # shared by plan_memory and mfu: each cell runs once


def cell_results(cells: list[Cell], work: Path) -> dict[Cell, dict]:
    """Each cell's record ({"error"} if its process failed) and "train" metrics lines. The
    untimed cells run at once; each timed cell then runs alone, so its step times see an
    otherwise idle GPU."""
    require(TRAINER_NEEDS)
    todo = [c for c in cells if c not in _CELL_RESULTS]
    groups = [[c for c in todo if not c.timed]] + [[c] for c in todo if c.timed]
    for group in filter(None, groups):
        t0 = time.perf_counter()
        done = launch({c.name: cell_command(c, work / c.name) for c in group}, work)
        for c in group:
            _CELL_RESULTS[c] = read_cell(work / c.name, done[c.name], time.perf_counter() - t0)
    return {c: _CELL_RESULTS[c] for c in cells}


def read_cell(out: Path, finished: Finished, wall_s: float) -> dict:
    if finished.returncode != 0 or not (out / "cell.json").is_file():
        return {"error": f"exit status {finished.returncode}", "output": finished.tail()}
    return {**json.loads((out / "cell.json").read_text()), "wall_s": round(wall_s, 1),
            "train": metrics(out, "train")}


def memory_row(cell: Cell, plan_bytes: dict, result: dict) -> dict:
    """The plan against a cell's measured peak. torch.cuda.max_memory_allocated counts what
    the caching allocator handed out; of the plan's parts, `reserve` is not that: its 1 GiB
    is the CUDA context and library workspaces outside the allocator, its 10% an allowance
    for fragmentation (reserved, not allocated) and unmodelled transients. So the prediction
    compared is the sum of the other parts, within PLAN_RTOL of the measured peak."""
    row = {"cell": cell.name, "preset": cell.preset, "frames": cell.frames, "mask_ratio": cell.mask_ratio,
           "batch": cell.batch, "plan_bytes": plan_bytes, "plan_total": sum(plan_bytes.values())}
    if "error" in result:
        return {**row, "error": result["error"], "output": result["output"]}
    predicted = sum(v for k, v in plan_bytes.items() if k != "reserve")
    measured = result["peak_bytes"]
    return {**row, "predicted_allocated": predicted, "measured_peak": measured,
            "measured_after_setup": result["peak_bytes_after_setup"],
            "measured_reserved_peak": result["peak_reserved_bytes"], "backend": result["backend"],
            "predicted_over_measured": predicted / measured,
            "within": abs(predicted - measured) <= PLAN_RTOL * measured}


def plan_for(cell: Cell, gpu_mem: int) -> dict:
    """`longvivit plan` for the cell's exact run config (its Python API, one GPU)."""
    from longvivit.train.plan import make_plan

    return make_plan(str(DEMO), cell.overrides(), gpus=1, gpu_mem=gpu_mem, search=False).bytes


def check_plan_memory(work: Path) -> dict:
    """d. The planner's per-GPU prediction against max_memory_allocated of real ZeRO-3 bf16
    training steps through the engine (each cell in its own process, peaks per process)."""
    gpu_mem = torch.cuda.get_device_properties(0).total_memory
    results = cell_results(MEMORY_CELLS, work)
    return plan_memory_record([memory_row(c, plan_for(c, gpu_mem), results[c]) for c in MEMORY_CELLS])


def plan_memory_record(rows: list[dict]) -> dict:
    return {"rows": rows, "rtol": PLAN_RTOL, "gpus": 1}


def median_after_warmup(lines: list[dict], warmup: int, batch: int) -> dict:
    """Medians of the trainer's per-step scalars (log_every=1) after `warmup` steps; a step's
    seconds are its `batch` samples over its samples/s (one process, no accumulation)."""
    kept = [x for x in lines if x["step"] > warmup]
    if not kept:
        return {"steps_measured": 0}
    median = lambda key: statistics.median(x[key] for x in kept)  # noqa: E731
    return {"steps_measured": len(kept), "mfu_median": median("mfu"), "tflops_median": median("tflops"),
            "step_s_median": statistics.median(batch / x["samples_per_s"] for x in kept),
            "mfu_per_step": [x["mfu"] for x in kept]}


def matmul_tflops(n: int = 8192, reps: int = 10) -> float:
    """Best bf16 n x n matmul rate on this GPU: what the tensor cores deliver here, next to
    the spec sheet's peak that the trainer's MFU divides by."""
    device = torch.device("cuda")
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    best = min(common.timed(lambda: a @ b, device) for _ in range(reps))
    return 2 * n**3 / best / 1e12


def mfu_row(cell: Cell, result: dict, measured_peak: float) -> dict:
    row = {"cell": cell.name, "preset": cell.preset, "frames": cell.frames, "mask_ratio": cell.mask_ratio,
           "batch": cell.batch}
    if "error" in result:
        return {**row, "error": result["error"], "output": result["output"]}
    row.update(median_after_warmup(result["train"], WARMUP_STEPS, cell.batch), peak_tflops=result["peak_tflops"])
    if row["steps_measured"]:
        row["mfu_vs_matmul"] = row["tflops_median"] / measured_peak
    return row


def check_mfu(work: Path) -> dict:
    """e. MFU of the whole training step (both towers, loss, backward, AdamW, ZeRO-3, bf16)
    as the trainer logs it against the spec-sheet bf16 peak, median over steps after
    warm-up. MFU_FLOOR: a step whose matmuls ran in fp32 would run on CUDA cores, whose peak
    is ~7% of the bf16 tensor-core peak (H100/H200: 67 vs 989 TFLOP/s), so at the 50-70%
    efficiency large matmuls reach it would land at 3-5%; bf16 on tensor cores cannot be
    that slow unless something else (host stalls, a wrong kernel) dominates the step."""
    results = cell_results(MFU_CELLS, work)
    measured_peak = matmul_tflops()
    return mfu_record([mfu_row(c, results[c], measured_peak) for c in MFU_CELLS], measured_peak)


def mfu_record(rows: list[dict], matmul: float) -> dict:
    return {"rows": rows, "matmul_tflops": matmul, "warmup_steps": WARMUP_STEPS, "mfu_floor": MFU_FLOOR}


# ---------------------------------------------------------------------------- c. attention

ATTENTION_CELL = dict(preset="B", frames=16, image_size=224, batch=4)  # 1,568 tokens per clip
FUSED = ("flash", "efficient", "cudnn")


def attention_backend(name: str) -> str | None:
    """Which scaled_dot_product_attention implementation a CUDA kernel or aten op belongs to:
    flash (FlashAttention), efficient (cutlass fmha, "mem-efficient"), cudnn, math (the
    unfused fallback: its softmax kernels; the video tower has no other softmax), or None."""
    n = name.lower()
    if "cudnn" in n and any(k in n for k in ("sdpa", "fmha", "flash", "attention")):
        return "cudnn"
    if "flash" in n:
        return "flash"
    if any(k in n for k in ("fmha", "efficient_attention", "mem_eff")):
        return "efficient"
    if "attention_math" in n or "softmax" in n:
        return "math"
    return None


def classify(events: list[tuple[str, float]]) -> dict:
    """(name, device microseconds) pairs -> per backend: count, total us, a few names."""
    out: dict[str, dict] = {}
    for name, us in events:
        kind = attention_backend(name)
        if kind is not None:
            entry = out.setdefault(kind, {"count": 0, "time_us": 0.0, "names": []})
            entry["count"] += 1
            entry["time_us"] += us
            if name not in entry["names"] and len(entry["names"]) < 3:
                entry["names"].append(name)
    return out


def profile_step(step: Callable[[], None], device: torch.device) -> tuple[list, list]:
    """(kernels, ops) of one call of `step`: CUDA kernels as (name, us), aten ops as (name, 0)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        common.sync(device)
    kernels = [(e.name, e.device_time_total) for e in prof.events() if e.device_type == DeviceType.CUDA]
    ops = [(e.name, 0.0) for e in prof.events() if e.device_type == DeviceType.CPU and e.name.startswith("aten::")]
    return kernels, ops


def tower_step(tower: torch.nn.Module, video: torch.Tensor, probe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward + backward of the video tower on a fixed scalar (embeddings . probe): returns
    the float embeddings and the flattened float gradient of every parameter."""
    tower.zero_grad(set_to_none=True)
    emb = tower(video)  # (B, E)
    (emb.float() * probe).sum().backward()
    grads = torch.cat([p.grad.float().flatten() for p in tower.parameters()])
    return emb.detach().float(), grads


@contextmanager
def strict_fp32():
    """No TF32 in matmuls or convolutions: the fp32 reference is then fp32 throughout."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def precision_agreement(emb32, emb16, grad32, grad16) -> dict:
    """Per-clip embedding cosines and the whole gradient's cosine and norm, in float64: a
    float32 dot product over ~10^8 gradient entries is itself off by about a percent."""
    cos = torch.nn.functional.cosine_similarity
    grad32, grad16 = grad32.double(), grad16.double()
    n32, n16 = grad32.norm().item(), grad16.norm().item()
    return {"embedding_cosine_min": cos(emb32.double(), emb16.double(), dim=1).min().item(),
            "grad_cosine": cos(grad32, grad16, dim=0).item(), "grad_norm_fp32": n32, "grad_norm_bf16": n16,
            "grad_norm_rel_diff": abs(n16 - n32) / n32}


def build_tower(preset: str, frames: int, image_size: int, device: torch.device) -> torch.nn.Module:
    from longvivit.model import build_model, model_config

    torch.manual_seed(0)
    cfg = model_config(preset, [f"video.frames={frames}", f"video.image_size={image_size}"])
    return build_model(cfg).video.to(device).train()


def check_attention(work: Path, device: torch.device | None = None) -> dict:
    """c. Which SDPA kernels the video tower's bf16 forward + backward runs (flash, cutlass
    fmha or cuDNN, never the math fallback), and bf16 against fp32 on the same weights and
    clip. Thresholds: bf16 keeps 8 significant bits (rounding ~0.2% per op), and tensor cores
    accumulate in fp32 as oneDNN does on CPU, where this comparison of the B tower (4 frames,
    112 px, during development) gave embedding cosines 0.99996, gradient cosine 0.99995 and
    norms 0.18% apart. A wrong cast, an overflow or a broken backward kernel gives cosines
    far below 0.9. EMBED_COSINE_MIN, GRAD_COSINE_MIN and GRAD_NORM_RTOL leave the GPU's
    different kernels a 10x-100x margin over that and still catch those."""
    device = device or torch.device("cuda")
    c = ATTENTION_CELL
    fp32 = build_tower(c["preset"], c["frames"], c["image_size"], device)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    g = torch.Generator(device=device).manual_seed(0)
    video = torch.randint(0, 256, (c["batch"], c["frames"], c["image_size"], c["image_size"], 3),
                          dtype=torch.uint8, device=device, generator=g)
    probe = torch.randn(fp32.head.out_features, device=device, generator=g)
    tower_step(bf16, video, probe)  # warm-up: lazy CUDA modules, cuBLAS/cuDNN handles
    kernels, ops = profile_step(lambda: tower_step(bf16, video, probe), device)
    emb16, grad16 = tower_step(bf16, video, probe)
    with strict_fp32():
        emb32, grad32 = tower_step(fp32, video, probe)
    return attention_record(fp32.cfg.visible_tokens(0.0), kernels, ops,
                            precision_agreement(emb32, emb16, grad32, grad16))


def attention_record(tokens: int, kernels: list, ops: list, agreement: dict) -> dict:
    found = classify(kernels)
    return {**ATTENTION_CELL, "tokens": tokens, "dtype": "bfloat16", "kernels": found, "ops": classify(ops),
            "fused": any(k in found for k in FUSED), "math": "math" in found, "bf16_vs_fp32": agreement,
            "embed_cosine_min": EMBED_COSINE_MIN, "grad_cosine_min": GRAD_COSINE_MIN,
            "grad_norm_rtol": GRAD_NORM_RTOL}


# ---------------------------------------------------------------------------- b. decode

DECODE = dict(videos=48, video_frames=16, size=224, frames=16, batch=8, workers=4, steps=12)
DECODE_NEEDS = ("nvidia.dali", "av", "streaming", "sentencepiece")


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio of two uint8 arrays in dB (inf when equal)."""
    import numpy as np

    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def decode_data(work: Path) -> tuple[Path, str]:
    """The synthetic benchmark's videos (train + val in one manifest) and a tokenizer."""
    from longvivit.data import train_tokenizer, write_benchmark

    d = DECODE
    write_benchmark(work / "synth", videos=d["videos"], frames=d["video_frames"], size=d["size"], seed=0)
    manifest = work / "synth" / "all.jsonl"
    manifest.write_text((work / "synth" / "train.jsonl").read_text() + (work / "synth" / "val.jsonl").read_text())
    return manifest, train_tokenizer([manifest], work / "tok")


def codec_shards(manifest: Path, out: Path, codec: str) -> Path:
    from longvivit.data import write_shards
    from longvivit.data.shards import ShardOptions

    summary = write_shards(manifest, out, ShardOptions(size=DECODE["size"], codec=codec),
                           workers=min(8, os.cpu_count() or 1), progress=False)
    if summary["skipped"]:
        raise RuntimeError(f"{codec} shards: {summary['skipped']} videos rejected ({summary['reasons']})")
    return out


def decode_psnr(shards: Path, device: torch.device) -> dict:
    """DALI's decoder ("mixed", i.e. NVDEC, on a CUDA `device`) on every clip of `shards`
    against PyAV on the same bytes at the same frames (centred crop = the whole square
    frame, no resize)."""
    import decode as bench_decode

    from longvivit.data.decode import VideoDecoder
    from longvivit.data.video import frames_at

    samples = bench_decode.load_samples(shards)
    plans = bench_decode.plans_for(samples, DECODE["frames"])
    decoder = VideoDecoder(DECODE["batch"], DECODE["size"], device)
    scores, failed, errors = [], 0, []
    for i in range(0, len(samples), DECODE["batch"]):
        chunk = samples[i:i + DECODE["batch"]]
        video, good, error = decoder.decode([s["video"] for s in chunk], plans[i:i + DECODE["batch"]])
        failed += len(chunk) - len(good)
        errors += [error] if error else []
        for clip, j in zip(video.cpu().numpy() if video is not None else [], good):
            s = chunk[j]
            reference = frames_at(s["video"], [f / float(s["fps"]) for f in plans[i + j].frames])
            scores.append(psnr(clip, reference))
    return {"clips": len(samples), "decode_failures": failed, "errors": errors[:3],
            "psnr_min_db": min(scores, default=float("nan")),
            "psnr_mean_db": statistics.mean(scores) if scores else float("nan")}


def loader_vs_step(shards: Path, tokenizer: str, device: torch.device) -> dict:
    """The loader (streaming workers + DALI mixed in its prefetch thread) feeding a plain bf16
    step of the B model, timed as the trainer times it (run.batches + StepTimer): data_wait
    is the fraction of the wall time spent waiting for the next batch. The step has no
    ZeRO-3 hooks, so it is faster than the trainer's: a conservative test of the loader."""
    import decode as bench_decode

    from longvivit.data import DataConfig, build_loader
    from longvivit.model import build_model, model_config
    from longvivit.config import load_config
    from longvivit.train.logging import StepTimer
    from longvivit.train.run import batches

    d = DECODE
    cfg = load_config(DataConfig, dict(train=str(shards), val=str(shards), tokenizer=tokenizer, frames=d["frames"],
                                       image_size=d["size"], batch_size=d["batch"], num_workers=d["workers"],
                                       text_length=32))
    model = build_model(model_config("B", [f"video.frames={d['frames']}", f"video.image_size={d['size']}"]))
    model = model.to(device, torch.bfloat16).train()
    optimizer = common.adamw(model.parameters())
    loader = build_loader(cfg, "train", device, 0, 1, training=True)
    try:
        timer = StepTimer()
        stream = batches(loader, timer)
        first = next(stream)
        bench_decode.train_step(model, optimizer, first)  # warm-up: AdamW state, kernels
        common.sync(device)
        timer.lap()
        for _ in range(d["steps"]):
            bench_decode.train_step(model, optimizer, next(stream))
            common.sync(device)
        seconds, waited = timer.lap()
        step_s = common.median([common.timed(lambda: bench_decode.train_step(model, optimizer, first), device)
                                for _ in range(5)])
        failures = loader.decode_failures
    finally:
        loader.close()
    return {"steps": d["steps"], "batch": d["batch"], "data_wait": waited / seconds,
            "fed_samples_per_s": d["steps"] * d["batch"] / seconds, "step_samples_per_s": d["batch"] / step_s,
            "decode_failures": failures}


def check_decode(work: Path) -> dict:
    """b. DALI "mixed" decoding of H.264 and VP9 shards against PyAV on the same bytes, and
    the loader against the training step. PSNR_MIN_DB: on CPU, PyAV with video.RGB_FLAGS
    matches DALI's decoder bit for bit (tests/test_data_decode.py), but NVDEC converts YUV to
    RGB with its own kernels, which may interpolate chroma differently at the synthetic
    shapes' sharp colour edges (PyAV without full chroma interpolation differed from DALI's
    CPU decoder by up to 50 levels there: 37-41 dB); a neighbouring frame scores 12-21 dB and
    a colour-matrix or range mix-up far below 35. The record holds the measured PSNR, which
    the first GPU run confirms or tightens."""
    missing = missing_modules(DECODE_NEEDS)
    if missing:
        return skipped(f"{', '.join(missing)} not importable here (DALI mixed decoding, PyAV references "
                       "and the shard loader need them)")
    manifest, tokenizer = decode_data(work)
    shards = {codec: codec_shards(manifest, work / codec, codec) for codec in ("h264", "vp9")}
    device = torch.device("cuda")
    return decode_record({codec: decode_psnr(path, device) for codec, path in shards.items()},
                         loader_vs_step(shards["h264"], tokenizer, device))


def decode_record(codecs: dict, feed: dict) -> dict:
    return {**DECODE, "codecs": codecs, "feed": feed, "psnr_min": PSNR_MIN_DB}


# ---------------------------------------------------------------------------- main

CHECKS: dict[str, Callable[[Path], dict]] = {
    "attention": check_attention, "trainer": check_trainer, "plan_memory": check_plan_memory,
    "mfu": check_mfu, "decode": check_decode,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu"), help="folder for the JSON records")
    p.add_argument("--only", nargs="+", choices=list(CHECKS), help="run only these checks")
    p.add_argument("--train-cell", metavar="DIR", help="(internal) run one training cell into DIR")
    p.add_argument("overrides", nargs="*", help="(with --train-cell) the run config overrides")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.overrides and not args.train_cell:
        raise SystemExit(f"bench/gpu.py: overrides {args.overrides} only go with --train-cell")
    if args.train_cell:
        write_json(Path(args.train_cell) / "cell.json", run_train_cell(Path(args.train_cell), args.overrides))
        return 0
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": NO_CUDA, "out": args.out}), flush=True)
        return 0
    out = Path(args.out)
    records = {name: run_check(name, out) for name in args.only or CHECKS}
    print(json.dumps({"out": str(out), "checks": {n: status(r) for n, r in records.items()},
                      "wall_s": {n: r["wall_s"] for n, r in records.items()}}), flush=True)
    return 1 if any("error" in r for r in records.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
