"""No silent hangs: a per-rank watchdog that ends the job when a rank stops making progress.

The trainer says what each rank is doing with named phases: `begin("setup")`, then
`begin("step", n)` at the top of every step, and, nested inside, `with phase("data")`
around each wait for a batch, `with phase("checkpoint")` and `with phase("eval")`. The
collectives in dist.py mark themselves with `waiting("all_reduce")` etc.: that rank is
waiting for its peers. A daemon thread sleeps until the innermost phase's deadline (its
start + its limit, the run config's `timeouts.PHASE_s`; 0: no limit); leaving a nested
phase is progress, so the phase around it starts its clock again. A phase that is still
running at its deadline:

  - prints one JSON event on stdout, {"event": "hang", "rank", "phase", "step", "seconds",
    "limit", "waiting", "exit": 4}, and one line on stderr naming the rank, the phase, the
    step and the key that set the limit, followed by the Python stacks of all its threads
    (faulthandler), for diagnosis;
  - removes the rank's DeepSpeed buffer in /dev/shm (`cleanup`) and waits REPORT_GRACE_S,
    so that peers stuck since the same moment (in a collective, waiting for this rank)
    report too before the launcher kills them, then
  - ends the process with os._exit(EXIT_HANG): the main thread is stuck, so no exception
    or signal could reach it. The deepspeed launcher then terminates the other ranks and
    exits with the status of the first failed rank it sees (a peer whose collective
    failed when this rank went away exits 1); under srun, --kill-on-bad-exit ends the job
    (slurm/train.sbatch).

A rank waiting for a stuck peer in a collective is bounded by the process group's own
timeout (`timeouts.collective_s`, dist.init_process_group) as well as by its phase.

One watchdog per process, like a signal handler: the module functions act on the one
`start` made (and do nothing when none runs, e.g. in `longvivit eval` or a unit test), so
that the loop, the data wait and dist.py mark phases without passing it around. Its
`on_enter(name, step)` callback is called on entering each phase (the trainer's hooks:
the tests stall a rank there, tests/hooks_support.py).

(torch.distributed.elastic.timer offers expiring scopes too, but needs a timer server in
the launcher's agent and ends a worker with SIGKILL: no message, no stacks.)
"""
from __future__ import annotations

import faulthandler
import functools
import os
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

from longvivit import events

EXIT_HANG = 4  # a rank made no progress within its phase's limit (see the run config's timeouts)
REPORT_GRACE_S = 5.0  # between a rank's report and its exit (see the module docstring)


@dataclass
class Frame:
    """One phase this rank is in: its name, the step it belongs to, when its clock started
    and the collective it is waiting in, if any."""
    name: str
    step: int | None
    start: float
    waiting: str | None = None


@dataclass(frozen=True)
class Hang:
    rank: int
    phase: str
    step: int | None
    seconds: float  # in the phase without progress, when the watchdog fired
    limit: float
    waiting: str | None  # the dist.py collective it was waiting in, if any


def deadline(frame: Frame, limits: Mapping[str, float]) -> float | None:
    """When `frame` is overdue (monotonic seconds); None: its phase has no limit. A rank
    waiting for its peers in a collective is given REPORT_GRACE_S more: the rank they wait
    for, stuck since about the same moment, reports first, and the job's first hang line
    names it (ranks enter a phase at different times, more so on a loaded machine)."""
    limit = limits.get(frame.name, 0.0)
    if limit <= 0:
        return None
    return frame.start + limit + (REPORT_GRACE_S if frame.waiting else 0.0)


class Watchdog:
    """Watches this rank's innermost phase; calls `on_hang(Hang)` once, from its own
    thread, when that phase outlives its limit (`limits`: seconds by phase name), and
    `on_enter(name, step)` from the thread that enters a phase, once its clock runs."""

    def __init__(self, limits: Mapping[str, float], rank: int, on_hang: Callable[[Hang], None],
                 clock: Callable[[], float] = time.monotonic,
                 on_enter: Callable[[str, int | None], None] = lambda name, step: None):
        self.limits, self.rank, self._on_hang, self._clock = dict(limits), rank, on_hang, clock
        self._on_enter = on_enter
        self._frames: list[Frame] = []
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._watch, daemon=True, name="longvivit-watchdog")

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def begin(self, name: str, step: int | None = None) -> None:
        """From now on this rank is in phase `name` (outside any nested phase)."""
        with self._cond:
            assert len(self._frames) <= 1, f"begin({name!r}) inside phase {self._frames[-1].name!r}"
            self._frames[:] = [Frame(name, step, self._clock())]
            self._cond.notify()
        self._on_enter(name, step)

    @contextmanager
    def phase(self, name: str, step: int | None = None) -> Iterator[None]:
        """A phase nested in the current one (of the same step unless `step` is given)."""
        with self._cond:
            if step is None and self._frames:
                step = self._frames[-1].step
            self._frames.append(Frame(name, step, self._clock()))
            self._cond.notify()
        try:
            self._on_enter(name, step)
            yield
        finally:
            with self._cond:
                self._frames.pop()
                if self._frames:  # leaving a phase is progress: the one around it starts again
                    self._frames[-1].start = self._clock()
                self._cond.notify()

    @contextmanager
    def waiting(self, what: str) -> Iterator[None]:
        """This rank waits for its peers in collective `what` (no effect on the clock)."""
        frame = self._frames[-1] if self._frames else None
        if frame is not None:
            frame.waiting = what
        try:
            yield
        finally:
            if frame is not None:
                frame.waiting = None

    def overdue(self, now: float) -> Hang | None:
        """The innermost phase as a Hang if it is past its deadline at `now`."""
        if not self._frames:
            return None
        frame = self._frames[-1]
        due = deadline(frame, self.limits)
        if due is None or now < due:
            return None
        return Hang(self.rank, frame.name, frame.step, now - frame.start, self.limits[frame.name], frame.waiting)

    def _seconds_left(self) -> float | None:
        """Until the innermost phase's deadline; None: no deadline (wait for a change)."""
        due = deadline(self._frames[-1], self.limits) if self._frames else None
        return None if due is None else max(0.0, due - self._clock())

    def _watch(self) -> None:
        hang = None
        with self._cond:
            while not self._stopped and hang is None:
                hang = self.overdue(self._clock())
                if hang is None:
                    self._cond.wait(self._seconds_left())  # woken early by every phase change
        if hang is not None:
            self._on_hang(hang)


# ---------------------------------------------------------------------------- the process's watchdog

_active: Watchdog | None = None


def announce_hang_and_exit(hang: Hang, cleanup: Callable[[], None] = lambda: None) -> None:
    """What a hang does in the trainer: say it, dump the stacks, clean up, wait for peers
    to report, exit EXIT_HANG."""
    events.emit("hang", rank=hang.rank, pid=os.getpid(), phase=hang.phase, step=hang.step,
                seconds=round(hang.seconds, 3), limit=hang.limit, waiting=hang.waiting, exit=EXIT_HANG)
    at = f" at step {hang.step}" if hang.step is not None else ""
    waiting = f", waiting for the other ranks in {hang.waiting}" if hang.waiting else ""
    print(f"longvivit train: rank {hang.rank} made no progress for {hang.seconds:.0f} s in phase "
          f"{hang.phase}{at}{waiting} (timeouts.{hang.phase}_s={hang.limit:g}): ending the job "
          f"(exit {EXIT_HANG}); the stacks of its threads follow", file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    cleanup()
    time.sleep(REPORT_GRACE_S)
    os._exit(EXIT_HANG)


def start(limits: Mapping[str, float], rank: int, cleanup: Callable[[], None] = lambda: None,
          on_enter: Callable[[str, int | None], None] = lambda name, step: None) -> Watchdog:
    """Start this process's watchdog (phase "setup"); a hang reports and exits (announce_hang_and_exit)."""
    global _active
    stop()
    _active = Watchdog(limits, rank, lambda hang: announce_hang_and_exit(hang, cleanup), on_enter=on_enter).start()
    _active.begin("setup")
    return _active


def stop() -> None:
    global _active
    if _active is not None:
        _active.stop()
        _active = None


def begin(name: str, step: int | None = None) -> None:
    if _active is not None:
        _active.begin(name, step)


def phase(name: str, step: int | None = None):
    return _active.phase(name, step) if _active is not None else nullcontext()


def waiting(what: str):
    return _active.waiting(what) if _active is not None else nullcontext()


def phased(name: str) -> Callable:
    """A function decorator: every call runs in phase `name`."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def in_phase(*args, **kwargs):
            with phase(name):
                return fn(*args, **kwargs)
        return in_phase
    return wrap


def _forget_in_child() -> None:
    """A forked child (a loader worker) has no watchdog thread: its phases mark nothing."""
    global _active
    _active = None


os.register_at_fork(after_in_child=_forget_in_child)

__all__ = ["EXIT_HANG", "Hang", "Watchdog", "start", "stop", "begin", "phase", "phased", "waiting",
           "announce_hang_and_exit"]
