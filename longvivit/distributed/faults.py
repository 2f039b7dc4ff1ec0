"""Fault injection for the tests: LONGVIVIT_FAULT=NAME:STEPS[:RANK] arms the point NAME at
STEPS (one step N, or the steps FIRST-LAST), on every rank that reaches it, or on rank RANK
only; several, separated by commas, arm each of them.

    kill_during_save  (checkpoint.save, rank 0): SIGKILL after rank 0's shard files and the
                      run config of STEP are written, before the tag is complete
    stop_in_step      (run.loop): SIGTERM at the end of step STEP, as from a preemption
    hold_for_signal   (run.loop): wait after step STEP is logged, saved and evaluated, just
                      before the stop agreement, until a stop signal arrives, so that a test
                      can signal a run at a known step however fast its steps are
    kill_during_conversion  (checkpoint, rank 0): SIGKILL while a checkpoint of another
                      world size is being converted to a universal one, before the rename
    kill_during_eval  (run.run_eval): SIGKILL once the eval at step STEP has embedded its
                      split, before its line in metrics.jsonl (and, at the final step, before
                      summary.json) is written
    raise_in_step     (run.loop): a RuntimeError at the start of step STEP, as from a bug or
                      a failed kernel on that rank
    nan_loss          (run.train_step): every micro-batch loss of the step is NaN in value
                      (NaN added: its gradients stay finite, so only the trainer's own check
                      of the loss can keep the step from being applied)
    stall_PHASE       (watchdog.begin / watchdog.phase): on entering phase PHASE (setup,
                      step, data, checkpoint, eval) of step STEP (setup: 0), the rank stops
                      there for an hour, as one stuck in that phase would: its watchdog must
                      end the job (tests/test_train_watchdog.py)
"""
from __future__ import annotations

import os
import signal
import time
from typing import Callable


def armed(name: str, step: int, rank: int) -> bool:
    return any(_armed(spec, name, step, rank) for spec in os.environ.get("LONGVIVIT_FAULT", "").split(","))


def _armed(spec: str, name: str, step: int, rank: int) -> bool:
    fault, _, where = spec.partition(":")
    steps, _, only_rank = where.partition(":")
    first, _, last = steps.partition("-")
    if fault != name or not first.isdigit() or not (last or first).isdigit():
        return False
    return int(first) <= step <= int(last or first) and only_rank in ("", str(rank))


class InjectedFault(RuntimeError):
    pass


def raise_point(name: str, step: int, rank: int) -> None:
    """Raise InjectedFault if the point is armed."""
    if armed(name, step, rank):
        raise InjectedFault(f"fault point {name} at step {step} on rank {rank}")


def fault_point(name: str, step: int, rank: int, sig: int = signal.SIGKILL) -> None:
    """Send this process `sig` if the point is armed."""
    if armed(name, step, rank):
        os.kill(os.getpid(), sig)


def nan_point(name: str, step: int, rank: int, value):
    """`value` + NaN if the point is armed (a tensor's gradient passes through unchanged)."""
    return value + float("nan") if armed(name, step, rank) else value


def hold_point(name: str, step: int, rank: int, released: Callable[[], bool], timeout: float = 600.0) -> None:
    """If the point is armed, wait until `released()` (or `timeout` seconds)."""
    if armed(name, step, rank):
        deadline = time.monotonic() + timeout
        while not released() and time.monotonic() < deadline:
            time.sleep(0.05)
