"""Where this process sits on its node, from whichever launcher started it.

torchrun exports LOCAL_RANK and LOCAL_WORLD_SIZE; the deepspeed launcher exports LOCAL_RANK
and LOCAL_SIZE; srun exports only SLURM_* variables. The trainer (longvivit/distributed/collectives.py) and the
streaming reader (longvivit/data/load/reader.py) both need the node-local layout, and both ask here, so a
launcher is understood the same way by each.
"""
from __future__ import annotations

import os
import re
from typing import Mapping

# Most specific first: the launcher's own count, then SLURM's for this step (srun), for
# every step (--ntasks-per-node), and for the job. SLURM's look like "4", "4(x2)" or "4,3".
_PER_NODE = ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE",
             "SLURM_TASKS_PER_NODE")


def launcher_local_world_size(env: Mapping[str, str] | None = None) -> int | None:
    """Processes per node as the launcher reports them; None where it does not."""
    env = os.environ if env is None else env
    for name in _PER_NODE:
        count = re.match(r"\d+", env.get(name, ""))
        if count:
            return int(count.group())
    return None


def local_world_size(world_size: int, env: Mapping[str, str] | None = None) -> int:
    """Processes per node: the launcher's count, else all `world_size` of them. Never more
    than world_size: a bigger count is the allocation's, around a lone process."""
    count = launcher_local_world_size(env)
    return world_size if count is None else min(count, world_size)


def local_rank(rank: int, local_world: int, env: Mapping[str, str] | None = None) -> int:
    """This process's index on its node."""
    env = os.environ if env is None else env
    given = env.get("LOCAL_RANK") or env.get("SLURM_LOCALID")
    return int(given) if given else rank % local_world
