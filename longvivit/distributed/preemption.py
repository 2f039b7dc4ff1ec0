"""Preemption and time limits: stop at a step boundary, checkpoint, exit for requeue.

SLURM sends the batch shell a warning signal before a job's time limit (``--signal=B:USR1@N``)
or before preemption (SIGTERM, then SIGKILL after KillWait). slurm/train.sbatch forwards it
to every rank. Each rank only records the request in its handler; the training loop asks
`StopRequest.agreed()` once per step, which takes the max over ranks so every rank stops
after the SAME step (a rank that stopped alone would leave the others hanging in the next
collective). The trainer then writes a checkpoint, `write_stop_note()` leaves a note in
$LONGVIVIT_STOP_FILE (set by the sbatch script) and every rank exits with EXIT_REQUEUE; the
script sees the note and runs `scontrol requeue`.
"""
from __future__ import annotations

import os
import signal
import threading

from longvivit.distributed import collectives as dist

# EX_TEMPFAIL from sysexits.h: "try again later". The sbatch script requeues on it.
EXIT_REQUEUE = 75

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequest:
    """Records stop signals; `agreed()` says, identically on every rank, whether to stop."""

    def __init__(self, signals=STOP_SIGNALS):
        self.signum: int | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def agreed(self) -> bool:
        """True on all ranks as soon as any rank got a stop signal (a collective call)."""
        return dist.dist_any(self.requested)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def write_stop_note(step: int, checkpoint: str) -> None:
    """Rank 0, after the stop checkpoint is complete: tell the launcher to requeue."""
    path = os.environ.get("LONGVIVIT_STOP_FILE")
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(f"step {step} checkpoint {checkpoint}\n")
        os.replace(tmp, path)
