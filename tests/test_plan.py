"""`longvivit plan`: activations measured on FakeTensors agree with a real CPU run, model
states follow the ZeRO paper's accounting, and the CLI's verdicts are self-consistent."""
import json

import pytest
import torch

from longvivit.cli.plan import main as plan_main
from longvivit.model import saved_bytes
from longvivit.train import plan
from longvivit.train.config import load_run_config
from longvivit.train.plan import ParamCounts, make_plan, parse_bytes, state_bytes

GiB = 2**30


def write_config(tmp_path, preset="tiny", frames=16, ratio=0.0, batch=2, extra="", precision="fp32"):
    """A run config with placeholder data paths (plan never reads the data)."""
    size = 32 if preset == "tiny" else 224
    path = tmp_path / f"{preset}_{frames}_{ratio}_{batch}.yaml"
    path.write_text(f"""
model:
  preset: {preset}
  video: {{frames: {frames}, image_size: {size}, mask_ratio: {ratio}{extra}}}
data:
  train: unused
  val: unused
  tokenizer: unused
  frames: ${{model.video.frames}}
  image_size: ${{model.video.image_size}}
  batch_size: {batch}
  text_length: 32
ds_config: zero3_cpu.json
precision: {precision}
""")
    return str(path)


def real_saved_bytes(config: str) -> int:
    """Bytes saved for backward by one training forward of the model the trainer builds,
    on real CPU tensors."""
    from longvivit.train.construct import build_for_run

    cfg = load_run_config(config)
    v, batch = cfg.model.video, cfg.data.batch_size
    model = build_for_run(cfg, resuming=False).to(plan.compute_dtype(cfg.precision)).train()
    g = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (batch, v.frames, v.image_size, v.image_size, 3), dtype=torch.uint8, generator=g)
    ids = torch.randint(1, cfg.model.text.vocab_size, (batch, cfg.data.text_length), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    return saved_bytes(lambda: model(video, ids, mask, generator=g), ignore=model.parameters())


def assert_within_10_percent(config):
    predicted = make_plan(config, [], gpus=1, gpu_mem=80 * GiB, search=False).bytes["activations"]
    measured = real_saved_bytes(config)
    print(f"{config}: plan {predicted} B, real run {measured} B, ratio {predicted / measured:.4f}")
    assert abs(predicted - measured) <= 0.10 * measured, (predicted, measured)


@pytest.mark.parametrize("frames", [16, 64])
@pytest.mark.parametrize("ratio", [0.0, 0.75])
def test_plan_activations_match_a_real_cpu_run_tiny(tmp_path, frames, ratio):
    assert_within_10_percent(write_config(tmp_path, "tiny", frames, ratio, batch=3))


@pytest.mark.parametrize("extra", [", grad_checkpointing: 2", ", trainable_last_k: 1, train_stem: false",
                                   ", attention: factorized, mask_scheme: tube"])
def test_plan_activations_match_with_checkpointing_freezing_factorized_bf16(tmp_path, extra):
    assert_within_10_percent(write_config(tmp_path, "tiny", 32, 0.5, batch=2, extra=extra, precision="bf16"))


def test_the_planner_and_the_trainer_checkpoint_the_configured_blocks(tmp_path):
    """Both build through the model's constructor, which alone applies grad_checkpointing."""
    from longvivit.config import to_dict
    from longvivit.train.construct import build_for_run

    cfg = load_run_config(write_config(tmp_path, extra=", grad_checkpointing: 2"))
    fake, _ = plan.fake_model(json.dumps(to_dict(cfg.model)), cfg.precision)
    real = build_for_run(cfg, resuming=False)
    assert fake.video.checkpointed == real.video.checkpointed == 2
    assert fake.text.checkpointed == real.text.checkpointed == 0


@pytest.mark.parametrize("frames,ratio", [
    (16, 0.75), (64, 0.75),
    pytest.param(16, 0.0, marks=pytest.mark.slow),
    pytest.param(64, 0.0, marks=pytest.mark.slow),  # 6,272 tokens through ViT-B: minutes on CPU
])
def test_plan_activations_match_a_real_cpu_run_B(tmp_path, frames, ratio):
    assert_within_10_percent(write_config(tmp_path, "B", frames, ratio, batch=1))


def test_model_states_follow_the_zero_paper():
    n, N = ParamCounts(total=8000, trainable=8000, persistent=0, persistent_trainable=0), 8
    zero = plan.zero_settings({"zero_optimization": {"stage": 0}})
    expected = {0: (2, 2, 12), 1: (2, 2, 12 / N), 2: (2, 2 / N, 12 / N), 3: (2 / N, 2 / N, 12 / N)}
    for stage, (p, g, o) in expected.items():
        zero["stage"] = stage
        b = state_bytes(n, "bf16", zero, N)
        assert (b["params"], b["grads"], b["optimizer"]) == (p * 8000, g * 8000, o * 8000), stage
    zero["stage"] = 0
    b = state_bytes(n, "fp32", zero, N)
    assert (b["params"], b["grads"], b["optimizer"]) == (4 * 8000, 4 * 8000, 8 * 8000)


def test_frozen_persistent_and_offloaded_bytes():
    n = ParamCounts(total=10_000, trainable=1_000, persistent=800, persistent_trainable=100)
    zero = plan.zero_settings({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}})
    b = state_bytes(n, "bf16", zero, 4)
    assert b["params"] == 2 * (800 + 9_200 / 4)  # small parameters stay whole on every GPU
    assert b["grads"] == 2 * 1_000 / 4  # frozen parameters have no gradient
    assert b["optimizer"] == 0 and b["host"] == 12 * 1_000 / 4


def test_zero_stage_and_offload_read_from_the_ds_config():
    z = plan.zero_settings(json.loads(open(plan.repo_path("zero3_offload.json")).read()))
    assert (z["stage"], z["offload_optimizer"], z["offload_param"]) == (3, True, True)
    assert z["stage3_param_persistence_threshold"] == 100_000


def test_parse_bytes():
    assert parse_bytes("80GiB") == 80 * GiB
    assert parse_bytes("16GB") == 16 * 10**9
    assert parse_bytes("1.5 GiB") == int(1.5 * GiB)
    with pytest.raises(plan.ConfigError):
        parse_bytes("lots")


def test_cli_prints_a_table_then_one_json_line_and_its_limits_are_tight(tmp_path, capsys):
    config = write_config(tmp_path, "tiny", 16, 0.5, batch=4)
    assert plan_main([config, "--gpus", "2", "--gpu-mem", "1.5GiB"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("total") for line in out)
    result = json.loads(out[-1])
    for key in ("params", "bytes", "total", "gpu_mem", "fits", "max_micro_batch", "max_frames"):
        assert key in result, key
    for part in ("params", "grads", "optimizer", "activations"):
        assert result["bytes"][part] > 0, part
    assert result["total"] == pytest.approx(sum(result["bytes"].values()), abs=10)
    assert result["fits"] and result["gpu_mem"] == int(1.5 * GiB)

    at = lambda *o: make_plan(config, list(o), gpus=2, gpu_mem=int(1.5 * GiB), search=False)  # noqa: E731
    b, f = result["max_micro_batch"], result["max_frames"]
    assert at(f"data.batch_size={b}").fits and not at(f"data.batch_size={b + 1}").fits
    # the search measured each frame count on the configured model (positions interpolated);
    # a model built for that many frames differs by its temporal table only
    assert at(f"model.video.frames={f}").total <= 1.001 * result["gpu_mem"]
    assert not at(f"model.video.frames={f + 4}").fits


def test_plan_recommends_the_fewest_checkpointed_blocks_that_fit(tmp_path):
    config = write_config(tmp_path, "tiny", 32, 0.5, batch=4, extra=", depth: 8, grad_checkpointing: 8")
    at = lambda k, mem=80 * GiB: make_plan(config, [f"model.video.grad_checkpointing={k}"], 1, mem,  # noqa: E731
                                           search=False).total
    totals = [at(k) for k in range(9)]
    # the shape the search relies on: one block costs more than none, then each one less
    assert totals[1] > totals[0] and all(a > b for a, b in zip(totals[1:], totals[2:])), totals
    assert make_plan(config, [], 1, 80 * GiB).min_grad_checkpointing == 0  # ample memory: none

    budget = (totals[5] + totals[6]) // 2  # 6 checkpointed blocks fit, 5 do not
    p = make_plan(config, [], 1, budget)
    assert p.min_grad_checkpointing == 6 and p.grad_checkpointing == 8 and p.fits
    assert "fewest checkpointed video blocks that fit (micro-batch 4, 32 frames): 6" in plan.table(p)
    assert make_plan(config, [], 1, totals[8] - 1).min_grad_checkpointing is None  # not even all


def test_masking_lets_more_frames_fit(tmp_path):
    budget = int(1.5 * GiB)
    frames = {r: make_plan(write_config(tmp_path, "tiny", 16, r, batch=4), [], 1, budget).max_frames
              for r in (0.0, 0.75)}
    assert frames[0.75] > 3 * frames[0.0], frames


def test_sequence_parallelism_lets_more_frames_fit(tmp_path, capsys):
    """parallel.sequence=8 on 8 GPUs: each holds 1/8 of a clip's tokens (the text tower and
    the model states stay), so several times the frames fit."""
    config = write_config(tmp_path, "tiny", 16, 0.75, batch=4, extra=", heads: 8")
    budget = "3GiB"  # 1 GiB of it the CUDA context reserve
    assert plan_main([config, "--gpus", "8", "--gpu-mem", budget]) == 0
    alone = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plan_main([config, "parallel.sequence=8", "--gpus", "8", "--gpu-mem", budget]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    split = json.loads(out[-1])
    assert "each clip over 8 of them (parallel.sequence)" in out[1], out[1]
    assert (alone["sequence"], split["sequence"]) == (1, 8)
    print(f"frames that fit: {alone['max_frames']} alone, {split['max_frames']} over 8 GPUs per clip; activations "
          f"{alone['bytes']['activations']} B, {split['bytes']['activations']} B")
    # measured 8252 -> 30416 frames; the text tower's activations, the same on every rank, stay
    assert split["max_frames"] > 3 * alone["max_frames"], (alone["max_frames"], split["max_frames"])
    assert split["bytes"]["activations"] < alone["bytes"]["activations"] / 2
    assert split["bytes"]["params"] == alone["bytes"]["params"]  # ZeRO-3 over all 8 either way


def test_cli_refuses_a_bad_config_in_one_line_and_names_overrides_it_ignores(tmp_path, capsys):
    config = write_config(tmp_path, "tiny", 16, 0.5, batch=4)
    assert plan_main([config, "model.video.width=0"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("longvivit plan: model.video.width: 0 must be > 0")
    assert len(captured.err.strip().splitlines()) == 1
    p = make_plan(config, ["steps=5", "optim.lr=0.1", "data.batch_size=2", "model.video.mask_ratio=0.25",
                           "local_dir=x"], gpus=1, gpu_mem=GiB, search=False)
    assert p.ignored == ["steps", "optim.lr", "local_dir"]
    assert "ignored (no effect on memory): steps, optim.lr, local_dir" in plan.table(p).splitlines()
    assert make_plan(config, [], gpus=1, gpu_mem=GiB, search=False).ignored == []
    # global_batch_by=batch_size: the micro-batch on 2 GPUs is derived from the global batch (not 4)
    fixed = make_plan(config, ["global_batch=4", "global_batch_by=batch_size"], gpus=2, gpu_mem=GiB, search=False)
    assert fixed.micro_batch == 2 and fixed.ignored == []


def _ds(tmp_path, name: str, **entries) -> str:
    """A CPU ZeRO-3 ds_config with `entries` on top (zero=... replaces zero_optimization's)."""
    zero = {"stage": 3, **entries.pop("zero", {})}
    path = tmp_path / name
    path.write_text(json.dumps({"_accelerator": "cpu", "zero_optimization": zero, **entries}))
    return f"ds_config={path}"


@pytest.mark.parametrize("argv, key, words", [
    (["{latin1}"], "config", "not UTF-8 text (byte 0xe9 at offset 34)"),
    (["{empty}"], "config", "is empty"),
    (["{comments}"], "config", "is empty"),
    (["{tmp}/none.yaml"], "config", "no such file"),
    (["{config}", "{threshold_string}"], "ds_config.zero_optimization.stage3_param_persistence_threshold", "'lots'"),
    (["{config}", "{threshold_fraction}"], "ds_config.zero_optimization.stage3_param_persistence_threshold", "1.5"),
    (["{config}", "{offload_string}"], "ds_config.zero_optimization.offload_optimizer", "'cpu'"),
    (["{config}", "{zero_unknown}"], "ds_config.zero_optimization.stage3_bogus_bucket", "Extra inputs"),
    (["{config}", "{print_often}"], "ds_config.steps_per_print", "'often'"),
    (["{config}", "{top_unknown}"], "ds_config.bogus_top_key", "not a key DeepSpeed"),
    (["{config}", "model.video=5"], "model.video", "is not a mapping"),
    (["{config}", "seed=-1"], "seed", ""),
    (["{config}", "--gpu-mem", "0"], "--gpu-mem", "'0' is no memory"),
    (["{config}", "--gpu-mem", "0GiB"], "--gpu-mem", "is no memory"),
    (["{config}", "--gpu-mem", "0.1"], "--gpu-mem", "is no memory"),  # rounds to no byte
    (["{config}", "--gpu-mem", "lots"], "--gpu-mem", "cannot read 'lots'"),
    (["{config}", "--gpu-mem", "-5GiB"], "argument --gpu-mem", "expected one argument"),
    (["{config}", "parallel.sequence=2", "--gpus", "3"], "parallel.sequence", "does not divide the world size 3"),
    (["{config}", "parallel.sequence=3"], "parallel.sequence", "does not divide model.video.heads=4"),
    (["{config}", "--gpus", "0"], "--gpus", "must be >= 1"),
    (["{config}", "--gpus", "-2"], "--gpus", "must be >= 1"),
    (["{config}", "--gpus", "x"], "argument --gpus", "invalid int value"),
])
def test_bad_input_exits_2_in_one_line_naming_it(argv, key, words, tmp_path, capfd):
    """Every bad input is one line on stderr naming it, exit 2, no traceback and no output
    (a DeepSpeed log line aside: its first import may say which accelerator it found)."""
    files = {"config": write_config(tmp_path), "latin1": tmp_path / "latin1.yaml", "empty": tmp_path / "empty.yaml",
             "comments": tmp_path / "comments.yaml", "tmp": tmp_path,
             "threshold_string": _ds(tmp_path, "t1.json", zero={"stage3_param_persistence_threshold": "lots"}),
             "threshold_fraction": _ds(tmp_path, "t2.json", zero={"stage3_param_persistence_threshold": 1.5}),
             "offload_string": _ds(tmp_path, "o.json", zero={"offload_optimizer": "cpu"}),
             "zero_unknown": _ds(tmp_path, "z.json", zero={"stage3_bogus_bucket": 10}),
             "print_often": _ds(tmp_path, "p.json", steps_per_print="often"),
             "top_unknown": _ds(tmp_path, "k.json", bogus_top_key=1)}
    (tmp_path / "latin1.yaml").write_bytes(b'model:\n  preset: tiny\n  note: "caf\xe9"\n')
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "comments.yaml").write_text("# nothing here\n")
    before = sorted(tmp_path.iterdir())
    capfd.readouterr()
    try:
        status = plan_main([a.format(**files) for a in argv])
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    out, err = capfd.readouterr()
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"longvivit plan: {key}") and words in lines[0], lines[0]
    assert all("[WARNING]" in line for line in out.splitlines()), out
    assert sorted(tmp_path.iterdir()) == before


def test_auto_zero_entries_plan_with_deepspeeds_defaults():
    """DeepSpeed reads a zero_optimization entry of "auto" as its default; so does the plan."""
    zero = plan.zero_settings({"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto",
                                                     "stage3_param_persistence_threshold": "auto"}})
    assert zero["reduce_bucket_size"] == plan.DS_DEFAULTS["reduce_bucket_size"]
    assert zero["stage3_param_persistence_threshold"] == plan.DS_DEFAULTS["stage3_param_persistence_threshold"]
