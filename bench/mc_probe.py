"""Multiple choice on the long-range benchmark, probed: does a trained encoder tell a clip's
caption from the same caption with one event's direction flipped, or with two neighbouring
events swapped, and does it answer about events 16 frames never see?

    .venv/bin/python bench/mc_probe.py --synth runs/demo-long-range/synth \
        --run stage1=runs/demo-long-range/short --run stage2=runs/demo-long-range/long [--limit 100]

For every clip of each split (val, and the first --limit of train), the caption (its first
phrasing) is scored against the clip's video embedding (longvivit.load: the run's frames and
preprocessing) beside each of its variants: every event flipped (up <-> down, grows <->
shrinks; FLIPPED of longvivit/data/prepare/synth.py), and every two neighbouring events
swapped. `flip` and `swap` are the shares of these pairs where the true caption scores
strictly higher (chance 50%): the multiple-choice items' action and order kinds, asked
with whole captions instead of the items' two-event answers. `mc_*` are the items as
`longvivit eval` scores them (answers alone; longvivit/eval/multichoice.py), the event
items also split by whether ShortViViT's 16 uniform frames of the clip fall in the asked
event (`mc_top1_event_seen`, `mc_top1_event_missed`): what a 16-frame model can and cannot
know. Each clip pair is one Bernoulli trial, so the half-width of a 95% interval is about
100/sqrt(pairs) points.

Time reversal asks the same of the video tower alone: each clip's frames (the run's
preprocessing) played backwards, which runs every event the other way and every pair in the
other order, are embedded beside the clip. `reversal_cos` is the mean cosine of a clip with
its reversal, `other_cos` the mean cosine of two different clips of the split, and
`reversal_share` = (1 - reversal_cos) / (1 - other_cos): how far reversing a clip moves its
embedding, as a share of the distance to another clip. 0: the embedding ignores the order of
the frames, so no text can tell a clip from its reversal.

--linear asks what the video embedding holds, whatever the text tower makes of it: for each
of a clip's first three events, a logistic regression on the frozen embeddings of every
training clip (standardised; its L2 weight picked by 4-fold cross-validation on the
training clips alone) predicts the event's direction (up or grows vs down or shrinks) and
its colour, scored on the held-out clips next to the majority class. The same probe on the
clip's frames average-pooled to 4x4 pixels (`pixels`) shows what a linear read of the input
finds: on the default benchmark, whose events sit in fixed quarters of the clip, it is a
ceiling; on the long-range one, whose events start at random times, it is not.
One JSON object on stdout; bench/report.py renders the tables.
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import torch

import common
from longvivit.config import ArgumentParser
from longvivit.data.load.decode import select_frames
from longvivit.data.prepare.synth import FLIPPED, SHORT_VIEW, captions, phrase
from longvivit.data.prepare.video import probe as probe_video
from longvivit.eval.multichoice import embed_items, mc_metrics
from longvivit.use.encoder import load
from longvivit.use.preprocess import Clip


def variants(events: list[tuple]) -> dict[str, list[str]]:
    """Each kind's variant captions of an event list (first phrasing)."""
    flips = [captions([(c, s, FLIPPED[a]) if j == i else (c, s, a) for j, (c, s, a) in enumerate(events)])[0]
             for i in range(len(events))]
    swaps = []
    for i in range(len(events) - 1):
        swapped = list(events)
        swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
        swaps.append(captions(swapped)[0])
    return {"flip": flips, "swap": swaps}


def reversed_clip(clip: Clip) -> Clip:
    """The clip played backwards: its own frames in reverse order, the padding left after them."""
    video = clip.video.clone()
    video[: clip.real_frames] = clip.video[: clip.real_frames].flip(0)
    return clip._replace(video=video)


def reversal(v: torch.Tensor, backwards: torch.Tensor) -> dict:
    """reversal_cos, other_cos, reversal_share (the module docstring) of L2-normalised
    embeddings v (N, E) of N >= 2 clips and `backwards` (N, E) of the same clips reversed."""
    n = len(v)
    other = ((v @ v.t()).sum() - v.pow(2).sum()) / (n * (n - 1))  # off-diagonal mean
    same = (v * backwards).sum(1).mean()
    return {"reversal_cos": same.item(), "other_cos": other.item(),
            "reversal_share": ((1 - same) / (1 - other)).item()}


@torch.no_grad()
def probe(encoder, rows: list[dict], clips: list[Clip], v: torch.Tensor) -> dict:
    """flip/swap shares (%) and pair counts, the items' mc metrics and the time reversal
    measures, of one run on rows: their clips as the run preprocesses them and v (N, E)
    their L2-normalised video embeddings."""
    out = reversal(v, encoder.encode_video([reversed_clip(c) for c in clips])) if len(clips) > 1 else {}
    wins = {"flip": [], "swap": []}
    for i, row in enumerate(rows):
        events = [tuple(e) for e in row["events"]]
        kinds = variants(events)
        scores = encoder.encode_text([captions(events)[0], *(t for texts in kinds.values() for t in texts)]) @ v[i]
        for kind, rest in zip(kinds, scores[1:].split([len(texts) for texts in kinds.values()])):
            wins[kind] += (scores[0] > rest).tolist()
    items = [it for row in rows for it in row.get("mc") or []]
    item_video = [i for i, row in enumerate(rows) for _ in row.get("mc") or []]
    out |= {f"{k}_pairs": len(w) for k, w in wins.items()}
    out |= {k: 100.0 * sum(w) / len(w) for k, w in wins.items() if w}
    if items:
        embedded = embed_items(items, item_video, lambda x: encoder.encode_text(x).cpu())
        out |= {f"mc_{k}": m for k, m in mc_metrics(v.float().cpu(), embedded).items()}
        embedded.kinds = [short_view_kind(rows[i], it) for i, it in zip(item_video, items)]
        out |= {f"mc_{k}": m for k, m in mc_metrics(v.float().cpu(), embedded).items() if k.endswith(SPLIT)}
    return out


SPLIT = ("_seen", "_missed")  # event items, by whether ShortViViT's view holds the event


def short_view_kind(row: dict, item: dict) -> str:
    """An event item's kind split by whether SHORT_VIEW uniform frames of the clip (stage 1's
    view, the loader's select_frames) fall in the asked event's span: "event_seen" or
    "event_missed"; other items keep their kind."""
    if item.get("kind") != "event":
        return item.get("kind", "")
    phrases = [phrase(tuple(e)) for e in row["events"]]
    start, end = row["spans"][phrases.index(item["answers"][item["answer"]])]
    idx, _ = select_frames(row["num_frames"], SHORT_VIEW, "uniform", None)
    return "event_seen" if ((idx >= start) & (idx < end)).any() else "event_missed"


RISING = {"moves up", "grows"}  # direction 1; its FLIPPED partner 0
PROBE_EVENTS = 3
WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1, 1.0)


def fit_linear(x: torch.Tensor, y: torch.Tensor, classes: int, weight_decay: float) -> torch.nn.Linear:
    """Multinomial logistic regression by L-BFGS from zero weights (deterministic)."""
    lin = torch.nn.Linear(x.shape[1], classes)
    torch.nn.init.zeros_(lin.weight), torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(x), y) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return lin


def accuracy(lin: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return 100.0 * (lin(x).argmax(1) == y).float().mean().item()


def linear_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                 classes: int, folds: int = 4) -> dict:
    """Held-out accuracy (%) of a logistic regression whose L2 weight 4-fold cross-validation
    on the training rows picked, and the held-out majority class's share."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    fold = torch.arange(len(y_train)) % folds

    def cv(wd: float) -> float:
        return sum(accuracy(fit_linear(x_train[fold != k], y_train[fold != k], classes, wd),
                            x_train[fold == k], y_train[fold == k]) for k in range(folds)) / folds
    wd = max(WEIGHT_DECAYS, key=cv)  # the first of equals: the weakest
    majority = max((y_val == c).float().mean().item() for c in range(classes)) * 100.0
    return {"acc": accuracy(fit_linear(x_train, y_train, classes, wd), x_val, y_val), "majority": majority,
            "weight_decay": wd, "clips": len(y_val)}


def probe_targets(rows: list[dict], colours: list[str]) -> dict[str, torch.Tensor]:
    """event{j}_direction (1: up or grows) and event{j}_colour (index in `colours`) of each
    row, -1 where a clip has no event j."""
    out = {}
    for j in range(PROBE_EVENTS):
        events = [r["events"][j] if len(r["events"]) > j else None for r in rows]
        out[f"event{j}_direction"] = torch.tensor([-1 if e is None else int(e[2] in RISING) for e in events])
        out[f"event{j}_colour"] = torch.tensor([-1 if e is None else colours.index(e[0]) for e in events])
    return out


def linear_section(train: tuple[torch.Tensor, list[dict]], val: tuple[torch.Tensor, list[dict]]) -> dict:
    """{target: linear_probe(...)} from (features, rows) of the training and held-out clips."""
    colours = sorted({e[0] for _, rows in (train, val) for r in rows for e in r["events"]})
    t_train, t_val = probe_targets(train[1], colours), probe_targets(val[1], colours)
    out = {}
    for target, y_train in t_train.items():
        a, b = y_train >= 0, t_val[target] >= 0
        classes = 2 if target.endswith("direction") else len(colours)
        out[target] = linear_probe(train[0][a], y_train[a], val[0][b], t_val[target][b], classes)
    return out


def pixels(clips: list[Clip]) -> torch.Tensor:
    """(N, T * 3 * 16): each clip's frames (a run's preprocessing) average-pooled to 4x4."""
    return torch.stack([torch.nn.functional.adaptive_avg_pool2d(
        c.video.float().permute(0, 3, 1, 2), 4).flatten() for c in clips])


def read_rows(synth: Path, split: str) -> tuple[list[dict], list[str]]:
    rows = [json.loads(line) for line in (synth / f"{split}.jsonl").read_text().splitlines() if line.strip()]
    missing = [r["id"] for r in rows if "events" not in r]
    if missing:
        raise SystemExit(f"mc_probe: {synth / split}.jsonl: clip {missing[0]} has no 'events' "
                         "(not a `longvivit synth` benchmark)")
    for r in rows:  # what the event items' split needs (short_view_kind)
        r["num_frames"] = probe_video(str(synth / r["video"])).num_frames
    return rows, [str(synth / r["video"]) for r in rows]


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="bench/mc_probe.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--synth", required=True, type=Path, help="the `longvivit synth --long-range` folder")
    p.add_argument("--run", action="append", required=True, metavar="NAME=PATH",
                   help="a trained run, checkpoint or export (longvivit.load), named; repeatable")
    p.add_argument("--limit", type=int, default=100, help="training clips probed (default 100; val: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--linear", action="store_true", help="also the linear probes of the video embeddings "
                   "(every training clip) and of pooled pixels (the module docstring)")
    args = p.parse_args(argv)
    runs = []
    for spec in args.run:
        name, sep, path = spec.rpartition("=")  # a name may hold "=" (an override), a path not
        if not sep or not name or not path:
            p.error(f"--run {spec!r}: expected NAME=PATH")
        runs.append((name, path))
    for split in ("val", "train"):
        if not (args.synth / f"{split}.jsonl").is_file():
            p.error(f"--synth {args.synth}: no {split}.jsonl (a `longvivit synth --long-range` folder holds one)")
    every_train = read_rows(args.synth, "train")
    splits = {"val": read_rows(args.synth, "val"),
              "train": tuple(part[: args.limit] if args.limit else part for part in every_train)}
    torch.manual_seed(args.seed)
    decoded = {"val": splits["val"][1], "train": (every_train if args.linear else splits["train"])[1]}
    results, linear, first = [], [], None
    for name, path in runs:
        with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed's zero_to_fp32 prints as it loads
            encoder, _, _ = load(path, device="cpu")
        # each clip decoded and embedded once per run (its frames and size); the probes take the rows they need
        clips = {split: [encoder.preprocess(video) for video in videos] for split, videos in decoded.items()}
        with torch.no_grad():
            v = {split: encoder.encode_video(split_clips) for split, split_clips in clips.items()}  # L2-normalised
        for split, (rows, _) in splits.items():
            common.log(f"[mc_probe] {name} on {split}: {len(rows)} clips")
            n = len(rows)
            results.append({"run": name, "path": path, "split": split, "clips": n,
                            **probe(encoder, rows, clips[split][:n], v[split][:n])})
        if args.linear:
            common.log(f"[mc_probe] {name}: linear probes on {len(every_train[0])} training clips")
            linear.append({"run": name, **linear_section((v["train"].float().cpu(), every_train[0]),
                                                          (v["val"].float().cpu(), splits["val"][0]))})
            first = first or (encoder.preprocess.cfg.frames, clips)
    if args.linear:  # the input, through the first run's preprocessing (its frames)
        frames, clips = first
        linear.append({"run": f"pixels ({frames} frames)", **linear_section(
            (pixels(clips["train"]), every_train[0]), (pixels(clips["val"]), splits["val"][0]))})
    benchmark = args.synth / "benchmark.json"
    long_range = benchmark.is_file() and json.loads(benchmark.read_text()).get("long_range", False)
    common.emit({"synth": str(args.synth), "long_range": long_range, "results": results,
                 **({"linear": linear} if linear else {})})
    return 0


if __name__ == "__main__":
    sys.exit(main())
