"""Run-config validation: every invalid case is one line naming the key, exit status 2,
before any process group exists (the runs below claim WORLD_SIZE=2 with no peer, so a
process group would hang instead of exiting)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from longvivit.config import ConfigError
from longvivit.train.config import keep_global_batch, load_run_config, resolve_ds_config
from longvivit.train.dist import free_port, read_env

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "train" / "configs" / "demo.yaml"


def _train(args, tmp_path, config=DEMO):
    port = free_port()
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "DS_ACCELERATOR": "cpu"}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "longvivit.train.cli", "train", str(config), f"out={out}", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert not out.exists(), "validation must fail before the output directory is made"
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    return proc


# Bad files the cases below point at ({tmp}: the test's tmp_path), written before each run.
BAD_FILES = {
    "list.yaml": "- model\n- data\n",
    "scalar.yaml": "42\n",
    "syntax.yaml": "model: {video: [\n",
    "list.json": "[1, 2]",
    "zero_string.json": '{"zero_optimization": "three"}',
    "unmarked.json": '{"zero_optimization": {"stage": 3}}',  # says neither "_accelerator": "cuda" nor "cpu"
    "garbage.pt": "not a torch file",
    "afile": "",
}
SYNTHETIC = "data.source=synthetic"  # past the data checks, to the ones after them


@pytest.mark.parametrize("args, key", [
    (["bogus_key=1"], "bogus_key"),
    (["model.video.frames=15"], "model.video.frames"),
    (["model.video.mask_ratio=1.0"], "model.video.mask_ratio"),
    (["model.video.heads=0"], "model.video.heads"),
    (["model.video.heads=-4"], "model.video.heads"),
    (["model.video.width=0"], "model.video.width"),
    (["model.video.depth=-1"], "model.video.depth"),
    (["model.text.heads=0"], "model.text.heads"),
    (["precision=fp16"], "precision"),
    (["ds_config=ds_configs/zero3.json"], "ds_config.bf16.enabled"),
    # no CUDA here: a GPU run is refused, not trained on CPUs over gloo
    (["ds_config=ds_configs/zero3.json", "precision=bf16"], "ds_config"),
    (["ds_config={tmp}/unmarked.json", "precision=bf16"], "precision"),
    (["ds_config={tmp}/list.json"], "ds_config"),
    (["ds_config={tmp}/zero_string.json"], "ds_config.zero_optimization"),
    (["data.train=/nonexistent/shards"], "data.train"),
    (["data.source=nope"], "data.source"),
    (["eval_gallery=-1"], "eval_gallery"),
    (["timeouts.data_s=-1"], "timeouts.data_s"),
    (["timeouts.collective_s=0"], "timeouts.collective_s"),
    (["timeouts.checkpoint_s=soon"], "timeouts.checkpoint_s"),
    (["global_batch=-8"], "global_batch"),
    (["global_batch_by=steps"], "global_batch_by"),
    (["global_batch=40"], "global_batch"),  # WORLD_SIZE=2 x data.batch_size=16 does not divide it
    (["global_batch=3", "global_batch_by=batch_size"], "global_batch"),  # nor grad_accum=1 x 2
    ([SYNTHETIC, "resume=/nonexistent"], "resume"),
    ([SYNTHETIC, "init=open_clip:/nonexistent/clip.pt"], "init"),
    ([SYNTHETIC, "init=open_clip:{tmp}/garbage.pt"], "init"),
    ([SYNTHETIC, "init=open_clip:{tmp}"], "init"),  # a directory
    ([SYNTHETIC, "init=checkpoint:{tmp}/garbage.pt"], "init"),
    ([SYNTHETIC, "init=checkpoint:{tmp}"], "init"),  # a directory without a checkpoint
    ([SYNTHETIC, "out={tmp}/afile"], "out"),
    ([SYNTHETIC, "out={tmp}/afile/run"], "out"),
    (["CONFIG={tmp}/list.yaml"], "config"),
    (["CONFIG={tmp}/scalar.yaml"], "config"),
    (["CONFIG={tmp}/syntax.yaml"], "config"),
])
def test_invalid_config_exits_2_naming_the_key(args, key, tmp_path):
    for name, text in BAD_FILES.items():
        (tmp_path / name).write_text(text)
    args = [a.format(tmp=tmp_path) for a in args]
    config = next((a.split("=", 1)[1] for a in args if a.startswith("CONFIG=")), DEMO)
    proc = _train([a for a in args if not a.startswith("CONFIG=")], tmp_path, config)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"longvivit train: {key}:"), lines[0]
    assert proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(BAD_FILES), "nothing created"


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


@pytest.mark.parametrize("by, world, batch, accum", [
    ("grad_accum", 1, 16, 4), ("grad_accum", 2, 16, 2), ("grad_accum", 4, 16, 1),
    ("batch_size", 1, 32, 2), ("batch_size", 2, 16, 2), ("batch_size", 4, 8, 2)])
def test_global_batch_derives_grad_accum_or_the_per_device_batch(by, world, batch, accum, tmp_path):
    """global_batch=64 (demo: data.batch_size=16; grad_accum=2 given, replaced under
    global_batch_by=grad_accum): the derived value is what the ds_config and the stored
    run config hold."""
    from longvivit.train.run import resolved_yaml

    cfg = keep_global_batch(load_run_config(DEMO, overrides=["global_batch=64", f"global_batch_by={by}",
                                                             "grad_accum=2"]), world)
    assert (cfg.data.batch_size, cfg.grad_accum) == (batch, accum)
    ds = resolve_ds_config(cfg, world)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (batch, accum)
    assert ds["train_batch_size"] == 64
    (tmp_path / "stored.yaml").write_text(resolved_yaml(cfg))  # as a checkpoint stores it
    stored = load_run_config(tmp_path / "stored.yaml")
    assert (stored.global_batch, stored.data.batch_size, stored.grad_accum) == (64, batch, accum)
    assert keep_global_batch(stored, world) == stored  # running the stored config runs the same


def test_global_batch_not_divisible_names_the_keys_and_world_size():
    cfg = load_run_config(DEMO, overrides=["global_batch=40"])  # loads: the world size is not known yet
    with pytest.raises(ConfigError, match=r"^global_batch: 40 is not a multiple of data\.batch_size=16 x "
                                          r"world_size=2 \(= 32\)"):
        keep_global_batch(cfg, 2)
    with pytest.raises(ConfigError, match=r"^global_batch: 40 is not a multiple of grad_accum=3 x world_size=2 "):
        keep_global_batch(load_run_config(DEMO, overrides=["global_batch=40", "global_batch_by=batch_size",
                                                           "grad_accum=3"]), 2)
    unfixed = load_run_config(DEMO)
    assert keep_global_batch(unfixed, 3) is unfixed  # global_batch=0: the batch follows the world size


def test_rescale_event_says_what_it_kept():
    """The rescale line's reason (train/run.py rescale_kept), from 2 ranks to 1 (the
    resumes themselves: tests/test_train_elastic.py)."""
    from longvivit.train.run import rescale_kept

    def kept(*overrides, batch, accum, global_batch):
        return rescale_kept(load_run_config(DEMO, overrides=list(overrides)), batch, accum, global_batch)

    what, why = kept(batch=[16, 16], accum=[1, 1], global_batch=[32, 16])
    assert what == "batch_per_rank" and "global batch follows the world size: 32 -> 16" in why
    what, why = kept("global_batch=32", batch=[16, 16], accum=[1, 2], global_batch=[32, 32])
    assert what == "global_batch" and why == ("the global batch (32) is kept, as global_batch= fixes it: "
                                              "grad_accum 1 -> 2 (global_batch_by=grad_accum)")
    what, why = kept("global_batch=32", "global_batch_by=batch_size", batch=[16, 32], accum=[1, 1],
                     global_batch=[32, 32])
    assert what == "global_batch" and "the per-rank batch 16 -> 32 (global_batch_by=batch_size)" in why
    _, why = kept("global_batch=64", batch=[16, 16], accum=[1, 4], global_batch=[32, 64])
    assert why.startswith("the global batch is global_batch=64 (the checkpoint's was 32): grad_accum 1 -> 4")


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
    # a lone process inside an allocation of 4 tasks a node is still alone on its node
    d = read_env({"SLURM_TASKS_PER_NODE": "4(x2)"})
    assert (d.rank, d.world_size, d.local_rank, d.local_world_size) == (0, 1, 0, 1)


def test_torch_extensions_are_cached_per_python_environment(monkeypatch):
    """DeepSpeed builds its shm_comm op at every process-group start; with one cache per
    environment another checkout's build (other paths, so other build flags) no longer
    invalidates ours. A directory the user chose is kept."""
    import sys

    from longvivit.train.dist import extensions_dir, setup_env

    # setup_env exports the rank variables too: let it write into a copy of the environment
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"})
    setup_env(read_env({}))
    assert os.environ["TORCH_EXTENSIONS_DIR"] == extensions_dir()
    monkeypatch.setattr(sys, "prefix", "/another/venv")
    assert extensions_dir() != os.environ["TORCH_EXTENSIONS_DIR"]
    os.environ["TORCH_EXTENSIONS_DIR"] = "/mine"
    setup_env(read_env({}))
    assert os.environ["TORCH_EXTENSIONS_DIR"] == "/mine"


GPU_CONFIGS = sorted(p.name for p in (ROOT / "train" / "configs").glob("*.yaml")
                     if load_run_config(p).ds_config and "_cpu" not in load_run_config(p).ds_config)


def test_the_shipped_gpu_configs_are_the_ones_we_think():
    assert {"short_B16.yaml", "short_L16.yaml", "long_L256.yaml", "g_1b.yaml"} <= set(GPU_CONFIGS)


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_a_shipped_gpu_config_is_refused_without_cuda_and_its_local_form_runs(name, tmp_path, monkeypatch):
    """Without CUDA the real form exits 2 in one line saying why (it would train on CPUs
    over gloo); its local form is the CPU form and passes that check."""
    from longvivit.train import run

    proc = _train([], tmp_path, ROOT / "train" / "configs" / name)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("longvivit train: ds_config: ds_configs/") and "is written for GPUs" in line, line
    assert "no CUDA device (this torch" in line or "finds no usable GPU" in line, line
    cfg = load_run_config(ROOT / "train" / "configs" / name, overrides=["local=true", f"local_dir={tmp_path}"])
    run.check_accelerator(cfg, torch.device("cpu"))  # no error
