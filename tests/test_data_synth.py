"""The synthetic benchmark: deterministic, captions match what is drawn, hard negatives."""
from __future__ import annotations

import numpy as np
import pytest

from longvivit.cli.synth import main
from longvivit.data.load.decode import select_frames
from longvivit.data.prepare.synth import (
    COLOURS,
    SynthConfig,
    captions,
    event_lists,
    long_range_lists,
    long_range_spans,
    presence_item,
    write_benchmark,
)
from longvivit.data.prepare.video import frames_at, probe

from data_support import SYNTH, read_jsonl, refused, synth_data  # noqa: F401 (fixture)


def test_same_seed_same_files_other_seed_differs(tmp_path):
    args = dict(videos=4, frames=8, size=32, min_events=2, max_events=3)
    from longvivit.data.prepare.synth import write_benchmark
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        write_benchmark(tmp_path / name, seed=seed, **args)
    files = lambda d: {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}  # noqa: E731
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert files(tmp_path / "a") != files(tmp_path / "c")


def test_every_event_is_drawn_in_its_own_segment(synth_data):
    """The frame in the middle of event i's time segment shows event i's colour, and no
    frame of another segment is needed to see it: what the caption says is in the video."""
    for row in read_jsonl(synth_data["train"])[:3]:
        path = synth_data["dir"] / row["video"]
        info = probe(str(path))
        assert (info.num_frames, info.fps, info.width) == (SYNTH["frames"], 1.0, SYNTH["size"])
        k = len(row["events"])
        bounds = np.linspace(0, info.num_frames, k + 1).round()
        mids = [float((a + b - 1) // 2) for a, b in zip(bounds[:-1], bounds[1:])]
        frames = frames_at(str(path), mids)
        for frame, (colour, _, _) in zip(frames, row["events"]):
            close = np.abs(frame.astype(int) - COLOURS[colour]).max(-1) < 40
            assert close.sum() >= 12, f"{colour} object not visible in {row['video']}"


def test_captions_name_events_in_order_and_hard_negatives_exist():
    cfg = SynthConfig(videos=60, hard_negatives=1.0)
    listing = event_lists(cfg, np.random.default_rng(0))
    assert len({tuple(e) for _, e in listing}) == len(listing)  # every caption unique
    first, second = captions([("red", "circle", "grows"), ("blue", "cross", "moves up")])
    assert first == "a red circle grows, then a blue cross moves up"
    assert second == "first a red circle grows, finally a blue cross moves up"
    families: dict[int, list] = {}
    for family, events in listing:
        families.setdefault(family, []).append(events)
    trios = [m for m in families.values() if len(m) == 3]
    assert len(trios) >= 15
    for base, one_changed, reordered in trios:
        diffs = sum(a != b for e, f in zip(base, one_changed) for a, b in zip(e, f))
        assert diffs == 1 and len(base) == len(one_changed)
        assert sorted(base) == sorted(reordered) and base != reordered


def test_cli_refuses_non_empty_out_and_bad_args(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["--out", str(out), "--videos", "3", "--frames", "8", "--size", "16",
                 "--events", "2", "3"]) == 0
    assert len(read_jsonl(out / "train.jsonl")) + len(read_jsonl(out / "val.jsonl")) == 3
    assert main(["--out", str(out), "--videos", "3", "--frames", "8"]) == 2
    assert "not empty" in capsys.readouterr().err
    (out / "notes.txt").write_text("mine")
    assert main(["--out", str(out), "--videos", "3", "--frames", "8", "--overwrite"]) == 2
    assert "not benchmark files (notes.txt)" in capsys.readouterr().err and (out / "notes.txt").exists()
    (out / "notes.txt").unlink()
    assert main(["--out", str(out), "--videos", "2", "--frames", "8", "--size", "16", "--events", "2", "3",
                 "--overwrite"]) == 0
    assert len(list((out / "videos").iterdir())) == 2
    assert main(["--out", str(tmp_path / "t"), "--frames", "4"]) == 2  # 4 events need 8 frames
    assert "frames" in capsys.readouterr().err


def test_rows_are_labelled_with_their_first_object(tmp_path):
    from longvivit.data.prepare.manifest import read_manifest

    write_benchmark(tmp_path / "b", videos=6, frames=8, size=16, seed=3, min_events=2, max_events=3)
    for split in ("train", "val"):
        raw = read_jsonl(tmp_path / "b" / f"{split}.jsonl")
        rows = list(read_manifest(tmp_path / "b" / f"{split}.jsonl"))
        for r, row in zip(raw, rows):
            colour, shape, _ = r["events"][0]
            assert r["label"] == row.label == f"{colour} {shape}"
            assert all(c.startswith((f"a {r['label']} ", f"first a {r['label']} ")) for c in r["caption"])


SMALL = ["--out", "{tmp}/b", "--frames", "8", "--size", "16", "--events", "2", "3"]


@pytest.mark.parametrize("argv, message", [
    (SMALL + ["--videos", "0"], "videos: 0 must be >= 2"),
    (SMALL + ["--videos", "1"], "videos: 1 must be >= 2"),
    (SMALL + ["--videos", "-3"], "videos: -3 must be >= 2"),
    (SMALL + ["--videos", "many"], "argument --videos: invalid int value: 'many'"),
    (SMALL + ["--frames", "0"], "frames: need 2*max_events=6 <= frames (two frames an event), "
     "got frames=0"),
    (SMALL + ["--frames", "-5"], "frames: need 2*max_events=6 <= frames"),
    (SMALL + ["--frames", "5"], "frames: need 2*max_events=6 <= frames"),
    (SMALL + ["--frames", "1.5"], "argument --frames: invalid int value: '1.5'"),
    (SMALL + ["--min-frames", "-1"], "min_frames: need 2*max_events=6 <= min_frames <= frames, "
     "got min_frames=-1"),
    (SMALL + ["--min-frames", "9"], "min_frames=9, frames=8"),
    (SMALL + ["--size", "0"], "size: 0 must be an even number >= 16"),
    (SMALL + ["--size", "17"], "size: 17 must be an even number >= 16"),
    (SMALL + ["--size", "-16"], "size: -16 must be an even number >= 16"),
    (SMALL + ["--events", "0", "0"], "min_events: need 1 <= min_events <= max_events, got 0..0"),
    (SMALL + ["--events", "3", "2"], "got 3..2"),
    (SMALL + ["--events", "2"], "argument --events: expected 2 arguments"),
    (SMALL + ["--events", "two", "three"], "argument --events: invalid int value: 'two'"),
    # more videos than distinct captions: drawing them never ended
    (SMALL + ["--events", "1", "1", "--videos", "97"], "97 videos need as many distinct "
     "captions; 1..1 events make only 96"),
    (["--out", "{tmp}/b", "--frames", "256", "--events", "100", "100"], "make only 0"),
    (SMALL + ["--hard-negatives", "-0.1"], "hard_negatives: -0.1 is outside [0, 1]"),
    (SMALL + ["--hard-negatives", "nan"], "hard_negatives: nan is outside [0, 1]"),
    (SMALL + ["--val-fraction", "0"], "val_fraction: 0.0 is outside (0, 1)"),
    (SMALL + ["--val-fraction", "1"], "val_fraction: 1.0 is outside (0, 1)"),
    (SMALL + ["--val-fraction", "inf"], "val_fraction: inf is outside (0, 1)"),
    (SMALL + ["--seed", "-1"], "seed: -1 must be >= 0"),
    (SMALL + ["--seed", "x"], "argument --seed: invalid int value: 'x'"),
    (SMALL + ["--images", "-1"], "images: -1 must be >= 0"),
    (["--videos", "3"], "the following arguments are required: --out"),
    (["--out", "{tmp}/afile"], "output {tmp}/afile: is a file, not a folder"),
    (["--out", "{tmp}/afile/b"], "output {tmp}/afile/b: {tmp}/afile is a file, not a folder"),
    (["--out", "/proc/x/b"], "output /proc/x/b: cannot make a folder in /proc"),
])
def test_bad_arguments_exit_2_in_one_line_and_create_nothing(tmp_path, capsys, argv, message):
    (tmp_path / "afile").write_text("x")
    argv = [a.format(tmp=tmp_path) for a in argv]
    line = refused(main, argv, capsys, tmp_path, "synth")
    assert message.format(tmp=tmp_path) in line, line


@pytest.mark.timeout(120)
def test_single_event_videos_with_hard_negatives_are_written(tmp_path):
    """A one-event list cannot be reordered into a hard negative: drawing its family used to
    loop for ever; now such a list stands alone."""
    summary = write_benchmark(tmp_path / "b", videos=6, frames=4, size=16, min_events=1,
                              max_events=1, hard_negatives=1.0)
    assert summary["train"] + summary["val"] == 6
    rows = read_jsonl(tmp_path / "b" / "train.jsonl") + read_jsonl(tmp_path / "b" / "val.jsonl")
    assert all(len(r["events"]) == 1 for r in rows)
    assert len({tuple(r["events"][0]) for r in rows}) == 6  # every caption its own


# ----------------------------------------------------------------------------- long range

def seen_frames(spans: list, num_frames: int, view: int = 16) -> list[int]:
    """How many of `view` uniform frames (the loader's own choice) fall in each event's span."""
    idx, _ = select_frames(num_frames, view, "uniform", None)
    return [int(((idx >= a) & (idx < b)).sum()) for a, b in spans]


@pytest.mark.parametrize("frames, min_frames, event_frames", [(128, 0, 4), (256, 128, 4), (200, 0, 6)])
def test_long_range_16_uniform_frames_see_most_events_in_at_most_one_frame(frames, min_frames, event_frames):
    """The long-range design, from the event spans: with ShortViViT's 16 uniform frames more
    than half of each clip's events (in fact all of them) are seen in at most one frame, and
    the close pair in one frame at most between them, and over a third of all events in no
    frame, while stage 2's 64 frames see every event; all the frames see each event whole.
    The default benchmark is the contrast: there 16 frames see every event 3 times or more."""
    cfg = SynthConfig(videos=60, frames=frames, min_frames=min_frames, long_range=True,
                      hard_negatives=1.0, event_frames=event_frames)
    cfg.validate()
    listing = long_range_lists(cfg, np.random.default_rng(1))
    missed = total = 0
    for i, (_, events, pair) in enumerate(listing):
        rng = np.random.default_rng([7, i])
        n = int(rng.integers(min_frames or frames, frames + 1))
        spans = long_range_spans(len(events), pair, n, event_frames, rng)
        assert [b - a for a, b in spans] == [event_frames] * len(events)
        assert all(b0 <= a1 for (_, b0), (a1, _) in zip(spans, spans[1:])) and spans[-1][1] <= n
        assert spans[pair + 1][1] - spans[pair][0] <= n // 16  # the close pair within one stride
        gaps = [a1 - b0 for (_, b0), (a1, _) in zip(spans, spans[1:])]
        assert all(g >= event_frames for j, g in enumerate(gaps) if j != pair)  # idle stretches
        seen = seen_frames(spans, n)
        assert sum(s <= 1 for s in seen) > len(events) / 2, (spans, seen)
        assert seen[pair] + seen[pair + 1] <= 1, (spans, seen)
        assert min(seen_frames(spans, n, 64)) >= 1, spans  # stage 2's 64 frames see every event
        missed += seen.count(0)
        total += len(events)
    assert missed > total / 3, (missed, total)  # what the event items ask about, 16 frames never see
    default = SynthConfig(videos=60, frames=64)
    for _, events in event_lists(default, np.random.default_rng(1)):
        bounds = np.linspace(0, 64, len(events) + 1).round().astype(int)
        assert min(seen_frames(list(zip(bounds[:-1], bounds[1:])), 64)) >= 3


def test_long_range_hard_negatives_flip_one_direction_or_swap_the_close_pair():
    cfg = SynthConfig(videos=90, frames=128, long_range=True, hard_negatives=1.0)
    listing = long_range_lists(cfg, np.random.default_rng(0))
    assert len({tuple(e) for _, e, _ in listing}) == len(listing)  # every caption unique
    families: dict[int, list] = {}
    for family, events, pair in listing:
        families.setdefault(family, []).append((events, pair))
    assert len(families) == 30
    for (base, pair), (flipped, p1), (swapped, p2) in families.values():
        assert pair == p1 == p2 and len({f"{c} {s}" for c, s, _ in base}) == len(base)  # objects distinct
        changed = [j for j, (e, f) in enumerate(zip(base, flipped)) if e != f]
        assert len(changed) == 1
        (c, s, a), (c2, s2, a2) = base[changed[0]], flipped[changed[0]]
        assert (c, s) == (c2, s2) and {a, a2} in ({"moves up", "moves down"}, {"grows", "shrinks"})
        assert swapped[pair] == base[pair + 1] and swapped[pair + 1] == base[pair]
        assert [e for j, e in enumerate(swapped) if j not in (pair, pair + 1)] == \
            [e for j, e in enumerate(base) if j not in (pair, pair + 1)]


def test_long_range_objects_draws_every_clip_from_the_same_few_objects():
    """--objects K: the clips share K objects (captions then differ in actions and order);
    the default (0) keeps the draws of every seed's benchmark as they were."""
    shared = long_range_lists(SynthConfig(videos=60, frames=128, long_range=True, objects=4),
                              np.random.default_rng(0))
    objects = {(c, s) for _, events, _ in shared for c, s, _ in events}
    assert len(objects) == 4 and len({tuple(e) for _, e, _ in shared}) == 60
    assert all(len({(c, s) for c, s, _ in events}) == len(events) for _, events, _ in shared)
    everyone = long_range_lists(SynthConfig(videos=60, frames=128, long_range=True), np.random.default_rng(0))
    assert len({(c, s) for _, events, _ in everyone for c, s, _ in events}) > 4


def test_long_range_benchmark_draws_its_events_in_their_spans_and_nothing_between(tmp_path):
    """What a row's spans and mc items say is in the video: each event's colour is on screen
    in its span and no event's colour in the idle frames; the items' right answers name the
    clip's events; captions fit the CLIP text tower's 32 tokens."""
    summary = main(["--out", str(tmp_path / "b"), "--long-range", "--videos", "6", "--size", "32",
                    "--seed", "2"])
    assert summary == 0
    rows = read_jsonl(tmp_path / "b" / "train.jsonl") + read_jsonl(tmp_path / "b" / "val.jsonl")
    assert len(rows) == 6
    for row in rows[:2]:
        path = str(tmp_path / "b" / row["video"])
        assert probe(path).num_frames == 128
        frames = frames_at(path, [float(t) for t in range(128)])
        inside = {t: colour for (colour, _, _), (a, b) in zip(row["events"], row["spans"]) for t in range(a, b)}
        for t, frame in enumerate(frames):
            shown = {c for c in COLOURS if (np.abs(frame.astype(int) - COLOURS[c]).max(-1) < 40).sum() >= 6}
            assert shown == ({inside[t]} if t in inside else set()), (row["video"], t, shown)
    for row in rows:
        action, order, event = row["mc"]
        assert action["kind"] == "action" and len(action["answers"]) == 4
        assert order["kind"] == "order" and len(order["answers"]) == 2
        assert event["kind"] == "event" and len(event["answers"]) == 4
        caption = row["caption"][0]
        assert action["answers"][action["answer"]] in caption
        assert order["answers"][order["answer"]] in caption
        assert order["answers"][1 - order["answer"]] not in caption
        # the event item: its right answer is one of the clip's events; the others, the same
        # action done by objects the clip never shows
        right = event["answers"][event["answer"]]
        assert right in [f"a {c} {s} {a}" for c, s, a in row["events"]]
        for wrong in event["answers"][:event["answer"]] + event["answers"][event["answer"] + 1:]:
            assert wrong.split()[1:3] not in [[c, s] for c, s, _ in row["events"]]
            assert wrong.split()[3:] == right.split()[3:]
        assert sorted(row["labels"]) == sorted(f"{c} {s}" for c, s, _ in row["events"])
    tokenizer = pytest.importorskip("longvivit.data.load.tokenizer").make_tokenizer("open_clip")
    _, mask = tokenizer.encode([c for r in rows for c in r["caption"]], 64)
    assert int(mask.sum(1).max()) <= 32


def test_event_item_asks_with_absent_objects_only_and_skips_a_clip_that_shows_them_all():
    events = [("red", "circle", "grows"), ("blue", "square", "moves up")]
    pool = [("red", "circle"), ("blue", "square"), ("green", "cross")]
    [item] = presence_item(events, pool, np.random.default_rng(0))
    assert len(item["answers"]) == 2 and "a green cross" in " ".join(item["answers"])
    right = item["answers"][item["answer"]]
    assert right in ("a red circle grows", "a blue square moves up")
    assert item["answers"][1 - item["answer"]] == "a green cross " + " ".join(right.split()[3:])
    assert presence_item(events, pool[:2], np.random.default_rng(0)) == []


@pytest.mark.parametrize("argv, message", [
    (["--frames", "120"], "frames: the long-range variant needs 128 frames or more"),
    (["--event-frames", "1"], "event_frames: 1 must be >= 2"),
    (["--event-frames", "5"], "frames: the long-range variant needs 160 frames or more"),
    (["--events", "1", "3"], "min_events: 1: the long-range variant needs 2 or more events"),
    (["--objects", "3"], "objects: 3: need 0 (all) or max_events=4..24"),
    (["--objects", "25"], "objects: 25: need 0 (all) or max_events=4..24"),
    (["--min-frames", "100"], "frames: the long-range variant needs 128 frames or more (16 uniform "
     "frames 8 apart, so that two back-to-back events of 4 frames share one of them), got 100"),
])
def test_long_range_bad_arguments_exit_2(tmp_path, capsys, argv, message):
    line = refused(main, ["--out", tmp_path / "b", "--long-range", *argv], capsys, tmp_path, "synth")
    assert message in line, line


@pytest.mark.parametrize("flag", ["--event-frames", "--objects"])
def test_long_range_options_without_long_range_are_refused(tmp_path, capsys, flag):
    line = refused(main, ["--out", tmp_path / "b", flag, "4"], capsys, tmp_path, "synth")
    assert f"{flag} applies to --long-range only" in line
