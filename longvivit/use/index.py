"""An embedding index on disk: what `longvivit embed` writes and `longvivit search` reads.

    DIR/embeddings.safetensors  L2-normalised rows, float16 or float32:
        video         (N, E)  one per video: the whole clip, or with --window the mean of
                              its windows' embeddings, normalised again
        text          (M, E)  the captions of the videos (manifest, shards) and --text lines
        text_video    (M,)    int64: the `video` row a caption belongs to; -1 for a --text line
        window        (W, E)  with --window: one per window
        window_video  (W,)    int64: the `video` row of each window
        window_start_s, window_end_s  (W,) float64: its span, seconds on the player's timeline
    DIR/videos.jsonl   one line per `video` row: {"id", "video", "start", "end", "duration_s", "windows"}
    DIR/texts.jsonl    one line per `text` row: {"text", "video": the video's id or null}
    DIR/rejects.jsonl  one line per input that was not embedded: {"id", "video", "reason", "detail"}
    DIR/index.json     the summary: counts, dtype, embed_dim, model, input, window, stride,
                       preprocessing, ranks, seconds, "complete": true

While it is written, DIR/plan.json fixes the work (model, inputs, options) and
DIR/chunks/ holds one safetensors file per finished chunk of inputs (the rows of the chunk
in its metadata), written aside and renamed into place; a rerun with the same plan skips
the chunks there, and the merge into the files above removes them.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from longvivit.data.prepare.manifest import write_jsonl

EMBEDDINGS, VIDEOS, TEXTS, REJECTS, SUMMARY, PLAN = (
    "embeddings.safetensors", "videos.jsonl", "texts.jsonl", "rejects.jsonl", "index.json", "plan.json")
CHUNKS = "chunks"
DTYPES = {"float16": torch.float16, "float32": torch.float32}
OUTPUTS = (EMBEDDINGS, VIDEOS, TEXTS, REJECTS, SUMMARY, PLAN, CHUNKS)  # all an index folder holds


@dataclass
class Chunk:
    """The embeddings of one chunk of inputs (float32 while built, normalised)."""
    videos: list[dict] = field(default_factory=list)  # videos.jsonl rows, in input order
    video: list[torch.Tensor] = field(default_factory=list)  # (E,) each
    texts: list[dict] = field(default_factory=list)  # texts.jsonl rows ("video": a row of `videos`, or None)
    text: list[torch.Tensor] = field(default_factory=list)
    windows: list[tuple[int, float, float]] = field(default_factory=list)  # (row of `videos`, start, end)
    window: list[torch.Tensor] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)

    def save(self, path: Path, dtype: torch.dtype, dim: int) -> None:
        """Written beside `path` and renamed into place: a chunk file is whole or absent."""
        rows = lambda xs: torch.stack(xs).to(dtype) if xs else torch.empty(0, dim, dtype=dtype)  # noqa: E731
        tensors = {"video": rows(self.video), "text": rows(self.text), "window": rows(self.window),
                   "window_video": torch.tensor([w[0] for w in self.windows], dtype=torch.int64),
                   "window_start_s": torch.tensor([w[1] for w in self.windows], dtype=torch.float64),
                   "window_end_s": torch.tensor([w[2] for w in self.windows], dtype=torch.float64)}
        meta = {"videos": json.dumps(self.videos), "texts": json.dumps(self.texts), "rejects": json.dumps(self.rejects)}
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)


def read_chunk(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, list]]:
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    return tensors, meta


def chunk_path(out: Path, name: str) -> Path:
    return out / CHUNKS / f"{name}.safetensors"


def finished_chunks(out: Path) -> set[str]:
    folder = out / CHUNKS
    return {p.stem for p in folder.glob("*.safetensors")} if folder.is_dir() else set()


def merge(out: Path, names: list[str], summary: dict, rejects: list[dict]) -> dict:
    """The chunks `names` (in this order) into the index files, `rejects` (inputs refused
    before any chunk) listed first; removes the chunks. Returns the summary written to
    index.json."""
    parts = [read_chunk(chunk_path(out, n)) for n in names]
    tensors, videos, texts, chunk_rejects = _concat(parts)
    rejects = rejects + chunk_rejects
    dtype = next(iter(tensors.values())).dtype
    save_file(tensors, str(out / EMBEDDINGS), metadata={"format": "longvivit-index/1"})
    write_jsonl(out / VIDEOS, videos)
    write_jsonl(out / TEXTS, texts)
    write_jsonl(out / REJECTS, rejects)
    summary = {**summary, "videos": len(videos), "texts": len(texts), "windows": len(tensors.get("window", [])),
               "rejected": len(rejects), "dtype": str(dtype).removeprefix("torch."), "complete": True}
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    for n in names:
        chunk_path(out, n).unlink()
    (out / CHUNKS).rmdir()
    return summary


def _concat(parts: list[tuple[dict, dict]]) -> tuple[dict, list, list, list]:
    """Chunks' tensors and rows as one index: video rows renumbered across chunks."""
    videos, texts, rejects, text_video, window_video = [], [], [], [], []
    for tensors, meta in parts:
        base = len(videos)
        videos += meta["videos"]
        texts += [{"text": t["text"], "video": None if t["video"] is None else meta["videos"][t["video"]]["id"]}
                  for t in meta["texts"]]
        text_video += [-1 if t["video"] is None else base + t["video"] for t in meta["texts"]]
        window_video.append(tensors["window_video"] + base)
        rejects += meta["rejects"]
    cat = lambda key: torch.cat([t[key] for t, _ in parts])  # noqa: E731
    out = {"video": cat("video"), "text": cat("text"), "text_video": torch.tensor(text_video, dtype=torch.int64)}
    if any(len(t["window"]) for t, _ in parts):
        out.update(window=cat("window"), window_video=torch.cat(window_video),
                   window_start_s=cat("window_start_s"), window_end_s=cat("window_end_s"))
    return out, videos, texts, rejects


def pooled(windows: torch.Tensor) -> torch.Tensor:
    """One video's embedding from its windows' (n, E): their mean, normalised."""
    return F.normalize(windows.float().mean(0), dim=-1)


@dataclass
class Index:
    """A finished index, as `longvivit search` reads it."""
    folder: Path
    summary: dict
    tensors: dict[str, torch.Tensor]
    videos: list[dict]
    texts: list[dict]

    @classmethod
    def open(cls, folder: str | Path) -> "Index":
        folder = Path(folder)
        summary = json.loads((folder / SUMMARY).read_text())
        with safe_open(str(folder / EMBEDDINGS), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return cls(folder, summary, tensors, read_jsonl(folder / VIDEOS), read_jsonl(folder / TEXTS))

    @property
    def windowed(self) -> bool:
        return "window" in self.tensors


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
