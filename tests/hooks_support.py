"""The tests' trainer hooks (longvivit/train/hooks.py): faults injected at named moments of
a real run, the eval's embeddings kept for a comparison, every call recorded. A run gets
them through tests/scripts/train_with_hooks.py, which trains as `longvivit train` does
(train_support.train_program builds its command line).

A fault spec is NAME:STEPS[:RANK], several separated by commas: NAME fires at STEPS (one
step N, or the steps FIRST-LAST), on every rank that reaches it, or on rank RANK only.

    kill_during_save   SIGKILL once this rank's files of the checkpoint of STEP (DeepSpeed's
                       shards, its parts, on rank 0 the run config) are written, before the
                       checkpoint is complete; on rank 0 unless RANK is given
    stop_in_step       SIGTERM at the end of step STEP, as from a preemption
    hold_for_signal    at the end of step STEP (logged, saved and evaluated), just before the
                       stop agreement, wait until a stop signal arrives, so that a test can
                       signal a run at a known step however fast its steps are
    kill_during_conversion  SIGKILL while the checkpoint of STEP, written by another number
                       of ranks, is being converted to a universal one, before the rename
    kill_during_eval   SIGKILL once the eval at step STEP has embedded its split, before its
                       line in metrics.jsonl (and, at the final step, summary.json)
    raise_in_step      InjectedFault at the start of step STEP, as from a bug or a failed
                       kernel on that rank
    nan_loss           every micro-batch loss of step STEP NaN in value (NaN added: its
                       gradients stay finite, so only the trainer's own check of the loss
                       can keep the step from being applied)
    stall_PHASE        on entering phase PHASE (setup, step, data, checkpoint, eval) of step
                       STEP (setup: 0), the rank stops there for an hour, as one stuck in
                       that phase would: its watchdog must end the job
"""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from longvivit.train.hooks import TrainerHooks

STALL_S = 3600.0  # how long stall_PHASE holds a rank
HOLD_S = 600.0  # how long hold_for_signal waits for a signal at most
RANK_0_ONLY = {"kill_during_save"}  # faults that fire on rank 0 when the spec names no rank


class InjectedFault(RuntimeError):
    pass


@dataclass(frozen=True)
class Fault:
    name: str
    first: int
    last: int
    rank: int | None  # None: every rank

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """NAME:STEPS[:RANK] (see the module docstring); ValueError for anything else."""
        name, _, where = spec.partition(":")
        steps, _, rank = where.partition(":")
        first, _, last = steps.partition("-")
        if not name or not first.isdigit() or not (last or first).isdigit() or not (rank == "" or rank.isdigit()):
            raise ValueError(f"fault {spec!r}: expected NAME:STEP[-LAST][:RANK]")
        rank = rank or ("0" if name in RANK_0_ONLY else "")
        return cls(name, int(first), int(last or first), int(rank) if rank else None)

    def fires(self, name: str, step: int, rank: int) -> bool:
        return name == self.name and self.first <= step <= self.last and self.rank in (None, rank)


def parse_faults(spec: str) -> list[Fault]:
    return [Fault.parse(part) for part in spec.split(",") if part]


def hold_point(released: Callable[[], bool], timeout: float) -> None:
    """Wait until `released()` or `timeout` seconds (the name a stalled rank's stack shows)."""
    deadline = time.monotonic() + timeout
    while not released() and time.monotonic() < deadline:
        time.sleep(0.05)


class FaultHooks(TrainerHooks):
    """The faults of `spec`; with `eval_embeddings`, rank 0 also saves each eval's
    embeddings there (the last eval's stay); with `record`, each call to a hook is a JSON
    line appended to that file: {"hook", "rank", "step", ...}."""

    def __init__(self, spec: str = "", eval_embeddings: Path | None = None, record: Path | None = None):
        self.faults = parse_faults(spec)
        self.eval_embeddings, self.record = eval_embeddings, record

    def fires(self, name: str, step: int | None, trainer) -> bool:
        return any(f.fires(name, step or 0, trainer.d.rank) for f in self.faults)

    def kill_if(self, name: str, step: int, trainer, sig: int = signal.SIGKILL) -> None:
        if self.fires(name, step, trainer):
            os.kill(os.getpid(), sig)

    def note(self, hook: str, trainer, **fields) -> None:
        if self.record is not None:
            with open(self.record, "a") as f:
                f.write(json.dumps({"hook": hook, "rank": trainer.d.rank, **fields}) + "\n")

    def on_phase_start(self, trainer, phase, step):
        self.note("phase", trainer, phase=phase, step=step)
        if self.fires(f"stall_{phase}", step, trainer):
            hold_point(lambda: False, STALL_S)

    def on_step_start(self, trainer, step):
        self.note("step_start", trainer, step=step)
        if self.fires("raise_in_step", step, trainer):
            raise InjectedFault(f"fault point raise_in_step at step {step} on rank {trainer.d.rank}")

    def on_before_backward(self, trainer, step, micro, loss):
        self.note("before_backward", trainer, step=step, micro=micro)
        return loss + float("nan") if self.fires("nan_loss", step, trainer) else loss

    def on_checkpoint_written(self, trainer, step):
        self.note("checkpoint_written", trainer, step=step,
                  complete=(Path(trainer.cfg.out) / "checkpoints" / f"step{step:08d}" / "complete").exists())
        self.kill_if("kill_during_save", step, trainer)

    def on_checkpoint_converted(self, trainer, step):
        self.note("checkpoint_converted", trainer, step=step)
        self.kill_if("kill_during_conversion", step, trainer)

    def on_evaluate(self, trainer, step, metrics, embeddings):
        self.note("evaluate", trainer, step=step, pairs=metrics["pairs"], clips=len(embeddings.index))
        if self.eval_embeddings is not None and trainer.d.is_main:
            embeddings.save(self.eval_embeddings)
        self.kill_if("kill_during_eval", step, trainer)

    def on_step_end(self, trainer, step):
        self.note("step_end", trainer, step=step)
        self.kill_if("stop_in_step", step, trainer, signal.SIGTERM)
        if self.fires("hold_for_signal", step, trainer):
            hold_point(lambda: trainer.stop.requested, HOLD_S)
