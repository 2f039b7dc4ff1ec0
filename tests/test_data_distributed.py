"""Two ranks under the real deepspeed launcher on CPU: disjoint samples covering the
epoch, and exact resume from a mid-epoch state, on the same 2 ranks and on 1 rank with
twice the per-rank batch (a resume that keeps the global batch: global_batch_by=batch_size)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from longvivit.config import load_config
from longvivit.data import DataConfig, build_loader
from longvivit.data.load.reader import clean_stale_shared_memory
from longvivit.distributed.collectives import free_port

from data_support import synth_data  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]


def run_launcher(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run the deepspeed launcher in its own process group; kill the group on failure or
    timeout so no rank outlives the test."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("LOCAL_WORLD_SIZE", None)  # the launcher does not set it: that is the point
    proc = subprocess.Popen([str(Path(sys.executable).parent / "deepspeed"), *args], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # segments a killed rank could not unlink; live ones (other jobs) are kept
        clean_stale_shared_memory()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


@pytest.mark.multiproc
def test_two_ranks_disjoint_and_exact_resume_under_deepspeed(synth_data, tmp_path):
    result = run_launcher(
        ["--num_gpus", "2", "--master_port", str(free_port()), "--no_local_rank",
         str(REPO / "tests" / "scripts" / "data_ranks.py"), "--train",
         str(synth_data["shards_all"]), "--tokenizer", str(synth_data["tokenizer"]),
         "--out", str(tmp_path)], timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # the launcher set no LOCAL_WORLD_SIZE; streaming still saw 2 ranks on this node
    assert [r["launcher_local_world_size"] for r in ranks] == [None, None]
    assert [r["ranks_per_node"] for r in ranks] == [2, 2]

    full = [r["full"] for r in ranks]
    assert not set(full[0]) & set(full[1])  # disjoint
    assert sorted(full[0] + full[1]) == list(range(16))  # covering the epoch

    assert ranks[0]["state"]["streaming"]["sample_in_epoch"] == 4  # 1 batch x 2 x 2 ranks
    for r in ranks:
        assert r["head"] + r["tail"] == r["full"]  # the rest, in the uninterrupted order
    resumed = [i for r in ranks for i in r["head"] + r["tail"]]
    assert sorted(resumed) == list(range(16))  # no repeats, none lost

    # rank 0's state (all ranks': streaming's sample_in_epoch is global) on 1 rank of batch 4
    batches = rest_on_one_rank(synth_data, ranks[0]["state"], batch_size=4)
    assert [len(b) for b in batches] == [4, 4, 4]
    assert sorted(ranks[0]["head"] + ranks[1]["head"] + sum(batches, [])) == list(range(16))


def rest_on_one_rank(synth_data, state: dict, batch_size: int) -> list[list[int]]:
    """The indices of each batch a 1-rank loader of `batch_size` (otherwise data_ranks.py's
    config) yields after loading `state`."""
    cfg = load_config(DataConfig, dict(train=str(synth_data["shards_all"]), val=str(synth_data["shards_all"]),
                                       tokenizer=str(synth_data["tokenizer"]), frames=4, image_size=24,
                                       batch_size=batch_size, num_workers=2))
    loader = build_loader(cfg, "train", torch.device("cpu"), 0, 1, training=True)
    try:
        loader.load_state_dict(state)
        return [b["index"].tolist() for b in loader]
    finally:
        loader.close()
        clean_stale_shared_memory()
