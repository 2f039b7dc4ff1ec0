"""Embedding throughput: `longvivit embed` on the demo's videos, from raw files and from shards.

    .venv/bin/python bench/embed.py > bench/results/embed.json     (~3 min on 2 cores)

The demo's data and model shape (longvivit/configs/demo.yaml: the tiny preset, 64 frames at
1 FPS, 32 px; synthetic videos of 64 frames at 32 px, VP9), the model with random weights
written as an export (throughput does not depend on the weights). Each round embeds the
same VIDEOS videos into a fresh index, once from their raw files (a manifest: PyAV decodes
at the shard FPS and size, DALI resizes) and once from their shards (DALI's CPU decoder, the
loader's eval decode), the two cases taking turns (common.interleaved's reasoning), through
longvivit.use.embed.embed as `longvivit embed` runs it on one rank, captions included.
Reported per case, medians over the rounds: videos/s over the whole call (model load and
index merge included), and the share of the chunk time spent decoding (decode_seconds /
(decode_seconds + encode_seconds) of the index summary).

Prints one JSON object; bench/report.py renders it into RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from longvivit.config import load_config, to_dict  # noqa: E402
from longvivit.data.load.tokenizer import train_tokenizer  # noqa: E402
from longvivit.data.prepare.shards import ShardOptions, write_shards  # noqa: E402
from longvivit.data.prepare.synth import write_benchmark  # noqa: E402
from longvivit.data.preprocessing import PREPROCESS_FILE, config_for, write_preprocess_json  # noqa: E402
from longvivit.distributed import collectives as dist  # noqa: E402
from longvivit.model import build_model, model_config  # noqa: E402
from longvivit.train.config import RunConfig  # noqa: E402
from longvivit.use.embed import EmbedOptions, embed  # noqa: E402

FRAMES, SIZE = 64, 32  # demo.yaml's clip


def make_data(root: Path, videos: int) -> tuple[Path, Path, Path]:
    """(manifest of the raw videos, their shards, a random tiny export of the demo's shape)."""
    write_benchmark(root / "synth", videos=videos, frames=FRAMES, size=SIZE, seed=0)
    manifest = root / "synth" / "all.jsonl"  # both splits: every video written
    manifest.write_text("".join((root / "synth" / f"{split}.jsonl").read_text() for split in ("train", "val")))
    summary = write_shards(manifest, root / "shards", ShardOptions(size=SIZE), workers=min(2, os.cpu_count() or 1),
                           progress=False)
    assert summary["skipped"] == 0, summary
    tokenizer = train_tokenizer([manifest], root / "spm")
    cfg = model_config("tiny", [f"video.frames={FRAMES}", f"video.image_size={SIZE}"])
    run = load_config(RunConfig, {"model": to_dict(cfg), "data": {
        "frames": FRAMES, "image_size": SIZE, "text_length": 32, "tokenizer": tokenizer, "val": "", "train": ""}})
    export = root / "export"
    export.mkdir()
    save_file(build_model(cfg).state_dict(), str(export / "model.safetensors"))
    (export / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    (export / "run_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(run)))
    shutil.copy2(tokenizer, export / "tokenizer.model")
    write_preprocess_json(config_for(run.data, str(root / "shards")), export / PREPROCESS_FILE)
    return manifest, root / "shards", export


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=64, help="videos embedded per round (default 64)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    common.add_threads_arg(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    common.set_threads(args.threads)
    d = dist.read_env()
    dist.setup_env(d)
    dist.bind_device(d)
    opts = EmbedOptions(batch_size=args.batch_size, chunk_size=args.videos)
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        root = Path(tmp)
        manifest, shards, export = make_data(root, args.videos)
        summaries: dict[str, list[dict]] = {"raw files": [], "shards": []}

        def case(name: str, source: Path):
            def run() -> None:
                out = root / "index"
                shutil.rmtree(out, ignore_errors=True)
                summaries[name].append(embed(str(export), str(source), None, out, opts, d, progress=False))
            return run

        common.interleaved({"raw files": case("raw files", manifest), "shards": case("shards", shards)},
                           args.rounds)
    cases = {}
    for name, runs in summaries.items():
        runs = runs[1:]  # the warm-up
        assert all(s["videos"] == args.videos and s["rejected"] == 0 for s in runs), runs
        shares = [s["decode_seconds"] / (s["decode_seconds"] + s["encode_seconds"]) for s in runs]
        rates = [s["videos"] / s["seconds"] for s in runs]
        cases[name] = {"videos_per_s": round(common.median(rates), 2), "decode_share": round(common.median(shares), 3),
                       "videos_per_s_rounds": [round(x, 2) for x in rates],
                       "decode_share_rounds": [round(x, 3) for x in shares],
                       "seconds_rounds": [s["seconds"] for s in runs]}
    common.emit({"videos": args.videos, "frames": FRAMES, "size": SIZE, "preset": "tiny", "batch_size": args.batch_size,
                 "rounds": args.rounds, "device": "cpu", "cases": cases})
    return 0


if __name__ == "__main__":
    sys.exit(main())
