"""LONGVIVIT_FAULT=NAME:STEPS[:RANK]: a fault point fires at its step (or steps FIRST-LAST), on
every rank or on the one named, and nowhere else."""
import signal

from longvivit.distributed import faults


def test_a_point_is_armed_at_its_step_on_every_rank_or_the_named_one(monkeypatch):
    monkeypatch.setenv("LONGVIVIT_FAULT", "stop_in_step:3")
    assert faults.armed("stop_in_step", 3, 0) and faults.armed("stop_in_step", 3, 1)
    assert not faults.armed("stop_in_step", 4, 0) and not faults.armed("kill_during_save", 3, 0)
    monkeypatch.setenv("LONGVIVIT_FAULT", "hold_for_signal:3:1")
    assert faults.armed("hold_for_signal", 3, 1) and not faults.armed("hold_for_signal", 3, 0)
    monkeypatch.setenv("LONGVIVIT_FAULT", "nan_loss:3-4:1")  # a range of steps
    assert [s for s in range(1, 7) if faults.armed("nan_loss", s, 1)] == [3, 4]
    assert not faults.armed("nan_loss", 3, 0)
    monkeypatch.delenv("LONGVIVIT_FAULT")
    assert not faults.armed("stop_in_step", 3, 0)


def test_fault_point_signals_and_hold_point_waits_for_release(monkeypatch):
    got = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: got.append(signum))
    try:
        monkeypatch.setenv("LONGVIVIT_FAULT", "stop_in_step:2")
        faults.fault_point("stop_in_step", 1, 0, signal.SIGUSR2)
        faults.fault_point("stop_in_step", 2, 0, signal.SIGUSR2)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert got == [signal.SIGUSR2]
    monkeypatch.setenv("LONGVIVIT_FAULT", "hold_for_signal:2:0")
    polls = []
    faults.hold_point("hold_for_signal", 2, 0, lambda: polls.append(1) or len(polls) >= 3)
    assert len(polls) == 3


def test_several_points_are_armed_at_once_and_raise_point_raises(monkeypatch):
    monkeypatch.setenv("LONGVIVIT_FAULT", "raise_in_step:2:1,stall_step:2:0")
    assert faults.armed("raise_in_step", 2, 1) and faults.armed("stall_step", 2, 0)
    assert not faults.armed("raise_in_step", 2, 0) and not faults.armed("stall_step", 2, 1)
    faults.raise_point("raise_in_step", 2, 0)  # not armed on rank 0: nothing
    try:
        faults.raise_point("raise_in_step", 2, 1)
    except faults.InjectedFault as err:
        assert str(err) == "fault point raise_in_step at step 2 on rank 1"
    else:
        raise AssertionError("raise_point did not raise")
