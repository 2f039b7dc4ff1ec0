"""The GPU acceptance suite's CPU-side logic (bench/gpu.py): kernel classification, run and
resume comparison, plan-vs-measured rows, MFU medians, PSNR, skip and error records, the
JSON it writes; the bf16-vs-fp32 and profiler paths on the tiny model on CPU; the training
cell runner on its CPU twin; and that `python bench/gpu.py` and `make gpu-check` on a
machine without CUDA skip and exit 0.

The sections for what ships, as far as a CPU goes: the shipped configs derived from
train/configs and their one-GPU runs valid real forms; cells taking turns; the sync
counter's attribution (with a stand-in for set_sync_debug_mode, which needs CUDA); the
shipped, shipped-model, data-wait and two-GPU checks end to end on their CPU twins (gloo,
DALI's CPU decoder), and their rendering."""
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import gpu  # noqa: E402
from data_support import synth_data  # noqa: E402,F401 -- a pytest fixture

CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")


@pytest.mark.parametrize("name,kind", [
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4, false, false, "
     "cutlass::bfloat16_t>, false, false>(Flash_fwd_params)", "flash"),
    ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<...>(Flash_bwd_params)", "flash"),
    ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<...>::Params)",
     "efficient"),
    ("fmha_cutlassB_bf16_aligned_64x64_k64_sm80(PyTorchMemEffAttention::AttentionBackwardKernel<...>)",
     "efficient"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64_4x1x1_kernel0_0", "cudnn"),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, c10::BFloat16, float>(...)", "math"),
    ("void (anonymous namespace)::softmax_warp_backward<c10::BFloat16, c10::BFloat16, float, 11>(...)", "math"),
    ("aten::_scaled_dot_product_flash_attention", "flash"),
    ("aten::_scaled_dot_product_efficient_attention", "efficient"),
    ("aten::_scaled_dot_product_cudnn_attention", "cudnn"),
    ("aten::_scaled_dot_product_attention_math", "math"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_kernel", None),
    ("cudnn::fused_conv3d_fprop_kernel", None),  # cuDNN, but a convolution
    ("aten::scaled_dot_product_attention", None),  # the dispatcher, not an implementation
])
def test_attention_backend_from_kernel_and_op_names(name, kind):
    assert gpu.attention_backend(name) == kind


def test_classify_counts_times_and_keeps_a_few_names():
    events = [("fmha_cutlassF_a", 10.0), ("fmha_cutlassB_b", 30.0), ("gemm", 99.0), ("fmha_cutlassF_a", 5.0)]
    assert gpu.classify(events) == {"efficient": {"count": 3, "time_us": 45.0,
                                                  "names": ["fmha_cutlassF_a", "fmha_cutlassB_b"]}}
    record = gpu.attention_record(1568, events + [("cunn_SoftMaxForward", 1.0)], [], {})
    assert record["fused"] and record["math"]  # both kinds ran: the test on the GPU fails it


def steps(losses, indices=None):
    return [{"step": i + 1, "loss": x, "indices": (indices or {}).get(i + 1, [i])} for i, x in enumerate(losses)]


def test_compare_runs_exact_close_and_broken():
    ref = steps([2.0, 1.5, 1.25])
    same = gpu.compare_runs(ref, steps([2.0, 1.5, 1.25]))
    assert same["exact"] and same["indices_equal"] and same["finite"] and same["max_abs_diff"] == 0
    close = gpu.compare_runs(ref, steps([2.0, 1.5, 1.25 + 1e-4]))
    assert not close["exact"] and close["max_abs_diff"] == pytest.approx(1e-4)
    assert close["max_rel_diff"] == pytest.approx(1e-4 / 1.25) and close["max_rel_diff"] <= gpu.RESUME_RTOL
    moved = gpu.compare_runs(ref, steps([2.0, 1.5, 1.25], indices={3: [7]}))
    assert not moved["indices_equal"]
    broken = gpu.compare_runs(ref, steps([2.0, float("nan")]))
    assert not broken["finite"] and broken["steps_resumed"] == [1, 2]
    nothing = gpu.compare_runs(ref, [])
    assert not nothing["exact"] and not nothing["indices_equal"] and math.isnan(nothing["max_rel_diff"])


def test_backend_read_from_the_start_line():
    line = '{"event": "start", "rank": 0, "backend": "nccl", "device": "cuda:0"}'
    assert gpu.start_backend(f"[INFO] setting up\n{line}\n{{\"event\": \"done\"}}\n") == "nccl"
    assert gpu.start_backend("Traceback: died before the start line") is None


def test_memory_row_compares_the_allocated_parts_and_leaves_reserve_out():
    cell = gpu.MEMORY_CELLS[1]
    parts = {"params": 100, "grads": 100, "optimizer": 600, "activations": 200, "reserve": 10_000}
    result = {"peak_bytes": 1050.0, "peak_bytes_after_setup": 900.0, "peak_reserved_bytes": 1300, "backend": "nccl"}
    row = gpu.memory_row(cell, parts, result)
    assert row["predicted_allocated"] == 1000 and row["plan_total"] == 11_000
    assert row["predicted_over_measured"] == pytest.approx(1000 / 1050) and row["within"]
    assert not gpu.memory_row(cell, parts, {**result, "peak_bytes": 1200.0})["within"]  # 200 > 10% of 1200
    failed = gpu.memory_row(cell, parts, {"error": "exit status 1", "output": "boom"})
    assert failed["error"] == "exit status 1" and "within" not in failed


def test_mfu_medians_leave_the_warmup_steps_out():
    lines = [{"step": s, "mfu": m, "tflops": m * 1000, "samples_per_s": 8 / t}
             for s, m, t in [(1, 0.01, 9.0), (2, 0.02, 5.0), (3, 0.10, 1.0), (4, 0.30, 0.2), (5, 0.40, 0.1),
                             (6, 0.35, 0.3)]]
    med = gpu.median_after_warmup(lines, warmup=3, batch=8)
    assert med["steps_measured"] == 3 and med["mfu_median"] == 0.35 and med["tflops_median"] == 350
    assert med["step_s_median"] == pytest.approx(0.2) and med["mfu_per_step"] == [0.30, 0.40, 0.35]
    cell = gpu.MFU_CELLS[0]
    row = gpu.mfu_row(cell, {"train": lines, "peak_tflops": 1000.0}, measured_peak=700.0)
    assert row["mfu_vs_matmul"] == pytest.approx(350 / 700) and row["peak_tflops"] == 1000.0
    assert gpu.median_after_warmup(lines[:3], warmup=3, batch=8) == {"steps_measured": 0}


def test_psnr():
    a = torch.zeros(4, 4, 3, dtype=torch.uint8).numpy()
    assert gpu.psnr(a, a) == math.inf
    b = a.copy()
    b[0, 0, 0] = 255  # mse = 255^2 / 48
    assert gpu.psnr(a, b) == pytest.approx(10 * math.log10(48))


def test_cells_are_distinct_and_their_overrides_name_the_cell():
    assert len({c.name for c in gpu.MEMORY_CELLS}) == len(gpu.MEMORY_CELLS)
    o = gpu.Cell("L", 256, 0.75, 2, 13).overrides()
    assert {"model.preset=L", "model.video.frames=256", "model.video.mask_ratio=0.75", "data.batch_size=2",
            "steps=13", "precision=bf16", "data.source=synthetic"} <= set(o)
    assert all(c.steps == gpu.TIMED_STEPS for c in gpu.MFU_CELLS)


def test_every_cell_is_a_valid_run_config():
    """The overrides the GPU processes get pass the trainer's own config checks here."""
    from longvivit.train.config import load_run_config, resolve_ds_config

    for cell in [gpu.TRAINER_CELL, *gpu.MEMORY_CELLS, *gpu.COMPILE_CELLS]:
        cfg = load_run_config(gpu.DEMO, overrides=cell.overrides())
        assert (cfg.model.preset, cfg.data.frames, cfg.data.image_size) == (cell.preset, cell.frames, 224)
        assert cfg.model.compile == cell.compiled
        assert resolve_ds_config(cfg, 1)["bf16"]["enabled"]


def test_missing_modules_and_decode_skip_record(monkeypatch, tmp_path):
    assert gpu.missing_modules(["json", "no_such_module_xyz", "nvidia_nope.dali"]) == \
        ["no_such_module_xyz", "nvidia_nope.dali"]
    monkeypatch.setattr(gpu, "DECODE_NEEDS", ("json", "no_such_module_xyz"))
    record = gpu.check_decode(tmp_path)
    assert record == {"skipped": record["skipped"]} and record["skipped"].startswith("no_such_module_xyz ")


def fake_machine():
    return {"date": "2026-01-01T00:00:00+00:00", "nproc": 16, "cpu": "Fake CPU", "torch_threads": 8,
            "load_avg_1m": 0.1, "python": "3.12.0", "torch": "2.11.0", "deepspeed": "0.19.8",
            "transformers": "4.0", "cuda": "13.0", "nccl": "2.27.7", "gpu": "NVIDIA FAKE-GPU",
            "gpu_memory_gib": 139.8, "compute_capability": "9.0", "nvidia.dali": "not installed",
            "av": "not installed", "streaming": "0.13.0"}


def test_run_check_writes_one_json_per_check_and_the_summary(monkeypatch, tmp_path):
    def boom(work):
        raise RuntimeError("no kernel image")

    monkeypatch.setattr(gpu, "gpu_machine", fake_machine)
    monkeypatch.setitem(gpu.CHECKS, "attention", lambda work: {"tokens": 3})
    monkeypatch.setitem(gpu.CHECKS, "trainer", boom)
    ok, bad = gpu.run_check("attention", tmp_path), gpu.run_check("trainer", tmp_path)
    assert ok["check"] == "attention" and ok["tokens"] == 3 and ok["wall_s"] >= 0 and "command" in ok
    assert bad["error"] == "RuntimeError: no kernel image" and "boom" in bad["traceback"]
    on_disk = json.loads((tmp_path / "trainer.json").read_text())
    assert on_disk == bad and len((tmp_path / "trainer.json").read_text().splitlines()) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["machine"]["gpu"] == "NVIDIA FAKE-GPU"
    assert {k: v["status"] for k, v in summary["checks"].items()} == {"attention": "measured", "trainer": "error"}


def test_bf16_against_fp32_and_the_profiler_on_the_tiny_tower_on_cpu(monkeypatch, tmp_path):
    """The attention check's own code on CPU (no CUDA kernels: the aten ops say which SDPA ran)."""
    monkeypatch.setattr(gpu, "ATTENTION_CELL", dict(preset="tiny", frames=8, image_size=32, batch=2))
    r = gpu.check_attention(tmp_path, torch.device("cpu"))
    assert r["kernels"] == {} and not r["fused"] and "flash" in r["ops"]  # CPU's flash SDPA
    a = r["bf16_vs_fp32"]
    assert a["embedding_cosine_min"] >= gpu.EMBED_COSINE_MIN and a["grad_cosine"] >= gpu.GRAD_COSINE_MIN
    assert a["grad_norm_rel_diff"] <= gpu.GRAD_NORM_RTOL and a["grad_norm_fp32"] > 0


def test_a_training_cell_runs_the_trainers_own_loop_in_a_child_process(monkeypatch, tmp_path):
    """The cell runner (validate, setup, loop of longvivit.train.trainer) on its CPU twin: tiny
    model, ZeRO-3 over gloo, fp32; it logs what the MFU and memory rows read."""
    cpu_cells(monkeypatch)
    cell = gpu.Cell("tiny", 8, 0.5, 2, steps=gpu.WARMUP_STEPS + 1, timed=True)
    result = gpu.cell_results([cell], tmp_path)[cell]
    assert "error" not in result, result.get("output")
    assert result["backend"] == "gloo" and result["steps"] == cell.steps and result["peak_bytes"] > 0
    assert [x["step"] for x in result["train"]] == list(range(1, cell.steps + 1))
    row = gpu.mfu_row(cell, result, measured_peak=1.0)
    assert row["steps_measured"] == 1 and row["mfu_median"] > 0
    assert gpu.memory_row(cell, {"params": 1, "reserve": 1}, result)["measured_peak"] == result["peak_bytes"]


def cpu_cells(monkeypatch) -> None:
    """The training cells' CPU twin: tiny model at 32 px, ZeRO-3 over gloo, fp32."""
    cpu_base = [o for o in gpu.BASE if not o.startswith(("ds_config=", "precision=", "model.video.image_size="))]
    monkeypatch.setattr(gpu, "BASE", [*cpu_base, f"ds_config={ROOT / 'longvivit' / 'configs' / 'ds' / 'zero3_cpu.json'}",
                                      "precision=fp32", "model.video.image_size=32"])
    monkeypatch.setattr(gpu, "_CELL_RESULTS", {})
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_the_compile_check_on_its_cpu_twin(monkeypatch, tmp_path):
    """check_compile on tiny cells in fp32: both cells train through the trainer's loop, the
    compiled one with model.compile=true, and their losses agree as tests/test_train_compile.py
    requires on 2 ranks; the ratios and the rendering come from the record."""
    import report

    cpu_cells(monkeypatch)
    eager = gpu.Cell("tiny", 8, 0.5, 2, steps=gpu.WARMUP_STEPS + 2, timed=True)
    r = gpu.check_compile(tmp_path, [eager, dataclasses.replace(eager, compiled=True)])
    for name, row in r["rows"].items():
        assert "error" not in row, (name, row.get("output"))
        assert row["steps_measured"] == 2 and row["mfu_median"] > 0 and row["first_step_s"] > 0
    assert r["losses"]["compiled"] == pytest.approx(r["losses"]["eager"], abs=1e-5, rel=0)
    assert r["mfu_ratio"] == r["rows"]["compiled"]["mfu_median"] / r["rows"]["eager"]["mfu_median"]
    text = "\n".join(report.gpu_compile(r))
    assert f"MFU {r['mfu_ratio']:.3f}x" in text and "tiny8f50c" in text, text


@CPU_ONLY
def test_bench_gpu_without_cuda_says_it_skipped_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["skipped"] == gpu.NO_CUDA and not out.exists()


@CPU_ONLY
def test_make_gpu_check_without_cuda_skips_and_exits_zero(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["make", "-s", "-C", str(ROOT), "gpu-check", f"GPU_OUT={out}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "skipped" in proc.stdout and gpu.NO_CUDA in proc.stdout and "passed" not in proc.stdout
    assert not out.exists()


# ---------------------------------------------------------------------------- the new sections on CPU

SHIPPED = ["g_1b", "long_L256", "short_B16", "short_L16"]


def test_shipped_configs_are_the_gpu_configs_of_train_configs():
    """Derived from the files: every train/configs YAML whose ds_config is written for CUDA."""
    from longvivit.train.config import load_ds_json, load_run_config

    names = [p.stem for p in gpu.shipped_configs()]
    assert names == SHIPPED
    for path in gpu.CONFIGS.glob("*.yaml"):
        meant = load_ds_json(load_run_config(path).ds_config).get("_accelerator", "cuda")
        assert (path.stem in names) == (meant == "cuda"), path.name


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_run_is_the_real_form_at_a_reduced_batch(name, tmp_path):
    """The overrides change the data source, batch sizes, steps, logging and an init file
    that is not here, nothing else; the run config they give passes the trainer's checks
    that do not need a GPU, and the planner takes it."""
    from longvivit.train import trainer as run
    from longvivit.train.config import check_data, load_run_config, resolve_ds_config

    config = gpu.CONFIGS / f"{name}.yaml"
    overrides, init = gpu.shipped_overrides(config, tmp_path)
    shipped, cfg = load_run_config(config), load_run_config(config, overrides=overrides)
    assert cfg.model == shipped.model and not cfg.local
    assert (cfg.ds_config, cfg.precision, cfg.grad_accum, cfg.data.frames, cfg.data.sampling) == \
        (shipped.ds_config, shipped.precision, shipped.grad_accum, shipped.data.frames, shipped.data.sampling)
    assert cfg.data.source == "synthetic" and cfg.data.batch_size == gpu.SHIPPED_BATCH
    assert cfg.steps == gpu.SHIPPED_STEPS and cfg.log_every == 1 and cfg.checkpoint_every == cfg.eval_every == 0
    images = [(s.name, s.weight, s.batch_size) for s in cfg.data.sources if s.kind == "image"]
    assert images == [(s.name, s.weight, gpu.SHIPPED_IMAGE_BATCH) for s in shipped.data.sources if s.kind == "image"]
    assert init["shipped"] == shipped.init and cfg.init == init["ran"]
    kind, _, path = shipped.init.partition(":")
    if shipped.init and Path(path).exists():  # kept, made absolute (the run's working dir is elsewhere)
        assert cfg.init == f"{kind}:{Path(path).resolve()}"
    elif kind == "open_clip":  # open_clip is installed here: the same load, random weights
        assert cfg.init.startswith(f"open_clip:{tmp_path / gpu.MADE_HERE}")
    elif shipped.init:
        assert cfg.init == "" and "random weights" in init["why"]
    ds = resolve_ds_config(cfg, 1)
    assert ds["train_micro_batch_size_per_gpu"] == gpu.SHIPPED_BATCH and ds["bf16"]["enabled"]
    check_data(cfg)
    run.check_tokenizer(cfg)
    plan = gpu.shipped_plan(config, overrides, 80 * 2**30)
    assert "error" not in plan and plan["total"] > plan["allocated"] > 0


def test_the_open_clip_file_a_shipped_run_needs_is_made_before_validation(tmp_path):
    from longvivit.train import trainer as run
    from longvivit.train.config import load_run_config

    config = gpu.CONFIGS / "short_B16.yaml"
    overrides, _ = gpu.shipped_overrides(config, tmp_path)
    gpu.make_init_file(config, overrides)
    cfg = load_run_config(config, overrides=overrides)
    assert (tmp_path / gpu.MADE_HERE / "ViT-B-16.pt").is_file()
    run.check_init(cfg)  # the trainer reads it as an open_clip file


def sync_from(module: str, outer: str | None = None) -> None:
    """What a synchronizing CUDA call in a line of `module` raises under
    set_sync_debug_mode("warn") (torch's C++ op leaves no Python frame of its own); outer:
    the module that called that one."""
    scope = {"__name__": module, "message": gpu.SYNC_WARNING + " (Triggered internally at CUDAFunctions.cpp:1.)"}
    exec(compile("import warnings\ndef op():\n    warnings.warn(message, UserWarning)\n", module, "exec"), scope)
    if outer is None:
        return scope["op"]()
    caller = {"__name__": outer, "op": scope["op"]}
    exec(compile("def call():\n    op()\n", outer, "exec"), caller)
    caller["call"]()


def test_the_sync_counter_records_each_sync_with_its_origin():
    import warnings

    modes = []
    with warnings.catch_warnings(record=True) as other:
        warnings.simplefilter("always")
        with gpu.SyncCounter(set_mode=modes.append) as counter:
            sync_from("longvivit.model.video")
            sync_from("longvivit.model.video")
            sync_from("deepspeed.runtime.engine", outer="longvivit.train.trainer")
            sync_from("torch.nn.modules.module", outer="longvivit.train.trainer")
            sync_from("test_gpu_suite")  # neither torch's nor longvivit's
            warnings.warn("something else", UserWarning)
    assert modes == ["warn", "default"] and counter.active
    assert [str(w.message) for w in other] == ["something else"]  # passed on, not counted
    table = gpu.sync_table(counter.sites)
    assert [(r["origin"], r["count"]) for r in table] == [("model", 2), ("deepspeed", 1), ("train", 1),
                                                          ("test_gpu_suite", 1)]
    by_origin = {r["origin"]: r for r in table}
    assert by_origin["deepspeed"]["via"].startswith("longvivit.train.trainer:")
    assert by_origin["train"]["via"] is None  # torch's frames pass through: the call was train's
    assert gpu.SyncCounter(set_mode=None).active is False and gpu.counter_control(torch.device("cpu")) is None


def test_sync_summary_counts_per_micro_batch_and_what_the_model_may_make():
    site = {"origin": "model", "at": "longvivit.model.video:1 real_slices", "via": None, "count": 1}
    ds = {"origin": "deepspeed", "at": "deepspeed.runtime.engine:9 step", "via": "longvivit.train.trainer:5 x", "count": 6}
    syncs = {"control": 1, "steps": [{"step": 14, "source": "video", "real_frames_on": ["cuda", "cuda"],
                                      "sites": [{**site, "count": 2}, ds]},
                                     {"step": 15, "source": "image", "real_frames_on": ["cpu", "cpu"], "sites": [ds]}],
             "log_steps": [{"step": 14, "sites": [{**ds, "origin": "train", "count": 2}]}, {"step": 15, "sites": []}]}
    s = gpu.sync_summary(syncs)
    assert (s["micro_batches"], s["model"], s["model_allowed"]) == (4, 2, 2)
    assert s["per_micro_batch"] == {"model": 0.5, "deepspeed": 3.0} and s["log_per_step"] == {"train": 1.0}
    assert s["sites"][0]["count"] == 12 and s["sites"][1]["count"] == 2


def test_cells_take_turns_on_the_gpu_after_all_are_set_up(tmp_path):
    """gpu_turn through launch: no two cells inside their turn at once, none before every
    cell said it is ready, and a cell that dies before that holds no one up."""
    turns = tmp_path / "turns"
    turns.mkdir()
    child = ("import sys, time; sys.path.insert(0, {bench!r}); from pathlib import Path; import gpu\n"
             "time.sleep({delay})\n"
             "with gpu.gpu_turn(Path({turns!r}), {name!r}) as t:\n"
             "    start = time.time(); time.sleep(0.5)\n"
             "    Path({out!r}).write_text(f'{{start}} {{time.time()}} {{t[\"go\"]}}')\n")
    commands = {name: [sys.executable, "-c", child.format(bench=str(ROOT / "bench"), delay=delay, turns=str(turns),
                                                         name=name, out=str(tmp_path / f"{name}.txt"))]
                for name, delay in (("a", 0), ("b", 2))}
    commands["dies"] = [sys.executable, "-c", "raise SystemExit(3)"]
    done = gpu.launch(commands, tmp_path, timeout=120, turns=turns)
    assert {n: r.returncode for n, r in done.items()} == {"a": 0, "b": 0, "dies": 3}, done["a"].output
    spans = sorted(tuple(map(float, (tmp_path / f"{n}.txt").read_text().split()[:2])) for n in ("a", "b"))
    ready_b = (turns / "ready.b").stat().st_mtime
    assert spans[0][0] >= ready_b - 0.05  # a waited for b's set-up
    assert spans[0][1] <= spans[1][0]  # one after the other
    assert all((tmp_path / f"{n}.txt").read_text().endswith("True") for n in ("a", "b"))


def test_the_shipped_check_on_its_cpu_twin_with_images_init_and_sync_steps(monkeypatch, tmp_path):
    """check_shipped end to end on a shipped-like CPU config (demo_short: CLS token, image
    steps, an open_clip init whose file is not here), ZeRO-3 over gloo: the processes, their
    turns, the image and video timings, the plan and the sync steps (counted as nothing
    without CUDA), and its rendering."""
    import report

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    r = gpu.check_shipped(tmp_path, configs=[gpu.CONFIGS / "demo_short.yaml"], gpu_mem=80 * 2**30)
    row = r["configs"]["demo_short"]
    assert "error" not in row, row.get("output")
    assert row["backend"] == "gloo" and row["steps_done"] == gpu.SHIPPED_STEPS and row["finite"]
    assert row["init"]["ran"].startswith("open_clip:/")  # made here, or the demo's own file made absolute
    timed = gpu.SHIPPED_STEPS - gpu.SHIPPED_SYNC_STEPS
    assert set(row["by_source"]) == {"video", "images"}
    assert row["by_source"]["images"]["steps"] == [7, 11]  # image steps 3, 7, 11 (a quarter): 3 is warm-up
    assert all(s <= timed for src in row["by_source"].values() for s in src["steps"])
    s = row["syncs"]
    assert s["steps"] == [12, 13] and s["micro_batches"] == 2 and s["control"] is None
    assert s["model"] == s["model_allowed"] == 0  # synthetic real_frames on the device, here the CPU
    assert row["turn"]["go"] and "allocated" in row["plan"]
    text = "\n".join(report.gpu_shipped(r))
    assert "demo_short (tiny, 2 x 16f @ 50%, accum 1)" in text


def test_the_shipped_model_check_on_cpu_records_kernels_with_and_without_the_cls_copies(tmp_path):
    import report

    configs = [gpu.CONFIGS / "demo_short.yaml", gpu.CONFIGS / "demo.yaml"]  # CLS token (copies) and none
    r = gpu.check_shipped_model(tmp_path, torch.device("cpu"), configs)
    with_copies, plain = r["configs"]["demo_short"], r["configs"]["demo"]
    assert with_copies["cls_copies"] and not plain["cls_copies"] and "without_cls_copies" not in plain
    for row in (with_copies, plain, with_copies["without_cls_copies"]):
        assert row["kernels"] == {} and "flash" in row["ops"] and not row["math"]  # CPU: aten ops only
        assert row["step_ms"] > 0
    assert set(with_copies["syncs"]) == set(gpu.MODEL_SYNCS_ALLOWED)
    assert all(v["per_micro_batch"] is None for v in with_copies["syncs"].values())  # no CUDA: not counted
    assert r["control"] is None
    text = "\n".join(report.gpu_shipped_model(r))
    assert "| demo_short |" in text and "| yes |" in text


def test_the_flash_check_on_cpu_records_each_kernel_set(tmp_path):
    """CPU twin: the CPU's own flash SDPA takes every call (it takes masks too, so only a
    GPU can show the point of the check); cuDNN and memory-efficient exist on CUDA only,
    so holding SDPA to them fails, and that is recorded, not raised."""
    import report

    r = gpu.check_flash(tmp_path, torch.device("cpu"), [gpu.CONFIGS / "demo_short.yaml", gpu.CONFIGS / "demo.yaml"])
    assert r["blocks"] == gpu.FLASH_BLOCKS and set(r["sets"]) == set(gpu.FLASH_SETS)
    short, plain = r["configs"]["demo_short"], r["configs"]["demo"]
    assert short["cls_copies"] and not plain["cls_copies"]
    for row in (short, plain):
        assert row["flash"] == {"ran": True} and row["flash_or_cudnn"] == {"ran": True}
        assert not row["cudnn"]["ran"] and not row["efficient"]["ran"]
        assert row["efficient"]["error"].startswith("RuntimeError: ")
    text = "\n".join(report.gpu_flash(r))
    assert "| demo_short | 64, head dim 32 | yes | yes | yes | no | no |" in text, text


def test_the_packed_check_on_cpu_times_both_paths_and_agrees_with_fp32(tmp_path):
    """CPU twin on the tiny tower: the packed path is the loop of SDPA calls here, so what it
    shows is the record and its rendering; both paths agree with fp32 masked as on a GPU."""
    import report

    cell = dict(preset="tiny", frames=16, image_size=32, batch=3, real=[16, 6, 11], mask_ratio=0.75)
    r = gpu.check_packed(tmp_path, torch.device("cpu"), cell)
    assert r["packed_syncs"] is None  # no CUDA: not counted
    for name in ("packed", "masked"):
        assert r[name]["kernels"] == {} and not r[name]["math"]  # CPU: aten ops only
        assert r[name]["vs_fp32_masked"]["embedding_cosine_min"] > 0.99
        assert len(r[name]["step_s_samples"]) == gpu.PACKED_ROUNDS and r[name]["step_s"] > 0
    assert r["packed_vs_masked_time"] == r["packed"]["step_s"] / r["masked"]["step_s"]
    text = "\n".join(report.gpu_packed(r))
    assert f"**Packed takes {r['packed_vs_masked_time']:.2f}x the masked step's time**" in text, text


def test_a_config_whose_model_fails_is_recorded_and_the_others_still_run(monkeypatch, tmp_path):
    import report

    def row(config, device):
        if config.stem == "demo":
            raise RuntimeError("CUDA out of memory")
        return {"config": config.name, "ok": True}

    monkeypatch.setattr(gpu, "shipped_model_row", row)
    r = gpu.check_shipped_model(tmp_path, torch.device("cpu"), [gpu.CONFIGS / "demo.yaml", gpu.DEMO.parent /
                                                                "demo_short.yaml"])
    assert r["configs"]["demo"]["error"] == "RuntimeError: CUDA out of memory" and r["configs"]["demo_short"]["ok"]
    failed = {**r, "configs": {"demo": r["configs"]["demo"]}}
    assert "| demo | error: RuntimeError: CUDA out of memory |" in "\n".join(report.gpu_shipped_model(failed))


def test_real_frames_variants_and_the_model_sync_allowance():
    v = gpu.real_frames_variants(3, 16, torch.device("cpu"))
    assert v["none"] is None and v["host_padded"].tolist() == [8, 16, 16] and v["device_whole"].tolist() == [16] * 3
    assert {k for k, n in gpu.MODEL_SYNCS_ALLOWED.items() if n} == {"device_whole", "device_padded"}


def test_the_data_wait_run_is_short_b16_on_the_shards_and_its_record_weights_by_time(tmp_path):
    from longvivit.train.config import load_run_config

    overrides = gpu.feed_overrides(tmp_path / "h264")
    config = gpu.CONFIGS / f"{gpu.FEED['config']}.yaml"
    shipped, cfg = load_run_config(config), load_run_config(config, overrides=overrides)
    assert cfg.model == shipped.model and cfg.data.source == "shards" == shipped.data.source
    assert (cfg.data.frames, cfg.data.image_size) == (gpu.DECODE["frames"], gpu.DECODE["size"])
    assert [s.kind for s in cfg.data.sources] == ["video"] and cfg.data.batch_size == gpu.FEED["batch"]
    assert (cfg.data.num_workers, cfg.data.prefetch, cfg.ds_config) == \
        (shipped.data.num_workers, shipped.data.prefetch, shipped.ds_config)
    assert gpu.FEED["steps"] * gpu.FEED["batch"] <= gpu.DECODE["videos"]  # one epoch
    b = gpu.FEED["batch"]
    lines = [{"step": 1, "data_wait": 0.9, "samples_per_s": b / 2.0, "decode_failures": 0},
             {"step": 2, "data_wait": 0.5, "samples_per_s": b / 1.0, "decode_failures": 0},
             {"step": 3, "data_wait": 0.0, "samples_per_s": b / 0.1, "decode_failures": 0},
             {"step": 4, "data_wait": 0.1, "samples_per_s": b / 0.1, "decode_failures": 0}]
    r = gpu.feed_record(overrides, {"backend": "nccl", "steps": 4, "train": lines})
    assert r["steps_measured"] == [3, 4] and r["data_wait"] == pytest.approx(0.05)
    assert gpu.feed_record(overrides, {"error": "exit status 1", "output": "x"})["error"] == "exit status 1"


def test_the_data_wait_run_on_cpu_decoded_shards(monkeypatch, tmp_path, synth_data):
    """trainer_feed end to end on its CPU twin: a shipped-like config (demo_short: the
    open_clip tokenizer, as short_B16) on the test VP9 shards, decoded by DALI's CPU
    decoder in the loader's thread, the trainer's data_wait read back per step."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setitem(gpu.FEED, "config", "demo_short")
    monkeypatch.setitem(gpu.FEED, "batch", 2)
    monkeypatch.setitem(gpu.FEED, "warmup", 1)
    monkeypatch.setitem(gpu.FEED, "steps", 3)
    r = gpu.trainer_feed(synth_data["shards_all"], tmp_path)
    assert "error" not in r, r.get("output")
    assert r["backend"] == "gloo" and r["steps_done"] == 3 and r["steps_measured"] == [2, 3]
    assert 0.0 <= r["data_wait"] <= 1.0 and r["decode_failures"] == 0 and r["step_s_median"] > 0
    assert "data_wait" in "\n".join(report_lines(r))


def report_lines(trainer_feed: dict) -> list[str]:
    import report

    return report.trainer_feed_lines(trainer_feed)


def test_two_gpu_skips_below_two_gpus_and_its_runs_are_valid_configs(tmp_path):
    from longvivit.train.config import keep_global_batch, load_run_config, resolve_ds_config

    r = gpu.check_two_gpu(tmp_path, gpus=1)
    assert r == {"skipped": r["skipped"]} and "need 2" in r["skipped"]
    command = gpu.torchrun_command(2, tmp_path / "run", [*gpu.BASE, *gpu.TWO_GPU_MODEL, "steps=4"])
    i = command.index("train")
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    config, overrides = command[i + 1], command[i + 2:]
    for world in (2, 1):
        cfg = keep_global_batch(load_run_config(config, overrides=overrides), world)
        assert resolve_ds_config(cfg, world)["train_batch_size"] == 2 * world
    line = '{"event": "start", "rank": 1, "world_size": 2, "backend": "nccl", "device": "cuda:1", "step": 0}'
    runs = {"two_ranks": gpu.Finished(0, line + "\n{\"event\": \"start\", \"rank\"\n"),
            "one_rank": gpu.Finished(0, '{"event": "rescale", "world_size": [2, 1], "message": "m"}\n')}
    rec = gpu.two_gpu_record([], runs, [{"step": 1, "loss": 1.0}])
    expected = {k: v for k, v in json.loads(line).items() if k != "event"}
    assert rec["starts"]["two_ranks"] == [expected] and rec["rescale"]["world_size"] == [2, 1]  # the cut line left out


def test_the_ulysses_check_skips_below_two_gpus_and_runs_on_its_cpu_twin(monkeypatch, tmp_path):
    """check_ulysses for real on CPU: a sequence group of two gloo ranks under torchrun against
    one rank alone, the tiny model in fp32: the same batches, the same losses."""
    r = gpu.check_ulysses(tmp_path, gpus=1)
    assert r == {"skipped": r["skipped"]} and "needs 2 GPUs" in r["skipped"]
    cpu_base = [o for o in gpu.BASE if not o.startswith(("ds_config=", "precision=", "model.video.image_size="))]
    cpu_base += [f"ds_config={ROOT / 'longvivit' / 'configs' / 'ds' / 'zero3_cpu.json'}", "precision=fp32",
                 "model.video.image_size=32"]
    monkeypatch.setattr(gpu, "ULYSSES_MODEL", ["model.preset=tiny", "model.video.frames=8", "model.video.cls_token=true",
                                               "data.batch_size=2"])
    monkeypatch.setattr(gpu, "ULYSSES_STEPS", 2)
    r = gpu.check_ulysses(tmp_path, gpus=2, base=cpu_base, env={"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"})
    assert r["exit_codes"] == {"split": 0, "one_gpu": 0}, r.get("failed_output")
    assert [(s["rank"], s["world_size"], s["backend"]) for s in r["starts"]["split"]] == [(0, 2, "gloo"), (1, 2, "gloo")]
    assert r["same_batches"] and len(r["losses"]["split"]) == 2
    assert r["losses"]["split"] == pytest.approx(r["losses"]["one_gpu"], abs=1e-5)
    assert r["first_step_rel_diff"] <= 1e-6
    import report

    assert "| step | loss, 2 GPUs per clip | loss, 1 GPU |" in report.gpu_ulysses(r)


def test_the_two_gpu_section_on_its_cpu_twin(monkeypatch, tmp_path):
    """check_two_gpu for real on CPU: two gloo ranks under torchrun, then the resume on one."""
    cpu_base = [o for o in gpu.BASE if not o.startswith(("ds_config=", "precision=", "model.video.image_size="))]
    cpu_base += [f"ds_config={ROOT / 'longvivit' / 'configs' / 'ds' / 'zero3_cpu.json'}", "precision=fp32", "model.video.image_size=32"]
    monkeypatch.setattr(gpu, "TWO_GPU_MODEL", ["model.preset=tiny", "model.video.frames=8", "data.batch_size=2"])
    r = gpu.check_two_gpu(tmp_path, gpus=2, base=cpu_base, env={"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"})
    assert r["exit_codes"] == {"two_ranks": 0, "one_rank": 0}, r.get("failed_output")
    assert [(s["rank"], s["world_size"], s["backend"]) for s in r["starts"]["two_ranks"]] == \
        [(0, 2, "gloo"), (1, 2, "gloo")]
    assert [(s["world_size"], s["step"]) for s in r["starts"]["one_rank"]] == [(1, gpu.TWO_GPU_STEPS[0])]
    assert r["rescale"]["world_size"] == [2, 1]
    assert r["steps_logged"] == list(range(1, gpu.TWO_GPU_STEPS[1] + 1)) and r["finite"]
