"""A real SLURM (slurmctld, slurmd, munged from Debian's packages) on localhost for tests.

`slurm/local-cluster` installs and starts it; the fixtures give it a private state folder and
free ports, and stop it (cancelling every job first) however the tests end. `cluster` has one
node, this host; `two_node_cluster` has two, each slurmd in its own network namespace;
`binding_cluster` has one node whose tasks are bound to their CPUs (task/affinity).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCAL_CLUSTER = ROOT / "slurm" / "local-cluster"
TRAIN_SBATCH = ROOT / "slurm" / "train.sbatch"


def free_port_pair() -> int:
    """A port p with p and p + 1 free (slurmctld and slurmd)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000 and _is_free(port + 1):
            return port
    raise RuntimeError("no free pair of ports")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@dataclass
class Cluster:
    env: dict  # the environment for sbatch/squeue/scontrol (SLURM_CONF set)
    state_dir: Path

    def run(self, *args: str, check: bool = True, timeout: float = 60, env: dict | None = None,
            **kw) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env={**self.env, **(env or {})}, check=check, text=True,
                              capture_output=True, timeout=timeout, **kw)

    def sbatch(self, *args: str, env: dict | None = None) -> int:
        out = subprocess.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})},
                             cwd=ROOT, check=True, text=True, capture_output=True, timeout=60)
        return int(out.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict:
        """scontrol's view of a job as a dict of Key=Value fields."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout
        return dict(f.split("=", 1) for f in out.split() if "=" in f)

    def state(self, job_id: int) -> str:
        return self.job(job_id)["JobState"]

    def controller_log(self, job_id: int) -> str:
        """slurmctld's log lines about a job (JobId=N), for a failing test's message."""
        log = self.state_dir / "log" / "slurmctld.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        return "\n".join(l for l in lines if re.search(rf"\bJobId={job_id}\b", l))

    def wait_state(self, job_id: int, states: set[str], timeout: float) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.state(job_id)
            if state in states:
                return state
            time.sleep(1)
        raise TimeoutError(f"job {job_id} still {self.state(job_id)} after {timeout:.0f} s, "
                           f"wanted {sorted(states)}")

    def cancel_all(self) -> None:
        self.run("scancel", "--full", "--user", "root", check=False)


@contextmanager
def local_cluster(state_dir: Path, nodes: int = 1, task_plugin: str = "task/none") -> Iterator[Cluster]:
    """`slurm/local-cluster` with `nodes` nodes (more than one: one network namespace each),
    stopped (jobs, daemons, namespaces, bridge, state) however the block ends."""
    env = {**os.environ, "LONGVIVIT_SLURM_DIR": str(state_dir),
           "LONGVIVIT_SLURM_PORT": str(free_port_pair()), "LONGVIVIT_SLURM_NODES": str(nodes),
           "LONGVIVIT_SLURM_TASK_PLUGIN": task_plugin}
    c = Cluster({**env, "SLURM_CONF": str(state_dir / "slurm.conf")}, state_dir)
    try:
        start = subprocess.run([str(LOCAL_CLUSTER), "start"], env=env, timeout=900,
                               capture_output=True, text=True)
        if start.returncode != 0:
            raise RuntimeError(f"local-cluster start failed:\n{start.stdout}\n{start.stderr}")
        yield c
    finally:
        c.cancel_all()
        subprocess.run([str(LOCAL_CLUSTER), "stop"], env=env, timeout=180)
    assert not state_dir.exists()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the local SLURM daemons run as root")
    with local_cluster(tmp_path_factory.mktemp("slurm") / "cluster") as c:
        yield c


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory):
    """Nodes node1 and node2, each slurmd in its own network, UTS and mount namespace."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM daemons run as root")
    with local_cluster(tmp_path_factory.mktemp("slurm2") / "cluster", nodes=2) as c:
        yield c
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"lv{c.env['LONGVIVIT_SLURM_PORT']}-" not in namespaces  # stop removed them


@pytest.fixture(scope="module")
def binding_cluster(tmp_path_factory):
    """One node with TaskPlugin=task/affinity: each task is bound (sched_setaffinity) to the
    CPUs its step gave it, as on a production cluster."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM daemons run as root")
    with local_cluster(tmp_path_factory.mktemp("slurm-bind") / "cluster",
                       task_plugin="task/affinity") as c:
        yield c


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return rows


def events(log: Path, name: str) -> list[dict]:
    """The JSON event lines ({"event": name, ...}) a rank printed into its log."""
    found = []
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if line.startswith("{") and f'"event": "{name}"' in line:
            found.append(json.loads(line))
    return found


def dev_shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def remove_new_shm(before: set[str]) -> list[str]:
    """Delete /dev/shm entries created since `before` (a killed rank cannot); return them."""
    new = sorted(dev_shm() - before)
    for name in new:
        path = Path("/dev/shm") / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return new
