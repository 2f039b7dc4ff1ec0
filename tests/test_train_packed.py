"""Training on clips of mixed lengths packed (model.video.packing=packed, what a GPU runs by
default) gives the losses of the masked path (what the CPU runs by default): two ZeRO-3
ranks on CPU through the real deepspeed launcher, the demo config on shards of 6-16 frame
clips at 16 frames (most batches padded), with a CLS token and 75% masking, a few steps.
The same tolerance as the model's test (tests/test_model_packed.py): 1e-5 in fp32."""
import json
from pathlib import Path

import pytest

from train_support import run, step_lines

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "longvivit" / "configs" / "demo.yaml"
STEPS = 3
ATOL = 1e-5


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> list[str]:
    """Shards of 16 clips of 6-16 frames at 32 px, and a tokenizer: the data overrides."""
    from longvivit.data import train_tokenizer, write_benchmark, write_shards
    from longvivit.data.prepare.shards import ShardOptions
    from longvivit.data.prepare.video import probe

    root = tmp_path_factory.mktemp("mixed")
    write_benchmark(root / "synth", videos=16, frames=16, min_frames=6, size=32, seed=2, min_events=2,
                    max_events=3, val_fraction=0.25)
    videos = [json.loads(line)["video"] for line in (root / "synth" / "train.jsonl").read_text().splitlines()]
    lengths = [probe(str(root / "synth" / v)).num_frames for v in videos]
    assert min(lengths) < 12 and max(lengths) == 16, lengths  # mixed: batches of padded clips
    for split in ("train", "val"):
        summary = write_shards(root / "synth" / f"{split}.jsonl", root / split, ShardOptions(size=32),
                               progress=False)
        assert summary["skipped"] == 0, summary
    tok = train_tokenizer([root / "synth" / "train.jsonl"], root / "spm")
    return [f"data.train={root / 'train'}", f"data.val={root / 'val'}", f"data.tokenizer={tok}"]


def losses(out: Path, data: list[str], packing: str, log: Path) -> list[float]:
    rc, output = run(DEMO, *data, f"out={out}", f"steps={STEPS}", "log_every=1", "eval_every=0",
                     "checkpoint_every=1000", "eval_max_batches=1", "eval_gallery=0", "model.video.frames=16",
                     "model.video.cls_token=true", f"model.video.packing={packing}", "data.batch_size=4",
                     "data.num_workers=0", log=log)
    assert rc == 0, output[-4000:]
    lines = step_lines(out)
    assert [x["step"] for x in lines] == list(range(1, STEPS + 1))
    return [x["loss"] for x in lines]


@pytest.mark.multiproc
def test_two_ranks_packed_train_like_masked(mixed, tmp_path):
    masked = losses(tmp_path / "masked", mixed, "masked", tmp_path / "masked.log")
    packed = losses(tmp_path / "packed", mixed, "packed", tmp_path / "packed.log")
    print("masked", masked, "packed", packed)
    assert packed == pytest.approx(masked, abs=ATOL, rel=0)
