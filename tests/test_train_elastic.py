"""Resuming on another world size: a checkpoint of 2 ranks resumed on 1, and of 1 on 2.

The engine's state right after the load (tests/scripts/resumed_state.py: fp32 weights and
Adam moments gathered whole, Adam's step, the schedule) must equal what a resume on the
writing world size loads, tensor by tensor; the step continues; over the whole run every
sample index of the epoch is trained on exactly once; and a run killed while it converts
the checkpoint resumes on the next start.
"""
import os

import pytest
import torch

from longvivit.data.reader import clean_stale_shared_memory
from longvivit.train.dist import free_port
from train_support import CONFIGS, DEEPSPEED, ROOT, Launch, communicate, events, step_lines

# ~4 minutes each on 2 cores (conversion, three launches): `make test-all` runs them
pytestmark = [pytest.mark.multiproc, pytest.mark.slow]
B = 2  # per-rank batch


def common(tmp_path, steps):
    return ("local=true", f"local_dir={tmp_path}", "data.source=synthetic", f"data.batch_size={B}",
            f"steps={steps}", f"out={tmp_path / 'run'}", "checkpoint_every=0")


def train(tmp_path, procs, steps, name, env=None):
    with Launch(CONFIGS / "demo.yaml", *common(tmp_path, steps), log=tmp_path / f"{name}.log",
                procs=procs, env=env) as job:
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


def test_two_ranks_resume_on_one_and_a_kill_during_conversion(tmp_path):
    run_dir = tmp_path / "run"
    rc, _ = train(tmp_path, 2, 2, "two")
    assert rc == 0
    # what the 2 ranks drew in steps 1-2 (metrics.jsonl logs rank 0's): the same setup on a fresh out
    fresh = dump(tmp_path, 2, 2, "fresh", "resume=never", f"out={tmp_path / 'fresh'}")["indices"]
    assert fresh[0] == logged(run_dir, {1, 2})
    ref = dump(tmp_path, 2, 0, "ref")  # the same world size: DeepSpeed's own per-rank load

    rc, out = train(tmp_path, 1, 4, "killed", env={"LONGVIVIT_FAULT": "kill_during_conversion:2"})
    assert rc != 0 and events(out, "rescale") and not events(out, "start")
    root = run_dir / "checkpoints"
    assert (root / ".universal-step00000002.tmp").is_dir() and not (root / "universal-step00000002").exists()

    got = dump(tmp_path, 1, 0, "got")  # converts again, from scratch
    assert_same_state(got, ref)
    rc, out = train(tmp_path, 1, 4, "one")
    assert rc == 0, out[-3000:]
    (event,) = events(out, "rescale")
    assert event["world_size"] == [2, 1] and event["global_batch"] == [2 * B, B]
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
