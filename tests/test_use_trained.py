"""longvivit's use of a trained model (tests/use_support.py trained_export: the demo's recipe
at a test's size, 150 steps; its held-out split: 32 videos of 16 frames at 1 FPS, 64
captions, `longvivit eval` t2v R@1 46.9% against 3.1% by chance). Numbers measured on
this machine (2 CPU cores, torch 2.14.1 CPU) are in each test's docstring; the asserted
bounds leave room around them.

- The held-out videos embedded from their raw files (the synth .webm files, not the
  shards) retrieve their captions with eval's R@1 on the shards within one clip (measured:
  equal, 30 of 64 captions each). The embeddings differ by what the shards' VP9 re-encoding
  changes: the shards' own bytes embedded by `longvivit embed` give eval's embeddings (max
  abs diff 3e-8); the raw frames differ from the shards' by 1.52 grey levels on average
  (the most for one clip: 1.87), and the raw embeddings from the shard ones by at most
  0.0039 per coordinate, cosine >= 0.99990.
- `longvivit search` puts the right clip first for as many captions as that R@1 says, and
  its --html page loads in headless chromium with every frame strip.
- Windowed embedding of 4 long synthetic videos (4 minutes at 1 FPS each, 15 one-event
  segments of 16 s at known times; windows of 16 frames every 8): for the caption of each
  of the 60 events, `search --video` puts first a window that overlaps the event's span for
  29 of 60 (48%; chance, the share of a video's windows that overlap the event: 10%).

Slow (the training alone is about a minute on 2 cores): `make test-all`, or -m slow.
"""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from browser_support import loaded_dom, processes_using
from longvivit.cli.search import main as search_main
from longvivit.data.prepare.manifest import read_manifest
from longvivit.data.prepare.synth import ACTIONS, COLOURS, SHAPES, captions, render
from longvivit.data.prepare.video import encode
from longvivit.eval.evaluate import Embeddings
from longvivit.eval.retrieval import retrieval_metrics
from longvivit.use import load
from longvivit.use.embed import open_shards
from use_support import longvivit, trained_export

pytestmark = pytest.mark.slow

CAPTIONS_PER_CLIP = 2  # the synth captions: two phrasings of each video's events
LONG = dict(videos=4, events=15, seconds=240, size=32, seed=0)  # the long videos of the windowed test
WINDOW, STRIDE = 16, 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """The trained export; eval's metrics and embeddings on the val shards; indexes (float32)
    of the val videos' raw files and of the val shards."""
    made = trained_export(tmp_path_factory.mktemp("trained"))
    root = made["export"].parent
    lines = longvivit("eval", made["export"], "--data", made["shards"] / "val", "--tasks", "t2v_v2t",
                      "--save-embeddings", root / "eval.safetensors").stdout.strip().splitlines()
    for name, source in (("index_raw", made["synth"] / "val.jsonl"), ("index_shards", made["shards"] / "val")):
        longvivit("embed", made["export"], source, "--out", root / name, "--dtype", "float32")
    return {**made, "eval": json.loads(lines[-1]), "eval_embeddings": Embeddings.load(root / "eval.safetensors")[0],
            "raw": root / "index_raw", "shard_index": root / "index_shards"}


def read_index(folder: Path) -> tuple[dict, list[dict], list[dict]]:
    """(tensors, videos.jsonl rows, texts.jsonl rows) of an index."""
    rows = lambda name: [json.loads(x) for x in (folder / name).read_text().splitlines()]  # noqa: E731
    return load_file(str(folder / "embeddings.safetensors")), rows("videos.jsonl"), rows("texts.jsonl")


def correct_captions(r1: float, captions_count: int) -> int:
    return round(r1 * captions_count / 100)


def test_raw_videos_retrieve_as_eval_on_the_shards_and_differ_by_the_reencoding(trained):
    """Measured: R@1 46.875% both ways; shard index vs eval max abs diff 3e-8; frames raw vs
    shard mean abs diff 1.52 grey levels; raw vs shard embeddings max abs diff 0.0039, min
    cosine 0.99990."""
    ev = trained["eval_embeddings"]
    raw, raw_videos, _ = read_index(trained["raw"])
    shard, shard_videos, _ = read_index(trained["shard_index"])
    # the shards through `longvivit embed` are eval's clips: the same embeddings
    assert (shard["text_video"] == ev.caption_video).all()
    assert (shard["video"] - ev.video).abs().max() <= 1e-5 and (shard["text"] - ev.text).abs().max() <= 1e-5

    # R@1 of the raw files' index, against eval's on the shards: within one clip's captions
    assert trained["eval"]["captions"] == len(raw["text"]) == 64
    raw_r1 = retrieval_metrics(raw["text"] @ raw["video"].T, raw["text_video"])["t2v_r1"]
    n = len(raw["text"])
    assert abs(correct_captions(raw_r1, n) - correct_captions(trained["eval"]["t2v_r1"], n)) <= CAPTIONS_PER_CLIP
    assert trained["eval"]["t2v_r1"] >= 5 * trained["eval"]["chance_r1"]  # a model that retrieves

    # the embeddings, video by video: what the shards' VP9 re-encoding changes
    row_of = {v["id"]: i for i, v in enumerate(shard_videos)}
    same = torch.tensor([row_of[v["id"]] for v in raw_videos])
    diff = (raw["video"] - shard["video"][same]).abs().max().item()
    cosine = (raw["video"] * shard["video"][same]).sum(dim=1).min().item()
    assert 0 < diff <= 0.02 and cosine >= 0.9995, (diff, cosine)
    pixels = frame_differences(trained)
    assert 0.5 <= float(np.mean(pixels)) <= 4.0 and max(pixels) <= 6.0, pixels


def frame_differences(trained: dict) -> list[float]:
    """Per val clip, the mean abs difference (grey levels) of the model's input frames from
    the raw file and from the shard's bytes (the same preprocessing: only the bytes differ)."""
    _, preprocess, _ = load(trained["export"], "cpu")
    files = {str(r.id): r.video for r in read_manifest(trained["synth"] / "val.jsonl")}
    shards = open_shards(str(trained["shards"] / "val"), "", 0, 1)
    out = []
    for i in range(len(shards)):
        sample = shards[i]
        raw, shard = preprocess(files[str(sample["id"])]).video, preprocess(sample["video"]).video
        out.append((raw.float() - shard.float()).abs().mean().item())
    return out


def test_search_puts_the_right_clip_first_as_often_as_r1_says_and_its_page_loads(trained, tmp_path, capsys):
    """Every val caption a query, -k 1: the right clip first for 30 of 64 (the raw index's
    R@1, within one clip of eval's); the page: 64 strips, all loaded in chromium."""
    raw, raw_videos, texts = read_index(trained["raw"])
    queries = tmp_path / "captions.txt"
    queries.write_text("".join(t["text"] + "\n" for t in texts))
    capsys.readouterr()
    assert search_main([str(trained["raw"]), "--queries", str(queries), "-k", "1", "--html", str(tmp_path / "page"),
                        "--device", "cpu"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["query"] for r in results] == [t["text"] for t in texts]
    first = [r["videos"][0]["id"] for r in results]
    right = sum(got == t["video"] for got, t in zip(first, texts))
    raw_r1 = retrieval_metrics(raw["text"] @ raw["video"].T, raw["text_video"])["t2v_r1"]
    assert right == correct_captions(raw_r1, len(texts))
    assert abs(right - correct_captions(trained["eval"]["t2v_r1"], len(texts))) <= CAPTIONS_PER_CLIP

    profile = tmp_path / "profile"
    dom = loaded_dom(tmp_path / "page" / "index.html", profile)
    assert not processes_using(profile)
    assert re.search(r'<body[^>]*data-images="(\d+)/(\d+)"', dom).groups() == (str(len(texts)), str(len(texts)))
    assert re.findall(r'<figure class="hit" data-id="([^"]+)"', dom) == first


def long_videos(folder: Path) -> list[dict]:
    """LONG["videos"] videos of LONG["events"] distinct one-object events each, event i on
    seconds [start, end) of segment i (synth.render at 1 FPS, VP9); one row per event:
    {"video": the file's name, "caption", "start", "end"}."""
    folder.mkdir()
    rng = np.random.default_rng(LONG["seed"])
    every = list(itertools.product(COLOURS, SHAPES, ACTIONS))
    bounds = np.linspace(0, LONG["seconds"], LONG["events"] + 1).round().astype(int)
    rows = []
    for v in range(LONG["videos"]):
        events = [every[i] for i in rng.choice(len(every), LONG["events"], replace=False)]
        data, info = encode(render(events, LONG["seconds"], LONG["size"], rng), fps=1.0)
        assert info.num_frames == LONG["seconds"]
        (folder / f"long{v}.webm").write_bytes(data)
        rows += [{"video": f"long{v}.webm", "caption": captions([e])[0], "start": float(a), "end": float(b)}
                 for e, a, b in zip(events, bounds[:-1], bounds[1:])]
    return rows


def overlaps(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_a_window_overlapping_the_event_is_found_for_its_caption(trained, tmp_path, capsys):
    """Measured: 29 of 60 events (48%) have an overlapping window first; chance 10%.
    Asserted: at least 3 times chance. Every moment `search --video` returns is of that
    video, and each video's row is its windows' pooled embedding."""
    events = long_videos(tmp_path / "long")
    longvivit("embed", trained["export"], tmp_path / "long", "--out", tmp_path / "idx", "--window", WINDOW,
              "--stride", STRIDE, "--dtype", "float32")
    tensors, videos, _ = read_index(tmp_path / "idx")
    assert [v["id"] for v in videos] == [f"long{v}.webm" for v in range(LONG["videos"])]
    spans = [{"start": a, "end": a + WINDOW} for a in range(0, LONG["seconds"] - WINDOW + 1, STRIDE)]
    assert len(tensors["window"]) == LONG["videos"] * len(spans)
    assert tensors["window_start_s"].tolist() == [s["start"] for s in spans] * LONG["videos"]
    for row in range(LONG["videos"]):
        mean = tensors["window"][tensors["window_video"] == row].mean(dim=0)
        assert torch.allclose(tensors["video"][row], mean / mean.norm(), atol=1e-6)

    found, chance = 0, 0.0
    for video in sorted({e["video"] for e in events}):
        mine = [e for e in events if e["video"] == video]
        (tmp_path / "q.txt").write_text("".join(e["caption"] + "\n" for e in mine))
        capsys.readouterr()
        assert search_main([str(tmp_path / "idx"), "--queries", str(tmp_path / "q.txt"), "-k", "3", "--video", video,
                            "--device", "cpu"]) == 0
        results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["videos"][0]["id"] for r in results] == [video] * len(mine)
        assert all(m["id"] == video for r in results for m in r["moments"])
        found += sum(overlaps(r["moments"][0], e) for r, e in zip(results, mine))
        chance += sum(sum(overlaps(s, e) for s in spans) / len(spans) for e in mine)
    rate, chance = found / len(events), chance / len(events)
    print(f"windowed search: an overlapping window first for {found} of {len(events)} events ({rate:.0%}); "
          f"chance {chance:.0%}")
    assert rate >= 3 * chance, (found, len(events), chance)
