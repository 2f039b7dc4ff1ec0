"""One home for collectives: longvivit/distributed/collectives.py's helpers, the only callers of torch.distributed
collectives in train/ and data/ (longvivit/model/loss.py's differentiable gather aside).

Under NCCL every collective's tensor must live on the GPU; gloo takes CPU tensors, so a CPU
test cannot see a CPU tensor handed to NCCL unless all collectives go through one place
that picks the device from the backend. These tests hold the code to that.
"""
import ast
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from longvivit.config import ConfigError
from longvivit.distributed import collectives as dist
from longvivit.distributed.collectives import free_port

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = ["longvivit"]
ALLOWED = {"longvivit/distributed/collectives.py", "longvivit/model/loss.py"}
COLLECTIVES = {"all_reduce", "all_gather", "all_gather_object", "all_gather_into_tensor", "broadcast",
               "broadcast_object_list", "barrier", "monitored_barrier", "reduce", "reduce_scatter",
               "reduce_scatter_tensor", "gather", "gather_object", "scatter", "scatter_object_list",
               "all_to_all", "all_to_all_single", "send", "recv", "isend", "irecv", "batch_isend_irecv",
               "inference_all_reduce"}
DIST_MODULES = ("torch.distributed", "deepspeed.comm")


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted module or object it stands for, from the module's imports."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([aliases.get(node.id, node.id), *reversed(parts)])


def collective_calls(source: str) -> list[tuple[int, str]]:
    """(line, dotted name) of every torch.distributed / deepspeed.comm collective called."""
    tree = ast.parse(source)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func, aliases)
            if name and name.startswith(DIST_MODULES) and name.rsplit(".", 1)[-1] in COLLECTIVES:
                found.append((node.lineno, name))
    return found


def package_files() -> list[Path]:
    return sorted(p for d in PACKAGE_DIRS for p in (ROOT / d).rglob("*.py"))


def test_the_scan_sees_every_spelling_of_a_collective():
    source = """
import torch.distributed as dist
import torch
import deepspeed
from torch.distributed import all_reduce as ar, barrier
from torch import distributed
from deepspeed import comm
from . import dist as ours
dist.all_reduce(t)
torch.distributed.all_gather(parts, t)
ar(t)
barrier()
distributed.broadcast(t, 0)
comm.all_reduce(t)
deepspeed.comm.barrier()
ours.barrier()
dist.get_rank()
"""
    names = [name for _, name in collective_calls(source)]
    assert names == ["torch.distributed.all_reduce", "torch.distributed.all_gather",
                     "torch.distributed.all_reduce", "torch.distributed.barrier",
                     "torch.distributed.broadcast", "deepspeed.comm.all_reduce", "deepspeed.comm.barrier"]


def test_no_collective_outside_the_helpers():
    offenders = []
    for path in package_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel in ALLOWED:
            continue
        offenders += [f"{rel}:{line} {name}" for line, name in collective_calls(path.read_text())]
    assert not offenders, "collectives outside longvivit/distributed/collectives.py (use its helpers):\n" + "\n".join(offenders)
    # the scan reads real files: it finds the differentiable gather the loss is allowed
    assert len(package_files()) > 30 and collective_calls((ROOT / "longvivit/model/loss.py").read_text())


def test_collective_device_follows_the_backend_and_the_bound_device(monkeypatch):
    monkeypatch.setattr(dist, "_bound", None)
    with pytest.raises(dist.DeviceNotBound, match="before this rank's device is bound"):
        dist.collective_device("gloo")
    monkeypatch.setattr(dist, "_bound", torch.device("cuda", 3))  # as bind_device leaves it on GPU 3
    assert dist.collective_device("nccl") == torch.device("cuda", 3)
    assert dist.collective_device("cpu:gloo,cuda:nccl") == torch.device("cuda", 3)
    assert dist.collective_device("gloo") == torch.device("cpu")
    assert dist.collective_device("mpi") == torch.device("cpu")


@pytest.mark.parametrize("local_rank, local_world, gpus, expected", [
    (0, 1, 0, "cpu"), (1, 2, 0, "cpu"),  # no CUDA
    (3, 8, 8, "cuda:3"), (1, 2, 8, "cuda:1"),  # one GPU per rank, by local rank
    (5, 8, 1, "cuda:0"),  # srun --gpus-per-task=1 / --gpu-bind: each task sees only its own
])
def test_rank_device_places_each_rank(local_rank, local_world, gpus, expected):
    assert dist.rank_device(local_rank, local_world, gpus) == torch.device(expected)


def test_rank_device_refuses_fewer_gpus_than_ranks():
    with pytest.raises(ConfigError, match="8 ranks on this node .* sees 4 GPUs"):
        dist.rank_device(5, 8, 4)


def test_ranks_sharing_a_gpu_are_named():
    assert dist.shared_gpus([("a", "GPU-1"), ("a", "GPU-2"), ("b", "GPU-1")]) is None  # one per host
    assert dist.shared_gpus([("a", None), ("a", None)]) is None  # CPU ranks share the CPU
    clash = dist.shared_gpus([("a", "GPU-1"), ("b", "GPU-1"), ("a", "GPU-1")])
    assert clash.startswith("ranks 0 and 2 are both on GPU GPU-1 of a")


def _bind_order(rank: int, world: int, port: int, bind_first: bool, results) -> None:
    """The trainer's start as it was (process group, then the resume choice, then the
    device) or as it is (the device first)."""
    import torch.distributed as tdist

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    d = dist.DistEnv(rank, world, rank, world, "127.0.0.1", port)
    if bind_first:
        dist.bind_device(d)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results[rank] = ("ok", dist.broadcast_object(f"choice of rank {rank}"))
    except dist.DeviceNotBound as err:
        results[rank] = ("refused", str(err))
    finally:
        tdist.destroy_process_group()


@pytest.mark.multiproc
@pytest.mark.parametrize("bind_first", [False, True])
def test_a_collective_before_the_device_is_bound_fails_on_cpu_as_under_nccl(bind_first):
    """NCCL refuses a collective on a rank whose device is not yet bound (its tensors go to
    GPU 0); the collectives refuse it on gloo too, so this order fails on CPU."""
    results = mp.Manager().dict()
    mp.spawn(_bind_order, args=(2, free_port(), bind_first, results), nprocs=2, join=True)
    for rank in range(2):
        if bind_first:
            assert results[rank] == ("ok", "choice of rank 0")
        else:
            kind, message = results[rank]
            assert kind == "refused" and message.startswith("broadcast_object before this rank's device is bound")


def test_without_a_process_group_the_helpers_return_local_values():
    assert dist.dist_mean([1.0, 2.5]) == [1.0, 2.5]
    assert dist.dist_max(3.0) == 3.0 and dist.dist_any(True) and not dist.dist_any(False)
    assert dist.all_gather_object({"a": 1}) == [{"a": 1}]
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    dist.barrier()


def _ranks(rank: int, world: int, port: int, results) -> None:
    import torch.distributed as tdist

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.bind_device(dist.DistEnv(rank, world, rank, world, "127.0.0.1", port))
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    calls = []
    real = tdist.all_reduce

    def spy(tensor, *args, **kwargs):
        calls.append(tensor.device.type)
        return real(tensor, *args, **kwargs)

    tdist.all_reduce = spy
    try:
        out = {"mean": dist.dist_mean([float(rank), 10.0 * rank]), "max": dist.dist_max(float(rank)),
               "any": dist.dist_any(rank == world - 1), "none": dist.dist_any(False),
               "objects": dist.all_gather_object({"rank": rank}),
               "broadcast": dist.broadcast_object({"rank": rank}),
               "sum_tensor": dist.all_reduce(torch.tensor([1, 2]) * (rank + 1)).tolist()}
        dist.barrier()
        out["calls"] = calls
        results[rank] = out
    finally:
        tdist.all_reduce = real
        tdist.destroy_process_group()


@pytest.mark.multiproc
@pytest.mark.parametrize("world", [1, 2])
def test_helpers_run_at_every_world_size(world):
    results = mp.Manager().dict()
    mp.spawn(_ranks, args=(world, free_port(), results), nprocs=world, join=True)
    mean = sum(range(world)) / world
    for rank in range(world):
        r = results[rank]
        assert r["mean"] == [mean, 10 * mean] and r["max"] == world - 1
        assert r["any"] is True and r["none"] is False
        assert r["objects"] == [{"rank": i} for i in range(world)]
        assert r["broadcast"] == {"rank": 0}
        assert r["sum_tensor"] == [sum(range(1, world + 1)), 2 * sum(range(1, world + 1))]
        # a collective ran at world size 1 too, on the device gloo takes
        assert r["calls"] and set(r["calls"]) == {"cpu"}, r["calls"]


def test_restore_env_puts_back_what_setup_env_changed(monkeypatch):
    """A process that ran a rank in-process and then starts the deepspeed launcher must not
    pass it LOCAL_WORLD_SIZE=1: the launcher sets LOCAL_SIZE but not LOCAL_WORLD_SIZE, which
    is read first, so every rank would call itself the node's leader."""
    env = {"PATH": "/bin", "MASTER_PORT": "1234", "TORCH_EXTENSIONS_DIR": "/mine"}
    monkeypatch.setattr(os, "environ", dict(env))
    saved = dist.setup_env(dist.DistEnv(0, 1, 0, 1, "127.0.0.1", 2345))
    assert os.environ["LOCAL_WORLD_SIZE"] == "1" and os.environ["MASTER_PORT"] == "2345"
    assert os.environ["TORCH_EXTENSIONS_DIR"] == "/mine"
    dist.restore_env(saved)
    assert os.environ == env
