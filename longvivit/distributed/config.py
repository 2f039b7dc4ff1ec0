"""How long a rank may wait: the process group's timeout and the watchdog's limit per phase
(a run config's `timeouts` section; `longvivit eval --collective-timeout` takes the first)."""
from __future__ import annotations

from dataclasses import dataclass

from longvivit.config import check


@dataclass
class TimeoutConfig:
    """How long a rank may go without progress, in seconds. collective_s is the process
    group's timeout (a collective that waits longer for a peer fails). The others are the
    per-rank watchdog's limits by phase (longvivit/distributed/watchdog.py): a rank that stays longer in one
    phase without finishing it says which rank, phase and step, dumps its threads' stacks
    and exits 4, which ends the job; 0 turns a phase's limit off."""
    collective_s: float = 1800.0
    setup_s: float = 3600.0  # process group to first step: engine, loaders, resume (and its conversion)
    data_s: float = 1800.0  # waiting for one batch
    step_s: float = 1800.0  # the rest of a step: forward, backward, optimizer, its logging and collectives
    checkpoint_s: float = 3600.0  # writing one checkpoint, on every rank
    eval_s: float = 3600.0  # one evaluation pass

    def validate(self) -> None:
        check(self.collective_s > 0, "collective_s", f"{self.collective_s} must be > 0")
        for name in self.limits():
            value = getattr(self, f"{name}_s")
            check(value >= 0, f"{name}_s", f"{value} must be >= 0 (0: no limit)")

    def limits(self) -> dict[str, float]:
        """The watchdog's limit of each phase, by phase name."""
        return {name: getattr(self, f"{name}_s") for name in ("setup", "data", "step", "checkpoint", "eval")}


@dataclass
class ParallelConfig:
    """How a run splits its work besides data parallelism (a run config's `parallel`).

    sequence: N ranks share each clip (DeepSpeed-Ulysses over the video tower's tokens,
    longvivit/distributed/sequence.py): each holds 1/N of a clip's tokens between blocks and
    1/N of the heads inside attention, so the tokens one GPU must hold fall N-fold. The world
    size must be a multiple of N (W / N clip batches per step) and model.video.heads too;
    joint attention only. 1: every rank its own clips."""
    sequence: int = 1

    def validate(self) -> None:
        check(self.sequence >= 1, "sequence", f"{self.sequence} must be >= 1 (1: no sequence parallelism)")
