"""Decode benchmark (CPU): what a window deep in a clip costs, the decoders' frame rates,
their agreement, and the loader against the tiny model's training step.

    .venv/bin/python bench/decode.py > bench/results/decode.json     (~10 min on 2 cores)

It writes synthetic benchmarks and their shards (VP9, a keyframe every 8 frames) into a
temporary folder, then, side by side (cases interleaved round by round, medians):

1. seek: a 16-frame window at the start, middle and end of 250-frame clips (128 px),
   decoded and resized to 32 px, one clip at a time, by the CPU backends of
   longvivit.data.load.decode.VideoDecoder: "dali" (DALI's CPU decoder, which decodes from the
   start of the clip), "pyav" (PyAV seeks to the keyframe before the window, DALI
   resizes) and "auto" (what the loader runs: per clip, whichever decodes fewer frames);
   and the frames PyAV decoded for each window.
2. throughput: decoded-and-resized frames per second over batches of 4 clips, each
   backend at 1 and 2 threads: uniform sampling of 64 frames from 64-frame clips at 64 px
   (the demo), and random 16-frame windows in the 250-frame clips.
3. agreement: max |diff| between the two backends' batches (0: bit-identical), and PSNR
   between them and a PyAV-only reference that crops the same square, then resizes it
   with swscale's bilinear filter (what is left is the two resize filters).
4. loader: build_loader's samples/s with 1 and 2 decode threads, the tiny model's steps/s
   on random batches of the same shape, and its steps/s fed by the loader.

Prints one JSON object; bench/report.py renders bench/results/decode.json into RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CPU = torch.device("cpu")
WINDOW = 16
BACKENDS = ("dali", "pyav", "auto")


def make_shards(root: Path, videos: int, frames: int, size: int, tokenizer: bool = True
                ) -> tuple[Path, str | None]:
    from longvivit.data.load.tokenizer import train_tokenizer
    from longvivit.data.prepare.shards import ShardOptions, write_shards
    from longvivit.data.prepare.synth import write_benchmark

    write_benchmark(root / "bench", videos=videos, frames=frames, size=size, seed=0)
    write_shards(root / "bench" / "train.jsonl", root / "shards", ShardOptions(size=size),
                 workers=min(2, os.cpu_count() or 1), progress=False)
    tok = train_tokenizer([root / "bench" / "train.jsonl"], root / "tok") if tokenizer else None
    return root / "shards", tok


def load_samples(shards: Path) -> list[dict]:
    from streaming import LocalDataset

    dataset = LocalDataset(str(shards))
    return [dataset[i] for i in range(len(dataset))]


def plans_for(samples: list[dict], frames: int, sampling: str = "uniform", seed: int | None = None):
    from longvivit.data.load.decode import plan_clip

    return [plan_clip(s, frames, sampling, None if seed is None else np.random.default_rng([seed, i]),
                      False) for i, s in enumerate(samples)]


def window_plan(sample: dict, start: int):
    from longvivit.data.load.decode import ClipPlan, crop_box

    roi_start, roi_end = crop_box(int(sample["width"]), int(sample["height"]), None, False)
    return ClipPlan(np.arange(start, start + WINDOW, dtype=np.int32), WINDOW, roi_start, roi_end)


def decoders(image_size: int, batch: int, threads: int) -> dict:
    from longvivit.data.load.decode import VideoDecoder

    return {backend: VideoDecoder(batch, image_size, CPU, num_threads=threads, backend=backend)
            for backend in BACKENDS}


def decode_all(decoder, samples: list[dict], plans: list, batch: int) -> torch.Tensor:
    out = []
    for i in range(0, len(samples), batch):
        video, good, error = decoder.decode([s["video"] for s in samples[i:i + batch]], plans[i:i + batch])
        if len(good) != len(samples[i:i + batch]):
            raise RuntimeError(f"{decoder.backend}: clips failed to decode: {error}")
        out.append(video)
    return torch.cat(out)


def bench_seek(samples: list[dict], image_size: int, rounds: int) -> dict:
    """ms per 16-frame window at each start, per backend (1 thread, one clip per call)."""
    from longvivit.data.prepare.video import decode_frames

    n = int(samples[0]["num_frames"])
    starts = [0, (n - WINDOW) // 2, n - WINDOW]
    cases, decoded, routes = {}, {}, {}
    for backend, decoder in decoders(image_size, 1, 1).items():
        for start in starts:
            plans = [window_plan(s, start) for s in samples]
            cases[f"{backend}@{start}"] = lambda d=decoder, p=plans: decode_all(d, samples, p, 1)
            routes[backend, start] = "dali" if decoder._dali_decodes(plans[0]) else "pyav"
    for start in starts:
        stats = {}
        for s in samples:
            decode_frames(s["video"], range(start, start + WINDOW), stats)
        decoded[start] = stats["decoded"] / len(samples)
    times = common.interleaved(cases, rounds)
    ms = {name: 1e3 * common.median(t) / len(samples) for name, t in times.items()}
    rows = [{"backend": b, "start": s, "decoder": routes[b, s], "ms_per_window": round(ms[f"{b}@{s}"], 2),
             "ms_per_window_samples": [round(1e3 * x / len(samples), 2) for x in times[f"{b}@{s}"]],
             "vs_first_window": round(ms[f"{b}@{s}"] / ms[f"{b}@{starts[0]}"], 2)}
            for b in BACKENDS for s in starts]
    return {"clips": len(samples), "clip_frames": n, "clip_size": [int(samples[0]["width"]), int(samples[0]["height"])],
            "window": WINDOW, "image_size": image_size, "keyframe_interval": 8, "rows": rows,
            "pyav_frames_decoded_per_window": {str(s): decoded[s] for s in starts}}


def bench_throughput(name: str, samples: list[dict], plans: list, image_size: int, rounds: int) -> list[dict]:
    """Frames/s per backend and thread count over batches of 4 clips."""
    frames = sum(len(p.frames) for p in plans)
    cases = {f"{b}/{t}": (lambda d=d: decode_all(d, samples, plans, 4))
             for t in (1, 2) for b, d in decoders(image_size, 4, t).items()}
    times = common.interleaved(cases, rounds)
    return [{"data": name, "backend": key.split("/")[0], "threads": int(key.split("/")[1]),
             "frames_per_s": round(frames / common.median(t), 1),
             "frames_per_s_samples": [round(frames / x, 1) for x in t]} for key, t in times.items()]


def pyav_reference(sample: dict, plan, image_size: int) -> np.ndarray:
    """The clip's frames `plan.frames` by PyAV alone: decoded, the plan's crop square cut
    (whole pixels), then resized to image_size by swscale (bilinear, which averages over the
    footprint when shrinking, as DALI's antialiased linear resize does)."""
    import av
    from av.video.reformatter import Interpolation, VideoReformatter

    from longvivit.data.prepare.video import decode_frames

    (y0, x0), (y1, x1) = np.round(plan.roi_start).astype(int), np.round(plan.roi_end).astype(int)
    scaler, out = VideoReformatter(), []
    for rgb in decode_frames(sample["video"], plan.frames):
        square = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[y0:y1, x0:x1]), format="rgb24")
        out.append(scaler.reformat(square, width=image_size, height=image_size, format="rgb24",
                                   interpolation=Interpolation.BILINEAR | Interpolation.ACCURATE_RND
                                   ).to_ndarray())
    return np.stack(out)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def agreement(samples: list[dict], plans: list, image_size: int) -> dict:
    out = {b: decode_all(d, samples, plans, 4).numpy() for b, d in decoders(image_size, 4, 1).items()}
    reference = np.stack([pyav_reference(s, p, image_size) for s, p in zip(samples, plans)])
    return {"max_abs_diff_pyav_vs_dali": int(np.abs(out["pyav"].astype(int) - out["dali"]).max()),
            "psnr_dali_vs_pyav_reference_db": round(psnr(out["dali"], reference), 1)}


def data_config(shards: Path, tokenizer: str, frames: int, image_size: int, batch: int, workers: int):
    from longvivit.config import load_config
    from longvivit.data import DataConfig

    return load_config(DataConfig, dict(train=str(shards), val=str(shards), tokenizer=tokenizer, frames=frames,
                                        image_size=image_size, batch_size=batch, num_workers=workers,
                                        text_length=32))


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


def with_threads(threads: int):
    """The loader builds its decoder with default_threads(): pin it for one measure."""
    import longvivit.data.load.decode as decode

    decode.default_threads = lambda: threads


def bench_loader(cfg, threads: int, epochs: int, model=None) -> float:
    """Samples/s of build_loader over `epochs` epochs (with a model: training steps/s)."""
    import time

    from longvivit.data import build_loader

    with_threads(threads)
    loader = build_loader(cfg, "train", CPU, 0, 1, training=True)
    n, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            if model is not None:
                train_step(*model, batch)
            n += 1 if model is not None else len(batch["index"])
    seconds = time.perf_counter() - start
    loader.close()
    return n / seconds


def bench_model(frames: int, image_size: int, batch: int, steps: int) -> float:
    model, optimizer = tiny_model(frames, image_size)
    fake = {"video": torch.randint(0, 256, (batch, frames, image_size, image_size, 3), dtype=torch.uint8),
            "text_ids": torch.randint(4, 200, (batch, 32)), "text_mask": torch.ones(batch, 32, dtype=torch.bool)}
    train_step(model, optimizer, fake)  # warm-up
    return steps / sum(common.timed(lambda: train_step(model, optimizer, fake)) for _ in range(steps))


def loader_section(shards: Path, tokenizer: str, args) -> dict:
    """Loader alone and loader feeding the tiny model's step, at 1 and 2 decode threads,
    the thread counts taking turns round by round (medians)."""
    cfg = data_config(shards, tokenizer, 64, 32, 4, 1)
    samples = {t: {"loader": [], "train": []} for t in (1, 2)}
    for r in range(args.loader_rounds):
        for threads in ((1, 2) if r % 2 == 0 else (2, 1)):
            samples[threads]["loader"].append(bench_loader(cfg, threads, args.epochs))
            samples[threads]["train"].append(bench_loader(cfg, threads, args.epochs, tiny_model(64, 32)))
            common.log(f"  loader round {r + 1}, {threads} thread(s): {samples[threads]['loader'][-1]:.1f} "
                       f"samples/s, fed {samples[threads]['train'][-1]:.3f} steps/s")
    rows = [{"threads": t, "loader_samples_per_s": round(common.median(x["loader"]), 2),
             "loader_samples_per_s_samples": [round(v, 2) for v in x["loader"]],
             "train_steps_per_s_fed_by_loader": round(common.median(x["train"]), 3),
             "train_steps_per_s_samples": [round(v, 3) for v in x["train"]]} for t, x in samples.items()]
    return {"frames": 64, "image_size": 32, "batch": 4, "loader_workers": 1, "epochs": args.epochs,
            "rounds": args.loader_rounds, "model_steps_per_s": round(bench_model(64, 32, 4, args.steps), 3),
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds per decode measure")
    p.add_argument("--loader-rounds", type=int, default=3, help="rounds of the loader measures")
    p.add_argument("--epochs", type=int, default=2, help="loader epochs per loader measure")
    p.add_argument("--steps", type=int, default=10, help="model-only steps")
    p.add_argument("--skip-loader", action="store_true", help="only the decoder measures")
    args = p.parse_args(argv)
    common.set_threads(1)
    import av
    import nvidia.dali

    with tempfile.TemporaryDirectory() as tmp:
        demo, tokenizer = make_shards(Path(tmp) / "demo", 24, 64, 64)
        long, _ = make_shards(Path(tmp) / "long", 8, 250, 128, tokenizer=False)
        demo_samples, long_samples = load_samples(demo), load_samples(long)
        common.log("seek")
        seek = bench_seek(long_samples, 32, args.rounds)
        common.log("throughput")
        uniform = plans_for(demo_samples, 64)
        windows = plans_for(long_samples, WINDOW, "fps", seed=0)
        throughput = (bench_throughput("uniform 64 of 64 frames, 64 px", demo_samples, uniform, 32, args.rounds)
                      + bench_throughput("16-frame windows of 250, 128 px", long_samples, windows, 32, args.rounds))
        agree = {"uniform": agreement(demo_samples, uniform, 32), "windows": agreement(long_samples, windows, 32)}
        loader = None if args.skip_loader else loader_section(demo, tokenizer, args)
    common.emit({"versions": {"dali": nvidia.dali.__version__, "pyav": av.__version__,
                              "ffmpeg": ".".join(map(str, av.library_versions["libavcodec"]))},
                 "seek": seek, "throughput": throughput, "agreement": agree, "loader": loader})
    return 0


if __name__ == "__main__":
    sys.exit(main())
