"""Trainer hooks: named moments of a run where code from outside the package can act, in the
manner of Lightning's and Hugging Face's trainer callbacks.

    class MyHooks(TrainerHooks):
        def on_evaluate(self, trainer, step, metrics, embeddings):
            ...
    Trainer.from_argv(argv, hooks=MyHooks())

Every method does nothing here; a subclass overrides the ones it needs. Each is called on
every rank that reaches its moment, with the Trainer first (its `cfg`, `d.rank`, `state`,
`stop`, `engine`); `step` is the optimizer step the moment belongs to, counted from 1.
An exception raised by a hook propagates as one raised by the trainer at that point would.

The tests inject their faults (kill a rank mid-save, stall it in a phase, a NaN loss, ...)
through these hooks (tests/hooks_support.py), so production modules carry no test code.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from longvivit.eval.evaluate import Embeddings
    from longvivit.train.trainer import Trainer


class TrainerHooks:
    """The extension points, in the order a step reaches them."""

    def on_phase_start(self, trainer: Trainer, phase: str, step: int | None) -> None:
        """This rank enters watchdog phase `phase` (setup, step, data, checkpoint, eval;
        longvivit/distributed/watchdog.py), its clock already running; `step` is None for
        setup. A hook that blocks here is a rank stuck in that phase."""

    def on_step_start(self, trainer: Trainer, step: int) -> None:
        """Step `step` is about to draw its first batch."""

    def on_before_backward(self, trainer: Trainer, step: int, micro: int, loss: torch.Tensor) -> torch.Tensor:
        """The loss of micro-batch `micro` of step `step`, before its backward; what this
        returns is the loss the step backpropagates and logs."""
        return loss

    def on_checkpoint_written(self, trainer: Trainer, step: int) -> None:
        """This rank's files of the checkpoint of `step` are on disk (rank 0's include the
        run config); the checkpoint is not complete yet: other ranks may still be writing,
        and its `complete` marker comes after every rank has returned from here."""

    def on_checkpoint_converted(self, trainer: Trainer, step: int) -> None:
        """Rank 0, resuming on another world size: the universal form of the checkpoint of
        `step` is written aside and is renamed into place when this returns."""

    def on_evaluate(self, trainer: Trainer, step: int, metrics: dict, embeddings: Embeddings) -> None:
        """The eval at `step` has its metrics and the split's gathered embeddings (the same
        on every rank), before they are logged (TensorBoard, metrics.jsonl) and, for the
        final eval, before summary.json."""

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """Step `step` is logged, and checkpointed and evaluated when due; the ranks have
        not yet agreed whether to stop after it (`trainer.stop.requested`: this rank got a
        stop signal)."""


__all__ = ["TrainerHooks"]
