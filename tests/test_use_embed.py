"""`longvivit embed` and the preprocessing it runs, on a tiny model with random weights
(tests/use_support.py random_export): what it writes does not depend on the weights.

Preprocessing a shard's own bytes as a raw video gives the loader's frames bit for bit; a
long clip's windows are its frames at the window spans; a 2-rank embed (torchrun) writes
the index a 1-rank one writes, byte for byte; an embed killed after some chunks and run
again skips them and writes the same index; truncated, garbage and missing videos are
listed in rejects.jsonl with their reasons and every other video is embedded, and `search`
finds the same hits on that index by either backend. (With a trained model:
tests/test_use_trained.py; bad command lines: tests/test_cli_bad_input.py.)
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from longvivit.cli.search import main as search_main
from longvivit.data.load.decode import VideoDecoder, plan_clip
from longvivit.data.prepare.shards import ShardOptions, transcode
from longvivit.data.prepare.manifest import read_manifest
from longvivit.data.preprocessing import PreprocessConfig
from longvivit.distributed.collectives import free_port
from longvivit.use.embed import window_spans
from longvivit.use.preprocess import Preprocess
from use_support import ROOT, env, longvivit, random_export

TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    made = random_export(tmp_path_factory.mktemp("random"))
    return {**made, "val": made["synth"] / "val.jsonl", "train": made["synth"] / "train.jsonl"}


def index_files(folder: Path) -> dict:
    """What an index holds, comparable across runs (index.json's timings and counts of
    resumed chunks and ranks left out)."""
    summary = json.loads((folder / "index.json").read_text())
    for key in ("seconds", "decode_seconds", "encode_seconds", "resumed_chunks", "ranks"):
        summary.pop(key)
    return {"summary": summary, **{name: (folder / name).read_bytes() for name in
                                   ("embeddings.safetensors", "videos.jsonl", "texts.jsonl", "rejects.jsonl")}}


def test_a_shard_read_as_a_raw_video_gives_the_loaders_frames(made):
    """The shard sample's bytes through Preprocess (PyAV at the shard FPS and size, RGB_FLAGS,
    DALI's resize) equal the loader's eval decode of the same bytes (plan_clip, VideoDecoder)
    bit for bit: the raw path differs from the shards' only where VP9 changed the pixels."""
    row = next(r for r in read_manifest(made["train"]) if not hasattr(r, "reason"))
    sample = transcode(row, ShardOptions(size=32))
    pre = Preprocess(PreprocessConfig(1.0, 32, 8, "uniform", 32))
    clip = pre(sample["video"])
    plan = plan_clip(sample, 8, "uniform", None, False)
    video, good, _ = VideoDecoder(1, 32, torch.device("cpu")).decode([sample["video"]], [plan])
    assert good == [0] and torch.equal(clip.video, video[0]) and clip.real_frames == plan.real_frames
    raw = pre(row.video)  # the raw file: VP9 twice less once
    assert raw.video.shape == clip.video.shape and 0 < (raw.video.float() - clip.video.float()).abs().mean() < 8


def test_windows_are_the_clips_frames_at_the_window_spans(made):
    frames = np.random.default_rng(0).integers(0, 256, (23, 40, 48, 3), dtype=np.uint8)
    pre = Preprocess(PreprocessConfig(2.0, 32, 4, "fps", 32))
    whole = torch.cat(list(pre._chunks(frames, None, None)))  # every frame, cropped and resized
    windows = list(pre.windows(frames, 6, 4))
    assert [(w.start_s * 2, w.end_s * 2) for w in windows] == window_spans(23, 6, 4) == \
        [(0, 6), (4, 10), (8, 14), (12, 18), (16, 22), (17, 23)]
    for w in windows:
        a = int(w.start_s * 2)
        assert torch.equal(w.video, whole[a + 1: a + 5]) and w.real_frames == 4  # fps sampling: the centred 4
    short = list(pre.windows(frames[:3], 6, 4))
    assert len(short) == 1 and short[0].real_frames == 3 and torch.equal(short[0].video[3], whole[2])


@pytest.mark.slow  # about 30 s each on 2 cores: `make test-all`
def test_two_ranks_write_the_index_one_rank_writes(made, tmp_path):
    args = [made["export"], made["synth"] / "val.jsonl", "--chunk-size", "1", "--dtype", "float32"]
    longvivit("embed", *args, "--out", tmp_path / "one")
    port = free_port()
    cmd = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(port), "-m", "longvivit.cli", "embed",
           *map(str, args), "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["ranks"] == 2 and summary["videos"] == summary["chunks"] >= 2
    assert index_files(tmp_path / "one") == index_files(tmp_path / "two")


@pytest.mark.slow  # about 30 s each on 2 cores: `make test-all`
def test_a_killed_embed_resumes_without_redoing_its_chunks(made, tmp_path):
    """Killed (SIGKILL) once 3 chunks are on disk, rerun: those chunks are kept, the rest
    embedded, and the index is the one an uninterrupted run writes. (36 clips: every video
    in three parts, one clip a chunk.)"""
    rows = [{"video": str(p), "caption": f"part {k} of {p.stem}", "start": 4 * k, "end": 4 * k + 4}
            for p in sorted((made["synth"] / "videos").iterdir()) for k in range(3)]
    manifest = tmp_path / "parts.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["embed", made["export"], manifest, "--chunk-size", "1"]
    longvivit(*args, "--out", tmp_path / "whole")
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "longvivit.cli", *map(str, args), "--out", str(out)], env=env(),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while len(list((out / "chunks").glob("*.safetensors"))) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, "the embed ended before 3 chunks"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "chunks").glob("*.safetensors")}
    assert not (out / "index.json").exists() and len(kept) < len(rows)
    summary = json.loads(longvivit(*args, "--out", out).stdout.strip().splitlines()[-1])
    assert summary["resumed_chunks"] == len(kept) and summary["chunks"] == summary["videos"] == len(rows)
    assert index_files(out) == index_files(tmp_path / "whole")


def test_bad_videos_are_listed_and_nothing_else_is_lost(made, tmp_path, capsys):
    """A folder of the val videos plus a truncated copy, a text file named .webm, and a
    manifest naming a missing file: each bad one in rejects.jsonl with its reason. (And
    `search --video` of an id the index lacks: one line naming it, exit 2; `search` by
    either backend: the same hits.)"""
    videos = tmp_path / "videos"
    shutil.copytree(made["synth"] / "videos", videos)
    good = sorted(p.name for p in videos.iterdir())
    data = (videos / good[0]).read_bytes()
    (videos / "cut.webm").write_bytes(data[: len(data) // 2])
    (videos / "notes.webm").write_text("not a video\n")
    summary = json.loads(longvivit("embed", made["export"], videos, "--out", tmp_path / "idx").stdout.splitlines()[-1])
    rejects = [json.loads(x) for x in (tmp_path / "idx" / "rejects.jsonl").read_text().splitlines()]
    assert {(r["id"], r["reason"]) for r in rejects} == {("cut.webm", "truncated file"), ("notes.webm", "corrupt file")}
    ids = [json.loads(x)["id"] for x in (tmp_path / "idx" / "videos.jsonl").read_text().splitlines()]
    assert ids == good and summary["videos"] == len(good) and summary["rejected"] == 2
    assert load_file(str(tmp_path / "idx" / "embeddings.safetensors"))["video"].shape == (len(good), 64)
    capsys.readouterr()
    assert search_main([str(tmp_path / "idx"), "a red circle", "--video", "notes.webm"]) == 2
    out, err = capsys.readouterr()
    assert not out and err == f"longvivit search: --video notes.webm: no video of that id in {tmp_path / 'idx'}\n"
    outputs = {}
    for backend in ("exact", "faiss"):  # the same JSON lines whichever backend scores the rows
        assert search_main([str(tmp_path / "idx"), "a red circle", "a blue square", "-k", "3", "--device", "cpu",
                            "--backend", backend]) == 0
        outputs[backend] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [[h["id"] for h in r["videos"]] for r in outputs["faiss"]] == \
        [[h["id"] for h in r["videos"]] for r in outputs["exact"]]
    assert len(outputs["exact"]) == 2 and len(outputs["exact"][0]["videos"]) == 3

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"video": str(videos / good[1]), "caption": "a clip"}) + "\n" +
                        json.dumps({"video": str(tmp_path / "gone.webm"), "caption": "gone"}) + "\n")
    longvivit("embed", made["export"], manifest, "--out", tmp_path / "m")
    [gone] = [json.loads(x) for x in (tmp_path / "m" / "rejects.jsonl").read_text().splitlines()]
    assert gone["reason"] == "missing file" and gone["video"].endswith("gone.webm")
    texts = [json.loads(x) for x in (tmp_path / "m" / "texts.jsonl").read_text().splitlines()]
    assert texts == [{"text": "a clip", "video": str(videos / good[1])}]  # the id: the video path as written
