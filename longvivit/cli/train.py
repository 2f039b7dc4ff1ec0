"""`longvivit train CONFIG [key=value ...]`: the trainer (longvivit/train/trainer.py) as a
command, under any launcher (one process, deepspeed, torchrun, srun)."""
from __future__ import annotations

import sys

from longvivit.config import ConfigError
from longvivit.train.hooks import TrainerHooks
from longvivit.train.trainer import EXIT_CONFIG, Trainer

HELP = """usage: longvivit train CONFIG.yaml [key=value ...]

Train the dual encoder described by CONFIG (a path, or a shipped config's name: demo.yaml,
long_L256.yaml, ...; see longvivit/configs/); each key=value
overrides one entry with OmegaConf's dotted syntax, e.g. model.video.frames=128
steps=2000 data.batch_size=4 out=runs/exp1. The whole config is checked before any
process group, buffer or output file exists; a bad key or value exits 2 naming it.

Run it as one process, or one process per GPU under `deepspeed`, `torchrun` or `srun`
(RANK/WORLD_SIZE/LOCAL_RANK or SLURM's variables are read). It resumes by itself from
the newest complete checkpoint in `out` (resume=never|PATH to change that);
SIGUSR1/SIGTERM stop all ranks after the same step with a checkpoint (exit 75: requeue
me). A step whose loss or gradient norm is not finite is skipped; max_nonfinite_steps of
them in a row stop the run with no checkpoint of them (exit 3). A rank that stays in one
phase (setup, data, step, checkpoint, eval) longer than timeouts.PHASE_s ends the job with
a line naming it, the phase and the step (exit 4)."""


def main(argv: list[str] | None = None, hooks: TrainerHooks | None = None) -> int:
    """`longvivit train`, its exit status; `hooks` for the Trainer (the tests' entry,
    tests/scripts/train_with_hooks.py, passes its own)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(HELP)
        return 0
    try:
        trainer = Trainer.from_argv(argv, hooks=hooks)
    except ConfigError as err:
        print(f"longvivit train: {err}".splitlines()[0], file=sys.stderr)
        return EXIT_CONFIG
    try:
        with trainer:
            return trainer.train()
    except ConfigError as err:  # found once the ranks meet (two on one GPU): the same on every rank
        if trainer.d.is_main:
            print(f"longvivit train: {err}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
