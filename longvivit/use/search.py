"""`longvivit search INDEX TEXT`: the videos, and a windowed index's moments, that match a text.

Each query text is embedded by the index's model (or --model) and scored against every
video row (and every window) of the index by one matrix product, in blocks of BLOCK rows
so that memory stays bounded; the top k of each are the hits, scores being cosine
similarities. Exact search costs O(rows x E) per query.

`--backend faiss` (the optional extra `search`: faiss-cpu) scores the same rows by faiss's
flat inner-product search (faiss.knn: the kernel IndexFlatIP.search runs, on the rows where
they lie, without copying them into an IndexFlatIP first, a copy that costs more than the
search itself at every size bench/search.py measured): exact too, the inner product of the
L2-normalised rows the index holds with the normalised query embeddings, i.e. the same
cosine. An approximate index (IVF, HNSW) would need a training pass over the rows on every
call (a search reads the index afresh), so it pays only for an index kept between searches;
`faiss_index(..., nlist=)` builds the IVF one that bench/search.py measures (its recall
against exact search: tests/test_use_search.py). Where faiss overtakes the torch matrix
product: bench/search.py, bench/RESULTS.md, docs/use.md.

`--html DIR` writes DIR/index.html: per query its hits, each a strip of frames from the
clip or moment (the eval report's pictures: gallery.thumbnail_strip, report.STYLE), the
frames read again from the source videos (or shards) the index names.
"""
from __future__ import annotations

import json
from html import escape
from pathlib import Path

import numpy as np
import torch

from longvivit.config import ConfigError, check
from longvivit.eval.gallery import strip_image, thumbnail_strip
from longvivit.eval.report import SCALE, STYLE, save_png
from longvivit.train.config import check_writable_dir, one_line
from longvivit.use import index
from longvivit.use.embed import open_shards
from longvivit.use.encoder import Encoder, check_model
from longvivit.use.index import Index
from longvivit.use.preprocess import Preprocess

BLOCK = 1 << 16  # index rows scored at once
BACKENDS = ("exact", "faiss")


def top_k(queries: torch.Tensor, rows: torch.Tensor, k: int, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores (Q, k'), row indices (Q, k')) of the k best rows for each query, best first,
    k' = min(k, rows); float32 scores, rows scored `block` at a time."""
    k = min(k, len(rows))
    best_s = torch.full((len(queries), 0), -torch.inf)
    best_i = torch.zeros((len(queries), 0), dtype=torch.int64)
    q = queries.float()
    for start in range(0, len(rows), block):
        scores = q @ rows[start:start + block].float().T  # (Q, block)
        s, i = scores.topk(min(k, scores.shape[1]), dim=1)
        best_s, order = torch.cat([best_s, s], 1).topk(k, dim=1)
        best_i = torch.cat([best_i, i + start], 1).gather(1, order)
    return best_s, best_i


def import_faiss():
    """The faiss module, or ConfigError naming the extra that installs it."""
    try:
        import faiss  # the optional extra `search` (faiss-cpu): only --backend faiss needs it
    except ImportError:
        raise ConfigError("--backend faiss: faiss is not installed (pip install 'longvivit[search]', "
                          "which installs faiss-cpu)") from None
    return faiss


def faiss_index(rows: torch.Tensor, nlist: int = 0, nprobe: int = 1, seed: int = 1234):
    """A faiss inner-product index of `rows` (N, E): IndexFlatIP (exact) for nlist 0, else
    IndexIVFFlat with `nlist` k-means cells trained on the rows (seeded), `nprobe` of them
    searched per query (approximate)."""
    faiss = import_faiss()
    x = np.ascontiguousarray(rows.float().numpy())
    flat = faiss.IndexFlatIP(x.shape[1])
    if not nlist:
        flat.add(x)
        return flat
    ivf = faiss.IndexIVFFlat(flat, x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = seed
    ivf.train(x)
    ivf.add(x)
    ivf.nprobe = nprobe  # (faiss's wrapper keeps `flat`, the quantizer, alive with `ivf`)
    return ivf


def faiss_top_k(queries: torch.Tensor, rows: torch.Tensor, k: int, index=None) -> tuple[torch.Tensor, torch.Tensor]:
    """top_k by faiss: the same (scores (Q, k'), row indices (Q, k')), best first; by its flat
    inner-product search of `rows` in place (faiss.knn), or by `index` (faiss_index(rows, ...))."""
    faiss = import_faiss()
    k = min(k, len(rows))
    xq = np.ascontiguousarray(queries.float().numpy())
    if index is None:
        scores, found = faiss.knn(xq, np.ascontiguousarray(rows.float().numpy()), k, metric=faiss.METRIC_INNER_PRODUCT)
    else:
        scores, found = index.search(xq, k)
    return torch.from_numpy(scores), torch.from_numpy(found).long()


def search(idx: Index, queries: torch.Tensor, texts: list[str], k: int, video: str | None = None,
           backend: str = "exact") -> list[dict]:
    """One result per query: {"query", "videos": [...], "moments": [...] (windowed)};
    `video`: only that video's moments (and the video itself), by its id; `backend`: exact
    (torch, top_k) or faiss (its flat inner-product search, faiss_top_k), the same hits but
    for ties."""
    t = idx.tensors
    rows = torch.arange(len(idx.videos))
    if video is not None:
        rows = torch.tensor([i for i, v in enumerate(idx.videos) if str(v["id"]) == video], dtype=torch.int64)
    out = [{"query": text, "videos": []} for text in texts]
    for result, hits in zip(out, _hits(queries, t["video"], rows, k, backend)):
        result["videos"] = [{"rank": n + 1, "score": sc, **_video_fields(idx.videos[j])}
                            for n, (sc, j) in enumerate(hits)]
    if idx.windowed:
        windows = torch.isin(t["window_video"], rows).nonzero().flatten()
        for result, hits in zip(out, _hits(queries, t["window"], windows, k, backend)):
            result["moments"] = [{"rank": n + 1, "score": sc, **_video_fields(idx.videos[int(t["window_video"][j])]),
                                  "start": float(t["window_start_s"][j]), "end": float(t["window_end_s"][j])}
                                 for n, (sc, j) in enumerate(hits)]
    return out


def _hits(queries: torch.Tensor, table: torch.Tensor, rows: torch.Tensor, k: int,
          backend: str = "exact") -> list[list[tuple[float, int]]]:
    """Per query, (score, row of `table`) of its k best among `rows`, best first."""
    candidates = table if len(rows) == len(table) else table[rows]
    if not len(candidates):
        return [[] for _ in queries]
    scores, found = (faiss_top_k if backend == "faiss" else top_k)(queries, candidates, k)
    return [[(round(sc, 6), int(rows[j])) for sc, j in zip(s, f)] for s, f in zip(scores.tolist(), found.tolist())]


def _video_fields(row: dict) -> dict:
    keep = ("id", "video", "sample", "start", "end")
    return {key: row[key] for key in keep if key in row}


# ---------------------------------------------------------------------------- checks

def check_search_args(path: str, model: str | None, k: int, html: str | None, video: str | None = None,
                      backend: str = "exact") -> Index:
    """The index (complete, whole, with video rows), the model it names (or --model), -k,
    --html, --video and --backend (faiss installed), checked before anything is written; the
    index, or ConfigError."""
    check(k >= 1, f"-k {k}", "must be >= 1")
    check(backend in BACKENDS, f"--backend {backend}", f"must be one of {', '.join(BACKENDS)}")
    if backend == "faiss":
        import_faiss()
    folder = Path(path)
    check(folder.is_dir(), "INDEX", f"{path}: " + ("is a file, not an index folder" if folder.exists()
                                                  else "no such folder"))
    summary = _read_summary(folder)
    check(summary.get("complete") is True, "INDEX", f"{path}: not complete (an embed that has not finished: "
          "rerun it to resume)")
    try:
        idx = Index.open(folder)
    except Exception as err:  # noqa: BLE001 -- SafetensorError, OSError, ValueError: a damaged index
        raise ConfigError(f"INDEX: {path}: cannot be read ({one_line(err)})") from None
    check(len(idx.tensors.get("video", [])) > 0, "INDEX", f"{path}: holds no videos (made from --text alone?)")
    check(len(idx.videos) == len(idx.tensors["video"]), "INDEX",
          f"{path}: {index.VIDEOS} lists {len(idx.videos)} videos, {index.EMBEDDINGS} {len(idx.tensors['video'])}")
    key = "--model" if model else f"--model (the index's model, {summary.get('model')})"
    run = check_model(model or str(summary.get("model")), key)
    check(run.model.embed_dim == idx.tensors["video"].shape[1], key,
          f"embeds in {run.model.embed_dim} dimensions, the index in {idx.tensors['video'].shape[1]}")
    check(video is None or any(str(v["id"]) == video for v in idx.videos), f"--video {video}",
          f"no video of that id in {path}")
    if html:
        check_writable_dir("--html", html)
    return idx


def _read_summary(folder: Path) -> dict:
    try:
        summary = json.loads((folder / index.SUMMARY).read_text())
    except FileNotFoundError:
        raise ConfigError(f"INDEX: {folder}: no {index.SUMMARY} (not an index written by `longvivit embed`)") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"INDEX: {folder / index.SUMMARY}: not an index summary ({one_line(err)})") from None
    check(isinstance(summary, dict), "INDEX", f"{folder / index.SUMMARY}: not an index summary")
    return summary


def read_queries(texts: list[str], file: str | None) -> list[str]:
    """The query texts: those given, then a file's non-blank lines; ConfigError for none."""
    queries = [t for t in texts if t.strip()]
    if file:
        try:
            queries += [line.strip() for line in Path(file).read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"--queries: {one_line(err)}") from None
    check(bool(queries), "TEXT", "give at least one query text that is not blank (or --queries FILE)")
    return queries


# ---------------------------------------------------------------------------- the page

def clip_file(query: int, kind: str, rank: int) -> str:
    return f"clips/q{query:03d}-{kind}{rank:02d}.png"


def write_page(out: str | Path, idx: Index, results: list[dict], encoder: Encoder) -> Path:
    """DIR/index.html with a frame strip (DIR/clips/*.png) for every hit."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frames = _Frames(encoder.preprocess, idx)
    sections = []
    for qi, result in enumerate(results):
        figures = {}
        for kind in ("videos", "moments"):
            figures[kind] = [_figure(out, frames, hit, clip_file(qi, kind[0], hit["rank"]), kind == "moments")
                             for hit in result.get(kind, [])]
        sections.append(_section(result["query"], figures))
    page = (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>longvivit search: '
            f'{escape(str(idx.folder))}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>Search</h1>\n'
            f'<p>index: <code>{escape(str(idx.folder))}</code> · {len(idx.videos)} videos'
            + (f" · {len(idx.tensors['window'])} moments" if idx.windowed else "")
            + "</p>\n" + "".join(sections) + "</body>\n</html>\n")
    (out / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"


def _section(query: str, figures: dict[str, list[str]]) -> str:
    parts = [f'<section class="query">\n<p class="caption">{escape(query)}</p>\n']
    for kind, title in (("videos", "Videos"), ("moments", "Moments")):
        if figures[kind]:
            parts.append(f'<h3>{title}</h3>\n<div class="hits">\n' + "\n".join(figures[kind]) + "\n</div>\n")
    return "".join(parts) + "</section>\n"


def _figure(out: Path, frames: "_Frames", hit: dict, file: str, moment: bool) -> str:
    strip = frames.strip(hit, moment)
    save_png(strip_image(strip), out / file)
    h, w = strip_image(strip).shape[:2]
    span = f" · {hit['start']:.1f}-{hit['end']:.1f} s" if moment else ""
    label = f"#{hit['rank']} · {hit['score']:.2f} · {hit['id']}{span}"
    return (f'<figure class="hit" data-id="{escape(str(hit["id"]))}"><img src="{file}" alt="{escape(label)}" '
            f'width="{SCALE * w}" height="{SCALE * h}"><figcaption>{escape(label)}</figcaption></figure>')


class _Frames:
    """Frame strips of hits, read again from the videos (or shards) the index names."""

    def __init__(self, preprocess: Preprocess, idx: Index):
        self.preprocess, self.idx, self.shards = preprocess, idx, None

    def strip(self, hit: dict, moment: bool):
        source = hit["video"]
        if "sample" in hit:  # a shard sample: its bytes are a clip at the shard FPS already
            self.shards = self.shards or open_shards(source, "", 0, 1)
            source = self.shards[hit["sample"]]["video"]
        start, end = (hit["start"], hit["end"]) if moment else (hit.get("start"), hit.get("end"))
        clip = self.preprocess(source, start, end)
        return thumbnail_strip(clip.video, clip.real_frames)
