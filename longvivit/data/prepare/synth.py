"""The synthetic long-video benchmark: captions that only the whole clip can match.

Each video is K events (default 3-4), each in its own time segment of the clip: an object
of one of 6 colours and 4 shapes appears, moves up or down, grows or shrinks, and leaves,
over a slowly drifting textured background with per-frame noise. Its caption names the
events in order, so a model that sees only part of the clip cannot tell a caption from one
that differs in a later event; hard negatives (families of three whose event lists differ
in one attribute of one event, or only in order) make that explicit. The motions are
vertical and the shapes left-right symmetric so that the loader's horizontal flip never
changes what a caption says. Optional image-caption stills serve stage 1 of the recipe.

The long-range variant (long_range=True, `longvivit synth --long-range`) is the one only
long context can solve: 128 frames by default (1 FPS), each event a few seconds
(event_frames, default 4) between stretches where nothing happens, every clip's objects
distinct, and two of its events back to back (the close pair). 16 frames spread over the
clip (ShortViViT's view) see each event in at most one frame, which shows where an object
is but not where it goes (a clip's tracks cover the same heights or sizes whichever way
they run), and at most one event of the close pair. Its hard negatives flip one event's
direction (up <-> down, grows <-> shrinks) or swap the close pair; every clip writes its
multiple-choice items ("mc": what one event did, 4 answers; which of the close pair came
first, 2 answers; which of 4 events happens in it, the others done by objects it never
shows) and its event spans (frames [start, end)).

Writes DIR/videos/*.webm (VP9 at 1 FPS), DIR/train.jsonl and DIR/val.jsonl (whole
families to one split; "label", the first object, for zero-shot classification; "labels",
every object, for the multi-label task), DIR/images/ and DIR/images.jsonl,
DIR/benchmark.json. The same seed gives the same bytes.
`longvivit synth` (longvivit/cli/synth.py); docs/data.md.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from longvivit.config import check, validated
from longvivit.data.prepare.manifest import write_jsonl
from longvivit.data.prepare.output import prepare_out
from longvivit.data.prepare.video import encode

COLOURS = {
    "red": (235, 30, 30), "green": (30, 210, 50), "blue": (40, 90, 255),
    "yellow": (250, 230, 20), "purple": (175, 40, 225), "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "cross")
ACTIONS = ("moves up", "moves down", "grows", "shrinks")
Event = tuple[str, str, str]  # (colour, shape, action)
SIZES = {"small": 0.12, "big": 0.28}  # half-extent of a still's object, in frame sides
PLACES = {"at the top": 0.25, "in the middle": 0.5, "at the bottom": 0.75}  # centre row
OUTPUTS = ("videos", "train.jsonl", "val.jsonl", "benchmark.json", "images", "images.jsonl")  # all write_benchmark writes
LONG_RANGE_FRAMES = 128  # the long-range variant's default clip length (1 FPS: seconds)
SHORT_VIEW = 16  # frames ShortViViT spreads over a clip: what the long-range variant is built against
FLIPPED = {"moves up": "moves down", "moves down": "moves up", "grows": "shrinks", "shrinks": "grows"}


@dataclass
class SynthConfig:
    videos: int = 200
    frames: int = 64  # frames of the longest video (1 FPS: seconds)
    min_frames: int = 0  # 0: every video has `frames` frames; else lengths in [min_frames, frames]
    size: int = 64  # square frames, pixels
    min_events: int = 3
    max_events: int = 4
    hard_negatives: float = 0.5  # fraction of videos that belong to a 3-video hard-negative family
    val_fraction: float = 0.2
    seed: int = 0
    images: int = 0  # image-caption pairs (stills of single events)
    long_range: bool = False  # short events between idle stretches (the module docstring)
    event_frames: int = 4  # long_range: frames (seconds) each event lasts
    objects: int = 0  # long_range: how many of the colour-shape objects the clips share (0: all)

    def validate(self) -> None:
        lo = self.min_frames or self.frames
        check(1 <= self.min_events <= self.max_events, "min_events",
              f"need 1 <= min_events <= max_events, got {self.min_events}..{self.max_events}")
        if self.min_frames:
            check(2 * self.max_events <= lo <= self.frames, "min_frames",
                  f"need 2*max_events={2 * self.max_events} <= min_frames <= frames, got "
                  f"min_frames={lo}, frames={self.frames}")
        check(2 * self.max_events <= self.frames, "frames", f"need 2*max_events="
              f"{2 * self.max_events} <= frames (two frames an event), got frames={self.frames}")
        check(self.size >= 16 and self.size % 2 == 0, "size", f"{self.size} must be an even number >= 16")
        check(self.videos >= 2, "videos", f"{self.videos} must be >= 2")
        check(0 < self.val_fraction < 1, "val_fraction", f"{self.val_fraction} is outside (0, 1)")
        check(0 <= self.hard_negatives <= 1, "hard_negatives", f"{self.hard_negatives} is outside [0, 1]")
        check(self.images >= 0, "images", f"{self.images} must be >= 0")
        check(self.seed >= 0, "seed", f"{self.seed} must be >= 0 (numpy's seeds are)")
        if self.long_range:
            self.validate_long_range(lo)
        most = distinct_event_lists(self.min_events, self.max_events, self.long_range, self.objects)
        check(self.videos <= most, "videos", f"{self.videos} videos need as many distinct "
              f"captions; {self.min_events}..{self.max_events} events make only {most}")

    def validate_long_range(self, shortest: int) -> None:
        """The close pair fits between two of ShortViViT's frames, and the events with an idle
        stretch of event_frames between them fit the shortest clip."""
        check(self.min_events >= 2, "min_events", f"{self.min_events}: the long-range variant needs "
              "2 or more events a video (two of them close in time)")
        check(self.objects == 0 or self.max_events <= self.objects <= len(COLOURS) * len(SHAPES), "objects",
              f"{self.objects}: need 0 (all) or max_events={self.max_events}..{len(COLOURS) * len(SHAPES)} "
              "(a clip's objects are distinct)")
        check(self.event_frames >= 2, "event_frames", f"{self.event_frames} must be >= 2 (a direction "
              "needs two frames)")
        stride = shortest // SHORT_VIEW
        check(2 * self.event_frames <= stride, "frames", f"the long-range variant needs "
              f"{SHORT_VIEW * 2 * self.event_frames} frames or more ({SHORT_VIEW} uniform frames "
              f"{2 * self.event_frames} apart, so that two back-to-back events of {self.event_frames} "
              f"frames share one of them), got {shortest}")
        gap = stride - 2 * self.event_frames  # the most idle frames inside the close pair
        need = (2 * self.max_events - 2) * self.event_frames + gap
        check(need <= shortest, "frames", f"{self.max_events} events of {self.event_frames} frames with "
              f"idle stretches between them need {need} frames, got {shortest}")


# ----------------------------------------------------------------------------- event lists

def distinct_event_lists(min_events: int, max_events: int, distinct_objects: bool = False,
                         objects: int = 0) -> int:
    """How many distinct event lists (captions) there are of min_events..max_events events
    (distinct_objects: no object twice in a list, drawn from `objects` of them (0: all), as
    in the long-range variant)."""
    objects = objects or len(COLOURS) * len(SHAPES)
    kinds = len(COLOURS) * len(SHAPES) * len(ACTIONS)
    if distinct_objects:
        sizes = range(max(1, min_events), min(max_events, objects) + 1)
        return sum(math.perm(objects, k) * len(ACTIONS) ** k for k in sizes)
    sizes = range(max(1, min_events), min(max_events, kinds) + 1)
    return sum(math.perm(kinds, k) for k in sizes)


def _random_event(rng: np.random.Generator) -> Event:
    return (str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)), str(rng.choice(ACTIONS)))


def _random_events(rng: np.random.Generator, k: int) -> list[Event]:
    events: list[Event] = []
    while len(events) < k:
        e = _random_event(rng)
        if e not in events:
            events.append(e)
    return events


def _change_one(rng: np.random.Generator, events: list[Event]) -> list[Event]:
    """The same list with one attribute of one event changed (a one-event hard negative)."""
    out = list(events)
    i, attr = int(rng.integers(len(out))), int(rng.integers(3))
    choices = [tuple(COLOURS), SHAPES, ACTIONS][attr]
    event = list(out[i])
    event[attr] = str(rng.choice([c for c in choices if c != event[attr]]))
    out[i] = tuple(event)
    return out


def _reorder(rng: np.random.Generator, events: list[Event]) -> list[Event]:
    """The same events in another order (an order-only hard negative)."""
    while True:
        out = [events[i] for i in rng.permutation(len(events))]
        if out != events:
            return out


def event_lists(cfg: SynthConfig, rng: np.random.Generator) -> list[tuple[int, list[Event]]]:
    """(family id, events) for every video; all event lists distinct, families adjacent."""
    seen: set[tuple[Event, ...]] = set()
    videos: list[tuple[int, list[Event]]] = []
    family = 0
    while len(videos) < cfg.videos:
        base = _random_events(rng, int(rng.integers(cfg.min_events, cfg.max_events + 1)))
        members = [base]
        # A single event cannot be reordered, so its list is no family's base; tested after
        # the draw, as testing first would change the random stream of every seed's benchmark.
        if cfg.videos - len(videos) >= 3 and rng.random() < cfg.hard_negatives and len(base) > 1:
            members += [_change_one(rng, base), _reorder(rng, base)]
        keys = [tuple(m) for m in members]
        if len(set(keys)) < len(keys) or seen.intersection(keys):
            continue  # a repeated caption would make retrieval ambiguous: draw again
        seen.update(keys)
        videos += [(family, m) for m in members]
        family += 1
    return videos


def captions(events: list[Event]) -> list[str]:
    """Two phrasings of the same event sequence (the loader draws one per visit)."""
    parts = [f"a {c} {s} {a}" for c, s, a in events]
    first = ", then ".join(parts)
    second = f"first {parts[0]}, " + ", ".join(f"next {p}" for p in parts[1:-1])
    second = (second + ", " if len(parts) > 2 else second) + f"finally {parts[-1]}"
    return [first, second]


def label(events: list[Event]) -> str:
    """The class of a video for zero-shot classification: its first object ("red circle"),
    one of len(COLOURS) * len(SHAPES) classes, named at the start of both captions."""
    colour, shape, _ = events[0]
    return f"{colour} {shape}"


def labels(events: list[Event]) -> list[str]:
    """Every object of a video, in order of appearance, each once: its classes for the
    multi-label task (what a video-level embedding can answer; the first object alone is
    one of its 3-4 objects, which no pooled embedding ranks first)."""
    return list(dict.fromkeys(f"{c} {s}" for c, s, _ in events))


# ----------------------------------------------------------------------------- long range

def _distinct_object_events(rng: np.random.Generator, k: int, objects: list[tuple[str, str]]) -> list[Event]:
    """k events of k different `objects` (so that a question can name an event by its object)."""
    return [(*objects[i], str(rng.choice(ACTIONS))) for i in rng.choice(len(objects), k, replace=False)]


def _flip_one(rng: np.random.Generator, events: list[Event]) -> list[Event]:
    """The same list with one event running the other way (a direction hard negative)."""
    out, i = list(events), int(rng.integers(len(events)))
    colour, shape, action = out[i]
    out[i] = (colour, shape, FLIPPED[action])
    return out


def _swap(events: list[Event], pair: int) -> list[Event]:
    """The same list with events pair and pair + 1 swapped (an order hard negative)."""
    out = list(events)
    out[pair], out[pair + 1] = out[pair + 1], out[pair]
    return out


def long_range_lists(cfg: SynthConfig, rng: np.random.Generator) -> list[tuple[int, list[Event], int]]:
    """(family id, events, close pair) for every video: the close pair is events (pair,
    pair + 1); a family is a base, its direction flip and its close-pair swap."""
    objects = [(c, s) for c in COLOURS for s in SHAPES]
    if cfg.objects:  # the clips share a few objects: captions then differ in what they do and when
        objects = [objects[i] for i in rng.permutation(len(objects))[: cfg.objects]]
    seen: set[tuple[Event, ...]] = set()
    videos: list[tuple[int, list[Event], int]] = []
    family = 0
    while len(videos) < cfg.videos:
        base = _distinct_object_events(rng, int(rng.integers(cfg.min_events, cfg.max_events + 1)), objects)
        pair = int(rng.integers(len(base) - 1))
        members = [base]
        if cfg.videos - len(videos) >= 3 and rng.random() < cfg.hard_negatives:
            members += [_flip_one(rng, base), _swap(base, pair)]
        keys = [tuple(m) for m in members]
        if seen.intersection(keys):
            continue  # a repeated caption would make retrieval ambiguous: draw again
        seen.update(keys)
        videos += [(family, m, pair) for m in members]
        family += 1
    return videos


def long_range_spans(k: int, pair: int, frames: int, event_frames: int,
                     rng: np.random.Generator) -> list[tuple[int, int]]:
    """[start, end) frames of each of k events: events pair and pair + 1 back to back, at
    most frames // SHORT_VIEW frames from the first's start to the second's end (so one
    stride of the 16 uniform frames holds both), every other event on its own, and at least
    event_frames idle frames between any two of these blocks; the rest of the idle time is
    spread at random before, between and after them."""
    gap = int(rng.integers(frames // SHORT_VIEW - 2 * event_frames + 1))  # inside the close pair
    blocks = [2 * event_frames + gap if i == pair else event_frames for i in range(k) if i != pair + 1]
    free = frames - sum(blocks) - event_frames * (len(blocks) - 1)
    extra = np.diff(np.sort(rng.integers(free + 1, size=len(blocks))), prepend=0)  # idle before each block
    spans, t = [], 0
    for b, (length, idle) in enumerate(zip(blocks, extra)):
        t += int(idle) + (event_frames if b else 0)
        spans.append((t, t + event_frames))
        if length > event_frames:  # the close pair's second event
            spans.append((t + event_frames + gap, t + length))
        t += length
    return spans


def phrase(event: Event) -> str:
    colour, shape, action = event
    return f"a {colour} {shape} {action}"


def mc_items(events: list[Event], pair: int, rng: np.random.Generator) -> list[dict]:
    """The clip's multiple-choice items, answers phrased as captions are:
    action: what one event (not the first) did after the one before it, one answer per
            action (chance 1/4); a single frame of it tells moving from resizing, not which way
    order:  which of the close pair came first, both orders (chance 1/2)"""
    i = int(rng.integers(1, len(events)))
    (pc, ps, pa), (c, s, a) = events[i - 1], events[i]
    action = {"kind": "action", "question": f"what does the {c} {s} do after the {pc} {ps} {pa}?",
              "answers": [f"{phrase(events[i - 1])}, then {phrase((c, s, x))}" for x in ACTIONS],
              "answer": ACTIONS.index(a)}
    first, second = events[pair], events[pair + 1]
    orders = [f"{phrase(first)}, then {phrase(second)}", f"{phrase(second)}, then {phrase(first)}"]
    right = int(rng.integers(2))
    named = sorted(f"{c} {s}" for c, s, _ in (first, second))  # in no order the clip gives away
    order = {"kind": "order", "question": f"which comes first, the {named[0]} or the {named[1]}?",
             "answers": orders if right == 0 else orders[::-1], "answer": right}
    return [action, order]


def presence_item(events: list[Event], objects: list[tuple[str, str]], rng: np.random.Generator) -> list[dict]:
    """The clip's "event" item: which of up to 4 events happens in it, one of its own
    events (any, at random) against the same action done by objects it never shows, drawn
    from `objects` (those of the benchmark). A model answers it from the frames where the
    event is on screen, which 16 uniform frames miss for about half of the events. No item
    where the clip shows every object of the benchmark; fewer answers where it shows all
    but one or two."""
    own = {(c, s) for c, s, _ in events}
    absent = [o for o in objects if o not in own]
    if not absent:
        return []
    c, s, a = events[int(rng.integers(len(events)))]
    others = [absent[j] for j in rng.choice(len(absent), min(3, len(absent)), replace=False)]
    answers = [phrase((oc, os, a)) for oc, os in others]
    right = int(rng.integers(len(answers) + 1))
    answers.insert(right, phrase((c, s, a)))
    return [{"kind": "event", "question": "which of these happens in the clip?", "answers": answers,
             "answer": right}]


# ----------------------------------------------------------------------------- rendering

def _background(rng: np.random.Generator, size: int, frames: int) -> np.ndarray:
    """(T, H, W, 3) float: a dim, desaturated texture of a few sinusoids drifting slowly,
    plus per-frame noise. Dim and grey so that the saturated objects stand out."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    tint = 70 + rng.uniform(-15, 15, size=3)
    out = np.empty((frames, size, size, 3), np.float32)
    waves = [(rng.uniform(2, 6, 2), rng.uniform(0, 2 * np.pi), rng.uniform(-0.05, 0.05, 2))
             for _ in range(3)]
    for t in range(frames):
        tex = sum(np.sin(2 * np.pi * (f[0] * (xx + v[0] * t) + f[1] * (yy + v[1] * t)) + ph)
                  for f, ph, v in waves) / 3
        out[t] = tint + 25 * tex[..., None] + rng.normal(0, 6, (size, size, 3))
    return out


def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    """(H, W) bool mask of `shape` centred at (cx, cy) with half-extent r (pixels)."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = np.abs(x - cx), y - cy
    if shape == "circle":
        return dx ** 2 + dy ** 2 <= r ** 2
    if shape == "square":
        return (dx <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "triangle":  # apex up: width grows linearly from the top edge
        return (dy >= -r) & (dy <= 0.8 * r) & (dx <= (dy + r) * 0.6)
    return ((dx <= r / 3) & (np.abs(dy) <= r)) | ((np.abs(dy) <= r / 3) & (dx <= r))  # cross


def _event_track(action: str, size: int, n: int, x: float) -> list[tuple[float, float, float]]:
    """(cx, cy, r) in pixels for each of the event's n frames."""
    s = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    r_move, small, big = 0.18 * size, 0.1 * size, 0.3 * size
    if action == "moves up":
        return [(x, size * (0.75 - 0.5 * u), r_move) for u in s]
    if action == "moves down":
        return [(x, size * (0.25 + 0.5 * u), r_move) for u in s]
    if action == "grows":
        return [(x, size * 0.5, small + (big - small) * u) for u in s]
    return [(x, size * 0.5, big - (big - small) * u) for u in s]  # shrinks


def render(events: list[Event], frames: int, size: int, rng: np.random.Generator,
           spans: list[tuple[int, int]] | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames: event i fills frames spans[i] (default: segment i of K
    equal time segments); the object appears at the span's first frame and leaves after
    its last."""
    video = _background(rng, size, frames)
    if spans is None:
        bounds = np.linspace(0, frames, len(events) + 1).round().astype(int)
        spans = list(zip(bounds[:-1], bounds[1:]))
    for (colour, shape, action), (t0, t1) in zip(events, spans):
        x = size * rng.uniform(0.35, 0.65)
        for t, (cx, cy, r) in zip(range(t0, t1), _event_track(action, size, t1 - t0, x)):
            video[t][_shape_mask(shape, size, cx, cy, r)] = COLOURS[colour]
    return video.clip(0, 255).astype(np.uint8)


def render_still(colour: str, shape: str, size: str, place: str, side: int,
                 rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8: one object on a background frame (an event's still)."""
    frame = _background(rng, side, 1)[0]
    x = side * rng.uniform(0.35, 0.65)
    frame[_shape_mask(shape, side, x, side * PLACES[place], side * SIZES[size])] = COLOURS[colour]
    return frame.clip(0, 255).astype(np.uint8)


def still_captions(colour: str, shape: str, size: str, place: str) -> list[str]:
    return [f"a {size} {colour} {shape} {place}", f"{place}, a {colour} {shape}, {size}"]


def write_images(out: Path, cfg: SynthConfig) -> None:
    """cfg.images stills -> out/images/*.png and out/images.jsonl (label: the object)."""
    (out / "images").mkdir()
    rows = []
    for i in range(cfg.images):
        rng = np.random.default_rng([cfg.seed, 1 << 20, i])  # apart from the videos' streams
        colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
        size, place = str(rng.choice(list(SIZES))), str(rng.choice(list(PLACES)))
        name = f"images/{i:06d}.png"
        Image.fromarray(render_still(colour, shape, size, place, cfg.size, rng)).save(out / name)
        rows.append({"video": name, "caption": still_captions(colour, shape, size, place),
                     "id": f"synth-image-{i:06d}", "label": f"{colour} {shape}"})
    write_jsonl(out / "images.jsonl", rows)


# ----------------------------------------------------------------------------- writing

def write_benchmark(out: str | Path, videos: int = 200, frames: int = 64, seed: int = 0,
                    overwrite: bool = False, **options) -> dict:
    """Write the benchmark into `out` (see the module docstring); returns the summary."""
    cfg = SynthConfig(videos=videos, frames=frames, seed=seed, **options)
    validated(cfg)
    out = prepare_out(Path(out), overwrite, OUTPUTS.__contains__, "benchmark files")
    (out / "videos").mkdir()
    rng = np.random.default_rng(cfg.seed)
    listing = long_range_lists(cfg, rng) if cfg.long_range else [(f, e, None) for f, e in event_lists(cfg, rng)]
    n_val = _val_count(listing, cfg.val_fraction)
    rows = {"train": [], "val": []}
    objects = list(dict.fromkeys((c, s) for _, events, _ in listing for c, s, _ in events))  # the event items' pool
    for i, (family, events, pair) in enumerate(listing):
        pixels, extra = _video(cfg, i, events, pair, objects)
        name = f"videos/{i:06d}.webm"
        (out / name).write_bytes(encode(pixels, fps=1.0, codec="vp9")[0])
        split = "val" if i >= len(listing) - n_val else "train"
        rows[split].append({"video": name, "caption": captions(events), "id": f"synth-{i:06d}",
                            "label": label(events), "labels": labels(events), "family": family,
                            "events": [list(e) for e in events], **extra})
    for split, split_rows in rows.items():
        write_jsonl(out / f"{split}.jsonl", split_rows)
    if cfg.images:
        write_images(out, cfg)
    (out / "benchmark.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    return {"out": str(out), "train": len(rows["train"]), "val": len(rows["val"]),
            "images": cfg.images, "families": listing[-1][0] + 1, "frames": cfg.frames, "size": cfg.size,
            "long_range": cfg.long_range}


def _video(cfg: SynthConfig, i: int, events: list[Event], pair: int | None,
           objects: list[tuple[str, str]]) -> tuple[np.ndarray, dict]:
    """Video i's frames and what its row adds for the long-range variant (its event spans
    and multiple-choice items), from its own random stream; the event item from a stream
    of its own, so that it left every clip's frames and other items as they were."""
    video_rng = np.random.default_rng([cfg.seed, i])
    n = int(video_rng.integers(cfg.min_frames or cfg.frames, cfg.frames + 1))
    if pair is None:
        return render(events, n, cfg.size, video_rng), {}
    spans = long_range_spans(len(events), pair, n, cfg.event_frames, video_rng)
    items = mc_items(events, pair, video_rng) + presence_item(events, objects, np.random.default_rng([cfg.seed, i, 2]))
    extra = {"spans": [list(s) for s in spans], "mc": items}
    return render(events, n, cfg.size, video_rng, spans), extra


def _val_count(listing: list[tuple], fraction: float) -> int:
    """About `fraction` of the videos, taken from the end without splitting a family."""
    n = max(1, int(round(fraction * len(listing))))
    while n < len(listing) and listing[-n][0] == listing[-n - 1][0]:
        n += 1
    return n
