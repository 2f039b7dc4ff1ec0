"""`longvivit embed MODEL INPUT --out DIR`: embeddings of every video and caption of an input.

INPUT is a manifest (.jsonl/.json/.csv, as `longvivit shards` reads: each row's clip
[start, end) and its captions), a folder (every video file under it, by relative path: the
id), one video file, or shards (a local folder with index.json, or s3://...; the clips and
captions as the loader reads them, decoded by DALI: NVDEC on a GPU). `--text FILE` adds one
text per line. The index it writes: index.py.

The inputs are cut into chunks of `chunk_size` videos (and TEXT_CHUNK texts), in input
order; each chunk is embedded whole and written as one file, so a killed run, rerun with the
same command, skips the chunks it finished, and the index does not depend on how many
ranks made it (each chunk is batched the same way on any rank). Under the deepspeed
launcher, torchrun or srun, rank r takes every world-th unfinished chunk; when all are done
rank 0 merges them into one index. A video that cannot be read or decoded is skipped and
listed in rejects.jsonl with its reason (as `longvivit shards` lists its rejects); nothing
else is lost.

With `window` (frames at the shard FPS), a video's windows of `window` frames every `stride`
frames are embedded (each reduced to the model's frame count by data.sampling), each with
its start and end in seconds, and the video's own row is their pooled mean.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from longvivit.config import ConfigError, check
from longvivit.data.load.decode import ClipPlan, VideoDecoder, crop_box, plan_clip, select_frames
from longvivit.data.load.reader import launcher_env, open_split
from longvivit.data.load.tokenizer import read_captions
from longvivit.data.prepare.manifest import Reject, read_manifest
from longvivit.data.prepare.remote import is_remote
from longvivit.data.prepare.video import VideoError
from longvivit.distributed import collectives as dist
from longvivit.train.config import check_shards, check_writable_dir, one_line
from longvivit.use import index
from longvivit.use.encoder import Encoder, check_model, load
from longvivit.use.index import Chunk, pooled
from longvivit.use.preprocess import Clip

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v", ".ts", ".mts", ".mpg", ".mpeg", ".flv",
                  ".wmv", ".3gp", ".ogv")
MANIFEST_SUFFIXES = (".jsonl", ".json", ".csv")
TEXT_CHUNK = 4096  # texts per chunk: a chunk of texts costs about what one of videos does


@dataclass
class Item:
    """One video to embed."""
    id: str
    video: str  # the file; for shards, the shard location
    start: float | None = None
    end: float | None = None
    captions: list[str] = field(default_factory=list)
    sample: int = -1  # the sample's index in the shards (-1: a file)
    data: dict | None = field(default=None, repr=False)  # the shard sample, once read


@dataclass
class Inputs:
    kind: str  # manifest | folder | video | shards | "" (texts only)
    items: list[Item]
    rejects: list[dict]  # manifest rows that name no usable clip
    texts: list[str]


@dataclass(frozen=True)
class EmbedOptions:
    batch_size: int = 8  # clips (or windows) per forward
    chunk_size: int = 64  # videos per chunk file
    window: int = 0  # frames per window (0: the whole clip)
    stride: int = 0  # frames between window starts (0: window)
    dtype: str = "float16"
    captions: bool = True  # also embed the captions of a manifest's or shards' videos
    local_cache: str = ""  # a remote split's local copy ("" : a folder under /tmp)


# ---------------------------------------------------------------------------- inputs

def input_kind(path: str) -> str:
    if is_remote(path) or (Path(path) / "index.json").is_file():
        return "shards"
    if Path(path).is_dir():
        return "folder"
    return "manifest" if Path(path).suffix.lower() in MANIFEST_SUFFIXES else "video"


def list_inputs(path: str | None, text_file: str | None, local_cache: str = "") -> Inputs:
    """The videos of INPUT in order, the manifest rows refused, and the --text lines.
    Raises OSError / ValueError for an input that cannot be read at all."""
    texts = list(read_captions(text_file)) if text_file else []
    if not path:
        return Inputs("", [], [], texts)
    kind = input_kind(path)
    if kind == "shards":
        items = [Item("", path, sample=i) for i in range(shard_count(path, local_cache))]
        return Inputs(kind, items, [], texts)
    if kind == "folder":
        root = Path(path)
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        return Inputs(kind, [Item(str(p.relative_to(root)), str(p)) for p in files], [], texts)
    if kind == "video":
        return Inputs(kind, [Item(Path(path).name, str(Path(path).resolve()))], [], texts)
    items, rejects = [], []
    for row in read_manifest(path):
        if isinstance(row, Reject):
            rejects.append({"id": None, **row.to_json()})
        else:
            items.append(Item(str(row.id), row.video, row.start, row.end, list(row.captions)))
    return Inputs(kind, items, rejects, texts)


def shard_count(path: str, local_cache: str = "") -> int:
    """Samples in a shard location (a local index.json, or a remote split's)."""
    if not is_remote(path):
        shards = json.loads((Path(path) / "index.json").read_bytes())["shards"]
        return sum(int(s["samples"]) for s in shards)
    return len(open_shards(path, local_cache, 0, 1))


def open_shards(path: str, local_cache: str, rank: int, world_size: int):
    """The shards as the loader opens them (streaming; a remote split is cached locally)."""
    with launcher_env(rank, world_size):
        return open_split(path, 1, False, 0, local_cache)


# ---------------------------------------------------------------------------- the plan

def chunk_names(inputs: Inputs, opts: EmbedOptions) -> list[str]:
    """v00000, v00001, ... for the videos, then t00000, ... for the --text lines."""
    videos = -(-len(inputs.items) // opts.chunk_size)
    texts = -(-len(inputs.texts) // TEXT_CHUNK)
    return [f"v{i:05d}" for i in range(videos)] + [f"t{i:05d}" for i in range(texts)]


def plan_of(model: str, input_path: str | None, text_file: str | None, inputs: Inputs, opts: EmbedOptions) -> dict:
    """What the index is of: a rerun into the same folder must have the same plan."""
    listing = json.dumps([[i.id, i.video, i.start, i.end, i.sample] for i in inputs.items] + inputs.texts)
    return {"model": str(Path(model).resolve()), "input": _where(input_path), "text": _where(text_file),
            "inputs_sha1": hashlib.sha1(listing.encode("utf-8", "backslashreplace")).hexdigest(),
            "videos": len(inputs.items), "text_lines": len(inputs.texts), **asdict(opts)}


def _where(path: str | None) -> str | None:
    return None if path is None else path if is_remote(path) else str(Path(path).resolve())


def check_out(out: str, plan: dict, overwrite: bool) -> None:
    """An --out folder that is empty, holds an unfinished index of the same plan (resumed),
    or, with `overwrite`, an index of another plan (replaced). ConfigError otherwise."""
    folder = Path(out)
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    others = sorted(p.name for p in folder.iterdir() if p.name not in index.OUTPUTS)
    check(not others, "--out", f"{out}: holds files that are not an index ({', '.join(others[:3])}); "
          "give an empty or new folder")
    stored = read_plan(folder)
    if overwrite or stored == plan:
        return
    changed = sorted(k for k in set(plan) | set(stored or {}) if (stored or {}).get(k) != plan.get(k))
    raise ConfigError(f"--out: {out}: holds an index of other inputs or options ({', '.join(changed[:4])} "
                      "differ); give another folder or --overwrite")


def read_plan(folder: Path) -> dict | None:
    try:
        return json.loads((folder / index.PLAN).read_text())
    except (OSError, ValueError):
        return None


def start_out(out: Path, plan: dict, overwrite: bool) -> set[str]:
    """Rank 0: the folder made (or emptied, `overwrite` with another plan), its plan
    written; returns the chunks already finished."""
    if overwrite and read_plan(out) != plan:
        for name in index.OUTPUTS:
            target = out / name
            if target.is_dir():
                for p in target.iterdir():
                    p.unlink()
                target.rmdir()
            else:
                target.unlink(missing_ok=True)
    (out / index.CHUNKS).mkdir(parents=True, exist_ok=True)
    (out / index.SUMMARY).unlink(missing_ok=True)  # an index being (re)made is not complete
    (out / index.PLAN).write_text(json.dumps(plan, indent=2) + "\n")
    return index.finished_chunks(out)


# ---------------------------------------------------------------------------- embedding

class Embedder:
    """Embeds chunks of one input on this rank's device."""

    def __init__(self, encoder: Encoder, inputs: Inputs, opts: EmbedOptions, rank: int, world_size: int):
        self.encoder, self.inputs, self.opts = encoder, inputs, opts
        self.cfg = encoder.preprocess.cfg
        self.stride = opts.stride or opts.window
        self.shards = open_shards(inputs.items[0].video, opts.local_cache, rank, world_size) \
            if inputs.kind == "shards" and inputs.items else None
        self.decoder = VideoDecoder(1, self.cfg.image_size, encoder.device) if self.shards is not None else None
        self.seconds = {"decode": 0.0, "encode": 0.0}

    def chunk(self, name: str) -> Chunk:
        chunk = Chunk()
        if name.startswith("t"):
            start = int(name[1:]) * TEXT_CHUNK
            self._texts(chunk, self.inputs.texts[start:start + TEXT_CHUNK], None)
            return chunk
        start = int(name[1:]) * self.opts.chunk_size
        batch = _Batch(self)
        for item in self.inputs.items[start:start + self.opts.chunk_size]:
            self._video(chunk, batch, item)
        batch.flush()
        self._finish_videos(chunk, batch.out)
        return chunk

    def _video(self, chunk: Chunk, batch: "_Batch", item: Item) -> None:
        """Decode one video (its windows) into `batch`, or list it as a reject."""
        t0 = time.perf_counter()
        try:
            item = self._resolve(item)
            row = len(chunk.videos)
            views = list(self._views(item))
        except Exception as err:  # noqa: BLE001 -- one bad video must never stop the run
            chunk.rejects.append(reject(item, err))
            return
        finally:
            self.seconds["decode"] += time.perf_counter() - t0
        chunk.videos.append({"id": item.id, "video": item.video, **({"sample": item.sample} if item.sample >= 0 else {}),
                             "start": item.start, "end": item.end, "duration_s": views[-1][1] - (item.start or 0.0),
                             "windows": len(views) if self.opts.window else 0, "captions": item.captions})
        for k, (start_s, end_s, clip) in enumerate(views):
            batch.add((row, k, start_s, end_s), clip)

    def _resolve(self, item: Item) -> Item:
        """A shard item with its id and captions (read from its sample)."""
        if item.sample < 0:
            return item
        sample = self.shards[item.sample]
        return Item(str(sample["id"]), item.video, captions=list(sample["captions"]), sample=item.sample, data=sample)

    def _views(self, item: Item) -> Iterator[tuple[float, float, Clip]]:
        """(start s, end s, clip) of the whole clip, or of each window."""
        if item.sample >= 0:
            yield from self._shard_views(item.data)
            return
        pre = self.encoder.preprocess
        if not self.opts.window:
            clip = pre(item.video, item.start, item.end)
            yield (item.start or 0.0), (item.start or 0.0) + clip.duration_s, clip
            return
        for w in pre.windows(item.video, self.opts.window, self.stride, item.start, item.end):
            yield w.start_s, w.end_s, Clip(w.video, w.real_frames, w.end_s - w.start_s)

    def _shard_views(self, sample: dict) -> Iterator[tuple[float, float, Clip]]:
        """A shard sample decoded as the loader decodes it in eval (or window by window)."""
        n, fps = int(sample["num_frames"]), float(sample["fps"])
        if not self.opts.window:
            spans = [(0, n, plan_clip(sample, self.cfg.frames, self.cfg.sampling, None, False))]
        else:
            spans = [(a, b, self._window_plan(sample, a, b)) for a, b in window_spans(n, self.opts.window, self.stride)]
        for a, b, plan in spans:
            video, good, error = self.decoder.decode([sample["video"]], [plan])
            if not good:
                raise VideoError("decode error", error)
            yield a / fps, b / fps, Clip(video[0], plan.real_frames, (b - a) / fps)

    def _window_plan(self, sample: dict, a: int, b: int) -> ClipPlan:
        idx, real = select_frames(b - a, self.cfg.frames, self.cfg.sampling, None)
        width, height = int(sample["width"]), int(sample["height"])
        roi_start, roi_end = crop_box(width, height, None, False)
        return ClipPlan((idx + a).astype(np.int32), real, roi_start, roi_end, str(sample.get("codec", "")), width, height)

    def _finish_videos(self, chunk: Chunk, out: dict) -> None:
        """The batch's embeddings into the chunk: a row per video (pooled over its
        windows), its windows, its captions."""
        for row, video in enumerate(chunk.videos):
            views = sorted(key for key in out if key[0] == row)  # (row, window, start, end)
            embeddings = torch.stack([out[key] for key in views])
            chunk.video.append(pooled(embeddings) if self.opts.window else embeddings[0])
            if self.opts.window:
                chunk.windows += [(row, start, end) for _, _, start, end in views]
                chunk.window += list(embeddings)
            if self.opts.captions:
                self._texts(chunk, video["captions"], row)
            del video["captions"]

    def _texts(self, chunk: Chunk, texts: list[str], row: int | None) -> None:
        if not texts:
            return
        t0 = time.perf_counter()
        chunk.text += list(self.encoder.encode_text(list(texts)).cpu())
        chunk.texts += [{"text": t, "video": row} for t in texts]
        self.seconds["encode"] += time.perf_counter() - t0


class _Batch:
    """Clips gathered into forwards of batch_size; out: key -> embedding (E,) on the CPU."""

    def __init__(self, embedder: Embedder):
        self.embedder, self.keys, self.clips, self.out = embedder, [], [], {}

    def add(self, key: tuple, clip: Clip) -> None:
        self.keys.append(key)
        self.clips.append(clip)
        if len(self.clips) == self.embedder.opts.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.clips:
            return
        t0 = time.perf_counter()
        embeddings = self.embedder.encoder.encode_video(self.clips, batch_size=len(self.clips)).cpu()
        self.out.update(zip(self.keys, embeddings))
        self.embedder.seconds["encode"] += time.perf_counter() - t0
        self.keys, self.clips = [], []


def window_spans(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) frame spans of a clip of n frames: every stride frames a window of
    `window`, the last one ending at the clip's end (as Preprocess.windows cuts them)."""
    spans = [(a, a + window) for a in range(0, n - window + 1, stride)]
    if not spans or spans[-1][1] < n:
        spans.append((max(0, n - window), n))
    return spans


def reject(item: Item, err: BaseException) -> dict:
    """A rejects.jsonl row: the reason as `longvivit shards` names it (VideoError's), else
    "failed" with the error."""
    if isinstance(err, VideoError):
        reason, detail = err.reason, err.detail
    else:
        reason, detail = "failed", one_line(err)
    return {"id": item.id or None, "video": item.video if item.sample < 0 else f"{item.video}#{item.sample}",
            "reason": reason, "detail": detail}


# ---------------------------------------------------------------------------- checks

def check_embed_args(model: str, input_path: str | None, text_file: str | None, out: str, opts: EmbedOptions,
                     overwrite: bool = False) -> Inputs:
    """Everything embed reads and where it writes, checked before anything is made: the
    model (check_model), INPUT, --text, --out (check_out) and the options. Returns the
    inputs; ConfigError naming the argument otherwise."""
    check(input_path is not None or text_file is not None, "INPUT", "give videos to embed (INPUT), --text FILE, or both")
    check(opts.batch_size >= 1, f"--batch-size {opts.batch_size}", "must be >= 1")
    check(opts.chunk_size >= 1, f"--chunk-size {opts.chunk_size}", "must be >= 1")
    check(opts.window >= 0, f"--window {opts.window}", "must be >= 1 (frames at the shard FPS)")
    check(opts.stride >= 0, f"--stride {opts.stride}", "must be >= 1 (frames at the shard FPS)")
    check(opts.window > 0 or opts.stride == 0, "--stride", "needs --window")
    check_model(model, "MODEL")
    if input_path is not None and input_kind(input_path) == "shards" and not is_remote(input_path):
        check_shards("INPUT", input_path)
    check_writable_dir("--out", out)
    inputs = _listed(input_path, text_file, opts.local_cache)
    check(bool(inputs.items or inputs.texts or inputs.rejects), "INPUT" if input_path else "--text",
          f"{input_path or text_file}: holds no " + ("videos (" + ", ".join(VIDEO_SUFFIXES[:4]) + ", ...)"
                                                   if inputs.kind == "folder" else "rows" if input_path else "text"))
    check_out(out, plan_of(model, input_path, text_file, inputs, opts), overwrite)
    return inputs


def _listed(input_path: str | None, text_file: str | None, local_cache: str) -> Inputs:
    """list_inputs, its errors as ConfigErrors naming INPUT or --text."""
    try:
        texts = list_inputs(None, text_file).texts if text_file else []
    except (OSError, ValueError) as err:
        raise ConfigError(f"--text: {one_line(err)}") from None
    if input_path is not None and not is_remote(input_path) and not Path(input_path).exists():
        raise ConfigError(f"INPUT: {input_path}: no such file or folder")
    try:
        inputs = list_inputs(input_path, None, local_cache)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"INPUT: {input_path}: cannot be read as a manifest, a folder, a video or shards "
                          f"({one_line(err)})") from None
    if inputs.kind == "video" and Path(input_path).suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError(f"INPUT: {input_path}: neither a manifest ({', '.join(MANIFEST_SUFFIXES)}), a video "
                          f"({', '.join(VIDEO_SUFFIXES[:4])}, ...), a folder nor shards")
    return Inputs(inputs.kind, inputs.items, inputs.rejects, texts)


# ---------------------------------------------------------------------------- the run

def embed(model: str, input_path: str | None, text_file: str | None, out: str | Path, opts: EmbedOptions,
          d: dist.DistEnv, overwrite: bool = False, progress: bool | None = None) -> dict | None:
    """Embed the inputs into the index at `out` on every rank (call on every rank once the
    process group is up, after check_embed_args); rank 0 returns the summary."""
    t0 = time.time()
    out = Path(out)
    inputs = list_inputs(input_path, text_file, opts.local_cache)
    plan = plan_of(model, input_path, text_file, inputs, opts)
    names = chunk_names(inputs, opts)
    done = start_out(out, plan, overwrite) if d.is_main else None
    done = dist.broadcast_object(done)
    todo = [n for n in names if n not in done][d.rank::d.world_size]
    encoder, _, _ = load(model, dist.bound_device())
    embedder = Embedder(encoder, inputs, opts, d.rank, d.world_size)
    bar = tqdm(todo, unit="chunk", desc=f"embed (rank {d.rank})", disable=(not d.is_main) if progress is None
               else not (progress and d.is_main))
    for name in bar:
        embedder.chunk(name).save(index.chunk_path(out, name), index.DTYPES[opts.dtype], encoder.embed_dim)
    seconds = dist.all_gather_object(embedder.seconds)
    dist.barrier()
    if not d.is_main:
        return None
    summary = {"input": plan["input"], "text": plan["text"], "model": plan["model"], "embed_dim": encoder.embed_dim,
               "window": opts.window, "stride": embedder.stride, "preprocess": encoder.preprocess.cfg.to_json(),
               "ranks": d.world_size, "chunks": len(names), "resumed_chunks": len(done),
               "decode_seconds": round(sum(s["decode"] for s in seconds), 3),
               "encode_seconds": round(sum(s["encode"] for s in seconds), 3)}
    summary = index.merge(out, names, summary, inputs.rejects)
    summary["seconds"] = round(time.time() - t0, 3)
    (out / index.SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


