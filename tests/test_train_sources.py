"""Data sources as a list (data.sources): the step schedule, the config (new form, the older
data.train/data.images form and its keys on a new-form config, the local form, the stored
run config), and 2-rank runs under the deepspeed launcher: two video sources at 0.7/0.3 of
the video steps plus images on 0.2 of the steps (weights 0.56/0.24/0.2; the first video
source reads two shard folders mixed by streaming's Streams), where each source's step
count stays within floor..ceil of its share at every step, each source's samples come once
an epoch, each has its loss in TensorBoard, and a run killed after a mid-epoch checkpoint
resumes exactly; a checkpoint written before data.sources (parts "loader"/"images", a
run_config.yaml with data.train/data.images) resumes too."""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml

from longvivit.config import ConfigError
from longvivit.train.config import load_run_config
from longvivit.train.sources import Schedule, Sources, saved_part_names

from train_support import CONFIGS, Launch, ROOT, events

DEMO = CONFIGS / "demo.yaml"


# ---------------------------------------------------------------------------- the schedule

def counts_in_quota(weights: list[float], steps: int) -> list[tuple[int, int, int, Fraction]]:
    """(step, source, count, its exact share of the steps so far) wherever a count leaves
    floor..ceil of s * w_i."""
    exact = [Fraction(repr(w)) for w in weights]
    shares = [w / sum(exact) for w in exact]
    schedule, counts, off = Schedule(weights), [0] * len(weights), []
    for s in range(1, steps + 1):
        counts[schedule.pick(s)] += 1
        off += [(s, i, c, s * w) for i, (c, w) in enumerate(zip(counts, shares))
                if not math.floor(s * w) <= c <= math.ceil(s * w)]
    return off


def test_every_count_stays_within_floor_and_ceil_of_its_share_at_every_step():
    rng = random.Random(0)
    for _ in range(150):
        n = rng.randint(1, 8)
        weights = [round(rng.uniform(0.01, 10), rng.randint(0, 3)) or 0.5 for _ in range(n)]
        assert counts_in_quota(weights, 300) == [], weights
    # where the largest-deficit rule falls below floor (the second source: 5 of the first 14
    # steps, floor(14 * 9/21) = 6)
    assert counts_in_quota([9, 9, 1, 1, 1], 210) == []
    assert counts_in_quota([0.56, 0.24, 0.2], 1000) == []


def test_two_sources_round_each_count_to_the_nearest_and_any_window_holds_its_share():
    """With two sources the rule rounds s * p; today's image steps for p = 0.2 are 3, 8, 13
    (the floor rule before data.sources put them at 5, 10, 15); at p = 0.5 every other step."""
    def second(weights, steps):
        schedule = Schedule(weights)
        return [s for s in range(1, steps + 1) if schedule.pick(s) == 1]

    assert second([0.8, 0.2], 20) == [3, 8, 13, 18]
    assert second([0.75, 0.25], 16) == [3, 7, 11, 15]
    assert second([0.5, 0.5], 8) == [2, 4, 6, 8]
    chosen = set(second([0.7, 0.3], 1000))
    assert len(chosen) == 300
    for start in (1, 17, 500):  # any window of N steps holds floor or ceil of N * p
        for n in (10, 33, 101):
            count = len(chosen & set(range(start, start + n)))
            assert math.floor(n * 0.3) <= count <= math.ceil(n * 0.3), (start, n, count)


def test_the_schedule_is_a_function_of_the_step_alone():
    weights = [0.56, 0.24, 0.2]
    straight = Schedule(weights)
    picks = [straight.pick(s) for s in range(1, 301)]
    assert straight.pick(300) == picks[-1]  # asked again: the same
    for resume in (1, 13, 150, 299):  # a fresh schedule (a resumed run) from any step on
        fresh = Schedule(weights)
        assert [fresh.pick(s) for s in range(resume, 301)] == picks[resume - 1:]
    assert straight.pick(7) == picks[6] and straight.pick(8) == picks[7]  # back to the past: replayed
    assert Schedule([3.0]).pick(5) == 0


# ---------------------------------------------------------------------------- the config

THREE = {"sources": [
    {"name": "a", "kind": "video", "weight": 0.56, "shards": [{"path": "/d/a1", "weight": 1}, {"path": "/d/a2"}]},
    {"name": "b", "kind": "video", "weight": 0.24, "shards": "/d/b", "frames": 4, "batch_size": 3},
    {"name": "images", "kind": "image", "weight": 0.2, "shards": "s3://bucket/images", "batch_size": 8,
     "mask_ratio": 0.5}]}


def three(*overrides: str):
    return load_run_config(DEMO, {"data": THREE}, overrides=["model.video.frames=8", *overrides])


def test_the_new_form_gives_each_source_its_loader_config_and_cost():
    cfg = three()
    sources = Sources(cfg)
    assert [(s.name, s.batch_size, s.data.frames, s.data.seed, s.mask_ratio) for s in sources] == [
        ("a", 16, 8, 0, None), ("b", 3, 4, 1, None), ("images", 8, 1, 2, 0.5)]
    assert sources["a"].data.train == [{"path": "/d/a1", "weight": 1}, {"path": "/d/a2"}]
    assert sources["images"].data.sampling == "uniform" and sources["images"].data.train == "s3://bucket/images"
    # visible tokens per sample: 8 frames / 2 x 16 patches at the model's 0.75; 2 slices; an image: one slice at 0.5
    assert [s.tokens for s in sources] == [16, 8, 8]
    assert sources["a"].flops > sources["b"].flops > 0 and sources["images"].flops > 0
    assert sources.parts() == {"a": None, "b": None, "images": None}
    assert sources.parts({"a": "loader"}) == {"loader": None, "b": None, "images": None}


def test_the_older_form_becomes_sources_named_video_and_images():
    cfg = load_run_config(DEMO, overrides=["data.images.train=/img", "data.images.proportion=0.2"])
    assert cfg.data.train == "" and not cfg.data.images.given()
    got = [(s.name, s.kind, s.weight, s.shards, s.batch_size, s.mask_ratio) for s in cfg.data.sources]
    assert got == [("video", "video", 0.8, "runs/demo/shards/train", None, None),
                   ("images", "image", 0.2, "/img", 32, 0.5)]  # the older form's defaults
    old = {k: v for k, v in yaml.safe_load(DEMO.read_text()).items()}
    old["data"] = {**{k: v for k, v in old["data"].items() if k != "sources"}, "train": "/v",
                   "images": {"train": "/img", "proportion": 0.25, "batch_size": 4, "mask_ratio": 0.3}}
    cfg = load_run_config(old)  # a whole config in the older form, e.g. a checkpoint's run_config.yaml
    assert [(s.name, s.weight, s.shards, s.batch_size, s.mask_ratio) for s in cfg.data.sources] == [
        ("video", 0.75, "/v", None, None), ("images", 0.25, "/img", 4, 0.3)]


def test_the_older_keys_address_the_sources_of_their_names():
    cfg = load_run_config(CONFIGS / "demo_short.yaml", overrides=[
        "data.train=/v", "data.images.train=/img", "data.images.batch_size=2", "data.images.mask_ratio=0.1"])
    assert [(s.name, s.weight, s.shards, s.batch_size, s.mask_ratio) for s in cfg.data.sources] == [
        ("video", 0.75, "/v", None, None), ("images", 0.25, "/img", 2, 0.1)]
    cfg = load_run_config(CONFIGS / "demo_short.yaml", overrides=["data.images.proportion=0"])
    assert [s.name for s in cfg.data.sources] == ["video"]
    cfg = three("data.images.proportion=0.5")  # the others keep their ratio in the other half
    assert [s.weight for s in cfg.data.sources] == pytest.approx([0.35, 0.15, 0.5])
    with pytest.raises(ConfigError, match=r"^data.train: this config lists data.sources \(a, b, images\) and none "
                                          r"is named 'video'"):
        three("data.train=/v")


def test_an_override_of_a_list_entry_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^data.sources.0.weight: an entry of a list cannot be set on the command"):
        three("data.sources.0.weight=0.5")


@pytest.mark.parametrize("change, key", [
    ({"name": "a"}, "data.sources.1.name"),  # two sources named a
    ({"name": "rng"}, "data.sources.1.name"),
    ({"name": "b c"}, "data.sources.1.name"),
    ({"kind": "audio"}, "data.sources.1.kind"),
    ({"weight": 0}, "data.sources.1.weight"),
    ({"shards": []}, "data.sources.1.shards"),
    ({"shards": [{"path": "/x", "weight": -1}]}, "data.sources.1.shards.0.weight"),
    ({"shards": [{"path": "/x"}, {"path": "/x"}]}, "data.sources.1.shards.1.path"),
    ({"shards": [{"where": "/x"}]}, "data.sources.1.shards.0"),
    ({"frames": 5}, "data.sources.1.frames"),  # not a multiple of the tubelet's 2
    ({"kind": "image", "frames": 4}, "data.sources.1.frames"),
    ({"mask_ratio": 1.0}, "data.sources.1.mask_ratio"),
    ({"shards": "s3://bucket/images"}, "data.sources"),  # one remote read by two sources
])
def test_a_bad_source_is_refused_in_one_line_naming_its_key(change, key):
    sources = [dict(s) for s in THREE["sources"]]
    sources[1].update(change)
    with pytest.raises(ConfigError) as err:
        load_run_config(DEMO, {"data": {"sources": sources}}, overrides=["model.video.frames=8"])
    assert str(err.value).startswith(f"{key}:") and "\n" not in str(err.value), err.value


def test_a_shard_error_names_the_key_the_config_gave(tmp_path):
    from longvivit.train.config import check_data

    cfg = load_run_config(DEMO, overrides=["data.train=/nonexistent"])
    with pytest.raises(ConfigError, match=r"^data.train: no MDS shards at '/nonexistent'"):
        check_data(cfg)
    with pytest.raises(ConfigError, match=r"^data.sources.0.shards.0.path: no MDS shards at '/d/a1'"):
        check_data(three())


def test_the_stored_run_config_is_the_new_form_and_loads_back_the_same(tmp_path):
    from longvivit.train.trainer import resolved_yaml

    for cfg in (three(), load_run_config(CONFIGS / "demo_short.yaml", overrides=["data.train=/v"])):
        text = resolved_yaml(cfg)
        assert "sources:" in text and "proportion: null" in text
        (tmp_path / "run_config.yaml").write_text(text)
        assert load_run_config(tmp_path / "run_config.yaml") == cfg


def test_the_local_form_keeps_each_source_on_the_local_shards_of_its_kind(tmp_path):
    cfg = three("local=true", f"local_dir={tmp_path}")
    data = tmp_path / "data"
    got = [(s.name, s.kind, s.weight, s.shards, s.batch_size, s.frames, s.mask_ratio) for s in cfg.data.sources]
    assert got == [("a", "video", 0.56, str(data / "train"), None, None, None),
                   ("b", "video", 0.24, str(data / "train"), 3, 8, None),  # frames 4 -> the local 8
                   ("images", "image", 0.2, str(data / "images"), 4, None, 0.5)]
    assert cfg.data.batch_size == 4
    cfg = load_run_config(CONFIGS / "short_B16.yaml", overrides=["local=true", f"local_dir={tmp_path}"])
    assert [(s.name, s.weight, s.shards, s.batch_size) for s in cfg.data.sources] == [
        ("video", 0.8, str(data / "train"), None), ("images", 0.2, str(data / "images"), 4)]


def test_a_checkpoint_written_before_sources_names_the_video_loader_loader():
    assert saved_part_names({"data": {"train": "/v", "images": {"proportion": 0.2}}}) == {"video": "loader"}
    assert saved_part_names({"data": {"sources": [{"name": "video"}]}}) == {}


# ---------------------------------------------------------------------------- 2-rank runs

STEPS, KILL_AFTER = 25, 13  # at step 13 every source is mid-epoch (see test_...mid_epoch)
EPOCH_STEPS = {"a": 4, "b": 2, "images": 2}  # a source's steps per epoch on each rank (below)
SAMPLES = {"a": 16, "b": 8, "images": 16}  # its samples an epoch, over both ranks


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """Shards of 8 + 8 videos (source a: two Streams at equal weights), 8 videos (source b,
    4 frames a clip) and 16 images, and a run config of the three in the new form."""
    from longvivit.data import train_tokenizer, write_benchmark, write_shards
    from longvivit.data.prepare.shards import ShardOptions

    root = tmp_path_factory.mktemp("sources")
    write_benchmark(root / "synth", videos=32, frames=16, seed=1, size=32, min_events=2, max_events=2, images=16)
    synth = root / "synth"
    rows = (synth / "train.jsonl").read_text().splitlines()
    assert len(rows) >= 24, len(rows)
    for i, name in enumerate(("a1", "a2", "b")):
        (synth / f"{name}.jsonl").write_text("\n".join(rows[8 * i: 8 * i + 8]) + "\n")
    for name in ("a1", "a2", "b", "val"):
        write_shards(synth / f"{name}.jsonl", root / name, ShardOptions(size=32), progress=False)
    write_shards(synth / "images.jsonl", root / "images", ShardOptions(size=32, still_images=True), progress=False)
    tok = train_tokenizer([synth / "train.jsonl", synth / "images.jsonl"], root / "spm")
    cfg = yaml.safe_load(DEMO.read_text())
    cfg["model"]["video"]["frames"] = 8
    cfg["data"].update(val=str(root / "val"), tokenizer=tok, batch_size=2, num_workers=0, sources=[
        {"name": "a", "kind": "video", "weight": 0.56,
         "shards": [{"path": str(root / "a1"), "weight": 1.0}, {"path": str(root / "a2"), "weight": 1.0}]},
        {"name": "b", "kind": "video", "weight": 0.24, "shards": str(root / "b"), "frames": 4},
        {"name": "images", "kind": "image", "weight": 0.2, "shards": str(root / "images"), "batch_size": 4,
         "mask_ratio": 0.5}])
    path = root / "three.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(config: Path, out: Path, log: Path) -> Launch:
    return Launch(config, f"out={out}", f"steps={STEPS}", f"checkpoint_every={KILL_AFTER}", "log_every=1",
                  "optim.warmup_steps=4", "optim.lr=5e-4", "eval_max_batches=1", "eval_gallery=0", log=log)


def step_lines(out: Path) -> list[dict]:
    from longvivit.train.metrics import read_metrics

    return [x for x in read_metrics(out) if x.get("kind") == "step"]


@pytest.fixture(scope="module")
def straight(config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    with launch(config, out, out.parent / "log") as job:
        rc = job.wait(600)
        output = job.output
    assert rc == 0, output[-4000:]
    return out


def per_source(lines: list[dict]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for x in lines:
        found.setdefault(x["source"], []).append(x)
    return found


@pytest.mark.multiproc
def test_each_source_trains_on_its_share_of_the_steps_and_sees_each_sample_once_an_epoch(straight):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lines = step_lines(straight)
    assert [x["step"] for x in lines] == list(range(1, STEPS + 1))
    shares = {"a": Fraction(56, 100), "b": Fraction(24, 100), "images": Fraction(20, 100)}
    counts = dict.fromkeys(shares, 0)
    for x in lines:  # at every step, not only at the end
        counts[x["source"]] += 1
        for name, share in shares.items():
            assert math.floor(x["step"] * share) <= counts[name] <= math.ceil(x["step"] * share), (x["step"], counts)
    assert counts == {"a": 14, "b": 6, "images": 5}
    by_source = per_source(lines)
    batch = {"a": 2, "b": 2, "images": 4}
    for name, rows in by_source.items():
        assert all(len(x["indices"]) == batch[name] and max(x["indices"]) < SAMPLES[name] for x in rows), name
        # rank 0's half of each whole epoch: every one of its samples once (rank 1 has the
        # other half: streaming partitions each epoch's samples over the ranks)
        per_epoch = EPOCH_STEPS[name]
        for first in range(0, len(rows) - per_epoch + 1, per_epoch):
            seen = [i for x in rows[first: first + per_epoch] for i in x["indices"]]
            assert len(seen) == len(set(seen)) == SAMPLES[name] // 2, (name, first, seen)
    seen_a = {i for x in by_source["a"][:EPOCH_STEPS["a"]] for i in x["indices"]}
    assert min(seen_a) < 8 <= max(seen_a)  # both of a's streams (indices 0-7 and 8-15)

    acc = EventAccumulator(str(straight / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    for name, rows in by_source.items():
        logged = {e.step: e.value for e in acc.Scalars(f"train/loss_{name}")}
        assert logged == pytest.approx({x["step"]: x["loss"] for x in rows}), name  # log_every=1


@pytest.mark.multiproc
def test_the_kill_point_is_mid_epoch_in_every_source(straight):
    counts = per_source(step_lines(straight)[:KILL_AFTER])
    assert {name: len(rows) % EPOCH_STEPS[name] for name, rows in counts.items()} == {"a": 3, "b": 1, "images": 1}


@pytest.mark.multiproc
def test_a_run_killed_after_a_mid_epoch_checkpoint_resumes_exactly(straight, config, tmp_path):
    out = tmp_path / "run"
    tag = out / "checkpoints" / f"step{KILL_AFTER:08d}"
    with launch(config, out, tmp_path / "first.log") as job:  # SIGKILLed once that checkpoint is whole
        job.wait_for(lambda: (tag / "complete").is_file(), timeout=600, what=f"checkpoint {KILL_AFTER}")
        os.killpg(job.proc.pid, signal.SIGKILL)
        job.wait(60)
    with launch(config, out, tmp_path / "second.log") as job:
        rc = job.wait(600)
        output = job.output
    assert rc == 0, output[-4000:]
    assert all(s["step"] == KILL_AFTER for s in events(output, "start")), output[-3000:]
    ref = {x["step"]: x for x in step_lines(straight)}
    lines = step_lines(out)
    assert [x["step"] for x in lines] == list(range(1, STEPS + 1))
    for x in lines:
        assert (x["source"], x["indices"]) == (ref[x["step"]]["source"], ref[x["step"]]["indices"]), x["step"]
        assert abs(x["loss"] - ref[x["step"]]["loss"]) <= 1e-6, x["step"]


# ---------------------------------------------------------------------------- a checkpoint of before

def train(tmp: Path, out: Path, *overrides: str) -> None:
    """The demo's local form on synthetic batches, images (older form) on half the steps, one process."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "longvivit.cli", "train", str(DEMO), "local=true", f"local_dir={tmp}",
           "data.source=synthetic", "data.images.train=stills", "data.images.proportion=0.5", "steps=6",
           "checkpoint_every=3", "log_every=1", "progress=false", "eval_max_batches=1", "eval_gallery=0",
           f"out={out}", *overrides]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def as_written_before_sources(tag: Path) -> None:
    """Make `tag` what the trainer wrote before data.sources: its run_config.yaml in the
    older form, its rank file's video loader part named "loader"."""
    stored = yaml.safe_load((tag / "run_config.yaml").read_text())
    video, images = stored["data"].pop("sources")
    stored["data"]["train"] = video["shards"]
    stored["data"]["images"] = {"train": images["shards"], "proportion": images["weight"],
                                "batch_size": images["batch_size"], "mask_ratio": images["mask_ratio"]}
    (tag / "run_config.yaml").write_text(yaml.safe_dump(stored))
    rank_file = tag / "rank00000.pt"
    parts = torch.load(rank_file, weights_only=False)
    assert list(parts) == ["train", "video", "images", "rng"], list(parts)
    parts = {("loader" if name == "video" else name): state for name, state in parts.items()}
    torch.save(parts, rank_file)


@pytest.mark.multiproc
def test_a_checkpoint_written_before_sources_resumes_exactly(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tmp_path, straight)
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step00000006")
    (resumed / "summary.json").unlink()
    as_written_before_sources(resumed / "checkpoints" / "step00000003")
    train(tmp_path, resumed)
    ref, lines = step_lines(straight), step_lines(resumed)
    assert [x["step"] for x in lines] == list(range(1, 7))
    assert [x["source"] for x in lines] == ["video", "images"] * 3
    assert [(x["indices"], x["loss"]) for x in lines] == [(x["indices"], x["loss"]) for x in ref]
    resume = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines() if '"resume"' in x]
    assert [x["step"] for x in resume] == [3]
