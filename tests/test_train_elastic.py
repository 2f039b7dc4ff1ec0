"""Resuming on another world size: a checkpoint of 2 ranks resumed on 1, and of 1 on 2.

The engine's state right after the load (tests/scripts/resumed_state.py: fp32 weights and
Adam moments gathered whole, Adam's step, the schedule) must equal what a resume on the
writing world size loads, tensor by tensor; the step continues; over the whole run every
sample index of the epoch is trained on exactly once; and a run killed while it converts
the checkpoint resumes on the next start. With global_batch fixed, a resume on 1 rank keeps
the 2 ranks' global batch by doubling grad_accum or the per-rank batch.
"""
import os
import shutil
from pathlib import Path

import pytest
import torch

from longvivit.data.load.reader import clean_stale_shared_memory
from longvivit.distributed.collectives import free_port
from longvivit.train.config import load_run_config
from longvivit.train.engine import warmup_cosine

from train_support import CONFIGS, DEEPSPEED, ROOT, Launch, communicate, events, step_lines

# ~3 minutes for the module on 2 cores (conversions, twelve launches, two of them shared in
# two_rank_run): `make test-all` runs them
pytestmark = [pytest.mark.multiproc, pytest.mark.slow]
B = 2  # per-rank batch


def common(tmp_path, steps):
    return ("local=true", f"local_dir={tmp_path}", "data.source=synthetic", f"data.batch_size={B}",
            f"steps={steps}", f"out={tmp_path / 'run'}", "checkpoint_every=0")


def train(tmp_path, procs, steps, name, *extra, faults=""):
    with Launch(CONFIGS / "demo.yaml", *common(tmp_path, steps), *extra, log=tmp_path / f"{name}.log",
                procs=procs, faults=faults) as job:
        rc = job.wait(400)
        return rc, job.output


def dump(tmp_path, procs, batches, name, *extra, steps=4) -> dict:
    """resumed_state.py on `procs` ranks: the state setup leaves (see that script)."""
    out = tmp_path / f"{name}.pt"
    port = free_port()
    cmd = [str(DEEPSPEED), "--num_gpus", str(procs), "--master_port", str(port), "--no_local_rank",
           str(ROOT / "tests" / "scripts" / "resumed_state.py"), str(out), str(batches),
           str(CONFIGS / "demo.yaml"), "progress=false", *common(tmp_path, steps), *extra]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    try:
        rc, text = communicate(cmd, port, 400, env, cwd=ROOT)
    finally:
        clean_stale_shared_memory()
    assert rc == 0, text[-3000:]
    return torch.load(out, weights_only=False)


def assert_same_state(got: dict, ref: dict) -> None:
    assert got["step"] == ref["step"] and got["adam_steps"] == ref["adam_steps"]
    assert got["scheduler"] == ref["scheduler"]
    assert got["params"].keys() == ref["params"].keys()
    for name, tensors in ref["params"].items():
        for key, t in tensors.items():
            assert torch.equal(got["params"][name][key], t), (name, key)
    assert got["universal_left"] == []  # the converted copy is gone once loaded


def assert_each_sample_once(indices: list[int]) -> None:
    assert sorted(indices) == list(range(len(indices))), indices  # none repeated, none skipped


def logged(run_dir, steps) -> list[int]:
    return [i for x in step_lines(run_dir) if x["step"] in steps for i in x["indices"]]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory) -> tuple[Path, list[list[int]]]:
    """A run of 2 steps on 2 ranks (per-rank batch B, grad_accum 1; the tests resume copies
    of it) and what each rank drew in them, [rank 0's, rank 1's]."""
    tmp_path = tmp_path_factory.mktemp("two_ranks")
    rc, out = train(tmp_path, 2, 2, "two")
    assert rc == 0, out[-3000:]
    # metrics.jsonl logs rank 0's: the same setup on a fresh out gives both ranks'
    fresh = dump(tmp_path, 2, 2, "fresh", "resume=never", f"out={tmp_path / 'fresh'}")["indices"]
    assert fresh[0] == logged(tmp_path / "run", {1, 2})
    return tmp_path / "run", fresh


def copy_of(two_rank_run, tmp_path) -> tuple[Path, list[list[int]]]:
    """two_rank_run's output directory copied to tmp_path/run (where common() points out=)."""
    run_dir, fresh = two_rank_run
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run", fresh


def test_two_ranks_resume_on_one_and_a_kill_during_conversion(two_rank_run, tmp_path):
    run_dir, fresh = copy_of(two_rank_run, tmp_path)
    ref = dump(tmp_path, 2, 0, "ref")  # the same world size: DeepSpeed's own per-rank load

    rc, out = train(tmp_path, 1, 4, "killed", faults="kill_during_conversion:2")
    assert rc != 0 and events(out, "rescale") and not events(out, "start")
    root = run_dir / "checkpoints"
    assert (root / ".universal-step00000002.tmp").is_dir() and not (root / "universal-step00000002").exists()

    got = dump(tmp_path, 1, 0, "got")  # converts again, from scratch
    assert_same_state(got, ref)
    # every Adam tensor (step, exp_avg, exp_avg_sq of each flat partition) checked on its
    # parameter's device after the universal load, as after DeepSpeed's own
    assert got["placed"]["tensors"] >= 3 and got["misplaced"] == [] and ref["misplaced"] == []
    rc, out = train(tmp_path, 1, 4, "one")
    assert rc == 0, out[-3000:]
    (event,) = events(out, "rescale")
    assert event["world_size"] == [2, 1] and event["global_batch"] == [2 * B, B]
    assert event["kept"] == "batch_per_rank" and "global batch follows the world size" in event["message"]
    assert [e["step"] for e in events(out, "start")] == [2]
    assert [x["step"] for x in step_lines(run_dir)] == [1, 2, 3, 4]
    assert_each_sample_once(fresh[0] + fresh[1] + logged(run_dir, {3, 4}))
    assert not list(root.glob("*universal-*"))


def test_one_rank_resumes_on_two(tmp_path):
    run_dir = tmp_path / "run"
    rc, _ = train(tmp_path, 1, 3, "one")
    assert rc == 0
    ref = dump(tmp_path, 1, 0, "ref", steps=5)
    got = dump(tmp_path, 2, 2, "got", steps=5)  # and what each of the 2 ranks draws in steps 4-5
    assert_same_state(got, ref)
    rc, out = train(tmp_path, 2, 5, "two")
    assert rc == 0, out[-3000:]
    (event,) = events(out, "rescale")
    assert event["world_size"] == [1, 2] and event["global_batch"] == [B, 2 * B]
    assert [e["step"] for e in events(out, "start")] == [3, 3]
    assert [x["step"] for x in step_lines(run_dir)] == [1, 2, 3, 4, 5]
    assert got["indices"][0] == logged(run_dir, {4, 5})  # the dump drew what the run trained on
    assert_each_sample_once(logged(run_dir, {1, 2, 3}) + got["indices"][0] + got["indices"][1])


@pytest.mark.parametrize("by, batch, accum", [("grad_accum", B, 2), ("batch_size", 2 * B, 1)])
def test_two_ranks_resume_on_one_keeping_the_global_batch(two_rank_run, tmp_path, by, batch, accum):
    """global_batch=2B on 1 rank: global_batch_by=grad_accum doubles grad_accum, batch_size
    the per-rank batch; every step trains 2B samples, each sample of the epoch once, the
    schedule follows the optimizer steps, and the stored configs say what ran."""
    run_dir, fresh = copy_of(two_rank_run, tmp_path)
    rc, out = train(tmp_path, 1, 4, "one", f"global_batch={2 * B}", f"global_batch_by={by}")
    assert rc == 0, out[-3000:]
    (event,) = events(out, "rescale")
    assert event["world_size"] == [2, 1] and event["global_batch"] == [2 * B, 2 * B]
    assert event["batch_per_rank"] == [B, batch] and event["grad_accum"] == [1, accum]
    assert event["kept"] == "global_batch"
    derived = f"grad_accum 1 -> {accum}" if by == "grad_accum" else f"the per-rank batch {B} -> {batch}"
    assert f"the global batch ({2 * B}) is kept" in event["message"] and derived in event["message"]

    lines = step_lines(run_dir)
    assert [x["step"] for x in lines] == [1, 2, 3, 4] and [e["step"] for e in events(out, "start")] == [2]
    ranks = {1: 2, 2: 2, 3: 1, 4: 1}  # metrics.jsonl holds rank 0's indices: x world size per step
    assert [len(x["indices"]) * ranks[x["step"]] for x in lines] == [2 * B] * 4
    assert_each_sample_once(fresh[0] + fresh[1] + logged(run_dir, {3, 4}))

    for stored in (run_dir / "run_config.yaml", run_dir / "checkpoints" / "step00000004" / "run_config.yaml"):
        cfg = load_run_config(stored)  # what ran, runnable as it is on 1 rank
        assert (cfg.global_batch, cfg.data.batch_size, cfg.grad_accum) == (2 * B, batch, accum), stored
    # the schedule moved once per optimizer step, not per micro-batch, and a resume that
    # raised steps= runs on the new schedule from its first step (the checkpoint's optimizer
    # state holds the 2-step run's rate): step s runs at its value after s - 1 steps
    o = cfg.optim
    for x in lines[2:]:
        assert x["lr"] == pytest.approx(o.lr * warmup_cosine(x["step"] - 1, o.warmup_steps, cfg.steps,
                                                             o.min_lr_ratio)), x["step"]
