"""SIGTERM outside SLURM: one rank of a 2-rank deepspeed-launcher run is signalled; every
rank stops after the same step, a complete checkpoint of that step is written, the job
exits 75 (EX_TEMPFAIL: checkpointed, run me again), and running the same command again
continues from there: no step lost, none run twice. (tests/test_slurm.py does the same
through SLURM's USR1 -> requeue.)"""
import os
import signal

import pytest

from train_support import CONFIGS, Launch, events, step_lines

pytestmark = pytest.mark.multiproc

STEPS = 40


def command(tmp_path):
    return (CONFIGS / "demo.yaml", "local=true", f"local_dir={tmp_path}", "data.source=synthetic",
            f"steps={STEPS}", "checkpoint_every=0", "log_every=1")


def test_sigterm_to_one_rank_stops_all_after_the_same_step_with_a_checkpoint(tmp_path):
    """Rank 1 is held at the end of step 3 until it is signalled (the fault
    hold_for_signal, tests/hooks_support.py), so the signal lands in a known step however fast the steps run or
    however slowly this test polls."""
    out = tmp_path / "train"  # demo's out (runs/demo/train) in local form
    step = 3
    with Launch(*command(tmp_path), log=tmp_path / "first.log",
                faults=f"hold_for_signal:{step}:1") as job:
        job.wait_for(lambda: len(job.events("start")) == 2 and len(step_lines(out)) >= step, what=f"step {step}")
        rank1 = next(s for s in job.events("start") if s["rank"] == 1)
        os.kill(rank1["pid"], signal.SIGTERM)
        rc = job.wait(300)
        stops = job.events("stop")
        output = job.output
    assert rc == 75, output[-4000:]
    # rank 1 got the signal, rank 0 stopped because the ranks agreed to, both after step 3
    assert {s["rank"]: s["signal"] for s in stops} == {0: None, 1: signal.SIGTERM}, stops
    assert all(s["step"] == step for s in stops), stops
    tag = out / "checkpoints" / f"step{step:08d}"
    assert (tag / "complete").is_file() and (out / "checkpoints" / "latest").read_text() == tag.name
    assert [x["step"] for x in step_lines(out)] == list(range(1, step + 1))
    assert not (out / "summary.json").exists()

    with Launch(*command(tmp_path), log=tmp_path / "second.log") as job:
        rc = job.wait(300)
        starts, output = job.events("start"), job.output
    assert rc == 0, output[-4000:]
    assert all(s["step"] == step and s["resumed_from"] == str(tag) for s in starts), starts
    assert [x["step"] for x in step_lines(out)] == list(range(1, STEPS + 1))  # none lost, none twice


def test_a_stop_in_the_final_step_lets_the_run_finish(tmp_path):
    """SIGTERM to every rank in the last step (the fault stop_in_step): the run is
    complete, so it finishes as usual (final checkpoint, eval, summary, exit 0) instead of
    exiting 75 for a requeue that would have nothing left to do."""
    out = tmp_path / "train"
    steps = 3
    with Launch(*command(tmp_path)[:4], f"steps={steps}", "checkpoint_every=0", log=tmp_path / "log",
                faults=f"stop_in_step:{steps}") as job:
        rc = job.wait(300)
        output = job.output
    assert rc == 0, output[-4000:]
    assert not events(output, "stop") and len(events(output, "done")) == 1, output[-3000:]
    assert (out / "checkpoints" / f"step{steps:08d}" / "complete").is_file() and (out / "summary.json").is_file()
