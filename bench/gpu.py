"""The GPU acceptance checks: what the CPU suite cannot see, measured on one CUDA device.

    python3 bench/gpu.py --out bench/results/gpu [--only attention trainer ...]
    make gpu-check           (the same checks through pytest, tests/gpu/, which asserts them)

Each check is one function writing one JSON file into --out; summary.json records the GPU,
the torch / CUDA / NCCL / deepspeed versions, the date and the command. Without CUDA the
script prints a JSON line saying it skipped, writes nothing and exits 0; a check whose
libraries are missing (DALI, PyAV) records {"skipped": reason}. A check that raises records
{"error": ...} and the others still run (device time is scarce); the exit status is then 1.

Budgets on one H100 or H200, about 7.5 minutes in all (each `longvivit train` process pays
~25-35 s of imports, NCCL and ZeRO set-up before its first step; steps take 0.05-0.5 s;
training cells started together set up at once and take turns on the GPU for their steps,
gpu_turn):

  attention      ~20 s   SDPA kernels of the B video tower in bf16 under torch.profiler, and
                         bf16 against fp32 on the same weights and clip
  trainer        ~100 s  `longvivit train` ZeRO-3 bf16 over NCCL at world size 1: a straight
                         20-step run and a run stopped at step 10 (the two at once), then the
                         stopped run resumed to 20; losses and batch indices compared
  plan_memory    ~60 s   `longvivit plan` against torch.cuda.max_memory_allocated of real
                         steps, one process per cell (the allocator's peak is per process)
  mfu            ~5 s    the trainer's logged MFU of the timed cells above, median after
                         warm-up, next to a measured bf16 matmul peak
  decode         ~130 s  DALI "mixed" H.264/VP9 against PyAV, the loader against the step,
                         and the trainer's data_wait on GPU-decoded shards (short_B16's real
                         form); ~0 s when DALI or PyAV is absent (skipped)
  shipped        ~80 s   every shipped GPU config's real form (train/configs: short_B16,
                         short_L16, long_L256, g_1b) training at micro-batch 2: step time,
                         tokens/s, peak memory against the plan, host syncs per micro-batch
  shipped_model  ~40 s   the same configs' models outside the engine: SDPA kernels of the
                         video tower with and without the CLS key copies, host syncs by
                         real_frames
  flash          ~20 s   every config's video tower at its real size (2 blocks, 1 clip, bf16):
                         forward + backward with SDPA held to FlashAttention or cuDNN, and
                         with only the memory-efficient kernel (for information)
  two_gpu        ~0 s    skipped below 2 GPUs; ~100 s with 2: two NCCL ranks, then the resume
                         on one GPU
  packed         ~30 s   a padded batch of the B tower in bf16 (8 clips of 64 and 16 frames):
                         packed (varlen attention) against masked rows, kernels, agreement
                         with fp32, host syncs and step time (an estimate: not run yet)
  ulysses        ~0 s    skipped below 2 GPUs; ~60 s with 2: a sequence group of 2 GPUs
                         (parallel.sequence=2) against one GPU alone, losses step by step
  compile        ~90 s   the MFU check's B cell again with model.compile=true (compiled
                         blocks): MFU and step time against eager, per-step losses (an
                         estimate: not run yet; ~45 s when the mfu check ran first)

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

import common

ROOT = Path(common.REPO)
CONFIGS = ROOT / "longvivit" / "configs"
DEMO = CONFIGS / "demo.yaml"  # its shard paths are ignored by data.source=synthetic
NO_CUDA = "no CUDA device (torch.cuda.is_available() is False): the GPU acceptance suite needs one"

# Acceptance thresholds (tests/gpu asserts them; the records carry them for the report).
RESUME_RTOL = 1e-3  # resumed vs straight per-step loss, relative (see check_trainer)
PSNR_MIN_DB = 35.0  # DALI mixed vs PyAV on the same bytes (see check_decode)
EMBED_COSINE_MIN = 0.99  # bf16 vs fp32 embeddings, per clip (see check_attention)
GRAD_COSINE_MIN = 0.99  # bf16 vs fp32 gradient of all parameters, flattened
GRAD_NORM_RTOL = 0.02  # bf16 vs fp32 gradient norm
PLAN_RTOL = 0.10  # plan's allocated parts vs max_memory_allocated, relative to the measured
MFU_FLOOR = 0.05  # below this the step cannot have run on bf16 tensor cores (see check_mfu)
COMPILE_MFU_MIN = 0.95  # compiled blocks' MFU over eager's, at least (see check_compile)
COMPILE_LOSS_RTOL = 2e-2  # compiled vs eager per-step loss in bf16, relative (see check_compile)

# Every trainer process: synthetic data on the device, ZeRO-3 in bf16, 224 px, a learning
# rate that is flat after 5 warm-up steps (min_lr_ratio 1), so the schedule does not depend
# on `steps` and a run stopped early shares every step's rate with the straight run.
BASE = ["data.source=synthetic", f"ds_config={ROOT / 'longvivit' / 'configs' / 'ds' / 'zero3.json'}", "precision=bf16",
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
    timed: bool = False  # its step times feed the MFU check (every cell steps alone on the GPU: gpu_turn)
    compiled: bool = False  # model.compile=true: each transformer block compiled (longvivit/train/compile.py)

    @property
    def name(self) -> str:
        return f"{self.preset}{self.frames}f{round(self.mask_ratio * 100)}" + ("c" if self.compiled else "")

    def overrides(self) -> list[str]:
        return [*BASE, f"model.preset={self.preset}", f"model.video.frames={self.frames}",
                f"model.video.mask_ratio={self.mask_ratio}", f"data.batch_size={self.batch}",
                f"steps={self.steps}", *(["model.compile=true"] if self.compiled else [])]


TIMED_STEPS = WARMUP_STEPS + 10
TRAINER_CELL = Cell("B", 16, 0.0, 8, steps=20)  # ShortViViT's shape; checkpoint and stop at 10
MEMORY_CELLS = [Cell("B", 16, 0.0, 8, TIMED_STEPS, timed=True), Cell("B", 16, 0.75, 8, 3),
                Cell("B", 64, 0.0, 4, 3), Cell("B", 64, 0.75, 4, 3),
                Cell("L", 256, 0.75, 2, TIMED_STEPS, timed=True)]
MFU_CELLS = [c for c in MEMORY_CELLS if c.timed]
COMPILE_CELLS = [MFU_CELLS[0], replace(MFU_CELLS[0], compiled=True)]  # eager (the MFU cell itself), compiled


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


# ---------------------------------------------------------------------------- host syncs

SYNC_WARNING = "called a synchronizing CUDA operation"  # torch.cuda.set_sync_debug_mode("warn")'s message
PASSED_THROUGH = {"warnings", "_py_warnings", "contextlib", "torch"}  # packages whose frames are no origin
HARNESS = {__name__, "__main__"}  # this file, imported or run: the origin "harness"


class SyncCounter:
    """The host syncs in a block, each with where it came from: torch.cuda.set_sync_debug_mode
    ("warn") turns every synchronizing CUDA call (a device value read on the host, a blocking
    copy, a stream synchronize) into a warning, caught here with the Python stack at that
    point. Syncs inside autograd's C++ backward surface at the end of .backward(), at its
    caller. Without CUDA (set_mode None) nothing is counted and `active` is False."""

    def __init__(self, set_mode: Callable[[str], None] | None | str = "cuda"):
        if set_mode == "cuda":
            set_mode = torch.cuda.set_sync_debug_mode if torch.cuda.is_available() else None
        self.set_mode, self.active = set_mode, set_mode is not None
        self.sites: list[dict] = []

    def __enter__(self) -> SyncCounter:
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()  # restores the filters and showwarning on exit
        warnings.filterwarnings("always", message=SYNC_WARNING)
        self._show = warnings.showwarning
        warnings.showwarning = self._seen
        if self.set_mode is not None:
            self.set_mode("warn")
        return self

    def __exit__(self, *exc) -> None:
        if self.set_mode is not None:
            self.set_mode("default")
        self._catch.__exit__(*exc)

    def _seen(self, message, category, filename, lineno, file=None, line=None) -> None:
        if str(message).startswith(SYNC_WARNING):
            self.sites.append(sync_site(sys._getframe(1)))
        else:
            self._show(message, category, filename, lineno, file, line)


def sync_site(frame) -> dict:
    """A sync's origin from the stack where it was raised: `at`, the innermost frame outside
    torch and warnings ("module:line function"); `origin`, what that frame belongs to (model,
    train, data: longvivit's folders; harness: this file, e.g. the .backward() it called;
    else the top package, e.g. deepspeed); `via`, the innermost longvivit frame when `at`
    is another package's."""
    frames = []
    while frame is not None:
        frames.append((frame.f_globals.get("__name__", "?"), frame.f_lineno, frame.f_code.co_name))
        frame = frame.f_back
    outside = [f for f in frames if f[0].split(".")[0] not in PASSED_THROUGH]
    ours = [f for f in frames if f[0].startswith("longvivit.")]
    at = outside[0] if outside else frames[0]
    return {"origin": sync_origin(at[0]), "at": f"{at[0]}:{at[1]} {at[2]}",
            "via": f"{ours[0][0]}:{ours[0][1]} {ours[0][2]}" if ours and ours[0] != at else None}


def sync_origin(module: str) -> str:
    if module in HARNESS:
        return "harness"
    parts = module.split(".")
    return parts[1] if parts[0] == "longvivit" and len(parts) > 1 else parts[0]


def sync_table(sites: list[dict]) -> list[dict]:
    """Sites counted: one row per (origin, at, via), most frequent first."""
    counts: dict[tuple, int] = {}
    for s in sites:
        key = (s["origin"], s["at"], s["via"])
        counts[key] = counts.get(key, 0) + 1
    return [{"origin": o, "at": a, "via": v, "count": n}
            for (o, a, v), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][1]))]


def counter_control(device: torch.device) -> int | None:
    """Syncs the counter sees in one `.item()` of a device tensor: 1 when it works (a count
    of 0 elsewhere then means none), None where it cannot count (no CUDA)."""
    x = torch.ones(1, device=device)
    with SyncCounter() as c:
        x.item()
    return len(c.sites) if c.active else None


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


def launch(commands: dict[str, list[str]], work: Path, timeout: float = 300, env: dict | None = None,
           turns: Path | None = None, meanwhile: Callable[[], object] | None = None) -> dict[str, Finished]:
    """Start every command at once (output to work/NAME.log, `env` added to lone_env()), call
    `meanwhile`, wait for all of them; a command still running `timeout` seconds after the
    start is killed with its process group. turns: the folder through which training cells
    take turns on the GPU (gpu_turn): once every command has said it is ready there or has
    ended, `go` is written."""
    started = {}
    for name, cmd in commands.items():
        log = open(work / f"{name}.log", "w")
        started[name] = (subprocess.Popen(cmd, cwd=work, env={**lone_env(), **(env or {})}, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True), log)
    deadline = time.monotonic() + timeout
    if meanwhile is not None:
        meanwhile()
    while any(proc.poll() is None for proc, _ in started.values()) and time.monotonic() < deadline:
        if turns is not None and all_ready(turns, {n: proc for n, (proc, _) in started.items()}):
            (turns / "go").touch()
        time.sleep(0.2)
    done = {}
    for name, (proc, log) in started.items():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        done[name] = Finished(proc.returncode, (work / f"{name}.log").read_text(errors="replace"))
    return done


def all_ready(turns: Path, procs: dict[str, subprocess.Popen]) -> bool:
    """Every process has written turns/ready.NAME or has ended (a cell that died in its
    set-up holds no one up)."""
    return all((turns / f"ready.{name}").exists() or proc.poll() is not None for name, proc in procs.items())


TURN_WAIT_S = 600.0  # the longest a set-up cell waits for the others (then it goes on; recorded)


@contextmanager
def gpu_turn(turns: Path | None, name: str):
    """The GPU to this process alone for the block, among cells launched together with
    `turns` (launch): say ready, wait until every cell is set up (`go`: no other is still
    building its model or engine), then hold turns/lock while the block runs. Their set-ups
    (process start, imports, NCCL, model build: ~30 s each) overlap; their measured steps do
    not. Yields a dict that records the seconds waited."""
    waited = {"waited_s": 0.0, "go": True}
    if turns is None:
        yield waited
        return
    import fcntl

    t0 = time.monotonic()
    (turns / f"ready.{name}").touch()
    while not (turns / "go").exists():
        if time.monotonic() - t0 > TURN_WAIT_S:
            waited["go"] = False
            break
        time.sleep(0.1)
    with open(turns / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        waited["waited_s"] = round(time.monotonic() - t0, 1)
        yield waited


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
    return [sys.executable, "-m", "longvivit.cli", "train", str(DEMO), *overrides, f"out={out}"]


def start_backend(text: str) -> str | None:
    """The process-group backend a run's {"event": "start"} line reports, or None."""
    starts = events(text, "start")
    return starts[0]["backend"] if starts else None


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


def run_train_cell(out: Path, overrides: list[str], config: Path = DEMO, turns: Path | None = None,
                   sync_steps: int = 0) -> dict:
    """One `longvivit train` process minus its finish (final checkpoint and eval, which would
    only add minutes of disk writes): the trainer's own validate, setup and step loop, so
    metrics.jsonl holds its logged mfu/tflops/memory_gb. Called in a child process by
    `bench/gpu.py --train-cell OUT [--config C] [--turns DIR] [--sync-steps N] -- OVERRIDES`.
    turns: take a turn on the GPU with the cells launched beside it (gpu_turn) for the
    steps; sync_steps: the last N steps run under SyncCounter (train_syncs)."""
    import torch.distributed as tdist

    from longvivit.train import trainer as run
    from longvivit.train.metrics import memory_gb
    from longvivit.train.trainer import Trainer

    make_init_file(config, overrides)
    with Trainer.from_argv([str(config), *overrides, f"out={out}", "resume=never"]) as trainer:
        trainer.setup()
        after_setup = memory_gb(trainer.device) * 2**30
        syncs = {"control": counter_control(trainer.device), "steps": [], "log_steps": []}
        with gpu_turn(turns, out.name) as turn, train_syncs(run, trainer.cfg.steps - sync_steps, syncs):
            run.loop(trainer, _NeverStop())
            peaks = cell_peaks(trainer.device)
        return {"backend": tdist.get_backend(), "steps": trainer.state.step, "peak_tflops": trainer.peak,
                "peak_bytes_after_setup": after_setup, **peaks, "turn": turn,
                **({"syncs": syncs} if sync_steps else {})}


def cell_peaks(device: torch.device) -> dict:
    """The process's allocator peaks; then its cached blocks go back to the GPU for the
    cells still to take their turn."""
    from longvivit.train.metrics import memory_gb

    cuda = device.type == "cuda"
    peaks = {"peak_bytes": memory_gb(device) * 2**30,
             "peak_reserved_bytes": torch.cuda.max_memory_reserved(device) if cuda else None}
    if cuda:
        torch.cuda.empty_cache()
    return peaks


@contextmanager
def train_syncs(run_module, first_step: int, syncs: dict):
    """From step `first_step` + 1 on, run.train_step and run.log_step as the loop calls them,
    each under a SyncCounter: per step, the micro-batches it drew, where each one's
    real_frames lay (the model reads them back when they are on the GPU), and the sync
    sites; the step's logging apart (one .item() and a collective per step)."""
    step_fn, log_fn = run_module.train_step, run_module.log_step

    def train_step(r, stream, *args, **kwargs):
        if r.state.step < first_step:
            return step_fn(r, stream, *args, **kwargs)
        devices = []

        def noted():  # not `yield from`: closing this must not close the loop's stream
            for batch in stream:
                devices.append(batch["real_frames"].device.type)
                yield batch

        with SyncCounter() as counter:
            out = step_fn(r, noted(), *args, **kwargs)
        syncs["steps"].append({"step": r.state.step + 1, "source": run_module.step_source(r),
                               "real_frames_on": devices, "sites": sync_table(counter.sites)})
        return out

    def log_step(r, *args, **kwargs):
        if r.state.step <= first_step:
            return log_fn(r, *args, **kwargs)
        with SyncCounter() as counter:
            out = log_fn(r, *args, **kwargs)
        syncs["log_steps"].append({"step": r.state.step, "sites": sync_table(counter.sites)})
        return out

    run_module.train_step, run_module.log_step = train_step, log_step
    try:
        yield syncs
    finally:
        run_module.train_step, run_module.log_step = step_fn, log_fn


def make_init_file(config: Path, overrides: list[str]) -> None:
    """An init=open_clip:PATH that shipped_init pointed into this run's scratch folder (no
    real checkpoint is on a GPU node): an open_clip CLIP of the config's shape with random
    weights, made here by the local form's maker (longvivit/train/local.py) before validate reads it."""
    from longvivit.train.config import load_run_config

    cfg = load_run_config(config, overrides=overrides)
    kind, _, path = cfg.init.partition(":")
    if kind == "open_clip" and MADE_HERE in Path(path).parts and not Path(path).is_file():
        from longvivit.train.local import make_open_clip

        make_open_clip(cfg, Path(path))


def cell_command(cell: Cell, out: Path, turns: Path | None = None) -> list[str]:
    return train_cell_command(out, cell.overrides(), turns=turns)


def train_cell_command(out: Path, overrides: list[str], config: Path = DEMO, turns: Path | None = None,
                       sync_steps: int = 0) -> list[str]:
    extra = ([f"--config={config}"] if config != DEMO else []) + ([f"--turns={turns}"] if turns else []) \
        + ([f"--sync-steps={sync_steps}"] if sync_steps else [])
    return [sys.executable, str(Path(__file__).resolve()), "--train-cell", str(out), *extra, "--", *overrides]


_CELL_RESULTS: dict[Cell, dict] = {}  # shared by plan_memory and mfu: each cell runs once


def cell_results(cells: list[Cell], work: Path) -> dict[Cell, dict]:
    """Each cell's record ({"error"} if its process failed) and "train" metrics lines. The
    cells start at once and take turns on the GPU for their steps (gpu_turn), so a timed
    cell's step times see an otherwise idle GPU."""
    require(TRAINER_NEEDS)
    todo = [c for c in cells if c not in _CELL_RESULTS]
    if todo:
        turns = work / "turns"
        turns.mkdir(exist_ok=True)
        t0 = time.perf_counter()
        done = launch({c.name: cell_command(c, work / c.name, turns) for c in todo}, work, turns=turns)
        for c in todo:
            _CELL_RESULTS[c] = read_cell(work / c.name, done[c.name], time.perf_counter() - t0)
    return {c: _CELL_RESULTS[c] for c in cells}


def read_cell(out: Path, finished: Finished, wall_s: float) -> dict:
    if finished.returncode != 0 or not (out / "cell.json").is_file():
        return {"error": f"exit status {finished.returncode}", "output": finished.tail()}
    return {**json.loads((out / "cell.json").read_text()), "wall_s": round(wall_s, 1),
            "train": metrics(out, "train"), "step": metrics(out, "step")}


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

# 112 clips: the loader's feed (1 + 12 batches of 8) and the trainer's (FEED) stay inside one
# epoch, whose start (new DataLoader workers, a new streaming iterator) is not steady state
DECODE = dict(videos=112, video_frames=16, size=224, frames=16, batch=8, workers=4, steps=12)
DECODE_NEEDS = ("nvidia.dali", "av", "streaming", "sentencepiece")
# The trainer on the H.264 shards, GPU-decoded: short_B16's real form (its step is the cheapest
# per clip of the shipped configs, so it asks the most of the loader), its batch cut to 8.
FEED = dict(config="short_B16", batch=8, warmup=2, steps=12)
FEED_NEEDS = ("open_clip",)  # short_B16's tokenizer, beside DECODE_NEEDS and TRAINER_NEEDS
# The most of the trainer's step time spent waiting for batches (see trainer_feed): with
# `prefetch` batches decoded ahead on the loader's thread, the step waits only when decoding a
# batch takes longer than a step, and then waits 1 - step/decode of the time; 0.2 lets GPU
# decoding (NVDEC, parsing and resizing beside the step) take up to 1.25 x the B16 step of the
# same clips before it fails, i.e. the shipped configs lose at most a fifth of the GPU to data.
FEED_WAIT_MAX = 0.2


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
    from longvivit.data.prepare.shards import ShardOptions

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

    from longvivit.data.load.decode import VideoDecoder
    from longvivit.data.prepare.video import frames_at

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

    from longvivit.config import load_config
    from longvivit.data import DataConfig, build_loader
    from longvivit.model import build_model, model_config
    from longvivit.train.metrics import StepTimer
    from longvivit.train.trainer import batches

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
                         loader_vs_step(shards["h264"], tokenizer, device), trainer_feed(shards["h264"], work))


def decode_record(codecs: dict, feed: dict, trainer: dict | None = None) -> dict:
    return {**DECODE, "codecs": codecs, "feed": feed, "trainer_feed": trainer, "psnr_min": PSNR_MIN_DB}


def feed_overrides(shards: Path) -> list[str]:
    """FEED's config on `shards` (train and val), without its image steps (no image shards
    here), at FEED's batch: the rest (frames, sampling, workers, prefetch, ds_config,
    precision) as shipped."""
    return [f"data.train={shards}", f"data.val={shards}", "data.images.proportion=0",
            f"data.batch_size={FEED['batch']}", f"steps={FEED['steps']}", "log_every=1", "progress=false",
            "eval_every=0", "checkpoint_every=0", "init=''"]


def trainer_feed(shards: Path, work: Path) -> dict:
    """The trainer's own data_wait (the fraction of each step's wall time spent waiting for
    its batch, logged per step) on GPU-decoded shards: one `longvivit train` process of
    FEED's config (run_train_cell), after FEED's warm-up steps (worker start-up, DALI's
    pipeline build)."""
    missing = missing_modules([*FEED_NEEDS, *TRAINER_NEEDS])
    if missing:
        return skipped(f"{', '.join(missing)} not importable here (the trainer on {FEED['config']} needs them)")
    overrides = feed_overrides(shards)
    out = work / "feed"
    t0 = time.perf_counter()
    done = launch({"feed": train_cell_command(out, overrides, CONFIGS / f"{FEED['config']}.yaml")}, work)
    return feed_record(overrides, read_cell(out, done["feed"], time.perf_counter() - t0))


def feed_record(overrides: list[str], result: dict) -> dict:
    """data_wait over the steps after the warm-up, weighted by each step's seconds (its
    batch over its samples/s): waited seconds over step seconds."""
    record = {"config": FEED["config"], "overrides": overrides, "batch": FEED["batch"], "warmup": FEED["warmup"],
              "steps": FEED["steps"], "data_wait_max": FEED_WAIT_MAX}
    if "error" in result:
        return {**record, "error": result["error"], "output": result["output"]}
    lines = [x for x in result["train"] if x["step"] > FEED["warmup"]]
    seconds = [FEED["batch"] / x["samples_per_s"] for x in lines]
    waited = sum(x["data_wait"] * s for x, s in zip(lines, seconds))
    return {**record, "backend": result["backend"], "steps_done": result["steps"],
            "steps_measured": [x["step"] for x in lines], "data_wait_per_step": [x["data_wait"] for x in lines],
            "data_wait": waited / sum(seconds) if lines else float("nan"),
            "step_s_median": statistics.median(seconds) if lines else float("nan"),
            "decode_failures": result["train"][-1]["decode_failures"] if result["train"] else None}


# ---------------------------------------------------------------------------- f. the shipped configs

# Each shipped GPU config in its real form (model, ds_config, precision, grad_accum, masking,
# freezing, checkpointing, images) at a reduced micro-batch on synthetic clips on the GPU:
# SHIPPED_BATCH clips (a negative for every positive), SHIPPED_IMAGE_BATCH images on the
# image steps. 13 steps: with images on a fifth of them, steps 3, 8 and 13 are image steps
# (longvivit/train/sources.py). Step times leave out each video source's first
# SHIPPED_WARMUP steps and each image source's first step (new shapes: allocator growth,
# kernel selection); the last SHIPPED_SYNC_STEPS steps (a video and an image step) run
# under SyncCounter and are left out too (warn mode costs time).
SHIPPED_BATCH, SHIPPED_IMAGE_BATCH = 2, 16
SHIPPED_STEPS, SHIPPED_WARMUP, SHIPPED_SYNC_STEPS = 13, 3, 2
MADE_HERE = "made-by-gpu-suite"  # the scratch folder of init files made for a run (make_init_file)
SYNC_REPEATS = 2  # micro-batches counted per real_frames variant (check_shipped_model)
# Host syncs per micro-batch the model may make, by where real_frames lies: none unless it
# is on the GPU, where which clips are whole is read back once (VideoEncoder.real_slices).
MODEL_SYNCS_ALLOWED = {"none": 0, "host_whole": 0, "host_padded": 0, "device_whole": 1, "device_padded": 1}


def shipped_configs() -> list[Path]:
    """*.yaml written for GPUs: their ds_config says "_accelerator": "cuda"
    (without that entry: a ds_config not named *_cpu.json)."""
    from longvivit.train.config import load_ds_json, load_run_config

    found = []
    for path in sorted(CONFIGS.glob("*.yaml")):
        ds_config = load_run_config(path).ds_config
        meant = load_ds_json(ds_config).get("_accelerator") or ("cpu" if Path(ds_config).stem.endswith("_cpu")
                                                               else "cuda")
        if meant == "cuda":
            found.append(path)
    return found


def shipped_init(cfg, work: Path) -> tuple[str, dict]:
    """The init a one-GPU run of a shipped config can take, and why: the config's own where
    its file is here; for an absent open_clip:PATH, an open_clip CLIP of the config's shape
    with random weights made in the scratch folder (make_init_file), so the same load runs;
    for an absent checkpoint:PATH (stage 1's output), random weights."""
    shipped = cfg.init
    kind, _, path = shipped.partition(":")
    if not shipped:
        return shipped, {"shipped": shipped, "ran": shipped, "why": "as shipped"}
    if Path(path).exists():  # absolute: the run's working directory is its scratch folder
        here = f"{kind}:{Path(path).resolve()}"
        return here, {"shipped": shipped, "ran": here, "why": "as shipped"}
    if kind == "open_clip" and not missing_modules(["open_clip"]):
        made = f"open_clip:{work / MADE_HERE / Path(path).stem}.pt"
        return made, {"shipped": shipped, "ran": made, "why": f"{path} is not on this machine: an open_clip CLIP of "
                      "the config's shape with random weights, made here, goes through the same load"}
    return "", {"shipped": shipped, "ran": "", "why": f"{path} is not on this machine: random weights"}


def shipped_overrides(config: Path, work: Path) -> tuple[list[str], dict]:
    """(the overrides of the config's one-GPU run, its init record): only the data source,
    the batch sizes, the steps, logging and the init change; everything else is shipped."""
    from longvivit.train.config import load_run_config

    cfg = load_run_config(config)
    init, note = shipped_init(cfg, work)
    overrides = ["data.source=synthetic", f"data.batch_size={SHIPPED_BATCH}", f"steps={SHIPPED_STEPS}",
                 "log_every=1", "progress=false", "eval_every=0", "checkpoint_every=0",
                 f"init={init}" if init else "init=''"]
    if any(s.name == "images" and s.kind == "image" for s in cfg.data.sources):  # data.images.* addresses it
        overrides.append(f"data.images.batch_size={SHIPPED_IMAGE_BATCH}")
    return overrides, note


def check_shipped(work: Path, configs: list[Path] | None = None, gpu_mem: int | None = None) -> dict:
    """f. Every shipped GPU config's real form steps on this GPU (shipped_overrides): one
    process each, started together, taking turns for their steps (gpu_turn). Per config:
    step time, tokens/s and MFU by source (the trainer's logged numbers), the allocator's
    peak against `longvivit plan` for the same overrides, and the host syncs of the last
    steps' micro-batches by origin (train_syncs). configs, gpu_mem: for the CPU tests."""
    require(TRAINER_NEEDS)
    configs = configs or shipped_configs()
    turns = work / "turns"
    turns.mkdir()
    runs = {c.stem: shipped_overrides(c, work) for c in configs}
    commands = {c.stem: train_cell_command(work / c.stem, runs[c.stem][0], c, turns, SHIPPED_SYNC_STEPS)
                for c in configs}
    plans: dict[str, dict] = {}
    gpu_mem = gpu_mem or torch.cuda.get_device_properties(0).total_memory
    t0 = time.perf_counter()
    done = launch(commands, work, turns=turns,
                  meanwhile=lambda: plans.update({c.stem: shipped_plan(c, runs[c.stem][0], gpu_mem) for c in configs}))
    wall = time.perf_counter() - t0
    rows = {c.stem: shipped_row(c, *runs[c.stem], read_cell(work / c.stem, done[c.stem], wall), plans[c.stem])
            for c in configs}
    return {"batch": SHIPPED_BATCH, "image_batch": SHIPPED_IMAGE_BATCH, "steps": SHIPPED_STEPS,
            "warmup": SHIPPED_WARMUP, "sync_steps": SHIPPED_SYNC_STEPS, "configs": rows}


def shipped_plan(config: Path, overrides: list[str], gpu_mem: int) -> dict:
    """`longvivit plan` of the run at one GPU (its bytes by part), or {"error"}."""
    from longvivit.train.plan import make_plan

    try:
        plan = make_plan(str(config), overrides, gpus=1, gpu_mem=gpu_mem, search=False)
    except Exception as err:  # noqa: BLE001 -- recorded; the run's own record still stands
        return {"error": f"{type(err).__name__}: {err}"}
    return {"bytes": plan.bytes, "total": plan.total,
            "allocated": sum(v for k, v in plan.bytes.items() if k != "reserve")}


def shipped_row(config: Path, overrides: list[str], init: dict, result: dict, plan: dict) -> dict:
    from longvivit.train.config import load_run_config

    cfg = load_run_config(config, overrides=overrides)
    v, sources = cfg.model.video, cfg.data.sources
    images = next((s for s in sources if s.kind == "image"), None)
    row = {"config": str(config.relative_to(ROOT)), "overrides": overrides, "init": init, "preset": cfg.model.preset,
           "frames": v.frames, "image_size": v.image_size, "mask_ratio": v.mask_ratio, "batch": cfg.data.batch_size,
           "grad_accum": cfg.grad_accum, "ds_config": cfg.ds_config, "precision": cfg.precision,
           "grad_checkpointing": v.grad_checkpointing, "trainable_last_k": v.trainable_last_k,
           "images": {"proportion": images.weight / sum(s.weight for s in sources), "batch": images.batch_size,
                      "mask_ratio": images.mask_ratio} if images else None, "plan": plan}
    if "error" in result:
        return {**row, "error": result["error"], "output": result["output"]}
    losses = [x["loss"] for x in result["step"]]
    batches = {s.name: (s.batch_size or cfg.data.batch_size) * cfg.grad_accum for s in sources}
    warm = {s.name: SHIPPED_WARMUP if s.kind == "video" else 1 for s in sources}
    row.update(backend=result["backend"], steps_done=result["steps"], losses=losses,
               finite=bool(losses) and all(math.isfinite(x) for x in losses), turn=result["turn"],
               peak_bytes=result["peak_bytes"], peak_reserved_bytes=result["peak_reserved_bytes"],
               peak_bytes_after_setup=result["peak_bytes_after_setup"],
               by_source=by_source(result["train"], result["step"], batches, warm),
               syncs=sync_summary(result["syncs"]))
    if "allocated" in plan:
        row["plan_over_measured"] = plan["allocated"] / result["peak_bytes"]
    return row


def by_source(train: list[dict], steps: list[dict], batches: dict[str, int], warm: dict[str, int]) -> dict:
    """Medians of the trainer's per-step numbers (log_every=1) by source name over the timed
    steps: after each source's `warm` steps, before the sync steps. A step's seconds are its
    samples over its samples/s (one process); batches: each source's samples a step."""
    source = {x["step"]: x["source"] for x in steps}
    timed_until = SHIPPED_STEPS - SHIPPED_SYNC_STEPS
    out = {}
    for name in batches:
        lines = [x for x in train if source.get(x["step"]) == name and x["step"] <= timed_until][warm[name]:]
        if lines:
            median = lambda key: statistics.median(x[key] for x in lines)  # noqa: E731
            out[name] = {"steps": [x["step"] for x in lines], "step_s": statistics.median(
                batches[name] / x["samples_per_s"] for x in lines), "samples_per_s": median("samples_per_s"),
                "tokens_per_s": median("tokens_per_s"), "tflops": median("tflops"), "mfu": median("mfu")}
    return out


def sync_summary(syncs: dict) -> dict:
    """train_syncs' steps folded into counts per micro-batch by origin; `model_allowed`: the
    model syncs its micro-batches may make (one for each real_frames on the GPU)."""
    steps, logs = syncs["steps"], syncs["log_steps"]
    micro = sum(len(s["real_frames_on"]) for s in steps)
    sites, log_sites = merged_sites(steps), merged_sites(logs)
    origins, log_origins = origin_counts(sites), origin_counts(log_sites)
    return {"control": syncs["control"], "steps": [s["step"] for s in steps], "micro_batches": micro,
            "model": origins.get("model", 0),
            "model_allowed": sum(dev != "cpu" for s in steps for dev in s["real_frames_on"]),
            "per_micro_batch": {o: n / max(micro, 1) for o, n in origins.items()},
            "log_per_step": {o: n / max(len(logs), 1) for o, n in log_origins.items()},
            "sites": sites, "log_sites": log_sites}


def merged_sites(entries: list[dict]) -> list[dict]:
    """The sync_tables of several steps as one."""
    return sync_table([{"origin": r["origin"], "at": r["at"], "via": r["via"]}
                       for e in entries for r in e["sites"] for _ in range(r["count"])])


def origin_counts(table: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in table:
        counts[row["origin"]] = counts.get(row["origin"], 0) + row["count"]
    return counts


# ---------------------------------------------------------------------------- g. shipped model: kernels, syncs

def random_model(cfg, device: torch.device, dtype: torch.dtype):
    """The config's DualEncoder with random weights, built on the meta device and made on
    `device` in `dtype` (its own init draws every weight on the CPU: minutes at 1B
    parameters). Which kernels run and where the host waits do not depend on the values."""
    from longvivit.model import build_model

    with torch.device("meta"):
        model = build_model(cfg)
    model = model.to_empty(device=device).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 or name.endswith("cls_token"):
                p.normal_(0.0, 0.02)
            else:  # norms at 1, biases and gates at 0, the temperature at its start
                p.fill_(1.0 if name.endswith("weight") else 0.0)
        model.logit_scale.fill_(cfg.init_logit_scale)
    return model.train()


def video_pass(model, batch: dict, cls_copies: bool = True) -> None:
    """Forward + backward of the video tower alone at its config's masking (a CPU generator,
    as the trainer's); cls_copies False: the CLS key once instead of T' times
    (VideoEncoder.cls_key_copies), for comparison."""
    tower, v = model.video, model.cfg.video
    if not cls_copies:
        tower.cls_key_copies = lambda slices: 1  # this instance only
    try:
        emb = tower(batch["video"], v.mask_ratio, v.mask_scheme, torch.Generator().manual_seed(0), None)
        emb.float().sum().backward()
    finally:
        tower.__dict__.pop("cls_key_copies", None)
        model.zero_grad(set_to_none=True)


def model_pass(model, batch: dict, real_frames) -> None:
    """One training micro-batch of the whole model (both towers, loss), forward + backward."""
    loss, _ = model(batch["video"], batch["text_ids"], batch["text_mask"], generator=torch.Generator().manual_seed(0),
                    real_frames=real_frames)
    loss.backward()
    model.zero_grad(set_to_none=True)


def real_frames_variants(batch: int, frames: int, device: torch.device) -> dict:
    """real_frames as a caller may pass it: None, whole or one clip half padded, on the host
    or on the device (MODEL_SYNCS_ALLOWED's keys)."""
    padded = [max(1, frames // 2)] + [frames] * (batch - 1)
    return {"none": None, "host_whole": torch.full((batch,), frames), "host_padded": torch.tensor(padded),
            "device_whole": torch.full((batch,), frames, device=device),
            "device_padded": torch.tensor(padded, device=device)}


def model_syncs(model, batch: dict, device: torch.device) -> dict:
    """Host syncs per micro-batch of the whole model by real_frames variant (after one
    micro-batch of each: first-call set-up is not per micro-batch), with their sites."""
    out = {}
    for name, real in real_frames_variants(batch["video"].shape[0], model.cfg.video.frames, device).items():
        model_pass(model, batch, real)
        with SyncCounter() as counter:
            for _ in range(SYNC_REPEATS):
                model_pass(model, batch, real)
        out[name] = {"per_micro_batch": len(counter.sites) / SYNC_REPEATS if counter.active else None,
                     "allowed": MODEL_SYNCS_ALLOWED[name], "sites": sync_table(counter.sites)}
    return out


def has_cls_copies(v) -> bool:
    """Whether the joint video tower repeats the CLS key T' times (VideoEncoder.cls_key_copies)."""
    return v.cls_token and v.attention != "factorized" and v.frames // v.tubelet[0] > 1


def kernels_of(step: Callable[[], None], device: torch.device) -> dict:
    """The attention kernels and ops of one `step` (after one unprofiled call), its median
    wall time over 3 more."""
    step()
    kernels, ops = profile_step(step, device)
    found = classify(kernels)
    return {"kernels": found, "ops": classify(ops), "fused": any(k in found for k in FUSED),
            "math": "math" in found or "math" in classify(ops), "flash": "flash" in found,
            "step_ms": 1e3 * statistics.median(common.timed(step, device) for _ in range(3))}


def shipped_model_row(config: Path, device: torch.device) -> dict:
    """One shipped config's model: the SDPA kernels of its video tower's forward + backward
    (with the CLS key copies, and without them where there are some: what they cost), and the
    whole model's host syncs per micro-batch by real_frames variant."""
    from longvivit.data.load.synthetic import SyntheticBatches
    from longvivit.train.config import load_run_config

    cfg = load_run_config(config, overrides=["data.source=synthetic", f"data.batch_size={SHIPPED_BATCH}"])
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision, torch.float32)
    model = random_model(cfg.model, device, dtype)
    t = cfg.model.text
    batch = next(iter(SyntheticBatches(cfg.data, "train", device, 0, 1, True, t.vocab_size, t.tokenizer)))
    v = cfg.model.video
    copies = has_cls_copies(v)
    row = {"config": str(config.relative_to(ROOT)), "preset": cfg.model.preset, "frames": v.frames,
           "image_size": v.image_size, "mask_ratio": v.mask_ratio, "cls_token": v.cls_token, "pool": v.pool,
           "attention": v.attention, "heads": v.heads, "head_dim": v.width // v.heads, "dtype": str(dtype)[6:],
           "tokens": v.visible_tokens(v.mask_ratio), "batch": SHIPPED_BATCH, "cls_copies": copies,
           **kernels_of(lambda: video_pass(model, batch), device)}
    if copies:
        row["without_cls_copies"] = kernels_of(lambda: video_pass(model, batch, cls_copies=False), device)
    row["syncs"] = model_syncs(model, batch, device)
    return row


def check_shipped_model(work: Path, device: torch.device | None = None, configs: list[Path] | None = None) -> dict:
    """g. Each shipped config's model on this GPU, outside the engine (random weights, its
    precision): which SDPA kernel its video tower runs (the open_clip shape repeats the CLS
    key T' times instead of an additive mask, which FlashAttention would not take), and the
    host syncs of its forward + backward when real_frames comes as None, on the host or on
    the GPU."""
    device = device or torch.device("cuda")
    rows = config_rows(shipped_model_row, configs or shipped_configs(), device)
    return {"control": counter_control(device), "sync_repeats": SYNC_REPEATS, "configs": rows}


def config_rows(row, configs: list[Path], device: torch.device) -> dict:
    """{config stem: row(config, device)}; a config whose row raises gets its error and
    traceback instead, and the other configs still run."""
    rows = {}
    for config in configs:
        try:
            rows[config.stem] = row(config, device)
        except Exception as err:  # noqa: BLE001 -- recorded; the other configs still run
            rows[config.stem] = {"config": str(config.relative_to(ROOT)), "error": f"{type(err).__name__}: {err}",
                                 "traceback": traceback.format_exc()[-ERROR_TAIL:]}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------- i. flash

FLASH_BLOCKS = 2  # video blocks kept: which kernels take a call depends on its shapes, not on the depth
# SDPA held to these backends in turn (torch.nn.attention.SDPBackend names); "flash_or_cudnn"
# must run for every config, "efficient" is for information
FLASH_SETS = {"flash": ("FLASH_ATTENTION",), "cudnn": ("CUDNN_ATTENTION",),
              "flash_or_cudnn": ("FLASH_ATTENTION", "CUDNN_ATTENTION"), "efficient": ("EFFICIENT_ATTENTION",)}


def every_config() -> list[Path]:
    """Every run config that ships (longvivit/configs/*.yaml), the CPU demos' too: a tiny
    tower costs nothing, and a demo on a GPU should not fall back to the math kernel either."""
    return sorted(CONFIGS.glob("*.yaml"))


def runs_with(step: Callable[[], None], backends: tuple[str, ...]) -> dict:
    """Whether `step` runs with scaled_dot_product_attention held to `backends`: SDPA raises
    when none of them takes a call, after a warning per backend saying why not (kept)."""
    import warnings

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_kernel([getattr(SDPBackend, b) for b in backends]):
                step()
        except RuntimeError as err:
            why = sorted({str(w.message) for w in caught})
            return {"ran": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0]}", "why": why}
    return {"ran": True}


def flash_row(config: Path, device: torch.device) -> dict:
    """One config's video tower at its real size and masking (FLASH_BLOCKS blocks, all
    trainable, random weights, one clip, bf16): forward + backward under each FLASH_SETS."""
    from dataclasses import replace

    from longvivit.train.config import load_run_config

    cfg = load_run_config(config, overrides=["data.source=synthetic"])
    v = cfg.model.video
    short = replace(v, depth=FLASH_BLOCKS, trainable_last_k=None, grad_checkpointing=0)
    model = random_model(replace(cfg.model, video=short), device, torch.bfloat16)
    g = torch.Generator(device=device).manual_seed(0)
    video = torch.randint(0, 256, (1, v.frames, v.image_size, v.image_size, 3), dtype=torch.uint8, device=device,
                          generator=g)
    row = {"config": str(config.relative_to(ROOT)), "frames": v.frames, "image_size": v.image_size,
           "mask_ratio": v.mask_ratio, "cls_token": v.cls_token, "attention": v.attention, "heads": v.heads,
           "head_dim": v.width // v.heads, "tokens": v.visible_tokens(v.mask_ratio), "cls_copies": has_cls_copies(v)}
    for name, backends in FLASH_SETS.items():
        row[name] = runs_with(lambda: video_pass(model, {"video": video}), backends)
    return row


def check_flash(work: Path, device: torch.device | None = None, configs: list[Path] | None = None) -> dict:
    """i. Every config's video tower on this GPU with SDPA held to FlashAttention and cuDNN
    (then each alone, and the memory-efficient kernel alone, for information): whole clips
    pass no attention mask (the CLS key's copies, VideoEncoder.cls_key_copies), so one of
    the two must take every call; a tower that runs only on the memory-efficient or math
    kernel fails."""
    device = device or torch.device("cuda")
    rows = config_rows(flash_row, configs or every_config(), device)
    return {"torch": torch.__version__, "blocks": FLASH_BLOCKS, "sets": {k: list(v) for k, v in FLASH_SETS.items()},
            "configs": rows}


# ---------------------------------------------------------------------------- h. two GPUs

TWO_GPU_MODEL = ["model.preset=B", "model.video.frames=8", "model.video.mask_ratio=0.5", "data.batch_size=2"]
TWO_GPU_STEPS = (4, 6)  # the 2-rank run ends at 4 (its final checkpoint); the 1-rank run resumes it to 6


def torchrun_command(nproc: int, out: Path, overrides: list[str]) -> list[str]:
    """`longvivit train` under torchrun (torch.distributed.run: no launcher script on PATH
    needed), one rank per GPU of this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "longvivit.cli", "train", str(DEMO), *overrides, f"out={out}"]


def events(text: str, name: str) -> list[dict]:
    """The `name` event lines of a run's output (longvivit.events: their schema)."""
    from longvivit.events import read

    return read(text, name)


def check_two_gpu(work: Path, gpus: int | None = None, base: list[str] | None = None, env: dict | None = None) -> dict:
    """h. Two ranks over NCCL, one per GPU (torchrun), TWO_GPU_STEPS[0] steps of ZeRO-3 bf16,
    then the same run resumed on one GPU to TWO_GPU_STEPS[1] (elastic: the checkpoint of 2
    ranks converted to DeepSpeed's universal form). What a one-GPU machine cannot show: a
    collective before each rank's device is bound, a CPU tensor in an NCCL collective, the
    rank-to-GPU mapping, and optimizer state loaded onto the wrong device. Skipped below 2
    GPUs. base/env: the CPU twin for tests (gloo)."""
    gpus = torch.cuda.device_count() if gpus is None else gpus
    if gpus < 2:
        return skipped(f"{gpus} GPU here: the 2-rank NCCL launch and the resume on 1 GPU need 2 or more")
    require(TRAINER_NEEDS)
    overrides = [*(BASE if base is None else base), *TWO_GPU_MODEL, "checkpoint_every=0"]
    first, last = TWO_GPU_STEPS
    out = work / "run"
    runs = launch({"two_ranks": torchrun_command(2, out, [*overrides, f"steps={first}"])}, work, env=env)
    if runs["two_ranks"].returncode == 0:
        runs.update(launch({"one_rank": trainer_command(out, [*overrides, f"steps={last}"])}, work, env=env))
    return two_gpu_record(overrides, runs, metrics(out, "step"))


def run_starts(runs: dict[str, Finished], keys: tuple[str, ...]) -> dict[str, list[dict]]:
    """Each run's {"event": "start"} lines (`keys` of them), by rank."""
    return {n: sorted(({k: e.get(k) for k in keys} for e in events(r.output, "start")), key=lambda e: e["rank"])
            for n, r in runs.items()}


def two_gpu_record(overrides: list[str], runs: dict[str, Finished], steps: list[dict]) -> dict:
    starts = run_starts(runs, ("rank", "world_size", "backend", "device", "step"))
    rescale = events(runs["one_rank"].output, "rescale") if "one_rank" in runs else []
    record = {"steps": list(TWO_GPU_STEPS), "overrides": overrides,
              "exit_codes": {n: r.returncode for n, r in runs.items()},
              "starts": starts, "rescale": rescale[0] if rescale else None, "steps_logged": [x["step"] for x in steps],
              "finite": bool(steps) and all(math.isfinite(x["loss"]) for x in steps)}
    failed = {n: r.tail() for n, r in runs.items() if r.returncode != 0}
    if failed:
        record["failed_output"] = failed
    return record


# ---------------------------------------------------------------------------- k. sequence parallelism

# the B preset's heads (12) divide by 2; 64 frames at 224 px, 75% masking: 1 + 1568 tokens a clip
ULYSSES_MODEL = ["model.preset=B", "model.video.frames=64", "model.video.mask_ratio=0.75",
                 "model.video.cls_token=true", "data.batch_size=2"]
ULYSSES_STEPS = 4
ULYSSES_RTOL = 2e-2  # first-step loss, 2 split ranks vs 1 GPU, bf16 (reduction order differs)


def check_ulysses(work: Path, gpus: int | None = None, base: list[str] | None = None, env: dict | None = None) -> dict:
    """k. Sequence parallelism over NCCL: two GPUs as one sequence group (parallel.sequence=2,
    torchrun: each holds half of every clip's tokens, all-to-all around attention) against
    one GPU alone on the same batches and masks, ULYSSES_STEPS steps of ZeRO-3 bf16 each,
    the two at once: the losses step by step and the runs' exit codes. What gloo cannot
    show: NCCL's all-to-all on uneven chunks, and bf16 activations through it. Skipped below
    2 GPUs. base/env: the CPU twin for tests (gloo)."""
    gpus = torch.cuda.device_count() if gpus is None else gpus
    if gpus < 2:
        return skipped(f"{gpus} GPU here: a sequence group of 2 ranks needs 2 GPUs")
    require(TRAINER_NEEDS)
    overrides = [*(BASE if base is None else base), *ULYSSES_MODEL, "checkpoint_every=0", f"steps={ULYSSES_STEPS}"]
    runs = launch({"split": torchrun_command(2, work / "split", [*overrides, "parallel.sequence=2"]),
                   "one_gpu": trainer_command(work / "one_gpu", overrides)}, work, env=env)
    steps = {name: metrics(work / name, "step") for name in runs}
    record = {"steps": ULYSSES_STEPS, "overrides": overrides, "rtol": ULYSSES_RTOL,
              "exit_codes": {n: r.returncode for n, r in runs.items()},
              "starts": run_starts(runs, ("rank", "world_size", "backend", "device")),
              "losses": {n: [x["loss"] for x in v] for n, v in steps.items()},
              "same_batches": [x["indices"] for x in steps["split"]] == [x["indices"] for x in steps["one_gpu"]]}
    if steps["split"] and steps["one_gpu"]:
        a, b = steps["split"][0]["loss"], steps["one_gpu"][0]["loss"]
        record["first_step_rel_diff"] = abs(a - b) / max(abs(b), 1e-12)
    failed = {n: r.tail() for n, r in runs.items() if r.returncode != 0}
    if failed:
        record["failed_output"] = failed
    return record


# ---------------------------------------------------------------------------- main

# ---------------------------------------------------------------------------- j. packed

# bench/padding.py's mixed batch at the B tower's real size: half the clips whole, half a quarter
# long, 75% masking, the open_clip shape (a CLS token: its key repeated per slice of content)
PACKED_CELL = dict(preset="B", frames=64, image_size=224, batch=8, real=[64, 16], mask_ratio=0.75)
PACKED_ROUNDS = 7  # interleaved rounds of each step (median)


def packed_towers(cell: dict, device: torch.device, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """The cell's video tower twice, the same weights: video.packing masked and packed."""
    from longvivit.model import build_model, model_config

    towers = {}
    for packing in ("masked", "packed"):
        torch.manual_seed(0)
        cfg = model_config(cell["preset"], [f"video.frames={cell['frames']}", f"video.image_size={cell['image_size']}",
                                            "video.cls_token=true", f"video.packing={packing}"])
        towers[packing] = build_model(cfg).video.to(device, dtype).train()
    return towers


def packed_step(tower, video: torch.Tensor, real: torch.Tensor, ratio: float,
                probe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tower_step on a padded batch (real_frames on the host, a CPU mask generator, as the
    trainer passes them)."""
    tower.zero_grad(set_to_none=True)
    emb = tower(video, ratio, "random", torch.Generator().manual_seed(0), real)  # (B, E)
    (emb.float() * probe).sum().backward()
    return emb.detach().float(), torch.cat([p.grad.float().flatten() for p in tower.parameters()])


def check_packed(work: Path, device: torch.device | None = None, cell: dict | None = None) -> dict:
    """j. A padded batch (clips of mixed lengths) through the B tower in bf16 packed (torch's
    varlen attention: every clip's tokens of content in one sequence, no mask) and masked
    (rows padded to the longest clip, an additive key mask): the kernels each runs, both
    against the masked path in strict fp32 (the thresholds of check_attention), the packed
    path's host syncs (none: real_frames on the host), and the step time of each (forward +
    backward, median of interleaved rounds)."""
    device = device or torch.device("cuda")
    c = cell or PACKED_CELL
    towers = packed_towers(c, device, torch.bfloat16)
    g = torch.Generator(device=device).manual_seed(0)
    video = torch.randint(0, 256, (c["batch"], c["frames"], c["image_size"], c["image_size"], 3), dtype=torch.uint8,
                          device=device, generator=g)
    real = torch.tensor([c["real"][i % len(c["real"])] for i in range(c["batch"])])  # on the host
    probe = torch.randn(towers["packed"].head.out_features, device=device, generator=g)
    steps = {name: (lambda t=t: packed_step(t, video, real, c["mask_ratio"], probe)) for name, t in towers.items()}
    out = {name: kernels_of(step, device) for name, step in steps.items()}
    with strict_fp32():
        ref = packed_towers(c, device, torch.float32)["masked"]
        emb32, grad32 = packed_step(ref, video, real, c["mask_ratio"], probe)
    del ref
    for name, step in steps.items():
        emb, grad = step()
        out[name]["vs_fp32_masked"] = precision_agreement(emb32, emb, grad32, grad)
    with SyncCounter() as counter:
        steps["packed"]()
    samples = common.interleaved(steps, PACKED_ROUNDS, device=device)
    for name in steps:
        out[name]["step_s"] = common.median(samples[name])
        out[name]["step_s_samples"] = samples[name]
    return {**c, "rounds": PACKED_ROUNDS, "embed_cosine_min": EMBED_COSINE_MIN, "grad_cosine_min": GRAD_COSINE_MIN,
            "packed_syncs": len(counter.sites) if counter.active else None, "sync_sites": sync_table(counter.sites),
            "packed_vs_masked_time": out["packed"]["step_s"] / out["masked"]["step_s"], **out}


# ---------------------------------------------------------------------------- k. compiled blocks

def check_compile(work: Path, cells: list[Cell] | None = None) -> dict:
    """k. model.compile=true (each transformer block's forward under torch.compile, inductor,
    each block a ZeRO-3 leaf: longvivit/train/compile.py) against eager: the MFU cell (B,
    ZeRO-3 bf16, 8 clips of 16 frames) trained by the trainer's own loop both ways, each in
    its own process, taking turns on the GPU (the eager one is the MFU check's, run once when
    both checks run). The compiled cell compiles in its first step, which the warm-up steps
    leave out. Recorded: each cell's MFU row, the MFU and step-time ratios compiled / eager,
    and the per-step losses of both (same weights, batches and rates).

    Thresholds: COMPILE_MFU_MIN, compiled must not lose more than 5% MFU to eager (a graph
    break per block or a recompile storm, which the CPU test rules out at the tiny size,
    would); COMPILE_LOSS_RTOL, the losses agree per step within 2% relative: inductor fuses
    and reorders bf16 arithmetic (fp32 on CPU agrees within 3e-7 over 3 steps,
    tests/test_train_compile.py), and over 13 steps the two runs drift apart as any two bf16
    runs with different kernels do. Not run on a GPU yet: the first run confirms or corrects
    both."""
    eager, compiled = cells or COMPILE_CELLS
    cells = {"eager": eager, "compiled": compiled}
    results = cell_results(list(cells.values()), work)
    rows = {name: compile_row(cell, results[cell]) for name, cell in cells.items()}
    record = {"rows": rows, "mfu_min_ratio": COMPILE_MFU_MIN, "loss_rtol": COMPILE_LOSS_RTOL,
              "warmup_steps": WARMUP_STEPS}
    if any("error" in row or not row["steps_measured"] for row in rows.values()):
        return record
    e, c = rows["eager"], rows["compiled"]
    losses = {name: [x["loss"] for x in results[cell]["step"]] for name, cell in cells.items()}
    rel = [abs(b - a) / max(abs(a), 1e-12) for a, b in zip(losses["eager"], losses["compiled"])]
    return {**record, "mfu_ratio": c["mfu_median"] / e["mfu_median"],
            "step_ratio": c["step_s_median"] / e["step_s_median"], "losses": losses,
            "loss_max_rel_diff": max(rel, default=math.nan)}


def compile_row(cell: Cell, result: dict) -> dict:
    """A cell's MFU and step-time medians after warm-up, and its first step's seconds (the
    compiled cell compiles in it, from its logged samples/s)."""
    row = {"cell": cell.name, "preset": cell.preset, "frames": cell.frames, "batch": cell.batch,
           "compiled": cell.compiled}
    if "error" in result:
        return {**row, "error": result["error"], "output": result["output"]}
    first = [cell.batch / x["samples_per_s"] for x in result["train"] if x["step"] == 1]
    return {**row, **median_after_warmup(result["train"], WARMUP_STEPS, cell.batch),
            "peak_tflops": result["peak_tflops"], "first_step_s": first[0] if first else None}


CHECKS: dict[str, Callable[[Path], dict]] = {
    "attention": check_attention, "trainer": check_trainer, "plan_memory": check_plan_memory,
    "mfu": check_mfu, "decode": check_decode, "shipped": check_shipped, "shipped_model": check_shipped_model,
    "flash": check_flash, "two_gpu": check_two_gpu, "packed": check_packed, "ulysses": check_ulysses,
    "compile": check_compile,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu"), help="folder for the JSON records")
    p.add_argument("--only", nargs="+", choices=list(CHECKS), help="run only these checks")
    p.add_argument("--train-cell", metavar="DIR", help="(internal) run one training cell into DIR")
    p.add_argument("--config", default=str(DEMO), help="(with --train-cell) its run config")
    p.add_argument("--turns", help="(with --train-cell) the folder of the cells that take turns on the GPU")
    p.add_argument("--sync-steps", type=int, default=0, help="(with --train-cell) last steps counted for syncs")
    p.add_argument("overrides", nargs="*", help="(with --train-cell) the run config overrides")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.overrides and not args.train_cell:
        raise SystemExit(f"bench/gpu.py: overrides {args.overrides} only go with --train-cell")
    if args.train_cell:
        turns = Path(args.turns) if args.turns else None
        record = run_train_cell(Path(args.train_cell), args.overrides, Path(args.config), turns, args.sync_steps)
        write_json(Path(args.train_cell) / "cell.json", record)
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
