"""The GPU acceptance suite's CPU-side logic (bench/gpu.py): kernel classification, run and
resume comparison, plan-vs-measured rows, MFU medians, PSNR, skip and error records, the
JSON it writes; the bf16-vs-fp32 and profiler paths on the tiny model on CPU; the training
cell runner on its CPU twin; and that `python bench/gpu.py` and `make gpu-check` on a
machine without CUDA skip and exit 0."""
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

    for cell in [gpu.TRAINER_CELL, *gpu.MEMORY_CELLS]:
        cfg = load_run_config(gpu.DEMO, overrides=cell.overrides())
        assert (cfg.model.preset, cfg.data.frames, cfg.data.image_size) == (cell.preset, cell.frames, 224)
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
    """The cell runner (validate, setup, loop of longvivit.train.run) on its CPU twin: tiny
    model, ZeRO-3 over gloo, fp32; it logs what the MFU and memory rows read."""
    cpu_base = [o for o in gpu.BASE if not o.startswith(("ds_config=", "precision=", "model.video.image_size="))]
    monkeypatch.setattr(gpu, "BASE", [*cpu_base, f"ds_config={ROOT / 'ds_configs' / 'zero3_cpu.json'}",
                                      "precision=fp32", "model.video.image_size=32"])
    monkeypatch.setattr(gpu, "_CELL_RESULTS", {})
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cell = gpu.Cell("tiny", 8, 0.5, 2, steps=gpu.WARMUP_STEPS + 1, timed=True)
    result = gpu.cell_results([cell], tmp_path)[cell]
    assert "error" not in result, result.get("output")
    assert result["backend"] == "gloo" and result["steps"] == cell.steps and result["peak_bytes"] > 0
    assert [x["step"] for x in result["train"]] == list(range(1, cell.steps + 1))
    row = gpu.mfu_row(cell, result, measured_peak=1.0)
    assert row["steps_measured"] == 1 and row["mfu_median"] > 0
    assert gpu.memory_row(cell, {"params": 1, "reserve": 1}, result)["measured_peak"] == result["peak_bytes"]


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
