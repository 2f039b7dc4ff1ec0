"""Why multiple choice stays at chance on the long-range benchmark: does a trained encoder
tell a clip's caption from the same caption with one event's direction flipped, or with two
neighbouring events swapped?

    .venv/bin/python bench/mc_probe.py --synth runs/demo-long-range/synth \
        --run stage1=runs/demo-long-range/short --run stage2=runs/demo-long-range/long [--limit 100]

For every clip of each split (val, and the first --limit of train), the caption (its first
phrasing) is scored against the clip's video embedding (longvivit.load: the run's frames and
preprocessing) beside each of its variants: every event flipped (up <-> down, grows <->
shrinks; FLIPPED of longvivit/data/prepare/synth.py), and every two neighbouring events
swapped. `flip` and `swap` are the shares of these pairs where the true caption scores
strictly higher (chance 50%): the multiple-choice items' action and order kinds, asked
with whole captions instead of the items' two-event answers. `mc_*` are the items as
`longvivit eval` scores them (answers alone; longvivit/eval/multichoice.py). Each clip
pair is one Bernoulli trial, so the half-width of a 95% interval is about 100/sqrt(pairs)
points. One JSON object on stdout; bench/report.py renders the table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import common
from longvivit.data.prepare.synth import FLIPPED, captions
from longvivit.eval.multichoice import embed_items, mc_metrics
from longvivit.use.encoder import load


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


@torch.no_grad()
def probe(encoder, rows: list[dict], videos: list[str]) -> dict:
    """flip/swap shares (%) and pair counts, and the items' mc metrics, of one run on rows."""
    v = encoder.encode_video(videos)  # (N, E), L2-normalised
    wins = {"flip": [], "swap": []}
    for i, row in enumerate(rows):
        events = [tuple(e) for e in row["events"]]
        kinds = variants(events)
        scores = encoder.encode_text([captions(events)[0], *(t for texts in kinds.values() for t in texts)]) @ v[i]
        for kind, rest in zip(kinds, scores[1:].split([len(texts) for texts in kinds.values()])):
            wins[kind] += (scores[0] > rest).tolist()
    items = [it for row in rows for it in row.get("mc") or []]
    item_video = [i for i, row in enumerate(rows) for _ in row.get("mc") or []]
    out = {f"{k}_pairs": len(w) for k, w in wins.items()}
    out |= {k: 100.0 * sum(w) / len(w) for k, w in wins.items() if w}
    if items:
        mc = mc_metrics(v.float().cpu(), embed_items(items, item_video, lambda x: encoder.encode_text(x).cpu()))
        out |= {f"mc_{k}": m for k, m in mc.items()}
    return out


def read_rows(synth: Path, split: str, limit: int | None) -> tuple[list[dict], list[str]]:
    rows = [json.loads(line) for line in (synth / f"{split}.jsonl").read_text().splitlines() if line.strip()]
    rows = rows[:limit] if limit else rows
    missing = [r["id"] for r in rows if "events" not in r]
    if missing:
        raise SystemExit(f"mc_probe: {synth / split}.jsonl: clip {missing[0]} has no 'events' "
                         "(not a `longvivit synth` benchmark)")
    return rows, [str(synth / r["video"]) for r in rows]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--synth", required=True, type=Path, help="the `longvivit synth --long-range` folder")
    p.add_argument("--run", action="append", required=True, metavar="NAME=PATH",
                   help="a trained run, checkpoint or export (longvivit.load), named; repeatable")
    p.add_argument("--limit", type=int, default=100, help="training clips probed (default 100; val: all)")
    p.add_argument("--seed", type=int, default=0)
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
    splits = {"val": read_rows(args.synth, "val", None), "train": read_rows(args.synth, "train", args.limit)}
    torch.manual_seed(args.seed)
    results = []
    for name, path in runs:
        encoder, _, _ = load(path, device="cpu")
        for split, (rows, videos) in splits.items():
            common.log(f"[mc_probe] {name} on {split}: {len(rows)} clips")
            results.append({"run": name, "path": path, "split": split, "clips": len(rows),
                            **probe(encoder, rows, videos)})
    common.emit({"synth": str(args.synth), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
