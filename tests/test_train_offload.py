"""ZeRO-3 with optimizer and parameter offload, two CPU ranks through the deepspeed launcher.

zero3_offload_cpu.json is the CPU twin of the GPU zero3_offload.json. An offload
run of 6 steps (checkpoint at 3) is SIGKILLed while writing its step-6 checkpoint, then
restarted: it must resume from step 3, and every step of both parts must equal a run of the
same config without offload (zero3_cpu.json): same batches, the same loss to 1e-6. The
offloaded optimizer is the trainer's own fused torch AdamW with its two parameter groups,
which ZeRO-Offload takes only with "zero_force_ds_cpu_optimizer": false (DeepSpeedCPUAdam
made train steps no faster: bench/offload.py, bench/RESULTS.md).
"""
import json
import math

import pytest
import torch
from test_train_zero3 import DEMO, ROOT, data, launch  # noqa: F401 (data: fixture)

from longvivit.configs import resolve
from longvivit.train.config import load_run_config, resolve_ds_config

from train_support import events, step_lines

STEPS = 6  # checkpoints at 3 and 6
OFFLOAD = {"gpu": "zero3_offload.json", "cpu": "zero3_offload_cpu.json"}
RUN = [f"steps={STEPS}", f"checkpoint_every={STEPS // 2}"]


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """{"reference": zero3_cpu run dir, "offload": killed-then-resumed offload run dir, and
    the launcher output of each part}."""
    root = tmp_path_factory.mktemp("offload")
    ref, out = root / "zero3", root / "offload"
    rc, ref_output = launch(ref, data, *RUN, "ds_config=zero3_cpu.json")
    assert rc == 0, ref_output[-4000:]
    rc, killed_output = launch(out, data, *RUN, f"ds_config={OFFLOAD['cpu']}", fault=f"kill_during_save:{STEPS}")
    assert rc != 0, killed_output[-4000:]
    rc, resumed_output = launch(out, data, *RUN, f"ds_config={OFFLOAD['cpu']}")
    assert rc == 0, resumed_output[-4000:]
    return {"reference": ref, "offload": out, "killed_output": killed_output, "resumed_output": resumed_output}


@pytest.mark.multiproc
def test_each_rank_holds_half_the_parameters(runs):
    starts = events(runs["killed_output"], "start")
    assert sorted(s["rank"] for s in starts) == [0, 1]
    for s in starts:
        assert abs(s["params_local"] - s["params_total"] / 2) <= 0.01 * s["params_total"], s


@pytest.mark.multiproc
def test_offload_then_resume_steps_like_zero3_without_offload(runs):
    half = runs["offload"] / "checkpoints" / f"step{STEPS // 2:08d}"
    starts = events(runs["resumed_output"], "start")
    assert len(starts) == 2 and all(s["resumed_from"] == str(half) and s["step"] == STEPS // 2 for s in starts)
    ref = {x["step"]: x for x in step_lines(runs["reference"])}
    lines = step_lines(runs["offload"])
    assert [x["step"] for x in lines] == list(range(1, STEPS + 1)) + list(range(STEPS // 2 + 1, STEPS + 1))
    assert all(math.isfinite(x["loss"]) for x in lines)
    assert all(x["indices"] == ref[x["step"]]["indices"] for x in lines)
    worst = max(abs(x["loss"] - ref[x["step"]]["loss"]) for x in lines)
    assert worst <= 1e-6, worst
    assert lines[-1]["loss"] < lines[0]["loss"], [x["loss"] for x in lines]


@pytest.mark.multiproc
def test_offloaded_optimizer_is_the_trainers_fused_adamw(runs):
    tag = runs["offload"] / "checkpoints" / f"step{STEPS:08d}"
    model_states = torch.load(tag / "zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=False)
    zero = model_states["ds_config"]["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
    optim = torch.load(tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt", weights_only=False)
    groups = optim["optimizer_state_dict"]["optimizer_state_dict"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]  # demo.yaml's decay; norms, biases, ...
    assert all(g["fused"] and g["decoupled_weight_decay"] for g in groups)


@pytest.mark.parametrize("device", sorted(OFFLOAD))
def test_offload_ds_configs_resolve_with_the_client_optimizer_allowed(device):
    precision = "bf16" if device == "gpu" else "fp32"  # the GPU file fixes bf16; the twin follows the run
    cfg = load_run_config(DEMO, overrides=[f"ds_config={OFFLOAD[device]}", f"precision={precision}"])
    ds = resolve_ds_config(cfg, world_size=2)
    assert ds["zero_force_ds_cpu_optimizer"] is False  # else ZeRO-Offload refuses torch AdamW
    assert ds["zero_optimization"]["stage"] == 3


def offload_settings(path: str) -> tuple:
    ds = json.loads(resolve(path).read_text())
    zero = ds["zero_optimization"]
    return zero["stage"], zero["offload_optimizer"], zero["offload_param"], ds.get("zero_force_ds_cpu_optimizer")


def test_cpu_twin_offloads_what_the_gpu_config_offloads():
    assert offload_settings(OFFLOAD["cpu"]) == offload_settings(OFFLOAD["gpu"])
