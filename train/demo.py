"""`longvivit demo [--out DIR]`: the whole path on this machine, end to end.

    synth (long clips, 64 frames at 1 FPS) -> MDS shards -> sentencepiece tokenizer ->
    train the tiny model with ZeRO-3 on 2 processes (the real deepspeed launcher; CPU
    accelerator and gloo when there is no GPU) -> zero-shot retrieval on the held-out
    split -> a summary, ending with one JSON line.

The training run is train/configs/demo.yaml with its data paths pointed into DIR; its
checkpoints, TensorBoard logs and metrics.jsonl land in DIR/train.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import dist
from .config import CONFIG_DIR

DEMO_CONFIG = CONFIG_DIR / "demo.yaml"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="longvivit demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/demo", help="everything the demo writes (default runs/demo)")
    p.add_argument("--videos", type=int, default=400, help="synthetic videos (80%% train, 20%% val)")
    p.add_argument("--frames", type=int, default=64, help="frames per clip at 1 FPS")
    p.add_argument("--procs", type=int, default=2, help="training processes (ZeRO-3 ranks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="key=value overrides of train/configs/demo.yaml")
    return p.parse_args(argv)


def step(name: str, fn, *args, **kwargs):
    t0 = time.time()
    print(f"[demo] {name} ...", flush=True)
    result = fn(*args, **kwargs)
    print(f"[demo] {name}: {time.time() - t0:.1f} s", flush=True)
    return result


def prepare_data(out: Path, args: argparse.Namespace) -> dict:
    """Synthetic benchmark -> shards -> tokenizer; returns the data.* overrides."""
    from longvivit.data import train_tokenizer, write_benchmark, write_shards
    from longvivit.data.shards import ShardOptions

    step("synth", write_benchmark, out / "synth", videos=args.videos, frames=args.frames,
         seed=args.seed, size=32, overwrite=True)
    for split in ("train", "val"):
        step(f"shards {split}", write_shards, out / "synth" / f"{split}.jsonl", out / "shards" / split,
             ShardOptions(size=32), workers=2, overwrite=True, progress=False)
    tok = step("tokenizer", train_tokenizer, [out / "shards" / "train"], out / "tokenizer" / "spm")
    return {"data.train": out / "shards" / "train", "data.val": out / "shards" / "val",
            "data.tokenizer": tok}


def launcher() -> list[str]:
    """The deepspeed launcher of this environment (the script next to this Python)."""
    script = Path(sys.executable).parent / "deepspeed"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "deepspeed.launcher.runner"]


def train_command(out: Path, procs: int, port: int, overrides: dict, extra: list[str]) -> list[str]:
    kv = [f"{k}={v}" for k, v in overrides.items()] + [f"out={out / 'train'}", "progress=false"]
    return [*launcher(), "--num_gpus", str(procs), "--master_port", str(port),
            "--module", "longvivit.train.cli", "train", str(DEMO_CONFIG), *kv, *extra]


def run_launcher(cmd: list[str], log_path: Path, port: int) -> int:
    """Run the launcher in its own process group; whatever happens, nothing survives it."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if not _has_gpu():
        env["DS_ACCELERATOR"] = "cpu"
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        with open(log_path, "w") as log:
            for line in proc.stdout:
                log.write(line)
                if line.startswith("{") or "[demo]" in line or "Traceback" in line:
                    print(line, end="", flush=True)
        return proc.wait()
    finally:
        kill_group(proc)
        for path in dist.shm_buffers(dist.DistEnv(0, procs_of(cmd), 0, 1, "127.0.0.1", port)):
            path.unlink(missing_ok=True)


def procs_of(cmd: list[str]) -> int:
    return int(cmd[cmd.index("--num_gpus") + 1])


def kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def report(summary: dict, total_s: float, train_s: float) -> dict:
    ev = summary["eval"]
    line = {"t2v_r1": ev["t2v_r1"], "chance": ev["chance_r1"], "v2t_r1": ev["v2t_r1"],
            "t2v_r5": ev["t2v_r5"], "pairs": ev["pairs"], "steps": summary["steps"],
            "seconds": round(total_s, 1), "train_seconds": round(train_s, 1),
            "samples_per_s": round(summary["samples_per_s"], 2), "checkpoints": summary["checkpoints"],
            "tensorboard": summary["tensorboard"]}
    print(f"\nlongvivit demo: {summary['steps']} steps of ZeRO-3 training in {train_s:.0f} s "
          f"({line['samples_per_s']} samples/s), {total_s:.0f} s in all")
    print(f"  held-out text->video R@1 {ev['t2v_r1']:.1f}% (chance {ev['chance_r1']:.2f}%, "
          f"{ev['t2v_r1'] / ev['chance_r1']:.1f}x), R@5 {ev['t2v_r5']:.1f}%, "
          f"video->text R@1 {ev['v2t_r1']:.1f}% over {ev['pairs']} pairs")
    if "zeroshot_top1" in ev:
        line.update(zeroshot_top1=ev["zeroshot_top1"], zeroshot_chance=ev["zeroshot_chance_top1"])
        print(f"  zero-shot classification of the first object: top-1 {ev['zeroshot_top1']:.1f}% "
              f"(chance {ev['zeroshot_chance_top1']:.1f}%), mean per class {ev['zeroshot_mean_per_class']:.1f}%")
    print(f"  checkpoints: {summary['checkpoints']}\n  TensorBoard: tensorboard --logdir {summary['tensorboard']}")
    print(json.dumps(line), flush=True)
    return line


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    t0, out = time.time(), Path(args.out).resolve()
    shutil.rmtree(out / "train", ignore_errors=True)  # the demo always trains from scratch
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(out, args)
    port = dist.free_port()
    t_train = time.time()
    cmd = train_command(out, args.procs, port, data, [f"model.video.frames={args.frames}", *args.overrides])
    print(f"[demo] train: {' '.join(cmd)}", flush=True)
    rc = run_launcher(cmd, out / "train.log", port)
    if rc != 0:
        print(f"longvivit demo: training failed with status {rc}; see {out / 'train.log'}", file=sys.stderr)
        return rc
    summary = json.loads((out / "train" / "summary.json").read_text())
    report(summary, time.time() - t0, time.time() - t_train)
    return 0
