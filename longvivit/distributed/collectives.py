"""Where this process sits in the job, and the one home for collectives.

The same `longvivit train` runs as one plain process, under the deepspeed launcher, under
torchrun and under srun. The first three export RANK / WORLD_SIZE / LOCAL_RANK; srun
exports SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID. `setup_env` normalises both into the
torch.distributed variables (plus LOCAL_WORLD_SIZE, which mosaicml-streaming reads and the
deepspeed launcher does not set) before any process group exists.

Each rank binds its device first (`bind_device`: the GPU `rank_device` picks for it, made
current, or the CPU), before the process group starts: NCCL places a collective's tensors
on the current device, and a rank that has not bound its own is still on GPU 0, which the
group of every rank but local rank 0 refuses. The collectives enforce that order on every
backend (DeviceNotBound), so a CPU test over gloo fails where an NCCL run would.

Collectives (`all_reduce`, `dist_mean`, `dist_max`, `dist_any`, `all_gather_object`,
`broadcast_object`, `barrier`) live here and nowhere else in train/ and data/
(tests/test_collectives.py scans the package). Each puts its tensor on the device the
process group's backend takes (`collective_device`: the bound GPU under NCCL, which rejects
CPU tensors; CPU under gloo) and runs whenever a process group exists, at world size 1 too,
so a one-GPU run exercises the same calls a 64-GPU run makes. Without a process group (one
plain process, e.g. `longvivit eval`) they return the local value. While one waits, the
rank's watchdog phase says so (watchdog.waiting): a hang report then tells a rank stuck
waiting for its peers from the one they wait for.
"""
from __future__ import annotations

import hashlib
import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as tdist

from longvivit.config import ConfigError
from longvivit.distributed import launch_env, watchdog


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A TCP port nobody listens on right now (for single-process runs and tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_env(env: dict | None = None) -> DistEnv:
    """Rank, world and rendezvous from the environment; a lone process is rank 0 of 1."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
    else:
        rank, world = 0, 1
    local_world = launch_env.local_world_size(world, env)
    local_rank = launch_env.local_rank(rank, local_world, env)
    addr = env.get("MASTER_ADDR", "127.0.0.1")
    port = int(env["MASTER_PORT"]) if "MASTER_PORT" in env else (29500 if world > 1 else free_port())
    return DistEnv(rank, world, local_rank, local_world, addr, port)


def setup_env(d: DistEnv) -> dict[str, str | None]:
    """Export the torch.distributed / streaming variables for `d` (no process group yet);
    the values they had before (None: unset), for restore_env. A process that runs a rank
    in-process (a notebook, a test) and then starts a launcher puts them back first: the
    deepspeed launcher sets LOCAL_SIZE, not LOCAL_WORLD_SIZE, which is read first, so an
    inherited LOCAL_WORLD_SIZE=1 would make every rank streaming's node leader."""
    wanted = dict(RANK=str(d.rank), WORLD_SIZE=str(d.world_size), LOCAL_RANK=str(d.local_rank),
                  LOCAL_WORLD_SIZE=str(d.local_world_size), MASTER_ADDR=d.master_addr, MASTER_PORT=str(d.master_port))
    # The CPU accelerator counts its "devices" from LOCAL_SIZE (the deepspeed launcher sets it).
    defaults = dict(LOCAL_SIZE=str(d.local_world_size), TORCH_EXTENSIONS_DIR=extensions_dir())
    saved = {key: os.environ.get(key) for key in (*wanted, *defaults)}
    os.environ.update(wanted)
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    return saved


def restore_env(saved: dict[str, str | None]) -> None:
    """Put back the environment variables `saved` names as it holds them."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def extensions_dir() -> str:
    """Where torch builds and caches C++ extensions for this Python environment.

    DeepSpeed's CPU accelerator JIT-builds its shm_comm op whenever a process group starts
    (comm.TorchBackend builds it unconditionally; the gloo path never calls it, and neither
    an environment variable nor a config turns that off). torch caches it per user and
    Python/CUDA version only, so two checkouts (two virtualenvs) rebuild it over each
    other's build on every start: 25 s on an idle 2-core box, minutes on a busy one. One
    cache per environment (a folder named after sys.prefix) keeps it built."""
    # cpp_extension warns on import where there is no CUDA toolkit: imported only when asked
    from torch.utils.cpp_extension import get_default_build_root

    env = hashlib.sha1(sys.prefix.encode()).hexdigest()[:12]
    return str(Path(get_default_build_root()) / f"env-{env}")


# ---------------------------------------------------------------------------- the rank's device

class DeviceNotBound(RuntimeError):
    """A collective before bind_device: NCCL would refuse it on every rank but local rank 0."""


_bound: torch.device | None = None  # this rank's device once bind_device has run


def cuda_problem() -> str | None:
    """Why torch sees no CUDA device, in words; None when it sees one."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return "this torch is a CPU-only build"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hidden = f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
    return (f"torch {torch.__version__} (built for CUDA {torch.version.cuda}) finds no usable GPU: no GPU on "
            f"this machine, or a driver older than that CUDA{hidden}")


def rank_device(local_rank: int, local_world_size: int, gpus: int) -> torch.device:
    """The device of node-local rank `local_rank` of `local_world_size`, when this process
    sees `gpus` CUDA devices. At least as many GPUs as ranks: one each, by local rank (the
    deepspeed launcher, torchrun, srun with every GPU visible to every task). One GPU: the
    launcher gave each task its own (srun --gpus-per-task=1 or --gpu-bind, which set
    CUDA_VISIBLE_DEVICES per task); check_distinct_gpus refuses ranks that share it. More
    than one but fewer than the ranks: no one-to-one placement exists (ConfigError)."""
    if gpus == 0:
        return torch.device("cpu")
    if gpus >= local_world_size:
        return torch.device("cuda", local_rank)
    if gpus == 1:
        return torch.device("cuda", 0)
    raise ConfigError(f"{local_world_size} ranks on this node (LOCAL_WORLD_SIZE) but this process sees {gpus} "
                      f"GPUs: start one rank per GPU (deepspeed --num_gpus {gpus}, torchrun --nproc_per_node "
                      f"{gpus}, srun --ntasks-per-node={gpus}) or give each task its own (srun --gpus-per-task=1)")


def device_for(d: DistEnv) -> torch.device:
    """The device `rank_device` picks for this rank (ConfigError when there is none)."""
    return rank_device(d.local_rank, d.local_world_size, torch.cuda.device_count())


def bind_device(d: DistEnv) -> torch.device:
    """Pick this rank's device and make it current (torch.cuda.set_device); call before
    the process group and every collective. Returns the device."""
    global _bound
    device = device_for(d)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    _bound = device
    return device


def bound_device() -> torch.device:
    """This rank's device (bind_device's); DeviceNotBound before it."""
    if _bound is None:
        raise DeviceNotBound("this rank's device is not bound yet: call dist.bind_device first")
    return _bound


def _require_bound(collective: str) -> torch.device:
    if _bound is None:
        raise DeviceNotBound(f"{collective} before this rank's device is bound (dist.bind_device): under NCCL "
                             "every rank but local rank 0 would refuse it")
    return _bound


def gpu_identity() -> tuple[str, str | None]:
    """(host, UUID of this rank's bound GPU; None on CPU)."""
    device = bound_device()
    uuid = str(torch.cuda.get_device_properties(device).uuid) if device.type == "cuda" else None
    return socket.gethostname(), uuid


def shared_gpus(identities: list[tuple[str, str | None]]) -> str | None:
    """The first two ranks bound to one GPU of one host, in words; None if none are
    (CPU ranks, None, share freely)."""
    first: dict[tuple[str, str], int] = {}
    for rank, (host, uuid) in enumerate(identities):
        if uuid is None:
            continue
        if (host, uuid) in first:
            return (f"ranks {first[host, uuid]} and {rank} are both on GPU {uuid} of {host}: give each rank "
                    "its own GPU (one rank per visible GPU, or srun --gpus-per-task=1)")
        first[host, uuid] = rank
    return None


def check_distinct_gpus() -> None:
    """Refuse ranks that share a GPU (ConfigError, the same on every rank)."""
    clash = shared_gpus(all_gather_object(gpu_identity()))
    if clash:
        raise ConfigError(clash)


def init_process_group(timeout: timedelta) -> None:
    """The process group for the variables setup_env exported (gloo on CPU), once this
    rank's device is bound. `timeout` bounds the rendezvous and every collective (the run
    config's timeouts.collective_s): one that waits longer for a peer fails instead of
    hanging."""
    # deepspeed is slow to import and logs on import: only when a process group starts
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    # The CPU accelerator asks for ccl; gloo is what a CPU-only torch always has.
    _require_bound("init_process_group")
    backend = "gloo" if get_accelerator().device_name() == "cpu" else get_accelerator().communication_backend_name()
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, timeout=timeout)


# ---------------------------------------------------------------------------- collectives

def collective_device(backend: str, collective: str = "a collective") -> torch.device:
    """The device a collective's tensors must live on under `backend` ("nccl", "gloo", or
    a per-device spec like "cpu:gloo,cuda:nccl"): NCCL takes only CUDA tensors (the rank's
    bound GPU), gloo (and mpi, ccl) CPU ones; where both are configured, CUDA. Raises
    DeviceNotBound before bind_device, on every backend."""
    device = _require_bound(collective)
    if "nccl" in backend:
        return device
    return torch.device("cpu")


def _group():
    """torch.distributed when a process group is up, else None (one plain process)."""
    return tdist if tdist.is_available() and tdist.is_initialized() else None


def backend() -> str | None:
    """The process group's backend ("nccl", "gloo", ...), None without one."""
    g = _group()
    return g.get_backend() if g is not None else None


def all_reduce(values, op: str = "sum", group=None) -> torch.Tensor:
    """Sum / max / min of `values` (a tensor or a list of numbers) over ranks (of `group`,
    a torch.distributed subgroup; None: all), a new tensor on the device `values` came from
    (CPU for a list). Called by every rank of the group, the same number of times."""
    t = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=torch.float64)
    g = _group()
    if g is None:
        return t.clone()
    ops = {"sum": g.ReduceOp.SUM, "max": g.ReduceOp.MAX, "min": g.ReduceOp.MIN}
    if op not in ops:
        raise ValueError(f"all_reduce: op {op!r} is not one of {', '.join(ops)}")
    work = t.to(collective_device(g.get_backend(), "all_reduce"), copy=True).contiguous()
    with watchdog.waiting("all_reduce"):
        g.all_reduce(work, op=ops[op], group=group)
    return work.to(t.device)


def world_size() -> int:
    g = _group()
    return g.get_world_size() if g is not None else 1


def rank() -> int:
    g = _group()
    return g.get_rank() if g is not None else 0


def new_group(ranks: list[int]):
    """A subgroup of `ranks` on the process group's backend. Every rank of the job must
    make every group, in the same order (torch.distributed's rule)."""
    g = _group()
    if g is None:
        raise RuntimeError("new_group needs a process group")
    _require_bound("new_group")
    return g.new_group(ranks)


def dist_mean(values: list[float]) -> list[float]:
    """Mean over ranks of a few floats (one all-reduce, float64)."""
    return (all_reduce(values) / world_size()).tolist()


def dist_max(value: float) -> float:
    return float(all_reduce([value], "max")[0])


def dist_any(flag: bool) -> bool:
    """True on every rank if `flag` is true on any rank."""
    return dist_max(1.0 if flag else 0.0) > 0


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] (pickled; small objects only)."""
    g = _group()
    if g is None:
        return [obj]
    _require_bound("all_gather_object")
    out = [None] * g.get_world_size()
    with watchdog.waiting("all_gather_object"):
        g.all_gather_object(out, obj)
    return out


def barrier() -> None:
    g = _group()
    if g is None:
        return
    device = collective_device(g.get_backend(), "barrier")
    with watchdog.waiting("barrier"):
        if device.type == "cuda":  # NCCL's barrier needs the device, or it guesses one
            g.barrier(device_ids=[device.index])
        else:
            g.barrier()


def shm_buffers(d: DistEnv) -> list[Path]:
    """The shared-memory buffers DeepSpeed's CPU all-reduce leaves in /dev/shm for this job."""
    prefix = f"deepspeed_allreduce_buffer_{os.getuid()}_{d.master_addr}_{d.master_port}_"
    shm = Path("/dev/shm")
    return sorted(shm.glob(prefix + "*")) if shm.is_dir() else []


def shutdown(d: DistEnv, failed: bool = False) -> None:
    """Tear the process group down, remove this rank's /dev/shm buffer (also when the
    barrier fails: a peer that died, e.g. ended by its watchdog) and unbind the device.

    failed: this rank is leaving on an error. It then waits for no one: its peers are
    elsewhere (in a step's collective, or stuck), and under NCCL a barrier would hold it
    until timeouts.collective_s (30 minutes by default) instead of letting it exit, which
    is what ends the job (the launcher or srun --kill-on-bad-exit stops the other ranks)."""
    global _bound
    g = _group()
    try:
        if g is not None and not failed:
            barrier()
        # NCCL's destroy can wait on a collective a peer never joined; the exit frees it
        if g is not None and not (failed and "nccl" in g.get_backend()):
            g.destroy_process_group()
    finally:
        remove_shm_buffer(d)
        _bound = None


def remove_shm_buffer(d: DistEnv) -> None:
    """This rank's DeepSpeed buffer in /dev/shm (also when it ends without shutdown: watchdog)."""
    for path in shm_buffers(d):
        if path.name.endswith(f"_{d.rank}"):
            path.unlink(missing_ok=True)


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s `obj` on every rank (pickled; small objects only)."""
    g = _group()
    if g is None:
        return obj
    box = [obj]
    with watchdog.waiting("broadcast_object"):
        g.broadcast_object_list(box, src=src, device=collective_device(g.get_backend(), "broadcast_object"))
    return box[0]


# ---------------------------------------------------------------------------- tensor collectives of the model
#
# The forward pass's own collectives (sequence parallelism: sequence.py). Unlike the ones
# above they run inside autograd functions on activations, over a subgroup, and hand back
# tensors on the device they came from; like them, each runs on the device the backend
# takes and refuses to run before bind_device.


def exchange(inputs: list[torch.Tensor], shapes: list[torch.Size], group) -> list[torch.Tensor]:
    """all_to_all over `group`: inputs[j] goes to the group's j-th rank, and the j-th
    returned tensor, of shapes[j], is what that rank sent here (gloo wants one shape for
    all pieces). Contiguous copies on the collective's device; the results on the inputs'
    device."""
    g = _group()
    if g is None:
        raise RuntimeError("exchange needs a process group (sequence parallelism runs under a launcher)")
    device = collective_device(g.get_backend(), "all_to_all")
    home = inputs[0].device
    send = [t.to(device).contiguous() for t in inputs]
    recv = [torch.empty(shape, dtype=inputs[0].dtype, device=device) for shape in shapes]
    with watchdog.waiting("all_to_all"):
        g.all_to_all(recv, send, group=group)
    return [t.to(home) for t in recv]


def all_gather_tensor(t: torch.Tensor, group) -> list[torch.Tensor]:
    """[t of the group's rank 0, of rank 1, ...]; t has the same shape on every rank."""
    g = _group()
    if g is None:
        return [t]
    device = collective_device(g.get_backend(), "all_gather")
    parts = [torch.empty(t.shape, dtype=t.dtype, device=device) for _ in range(g.get_world_size(group))]
    with watchdog.waiting("all_gather"):
        g.all_gather(parts, t.to(device).contiguous(), group=group)
    return [p.to(t.device) for p in parts]
