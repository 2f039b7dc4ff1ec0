"""Fault injection for the tests: LONGVIVIT_FAULT=NAME:STEP[:RANK] arms the point NAME at
step STEP, on every rank that reaches it, or on rank RANK only.

    kill_during_save  (checkpoint.save, rank 0): SIGKILL after rank 0's shard files and the
                      run config of STEP are written, before the tag is complete
    stop_in_step      (run.loop): SIGTERM at the end of step STEP, as from a preemption
    hold_for_signal   (run.loop): wait after step STEP is logged, saved and evaluated, just
                      before the stop agreement, until a stop signal arrives, so that a test
                      can signal a run at a known step however fast its steps are
"""
from __future__ import annotations

import os
import signal
import time
from typing import Callable


def armed(name: str, step: int, rank: int) -> bool:
    return os.environ.get("LONGVIVIT_FAULT") in (f"{name}:{step}", f"{name}:{step}:{rank}")


def fault_point(name: str, step: int, rank: int, sig: int = signal.SIGKILL) -> None:
    """Send this process `sig` if the point is armed."""
    if armed(name, step, rank):
        os.kill(os.getpid(), sig)


def hold_point(name: str, step: int, rank: int, released: Callable[[], bool], timeout: float = 600.0) -> None:
    """If the point is armed, wait until `released()` (or `timeout` seconds)."""
    if armed(name, step, rank):
        deadline = time.monotonic() + timeout
        while not released() and time.monotonic() < deadline:
            time.sleep(0.05)
