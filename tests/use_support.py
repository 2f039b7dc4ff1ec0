"""Models and data for the tests of longvivit/use (tests/test_use_*.py), made once per session.

As data_support does, the results are cached in this module, so each is built once per
pytest session however many modules use it.

`random_export`: the tiny model with random weights written as an export (no training, no
DeepSpeed) beside a small synthetic benchmark, for the mechanics: chunks, ranks, rejects,
windows, preprocessing, bad input.

`trained_export`: the demo's recipe at a size a test affords: synthetic clips of 1-2 events,
16 frames at 1 FPS, 32 px, VP9 shards, a sentencepiece model, TRAIN_STEPS steps of
`longvivit train demo.yaml` in one process (ZeRO-3 on the CPU accelerator, about a minute
on 2 cores), exported. Its held-out split retrieves well above chance (t2v R@1 about 30%
against 3%), so retrieval numbers compared between two paths mean something.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf
from safetensors.torch import save_file

from longvivit.config import load_config, to_dict
from longvivit.data.load.tokenizer import train_tokenizer
from longvivit.data.prepare.shards import ShardOptions, write_shards
from longvivit.data.prepare.synth import write_benchmark
from longvivit.data.preprocessing import PREPROCESS_FILE, PreprocessConfig, write_preprocess_json
from longvivit.model import build_model, model_config
from longvivit.train.config import RunConfig

ROOT = Path(__file__).resolve().parent.parent
TRAIN_STEPS = 150
TRAINED_SYNTH = dict(videos=160, frames=16, size=32, seed=0, min_events=1, max_events=2)
RANDOM_SYNTH = dict(videos=12, frames=12, size=32, seed=1)
_cache: dict[str, dict] = {}


def env() -> dict:
    """The commands' environment: DeepSpeed's CPU accelerator, one thread, one plain process."""
    out = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        out.pop(name, None)
    return out


def longvivit(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m longvivit.cli ARGS` in a subprocess; asserts success when `check`."""
    proc = subprocess.run([sys.executable, "-m", "longvivit.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env(), cwd=ROOT)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def random_export(root: Path) -> dict:
    """{"export", "synth", "tokenizer", "cfg"}: a random tiny model (8 frames, 32 px) as an
    export, and the synthetic videos (12 frames) with their manifests."""
    if "random" in _cache:
        return _cache["random"]
    write_benchmark(root / "synth", **RANDOM_SYNTH)
    tokenizer = train_tokenizer([root / "synth" / "train.jsonl"], root / "spm")
    cfg = model_config("tiny", ["video.frames=8"])
    run = load_config(RunConfig, {"model": to_dict(cfg), "data": {
        "frames": 8, "image_size": 32, "text_length": 32, "tokenizer": tokenizer, "val": "", "train": ""}})
    out = root / "export"
    out.mkdir()
    save_file(build_model(cfg).state_dict(), str(out / "model.safetensors"))
    (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    (out / "run_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(run)))
    (out / "tokenizer.model").write_bytes(Path(tokenizer).read_bytes())
    write_preprocess_json(PreprocessConfig(1.0, 32, 8, "uniform", 32), out / PREPROCESS_FILE)
    _cache["random"] = {"export": out, "synth": root / "synth", "tokenizer": tokenizer, "cfg": cfg}
    return _cache["random"]


def trained_export(root: Path) -> dict:
    """{"export", "run", "synth", "shards", "tokenizer", "summary"}: see the module docstring."""
    if "trained" in _cache:
        return _cache["trained"]
    write_benchmark(root / "synth", **TRAINED_SYNTH)
    for split in ("train", "val"):
        summary = write_shards(root / "synth" / f"{split}.jsonl", root / "shards" / split, ShardOptions(size=32),
                               progress=False)
        assert summary["skipped"] == 0, summary
    tokenizer = train_tokenizer([root / "synth" / "train.jsonl"], root / "spm")
    longvivit("train", "demo.yaml", "progress=false", f"data.train={root / 'shards' / 'train'}",
              f"data.val={root / 'shards' / 'val'}", f"data.tokenizer={tokenizer}", "model.video.frames=16",
              "model.video.mask_ratio=0.5", "model.text.vocab_size=512", f"steps={TRAIN_STEPS}", "data.batch_size=16",
              f"out={root / 'train'}", "eval_gallery=0", "checkpoint_every=0", f"log_every={TRAIN_STEPS}")
    longvivit("export", root / "train", "--out", root / "export")
    summary = json.loads((root / "train" / "summary.json").read_text())
    _cache["trained"] = {"export": root / "export", "run": root / "train", "synth": root / "synth",
                         "shards": root / "shards", "tokenizer": tokenizer, "summary": summary}
    return _cache["trained"]
