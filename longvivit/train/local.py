"""The local form of a run config: `longvivit train CONFIG local=true` on a laptop or CI box.

Like big_vision's `runlocal` and torchtitan's debug model: the same config shrunk until it
runs in seconds on CPU, keeping everything that decides whether it works:

  kept       ZeRO stage, offload and precision (the ds_config's CPU twin, e.g.
             zero3_offload.json -> zero3_offload_cpu.json), grad_accum, masking, freezing
             (trainable_last_k, train_stem), activation checkpointing (scaled to the depth),
             attention, pooling, CLS token, activation, tubelet, sampling, data source,
             contrastive gather, and the init chain (below)
  shrunk     model dims (video 128 wide, 6 deep, 2 heads, trainable_last_k <= 4; text 64
             wide, 2 deep; embeddings 64: the same for every config, so stages chain),
             frames (8 if the config has <= 16, else 16; a source's own too), image size
             (two or more patches a side, ~32 px), micro-batch <= 4 (each source's too),
             steps <= 20 (warmup a quarter of them),
             eval <= 2 batches, no loader workers, global_batch 0 (a cluster's global
             batch on a laptop's ranks would mean a huge grad_accum or micro-batch),
             data.canonical_nodes 0 (a cluster config's fixed 64 would pad the tiny data
             with repeats)
  data       the synthetic benchmark (24-frame clips at 1 FPS, 32 px VP9 shards, image
             stills as JPEG shards, and a sentencepiece model), made once under
             `local_dir`/data; each of data.sources keeps its name, kind, weight and mask
             ratio and reads the local shards of its kind (a list of streams becomes that
             one folder)
  paths      out=runs/X -> `local_dir`/X; init=checkpoint:runs/X[/checkpoints/...] ->
             checkpoint:`local_dir`/X[/checkpoints/...], so stages chain locally as they
             do on the cluster; init=open_clip:PATH -> an open_clip CLIP built here with
             random weights and the local video tower's shape (no download)

Keys given on the command line win over the local form (`local=true steps=50` trains 50
steps), so any part of it can be taken back, except that a ds_config always becomes its CPU
twin and an open_clip init the local CLIP file (no real checkpoint fits the local shape).
"""
from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from longvivit import configs
from longvivit.config import ConfigError
from longvivit.data.load.tokenizer import train_tokenizer
from longvivit.data.prepare.shards import ShardOptions, write_shards
from longvivit.data.prepare.synth import write_benchmark

if TYPE_CHECKING:
    from longvivit.data.config import SourceConfig
    from longvivit.train.config import RunConfig

# One video depth for every config, so that chained stages (short -> long) share an
# architecture; trainable_last_k is capped below it so frozen blocks remain.
VIDEO_WIDTH, VIDEO_HEADS, VIDEO_DEPTH, MAX_TRAINABLE = 128, 2, 6, 4
TEXT_WIDTH, TEXT_DEPTH, TEXT_HEADS, TEXT_VOCAB = 64, 2, 2, 512
EMBED_DIM = 64
MAX_BATCH, MAX_STEPS, MAX_EVAL_BATCHES = 4, 20, 2
DATA_VIDEOS, DATA_FRAMES, DATA_SIZE, DATA_IMAGES = 48, 24, 32, 32
LOCAL_SHARDS = {"video": "train", "image": "images"}  # a source's kind -> its local shards (make_data)


def local_frames(frames: int) -> int:
    return 8 if frames <= 16 else 16


def local_image_size(patch: int) -> int:
    """About 32 px, a multiple of the patch, at least two patches a side."""
    return patch * max(2, 32 // patch)


def local_path(path: str, local_dir: str) -> str:
    """runs/X -> LOCAL/X and runs/X/checkpoints/... -> LOCAL/X/checkpoints/...: a run
    directory keeps its name under local_dir, so chained stages find each other."""
    parts = Path(path).parts
    if "checkpoints" in parts[1:]:
        i = parts.index("checkpoints", 1)
        return str(Path(local_dir, parts[i - 1], *parts[i:]))
    return str(Path(local_dir, Path(path).name))


def cpu_twin(ds_config: str) -> str:
    """X.json -> X_cpu.json: the same ZeRO stage, offload and
    precision, with what DeepSpeed's CPU accelerator can run."""
    p = Path(ds_config)
    if p.stem.endswith("_cpu"):
        return ds_config
    twin = str(p.with_name(f"{p.stem}_cpu{p.suffix}"))
    if not configs.resolve(twin).is_file():
        raise ConfigError(f"ds_config: {ds_config} has no CPU twin {twin} for local=true")
    return twin


def open_clip_file(cfg: RunConfig, path: str) -> str:
    """The local CLIP file for `path`, named by every shape its weights have."""
    v, t = cfg.model.video, cfg.model.text
    stem = Path(path).stem.split("-local-")[0]  # idempotent: a local file maps to itself
    name = (f"{stem}-local-w{v.width}-d{v.depth}-m{v.mlp_ratio:g}-p{v.tubelet[1]}-s{v.image_size}"
            f"-e{cfg.model.embed_dim}-ln{int(v.ln_pre)}-t{t.width}x{t.depth}x{t.heads}"
            f"-m{t.mlp_ratio:g}-v{t.vocab_size}-c{t.context_length}.pt")
    return str(Path(cfg.local_dir, "open_clip", name))


def local_changes(cfg: RunConfig) -> dict:
    """The entries that turn `cfg` into its local form (merged under the CLI overrides)."""
    v, d, ld = cfg.model.video, cfg.data, cfg.local_dir
    checkpointed = 0 if not v.grad_checkpointing else max(1, round(v.grad_checkpointing * VIDEO_DEPTH / v.depth))
    steps = min(cfg.steps, MAX_STEPS)
    video = {"frames": local_frames(v.frames), "image_size": local_image_size(v.tubelet[1]),
             "width": VIDEO_WIDTH, "heads": VIDEO_HEADS, "depth": VIDEO_DEPTH, "grad_checkpointing": checkpointed}
    if v.trainable_last_k is not None:
        video["trainable_last_k"] = min(v.trainable_last_k, MAX_TRAINABLE)
    text = {"width": TEXT_WIDTH, "depth": TEXT_DEPTH, "heads": TEXT_HEADS}
    if cfg.model.text.tokenizer == "sentencepiece":  # open_clip's BPE keeps its vocabulary
        text["vocab_size"] = TEXT_VOCAB
    data_dir = Path(ld, "data")
    # the sources in full (a list merges as a whole), the older form cleared (it would apply over them)
    data = {"sources": [local_source(src, data_dir) for src in d.sources], "train": "",
            "images": {"train": "", "proportion": None, "batch_size": None, "mask_ratio": None},
            "val": str(data_dir / "val"), "tokenizer": str(data_dir / "spm.model"),
            "frames": "${model.video.frames}", "image_size": "${model.video.image_size}",
            "batch_size": min(d.batch_size, MAX_BATCH), "num_workers": 0,
            "synthetic_samples": min(d.synthetic_samples, 64), "canonical_nodes": 0}
    changes = {"model": {"embed_dim": EMBED_DIM, "video": video, "text": text}, "data": data,
               "out": local_path(cfg.out, ld), "steps": steps, "global_batch": 0,
               "optim": {"warmup_steps": min(cfg.optim.warmup_steps, max(1, steps // 4))},
               "eval_max_batches": min(cfg.eval_max_batches or MAX_EVAL_BATCHES, MAX_EVAL_BATCHES)}
    if cfg.init.startswith("checkpoint:"):
        changes["init"] = f"checkpoint:{local_path(cfg.init.split(':', 1)[1], ld)}"
    return changes


def local_source(src: SourceConfig, data_dir: Path) -> dict:
    """A data.sources entry in the local form: the local shards of its kind, its own batch
    size and frames shrunk as data's are."""
    return {"name": src.name, "kind": src.kind, "weight": src.weight, "shards": str(data_dir / LOCAL_SHARDS[src.kind]),
            "batch_size": None if src.batch_size is None else min(src.batch_size, MAX_BATCH),
            "frames": None if src.frames is None else local_frames(src.frames), "mask_ratio": src.mask_ratio}


def finish_local_form(cfg: RunConfig) -> None:
    """What the CLI may not take back: the ds_config's CPU twin (a CPU run needs one) and,
    for open_clip:PATH, the local CLIP file of the final shape (no real checkpoint fits)."""
    cfg.ds_config = cpu_twin(cfg.ds_config)
    if cfg.init.startswith("open_clip:"):
        cfg.init = f"open_clip:{open_clip_file(cfg, cfg.init.split(':', 1)[1])}"


# ---------------------------------------------------------------------------- assets

@contextmanager
def _locked(root: Path):
    """One process at a time builds the local assets (every rank validates its config)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(cfg: RunConfig) -> None:
    """Make what the local form reads and nothing has written yet: the synthetic data
    (shards source) and the open_clip file of an open_clip init."""
    with _locked(Path(cfg.local_dir)):
        if cfg.data.source == "shards":
            make_data(Path(cfg.local_dir, "data"))
        if cfg.init.startswith("open_clip:"):
            make_open_clip(cfg, Path(cfg.init.split(":", 1)[1]))


def make_data(root: Path) -> None:
    """Synthetic benchmark -> train/val shards -> tokenizer, built aside then renamed."""
    if (root / "spm.model").is_file():
        return
    tmp = root.with_name(f".{root.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_benchmark(tmp / "synth", videos=DATA_VIDEOS, frames=DATA_FRAMES, seed=0, size=DATA_SIZE,
                    images=DATA_IMAGES)
    for split in ("train", "val", "images"):
        write_shards(tmp / "synth" / f"{split}.jsonl", tmp / split,
                     ShardOptions(size=DATA_SIZE, still_images=split == "images"), workers=1, progress=False)
    # from the manifests, not the shards: reading shards with streaming under a launcher's
    # RANK/WORLD_SIZE would start a process group while the other ranks wait on the lock
    train_tokenizer([tmp / "synth" / "train.jsonl", tmp / "synth" / "images.jsonl"], tmp / "spm")
    shutil.rmtree(tmp / "synth")
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)


def make_open_clip(cfg: RunConfig, path: Path) -> None:
    """An open_clip CLIP (random weights, seed 0) whose image tower has the local video
    tower's shape and whose text tower has the local text tower's (used when it is
    open_clip's, text.arch=clip), saved as a state dict for init_from_open_clip."""
    if path.is_file():
        return
    import open_clip  # an optional extra: only the local forms of open_clip-initialised configs need it

    v = cfg.model.video
    vision = dict(image_size=v.image_size, patch_size=v.tubelet[1], width=v.width, layers=v.depth,
                  head_width=v.width // v.heads, mlp_ratio=v.mlp_ratio, no_ln_pre=not v.ln_pre,
                  pool_type="tok" if v.pool == "cls" else "avg")
    t = cfg.model.text
    text = dict(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width, heads=t.heads,
                layers=t.depth, mlp_ratio=t.mlp_ratio)
    torch.manual_seed(0)
    clip = open_clip.model.CLIP(embed_dim=cfg.model.embed_dim, vision_cfg=vision, text_cfg=text,
                                quick_gelu=v.activation == "quick_gelu")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(clip.state_dict(), tmp)
    os.replace(tmp, path)


__all__ = ["local_changes", "finish_local_form", "prepare", "cpu_twin", "local_path"]
