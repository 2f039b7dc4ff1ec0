"""Images beside videos (stage 1 of the recipe), given in the older form data.images on the
command line (a source named "images" beside the config's "video": longvivit/data/config.py
with_sources): image-text shards of one-frame clips, a proportion of the optimizer steps
trained on an image batch with its own batch size and mask ratio, each source's loss logged
on its own, and exact resume with both loaders' positions. Two ZeRO-3 ranks on CPU through
the real deepspeed launcher. (tests/test_train_sources.py: N sources in the new form.)"""
import math
import os
import sys
from pathlib import Path

import pytest

from longvivit.config import ConfigError
from longvivit.distributed.collectives import free_port
from longvivit.train.sources import Schedule

from train_support import communicate, step_lines, train_program

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "longvivit" / "configs" / "demo.yaml"
DEEPSPEED = Path(sys.executable).parent / "deepspeed"
# checkpoints at 14 and 28, every other step an image step; at 14 both loaders are
# mid-epoch (7 image steps of epochs of 3: 48 images over 2 ranks in batches of 8; 7 video
# steps of epochs of 4: 32 training videos over 2 ranks in batches of 4)
STEPS, EVERY = 28, 14
PROPORTION, IMAGES, IMAGE_BATCH = 0.5, 48, 8


def test_image_steps_are_the_proportion_of_any_run_of_steps():
    from longvivit.train.config import load_run_config

    cfg = load_run_config(DEMO, overrides=["data.images.train=shards/images", "data.images.proportion=0.3"])
    schedule = Schedule([s.weight for s in cfg.data.sources])
    assert [s.name for s in cfg.data.sources] == ["video", "images"]
    chosen = [s for s in range(1, 1001) if schedule.pick(s) == 1]
    assert len(chosen) == 300
    for start in (1, 17, 500):  # any window of N steps holds floor or ceil of N * p
        for n in (10, 33, 101):
            count = sum(start <= s < start + n for s in chosen)
            assert math.floor(n * 0.3) <= count <= math.ceil(n * 0.3), (start, n, count)
    assert [s.name for s in load_run_config(DEMO).data.sources] == ["video"]  # no images: none


def test_image_steps_need_image_shards(tmp_path):
    from longvivit.train.config import load_run_config

    with pytest.raises(ConfigError, match="data.images.train"):
        load_run_config(DEMO, overrides=["data.images.proportion=0.5"])
    with pytest.raises(ConfigError, match="data.images.proportion"):
        load_run_config(DEMO, overrides=["data.images.train=x", "data.images.proportion=1.0"])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from longvivit.data import train_tokenizer, write_benchmark, write_shards
    from longvivit.data.prepare.shards import ShardOptions

    root = tmp_path_factory.mktemp("imagedata")
    write_benchmark(root / "synth", videos=40, frames=16, seed=1, size=32, min_events=2, max_events=2,
                    images=IMAGES)
    for split in ("train", "val"):
        write_shards(root / "synth" / f"{split}.jsonl", root / split, ShardOptions(size=32), progress=False)
    summary = write_shards(root / "synth" / "images.jsonl", root / "images", ShardOptions(size=32, still_images=True),
                           progress=False)
    assert summary["written"] == IMAGES, summary
    tok = train_tokenizer([root / "train", root / "images"], root / "spm")
    return [f"data.train={root / 'train'}", f"data.val={root / 'val'}", f"data.tokenizer={tok}",
            f"data.images.train={root / 'images'}", f"data.images.proportion={PROPORTION}",
            f"data.images.batch_size={IMAGE_BATCH}", "data.images.mask_ratio=0.5"]


def launch(out: Path, data: list[str], fault: str = "") -> tuple[int, str]:
    port = free_port()
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    cmd = [str(DEEPSPEED), "--num_gpus", "2", "--master_port", str(port), *train_program(fault),
           str(DEMO), *data, f"out={out}", f"steps={STEPS}", "model.video.frames=16",
           "data.batch_size=4", f"checkpoint_every={EVERY}", "log_every=1", "optim.warmup_steps=4", "optim.lr=5e-4",
           "progress=false", "data.num_workers=0", "eval_max_batches=1"]
    return communicate(cmd, port, 400, env)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("images") / "run"
    rc, output = launch(out, data)
    assert rc == 0, output[-4000:]
    return out


@pytest.mark.multiproc
def test_the_proportion_of_image_steps_is_honoured_and_both_losses_fall(straight):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lines = step_lines(straight)
    assert [x["step"] for x in lines] == list(range(1, STEPS + 1))
    images = [x for x in lines if x["source"] == "images"]
    assert [x["step"] for x in images] == list(range(2, STEPS + 1, 2))  # 1/2: every other one
    assert len(images) == math.floor(STEPS * PROPORTION)
    assert all(len(x["indices"]) == IMAGE_BATCH and max(x["indices"]) < IMAGES for x in images)
    # an image epoch (3 steps) hands rank 0 24 distinct images
    first = [i for x in images[:3] for i in x["indices"]]
    assert len(set(first)) == len(first) == IMAGES // 2
    videos = [x for x in lines if x["source"] == "video"]
    assert all(len(x["indices"]) <= 4 for x in videos)
    for source, rows in (("images", images), ("video", videos)):
        losses = [x["loss"] for x in rows]
        assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.1, (source, losses)

    acc = EventAccumulator(str(straight / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    for source, rows in (("images", images), ("video", videos)):
        logged = {e.step: e.value for e in acc.Scalars(f"train/loss_{source}")}
        assert logged == pytest.approx({x["step"]: x["loss"] for x in rows}), source  # log_every=1


# ~45 s (with its straight run); by default test_train_sources resumes runs of several sources exactly
@pytest.mark.slow
@pytest.mark.multiproc
def test_resume_with_two_sources_equals_the_straight_run(straight, data, tmp_path):
    out = tmp_path / "run"
    rc, output = launch(out, data, fault=f"kill_during_save:{STEPS}")
    assert rc != 0, output[-3000:]
    rc, output = launch(out, data)  # resumes from step 14, mid-epoch in both sources
    assert rc == 0, output[-4000:]
    ref = {x["step"]: x for x in step_lines(straight)}
    lines = step_lines(out)
    assert [x["step"] for x in lines] == list(range(1, STEPS + 1)) + list(range(EVERY + 1, STEPS + 1))
    for x in lines:
        assert x["source"] == ref[x["step"]]["source"] and x["indices"] == ref[x["step"]]["indices"], x["step"]
        assert abs(x["loss"] - ref[x["step"]]["loss"]) <= 1e-6, x["step"]
