"""Reading shards with MosaicML streaming: launcher environment, shared memory, dataset.

streaming learns the process layout from RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE.
torchrun sets all four; the deepspeed launcher sets no LOCAL_WORLD_SIZE (it sets LOCAL_SIZE),
and srun sets only SLURM_* variables. Without LOCAL_WORLD_SIZE every rank believes it is the
node's leader, and the second one dies with FileExistsError on '/000000_locals'.
`launcher_env` fills the gaps while a dataset is made, reading the node-local layout as
the trainer does (longvivit/distributed/launch_env.py).

streaming keeps its coordination state in POSIX shared memory named '<prefix>_<name>'. A
crashed run leaves those segments behind, and a later run with a remote whose local cache
folder matches refuses to start ("Reused local directory"). streaming's own
clean_stale_shared_memory() unlinks every segment, including those of datasets that are
alive: a second loader in the same process (val after train) or another job on the node
would lose its state. `clean_stale_shared_memory` here removes only segments that no
process has mapped or open (Linux /proc), which is exactly what a crash leaves.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from streaming import Stream, StreamingDataset
from streaming.base.constant import BARRIER_FILELOCK, CACHE_FILELOCK, SHM_TO_CLEAN

from longvivit.data.config import shard_streams
from longvivit.data.prepare.remote import is_remote
from longvivit.distributed.launch_env import launcher_local_world_size, local_rank, local_world_size

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- environment

@contextmanager
def launcher_env(rank: int, world_size: int) -> Iterator[None]:
    """RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE set for (rank, world_size), filling
    what the launcher left out, while a StreamingDataset is made (streaming reads them only
    then); the environment is restored afterwards, so building a loader changes nothing
    else in the process."""
    if world_size > 1 and launcher_local_world_size() is None:
        log.warning("no LOCAL_WORLD_SIZE, LOCAL_SIZE or SLURM task count in the environment: "
                    "assuming all %d ranks run on this node", world_size)
    local_size = local_world_size(world_size)
    if world_size % local_size:
        raise ValueError(f"world size {world_size} is not a multiple of the {local_size} "
                         "processes per node the launcher reports")
    wanted = dict(RANK=str(rank), WORLD_SIZE=str(world_size),
                  LOCAL_RANK=str(local_rank(rank, local_size)), LOCAL_WORLD_SIZE=str(local_size))
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ----------------------------------------------------------------------------- shared memory

_SHM_DIR = Path("/dev/shm")
_SHM_NAME = re.compile(r"^\d{6}_(" + "|".join(SHM_TO_CLEAN) + ")$")
_FILELOCK = re.compile(r"^\d{6}_(" + "|".join((BARRIER_FILELOCK, CACHE_FILELOCK)) + ")$")


def _open_paths() -> set[str]:
    """Paths that some process has mapped or holds open (Linux /proc)."""
    used: set[str] = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps") as f:
                used.update(re.findall(r"(/\S+)", f.read()))
            for fd in os.listdir(f"/proc/{pid}/fd"):
                used.add(os.readlink(f"/proc/{pid}/fd/{fd}").split(" (deleted)")[0])
        except OSError:  # the process ended, or is not ours to inspect
            continue
    return used


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:  # another rank on this node got there first
            pass


def _segments() -> list[Path]:
    return [p for p in _SHM_DIR.iterdir() if _SHM_NAME.match(p.name)]


def clean_stale_shared_memory() -> list[str]:
    """Remove streaming's shared-memory segments of the prefixes no live process uses any segment of, and the file
    locks of prefixes left without segments (streaming never deletes them, and skips every
    prefix that has one, so they pile up run after run). Returns the names removed. Does
    nothing where /proc or /dev/shm is missing (not Linux).

    Safe while other processes (other ranks of this node, other jobs) create datasets:
    names are listed *before* looking for users, so a segment made meanwhile is either not
    listed or already held by its maker; and a dataset makes its segments before its
    locks, so a listed lock whose dataset is alive has segments at the second listing."""
    if not (_SHM_DIR.is_dir() and os.path.isdir("/proc/self/fd")):
        return []
    segments = _segments()
    locks = [p for p in Path(tempfile.gettempdir()).iterdir() if _FILELOCK.match(p.name)]
    in_use = _open_paths()
    # A prefix goes whole or not at all. streaming picks a new dataset's prefix as the
    # largest of each segment name's first free prefix: a prefix left with some of its
    # segments (a live dataset that holds its barrier but no longer maps its locals) makes
    # that pick land on a prefix whose locals exist, and the node's leader dies on
    # FileExistsError ('/000052_locals').
    live = {p.name[:6] for p in segments if str(p) in in_use}
    stale = [p for p in segments if p.name[:6] not in live]
    _unlink_all(stale)
    live_prefixes = {p.name[:6] for p in _segments()}
    locks = [p for p in locks if p.name[:6] not in live_prefixes and str(p) not in in_use]
    _unlink_all(locks)
    if stale:
        log.info("removed %d stale streaming shared-memory segments: %s", len(stale),
                 ", ".join(p.name for p in stale[:8]))
    return [p.name for p in stale + locks]


# ----------------------------------------------------------------------------- dataset

def cache_dir(source: str, local_cache: str) -> str:
    """Where a remote split is cached: `local_cache` per split, or a folder under /tmp
    named after the source (stable across runs so that the cache is reused)."""
    digest = hashlib.sha1(source.encode()).hexdigest()[:12]
    root = Path(local_cache) if local_cache else Path(tempfile.gettempdir()) / "longvivit-cache"
    return str(root / digest)


class ClipDataset(StreamingDataset):
    """Samples carry their global index (for resume checks, dedup and seeding)."""

    def __getitem__(self, index):
        sample = super().__getitem__(index)
        sample["index"] = int(index)
        return sample


def open_split(source: str | list, batch_size: int, shuffle: bool, seed: int,
               local_cache: str = "", canonical_nodes: int = 0, replication: int = 1) -> ClipDataset:
    """A StreamingDataset over a shard folder, or over a remote (or, with `local_cache`,
    any folder, e.g. on a network file system) copied shard by shard into a local cache;
    or, for a list of {path, weight} (data.config.shard_streams), over one streaming Stream
    of each, mixed sample-wise: each epoch draws weight / sum of weights of its samples from
    each (streaming's `proportion`: a stream is up- or down-sampled, the epoch keeps the
    streams' total size), in an order that is a function of the seed and the epoch, so
    state_dict/load_state_dict resume it as they do one folder. Sample indices run over the
    streams in list order. replication: consecutive ranks that read the same samples
    (streaming's own, for sequence parallelism), 1: every rank its own."""
    if not source:
        raise ValueError("no shard location given (data.train / data.val)")
    common = dict(batch_size=batch_size, shuffle=shuffle, shuffle_seed=seed,
                  num_canonical_nodes=canonical_nodes or None, replication=replication if replication > 1 else None)
    if isinstance(source, str):
        return ClipDataset(**stream_location(source, local_cache), **common)
    streams = [Stream(**stream_location(path, local_cache), proportion=weight) for path, weight in shard_streams(source)]
    return ClipDataset(streams=streams, **common)


def stream_location(source: str, local_cache: str) -> dict:
    """{remote, local} of a shard folder or URL: a remote (or any folder, given
    `local_cache`) is copied into a local cache."""
    if is_remote(source) or local_cache:
        return {"remote": source, "local": cache_dir(source, local_cache)}
    if not (Path(source) / "index.json").is_file():
        raise FileNotFoundError(f"shards {source}: no index.json (write shards with "
                                "`longvivit shards`)")
    return {"remote": None, "local": source}
