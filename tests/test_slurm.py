"""slurm/train.sbatch against real SLURM daemons on localhost: a 2-rank ZeRO-3 job,
preemption -> checkpoint -> requeue -> resume, a killed rank, and two hosts (network
namespaces) training like one."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from data_support import synth_data  # noqa: F401  (session fixture)
from slurm_support import (ROOT, TRAIN_SBATCH, cluster, dev_shm, events,  # noqa: F401
                           read_jsonl, remove_new_shm)

pytestmark = [pytest.mark.multiproc, pytest.mark.timeout(900)]

CPU_JOB = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1"]


def overrides(data: dict, out: Path, steps: int, checkpoint_every: int) -> list[str]:
    """The demo config shrunk to seconds per step: 16 frames at 32 px, batch 2 per rank."""
    return [str(ROOT / "train" / "configs" / "demo.yaml"),
            f"data.train={data['shards_train']}", f"data.val={data['shards_val']}",
            f"data.tokenizer={data['tokenizer']}", "model.video.frames=16", "data.batch_size=2",
            f"steps={steps}", f"checkpoint_every={checkpoint_every}", "eval_every=0",
            "eval_max_batches=1", "log_every=1", "progress=false", "optim.warmup_steps=2",
            f"out={out}"]


def submit(cluster, tmp: Path, args: list[str]) -> tuple[int, Path]:  # noqa: F811
    logs = tmp / "logs"
    job = cluster.sbatch(*CPU_JOB, f"--output={tmp}/slurm-%j.out", "--time=20",
                         str(TRAIN_SBATCH), *args,
                         env={"LONGVIVIT_LOGS": str(logs), "DS_ACCELERATOR": "cpu",
                              "LONGVIVIT_DIST_TIMEOUT": "60"})
    return job, logs / str(job)


def batch_log(tmp: Path, job: int) -> str:
    path = tmp / f"slurm-{job}.out"
    return path.read_text(errors="replace") if path.exists() else ""


def step_rows(out: Path) -> list[int]:
    return [r["step"] for r in read_jsonl(out / "metrics.jsonl") if r.get("kind") == "step"]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


@pytest.fixture
def shm_clean():
    before = dev_shm()
    yield
    remove_new_shm(before)


def test_sbatch_trains_two_ranks_as_one_zero3_group(cluster, synth_data, tmp_path, shm_clean):  # noqa: F811
    out = tmp_path / "run"
    job, logs = submit(cluster, tmp_path, overrides(synth_data, out, steps=4, checkpoint_every=2))
    state = cluster.wait_state(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 600)
    assert state == "COMPLETED", batch_log(tmp_path, job)

    starts = [events(logs / f"rank-{r}.log", "start")[0] for r in (0, 1)]
    assert [s["rank"] for s in starts] == [0, 1]
    assert all(s["world_size"] == 2 for s in starts)
    total = starts[0]["params_total"]
    for s in starts:  # ZeRO-3: each rank holds about half of every parameter
        assert abs(s["params_local"] - total / 2) <= 0.01 * total, s
    assert step_rows(out) == [1, 2, 3, 4]
    assert list((out / "tb").rglob("events.out.tfevents.*")), "no TensorBoard event file"
    assert (out / "summary.json").exists()
    assert any(p.name.startswith("step") for p in (out / "checkpoints").iterdir())


def test_preemption_checkpoints_requeues_and_resumes(cluster, synth_data, tmp_path, shm_clean):  # noqa: F811
    out = tmp_path / "run"
    steps = 30
    job, logs = submit(cluster, tmp_path, overrides(synth_data, out, steps, checkpoint_every=1000))
    wait_for(lambda: len(step_rows(out)) >= 3, 300, "3 training steps")
    cluster.run("scancel", "--signal=USR1", "--batch", str(job))

    # The job writes its checkpoint, requeues itself and waits out SLURM's requeue delay
    # (a requeued job is eligible again only after ~2 minutes); release it now.
    wait_for(lambda: cluster.job(job).get("Restarts") == "1", 300, "the job to requeue")
    if cluster.state(job) == "PENDING":
        cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    state = cluster.wait_state(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 600)
    text = batch_log(tmp_path, job)
    assert state == "COMPLETED", text
    assert "stop signal received" in text and "requeueing job" in text

    starts = events(logs / "rank-0.log", "start")  # appended across the restart
    assert len(starts) == 2 and starts[0]["step"] == 0
    stopped_at = starts[1]["step"]
    assert 3 <= stopped_at < steps
    assert Path(starts[1]["resumed_from"]).name == f"step{stopped_at:08d}"
    assert f"step {stopped_at} " in text  # the stop note names the checkpointed step
    # every step exactly once: none lost, none run twice past the checkpoint
    assert step_rows(out) == list(range(1, steps + 1))


def rank_pid(job: int, rank: int) -> int | None:
    """The pid of `longvivit train` rank `rank` of SLURM job `job` (from /proc environ)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if (f"SLURM_JOB_ID={job}".encode() in env and f"SLURM_PROCID={rank}".encode() in env
                and b"longvivit" in cmd and b"train" in cmd):
            return int(pid)
    return None


def test_killed_rank_ends_the_job_and_resubmission_resumes(cluster, synth_data, tmp_path,  # noqa: F811
                                                           shm_clean):
    out = tmp_path / "run"
    job, logs = submit(cluster, tmp_path, overrides(synth_data, out, steps=500, checkpoint_every=2))
    wait_for(lambda: len(step_rows(out)) >= 5, 300, "5 training steps")
    pid = rank_pid(job, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    t_kill = time.time()
    state = cluster.wait_state(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}, 120)
    assert time.time() - t_kill < 120
    assert state == "FAILED"
    text = batch_log(tmp_path, job)
    assert "a rank failed" in text and "task 1" in text, text

    complete = sorted(p.name for p in (out / "checkpoints").iterdir() if (p / "complete").exists())
    assert complete, "no complete checkpoint before the kill"
    job2, logs2 = submit(cluster, tmp_path, overrides(synth_data, out, steps=int(complete[-1][4:]) + 2,
                                                      checkpoint_every=2))
    state = cluster.wait_state(job2, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 600)
    assert state == "COMPLETED", batch_log(tmp_path, job2)
    start = events(logs2 / "rank-0.log", "start")[0]
    assert Path(start["resumed_from"]).name == complete[-1]
