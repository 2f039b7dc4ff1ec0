"""`longvivit demo [--out DIR]`: the paper's two-stage recipe on this machine, end to end.

    synth (long clips, 64 frames at 1 FPS, and image-caption stills) -> MDS shards (the
    stills with --still-images) -> an open_clip CLIP of the tiny shape with random weights
    (what a lab would download) -> stage 1, ShortViViT: 16 frames plus images, both towers
    from the CLIP -> stage 2, LongViViT: all 64 frames at 75% masking, the last 2 video
    blocks trained, from stage 1 -> held-out retrieval of each stage next to chance, ending
    with one JSON line (stage 2's numbers, and stage 1's under "short").

Each stage runs the tiny model with ZeRO-3 on 2 processes under the real deepspeed launcher
(CPU accelerator and gloo when there is no GPU): demo_short.yaml, then
demo_long.yaml, with their paths pointed into DIR; their checkpoints, TensorBoard logs and
metrics.jsonl land in DIR/short and DIR/long.
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

from longvivit.distributed import collectives as dist
from longvivit.train.config import CONFIG_DIR

STAGES = {"short": CONFIG_DIR / "demo_short.yaml", "long": CONFIG_DIR / "demo_long.yaml"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="longvivit demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/demo", help="everything the demo writes (default runs/demo)")
    p.add_argument("--videos", type=int, default=400, help="synthetic videos (80%% train, 20%% val)")
    p.add_argument("--images", type=int, default=800, help="synthetic image-caption pairs (stage 1)")
    p.add_argument("--frames", type=int, default=64, help="frames per clip at 1 FPS (stage 2's)")
    p.add_argument("--procs", type=int, default=2, help="training processes (ZeRO-3 ranks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="key=value overrides of both stages' configs")
    return p.parse_args(argv)


def step(name: str, fn, *args, **kwargs):
    t0 = time.time()
    print(f"[demo] {name} ...", flush=True)
    result = fn(*args, **kwargs)
    print(f"[demo] {name}: {time.time() - t0:.1f} s", flush=True)
    return result


def prepare_data(out: Path, args: argparse.Namespace) -> dict:
    """Synthetic benchmark -> shards; returns the data.* overrides."""
    from longvivit.data import write_benchmark, write_shards
    from longvivit.data.prepare.shards import ShardOptions

    step("synth", write_benchmark, out / "synth", videos=args.videos, frames=args.frames,
         seed=args.seed, size=32, images=args.images, overwrite=True)
    for split, still in (("train", False), ("val", False), ("images", True)):
        manifest = out / "synth" / f"{split}.jsonl"
        step(f"shards {split}", write_shards, manifest, out / "shards" / split,
             ShardOptions(size=32, still_images=still), workers=2, overwrite=True, progress=False)
    return {"data.train": out / "shards" / "train", "data.val": out / "shards" / "val"}


def make_open_clip(out: Path, overrides: list[str]) -> Path:
    """The open_clip CLIP that stage 1 starts from, of stage 1's shapes (random weights,
    seed 0: a stand-in for a downloaded checkpoint)."""
    from longvivit.train.config import load_run_config
    from longvivit.train.local import make_open_clip as build

    path = out / "open_clip" / "tiny-clip.pt"
    path.unlink(missing_ok=True)
    build(load_run_config(STAGES["short"], overrides=overrides), path)
    return path


def launcher() -> list[str]:
    """The deepspeed launcher of this environment (the script next to this Python)."""
    script = Path(sys.executable).parent / "deepspeed"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "deepspeed.launcher.runner"]


def train_command(config: Path, out: Path, procs: int, port: int, overrides: dict, extra: list[str]) -> list[str]:
    kv = [f"{k}={v}" for k, v in overrides.items()] + [f"out={out}", "progress=false"]
    return [*launcher(), "--num_gpus", str(procs), "--master_port", str(port),
            "--module", "longvivit.cli", "train", str(config), *kv, *extra]


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


def stage_line(summary: dict, seconds: float) -> dict:
    ev = summary["eval"]
    line = {"t2v_r1": ev["t2v_r1"], "chance": ev["chance_r1"], "v2t_r1": ev["v2t_r1"],
            "t2v_r5": ev["t2v_r5"], "pairs": ev["pairs"], "steps": summary["steps"],
            "train_seconds": round(seconds, 1), "samples_per_s": round(summary["samples_per_s"], 2),
            "checkpoints": summary["checkpoints"], "tensorboard": summary["tensorboard"]}
    if "zeroshot_top1" in ev:
        line.update(zeroshot_top1=ev["zeroshot_top1"], zeroshot_chance=ev["zeroshot_chance_top1"],
                    zeroshot_mean_per_class=ev["zeroshot_mean_per_class"])
    return line


def print_stage(name: str, line: dict) -> None:
    print(f"  {name}: {line['steps']} steps of ZeRO-3 training in {line['train_seconds']:.0f} s "
          f"({line['samples_per_s']} samples/s)")
    print(f"    held-out text->video R@1 {line['t2v_r1']:.1f}% (chance {line['chance']:.2f}%, "
          f"{line['t2v_r1'] / line['chance']:.1f}x), R@5 {line['t2v_r5']:.1f}%, "
          f"video->text R@1 {line['v2t_r1']:.1f}% over {line['pairs']} pairs")
    if "zeroshot_top1" in line:
        print(f"    zero-shot classification of the first object: top-1 {line['zeroshot_top1']:.1f}% "
              f"(chance {line['zeroshot_chance']:.1f}%), mean per class {line['zeroshot_mean_per_class']:.1f}%")
    print(f"    checkpoints: {line['checkpoints']}\n    TensorBoard: tensorboard --logdir {line['tensorboard']}")


def report(stages: dict[str, dict], total_s: float) -> dict:
    """Both stages' lines; the last line of stdout is stage 2's as JSON, stage 1's under "short"."""
    print(f"\nlongvivit demo: the two-stage recipe in {total_s:.0f} s")
    for name, title in (("short", "stage 1, 16 frames + images"), ("long", "stage 2, 64 frames at 75% masking")):
        print_stage(title, stages[name])
    line = {**stages["long"], "seconds": round(total_s, 1), "short": stages["short"]}
    print(json.dumps(line), flush=True)
    return line


def train_stage(name: str, out: Path, args: argparse.Namespace, overrides: dict) -> dict | int:
    """Run one stage under the launcher; its summary line, or the launcher's exit status."""
    port, t0 = dist.free_port(), time.time()
    extra = ([f"model.video.frames={args.frames}"] if name == "long" else []) + args.overrides
    cmd = train_command(STAGES[name], out / name, args.procs, port, overrides, extra)
    print(f"[demo] train {name}: {' '.join(cmd)}", flush=True)
    rc = run_launcher(cmd, out / f"{name}.log", port)
    if rc != 0:
        print(f"longvivit demo: stage {name} failed with status {rc}; see {out / f'{name}.log'}", file=sys.stderr)
        return rc
    return stage_line(json.loads((out / name / "summary.json").read_text()), time.time() - t0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    t0, out = time.time(), Path(args.out).resolve()
    for name in STAGES:  # the demo always trains from scratch
        shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(out, args)
    clip = step("open_clip", make_open_clip, out, args.overrides)
    stages = {}
    for name, init in (("short", f"open_clip:{clip}"), ("long", f"checkpoint:{out / 'short'}")):
        images = {"data.images.train": out / "shards" / "images"} if name == "short" else {}
        stages[name] = train_stage(name, out, args, {**data, **images, "init": init})
        if isinstance(stages[name], int):
            return stages[name]
    report(stages, time.time() - t0)
    return 0
