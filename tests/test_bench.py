"""The benchmark scripts' own arithmetic and rendering (the measurements themselves are the
benchmarks' job; these check what they compute from them)."""
import json
import sys
from pathlib import Path

import pytest
import torch

from longvivit.data.prepare.synth import write_benchmark
from use_support import random_export

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import claims  # noqa: E402
import demo_seeds  # noqa: E402
import mc_probe  # noqa: E402
import peers  # noqa: E402
import report  # noqa: E402
import search  # noqa: E402
import tradeoff  # noqa: E402

import gpu  # noqa: E402

GiB = report.GiB


def cell(model, frames, ratio, samples, saved):
    return {"model": model, "frames": frames, "mask_ratio": ratio, "step_s": sorted(samples)[len(samples) // 2],
            "step_s_samples": samples, "saved_bytes": saved}


def test_peers_compare_pairs_rounds():
    cells = [cell("ours", 16, 0.0, [1.0, 2.0, 3.0], 75), cell("videomae", 16, 0.0, [2.0, 1.0, 4.0], 100),
             cell("ours", 16, 0.75, [1.0, 1.0, 1.0], 10)]  # no peer at 0.75: no comparison
    (x,) = peers.compare(cells)
    assert (x["peer"], x["frames"], x["mask_ratio"]) == ("videomae", 16, 0.0)
    assert x["time_ratio"] == 1.0  # medians 2.0 / 2.0
    assert x["time_ratio_per_round"] == [0.5, 2.0, 0.75]
    assert x["time_ratio_paired"] == 0.75 and x["rounds_ours_faster"] == 2
    assert x["bytes_ratio"] == 0.75


def test_tradeoff_runs_by_letter_and_seed_means():
    assert tradeoff.run_name("b") == "b: 64f, 75% (joint)"
    assert tradeoff.run_name("a'") == "a': 16f uniform, 0%"
    with pytest.raises(Exception, match="unknown run 'z'"):
        tradeoff.run_name("z")
    runs = [{"t2v_r1": r, "v2t_r1": r / 2, "t2v_r5": 50.0, "final_loss": 1.0, "step_s": s, "train_s": 10.0,
             "saved_bytes": 7} for r, s in ((10.0, 0.3), (20.0, 0.5), (0.0, 0.4))]
    row = tradeoff.over_seeds(runs, [0, 1, 2])
    assert row["t2v_r1"] == 10.0 and row["v2t_r1"] == 5.0 and row["step_s"] == 0.4 and row["train_s"] == 30.0
    assert [s["t2v_r1"] for s in row["per_seed"]] == [10.0, 20.0, 0.0] and row["seeds"] == [0, 1, 2]
    assert tradeoff.over_seeds(runs[:1], [0]) is runs[0]


def seeds_row(t2v: list[float], saved: int = 100, **extra) -> dict:
    return {"per_seed": [{"seed": i, "t2v_r1": r, **extra} for i, r in enumerate(t2v)], "saved_bytes": saved,
            "val_pairs": 80, "chance_r1": 1.25}


def test_claims_verdicts_follow_the_numbers():
    assert claims.tolerance(80) == 1.25 and claims.tolerance(400) == 1.0  # one pair, never below 1 point
    full = seeds_row([10.0, 12.5, 7.5], saved=400)
    # (a): 1.25 points lost (one pair of 80) holds, outside a strict point; 2.5 lost or 2x memory does not
    a = claims.claim_a(full, seeds_row([8.75, 11.25, 6.25]), 1.25)
    assert a["holds"] and a["verdict"].startswith("holds: 75% masking costs 1.25 pts")
    assert "outside a strict 1.0" in a["verdict"] and "4.00x less memory" in a["verdict"]
    assert "within a strict 1.0" in claims.claim_a(full, seeds_row([10.0, 11.25, 7.5]), 1.25)["verdict"]
    lost = claims.claim_a(full, seeds_row([7.5, 10.0, 5.0]), 1.25)
    assert not lost["holds"] and lost["verdict"].startswith("does not reproduce here: 75% masking costs 2.50 pts")
    heavy = claims.claim_a(full, seeds_row([10.0, 12.5, 7.5], saved=200), 1.25)
    assert not heavy["holds"] and "2.00x less memory" in heavy["verdict"] and "(< 2.5x)" in heavy["verdict"]
    # (b): both parts must hold
    kept, dropped = seeds_row([10.0, 10.0, 10.0]), seeds_row([5.0, 5.0, 5.0])
    assert claims.claim_b(full, kept, full, dropped, 1.25)["holds"]
    b = claims.claim_b(full, kept, full, kept, 1.25)
    assert not b["holds"] and b["joint_holds_up"] and not b["factorized_degrades"]
    assert "factorized 10.00 -> 10.00 (+0.00 pts: stays within the tolerance)" in b["verdict"]
    b = claims.claim_b(full, dropped, full, dropped, 1.25)
    assert not b["holds"] and "joint 10.00 -> 5.00 at 75% (-5.00 pts: loses more than" in b["verdict"]
    # (c): ahead on the mean is not enough: every seed
    short = seeds_row([5.0, 5.0, 5.0], mc_top1=40.0) | {"mc_chance": 33.33}
    c = claims.claim_c(short, seeds_row([10.0, 10.0, 10.0], mc_top1=50.0) | {"mc_chance": 33.33})
    assert c["holds"] and "(10.00 vs 5.00, +5.00 pts; chance 1.25) and are ahead on 3 of 3 seeds" in c["verdict"]
    assert "50.00% vs 40.00% (chance 33.33%" in c["verdict"]
    c = claims.claim_c(short, seeds_row([20.0, 5.0, 10.0], mc_top1=50.0) | {"mc_chance": 33.33})
    assert not c["holds"] and c["verdict"].startswith("does not reproduce here: 128 frames at 75% beat")
    assert "ahead on 2 of 3 seeds" in c["verdict"]
    # only the claims whose runs were measured
    rows = {"64f joint 0%": full, "64f joint 75%": kept}
    assert [v["claim"] for v in claims.verdicts(rows, ["a", "b", "c"])] == ["a"]


def test_search_crossover():
    sizes = [1000, 10_000, 100_000, 1_000_000]
    exact = [1.0, 10.0, 100.0, 1000.0]
    # slower, slower, 2x faster, faster: the ratio's log crosses zero between 1e4 (x2) and 1e5 (x0.5): at ~10^4.5
    assert search.crossover(sizes, exact, [4.0, 20.0, 50.0, 500.0]) == {"faster_from": 100_000, "rows": 31_600}
    assert search.crossover(sizes, exact, [0.5, 20.0, 50.0, 500.0])["faster_from"] == 100_000  # faster, then not
    assert search.crossover(sizes, exact, [0.5, 5.0, 50.0, 500.0]) == {"faster_from": 1000, "rows": None}
    assert search.crossover(sizes, exact, [2.0, 5.0, 50.0, 2000.0]) == {"faster_from": None, "rows": None}


def test_report_renders_every_committed_result(tmp_path):
    results = ROOT / "bench" / "results"
    text = report.render(results)
    assert text.startswith(report.BEGIN) and text.rstrip().endswith(report.END)
    assert "no results yet" not in text
    for path in results.glob("*.json"):
        command = json.loads(path.read_text().strip().splitlines()[-1])["command"]
        assert command in text, (path.name, command)
    # the whole file is rendered: nothing from an earlier hand edit survives
    out = tmp_path / "RESULTS.md"
    out.write_text("stale numbers\n")
    report.main(["--results", str(results), "--out", str(out)])
    assert out.read_text() == report.HEADER + "\n" + text


def gpu_results(tmp_path, monkeypatch, resumed_losses, measured_peaks, decode_skipped=False):
    """Fabricated GPU records (tmp_path only), built and written by bench/gpu.py's own
    record builders and run_check, as a GPU run writes them."""
    import torch

    machine = {"date": "2026-01-02T03:04:05+00:00", "nproc": 16, "cpu": "Fake CPU", "torch_threads": 8,
               "load_avg_1m": 0.1, "python": "3.12.3", "torch": "2.11.0+cu130", "deepspeed": "0.19.8",
               "transformers": "4.57", "cuda": "13.0", "nccl": "2.27.7", "gpu": "NVIDIA FAKE-H200",
               "gpu_memory_gib": 139.8, "compute_capability": "9.0", "nvidia.dali": "not installed",
               "av": "18.1.0", "streaming": "0.13.0"}
    monkeypatch.setattr(gpu, "gpu_machine", lambda: machine)
    straight = [{"step": s, "loss": 2.5 - 0.01 * s, "indices": [s]} for s in range(1, 21)]
    resumed = [{"step": s, "loss": x, "indices": [s]} for s, x in enumerate(resumed_losses, 1)]
    start = '{"event": "start", "rank": 0, "backend": "nccl", "device": "cuda:0"}\n'
    ran = {n: gpu.Finished(0, start) for n in ("straight", "first_half", "second_half")}
    parts = {"params": 2 * GiB, "grads": 2 * GiB, "optimizer": 12 * GiB, "activations": 4 * GiB, "reserve": 3 * GiB}
    lines = [{"step": s, "mfu": 0.30 + 0.01 * s, "tflops": 989 * (0.30 + 0.01 * s), "samples_per_s": 80.0}
             for s in range(1, gpu.TIMED_STEPS + 1)]
    e = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    g = torch.randn(100)
    records = {
        "trainer": gpu.trainer_record(gpu.TRAINER_CELL, [], ran, straight, resumed),
        "attention": gpu.attention_record(1568, [("pytorch_flash::flash_fwd_kernel<...>", 120.0),
                                                 ("pytorch_flash::flash_bwd_dq_dk_dv_loop_kernel<...>", 300.0)],
                                          [("aten::_scaled_dot_product_flash_attention", 0.0)],
                                          gpu.precision_agreement(e, e * 1.001, g, g * 1.003)),
        "plan_memory": gpu.plan_memory_record([
            gpu.memory_row(c, parts, {"peak_bytes": m, "peak_bytes_after_setup": m / 2, "peak_reserved_bytes": m * 1.1,
                                      "backend": "nccl"}) for c, m in zip(gpu.MEMORY_CELLS, measured_peaks)]),
        "mfu": gpu.mfu_record([gpu.mfu_row(c, {"train": lines, "peak_tflops": 989.0}, 780.0)
                               for c in gpu.MFU_CELLS], 780.0),
        "decode": gpu.skipped("nvidia.dali not importable here") if decode_skipped else gpu.decode_record(
            {c: {"clips": 48, "decode_failures": 0, "errors": [], "psnr_min_db": 41.25, "psnr_mean_db": 44.5}
             for c in ("h264", "vp9")},
            {"steps": 12, "batch": 8, "data_wait": 0.125, "fed_samples_per_s": 70.0, "step_samples_per_s": 80.0,
             "decode_failures": 0}),
    }
    out = tmp_path / "gpu"
    for name, record in records.items():
        monkeypatch.setitem(gpu.CHECKS, name, lambda work, record=record: record)
        gpu.run_check(name, out)
    return tmp_path


def test_report_renders_gpu_results_from_their_numbers(tmp_path, monkeypatch):
    exact = [2.5 - 0.01 * s for s in range(1, 21)]
    peaks = [20 * GiB, 20.5 * GiB, 19 * GiB, 21 * GiB, 30 * GiB]  # the last is 33% above the plan's 20 GiB
    text = report.render(gpu_results(tmp_path / "a", monkeypatch, exact, peaks))
    summary = json.loads((tmp_path / "a" / "gpu" / "summary.json").read_text())
    assert "### GPU acceptance suite: NVIDIA FAKE-H200" in text
    for fact in ("torch 2.11.0+cu130", "CUDA 13.0", "NCCL 2.27.7", "deepspeed 0.19.8", summary["date"],
                 summary["command"],
                 "process group nccl in every run", "losses identical to the straight run's, bitwise",
                 "batch indices identical", "flash: 2 kernels, 0.42 ms", "Math fallback: not used",
                 "4 of 5 cells within 10%", "| **0.667** | **no** |", "| **38.5%** |",
                 "| h264 | 48 | 0 | 41.2 | 44.5 |", "data_wait 12.5% over 12 steps"):
        assert fact in text, fact
    assert "Traceback" not in text and "error" not in text.lower()

    drifted = exact[:10] + [x + 1e-2 for x in exact[10:]]
    again = report.render(gpu_results(tmp_path / "b", monkeypatch, drifted, [20 * GiB] * 5, decode_skipped=True))
    assert "bitwise" not in again and "OUTSIDE the 1e-03 tolerance" in again
    assert "5 of 5 cells within 10%" in again and "Skipped: nvidia.dali not importable here" in again


def test_report_renders_no_gpu_section_without_gpu_results(tmp_path):
    assert "GPU acceptance suite" not in report.render(tmp_path)


def test_report_verdicts_follow_the_numbers():
    machine = {"date": "d", "nproc": 2, "cpu": "c", "torch_threads": 1, "load_avg_1m": 0.0, "python": "3",
               "torch": "t", "deepspeed": "d", "transformers": "x"}
    slower = {"peer": "vivit", "frames": 16, "mask_ratio": 0.0, "time_ratio": 1.2, "time_ratio_per_round": [1.1, 1.3],
              "rounds_ours_faster": 0, "bytes_ratio": 0.9}
    tie = dict(slower, time_ratio=1.01, time_ratio_per_round=[0.9, 1.1], rounds_ours_faster=1, bytes_ratio=0.5)
    peers_run = {"command": "c", "machine": machine, "attention": "sdpa", "cells": []}
    text = "\n".join(report.peers_section(dict(peers_run, ours_vs_peers=[slower])))
    assert "slower in every round" in text and "a tie" not in text and "0.90-0.90x" in text
    text = "\n".join(report.peers_section(dict(peers_run, ours_vs_peers=[tie])))
    assert "a tie at what this machine can resolve" in text and "0.50-0.50x" in text

    cell = {"dims": "B", "frames": 64, "tokens": 1, "saved_bytes": 2**20, "bytes_source": "real", "step_s": 1.0}
    masked = dict(cell, mask_ratio=0.75, time_vs_unmasked=0.5, bytes_vs_unmasked=0.25)
    text = "\n".join(report.masking_section({"parts": [], "cells": [dict(cell, mask_ratio=0.0), masked]}))
    assert "(target <= 0.27: met)" in text and "(target <= 0.30: MISSED)" in text and "FakeTensors" not in text


def test_hour_statements_follow_the_numbers():
    r = json.loads((ROOT / "bench" / "results" / "hour.json").read_text().strip().splitlines()[-1])
    r["step"] = dict(r["step"], saved_bytes=2 * r["step"]["short_saved_bytes"], peak_rss_bytes=None)
    r["plans"] = [dict(r["plans"][0], fits=False, total=90 * GiB)] + r["plans"][1:]
    text = "\n".join(report.hour_section(r))
    assert "2.000x what 360 frames unmasked save" in text and "not measured" in text
    assert f"1 of {len(r['plans'])} configs fit" in text and "**does not fit**" in text and "90.0 GiB per GPU" in text


def test_mc_probe_variants_flip_each_event_and_swap_each_neighbour():
    events = [("red", "circle", "moves up"), ("blue", "square", "grows"), ("white", "cross", "shrinks")]
    v = mc_probe.variants(events)
    assert v["flip"] == ["a red circle moves down, then a blue square grows, then a white cross shrinks",
                         "a red circle moves up, then a blue square shrinks, then a white cross shrinks",
                         "a red circle moves up, then a blue square grows, then a white cross grows"]
    assert v["swap"] == ["a blue square grows, then a red circle moves up, then a white cross shrinks",
                         "a red circle moves up, then a white cross shrinks, then a blue square grows"]


def test_mc_probe_marks_what_is_beyond_chance():
    machine = {"date": "d", "nproc": 2, "cpu": "c", "torch_threads": 1, "load_avg_1m": 0.0, "python": "3",
               "torch": "t", "deepspeed": "d", "transformers": "x"}
    row = {"run": "stage2", "split": "val", "clips": 82, "flip": 48.0, "flip_pairs": 100, "swap": 61.0,
           "swap_pairs": 100, "mc_top1": 40.0}  # 95%: 50 +- 10 points at 100 pairs
    r = {"command": "c", "machine": machine, "synth": "s", "results": [row]}
    text = "\n".join(report.mc_probe_section(r))
    assert "| stage2 | val | 82 | 48.0 (100) | 61.0 * (100) | 40.0 | - | - | - | - | - |" in text
    assert "above chance: stage2 (swap 61.0)." in text and "below" not in text
    assert "playing a clip backwards" not in text
    text = "\n".join(report.mc_probe_section(dict(r, results=[dict(row, flip=39.0)])))
    assert ("above chance: stage2 (swap 61.0). below chance (the variant outscores the clip's own caption): "
            "stage2 (flip 39.0).") in text
    reversed_row = dict(row, reversal_cos=0.99, other_cos=0.6, reversal_share=0.025)
    text = "\n".join(report.mc_probe_section(dict(r, results=[reversed_row])))
    assert "| 40.0 | - | - | - | - | 2.5 |" in text
    assert "Held-out clips: stage2 2.5% (cos 0.990 with its reversal, 0.600 with another clip)." in text
    text = "\n".join(report.mc_probe_section(dict(r, results=[dict(row, swap=59.0)])))
    assert "none of the 1 runs tells a caption from its flipped or swapped self beyond chance" in text
    split = dict(row, mc_items_event=82, mc_items_event_seen=47, mc_items_event_missed=35, mc_top1_event_seen=51.1,
                 mc_top1_event_missed=62.9)
    text = "\n".join(report.mc_probe_sections([r, dict(r, results=[split])]))
    assert text.count("### Multiple choice probed") == 2 and "| 40.0 | - | - | 51.1 | 62.9 | - |" in text
    assert "Held-out items 16 frames see / miss: stage2 47 / 35." in text


def test_mc_probe_splits_event_items_by_what_16_uniform_frames_see():
    """16 uniform frames of 128 are 4, 12, ..., 124 (the loader's select_frames): an event in
    frames [10, 14) holds one of them, one in [13, 17) none."""
    row = {"events": [["red", "circle", "grows"], ["blue", "square", "moves up"]], "spans": [[10, 14], [13, 17]],
           "num_frames": 128}
    item = {"kind": "event", "question": "q", "answers": ["a green cross grows", "a red circle grows"], "answer": 1}
    assert mc_probe.short_view_kind(row, item) == "event_seen"
    item = dict(item, answers=["a blue square moves up", "a green cross moves up"], answer=0)
    assert mc_probe.short_view_kind(row, item) == "event_missed"
    assert mc_probe.short_view_kind(row, {"kind": "order", "answers": ["x", "y"], "answer": 0}) == "order"
    assert mc_probe.short_view_kind(dict(row, num_frames=64), item) == "event_seen"  # 64 frames: 2, 6, 10, 14, ...


def test_mc_probe_reversal_plays_only_the_clips_own_frames_backwards():
    video = torch.arange(5, dtype=torch.uint8)[:, None, None, None].expand(5, 2, 2, 3).clone()
    video[4] = video[3]  # padding: the last frame repeated (longvivit/use/preprocess.py)
    clip = mc_probe.Clip(video, real_frames=4, duration_s=4.0)
    back = mc_probe.reversed_clip(clip)
    assert back.video[:, 0, 0, 0].tolist() == [3, 2, 1, 0, 3] and back.real_frames == 4
    assert clip.video[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 3]  # the clip itself is left as it was


def test_mc_probe_reversal_share_is_zero_for_an_order_blind_embedding_and_one_for_a_stranger():
    v = torch.eye(6)  # six orthogonal clips: cos 0 between any two
    blind = mc_probe.reversal(v, v)
    assert blind == pytest.approx({"reversal_cos": 1.0, "other_cos": 0.0, "reversal_share": 0.0})
    stranger = mc_probe.reversal(v, v.roll(1, 0))  # each clip's "reversal" is another clip
    assert stranger == pytest.approx({"reversal_cos": 0.0, "other_cos": 0.0, "reversal_share": 1.0})
    halfway = mc_probe.reversal(v, torch.nn.functional.normalize(v + v.roll(1, 0), dim=1))  # 45 degrees away
    assert halfway["reversal_share"] == pytest.approx(1 - 0.5 ** 0.5)
    same = torch.nn.functional.normalize(torch.eye(6) + 1.0, dim=1)  # clips alike: cos 8/9 between any two
    assert mc_probe.reversal(same, same.roll(1, 0))["reversal_share"] == pytest.approx(1.0, rel=1e-4)


def test_demo_seeds_counts_the_seeds_where_stage_2_wins():
    machine = {"date": "d", "nproc": 2, "cpu": "c", "torch_threads": 1, "load_avg_1m": 0.0, "python": "3",
               "torch": "t", "deepspeed": "d", "transformers": "x"}
    chance = {"t2v_r1": 1.25, "mc_top1": 37.5}
    runs = [{"seed": s, "seconds": 300.0, "chance": chance, "short": {"t2v_r1": 4.0, "mc_top1": mc_short},
             "long": {"t2v_r1": r1, "mc_top1": 40.0}} for s, (r1, mc_short) in enumerate([(9.0, 45.0), (3.0, 35.0)])]
    text = "\n".join(report.demo_seeds_section({"command": "c", "machine": machine, "benchmark": "synth --long-range",
                                                "overrides": [], "runs": runs}))
    assert "t2v R@1 %: stage 2 > stage 1 in **1 of 2** seeds (mean change +2.0 points); stage 2 above chance in 2 of 2" in text
    assert "multiple choice %: stage 2 > stage 1 in **1 of 2** seeds (mean change +0.0 points)" in text
    assert "| 0 | 4.0 -> **9.0** | 45.0 -> **40.0** | 300 |" in text
    tuned = [dict(x, tune={"t2v_r1": x["long"]["t2v_r1"] + 1.0, "mc_top1": 30.0}) for x in runs]
    text = "\n".join(report.demo_seeds_section({"command": "c", "machine": machine, "benchmark": "synth --long-range",
                                                "overrides": [], "runs": tuned}))
    assert "- t2v R@1 %: stage 3 > stage 2 in **2 of 2** seeds (mean change +1.0 points)." in text
    assert "- multiple choice %: stage 3 > stage 2 in **0 of 2** seeds (mean change -10.0 points)." in text
    staged = [dict(x, stages={"short": {"steps": 200, "lr": 2e-3}, "long": {"steps": 100, "lr": 1e-3}}) for x in runs]
    parts = [{"command": "c", "machine": machine, "benchmark": "b", "overrides": [], "runs": rs} for rs in (runs, staged)]
    text = "\n".join(report.demo_seeds_sections(parts))
    assert text.count("### The demo over seeds") == 2 and "16 frames (stage 1), b, stage 2 100 steps at lr 0.001\n" in text
    assert "Each stage as its run_config.yaml says (seed 0): stage 1 200 steps at lr 0.002; stage 2 100 steps at lr 0.001." in text
    clips = [dict(x, stages={"short": {"steps": 200, "lr": 2e-3, "clips": "short_clips"},
                             "long": {"steps": 200, "lr": 2e-3, "clips": "train"}}) for x in runs]
    text = "\n".join(report.demo_seeds_section({**parts[0], "runs": clips}))
    assert ("(seed 0): stage 1 200 steps at lr 0.002 on the 64-frame short clips; stage 2 200 steps at lr 0.002 "
            "on the long clips.") in text


def test_demo_seeds_reads_each_stages_steps_rate_and_clips_from_its_run_config(tmp_path):
    """--collect: a finished demo's last line, and what each stage trained on (the long-range
    demo's stage 1: its short clips); a stage without its run_config.yaml is one line."""
    from longvivit.train.config import CONFIG_DIR, load_run_config
    from longvivit.train.trainer import resolved_yaml

    line = {"t2v_r1": 20.0, "chance": 1.2, "mc_top1": 40.0, "mc_chance_top1": 33.3, "seconds": 300.0,
            "short": {"t2v_r1": 5.0, "mc_top1": 35.0}}
    (tmp_path / "seed-3.log").write_text("[demo] ...\n" + json.dumps(line) + "\n")
    for stage, config, clips in (("short", "demo_short.yaml", "short_clips"), ("long", "demo_long.yaml", "train")):
        (tmp_path / "seed-3" / stage).mkdir(parents=True)
        run = load_run_config(CONFIG_DIR / config, overrides=[f"data.train=/d/shards/{clips}"])
        (tmp_path / "seed-3" / stage / "run_config.yaml").write_text(resolved_yaml(run))  # as the trainer writes it
    r = demo_seeds.seed_result(tmp_path, 3)
    assert r["stages"] == {"short": {"steps": 200, "lr": 2e-3, "clips": "short_clips"},
                           "long": {"steps": 200, "lr": 2e-3, "clips": "train"}}
    assert (r["long"], r["short"], r["chance"]) == ({"t2v_r1": 20.0, "mc_top1": 40.0}, line["short"],
                                                    {"t2v_r1": 1.2, "mc_top1": 33.3})
    (tmp_path / "seed-3" / "long" / "run_config.yaml").unlink()
    with pytest.raises(SystemExit, match="seed-3/long/run_config.yaml: missing"):
        demo_seeds.seed_result(tmp_path, 3)


def test_mc_probe_linear_probe_reads_a_linear_label_and_not_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g)
    y = (x[:, 3] > 0).long()  # a linear function of the features
    held = mc_probe.linear_probe(x[:150], y[:150], x[150:], y[150:], 2)
    assert held["acc"] > 95.0 and held["clips"] == 50
    assert held["majority"] == 100.0 * max(y[150:].float().mean().item(), 1 - y[150:].float().mean().item())
    noise = torch.randint(0, 2, (200,), generator=g)
    assert abs(mc_probe.linear_probe(x[:150], noise[:150], x[150:], noise[150:], 2)["acc"] - 50.0) < 20.0
    again = mc_probe.linear_probe(x[:150], y[:150], x[150:], y[150:], 2)
    assert again == held  # deterministic: zero init, L-BFGS


def test_mc_probe_targets_are_each_events_direction_and_colour():
    rows = [{"events": [["red", "circle", "moves up"], ["blue", "square", "shrinks"], ["red", "cross", "grows"]]},
            {"events": [["blue", "cross", "moves down"], ["red", "circle", "grows"]]}]
    t = mc_probe.probe_targets(rows, ["blue", "red"])
    assert t["event0_direction"].tolist() == [1, 0] and t["event1_direction"].tolist() == [0, 1]
    assert t["event2_direction"].tolist() == [1, -1]  # the second clip has no third event
    assert t["event0_colour"].tolist() == [1, 0] and t["event2_colour"].tolist() == [1, -1]


def test_mc_probe_linear_table_marks_direction_beyond_the_majority():
    def probe(acc):
        return {"acc": acc, "majority": 50.0, "weight_decay": 0.01, "clips": 100}  # 95%: +9.8 points
    rows = [{"run": "stage2", "event0_direction": probe(61.0), "event0_colour": probe(90.0)},
            {"run": "pixels (16 frames)", "event0_direction": probe(59.0), "event0_colour": probe(90.0)}]
    text = "\n".join(report.linear_probe_lines(rows))
    assert "| stage2 | 61.0 (50.0) | 90.0 (50.0) |" in text
    assert "Direction beyond the majority class (95% interval over the held-out clips): stage2 (event0), of 2 rows" in text
    assert "none, of 1 rows" in "\n".join(report.linear_probe_lines(rows[1:]))
    assert report.linear_probe_lines([]) == []


def test_mc_probe_refuses_a_bad_command_line_in_one_line(tmp_path, capsys):
    for argv, words in [(["--run", "a=b"], "the following arguments are required: --synth"),
                        (["--synth", str(tmp_path), "--run", "nosep"], "--run 'nosep': expected NAME=PATH"),
                        (["--synth", str(tmp_path), "--run", "a=b", "--linear"], "no val.jsonl")]:
        with pytest.raises(SystemExit) as exit_:
            mc_probe.main(argv)
        out, err = capsys.readouterr()
        assert exit_.value.code == 2 and out == ""
        [line] = err.strip().splitlines()
        assert line.startswith("bench/mc_probe.py: ") and words in line, line
    assert list(tmp_path.iterdir()) == []


def test_mc_probe_measures_a_model_end_to_end(tmp_path, capsys):
    """bench/mc_probe.py on a random tiny export and a small long-range benchmark: one JSON
    line on stdout whose counts follow from the clips, reversal measures in range."""
    model = random_export(tmp_path / "model")
    synth = tmp_path / "long"
    write_benchmark(synth, videos=9, frames=64, size=32, seed=3, long_range=True, event_frames=2, hard_negatives=1.0)
    assert mc_probe.main(["--synth", str(synth), "--run", f"random={model['export']}"]) == 0
    out, _ = capsys.readouterr()
    [line] = out.strip().splitlines()
    r = json.loads(line)
    assert r["long_range"] is True and [x["split"] for x in r["results"]] == ["val", "train"]
    for x in r["results"]:
        rows = [json.loads(s) for s in (synth / f"{x['split']}.jsonl").read_text().splitlines()]
        assert x["clips"] == len(rows) and x["flip_pairs"] == sum(len(row["events"]) for row in rows)
        assert x["swap_pairs"] == sum(len(row["events"]) - 1 for row in rows)
        assert x["mc_items"] == 3 * len(rows)
        assert x.get("mc_items_event_seen", 0) + x.get("mc_items_event_missed", 0) == x["mc_items_event"] == len(rows)
        assert -1.0 <= x["other_cos"] < x["reversal_cos"] <= 1.0 + 1e-6 and x["reversal_share"] >= 0.0
    assert mc_probe.main(["--synth", str(synth), "--run", f"random={model['export']}", "--limit", "2", "--linear"]) == 0
    with_linear = json.loads(capsys.readouterr()[0])
    assert [x["clips"] for x in with_linear["results"]] == [r["results"][0]["clips"], 2]
    assert [x["run"] for x in with_linear["linear"]] == ["random", "pixels (8 frames)"]  # the export's 8 frames
    for row in with_linear["linear"]:
        assert row["event0_direction"]["clips"] == r["results"][0]["clips"]
