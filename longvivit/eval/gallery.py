"""Retrieval pictures: a few caption queries, each with a strip of frames from its top-3
clips, the right clip marked. One image for TensorBoard (`eval/gallery`, `render`), and the
parts of `longvivit eval --report`'s web page (report.py).

Frames: while the split is embedded, each rank keeps a thumbnail strip of every clip it
embeds (`thumbnail_strip`: STRIP_FRAMES frames evenly spaced over the clip's real frames,
scaled to at most THUMB_HEIGHT px high: ~50 KB for a 4:3 clip) and the clip's captions.
Which clips the gallery shows is known only once every clip is scored; tiny strips kept on
the rank that decoded them cost less than a second decoding pass over the split, and only
the strips of the clips shown (at most queries * (TOP_K + 1)) are then gathered
(evaluate.gather_gallery).

Queries: the first caption of each of the first `n` clips in sample-index order, each
ranking every clip of the split by text-to-video similarity, as the t2v metrics do.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from longvivit.eval.retrieval import t2v_ranks

STRIP_FRAMES = 4
THUMB_HEIGHT = 56  # px; smaller clips keep their own height (no upscaling)
TOP_K = 3

# the picture
MARGIN, GAP, BORDER = 10, 12, 3  # px
CAPTION_LINES = 2  # a longer caption is cut with "…" (the HTML report shows all of it)
BACKGROUND, INK = (255, 255, 255), (20, 20, 20)
RIGHT, WRONG = (0, 170, 0), (200, 200, 200)  # border of the right clip / of a wrong one


@dataclass
class Hit:
    clip: int  # sample index
    score: float  # cosine similarity to the query
    correct: bool


@dataclass
class Query:
    clip: int  # sample index of the clip the caption describes
    rank: int  # that clip's rank among all clips (ties against it, as retrieval.py counts)
    hits: list[Hit]  # the TOP_K best clips, best first


@dataclass
class Gallery:
    queries: list[Query]
    clips: int  # how many clips each query ranked (the split)
    strips: dict[int, np.ndarray]  # sample index -> (STRIP_FRAMES, h, w, 3) uint8, every clip shown
    captions: dict[int, list[str]]  # sample index -> its captions, every clip shown

    def caption(self, q: Query) -> str:
        return self.captions[q.clip][0]


# ---------------------------------------------------------------------------- frames

def thumbnail_strip(video: torch.Tensor, real_frames: int) -> np.ndarray:
    """video (T, H, W, C) uint8 on any device -> (STRIP_FRAMES, h, w, C) uint8 on the host:
    frames evenly spaced over the first `real_frames` (the rest is padding), h =
    min(THUMB_HEIGHT, H), w keeps the aspect ratio."""
    _, height, width, _ = video.shape
    picks = torch.linspace(0, max(real_frames, 1) - 1, STRIP_FRAMES).round().long().to(video.device)
    h = min(THUMB_HEIGHT, height)
    w = max(1, round(width * h / height))
    frames = video.index_select(0, picks).permute(0, 3, 1, 2).float()  # (F, C, H, W)
    if (h, w) != (height, width):
        frames = F.interpolate(frames, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return frames.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def strip_image(strip: np.ndarray) -> np.ndarray:
    """(F, h, w, 3) -> (h, F * w, 3): the frames side by side, first on the left."""
    return np.concatenate(list(strip), axis=1)


# ---------------------------------------------------------------------------- queries

def select_queries(text: torch.Tensor, video: torch.Tensor, caption_video: torch.Tensor,
                   index: torch.Tensor, n: int, k: int = TOP_K) -> list[Query]:
    """The gallery's queries: the first caption of each of the first `n` clips (rows of
    `video`, in sample-index order), with the `k` clips its caption scores highest.
    text (Nt, E), video (Nv, E) normalised; caption_video (Nt,): each caption's video row;
    index (Nv,): each video row's sample index."""
    rows, targets = [], []
    for v in range(min(n, len(video))):
        own = (caption_video == v).nonzero().flatten()
        if len(own):
            rows.append(int(own[0]))
            targets.append(v)
    if not rows:
        return []
    sim = text[rows].double() @ video.double().t()  # (n, Nv)
    ranks = t2v_ranks(sim, torch.tensor(targets))
    scores, top = sim.topk(min(k, len(video)), dim=1)  # (n, k)
    queries = []
    for t, rank, row_scores, row_top in zip(targets, ranks.tolist(), scores.tolist(), top.tolist()):
        hits = [Hit(int(index[j]), s, j == t) for s, j in zip(row_scores, row_top)]
        queries.append(Query(int(index[t]), rank, hits))
    return queries


def clips_shown(queries: list[Query]) -> set[int]:
    """Sample indices of the clips a gallery of `queries` needs (strips and captions)."""
    return {q.clip for q in queries} | {h.clip for q in queries for h in q.hits}


# ---------------------------------------------------------------------------- the picture

@functools.cache
def _fonts():
    """(caption font, label font): PIL's own, so the picture is the same on every machine."""
    return ImageFont.load_default(size=14), ImageFont.load_default(size=12)


@dataclass(frozen=True)
class Layout:
    """Where everything goes: one row per query (caption lines, then TOP_K bordered cells
    side by side, each with a label line under it), cells sized for the largest strip."""
    cell_h: int
    cell_w: int

    @classmethod
    def of(cls, gallery: Gallery) -> "Layout":
        shapes = [strip_image(gallery.strips[h.clip]).shape for q in gallery.queries for h in q.hits]
        return cls(max(s[0] for s in shapes), max(s[1] for s in shapes))

    @property
    def line(self) -> int:
        """Text line height."""
        return _fonts()[0].getbbox("Ag")[3] + 4

    def row_height(self) -> int:
        return CAPTION_LINES * self.line + self.cell_h + 2 * BORDER + self.line + GAP

    def size(self, queries: int) -> tuple[int, int]:
        """(height, width) of the picture of `queries` rows."""
        width = 2 * MARGIN + TOP_K * (self.cell_w + 2 * BORDER) + (TOP_K - 1) * GAP
        return 2 * MARGIN + queries * self.row_height() - GAP, width

    def cell_box(self, query: int, hit: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of hit `hit` of row `query`, border included, x1/y1 exclusive."""
        x0 = MARGIN + hit * (self.cell_w + 2 * BORDER + GAP)
        y0 = MARGIN + query * self.row_height() + CAPTION_LINES * self.line
        return x0, y0, x0 + self.cell_w + 2 * BORDER, y0 + self.cell_h + 2 * BORDER


def fit_lines(draw, text: str, font, width: int, lines: int = CAPTION_LINES) -> list[str]:
    """`text` word-wrapped to `width` px in at most `lines` lines, the last cut with "…"."""
    out, words = [], text.split()
    while words and len(out) < lines:
        line = words.pop(0)
        while words and draw.textlength(f"{line} {words[0]}", font=font) <= width:
            line = f"{line} {words.pop(0)}"
        out.append(line)
    if words:
        last = out[-1]
        while last and draw.textlength(last + " …", font=font) > width:
            last = last[:-1]
        out[-1] = last.rstrip() + " …"
    return out


def render(gallery: Gallery) -> np.ndarray:
    """The gallery as one (H, W, 3) uint8 picture: per query its caption (and where the
    right clip ranked when it is not among the hits), then its top clips' strips, the right
    one in a green border, wrong ones in a light grey one, each labelled rank and score
    (PIL's default font has no check mark: the right one says "right")."""
    layout = Layout.of(gallery)
    height, width = layout.size(len(gallery.queries))
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    caption_font, label_font = _fonts()
    for qi, q in enumerate(gallery.queries):
        caption = gallery.caption(q)
        if not any(h.correct for h in q.hits):
            caption += f" (right clip: #{q.rank})"
        top = MARGIN + qi * layout.row_height()
        for li, text in enumerate(fit_lines(draw, caption, caption_font, width - 2 * MARGIN)):
            draw.text((MARGIN, top + li * layout.line), text, font=caption_font, fill=INK)
        for hi, hit in enumerate(q.hits):
            x0, y0, x1, y1 = layout.cell_box(qi, hi)
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=RIGHT if hit.correct else WRONG)
            draw.rectangle((x0 + BORDER, y0 + BORDER, x1 - BORDER - 1, y1 - BORDER - 1), fill=BACKGROUND)
            image.paste(Image.fromarray(strip_image(gallery.strips[hit.clip])), (x0 + BORDER, y0 + BORDER))
            label = f"#{hi + 1}  {hit.score:.2f}  clip {hit.clip}" + ("  right" if hit.correct else "")
            draw.text((x0, y1 + 2), label, font=label_font, fill=RIGHT if hit.correct else INK)
    return np.asarray(image)
