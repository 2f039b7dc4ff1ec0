"""The paper's two-stage recipe on this machine, end to end (`longvivit demo`,
longvivit/cli/demo.py).

    synth (long clips, 64 frames at 1 FPS, and image-caption stills) -> MDS shards (the
    stills with --still-images) -> an open_clip CLIP of the tiny shape with random weights
    (what a lab would download) -> stage 1, ShortViViT: 16 frames plus images, both towers
    from the CLIP -> stage 2, LongViViT: all 64 frames at 75% masking, the last 2 video
    blocks trained, from stage 1 -> held-out retrieval, multi-label classification of the
    objects and (on data that holds items) multiple choice of each stage next to chance,
    stage 2 against stage 1 (ShortViViT at its own 16 frames, as the paper compares them),
    ending with one JSON line (stage 2's numbers, stage 1's under "short", their ratios).

`--long-range` runs the same recipe on `synth --long-range` (128-frame clips whose events
last 4 s between idle stretches; each clip's multiple-choice items): the comparison the
paper's claim is about. Its stage 1 trains, as the paper's ShortViViT does, on short clips
where 16 frames see every event and its motion (the default benchmark's 64-frame clips:
prepare_short_clips), not on 16 frames spread over the long clips; both stages are
evaluated on the long clips' held-out split. Its stage 2 beat stage 1 on held-out R@1, on
multiple choice overall and on the items asking which event happens on 3 of 3 seeds; neither
stage answers what an event did or which came first beyond chance (README). .ci/run runs it
after the default demo and fails if stage 2 does not beat stage 1 on R@1.

Each stage runs the tiny model with ZeRO-3 on 2 processes under the real deepspeed launcher
(CPU accelerator and gloo when there is no GPU): demo_short.yaml, then demo_long.yaml, with
their paths pointed into DIR; their checkpoints, TensorBoard logs and metrics.jsonl land in
DIR/short and DIR/long.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from longvivit.config import validated
from longvivit.data.prepare.shards import ShardOptions, write_shards
from longvivit.data.prepare.synth import SynthConfig, write_benchmark
from longvivit.distributed import collectives as dist
from longvivit.train.config import CONFIG_DIR, load_run_config
from longvivit.train.local import make_open_clip


class StageFailed(RuntimeError):
    """A stage's launcher exited with `status`; its output is in `log`."""

    def __init__(self, stage: str, status: int, log: Path):
        super().__init__(f"stage {stage} failed with status {status}; see {log}")
        self.stage, self.status, self.log = stage, status, log


SHORT_CLIP_FRAMES = 64  # the long-range demo's stage-1 clips (prepare_short_clips)
STAGES = {"short": CONFIG_DIR / "demo_short.yaml", "long": CONFIG_DIR / "demo_long.yaml",
          "tune": CONFIG_DIR / "demo_tune.yaml"}  # tune: the optional third stage (--tune)


def timed(name: str, fn, *args, **kwargs):
    """fn(*args, **kwargs), with a line before it and one saying how long it took."""
    t0 = time.time()
    print(f"[demo] {name} ...", flush=True)
    result = fn(*args, **kwargs)
    print(f"[demo] {name}: {time.time() - t0:.1f} s", flush=True)
    return result


def synth_options(videos: int, images: int, frames: int, seed: int, long_range: bool = False,
                  objects: int = 0) -> dict:
    """write_benchmark's options for the demo: 32 px frames; the long-range variant with all
    videos in hard-negative families, drawing on `objects` objects (0: all)."""
    variant = {"long_range": True, "hard_negatives": 1.0, "objects": objects} if long_range else {}
    return dict(videos=videos, frames=frames, seed=seed, size=32, images=images, **variant)


def prepare_data(out: Path, videos: int, images: int, frames: int, seed: int, long_range: bool = False,
                 objects: int = 0) -> dict:
    """Synthetic benchmark -> shards; returns the data.* overrides."""
    timed("synth", write_benchmark, out / "synth", overwrite=True,
          **synth_options(videos, images, frames, seed, long_range, objects))
    stills = [("images", True)] if images else []  # synth writes images.jsonl only then
    for split, still in [("train", False), ("val", False), *stills]:
        demo_shards(f"shards {split}", out / "synth" / f"{split}.jsonl", out / "shards" / split, still)
    return {"data.train": out / "shards" / "train", "data.val": out / "shards" / "val"}


def demo_shards(name: str, manifest: Path, dest: Path, still: bool = False) -> None:
    """A demo manifest -> MDS shards at the demo's 32 px (stills with still=True), timed."""
    timed(name, write_shards, manifest, dest, ShardOptions(size=32, still_images=still), workers=2,
          overwrite=True, progress=False)


def prepare_short_clips(out: Path, videos: int, seed: int) -> dict:
    """Stage 1's training clips for the long-range demo: the default benchmark (64 frames,
    its 3-4 events back to back, so 16 uniform frames see each event in about 4 frames and
    its motion), as the paper trains ShortViViT on short clips and not on the long videos
    of stage 2. Only its training split is sharded; returns stage 1's data.train."""
    timed("synth short clips", write_benchmark, out / "synth_short", overwrite=True,
          **synth_options(videos, 0, SHORT_CLIP_FRAMES, seed))
    demo_shards("shards short clips", out / "synth_short" / "train.jsonl", out / "shards" / "short_clips")
    return {"data.train": out / "shards" / "short_clips"}


def starting_clip(out: Path, overrides: Sequence[str]) -> Path:
    """The open_clip CLIP that stage 1 starts from, of stage 1's shapes (random weights,
    seed 0: a stand-in for a downloaded checkpoint)."""
    path = out / "open_clip" / "tiny-clip.pt"
    path.unlink(missing_ok=True)
    make_open_clip(load_run_config(STAGES["short"], overrides=list(overrides)), path)
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
    if not torch.cuda.is_available():
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


def stage_line(summary: dict, seconds: float) -> dict:
    ev = summary["eval"]
    line = {"t2v_r1": ev["t2v_r1"], "chance": ev["chance_r1"], "v2t_r1": ev["v2t_r1"],
            "t2v_r5": ev["t2v_r5"], "pairs": ev["pairs"], "steps": summary["steps"],
            "train_seconds": round(seconds, 1), "samples_per_s": round(summary["samples_per_s"], 2),
            "checkpoints": summary["checkpoints"], "tensorboard": summary["tensorboard"]}
    if "zeroshot_top1" in ev:
        line.update(zeroshot_top1=ev["zeroshot_top1"], zeroshot_chance=ev["zeroshot_chance_top1"],
                    zeroshot_mean_per_class=ev["zeroshot_mean_per_class"])
    line.update({k: v for k, v in ev.items() if k.startswith(("mc_", "multilabel_"))})
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
    if "multilabel_map" in line:
        print(f"    zero-shot multi-label classification of the objects in a clip: mAP {line['multilabel_map']:.1f}% "
              f"(chance {line['multilabel_chance_map']:.1f}%)")
    if "mc_top1" in line:
        print(f"    multiple choice: {line['mc_top1']:.1f}% of {line['mc_items']} items (chance "
              f"{line['mc_chance_top1']:.1f}%; {line['mc_top1_with_question']:.1f}% with the question)")
    print(f"    checkpoints: {line['checkpoints']}\n    TensorBoard: tensorboard --logdir {line['tensorboard']}")


def comparison(short: dict, long: dict) -> dict:
    """Stage 2 over stage 1: the ratio of each accuracy both report (t2v R@1, multiple
    choice overall and per kind, multi-label mAP)."""
    keys = ["t2v_r1", "mc_top1", "multilabel_map",
            *(k for k in long if k.startswith("mc_top1_") and k != "mc_top1_with_question")]
    return {f"{k}_ratio": round(long[k] / short[k], 3) if short[k] else float("inf")
            for k in keys if k in long and k in short}


def print_comparison(short: dict, long: dict, ratios: dict, frames: int) -> None:
    print(f"  stage 2 (LongViViT, {frames} frames) vs stage 1 (ShortViViT at its own 16 frames):")
    print(f"    held-out text->video R@1 {long['t2v_r1']:.1f}% vs {short['t2v_r1']:.1f}% "
          f"({ratios['t2v_r1_ratio']:.2f}x; chance {long['chance']:.2f}%)")
    if "mc_top1_ratio" in ratios:
        print(f"    multiple choice {long['mc_top1']:.1f}% vs {short['mc_top1']:.1f}% "
              f"({ratios['mc_top1_ratio']:.2f}x; chance {long['mc_chance_top1']:.1f}%)")
        kinds = [k.removeprefix("mc_top1_").removesuffix("_ratio") for k in ratios
                 if k.startswith("mc_top1_") and k != "mc_top1_ratio"]  # mc_top1_KIND_ratio
        for kind in kinds:
            print(f"      {kind}: {long[f'mc_top1_{kind}']:.1f}% vs {short[f'mc_top1_{kind}']:.1f}% "
                  f"(chance {long[f'mc_chance_top1_{kind}']:.1f}%)")


def print_result(stages: dict[str, dict], total_s: float, frames: int = 64, short_clips: bool = False) -> dict:
    """Both stages' lines and their comparison; the last line of stdout is stage 2's as
    JSON, stage 1's under "short", with the ratios of stage 2's numbers to stage 1's (and
    with --tune stage 3's under "tune", its ratios to stage 2's inside it)."""
    print(f"\nlongvivit demo: the two-stage recipe in {total_s:.0f} s")
    short = f"16 frames of {SHORT_CLIP_FRAMES}-frame short clips" if short_clips else "16 frames"
    titles = {"short": f"stage 1, {short} + images", "long": f"stage 2, {frames} frames at 75% masking",
              "tune": f"stage 3, {frames} frames unmasked (the optional tuning stage)"}
    for name in stages:
        print_stage(titles[name], stages[name])
    ratios = comparison(stages["short"], stages["long"])
    print_comparison(stages["short"], stages["long"], ratios, frames)
    line = {**stages["long"], **ratios, "seconds": round(total_s, 1), "short": stages["short"]}
    if "tune" in stages:
        tuned = comparison(stages["long"], stages["tune"])
        print(f"  stage 3 vs stage 2: held-out text->video R@1 {stages['tune']['t2v_r1']:.1f}% vs "
              f"{stages['long']['t2v_r1']:.1f}% ({tuned['t2v_r1_ratio']:.2f}x)")
        line["tune"] = {**stages["tune"], **tuned}
    print(json.dumps(line), flush=True)
    return line


def train_stage(name: str, out: Path, frames: int, procs: int, overrides: Sequence[str], paths: dict) -> dict:
    """Run one stage under the launcher; its summary line. Raises StageFailed."""
    port, t0 = dist.free_port(), time.time()
    extra = ([f"model.video.frames={frames}"] if name != "short" else []) + list(overrides)
    cmd = train_command(STAGES[name], out / name, procs, port, paths, extra)
    print(f"[demo] train {name}: {' '.join(cmd)}", flush=True)
    rc = run_launcher(cmd, out / f"{name}.log", port)
    if rc != 0:
        raise StageFailed(name, rc, out / f"{name}.log")
    return stage_line(json.loads((out / name / "summary.json").read_text()), time.time() - t0)


def run_demo(out: str | Path = "runs/demo", videos: int = 400, images: int = 800, frames: int = 64,
             procs: int = 2, seed: int = 0, overrides: Sequence[str] = (), long_range: bool = False,
             objects: int = 0, tune: bool = False) -> dict:
    """Both stages from scratch in `out`; prints each phase and the result, returns the last
    line's JSON. `overrides` (key=value) apply to every stage's config; long_range: on the
    long-range benchmark (module docstring); tune: then stage 3, demo_tune.yaml (ViCLIP's
    unmasked fine-tune at a tenth of the rate) from stage 2."""
    t0, out = time.time(), Path(out).resolve()
    # A bad count or variant fails here (ConfigError), before anything is removed or written.
    validated(SynthConfig(**synth_options(videos, images, frames, seed, long_range, objects)))
    if long_range:  # and stage 1's short clips (prepare_short_clips)
        validated(SynthConfig(**synth_options(videos, 0, SHORT_CLIP_FRAMES, seed)))
    for name in STAGES:  # the demo always trains from scratch
        shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(out, videos, images, frames, seed, long_range, objects)
    # stage 1's own data: the stills, and with long_range the short clips (its val stays the long clips')
    short_data = {"data.images.train": out / "shards" / "images",
                  **(prepare_short_clips(out, videos, seed) if long_range else {})}
    clip = timed("open_clip", starting_clip, out, overrides)
    stages = {}
    order = [("short", f"open_clip:{clip}"), ("long", f"checkpoint:{out / 'short'}")]
    for name, init in order + ([("tune", f"checkpoint:{out / 'long'}")] if tune else []):
        own = short_data if name == "short" else {}
        stages[name] = train_stage(name, out, frames, procs, overrides, {**data, **own, "init": init})
    return print_result(stages, time.time() - t0, frames, short_clips=long_range)
