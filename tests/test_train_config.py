"""Run-config validation: every invalid case is one line naming the key, exit status 2,
before any process group exists (the runs below claim WORLD_SIZE=2 with no peer, so a
process group would hang instead of exiting)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from longvivit.model.config import ConfigError
from longvivit.train.config import load_run_config, resolve_ds_config
from longvivit.train.dist import free_port, read_env

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "train" / "configs" / "demo.yaml"


def _train(args, tmp_path):
    port = free_port()
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "DS_ACCELERATOR": "cpu"}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "longvivit.train.cli", "train", str(DEMO), f"out={out}", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert not out.exists(), "validation must fail before the output directory is made"
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    return proc


@pytest.mark.parametrize("args, key", [
    (["bogus_key=1"], "bogus_key"),
    (["model.video.frames=15"], "model.video.frames"),
    (["model.video.mask_ratio=1.0"], "model.video.mask_ratio"),
    (["precision=fp16"], "precision"),
    (["ds_config=ds_configs/zero3.json"], "ds_config.bf16.enabled"),
    (["data.train=/nonexistent/shards"], "data.train"),
    (["data.source=synthetic", "init=open_clip:/nonexistent/clip.pt"], "init"),
    (["data.source=nope"], "data.source"),
])
def test_invalid_config_exits_2_naming_the_key(args, key, tmp_path):
    proc = _train(args, tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"longvivit train: {key}:"), lines[0]
    assert proc.stdout == ""


def test_ds_config_disagreement_names_the_key(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 3}}))
    proc = _train([f"ds_config={ds}"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("longvivit train: ds_config.train_micro_batch_size_per_gpu: 4 ")
    assert "data.batch_size=16" in proc.stderr


def test_ds_config_auto_filled_and_validated():
    cfg = load_run_config(DEMO, overrides=["data.batch_size=3", "grad_accum=2", "optim.clip=0.5"])
    ds = resolve_ds_config(cfg, world_size=2)
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 2
    assert ds["train_batch_size"] == 12 and ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False
    assert "_comment" not in ds
    bf16 = resolve_ds_config(load_run_config(DEMO, overrides=["precision=bf16"]), world_size=1)
    assert bf16["bf16"]["enabled"] is True


def test_presets_and_interpolation():
    cfg = load_run_config(DEMO, overrides=["model.video.frames=32"])
    assert cfg.model.preset == "tiny" and cfg.model.video.width == 128
    assert cfg.data.frames == 32  # data.frames follows model.video.frames
    with pytest.raises(ConfigError, match=r"^model\.preset: 'nope'"):
        load_run_config(DEMO, overrides=["model.preset=nope"])
    with pytest.raises(ConfigError, match=r"^data\.frames: 8 differs"):
        load_run_config(DEMO, overrides=["data.frames=8"])
    for name in ("short_B16", "short_L16", "long_L256", "g_1b"):
        text = (ROOT / "train" / "configs" / f"{name}.yaml").read_text()
        assert text.startswith("# sbatch ") or text.startswith("# longvivit ")
        load_run_config(ROOT / "train" / "configs" / f"{name}.yaml")


def test_rank_from_env():
    d = read_env({"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                  "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "MASTER_ADDR": "node1", "MASTER_PORT": "1234"})
    assert (d.rank, d.world_size, d.local_rank, d.local_world_size) == (3, 8, 1, 4)
    assert (d.master_addr, d.master_port) == ("node1", 1234)
    d = read_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_SIZE": "2"})
    assert (d.rank, d.world_size, d.local_rank, d.local_world_size, d.master_port) == (1, 2, 1, 2, 29500)
    assert read_env({}).world_size == 1
