"""Decode benchmark: DALI CPU path vs PyAV on the same shards, and the loader vs the model.

    .venv/bin/python bench/decode.py [--shards DIR] [--frames 64] [--image-size 32] \
        [--record bench/RESULTS.md]

Without --shards it first writes a synthetic benchmark (longvivit synth, 64x64 at 1 FPS)
and its shards into a temporary folder. Then, side by side in one run:

1. dali_fps: decoded-and-resized frames per second of longvivit's DALI pipeline (CPU
   backend), batch after batch over the shards' encoded clips, held in memory.
2. pyav_fps: the same with PyAV: decode each clip (frame threading on), keep the same
   frames, convert to RGB and resize to the same output size with one reused swscale
   context, one clip at a time.
   `psnr_dali_vs_pyav` checks that both produce the same frames.
3. loader_samples_per_s: build_loader (DataLoader workers reading the shards, DALI in the
   prefetch thread, tokenization) over whole epochs.
4. model_steps_per_s: forward + backward + AdamW step of the `tiny` model on random
   batches of the same shape; train_steps_per_s: the same steps fed by the loader, which
   shows whether decoding overlaps the step or holds it up.

Prints one JSON object; --record appends it, with the command, date, machine and library
versions, to a Markdown file.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_shards(root: Path, videos: int, frames: int, size: int) -> tuple[Path, str]:
    from longvivit.data.shards import ShardOptions, write_shards
    from longvivit.data.synth import write_benchmark
    from longvivit.data.tokenizer import train_tokenizer

    write_benchmark(root / "bench", videos=videos, frames=frames, size=size, seed=0)
    write_shards(root / "bench" / "train.jsonl", root / "shards", ShardOptions(size=size),
                 workers=min(2, os.cpu_count() or 1), progress=False)
    return root / "shards", train_tokenizer([root / "bench" / "train.jsonl"], root / "tok")


def load_samples(shards: Path) -> list[dict]:
    from streaming import LocalDataset

    dataset = LocalDataset(str(shards))
    return [dataset[i] for i in range(len(dataset))]


def plans_for(samples: list[dict], frames: int):
    from longvivit.data.decode import plan_clip

    return [plan_clip(s, frames, "uniform", None, False) for s in samples]


def bench_dali(samples, plans, image_size: int, batch: int, threads: int, rounds: int):
    from longvivit.data.decode import VideoDecoder

    decoder = VideoDecoder(batch, image_size, torch.device("cpu"), num_threads=threads)
    out, n_frames, start = [], 0, time.perf_counter()
    for _ in range(rounds):
        for i in range(0, len(samples), batch):
            video, good, _ = decoder.decode([s["video"] for s in samples[i:i + batch]],
                                            plans[i:i + batch])
            n_frames += video.shape[0] * video.shape[1]
            out.append(video)
    return n_frames / (time.perf_counter() - start), torch.cat(out[: -(-len(samples) // batch)])


def pyav_clip(data: bytes, frame_ids: np.ndarray, image_size: int,
              scaler: "VideoReformatter") -> np.ndarray:
    """The clip's frames `frame_ids`, short side resized to image_size, centre-cropped.
    PyAV at its best: frame threading, and one swscale context reused for every frame
    (VideoFrame.reformat makes a new one per call, which is ~10x slower at these sizes)."""
    import io

    import av
    from av.video.reformatter import Interpolation

    wanted, picked = set(int(i) for i in frame_ids), {}
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                scale = image_size / min(frame.width, frame.height)
                w, h = round(frame.width * scale), round(frame.height * scale)
                rgb = scaler.reformat(frame, width=w, height=h, format="rgb24",
                                      interpolation=Interpolation.AREA).to_ndarray()
                y, x = (h - image_size) // 2, (w - image_size) // 2
                picked[i] = rgb[y:y + image_size, x:x + image_size]
            if i >= max(wanted):
                break
    return np.stack([picked[int(i)] for i in frame_ids])


def bench_pyav(samples, plans, image_size: int, rounds: int):
    from av.video.reformatter import VideoReformatter

    scaler = VideoReformatter()
    out, n_frames, start = [], 0, time.perf_counter()
    for _ in range(rounds):
        for s, p in zip(samples, plans):
            clip = pyav_clip(s["video"], p.frames, image_size, scaler)
            n_frames += len(clip)
            out.append(clip)
    return n_frames / (time.perf_counter() - start), np.stack(out[: len(samples)])


def data_config(shards: Path, tokenizer: str, args):
    from longvivit.data import DataConfig
    from longvivit.model.config import load_config

    return load_config(DataConfig, dict(
        train=str(shards), val=str(shards), tokenizer=tokenizer, frames=args.frames,
        image_size=args.image_size, batch_size=args.batch_size, num_workers=args.workers,
        text_length=32))


def bench_loader(cfg, epochs: int) -> float:
    from longvivit.data import build_loader

    loader = build_loader(cfg, "train", torch.device("cpu"), 0, 1, training=True)
    n, start = 0, time.perf_counter()
    for _ in range(epochs):
        n += sum(len(b["index"]) for b in loader)
    return n / (time.perf_counter() - start)


def tiny_model(frames: int, image_size: int):
    from longvivit.model import build_model, model_config

    cfg = model_config("tiny", [f"video.frames={frames}", f"video.image_size={image_size}"])
    model = build_model(cfg).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def train_step(model, optimizer, batch) -> None:
    loss, _ = model(batch["video"], batch["text_ids"], batch["text_mask"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def bench_model(args, steps: int) -> float:
    model, optimizer = tiny_model(args.frames, args.image_size)
    b, t, s = args.batch_size, args.frames, args.image_size
    batch = {"video": torch.randint(0, 256, (b, t, s, s, 3), dtype=torch.uint8),
             "text_ids": torch.randint(4, 200, (b, 32)), "text_mask": torch.ones(b, 32, dtype=bool)}
    train_step(model, optimizer, batch)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, batch)
    return steps / (time.perf_counter() - start)


def bench_training(cfg, args, epochs: int) -> float:
    from longvivit.data import build_loader

    model, optimizer = tiny_model(args.frames, args.image_size)
    loader = build_loader(cfg, "train", torch.device("cpu"), 0, 1, training=True)
    steps, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            train_step(model, optimizer, batch)
            steps += 1
    return steps / (time.perf_counter() - start)


def machine() -> dict:
    import av
    import nvidia.dali
    import streaming

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    return {"nproc": os.cpu_count(), "cpu": cpu, "load_avg_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "torch": torch.__version__,
            "dali": nvidia.dali.__version__, "pyav": av.__version__,
            "streaming": streaming.__version__, "torch_threads": torch.get_num_threads()}


def record(path: Path, result: dict, command: str) -> None:
    m, r = result["machine"], result["results"]
    lines = [
        f"\n## {result['date']}\n", f"    {command}\n",
        f"Machine: {m['nproc']} cores ({m['cpu']}), 1-min load average {m['load_avg_1m']} at "
        f"the start; Python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads), "
        f"DALI {m['dali']}, PyAV {m['pyav']}, streaming {m['streaming']}.\n",
        f"Data: {json.dumps(result['data'])}\n",
        "| measure | value |", "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in r.items()], "",
    ]
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", help="MDS shard folder (default: synthesize one)")
    p.add_argument("--tokenizer", help="sentencepiece model for the loader (with --shards)")
    p.add_argument("--videos", type=int, default=24, help="synthetic videos to write")
    p.add_argument("--video-frames", type=int, default=64, help="frames per synthetic video")
    p.add_argument("--video-size", type=int, default=64, help="synthetic/shard frame side")
    p.add_argument("--frames", type=int, default=64, help="frames per clip fed to the model")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=1, help="loader DataLoader workers")
    p.add_argument("--threads", type=int, default=1, help="DALI CPU threads")
    p.add_argument("--rounds", type=int, default=2, help="passes over the clips (decode)")
    p.add_argument("--epochs", type=int, default=2, help="epochs (loader, training)")
    p.add_argument("--steps", type=int, default=10, help="model-only steps (0: skip the "
                   "model and training measures)")
    p.add_argument("--record", help="append the result to this Markdown file")
    args = p.parse_args(argv)
    machine_info = machine()  # before the run: the load average of the machine as we found it

    with tempfile.TemporaryDirectory() as tmp:
        if args.shards:
            shards, tokenizer = Path(args.shards), args.tokenizer
        else:
            shards, tokenizer = make_shards(Path(tmp), args.videos, args.video_frames,
                                            args.video_size)
        samples = load_samples(shards)
        plans = plans_for(samples, args.frames)
        dali_fps, dali_out = bench_dali(samples, plans, args.image_size, args.batch_size,
                                        args.threads, args.rounds)
        pyav_fps, pyav_out = bench_pyav(samples, plans, args.image_size, args.rounds)
        mse = np.mean((dali_out.numpy().astype(float) - pyav_out.astype(float)) ** 2)
        results = {"dali_cpu_frames_per_s": round(dali_fps, 1),
                   "pyav_frames_per_s": round(pyav_fps, 1),
                   "dali_over_pyav": round(dali_fps / pyav_fps, 2),
                   "psnr_dali_vs_pyav_db": round(float(10 * np.log10(255 ** 2 / mse)), 1)}
        if tokenizer:
            cfg = data_config(shards, tokenizer, args)
            results["loader_samples_per_s"] = round(bench_loader(cfg, args.epochs), 2)
            if args.steps:
                steps = bench_model(args, args.steps)
                results["model_steps_per_s"] = round(steps, 2)
                results["model_samples_per_s"] = round(steps * args.batch_size, 2)
                results["train_steps_per_s_fed_by_loader"] = round(
                    bench_training(cfg, args, args.epochs), 2)
    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine_info,
        "data": {"clips": len(samples), "clip_frames": int(samples[0]["num_frames"]),
                 "clip_size": [int(samples[0]["width"]), int(samples[0]["height"])],
                 "frames_per_clip": args.frames, "image_size": args.image_size,
                 "batch_size": args.batch_size, "dali_threads": args.threads,
                 "loader_workers": args.workers},
        "results": results,
    }
    print(json.dumps(result))
    if args.record:
        record(Path(args.record), result, shlex.join([".venv/bin/python", *sys.argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
