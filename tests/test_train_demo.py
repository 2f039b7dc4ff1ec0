"""`longvivit demo` end to end, both stages of the recipe (slow: about 5-9 minutes on 2 cores)."""
import json
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.multiproc
def test_demo_beats_chance_tenfold(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "longvivit.cli", "demo", "--out", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["t2v_r1"] >= 10 * result["chance"], result  # stage 2, on the 64-frame clips
    assert result["short"]["t2v_r1"] >= 10 * result["short"]["chance"], result
    assert result["short"]["zeroshot_top1"] > result["short"]["zeroshot_chance"], result  # the labelled split
    for stage in ("short", "long"):
        assert (tmp_path / "demo" / stage / "tb").is_dir()
        assert any((tmp_path / "demo" / stage / "checkpoints").glob("step*/complete"))
    # stage 1 trained on images on a quarter of its steps; stage 2 started from stage 1
    rows = [json.loads(x) for x in (tmp_path / "demo" / "short" / "metrics.jsonl").read_text().splitlines()]
    sources = [r["source"] for r in rows if r.get("kind") == "step"]
    assert sources.count("images") == len(sources) // 4, sources  # the source named "images"
    assert "checkpoint:" in (tmp_path / "demo" / "long" / "run_config.yaml").read_text()


def stage(r1, mc, mc_action, ml):
    """A stage's summary line as train_stage returns it."""
    return {"t2v_r1": r1, "chance": 1.25, "v2t_r1": r1, "t2v_r5": 3 * r1, "pairs": 80, "steps": 100,
            "train_seconds": 1.0, "samples_per_s": 1.0, "checkpoints": "c", "tensorboard": "t",
            "mc_items": 160, "mc_top1": mc, "mc_top1_with_question": mc, "mc_chance_top1": 37.5,
            "mc_top1_action": mc_action, "mc_chance_top1_action": 25.0, "multilabel_map": ml,
            "multilabel_chance_map": 20.0}


@pytest.mark.parametrize("long_range", [False, True])
def test_the_long_range_demo_trains_stage_1_on_short_clips(tmp_path, monkeypatch, capsys, long_range):
    """--long-range: stage 1 (ShortViViT) trains on the default benchmark's 64-frame clips,
    as the paper trains it on short clips, and is evaluated with stage 2 on the long clips'
    held-out split; stage 2 trains on the long clips. The default demo: both on its clips."""
    from longvivit.train import demo

    paths = {}

    def train_stage(name, out, frames, procs, overrides, data):
        paths[name] = data
        return stage(5.0, 40.0, 30.0, 50.0)

    monkeypatch.setattr(demo, "train_stage", train_stage)
    monkeypatch.setattr(demo, "starting_clip", lambda out, overrides: out / "clip.pt")
    out = tmp_path / "demo"
    demo.run_demo(out, videos=6, images=0, frames=128 if long_range else 64, long_range=long_range)
    shards = out / "shards"
    assert paths["short"]["data.val"] == paths["long"]["data.val"] == shards / "val"
    assert paths["long"]["data.train"] == shards / "train"
    assert paths["short"]["init"] == f"open_clip:{out / 'clip.pt'}"
    assert paths["long"]["init"] == f"checkpoint:{out / 'short'}"
    title = capsys.readouterr().out
    if not long_range:
        assert paths["short"]["data.train"] == shards / "train" and not (out / "synth_short").exists()
        assert "stage 1, 16 frames + images" in title
        return
    assert paths["short"]["data.train"] == shards / "short_clips"
    assert "stage 1, 16 frames of 64-frame short clips + images" in title
    short = json.loads((out / "synth_short" / "benchmark.json").read_text())
    assert (short["long_range"], short["frames"], short["seed"]) == (False, 64, 0)
    assert json.loads((out / "synth" / "benchmark.json").read_text())["long_range"] is True
    rows = [json.loads(x) for x in (out / "synth_short" / "train.jsonl").read_text().splitlines()]
    index = json.loads((shards / "short_clips" / "index.json").read_text())
    assert sum(shard["samples"] for shard in index["shards"]) == len(rows) > 0


def test_the_result_line_compares_stage_2_with_stage_1(capsys):
    """The last line holds stage 2's numbers, stage 1's under "short", and stage 2 over
    stage 1 for each accuracy both report; the text says both next to chance."""
    from longvivit.train.demo import print_result

    line = print_result({"short": stage(5.0, 40.0, 30.0, 50.0), "long": stage(10.0, 60.0, 0.0, 40.0)}, 12.0, 128)
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == line
    assert line["t2v_r1"] == 10.0 and line["short"]["t2v_r1"] == 5.0
    assert (line["t2v_r1_ratio"], line["mc_top1_ratio"], line["mc_top1_action_ratio"],
            line["multilabel_map_ratio"]) == (2.0, 1.5, 0.0, 0.8)
    assert "held-out text->video R@1 10.0% vs 5.0% (2.00x; chance 1.25%)" in out
    assert "multiple choice 60.0% vs 40.0% (1.50x; chance 37.5%)" in out
    assert "      action: 0.0% vs 30.0% (chance 25.0%)" in out
    assert "stage 2, 128 frames at 75% masking" in out

    tuned = print_result({"short": stage(5.0, 40.0, 30.0, 50.0), "long": stage(10.0, 60.0, 0.0, 40.0),
                          "tune": stage(12.0, 30.0, 0.0, 40.0)}, 12.0, 128)
    out = capsys.readouterr().out
    assert tuned["tune"]["t2v_r1"] == 12.0 and (tuned["tune"]["t2v_r1_ratio"], tuned["tune"]["mc_top1_ratio"]) == (1.2, 0.5)
    assert {k: v for k, v in tuned.items() if k != "tune"} == line
    assert "stage 3, 128 frames unmasked" in out and "R@1 12.0% vs 10.0% (1.20x)" in out


def test_the_unmasked_tuning_stage_is_stage_2_without_masking_at_a_lower_rate():
    """demo_tune.yaml (ViCLIP's closing step) continues demo_long.yaml: the same model and
    trainable blocks (its checkpoint loads strictly), no masking, a tenth of the rate, fewer
    steps, from stage 2's output."""
    import dataclasses

    from longvivit.train.config import CONFIG_DIR, load_run_config

    long, tune = load_run_config(CONFIG_DIR / "demo_long.yaml"), load_run_config(CONFIG_DIR / "demo_tune.yaml")
    assert long.model.video.mask_ratio == 0.75 and tune.model.video.mask_ratio == 0.0
    assert dataclasses.replace(tune.model.video, mask_ratio=0.75) == long.model.video
    assert tune.model.text == long.model.text and tune.data == long.data
    assert tune.init == f"checkpoint:{long.out}" and tune.optim.lr == long.optim.lr / 10
    assert tune.steps < long.steps


@pytest.mark.parametrize("argv, message", [
    (["--objects", "4"], "--objects applies to --long-range only"),
    (["--long-range", "--objects", "2"], "objects: 2: need 0 (all) or max_events=4..24"),
    (["--videos", "1"], "videos: 1 must be >= 2"),
    (["--videos", "x"], "longvivit demo: argument --videos: invalid int value: 'x'"),  # argparse's, one line too
])
def test_bad_demo_arguments_exit_2_in_one_line_before_writing(tmp_path, capfd, argv, message):
    from longvivit.cli.demo import main
    from train_support import run_in_process

    status, _, err = run_in_process(main, ["--out", str(tmp_path / "demo"), *argv], capfd)
    assert status == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "demo").exists()
