"""Training and eval from s3:// shards on a local S3 server (moto, tests/s3_support.py), two
ZeRO-3 ranks under the real deepspeed launcher.

The shards go up with `longvivit shards --out s3://...` (the same bytes as synth_data's local
shards: tests/test_data_s3.py). A run from s3:// with data.local_cache in tmp is SIGKILLed
while writing its last checkpoint and started again: it resumes from the mid-epoch
checkpoint before it, and every step's loss and sample indices, and the end-of-run eval
(from s3:// too), equal an uninterrupted run from the local shards. `longvivit eval` of the
run gives the same metrics from s3:// as from the local copy.
"""
import json
import os
from pathlib import Path

import pytest

from longvivit.cli.eval import main as eval_main
from longvivit.cli.shards import main as shards_main
from longvivit.data.load.reader import clean_stale_shared_memory
from longvivit.distributed.collectives import free_port

from data_support import SHARD_SIZE, synth_data  # noqa: F401 (fixture)
from s3_support import s3  # noqa: F401 (fixture)
from train_support import CONFIGS, DEEPSPEED, communicate, events, step_lines, train_program

# ~3 min on 2 busy cores (three 2-rank launches): tests/test_data_s3.py keeps the s3:// write
# and read paths in the default suite
pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

# "all" holds 16 clips: an epoch is 4 steps of 2 ranks x 2. The checkpoint at step 3 is
# mid-epoch; the run is killed while saving step 6, in the second epoch.
STEPS, EVERY = 6, 3


@pytest.fixture(scope="module")
def remote(synth_data, s3):  # noqa: F811
    """{"train", "val"}: s3:// URLs of synth_data's "all" and "val" shards."""
    for split, manifest in (("train", synth_data["dir"] / "all.jsonl"), ("val", synth_data["val"])):
        code = shards_main([str(manifest), "--out", s3.url(split), "--size", str(SHARD_SIZE),
                            "--shard-size", "200kb", "--workers", "0"])
        assert code == 0
    return {"train": s3.url("train"), "val": s3.url("val")}


def launch(out: Path, train: str, val: str, tokenizer: Path, *extra: str, fault: str = "") -> tuple[int, str]:
    port = free_port()
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    cmd = [str(DEEPSPEED), "--num_gpus", "2", "--master_port", str(port), *train_program(fault),
           str(CONFIGS / "demo.yaml"), f"data.train={train}", f"data.val={val}",
           f"data.tokenizer={tokenizer}", f"out={out}", f"steps={STEPS}", f"checkpoint_every={EVERY}",
           "model.video.frames=8", "data.batch_size=2", "data.num_workers=0", "log_every=1",
           "optim.warmup_steps=2", "progress=false", *extra]
    try:
        return communicate(cmd, port, 300, env)
    finally:
        clean_stale_shared_memory()  # what a killed rank left; live segments (other jobs) stay


def test_kill_and_resume_from_s3_equals_a_straight_run_from_local_shards(synth_data, remote, tmp_path, capsys):  # noqa: F811
    tok = synth_data["tokenizer"]
    ref = tmp_path / "local"
    rc, output = launch(ref, str(synth_data["shards_all"]), str(synth_data["shards_val"]), tok)
    assert rc == 0, output[-4000:]

    out, cache = tmp_path / "s3", f"data.local_cache={tmp_path / 'cache'}"
    rc, output = launch(out, remote["train"], remote["val"], tok, cache, fault=f"kill_during_save:{STEPS}")
    assert rc != 0, output[-3000:]
    half = out / "checkpoints" / f"step{EVERY:08d}"
    assert (half / "complete").is_file() and not (out / "checkpoints" / f"step{STEPS:08d}" / "complete").exists()
    rc, output = launch(out, remote["train"], remote["val"], tok, cache)
    assert rc == 0, output[-4000:]
    starts = events(output, "start")
    assert len(starts) == 2 and all(s["resumed_from"] == str(half) and s["step"] == EVERY for s in starts), starts

    want = {x["step"]: x for x in step_lines(ref)}
    lines = step_lines(out)
    assert [x["step"] for x in lines] == [*range(1, STEPS + 1), *range(EVERY + 1, STEPS + 1)]  # killed, resumed
    assert all(x["indices"] == want[x["step"]]["indices"] for x in lines)
    worst = max(abs(x["loss"] - want[x["step"]]["loss"]) for x in lines)
    assert worst <= 1e-6, worst

    # the end-of-run eval on 2 ranks read val from s3://, the reference from the local folder
    evals = [json.loads((d / "summary.json").read_text())["eval"] for d in (out, ref)]
    assert evals[0] == pytest.approx(evals[1]) and evals[0]["pairs"] == 3, evals
    cached = tmp_path / "cache"
    assert len([p for p in cached.glob("*/shard.*")]) >= 2  # train and val shards came through the cache

    lines = {}
    for data in (remote["val"], str(synth_data["shards_val"])):
        assert eval_main([str(out), "--data", data]) == 0
        lines[data] = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    from_s3, from_disk = lines.values()
    assert [x["task"] for x in from_s3] == [x["task"] for x in from_disk] == ["zeroshot", "paragraph", "t2v_v2t"]
    assert from_s3[-1]["data"] == remote["val"]
    for a, b in zip(from_s3, from_disk):
        assert {k: v for k, v in a.items() if k != "data"} == {k: v for k, v in b.items() if k != "data"}
