"""`longvivit train CONFIG local=true`: every shipped config runs in its local form.

The local form (longvivit/train/local.py) keeps what decides whether a config works (ZeRO stage,
offload, precision, grad_accum, masking, freezing, sampling, attention, the init chain) and
shrinks only dims, frames, image size, steps and data. Unit tests check that for every
shipped YAML; multi-process tests run each one on 2 CPU ranks, and the recipe's two stages
as a chain: short_L16 from a locally built open_clip model, then long_L256 from its output.
"""
import json
from pathlib import Path

import pytest
import torch

from longvivit.train.config import load_ds_json, load_run_config
from longvivit.train.local import cpu_twin, local_path

from train_support import CONFIGS, ROOT, events, export, run, step_lines

SHIPPED = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
KEPT = ["precision", "grad_accum", "model.gather", "model.video.mask_ratio", "model.video.mask_scheme",
        "model.video.attention", "model.video.pool", "model.video.cls_token", "model.video.activation",
        "model.video.tubelet", "model.video.ln_pre", "model.video.train_stem", "model.video.mlp_ratio",
        "model.text.arch", "model.text.tokenizer", "data.sampling", "data.source", "data.flip",
        "data.text_length", "seed"]


def get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def zero(path: str) -> dict:
    z = load_ds_json(path).get("zero_optimization", {})
    return {"stage": z.get("stage", 0), "offload_optimizer": z.get("offload_optimizer", {}).get("device"),
            "offload_param": z.get("offload_param", {}).get("device")}


def test_shipped_configs_are_the_recipe():
    assert {"demo", "short_B16", "short_L16", "long_L256", "g_1b"} <= set(SHIPPED)
    short, long = load_run_config(CONFIGS / "short_L16.yaml"), load_run_config(CONFIGS / "long_L256.yaml")
    assert short.init.startswith("open_clip:") and long.init == f"checkpoint:{short.out}"
    arch = ["preset", "embed_dim", "video.tubelet", "video.width", "video.depth", "video.heads",
            "video.cls_token", "video.pool", "video.activation", "video.image_size", "text"]
    for key in arch:  # the long stage loads the short stage's weights strictly
        assert get(short.model, key) == get(long.model, key), key
    assert long.model.video.frames > short.model.video.frames and long.model.video.trainable_last_k


@pytest.mark.parametrize("name", SHIPPED)
def test_multi_node_configs_fix_the_sample_order_and_their_local_form_does_not(name, tmp_path):
    """streaming resumes an epoch on another node count only with num_canonical_nodes fixed
    (the physical node count must divide it or be a multiple of it)."""
    import re

    command = (CONFIGS / f"{name}.yaml").read_text().splitlines()[0]
    nodes = re.search(r"--nodes[= ](\d+)", command)
    cfg = load_run_config(CONFIGS / f"{name}.yaml")
    if nodes and int(nodes.group(1)) > 1:
        n, c = int(nodes.group(1)), cfg.data.canonical_nodes
        assert c > 0 and (c % n == 0 or n % c == 0), (name, n, c)
    local = load_run_config(CONFIGS / f"{name}.yaml", overrides=["local=true", f"local_dir={tmp_path}"])
    assert local.data.canonical_nodes == 0


@pytest.mark.parametrize("name", SHIPPED)
def test_local_form_keeps_what_matters_and_shrinks_the_rest(name, tmp_path):
    full = load_run_config(CONFIGS / f"{name}.yaml")
    local = load_run_config(CONFIGS / f"{name}.yaml", overrides=["local=true", f"local_dir={tmp_path}"])
    for key in KEPT:
        assert get(local, key) == get(full, key), key
    assert zero(local.ds_config) == zero(full.ds_config) and local.ds_config.endswith("_cpu.json")
    k = full.model.video.trainable_last_k
    assert local.model.video.trainable_last_k == (None if k is None else min(k, 4))
    assert bool(local.model.video.grad_checkpointing) == bool(full.model.video.grad_checkpointing)
    assert local.init.split(":")[0] == full.init.split(":")[0] and local.init.count(str(tmp_path)) == bool(full.init)
    v = local.model.video
    assert v.width == 128 and v.depth == 6 and v.frames <= 16 and v.image_size <= 32
    assert local.data.frames == v.frames and local.data.image_size == v.image_size
    assert local.data.batch_size <= 4 and local.steps <= 20 and local.data.num_workers == 0
    assert Path(local.out).parent == tmp_path
    assert [s.name for s in local.data.sources] == [s.name for s in full.data.sources]
    assert all(Path(s.shards).is_relative_to(tmp_path) for s in local.data.sources)


def test_local_form_unfixes_the_global_batch_unless_the_command_line_fixes_it(tmp_path):
    """A cluster's global batch on a laptop's ranks would mean a huge grad_accum or micro-batch."""
    fixed = {"global_batch": 4096, "global_batch_by": "batch_size"}
    local = ["local=true", f"local_dir={tmp_path}"]
    assert load_run_config(CONFIGS / "demo.yaml", fixed, overrides=local).global_batch == 0
    assert load_run_config(CONFIGS / "demo.yaml", fixed, overrides=[*local, "global_batch=8"]).global_batch == 8


@pytest.mark.parametrize("name", ["short_L16", "long_L256"])
def test_a_local_runs_stored_config_runs_as_it_is(name, tmp_path):
    """The run_config.yaml a local run stores holds the local form already applied."""
    import dataclasses

    from longvivit.config import to_dict
    from longvivit.train.trainer import resolved_yaml

    local = load_run_config(CONFIGS / f"{name}.yaml", overrides=["local=true", f"local_dir={tmp_path}"])
    (tmp_path / "stored.yaml").write_text(resolved_yaml(local))
    assert to_dict(load_run_config(tmp_path / "stored.yaml")) == to_dict(dataclasses.replace(local, local=False))


def test_command_line_keys_win_over_the_local_form(tmp_path):
    cfg = load_run_config(CONFIGS / "g_1b.yaml", overrides=["local=true", "steps=50", "model.video.frames=32",
                                                            f"local_dir={tmp_path}"])
    assert cfg.steps == 50 and cfg.model.video.frames == cfg.data.frames == 32 and cfg.model.video.width == 128


def test_local_paths_keep_run_names_so_stages_chain():
    assert local_path("runs/short_L16", "L") == "L/short_L16"
    assert local_path("/abs/runs/short_L16/", "L") == "L/short_L16"
    assert local_path("runs/x/checkpoints/step00000010", "L") == "L/x/checkpoints/step00000010"


def test_every_gpu_ds_config_has_a_cpu_twin_with_its_stage_and_offload():
    for path in sorted((ROOT / "longvivit" / "configs" / "ds").glob("*.json")):
        if path.stem.endswith("_cpu"):
            continue
        twin = cpu_twin(f"{path.name}")
        assert zero(twin) == zero(f"{path.name}"), path.name
        assert load_ds_json(twin)["bf16"]["enabled"] == "auto", twin  # precision follows the run


# ----------------------------------------------------------------------------- 2 ranks

@pytest.fixture(scope="module")
def local_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("local")


def train_local(name: str, local_dir: Path, log: Path, *overrides: str,
                env: dict | None = None) -> tuple[int, str]:
    return run(CONFIGS / f"{name}.yaml", "local=true", f"local_dir={local_dir}", *overrides, log=log, env=env)


def local_out(name: str, local_dir: Path) -> Path:
    return local_dir / Path(load_run_config(CONFIGS / f"{name}.yaml").out).name


def check_run(name: str, out: Path, rc: int, output: str, steps: int) -> Path:
    assert rc == 0, output[-4000:]
    losses = [x["loss"] for x in step_lines(out)]
    assert len(losses) == steps and all(torch.isfinite(torch.tensor(losses))), losses
    starts = events(output, "start")
    assert sorted(s["rank"] for s in starts) == [0, 1]
    stored = load_run_config(out / "run_config.yaml")
    full = load_run_config(CONFIGS / f"{name}.yaml")
    assert stored.precision == full.precision and stored.grad_accum == full.grad_accum
    if zero(full.ds_config)["stage"] == 3:  # each rank holds half the parameters
        assert all(abs(s["params_local"] - s["params_total"] / 2) <= 0.01 * s["params_total"] for s in starts)
    return out


@pytest.mark.multiproc
@pytest.mark.parametrize("name, zero1", [("demo", False), ("short_B16", False), ("g_1b", False),
                                         ("short_B16", True)])
def test_shipped_config_runs_locally_on_two_ranks(name, zero1, local_dir, tmp_path):
    """Each shipped config (g_1b: ZeRO-3, bf16, grad_accum 2, here with checkpointed blocks,
    which no shipped config needs at its own length any more but an hour of g_1b does;
    short_B16: ZeRO-2, bf16; demo: ZeRO-3 fp32), and ZeRO-1 through zero1.json's CPU twin."""
    out = tmp_path / "zero1" if zero1 else local_out(name, local_dir)
    extra = ["ds_config=zero1.json", f"out={out}"] if zero1 else []
    if name == "g_1b":
        extra.append("model.video.grad_checkpointing=4")
    rc, output = train_local(name, local_dir, tmp_path / "log", "steps=3", *extra)
    check_run(name, out, rc, output, 3)
    if zero1:
        assert load_run_config(out / "run_config.yaml").ds_config == "zero1_cpu.json"
    if name == "g_1b":
        assert load_run_config(out / "run_config.yaml").model.video.grad_checkpointing == 4


@pytest.mark.multiproc
def test_whole_batch_accumulation_and_siglip_train_on_two_ranks(local_dir, tmp_path):
    """short_B16's local form (ZeRO-2, bf16, CLIP text tower from open_clip) with
    grad_accum_loss=whole_batch over 2 micro-batches and the SigLIP loss (their equality
    to one batch is tests/test_accumulate.py's and test_train_engine.py's)."""
    out = tmp_path / "whole"
    rc, output = train_local("short_B16", local_dir, tmp_path / "log", "steps=3", "grad_accum=2",
                             "grad_accum_loss=whole_batch", "model.loss=siglip", f"out={out}")
    assert rc == 0, output[-4000:]
    losses = [x["loss"] for x in step_lines(out)]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses))), losses
    cfg = load_run_config(out / "run_config.yaml")
    assert cfg.grad_accum_loss == "whole_batch" and cfg.model.loss == "siglip"
    assert losses[-1] < losses[0]  # SigLIP from bias -10 falls fast


@pytest.mark.multiproc
def test_short_then_long_stage_chain_locally(local_dir, tmp_path):
    """short_L16 from a locally built open_clip CLIP (a tiny learning rate keeps its weights
    at the init, which is then checked: both towers and the temperature), then long_L256
    from short_L16's output: frozen blocks and the (frozen, train_stem=false) position
    tables come from stage 1."""
    from safetensors.torch import load_file

    from longvivit.model import build_model
    from longvivit.model.init import (
        load_image_tower,
        load_open_clip,
        text_part,
        text_state_from_clip,
        video_state_from_image,
    )

    rc, output = train_local("short_L16", local_dir, tmp_path / "short.log", "steps=2", "optim.lr=1e-12")
    short = check_run("short_L16", local_out("short_L16", local_dir), rc, output, 2)
    short_cfg = load_run_config(short / "run_config.yaml")
    clip_file = short_cfg.init.split(":", 1)[1]
    assert Path(clip_file).is_file() and Path(clip_file).is_relative_to(local_dir)
    model = build_model(short_cfg.model)
    clip = load_open_clip(clip_file)
    expected = {f"video.{k}": v for k, v in video_state_from_image(load_image_tower(clip_file), model.video).items()}
    expected.update({f"text.{k}": v for k, v in text_state_from_clip(text_part(clip), model.text).items()})
    expected["logit_scale"] = clip["logit_scale"].reshape(1)
    a = load_file(str(export(short, tmp_path / "short") / "model.safetensors"))
    assert short_cfg.precision == "bf16"  # DeepSpeed's fp32 master weights start from the bf16 model
    assert short_cfg.model.text.arch == "clip" and len(expected) == len(a)  # every tensor from the file
    for key, value in expected.items():
        torch.testing.assert_close(a[key], value.bfloat16().float(), atol=1e-6, rtol=0, msg=key)

    rc, output = train_local("long_L256", local_dir, tmp_path / "long.log", "steps=3")
    long = check_run("long_L256", local_out("long_L256", local_dir), rc, output, 3)
    long_cfg = load_run_config(long / "run_config.yaml")
    assert long_cfg.init == f"checkpoint:{short}"
    b = load_file(str(export(long, tmp_path / "long") / "model.safetensors"))
    frozen = long_cfg.model.video.depth - long_cfg.model.video.trainable_last_k
    assert frozen >= 2
    assert all(v.dtype == torch.float32 for v in b.values())  # frozen bf16 parameters exported as fp32
    for key in [k for k in a if k.startswith(tuple(f"video.blocks.{i}." for i in range(frozen)))]:
        assert torch.equal(a[key].bfloat16().float(), b[key]), key  # the bf16 engine holds them in bf16
    last = f"video.blocks.{long_cfg.model.video.depth - 1}.attn.qkv.weight"
    assert not torch.equal(a[last], b[last])  # the trainable blocks did train
    slices_short = short_cfg.model.video.frames // 2
    slices_long = long_cfg.model.video.frames // 2
    assert a["video.pos_embed.temporal"].shape[0] == slices_short and b["video.pos_embed.temporal"].shape[0] == slices_long
    stretched = torch.nn.functional.interpolate(a["video.pos_embed.temporal"].t()[None], size=slices_long,
                                                mode="linear")[0].t()
    torch.testing.assert_close(b["video.pos_embed.temporal"], stretched.bfloat16().float(), atol=1e-6, rtol=0)
    summary = json.loads((long / "summary.json").read_text())
    assert summary["steps"] == 3


@pytest.mark.multiproc
def test_two_runs_of_one_command_at_the_default_thread_count_are_identical(local_dir, tmp_path):
    """The demo config's local form at the demo's clip length and batch (64 frames, 16 clips
    a rank), run twice at torch's default thread count (not the tests' OMP_NUM_THREADS=1):
    the same loss at every step and the same final weights, bit for bit. (The position
    embedding's backward used to sum in thread order: here 102 of 110 weight tensors
    differed after 3 steps; after 6, losses by 5e-7 and weights by up to 2e-6.)"""
    from longvivit.train.checkpoint import find_checkpoint
    from longvivit.train.export import consolidated_state_dict

    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        rc, output = train_local("demo", local_dir, tmp_path / f"{out.name}.log", "model.video.frames=64",
                                 "data.batch_size=16", "steps=3", f"out={out}", env={"OMP_NUM_THREADS": None})
        assert rc == 0, output[-4000:]
    losses = [[x["loss"] for x in step_lines(out)] for out in outs]
    assert len(losses[0]) == 3 and losses[0] == losses[1], losses
    a, b = (consolidated_state_dict(find_checkpoint(out)) for out in outs)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
