"""Running `longvivit train` on 2 CPU ranks under the real deepspeed launcher, for tests.

`Launch` starts the launcher in its own process group with its output in a file (so a test
can watch a run while it goes); leaving the `with` block kills whatever is left and removes
the job's /dev/shm buffers, whether the test passed or not. A run with faults or other test
hooks (tests/hooks_support.py) trains through tests/scripts/train_with_hooks.py
(`train_program`). `communicate` does the same for
a launcher command a test only waits for. `tiny_run` makes a real one-step checkpoint and
its export, and `broken_copy` cheap broken copies of it (the bad-input tests).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from longvivit.distributed.collectives import free_port
from longvivit.events import read as read_events

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "longvivit" / "configs"
DEEPSPEED = Path(sys.executable).parent / "deepspeed"
WITH_HOOKS = ROOT / "tests" / "scripts" / "train_with_hooks.py"


def train_program(faults: str = "", eval_embeddings: Path | None = None) -> list[str]:
    """What the deepspeed launcher runs as `longvivit train`: the CLI's module, or, with
    `faults` (NAME:STEPS[:RANK],...) or `eval_embeddings` (a file rank 0 saves each eval's
    embeddings to), tests/scripts/train_with_hooks.py, which trains the same way with those
    hooks (tests/hooks_support.py). CONFIG and its overrides follow either."""
    hooks = [*(["--faults", faults] if faults else []),
             *(["--eval-embeddings", str(eval_embeddings)] if eval_embeddings else [])]
    return [str(WITH_HOOKS), *hooks] if hooks else ["--module", "longvivit.cli", "train"]


def hooked_longvivit(folder: Path, faults: str) -> Path:
    """An executable that stands in for the `longvivit` command (slurm/train.sbatch runs
    `$LONGVIVIT train ARGS`): `train ARGS` through train_with_hooks.py with `faults`."""
    path = folder / "longvivit-with-faults"
    path.write_text(f'#!/bin/sh\n[ "$1" = train ] && shift\nexec "{sys.executable}" "{WITH_HOOKS}" '
                    f'--faults "{faults}" "$@"\n')
    path.chmod(0o755)
    return path


class Launch:
    """env: variables to add to the ranks' environment; a value of None removes one (e.g.
    {"OMP_NUM_THREADS": None}: torch's default thread count instead of the tests' 1).
    faults: the faults to inject (tests/hooks_support.py), e.g. "stall_data:2:1"."""

    def __init__(self, config: str | Path, *overrides: str, log: Path, procs: int = 2, env: dict | None = None,
                 faults: str = ""):
        self.port, self.log = free_port(), log
        cmd = [str(DEEPSPEED), "--num_gpus", str(procs), "--master_port", str(self.port),
               *train_program(faults), str(config), "progress=false", *overrides]
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", **(env or {})}
        env = {k: v for k, v in env.items() if v is not None}
        self._out = open(log, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._out, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, cwd=ROOT)

    def __enter__(self) -> "Launch":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._out.close()
        remove_shm_buffers(self.port)

    def wait(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout=timeout)

    @property
    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")

    def events(self, name: str) -> list[dict]:
        return events(self.output, name)

    def wait_for(self, condition, timeout: float = 300, what: str = "") -> None:
        """Poll `condition()` until true; fail if the run ends or time runs out first."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what} (rc={self.proc.poll()}):\n{self.output[-3000:]}")
            time.sleep(0.1)


def remove_shm_buffers(port: int) -> None:
    """DeepSpeed's shared-memory all-reduce buffers of the job on `port`."""
    for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
        p.unlink(missing_ok=True)


def communicate(cmd: list[str], port: int, timeout: float, env: dict, cwd: Path | None = None) -> tuple[int, str]:
    """(exit status, stdout and stderr) of a launcher command on `port`, run in its own
    process group; whatever happens, what is left of it is killed and its buffers removed."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, cwd=cwd)
    try:
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        remove_shm_buffers(port)


def run(config: str | Path, *overrides: str, log: Path, timeout: float = 300,
        env: dict | None = None) -> tuple[int, str]:
    """Launch, wait, return (exit status, output)."""
    with Launch(config, *overrides, log=log, env=env) as job:
        rc = job.wait(timeout)
        return rc, job.output


def events(output: str, name: str) -> list[dict]:
    """The `name` event lines of a run's output (longvivit.events: their schema)."""
    return read_events(output, name)


def step_lines(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
    return [x for x in lines if x.get("kind") == "step"]


def listing(root: Path) -> dict:
    """{relative path: (size, mtime_ns, sha256)} of every file under `root`."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns,
                                       hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def export(run_dir: Path, dest: Path) -> Path:
    proc = subprocess.run([sys.executable, "-m", "longvivit.cli", "export", str(run_dir), "--out", str(dest)],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dest


def benchmark_shards(root: Path, videos: int, seed: int) -> list[str]:
    """The synthetic benchmark's `videos` 16-frame clips at 32 px (2 events each) as train and
    val shards under `root`, and a tokenizer: the data overrides of a run on them."""
    from longvivit.data import train_tokenizer, write_benchmark, write_shards
    from longvivit.data.prepare.shards import ShardOptions

    write_benchmark(root / "synth", videos=videos, frames=16, seed=seed, size=32, min_events=2, max_events=2)
    for split in ("train", "val"):
        write_shards(root / "synth" / f"{split}.jsonl", root / split, ShardOptions(size=32), progress=False)
    tok = train_tokenizer([root / "train"], root / "spm")
    return [f"data.train={root / 'train'}", f"data.val={root / 'val'}", f"data.tokenizer={tok}"]


def tiny_run(root: Path, source: str = "shards") -> dict:
    """A real tiny checkpoint and its export, for tests that make broken copies of them:
    the demo's local form trained one step in one plain process (about 20 s on a CPU;
    source=shards also writes the local synthetic shards and tokenizer, source=synthetic
    trains on random batches). Returns {"run", "tag", "export", "data"} (data: the local
    data folder, val/ and spm.model in it; None for synthetic)."""
    overrides = [f"local_dir={root}", f"data.source={source}", "steps=1", "eval_max_batches=1", "eval_gallery=0"]
    cmd = [sys.executable, "-m", "longvivit.cli", "train", str(CONFIGS / "demo.yaml"), "local=true",
           "progress=false", *overrides]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):  # one plain process, a free port
        env.pop(name, None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run_dir = root / "train"
    tag = run_dir / "checkpoints" / "step00000001"
    assert (tag / "complete").is_file(), sorted(p.name for p in tag.parent.iterdir())
    return {"run": run_dir, "tag": tag, "export": export(run_dir, root / "export"),
            "data": root / "data" if source == "shards" else None}


def broken_copy(run_dir: Path, dest: Path, change) -> Path:
    """A copy of the run directory `run_dir` at `dest` (files hard-linked, so it costs no
    space), then `change(tag_dir_of_the_copy)` breaks it. A file `change` alters must be
    replaced, not written in place, or the original changes too: see replace_file."""
    shutil.copytree(run_dir, dest, copy_function=os.link)
    change(next((dest / "checkpoints").glob("step*")))
    return dest


def replace_file(path: Path, data: bytes | None) -> None:
    """`path` replaced by a new file holding `data`, or removed (None); a hard link's other
    names keep the old content."""
    path.unlink()
    if data is not None:
        path.write_bytes(data)


def run_in_process(main, argv: list[str], capfd) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a command's main(argv) called in this process, what
    capfd caught of it (the cheap form of a CLI test; a fresh interpreter costs seconds)."""
    capfd.readouterr()
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's errors (one line: longvivit.config.ArgumentParser)
        status = exit_.code
    out, err = capfd.readouterr()
    return status, out, err
