"""No silent hangs: a rank that stops making progress ends the job within its phase's limit
(the run config's timeouts.PHASE_s), naming the rank, the phase and the step (exit 4).

Units: the watchdog thread calls its on_hang callback for a phase that outlives its limit
and not for phases that end in time; its clock logic (nested phases, progress, the
collective a rank waits in) on a fake clock; the timeouts' validation.

Runs: the demo's local form on 2 ranks through the deepspeed launcher, one rank stalled by
a fault (stall_PHASE, tests/hooks_support.py) the test injects on rank 1 only:
- in data loading: rank 1's watchdog ends the job, naming rank 1 and phase data; rank 0,
  blocked in the step's collectives behind it, ends with it; the launcher exits non-zero.
- in a checkpoint write: rank 1 is named in phase checkpoint; rank 0, stuck since the same
  moment, may report too and then says it was waiting for the others in a barrier; the
  stalled checkpoint is not complete.
- an exception on rank 1 while rank 0 is stuck elsewhere: rank 1 leaves at once (no
  barrier on its way out, which under NCCL would hold it for timeouts.collective_s), so the
  launcher ends rank 0 before its own watchdog has to.
"""
import threading
from pathlib import Path

import pytest

from longvivit.config import ConfigError
from longvivit.distributed.watchdog import EXIT_HANG, REPORT_GRACE_S, Hang, Watchdog

from train_support import CONFIGS, Launch, events, step_lines

LIMIT = 10.0  # seconds: the stalled phase's limit in the runs (its normal use takes well under 1 s)


# ---------------------------------------------------------------------------- units

def test_a_phase_past_its_limit_calls_on_hang_with_rank_phase_and_step():
    fired, hangs = threading.Event(), []
    watch = Watchdog({"step": 60.0, "data": 0.2}, rank=3, on_hang=lambda h: (hangs.append(h), fired.set()))
    watch.start()
    try:
        watch.begin("step", 7)
        with watch.phase("data"):
            assert fired.wait(60), "the watchdog did not fire"
    finally:
        watch.stop()
    [hang] = hangs
    assert (hang.rank, hang.phase, hang.step, hang.limit, hang.waiting) == (3, "data", 7, 0.2, None)
    assert hang.seconds >= 0.2


def test_phases_that_end_in_time_or_have_no_limit_do_not_fire():
    hangs = []
    watch = Watchdog({"step": 60.0, "data": 60.0, "eval": 0.0}, rank=0, on_hang=hangs.append).start()
    for step in range(1, 200):
        watch.begin("step", step)
        with watch.phase("data"):
            pass
    with watch.phase("eval"):  # no limit: however long it takes
        threading.Event().wait(0.5)
    watch.stop()
    assert hangs == [] and not watch._thread.is_alive()


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_innermost_phase_is_watched_and_leaving_it_restarts_the_one_around_it():
    clock = FakeClock()
    watch = Watchdog({"step": 10.0, "data": 5.0, "checkpoint": 3.0, "eval": 0.0}, rank=1,
                     on_hang=lambda h: None, clock=clock)  # not started: overdue() is asked directly
    assert watch.overdue(1e9) is None  # no phase yet
    watch.begin("step", 4)
    assert watch.overdue(9.9) is None
    assert watch.overdue(10.0) == Hang(1, "step", 4, 10.0, 10.0, None)
    clock.now = 8.0
    with watch.phase("data"):  # the step's clock does not run while it waits for data
        assert watch.overdue(12.9) is None  # past the step's deadline (10), but waiting for data
        clock.now = 20.0
        assert watch.overdue(20.0) == Hang(1, "data", 4, 12.0, 5.0, None)
    assert watch.overdue(29.9) is None  # a batch came: progress, the step's clock starts again at 20
    assert watch.overdue(30.0).phase == "step"
    with watch.phase("checkpoint", step=9):
        with watch.waiting("barrier"):  # waiting for peers: the one they wait for reports first
            assert watch.overdue(23.0 + REPORT_GRACE_S - 0.1) is None
            assert watch.overdue(23.0 + REPORT_GRACE_S) == Hang(1, "checkpoint", 9, 3.0 + REPORT_GRACE_S, 3.0,
                                                               "barrier")
        assert watch.overdue(23.0) == Hang(1, "checkpoint", 9, 3.0, 3.0, None)
        with watch.phase("eval"):  # limit 0: never overdue
            assert watch.overdue(1e9) is None
    watch.begin("step", 5)  # the next step replaces this one
    assert watch.overdue(30.0) == Hang(1, "step", 5, 10.0, 10.0, None)


def test_timeouts_are_validated_and_name_the_key():
    from longvivit.train.config import load_run_config

    cfg = load_run_config(CONFIGS / "demo.yaml", overrides=["timeouts.data_s=20", "timeouts.eval_s=0"])
    assert cfg.timeouts.limits() == {"setup": 3600.0, "data": 20.0, "step": 1800.0, "checkpoint": 3600.0,
                                     "eval": 0.0}
    with pytest.raises(ConfigError, match=r"^timeouts\.step_s: -1\.0 must be >= 0 \(0: no limit\)$"):
        load_run_config(CONFIGS / "demo.yaml", overrides=["timeouts.step_s=-1"])
    with pytest.raises(ConfigError, match=r"^timeouts\.collective_s: 0\.0 must be > 0$"):
        load_run_config(CONFIGS / "demo.yaml", overrides=["timeouts.collective_s=0"])


def test_eval_takes_the_collective_timeout_as_an_option(capsys):
    from longvivit.cli.eval import parse_args

    assert parse_args(["run", "--collective-timeout", "90"]).collective_timeout == 90.0
    with pytest.raises(SystemExit) as err:
        parse_args(["run", "--collective-timeout", "0"])
    assert err.value.code == 2 and "--collective-timeout 0 must be > 0" in capsys.readouterr().err


# ---------------------------------------------------------------------------- runs

def stalled_run(tmp_path: Path, fault: str, *overrides: str) -> tuple[int, str, list[str]]:
    """The demo's local form on 2 ranks with `fault` armed: the launcher's exit status, the
    output, and the job's DeepSpeed buffers left in /dev/shm when the launcher is done."""
    args = (CONFIGS / "demo.yaml", "local=true", f"local_dir={tmp_path}", "data.source=synthetic", "steps=4",
            "log_every=1", *overrides)
    with Launch(*args, log=tmp_path / "log", faults=fault) as job:
        rc = job.wait(400)  # a safety limit for the test, not a claim about speed
        left = [p.name for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{job.port}_*")]
        return rc, job.output, left


def hang_lines(output: str, rank: int) -> list[str]:
    return [x for x in output.splitlines() if x.startswith(f"longvivit train: rank {rank} made no progress")]


@pytest.mark.multiproc
def test_a_rank_stalled_in_data_loading_ends_the_job_naming_rank_and_phase(tmp_path):
    rc, output, left = stalled_run(tmp_path, "stall_data:2:1", f"timeouts.data_s={LIMIT:g}")
    assert rc != 0, output[-4000:]
    [hang] = events(output, "hang")  # rank 0 waits in the step's collectives, whose limit is 1800 s
    assert (hang["rank"], hang["phase"], hang["step"], hang["waiting"]) == (1, "data", 2, None)
    assert hang["exit"] == EXIT_HANG == 4
    assert hang["limit"] == LIMIT and hang["seconds"] >= LIMIT
    [line] = hang_lines(output, 1)
    assert f"in phase data at step 2 (timeouts.data_s={LIMIT:g}): ending the job (exit 4)" in line, line
    assert "in hold_point" in output  # the stalled main thread in the stack dump
    assert [x["step"] for x in step_lines(tmp_path / "train")] == [1]
    assert not [name for name in left if name.endswith("_1")], left  # the watchdog removed rank 1's buffer


@pytest.mark.slow  # ~50 s; the stall in data loading checks the same watchdog by default
@pytest.mark.multiproc
def test_a_rank_stalled_writing_a_checkpoint_ends_the_job_naming_rank_and_phase(tmp_path):
    rc, output, _ = stalled_run(tmp_path, "stall_checkpoint:1:1", "checkpoint_every=1",
                                f"timeouts.checkpoint_s={LIMIT:g}")
    assert rc != 0, output[-4000:]
    hangs = {h["rank"]: h for h in events(output, "hang")}
    assert (hangs[1]["phase"], hangs[1]["step"], hangs[1]["waiting"]) == ("checkpoint", 1, None), hangs
    assert hangs[1]["seconds"] >= LIMIT and len(hang_lines(output, 1)) == 1
    if 0 in hangs:  # rank 0 entered the phase at the same time and may report too, in the barrier
        assert (hangs[0]["phase"], hangs[0]["step"], hangs[0]["waiting"]) == ("checkpoint", 1, "barrier"), hangs
        assert "waiting for the other ranks in barrier" in hang_lines(output, 0)[0]
    assert [x["step"] for x in step_lines(tmp_path / "train")] == [1]
    assert not list((tmp_path / "train").rglob("complete"))  # the stalled checkpoint never became one


@pytest.mark.multiproc
def test_an_exception_on_one_rank_ends_both_before_any_watchdog_or_collective_timeout(tmp_path):
    """Rank 1 raises at the start of step 2 while rank 0 is stuck entering it (for an hour).
    The job ends with rank 1's error, before rank 0's watchdog (timeouts.step_s) reports:
    rank 1 waited for no one on its way out. Before, its exit path began with a barrier,
    which waited until rank 0's watchdog ended rank 0 (and under NCCL, whose barrier does not
    notice a dead peer, for timeouts.collective_s)."""
    rc, output, _ = stalled_run(tmp_path, "raise_in_step:2:1,stall_step:2:0", "timeouts.step_s=300",
                                "timeouts.collective_s=1200")
    assert rc != 0, output[-4000:]
    assert "InjectedFault: fault point raise_in_step at step 2 on rank 1" in output, output[-4000:]
    assert events(output, "hang") == [], output[-4000:]  # the launcher ended rank 0 first
    assert [x["step"] for x in step_lines(tmp_path / "train")] == [1]
