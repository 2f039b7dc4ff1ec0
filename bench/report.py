"""Render bench/results/*.json into bench/RESULTS.md (the whole file).

    .venv/bin/python bench/report.py [--results bench/results] [--out bench/RESULTS.md]

Every number comes from a JSON file a benchmark wrote, shown with its command, date,
machine and versions; nothing in RESULTS.md is written by hand.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BEGIN, END = "<!-- perf:begin (bench/report.py) -->", "<!-- perf:end -->"
HEADER = """# Benchmark results

Everything below is rendered by `bench/report.py` from the JSON files in bench/results/
(`bash bench/run_all.sh` regenerates them all; `make bench`). Timings on a shared machine are
noisy: each section records its machine with the 1-minute load average, and timings are
medians over rounds in which the compared cases took turns.
"""
MiB, GiB = 2**20, 2**30
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def load(results: Path, name: str) -> dict | None:
    path = results / f"{name}.json"
    if not path.is_file() or not path.read_text().strip():
        return None
    return json.loads(path.read_text().strip().splitlines()[-1])


def provenance(r: dict) -> list[str]:
    m = r["machine"]
    return [f"    {r['command']}", "",
            f"{m['date']}; {m['nproc']} cores ({m['cpu']}), {m['torch_threads']} torch thread(s), "
            f"1-min load average {m['load_avg_1m']} at the end; Python {m['python']}, torch {m['torch']}, "
            f"deepspeed {m['deepspeed']}, transformers {m['transformers']}"
            + (f", GPU {m['gpu']}" if "gpu" in m else "") + ".", ""]


def table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def plan_section(r: dict) -> list[str]:
    lines = ["### Memory planner: the large configs on 8 x 80 GiB, ZeRO-3", ""] + provenance(r)
    parts = list(r["plans"][0]["bytes"])
    rows = []
    for p in r["plans"]:
        rows.append([f"`{p['command']}`", f"{p['params'] / 1e6:.0f}M ({p['trainable_params'] / 1e6:.0f}M trainable)",
                     f"{p['micro_batch']} x {p['frames']}f @ {p['mask_ratio']:.0%}"]
                    + [f"{p['bytes'][k] / GiB:.2f}" for k in parts]
                    + [f"{p['total'] / GiB:.2f}", "**fits**" if p["fits"] else "**does not fit**",
                       f"{p['headroom'] / GiB:.1f}", p["max_micro_batch"], p["max_frames"]])
    lines += table(["command", "params", "micro-batch", *[f"{k} GiB" for k in parts], "total GiB",
                    "verdict", "headroom GiB", "max micro-batch", "max frames"], rows)
    lines += ["Assumptions (printed by the planner): " + "; ".join(r["plans"][0]["assumptions"]) + ".", ""]
    return lines


def merged(results: Path, name: str) -> dict | None:
    """`name`.json, or the parts a split run wrote (`name`_*.json): cells concatenated,
    each part's command and machine kept."""
    parts = [load(results, p.stem) for p in sorted(results.glob(f"{name}*.json"))]
    parts = [p for p in parts if p]
    if not parts:
        return None
    return {"parts": parts, "cells": [c for p in parts for c in p["cells"]]}


def masking_section(r: dict) -> list[str]:
    lines = ["### Masking: frames x mask ratio (video encoder train step)", ""]
    for part in r["parts"]:
        lines += provenance(part)
    lines += ["Step = forward, scalar loss, backward, fused AdamW step of the video tower, fp32; "
              "median of the rounds (all samples in bench/results/masking_*.json). B = ViT-B/16 at "
              "224 px, micro-batch 1; tiny = 32 px, micro-batch 8."
              + (" Saved bytes marked `fake` are counted on FakeTensors, for cells not timed."
                 if any(c["bytes_source"] == "fake" for c in r["cells"]) else ""), ""]
    rows = []
    for c in r["cells"]:
        rows.append([c["dims"], c["frames"], f"{c['mask_ratio']:.2f}", c["tokens"],
                     f"{c['step_s']:.3f}" if "step_s" in c else c.get("skipped", "not timed"),
                     f"{c['saved_bytes'] / MiB:.1f}" + (" (fake)" if c["bytes_source"] == "fake" else ""),
                     c.get("time_vs_unmasked", ""), c.get("bytes_vs_unmasked", "")])
    lines += table(["dims", "frames", "mask", "tokens", "step s", "saved MiB", "time / unmasked",
                    "bytes / unmasked"], rows)
    key = {(c["dims"], c["frames"], c["mask_ratio"]): c for c in r["cells"]}
    b = key.get(("B", 64, 0.75))
    if b and "time_vs_unmasked" in b:
        lines += [f"**B dims, 64 frames, 75% vs 0% masking: saved bytes {b['bytes_vs_unmasked']:.3f}x "
                  f"(target <= 0.27: {met(b['bytes_vs_unmasked'] <= 0.27)}), step time "
                  f"{b['time_vs_unmasked']:.3f}x (target <= 0.30: {met(b['time_vs_unmasked'] <= 0.30)}).**", ""]
    return lines


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def mfu_section(r: dict) -> list[str]:
    lines = ["### MFU of the training step", ""] + provenance(r)
    lines += [f"Device {r['device']}, {r['dtype']}. Step = DualEncoder forward (video + text + "
              "InfoNCE), backward, fused AdamW over the trainer's parameter groups. Peak = best "
              "n x n matmul in the same process, between the steps.", ""]
    rows = [[x["dims"], f"{x['frames']}f @ {x['mask_ratio']:.0%}, {x['image_size']} px", x["batch"],
             f"{x['model_flops_per_step'] / 1e9:.1f}", f"{x['step_s']:.3f}",
             " / ".join(f"{k} {v:.3f}" for k, v in x["phases_s"].items()),
             f"{x['achieved_flops_per_s'] / 1e9:.1f}", f"{x['matmul_peak_flops_per_s'] / 1e9:.1f}",
             f"**{x['mfu']:.1%}**", f"{x['mfu_best_step']:.1%}"] for x in r["results"]]
    lines += table(["dims", "clip", "batch", "model GFLOP/step", "step s (median)", "phases s",
                    "achieved GFLOP/s", "matmul peak GFLOP/s", "MFU", "MFU (best step)"], rows)
    return lines


def peers_section(r: dict) -> list[str]:
    lines = ["### Against the peers (ViT-B size, 224 px, tubelet 2x16x16)", ""] + provenance(r)
    lines += [f"fp32, attention: {r['attention']}, micro-batch 1; step = encoder forward, mean "
              "over output tokens, scalar loss, backward, fused AdamW step.", ""]
    rows = [[c["model"], c["frames"], f"{c['mask_ratio']:.2f}", c["tokens"], f"{c['params'] / 1e6:.1f}M",
             f"{c['step_s']:.3f}", f"{c['saved_bytes'] / MiB:.1f}"] for c in r["cells"]]
    lines += table(["model", "frames", "mask", "tokens", "params", "step s (median)", "saved MiB"], rows)
    rows = [[x["peer"], x["frames"], f"{x['mask_ratio']:.2f}", f"**{x['time_ratio']:.3f}**",
             f"{x['time_ratio_paired']:.3f}" if "time_ratio_paired" in x else "",
             " ".join(f"{v:.2f}" for v in x.get("time_ratio_per_round", [])),
             f"{x['rounds_ours_faster']} of {len(x['time_ratio_per_round'])}" if "rounds_ours_faster" in x else "",
             f"**{x['bytes_ratio']:.3f}**"] for x in r["ours_vs_peers"]]
    lines += ["Ours over the peer (<= 1 means ours is faster / saves less); step time: ratio of the "
              "medians, median of the per-round ratios (the two steps of a pair ran back to back), "
              "each round's ratio, rounds in which ours was faster:", ""]
    lines += table(["peer", "frames", "mask", "step time ratio", "paired", "per round", "ours faster",
                    "saved bytes ratio"], rows)
    slower = [x for x in r["ours_vs_peers"] if x["time_ratio"] > 1]
    more = [x for x in r["ours_vs_peers"] if x["bytes_ratio"] > 1]
    lines += [f"Target (ours <= peer): saved bytes met in {len(r['ours_vs_peers']) - len(more)} of "
              f"{len(r['ours_vs_peers'])} comparisons, step time met in "
              f"{len(r['ours_vs_peers']) - len(slower)} of {len(r['ours_vs_peers'])}.", ""]
    for x in slower:
        rounds = x.get("time_ratio_per_round")
        if rounds:
            verdict = ("on both sides of 1: a tie at what this machine can resolve"
                       if min(rounds) <= 1 <= max(rounds) else "all above 1: slower in every round")
            lines += [f"- ours / {x['peer']} at {x['frames']} frames, {x['mask_ratio']:.0%} masking: "
                      f"{x['time_ratio']:.3f}, faster in {x['rounds_ours_faster']} of {len(rounds)} "
                      f"rounds, per-round ratios {min(rounds):.2f}-{max(rounds):.2f}, {verdict}."]
    bytes_ratios = [x["bytes_ratio"] for x in r["ours_vs_peers"]]
    lines += ["", f"Saved bytes, ours over the peer: {min(bytes_ratios):.2f}-{max(bytes_ratios):.2f}x. "
              "Where ours differs in what it runs: the MLP recomputes its GELU in backward instead of "
              "saving its output, and masked tubelets are dropped before they are embedded (VideoMAE "
              "embeds all, then drops).", ""]
    return lines


def peers_profile_section(r: dict) -> list[str]:
    lines = ["#### Where a peers step spends its time (torch.profiler, one step per model)", ""]
    lines += provenance(r)
    rows = [[key, f"{p['total_s']:.2f}"] + [f"{op.replace('aten::', '')} {share:.1%}" for op, share in p["top_ops"][:6]]
            for key, p in r["profile"].items()]
    lines += table(["model/frames/mask", "profiled s", "op 1", "op 2", "op 3", "op 4", "op 5", "op 6"], rows)
    shares = {key: {op: share for op, share in p["top_ops"]} for key, p in r["profile"].items()}
    dense = {key: sum(v for op, v in ops.items() if op in MATMUL_OPS or "scaled_dot_product" in op)
             for key, ops in shares.items()}
    gelu = ", ".join(f"{key} {ops.get('aten::gelu', 0):.2%}" for key, ops in shares.items())
    lines += [f"Matmuls and SDPA (forward and backward) among the listed ops: {min(dense.values()):.0%}-"
              f"{max(dense.values()):.0%} of the profiled step. `aten::gelu` (ours runs it again in "
              f"backward): {gelu}.", ""]
    return lines


def tradeoff_section(r: dict) -> list[str]:
    lines = ["### The trade-off: masking buys frames (synthetic long-video benchmark, tiny model)", ""]
    lines += provenance(r)
    size = f", {r['image_size']} px" if "image_size" in r else ""
    lines += [f"{r['steps']} steps x batch {r['batch']} for every run (equal samples seen), "
              f"{r['videos']} videos of {r['clip_frames']} frames at 1 FPS{size}; held-out split, "
              "unmasked evaluation.", ""]
    rows = [[x["run"], x["frames"], x["sampling"], f"{x['mask_ratio']:.2f}", x["attention"],
             x["tokens_per_clip"], f"**{x['t2v_r1']:.2f}**", f"{x['v2t_r1']:.2f}", f"{x['t2v_r5']:.2f}",
             f"{x['step_s']:.3f}", f"{x['saved_bytes'] / MiB:.1f}"] for x in r["runs"]]
    chance = r["runs"][0]["chance_r1"] if r["runs"] else 0
    lines += table(["run", "frames", "sampling", "mask", "attention", "tokens/clip", "t2v R@1 %",
                    "v2t R@1 %", "t2v R@5 %", "step s (median)", "saved MiB (batch 16)"], rows)
    runs = {x["run"].split(":")[0]: x for x in r["runs"]}
    lines += [f"Chance R@1: {chance:.2f}%; one held-out pair is {chance:.2f} points of R@1 (one seed)."]
    if "a" in runs and "b" in runs:
        a, b = runs["a"], runs["b"]
        lines += [f"**(b) 64 frames at 75% masking vs (a) 16 frames unmasked, about the same tokens: "
                  f"t2v R@1 {b['t2v_r1']:.2f} vs {a['t2v_r1']:.2f}, v2t R@1 {b['v2t_r1']:.2f} vs "
                  f"{a['v2t_r1']:.2f}.**"]
    lines += [""]
    return lines


def tradeoff_seeds_section(r: dict) -> list[str]:
    lines = ["#### The same runs over several training seeds", ""] + provenance(r)
    lines += [f"Seeds {', '.join(map(str, r['seeds']))}: initial weights, batch order, windows and "
              "masks change; data and recipe as above. Mean over seeds, then each seed.", ""]
    rows = [[x["run"], x["tokens_per_clip"], f"**{x['t2v_r1']:.2f}**", f"{x['v2t_r1']:.2f}",
             f"{x['t2v_r5']:.2f}", " / ".join(f"{s['t2v_r1']:.2f}" for s in x.get("per_seed", [x])),
             " / ".join(f"{s['v2t_r1']:.2f}" for s in x.get("per_seed", [x])), f"{x['step_s']:.3f}"]
            for x in r["runs"]]
    lines += table(["run", "tokens/clip", "t2v R@1 % (mean)", "v2t R@1 % (mean)", "t2v R@5 % (mean)",
                    "t2v R@1 per seed", "v2t R@1 per seed", "step s (median)"], rows)
    return lines


def demo_seeds_sections(parts: list[dict]) -> list[str]:
    """demo_seeds.json, then any other demo_seeds_*.json (the same comparison, other settings)."""
    return [line for r in parts for line in demo_seeds_section(r)]


def demo_seeds_section(r: dict) -> list[str]:
    """The demo's two stages per seed, and in how many seeds stage 2 wins on each measure."""
    settings = {f"{s['steps']} steps at lr {s['lr']:g}" for x in r["runs"] for s in [x.get("stages", {}).get("long")] if s}
    title = f", stage 2 {settings.pop()}" if len(settings) == 1 else ""
    short = {s.get("clips") for x in r["runs"] for s in [x.get("stages", {}).get("short")] if s}
    title = (", stage 1 on short clips" if short == {"short_clips"} else "") + title
    lines = [f"### The demo over seeds: LongViViT (stage 2) vs ShortViViT at 16 frames (stage 1), {r['benchmark']}{title}",
             ""]
    lines += provenance(r)
    if r["overrides"]:
        lines += [f"Overrides of both stages: `{' '.join(r['overrides'])}`.", ""]
    stages = r["runs"][0].get("stages")
    if stages:
        clips = {"short_clips": " on the 64-frame short clips", "train": " on the long clips"}  # demo_seeds' "clips"
        lines += ["Each stage as its run_config.yaml says (seed " + str(r["runs"][0]["seed"]) + "): " + "; ".join(
            f"stage {n} {s['steps']} steps at lr {s['lr']:g}{clips.get(s.get('clips'), '')}"
            for n, s in zip((1, 2, 3), stages.values())) + ".", ""]
    names = {"t2v_r1": "t2v R@1 %", "mc_top1": "multiple choice %", "mc_top1_action": "MC action %",
             "mc_top1_order": "MC order %", "mc_top1_event": "MC event %", "multilabel_map": "multi-label mAP %"}
    keys = [k for k in names if all(k in x["long"] for x in r["runs"])]
    rows = [[x["seed"], *(f"{x['short'][k]:.1f} -> **{x['long'][k]:.1f}**" for k in keys), f"{x['seconds']:.0f}"]
            for x in r["runs"]]
    first = r["runs"][0]["chance"]
    lines += table(["seed", *(f"{names[k]} (chance {first[k]:.1f})" if k in first else names[k] for k in keys),
                    "demo s (all stages)"], rows)
    n = len(r["runs"])

    def change(k: str, before: str, after: str) -> str:
        """'stage B > stage A in W of n seeds (mean change ...)' for measure k."""
        wins = sum(x[after][k] > x[before][k] for x in r["runs"])
        gain = sum(x[after][k] - x[before][k] for x in r["runs"]) / n
        stage = {"short": 1, "long": 2, "tune": 3}
        return (f"- {names[k]}: stage {stage[after]} > stage {stage[before]} in **{wins} of {n}** seeds "
                f"(mean change {gain:+.1f} points)")

    for k in keys:
        above = sum(x["long"][k] > x["chance"][k] for x in r["runs"]) if k in first else None
        lines += [change(k, "short", "long") + (f"; stage 2 above chance in {above} of {n}." if above is not None else ".")]
    if all("tune" in x for x in r["runs"]):
        lines += ["", "Stage 3 (unmasked tuning, demo_tune.yaml) after stage 2, per seed:", ""]
        lines += table(["seed", *(names[k] for k in keys)],
                       [[x["seed"], *(f"{x['long'][k]:.1f} -> **{x['tune'][k]:.1f}**" for k in keys)] for x in r["runs"]])
        lines += [change(k, "long", "tune") + "." for k in keys] + [""]
    return lines + [""]


def claims_section(parts: list[dict]) -> list[str]:
    lines = ["### The paper's claims in miniature (tiny model, synthetic benchmarks)", ""]
    for i, r in enumerate(parts):
        if i:
            lines += [f"#### Claim{'s' * (len(r['claims']) > 1)} {', '.join(c['claim'] for c in r['claims'])} "
                      f"again, {r['steps']} steps", ""]
        lines += claims_part(r)
    return lines


def claims_part(r: dict) -> list[str]:
    runs = r["runs"]
    pairs = sorted({(x["val_pairs"], x["chance_r1"]) for x in runs})
    reused, trainings = sum(x.get("reused", 0) for x in runs), len(runs) * len(r["seeds"])
    lines = provenance(r) + [
        f"{r['steps']} steps x batch {runs[0]['batch']} for every run, {r['videos']} videos per benchmark "
        f"({' and '.join(str(n) for n, _ in pairs)} held out: chance R@1 "
        f"{' and '.join(f'{c:.2f}' for _, c in pairs)}%, one pair that many points of one seed's R@1), "
        f"training seeds {', '.join(map(str, r['seeds']))}; unmasked evaluation. The call took "
        f"{r['wall_s'] / 60:.1f} min (1-min load average {r['load_avg_1m_start']} at its start)"
        + (f", {reused} of its {trainings} trainings (run x seed) reused from an earlier call." if reused else "."),
        ""]
    rows = [[x["run"], x["tokens_per_clip"], x["mask_scheme"] if x["mask_ratio"] else "",
             f"**{x['t2v_r1']:.2f}**", " / ".join(f"{s['t2v_r1']:.2f}" for s in x["per_seed"]),
             f"{x['v2t_r1']:.2f}", " / ".join(f"{s['v2t_r1']:.2f}" for s in x["per_seed"]),
             f"{x['mc_top1']:.2f} (chance {x['mc_chance']:.2f})" if "mc_top1" in x else "",
             f"{x['step_s']:.3f}", f"{x['saved_bytes'] / MiB:.1f}"] for x in runs]
    lines += table(["run", "tokens/clip", "masking", "t2v R@1 % (mean)", "t2v R@1 per seed", "v2t R@1 % (mean)",
                    "v2t R@1 per seed", "MC top-1 % (mean)", "step s (median)",
                    f"saved MiB (batch {runs[0]['batch']})"], rows)
    return lines + table(["claim", "the paper says", "here"],
                         [[c["claim"], c["statement"], f"**{c['verdict']}**"] for c in r["claims"]])


def offload_section(r: dict) -> list[str]:
    lines = ["### ZeRO-3 offload: the trainer's fused torch AdamW vs DeepSpeedCPUAdam", ""] + provenance(r)
    b = r["cpu_adam_build"]
    lines += [f"`{r['ds_config']}`, {r['precision']}, {r['world_size']} process over gloo. Both optimizers "
              "step the fp32 partitions ZeRO-3 offloads to the CPU; same run config, initial weights and "
              "batch; rounds alternate which engine runs first; medians over rounds. Step = engine "
              "forward, backward, engine.step; optimizer = the optimizer's own step() inside it; rest = "
              "step - optimizer. Ratios are DeepSpeedCPUAdam over torch AdamW (< 1: DeepSpeedCPUAdam "
              "faster).", ""]
    rows = [[x["dims"], f"{x['params'] / 1e6:.1f}M", f"{x['frames']}f @ {x['mask_ratio']:.0%}, {x['image_size']} px",
             x["batch"], f"{x['torch_adamw']['step_s']:.3f}", f"{x['ds_cpu_adam']['step_s']:.3f}",
             f"**{x['step_ratio']:.3f}**", " ".join(f"{v:.2f}" for v in x["step_ratio_per_round"]),
             f"{x['torch_adamw']['optimizer_s'] * 1e3:.1f}", f"{x['ds_cpu_adam']['optimizer_s'] * 1e3:.1f}",
             f"**{x['optimizer_ratio']:.3f}**", " ".join(f"{v:.2f}" for v in x["optimizer_ratio_per_round"]),
             f"{x['rest_ratio']:.3f}", f"{x['torch_adamw']['optimizer_s'] / x['torch_adamw']['step_s']:.1%}"]
            for x in r["results"]]
    lines += table(["dims", "params", "clip", "batch", "step s, torch AdamW", "step s, DeepSpeedCPUAdam",
                    "step ratio", "per round", "optimizer ms, torch AdamW", "optimizer ms, DeepSpeedCPUAdam",
                    "optimizer ratio", "per round", "rest ratio", "optimizer share of step (torch)"], rows)
    how = "cold: empty TORCH_EXTENSIONS_DIR" if b["cold"] else "cached"
    lines += [f"cpu_adam JIT build: {b['seconds']:.0f} s ({how}) with {b['compiler']}, ninja {b['ninja']}, "
              f"flags `{' '.join(b['cxx_args'])}`.", ""]
    return lines


def compile_section(r: dict) -> list[str]:
    lines = ["### Compiled blocks (model.compile=true) against eager: ZeRO-3 with activation checkpointing", ""]
    lines += provenance(r)
    lines += [f"`{r['ds_config']}`, {r['precision']}, {r['world_size']} process over gloo, every block of both towers "
              f"checkpointed. Two engines from the trainer's build_engine with the same initial weights and batch, "
              f"one with each block's forward under torch.compile ({r['backend']}); their steps (forward, backward, "
              "engine.step) take turns, every other round in the other order; medians over rounds. The first step "
              f"(the compiled engine compiles in it, {r['inductor_cache']} inductor cache) is timed apart. Ratio: "
              "compiled over eager (< 1: compiled faster). Loss diff: the largest difference between the two "
              "engines' losses, step by step.", ""]
    rows = [[x["dims"], f"{x['params'] / 1e6:.1f}M", f"{x['frames']}f @ 75%", x["batch"],
             f"{x['eager']['step_s']:.3f}", f"{x['compiled']['step_s']:.3f}", f"**{x['ratio']:.3f}**",
             " ".join(f"{v:.2f}" for v in x["ratio_per_round"]),
             f"{x['first_step_s']['eager']:.1f} / {x['first_step_s']['compiled']:.1f}", x["graphs"],
             f"{x['max_loss_diff']:.1e} over {x['steps']} steps"] for x in r["results"]]
    lines += table(["dims", "params", "clip", "batch", "step s, eager", "step s, compiled", "ratio",
                    "per round", "first step s, eager / compiled", "graphs compiled", "loss diff"], rows)
    faster = lambda x: sum(v < 1 for v in x["ratio_per_round"])  # noqa: E731
    return lines + ["**" + "; ".join(f"{x['dims']}: compiled {x['ratio']:.2f}x eager's step time, faster in "
                                     f"{faster(x)} of {len(x['ratio_per_round'])} rounds" for x in r["results"])
                    + ".**", ""]


def decode_section(r: dict) -> list[str]:
    lines = ["### Decoding on CPU: DALI's decoder, PyAV, and the loader's pick of the two", ""] + provenance(r)
    v, k = r["versions"], r["seek"]
    lines += [f"DALI {v['dali']}, PyAV {v['pyav']} (libavcodec {v['ffmpeg']}). `dali`: DALI's CPU decoder "
              "(`fn.decoders.video`) and resize; `pyav`: PyAV seeking to the keyframe before the wanted "
              "frames, then the same DALI resize; `auto`: what the loader runs on CPU, each clip by whichever "
              "of the two decodes fewer frames for it.", ""]
    lines += [f"A {k['window']}-frame window of {k['clip_frames']}-frame clips ({k['clip_size'][0]}x"
              f"{k['clip_size'][1]}, VP9, a keyframe every {k['keyframe_interval']} frames), decoded and resized "
              f"to {k['image_size']} px, one clip per call, 1 thread; ms per window, median over the rounds "
              f"({k['clips']} clips per round):", ""]
    decoded = k["pyav_frames_decoded_per_window"]
    rows = [[x["backend"], x["start"], x["decoder"], f"{x['ms_per_window']:.1f}", f"**{x['vs_first_window']:.2f}x**",
             decoded[str(x["start"])] if x["decoder"] == "pyav" else f"{x['start'] + k['window']} (from frame 0)",
             " ".join(f"{s:.1f}" for s in x["ms_per_window_samples"])] for x in k["rows"]]
    lines += table(["backend", "window start", "decoded by", "ms per window", "vs window at 0", "frames decoded",
                    "per round ms"], rows)
    last = {x["backend"]: x for x in k["rows"] if x["start"] == max(y["start"] for y in k["rows"])}
    lines += [f"**The last window costs {last['dali']['vs_first_window']:.2f}x the first with DALI's decoder, "
              f"{last['auto']['vs_first_window']:.2f}x with the loader's CPU path (`auto`), which decodes it "
              f"{last['dali']['ms_per_window'] / last['auto']['ms_per_window']:.1f}x faster.**", ""]
    lines += ["Frames decoded and resized per second, batches of 4 clips, median over the rounds:", ""]
    lines += table(["data", "backend", "threads", "frames/s", "per round"],
                   [[x["data"], x["backend"], x["threads"], f"**{x['frames_per_s']:.0f}**",
                     " ".join(f"{s:.0f}" for s in x["frames_per_s_samples"])] for x in r["throughput"]])
    a = r["agreement"]
    same = all(x["max_abs_diff_pyav_vs_dali"] == 0 for x in a.values())
    lines += [("The two backends' batches are bit-identical" if same else "The two backends' batches DIFFER")
              + " (max |diff| " + ", ".join(f"{x['max_abs_diff_pyav_vs_dali']} ({n})" for n, x in a.items())
              + "). Against a PyAV-only reference that crops the same square, then resizes it with swscale's "
              "bilinear filter: " + ", ".join(f"{x['psnr_dali_vs_pyav_reference_db']:.1f} dB ({n})" for n, x in a.items())
              + ".", ""]
    ld = r.get("loader")
    if ld:
        lines += [f"build_loader ({ld['frames']} frames, {ld['image_size']} px, batch {ld['batch']}, "
                  f"{ld['loader_workers']} DataLoader worker, {ld['epochs']} epochs per measure, {ld['rounds']} rounds "
                  f"with the thread counts taking turns, medians) by decode threads; the tiny model alone: "
                  f"{ld['model_steps_per_s']:.3f} steps/s on random batches of that shape:", ""]
        lines += table(["decode threads", "loader samples/s", "per round", "train steps/s fed by the loader",
                        "per round"],
                       [[x["threads"], f"{x['loader_samples_per_s']:.2f}",
                         " ".join(f"{v:.1f}" for v in x["loader_samples_per_s_samples"]),
                         f"**{x['train_steps_per_s_fed_by_loader']:.3f}**",
                         " ".join(f"{v:.3f}" for v in x["train_steps_per_s_samples"])] for x in ld["rows"]])
    return lines


def padding_section(parts: list[dict]) -> list[str]:
    lines = ["### Padded clips: padding dropped before the encoder (masked or packed) vs encoded as frames", ""]
    for r in parts:
        lines += provenance(r)
    lines += ["Tiny video encoder train step (forward, scalar loss, backward, fused AdamW), fp32, median "
              "over interleaved rounds. `content`: real_frames not passed, the padding (last frame "
              "repeated) is encoded and pooled; `dropped`: its tokens are dropped like masked ones, rows "
              "padded to the batch's longest clip with a key mask (video.packing=masked); `packed`: the "
              "clips' tokens of content in one sequence, attention per clip without a mask "
              "(video.packing=packed; on the CPU one SDPA call per clip); `whole`: no clip padded.", ""]
    rows = [[f"{r['batch']} x {r['frames']}f, real frames cycling {r['real_frames']}", f"{r['mask_ratio']:.0%}",
             name, c["row_tokens"], c.get("batch_tokens", ""), f"{c['step_s']:.4f}",
             f"**{c['time_vs_content']:.3f}**", f"{c['saved_bytes'] / MiB:.1f}", f"{c['bytes_vs_content']:.4f}"]
            for r in parts for name, c in r["cases"].items()]
    lines += table(["batch", "mask", "case", "tokens per row", "tokens in the batch", "step s", "time / content",
                    "saved MiB", "bytes / content"], rows)
    for r in parts:
        d, full = r["cases"]["dropped"], r["cases"]["content"]["row_tokens"]
        shorter = d["row_tokens"] < full
        lines += [f"**Real frames {r['real_frames']}: rows of {d['row_tokens']} tokens instead of {full}; "
                  + (f"dropping the padding takes {d['time_vs_content']:.2f}x the time and "
                     f"{d['bytes_vs_content']:.2f}x the saved bytes.**" if shorter else
                     f"the longest clip sets the row width, so dropping changes the work by "
                     f"{d['time_vs_content']:.2f}x in time and {d['bytes_vs_content']:.4f}x in bytes (the key mask's cost).**"),
                  ""]
        p = r["cases"].get("packed")
        if p:
            lines += [f"Packed: {p['batch_tokens']} tokens instead of {d['batch_tokens']}, "
                      f"{p['step_s'] / d['step_s']:.2f}x the masked rows' time and "
                      f"{p['saved_bytes'] / d['saved_bytes']:.2f}x their saved bytes.", ""]
    return lines


def sequence_section(r: dict) -> list[str]:
    lines = ["### Sequence parallelism (parallel.sequence, Ulysses): one clip over 2 ranks", ""] + provenance(r)
    saved, steps = r["saved_bytes"], r["step_s"]
    lines += [f"The tiny dual encoder (both towers, InfoNCE, backward; CLS token), {r['batch']} clips of "
              f"{r['frames']} frames at {r['mask_ratio']:.0%} masking, 2 processes over gloo with "
              f"{r['threads_per_rank']} thread(s) each. `one_rank`: rank 0 runs the batch alone; `split`: the two "
              "ranks run it as one sequence group (each half of every clip's tokens, an all-to-all before and "
              "after each attention). Step time is rank 0's between barriers, median over interleaved rounds; "
              "saved bytes are exact.", ""]
    lines += table(["case", "step s", "per round", "saved MiB per rank", "loss"],
                   [["one_rank", f"{steps['one_rank']:.4f}", " ".join(f"{v:.3f}" for v in r["step_s_samples"]["one_rank"]),
                     f"{saved['one_rank'] / MiB:.2f}", f"{r['loss']['one_rank']:.6f}"],
                    ["split", f"{steps['split']:.4f}", " ".join(f"{v:.3f}" for v in r["step_s_samples"]["split"]),
                     " / ".join(f"{b / MiB:.2f}" for b in saved["split_per_rank"]), f"{r['loss']['split']:.6f}"]])
    sent = r["all_to_all_bytes_sent_per_rank"][0]
    lines += [f"**Split over 2 ranks, a rank saves {r['saved_split_vs_one_rank']:.2f}x the bytes one rank saves for "
              f"the whole batch, and the step takes {r['split_vs_one_rank']:.2f}x its time here** (each rank sent "
              f"{sent / MiB:.1f} MiB through all-to-all per step; the text tower runs on both ranks).", ""]
    pl = r["plans"]
    lines += [f"`longvivit plan {pl['config']} parallel.sequence=N --gpus {pl['gpus']} --gpu-mem {pl['gpu_mem']}` "
              f"(predictions, not GPU measurements):", ""]
    ratios = sorted({k.split("_at_")[1] for n in pl if n.startswith("sequence_") for k in pl[n] if "_at_" in k},
                    key=float, reverse=True)
    rows = []
    for name in sorted((n for n in pl if n.startswith("sequence_")), key=lambda n: int(n.split("_")[1])):
        x = pl[name]
        hours = [f"{'fits' if x[f'hour_at_{q}']['fits'] else 'does not fit'} "
                 f"({x[f'hour_at_{q}']['total_bytes'] / GiB:.1f} GiB)" for q in ratios]
        rows.append([name.split("_")[1], f"{x['activations_bytes'] / GiB:.2f}", f"{x['total_bytes'] / GiB:.2f}",
                     f"**{x['max_frames']:,}**", *hours])
    lines += table(["parallel.sequence", "activations GiB", "total GiB", "max frames",
                    *[f"{pl['hour_frames']:,} frames at {float(q):.0%}" for q in ratios]], rows)
    first, last = pl["sequence_1"], pl[f"sequence_{pl['gpus']}"]
    fits = lambda x: [f"{float(q):.0%}" for q in ratios if x[f"hour_at_{q}"]["fits"]]  # noqa: E731
    lines += [f"**At parallel.sequence={pl['gpus']} the plan fits {last['max_frames'] / first['max_frames']:.1f}x the "
              f"frames ({first['max_frames']:,} -> {last['max_frames']:,}); an hour fits at "
              f"{' / '.join(fits(first)) or 'none of these'} masking alone and at "
              f"{' / '.join(fits(last)) or 'none of these'} split.**", ""]
    return lines


def hour_section(r: dict) -> list[str]:
    s, fps = r["step"], r["fps"]
    minutes = lambda frames: f"{frames / fps / 60:.0f} min"  # noqa: E731
    lines = [f"### An hour of video: {s['frames']:,} frames at {fps:g} FPS", ""] + provenance(r)
    lines += [f"The {s['preset']} model ({s['image_size']} px, tubelet {'x'.join(map(str, s['tubelet']))}, "
              f"{s['params'] / 1e6:.2f}M parameters), {s['batch']} clips of {s['frames']:,} frames "
              f"({minutes(s['frames'])}) at {s['mask_ratio']:.0%} random masking: {s['visible_tokens']:,} of "
              f"{s['tokens']:,} tokens a clip. Step = forward (both towers, InfoNCE), backward, fused AdamW, "
              "fp32. Saved bytes are exact (`saved_bytes`) except where marked FakeTensors.", ""]
    rows = [[f"{s['batch']} x {s['frames']:,}f @ {s['mask_ratio']:.0%}", "whole model", f"{s['visible_tokens']:,}",
             f"{s['saved_bytes'] / MiB:.1f}"],
            [f"{s['batch']} x {s['short_frames']:,}f @ 0%", "whole model", f"{s['short_visible_tokens']:,}",
             f"{s['short_saved_bytes'] / MiB:.1f}"],
            [f"{s['batch']} x {s['frames']:,}f @ {s['mask_ratio']:.0%}", "video tower", f"{s['visible_tokens']:,}",
             f"{s['video_saved_bytes'] / MiB:.1f}"],
            [f"{s['batch']} x {s['frames']:,}f @ 0%", "video tower", f"{s['tokens']:,}",
             f"{s['video_saved_bytes_unmasked_fake'] / MiB:.1f} (FakeTensors)"]]
    lines += table(["clips", "part", "tokens a clip", "saved MiB"], rows)
    peak = s["peak_rss_bytes"]
    peak_text = (f"raised the resident set by {peak / MiB:.1f} MiB at its peak ({peak / s['saved_bytes']:.2f}x "
                 "the saved bytes)" if peak is not None else "peak resident memory not measured (no /proc)")
    lines += [f"**{s['frames']:,} frames at {s['mask_ratio']:.0%} masking save {s['saved_bytes'] / MiB:.1f} MiB: "
              f"{s['saved_bytes'] / s['short_saved_bytes']:.3f}x what {s['short_frames']:,} frames unmasked save, "
              f"and the video tower {s['video_saved_bytes'] / s['video_saved_bytes_unmasked_fake']:.3f}x of its "
              f"unmasked count. The first step {peak_text}; a step took {s['step_s']:.2f} s (median of "
              f"{len(s['step_s_samples'])}, {min(s['step_s_samples']):.2f}-{max(s['step_s_samples']):.2f} s).** "
              f"The uint8 batch is {s['uint8_batch_bytes'] / MiB:.1f} MiB.", ""]
    plans = r["plans"]
    lines += [f"`longvivit plan` for {s['frames']:,} frames at {plans[0]['mask_ratio']:.0%} masking "
              f"({plans[0]['gpus']} GPUs, ZeRO-3):", ""]
    rows = [[f"`{p['command']}`", f"{p['params'] / 1e6:.0f}M ({p['trainable_params'] / 1e6:.0f}M trainable)",
             f"{p['micro_batch']} x {p['frames']:,}f @ {p['mask_ratio']:.0%}",
             f"{p['visible_tokens']:,} of {p['tokens']:,}",
             f"{p['bytes']['activations'] / GiB:.2f}", f"{p['bytes']['inputs'] / GiB:.2f}", f"{p['total'] / GiB:.2f}",
             "**fits**" if p["fits"] else "**does not fit**", f"{p['headroom'] / GiB:.1f}", p["max_micro_batch"],
             f"{p['max_frames']:,} ({minutes(p['max_frames'])})"] for p in plans]
    lines += table(["command", "params", "micro-batch", "visible tokens a clip", "activations GiB", "inputs GiB",
                    "total GiB", "verdict", "headroom GiB", "max micro-batch", "max frames"], rows)
    fit = [p for p in plans if p["fits"]]
    lines += [f"**{len(fit)} of {len(plans)} configs fit {s['frames']:,} frames on {plans[0]['gpus']} x "
              f"{plans[0]['gpu_mem'] / GiB:.0f} GiB"
              + "".join(f"; {p['preset']}: {p['total'] / GiB:.1f} GiB per GPU at micro-batch {p['micro_batch']}, "
                        f"up to {p['max_micro_batch']} clips a GPU" for p in plans) + ".**", ""]
    return lines


def zero_init_section(parts: list[dict]) -> list[str]:
    lines = ["### Building the model under ZeRO-3: whole on every rank vs partitioned (deepspeed.zero.Init)", ""]
    for r in parts:
        lines += provenance(r)
    lines += ["Each way in fresh processes (CPU accelerator, gloo, 1 thread), built as `longvivit train` builds "
              "it (longvivit/train/construct.py; demo.yaml with the preset, zero3_cpu.json, fp32). Peak rise = "
              "how far a rank's resident set rose above where it stood before the build, at its highest (VmHWM "
              "reset first); MALLOC_MMAP_THRESHOLD_ as listed (glibc: its default, which keeps freed heap "
              "blocks resident; bench/zero_init.py says why the default runs use a fixed one).", ""]
    rows = [zero_init_row(r, way, x) for r in parts for way, result in r["results"].items() for x in result["ranks"]]
    lines += table(["preset", "params", "malloc", "way", "rank", "params held", "peak rise MiB", "VmHWM MiB",
                    "build s", "weights vs whole build (gathered)"], rows)
    for r in parts:
        high = r["highest_peak_rss_increase_bytes"]
        malloc = f"MALLOC_MMAP_THRESHOLD_={r['mmap_threshold']}" if r["mmap_threshold"] else "glibc's default malloc"
        if "partitioned_over_whole" in r:
            lines += [f"**{r['preset']} ({malloc}): the highest partitioned rank peaked "
                      f"{high['partitioned'] / MiB:,.0f} MiB above its start, {r['partitioned_over_whole']:.2f}x the "
                      f"highest whole rank's {high['whole'] / MiB:,.0f} MiB.**", ""]
        else:
            whole = 4 * r["results"]["partitioned"]["ranks"][0]["params_total"]
            lines += [f"**{r['preset']} ({malloc}): the highest partitioned rank peaked "
                      f"{high['partitioned'] / MiB:,.0f} MiB above its start, {high['partitioned'] / whole:.2f}x "
                      f"the {whole / MiB:,.0f} MiB of the whole model's fp32 weights.**", ""]
    return lines


def zero_init_row(r: dict, way: str, x: dict) -> list:
    """One rank of one way of building (bench/zero_init.py)."""
    check = x.get("check")
    same = "" if check is None else (f"{check['compared'] - len(check['differ'])} of {check['compared']} equal"
                                     + (", no-decay names equal" if check["same_no_weight_decay"] else ""))
    malloc = f"{r['mmap_threshold']} B" if r["mmap_threshold"] else "glibc"
    return [r["preset"], f"{x['params_total'] / 1e6:.0f}M", malloc, way, x["rank"], f"{x['params_held'] / 1e6:.1f}M",
            f"{x['peak_rss_increase_bytes'] / MiB:,.0f}", f"{x['vm_hwm_bytes'] / MiB:,.0f}", f"{x['build_s']:.1f}",
            same]


def embed_section(r: dict) -> list[str]:
    lines = ["### Embedding throughput: `longvivit embed` from raw files and from shards", ""] + provenance(r)
    lines += [f"{r['videos']} synthetic videos of the demo ({r['frames']} frames at 1 FPS, {r['size']} px, VP9), the "
              f"{r['preset']} model with random weights, batches of {r['batch_size']} clips, one rank on the "
              f"{r['device'].upper()}, captions embedded too; a fresh index each round, the two inputs taking turns, "
              f"medians of {r['rounds']} rounds. videos/s: over the whole call (model load and index merge "
              "included); decoding: its share of the chunks' decode + encode time.", ""]
    rows = [[name, f"**{c['videos_per_s']:.2f}**", f"{c['decode_share']:.0%}",
             " ".join(f"{x:.2f}" for x in c["videos_per_s_rounds"]),
             " ".join(f"{x:.0%}" for x in c["decode_share_rounds"])] for name, c in r["cases"].items()]
    lines += table(["input", "videos/s", "decoding", "videos/s per round", "decoding per round"], rows)
    raw, shards = r["cases"]["raw files"], r["cases"]["shards"]
    lines += [f"**{raw['videos_per_s']:.1f} videos/s from raw files ({raw['decode_share']:.0%} of the time decoding: "
              f"PyAV at the shard FPS and size, then DALI's resize), {shards['videos_per_s']:.1f} from shards "
              f"({shards['decode_share']:.0%}: DALI's CPU decoder).**", ""]
    return lines


def search_section(r: dict) -> list[str]:
    def ms(x: float | None) -> str:
        return "" if x is None else f"{x * 1e3:.3g}"

    def where(c: dict | None) -> str:
        if c is None or c["faster_from"] is None:
            return "not faster at any size measured" if c else "not measured"
        if c["rows"] is None:
            return f"faster at every size measured (from {c['faster_from']:,} rows)"
        return f"faster from about **{c['rows']:,} rows** (measured: from {c['faster_from']:,})"

    lines = ["### Search: exact (torch matrix product) against faiss, by index size", ""] + provenance(r)
    lines += [f"Random L2-normalised rows of dimension {r['dim']} (the L preset's embed_dim), k {r['k']}, faiss "
              f"{r['faiss']}, {r['threads']} torch and {r['threads']} faiss thread(s); ms per query batch, medians of "
              f"{r['rounds']} rounds in which the cases took turns (each sample max(1, {r['repeat_rows']:,} / rows) "
              "calls). exact: `top_k`, the default; faiss: faiss's flat inner-product search of the rows in place "
              "(`--backend faiss`); faiss + IndexFlatIP build: an index built from the rows on every call (up to "
              f"{r['build_max_rows']:,} rows); IVF: IndexIVFFlat, sqrt(rows) cells, 1/8 of them probed, query time "
              f"only (built once; up to {r['ivf_max_rows']:,} rows), and its recall@{r['k']} against exact on these "
              "cluster-free rows.", ""]
    for nq, q in r["queries"].items():
        rows = []
        for e in q["sizes"]:
            ivf = e.get("ivf")
            rows.append([f"{e['rows']:,}", ms(e["exact_s"]), ms(e["faiss_s"]), f"{e['exact_s'] / e['faiss_s']:.2f}",
                         ms(e.get("faiss+build_s")), ms(e.get("ivf_s")),
                         f"{ivf['build_s'] * 1e3:.0f}" if ivf else "", f"{ivf['recall']:.2f}" if ivf else "",
                         f"{e['faiss_same_ids']:.0%}"])
        lines += [f"{nq} quer{'y' if nq == '1' else 'ies'} per batch:", ""]
        lines += table(["rows", "exact ms", "faiss ms", "exact / faiss", "faiss + IndexFlatIP build ms", "IVF ms",
                        "IVF build ms", f"IVF recall@{r['k']}", "faiss ids = exact"], rows)
        lines += [f"**{nq} quer{'y' if nq == '1' else 'ies'}: faiss {where(q['crossover'])}; with an IndexFlatIP built "
                  f"per call, {where(q['crossover_with_build'])}.**", ""]
    return lines


def mc_probe_sections(parts: list[dict]) -> list[str]:
    return [line for r in parts for line in mc_probe_section(r)]


def mc_probe_section(r: dict) -> list[str]:
    """Whole-caption direction (flip) and order (swap) tests per run and split, and which of
    them are beyond chance (outside the 95% interval of a fair coin over their pairs); then
    the linear probes where the run made them."""
    title = ("Multiple choice probed: caption vs its flipped or swapped self, events 16 frames see or miss"
             if r.get("long_range", True) else "The same probes on the default benchmark (`longvivit demo`)")
    lines = [f"### {title}", ""]
    lines += provenance(r)
    lines += [f"On the benchmark in `{r['synth']}`: the share of (clip, variant) pairs where the clip's caption "
              "outscores the same caption with one event flipped (`flip`) or two neighbouring events swapped "
              "(`swap`), chance 50%; then the multiple-choice items as `longvivit eval` scores them.", ""]

    def beyond(x: dict, k: str) -> bool:
        return abs(x[k] - 50.0) > 100.0 / x[f"{k}_pairs"] ** 0.5

    def cell(x: dict, k: str) -> str:
        return f"{x[k]:.1f}{' *' if beyond(x, k) else ''} ({x[f'{k}_pairs']})"

    rows = [[x["run"], x["split"], x["clips"], cell(x, "flip"), cell(x, "swap"),
             *(f"{x[k]:.1f}" if k in x else "-" for k in ("mc_top1", "mc_top1_action", "mc_top1_order",
                                                            "mc_top1_event_seen", "mc_top1_event_missed")),
             f"{100 * x['reversal_share']:.1f}" if "reversal_share" in x else "-"]
            for x in r["results"]]
    lines += table(["run", "split", "clips", "flip % (pairs)", "swap % (pairs)", "MC %", "MC action %",
                    "MC order %", "MC event % (16 frames see it)", "MC event % (16 frames miss it)",
                    "reversal share %"], rows)
    val = [x for x in r["results"] if x["split"] == "val"]
    above = [f"{x['run']} ({k} {x[k]:.1f})" for x in val for k in ("flip", "swap") if beyond(x, k) and x[k] > 50.0]
    below = [f"{x['run']} ({k} {x[k]:.1f})" for x in val for k in ("flip", "swap") if beyond(x, k) and x[k] < 50.0]
    said = ([f"above chance: {', '.join(above)}."] if above else []) + (
        [f"below chance (the variant outscores the clip's own caption): {', '.join(below)}."] if below else [])
    lines += ["", "`*`: outside the 95% interval of chance (50 +- 100/sqrt(pairs) points). On held-out clips, "
              + (" ".join(said) if said else
                 f"none of the {len(val)} runs tells a caption from its flipped or swapped self beyond chance.")]
    split_val = [x for x in val if "mc_items_event" in x]
    if split_val:
        lines += ["", "`MC event`: the event items (chance 25%), split by whether ShortViViT's 16 uniform frames of "
                  "the clip fall inside the asked event. Held-out items 16 frames see / miss: "
                  + ", ".join(f"{x['run']} {x.get('mc_items_event_seen', 0)} / {x.get('mc_items_event_missed', 0)}"
                              for x in split_val) + "."]
    reversed_val = [x for x in val if "reversal_share" in x]
    if reversed_val:
        lines += ["", "`reversal share`: how far playing a clip backwards moves its video embedding, as a share of the "
                  "distance between two different clips of the split (1 - cos(clip, reversed) over 1 - mean cos of two "
                  "clips; 0: the embedding ignores frame order). Held-out clips: "
                  + ", ".join(f"{x['run']} {100 * x['reversal_share']:.1f}% (cos {x['reversal_cos']:.3f} with its "
                              f"reversal, {x['other_cos']:.3f} with another clip)" for x in reversed_val) + "."]
    return lines + linear_probe_lines(r.get("linear", [])) + [""]


def linear_probe_lines(rows: list[dict]) -> list[str]:
    """Held-out accuracy of the linear probes (bench/mc_probe.py --linear) per run and target,
    each next to its majority class, and which events' direction each run holds beyond it."""
    if not rows:
        return []
    targets = [k for k in rows[0] if k != "run"]
    lines = ["", "Linear probes (`--linear`): held-out accuracy % of a logistic regression on the frozen video "
             "embeddings fit on every training clip; in brackets the majority class's share. `direction`: up or "
             "grows vs down or shrinks. `pixels (N frames)`: the same probe on the first run's N frames "
             "average-pooled to 4x4, a linear read of the input: where a clip's events sit in fixed segments "
             "(the default benchmark) it shows what the frames give away; on the long-range benchmark, whose events "
             "start at random times and which 16 frames see at most once each, it is no ceiling.", ""]
    lines += table(["run", *(t.replace("_", " ") for t in targets)],
                   [[x["run"], *(f"{x[t]['acc']:.1f} ({x[t]['majority']:.1f})" for t in targets)] for x in rows])

    def beyond(x: dict) -> list[str]:  # 95% interval of the majority rate over the held-out clips
        return [t.split("_")[0] for t in targets if t.endswith("direction") and x[t]["acc"] - x[t]["majority"]
                > 196.0 * (x[t]["majority"] * (100.0 - x[t]["majority"])) ** 0.5 / 100.0 / x[t]["clips"] ** 0.5]
    held = [f"{x['run']} ({', '.join(beyond(x))})" for x in rows if beyond(x)]
    events = sum(t.endswith("direction") for t in targets)
    return lines + ["Direction beyond the majority class (95% interval over the held-out clips): "
                    + (", ".join(held) if held else "none") + f", of {len(rows)} rows and {events} events each."]


SECTIONS = [("decode", decode_section), ("plan", plan_section), ("masking", masking_section), ("mfu", mfu_section),
            ("peers", peers_section), ("peers_profile", peers_profile_section),
            ("tradeoff", tradeoff_section),
            ("tradeoff_seeds", tradeoff_seeds_section), ("demo_seeds", demo_seeds_sections), ("mc_probe", mc_probe_sections),
            ("mc_probe_default", mc_probe_section),
            ("claims", claims_section),
            ("offload", offload_section), ("compile", compile_section), ("padding", padding_section),
            ("sequence", sequence_section),
            ("hour", hour_section), ("zero_init", zero_init_section), ("embed", embed_section),
            ("search", search_section)]


OPTIONAL = {"tradeoff_seeds", "peers_profile", "demo_seeds", "mc_probe", "mc_probe_default"}


# ---------------------------------------------------------------------------- GPU acceptance suite

def gpu_provenance(s: dict) -> list[str]:
    m = s["machine"]
    where = "" if s["cwd"] == "." else f" (in {s['cwd']})"
    return [f"    {s['command']}", "",
            f"{s['date']}{where}; {m['gpu']} ({m['gpu_memory_gib']} GiB, compute capability "
            f"{m['compute_capability']}), {m['nproc']} cores ({m['cpu']}); Python {m['python']}, torch "
            f"{m['torch']}, CUDA {m['cuda']}, NCCL {m['nccl']}, deepspeed {m['deepspeed']}, DALI "
            f"{m['nvidia.dali']}, PyAV {m['av']}, streaming {m['streaming']}.", ""]


def gpu_trainer(r: dict) -> list[str]:
    steps, half, losses = r["steps"], r["stopped_at"], r["losses_straight"]
    codes = ", ".join(f"{n} {c}" for n, c in r["exit_codes"].items())
    backends = set(r["backend"].values())
    lines = [f"`longvivit train`, one process: {r['preset']} at {r['frames']} frames, {r['mask_ratio']:.0%} "
             f"masking, batch {r['batch']}, ZeRO-3 bf16, synthetic clips. Exit status: {codes}; process group "
             + (f"{backends.pop()} in every run." if len(backends) == 1 else f"backends: {r['backend']}.")]
    if losses:
        lines += [f"Straight run: {len(losses)} steps, loss {losses[0]:.4f} at step 1, {losses[-1]:.4f} at "
                  f"step {len(losses)}, {'all finite' if r['finite'] else 'NOT all finite'}."]
    if r["steps_resumed"]:
        if r["exact"]:
            agreement = "identical to the straight run's, bitwise"
        else:
            verdict = "within" if r["max_rel_diff"] <= r["rtol"] else "OUTSIDE"
            agreement = (f"at most {r['max_abs_diff']:.2e} from the straight run's ({r['max_rel_diff']:.2e} "
                         f"relative; {verdict} the {r['rtol']:.0e} tolerance)")
        lines += [f"Stopped at step {half} and rerun to {steps}: steps {r['steps_resumed'][0]}-"
                  f"{r['steps_resumed'][-1]} logged, losses {agreement}; batch indices "
                  f"{'identical' if r['indices_equal'] else 'DIFFERENT'}."]
    return [" ".join(lines), ""]


def gpu_attention(r: dict) -> list[str]:
    kernels = "; ".join(f"{k}: {v['count']} kernels, {v['time_us'] / 1e3:.2f} ms (e.g. `{v['names'][0][:80]}`)"
                        for k, v in r["kernels"].items()) or "none classified"
    a = r["bf16_vs_fp32"]
    return [f"scaled_dot_product_attention in one bf16 forward + backward of the {r['preset']} video tower "
            f"({r['batch']} clips x {r['tokens']} tokens): {kernels}. Math fallback: "
            f"{'USED' if r['math'] else 'not used'}. bf16 against fp32 (same weights and clip, no TF32): "
            f"embedding cosine at least {a['embedding_cosine_min']:.5f} (threshold {r['embed_cosine_min']}), "
            f"gradient cosine {a['grad_cosine']:.5f} (threshold {r['grad_cosine_min']}), gradient norms "
            f"{a['grad_norm_bf16']:.4g} vs {a['grad_norm_fp32']:.4g} ({a['grad_norm_rel_diff']:.2%} apart; "
            f"threshold {r['grad_norm_rtol']:.0%}).", ""]


def cell_label(row: dict) -> str:
    return f"{row['preset']}, {row['batch']} x {row['frames']}f @ {row['mask_ratio']:.0%}"


def gpu_plan_memory(r: dict) -> list[str]:
    rows, ok = [], 0
    for x in r["rows"]:
        if "error" in x:
            rows.append([cell_label(x), f"{x['plan_total'] / GiB:.2f}", "", "", f"error: {x['error']}", "", ""])
            continue
        ok += x["within"]
        rows.append([cell_label(x), f"{x['plan_total'] / GiB:.2f}", f"{x['predicted_allocated'] / GiB:.2f}",
                     f"{x['measured_peak'] / GiB:.2f}", f"**{x['predicted_over_measured']:.3f}**",
                     "yes" if x["within"] else "**no**", f"{x['measured_reserved_peak'] / GiB:.2f}"])
    lines = [f"`longvivit plan` (gpus={r['gpus']}) against torch.cuda.max_memory_allocated over real ZeRO-3 bf16 "
             "steps, each cell in its own process. Compared: the plan's parts without `reserve` (its 1 GiB "
             "is the CUDA context outside the allocator, its 10% an allowance for fragmentation) against "
             "the measured peak.", ""]
    lines += table(["cell", "plan total GiB", "plan without reserve GiB", "measured peak GiB", "plan / measured",
                    f"within {r['rtol']:.0%}", "peak reserved GiB"], rows)
    return lines + [f"{ok} of {len(r['rows'])} cells within {r['rtol']:.0%} of the measured peak.", ""]


def gpu_mfu(r: dict) -> list[str]:
    rows = [[cell_label(x), f"error: {x['error']}"] if "error" in x else
            [cell_label(x), f"{x['step_s_median']:.3f}", f"{x['tflops_median']:.1f}", f"**{x['mfu_median']:.1%}**",
             f"{x['mfu_vs_matmul']:.1%}", x["steps_measured"]] for x in r["rows"]]
    peaks = {x["peak_tflops"] for x in r["rows"] if "peak_tflops" in x}
    lines = [f"The trainer's logged MFU of the whole step (both towers, loss, backward, AdamW, ZeRO-3, bf16), "
             f"median over the steps after {r['warmup_steps']} warm-up steps, against the spec-sheet bf16 "
             f"peak the trainer uses for this GPU, {', '.join(f'{p:.0f}' for p in sorted(peaks))} TFLOP/s; a "
             f"bf16 8192^3 matmul measured {r['matmul_tflops']:.0f} TFLOP/s here.", ""]
    return lines + table(["cell", "step s (median)", "TFLOP/s", "MFU (spec peak)", "vs measured matmul",
                          "steps"], rows)


def gpu_decode(r: dict) -> list[str]:
    rows = [[codec, x["clips"], x["decode_failures"], f"{x['psnr_min_db']:.1f}", f"{x['psnr_mean_db']:.1f}"]
            for codec, x in r["codecs"].items()]
    f = r["feed"]
    lines = [f"DALI mixed (NVDEC) against PyAV on the same shard bytes ({r['videos']} synthetic clips, "
             f"{r['frames']} frames at {r['size']} px; threshold {r['psnr_min']:.0f} dB):", ""]
    lines += table(["codec", "clips", "decode failures", "PSNR min dB", "PSNR mean dB"], rows)
    return lines + [f"The loader (H.264, {r['workers']} workers) feeding a bf16 B step, batch {f['batch']}: "
                    f"data_wait {f['data_wait']:.1%} over {f['steps']} steps, {f['fed_samples_per_s']:.1f} "
                    f"samples/s fed against {f['step_samples_per_s']:.1f} samples/s for the step alone.", ""] \
        + trainer_feed_lines(r.get("trainer_feed"))


def trainer_feed_lines(t: dict | None) -> list[str]:
    if t is None:
        return []
    if "skipped" in t or "error" in t:
        return [f"The trainer on these shards: {t.get('skipped') or t['error']}", ""]
    verdict = "within" if t["data_wait"] <= t["data_wait_max"] else "ABOVE"
    return [f"`longvivit train` of {t['config']} (its real form at batch {t['batch']}, no image steps) on the H.264 "
            f"shards, GPU-decoded: data_wait **{t['data_wait']:.1%}** of the step time over steps "
            f"{t['steps_measured'][0]}-{t['steps_measured'][-1]} ({verdict} the {t['data_wait_max']:.0%} bound), "
            f"median step {t['step_s_median'] * 1e3:.0f} ms, {t['decode_failures']} decode failures.", ""]


def per_micro(counts: dict) -> str:
    return ", ".join(f"{o} {n:.2g}" for o, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


def gpu_shipped(r: dict) -> list[str]:
    rows, notes, sites = [], [], []
    for name, x in r["configs"].items():
        label = (f"{name} ({x['preset']}, {x['batch']} x {x['frames']}f @ {x['mask_ratio']:.0%}, "
                 f"accum {x['grad_accum']})")
        if "error" in x:
            rows.append([label, f"error: {x['error']}"] + [""] * 8)
            continue
        # by source name: the shipped configs' "video" and "images" ("image" in records from before data.sources)
        video, image = x["by_source"].get("video", {}), x["by_source"].get("images", x["by_source"].get("image"))
        plan = x["plan"]
        s = x["syncs"]
        micro = max(s["micro_batches"], 1)
        rows.append([label, f"{Path(x['ds_config']).stem} {x['precision']}",
                     f"{video.get('step_s', float('nan')) * 1e3:.0f}", f"{video.get('tokens_per_s', 0):,.0f}",
                     f"{video.get('mfu', float('nan')):.1%}", f"{image['step_s'] * 1e3:.0f}" if image else "",
                     f"{x['peak_bytes'] / GiB:.2f}",
                     f"{plan['allocated'] / GiB:.2f} / {plan['total'] / GiB:.2f}" if "allocated" in plan else "error",
                     f"{s['model'] / micro:.2g} (allowed {s['model_allowed'] / micro:.2g})",
                     per_micro({o: n for o, n in s["per_micro_batch"].items() if o != "model"})])
        if x["init"]["why"] != "as shipped":
            notes.append(f"{name}: init {x['init']['shipped']!r} -> {x['init']['ran'] or 'random'!r} "
                         f"({x['init']['why']})")
        sites += [f"{name}: {y['count']} x `{y['at']}`" + (f" (via `{y['via']}`)" if y["via"] else "")
                  for y in s["sites"][:4]]
    lines = [f"Each shipped GPU config in its real form on this one GPU: micro-batch {r['batch']} (images "
             f"{r['image_batch']}), synthetic clips on the device, {r['steps']} steps; step times are medians after "
             f"{r['warmup']} video steps and the first image step; the last {r['sync_steps']} steps under "
             "torch.cuda.set_sync_debug_mode('warn'), host syncs counted per micro-batch by origin.", ""]
    lines += table(["config", "ds_config", "video step ms", "video tokens/s", "MFU", "image step ms",
                    "peak GiB", "plan GiB (allocated / total)", "model syncs / micro-batch",
                    "other syncs / micro-batch"], rows)
    return lines + [f"- {n}" for n in notes + sites] + ([""] if notes or sites else [])


def count(n: float | None) -> str:
    return "not counted" if n is None else f"{n:.2g}"


def gpu_shipped_model(r: dict) -> list[str]:
    def kernels(k: dict) -> str:
        return "; ".join(f"{b} {v['count']} ({v['time_us'] / 1e3:.2f} ms)" for b, v in k.items()) or "none"

    rows = []
    for name, x in r["configs"].items():
        if "error" in x:
            rows.append([name, f"error: {x['error']}"] + [""] * 6)
            continue
        nb = x.get("without_cls_copies")
        rows.append([name, f"{x['tokens']:,} x {x['batch']}, head dim {x['head_dim']}",
                     "yes" if x["cls_copies"] else "no",
                     kernels(x["kernels"]), f"{x['step_ms']:.1f}", kernels(nb["kernels"]) if nb else "",
                     f"{nb['step_ms']:.1f}" if nb else "",
                     ", ".join(f"{v}: {count(s['per_micro_batch'])}" for v, s in x["syncs"].items())])
    dtypes = sorted({x["dtype"] for x in r["configs"].values() if "dtype" in x})
    lines = [f"Each shipped config's model outside the engine ({', '.join(dtypes)}, random "
             "weights): the SDPA kernels of one forward + backward of the video tower at its mask ratio, with the "
             "CLS key repeated T' times where the config has one and the same pass with it once; host syncs per "
             "micro-batch of "
             f"the whole model by where real_frames lies (counter check: {count(r['control'])} sync in one .item()).", ""]
    return lines + table(["config", "tokens per clip x clips", "CLS key copies", "attention kernels", "step ms",
                          "CLS key once", "step ms", "syncs per micro-batch"], rows)


def gpu_flash(r: dict) -> list[str]:
    def ran(x: dict) -> str:
        return "yes" if x["ran"] else "no"

    rows = []
    for name, x in r["configs"].items():
        if "error" in x:
            rows.append([name, f"error: {x['error']}"] + [""] * 5)
            continue
        rows.append([name, f"{x['tokens']:,}, head dim {x['head_dim']}", "yes" if x["cls_copies"] else "no",
                     *(ran(x[k]) for k in ("flash_or_cudnn", "flash", "cudnn", "efficient"))])
    return ([f"Each config's video tower at its real size ({r['blocks']} blocks, one clip, bf16, torch "
             f"{r['torch']}): does its forward + backward run with "
             "scaled_dot_product_attention held to these kernels? FlashAttention or cuDNN must.", ""]
            + table(["config", "tokens per clip", "CLS key copies", "flash or cuDNN", "flash alone",
                     "cuDNN alone", "memory-efficient alone"], rows))


def gpu_packed(r: dict) -> list[str]:
    def kernels(k: dict) -> str:
        return "; ".join(f"{b} {v['count']} ({v['time_us'] / 1e3:.2f} ms)" for b, v in k.items()) or "none"

    rows = [[name, kernels(x["kernels"]), f"{x['step_s']:.4f}", f"{x['vs_fp32_masked']['embedding_cosine_min']:.5f}",
             f"{x['vs_fp32_masked']['grad_cosine']:.5f}"] for name, x in ((n, r[n]) for n in ("masked", "packed"))]
    return ([f"The {r['preset']} video tower in bf16 on {r['batch']} clips of {r['frames']} frames, real frames "
             f"cycling {r['real']}, {r['mask_ratio']:.0%} masking, a CLS token: forward + backward with the rows "
             "padded to the longest clip and a key mask (masked) and with every clip's tokens of content in one "
             f"sequence (packed, torch's varlen attention); median of {r['rounds']} interleaved rounds. "
             f"**Packed takes {r['packed_vs_masked_time']:.2f}x the masked step's time**; host syncs in a packed "
             f"step: {count(r['packed_syncs'])}.", ""]
            + table(["path", "attention kernels", "step s", "embedding cosine vs fp32 masked (min)",
                     "gradient cosine"], rows))


def runs_words(r: dict) -> tuple[str, str]:
    """A multi-run check's exit codes and its runs' start lines, in words."""
    codes = ", ".join(f"{n} {c}" for n, c in r["exit_codes"].items())
    starts = "; ".join(f"{n}: " + ", ".join(f"rank {s['rank']}/{s['world_size']} {s['backend']} {s['device']}"
                                            for s in st) for n, st in r["starts"].items())
    return codes, starts


def gpu_two_gpu(r: dict) -> list[str]:
    codes, starts = runs_words(r)
    first, last = r["steps"]
    rescale = (f"the resume converted the {r['rescale']['world_size'][0]}-rank checkpoint "
               f"({r['rescale']['message']})" if r["rescale"] else "no rescale line")
    return [f"Two ranks under torchrun to step {first}, then resumed on one GPU to {last}. Exit status: {codes}; "
            f"{starts}; {rescale}; steps logged {r['steps_logged']}, "
            f"{'all finite' if r['finite'] else 'NOT all finite'}.", ""]


def gpu_ulysses(r: dict) -> list[str]:
    codes, starts = runs_words(r)
    rows = [[i + 1, *(f"{r['losses'][n][i]:.5f}" if i < len(r["losses"][n]) else "" for n in ("split", "one_gpu"))]
            for i in range(r["steps"])]
    diff = r.get("first_step_rel_diff")
    return [f"{r['steps']} steps at parallel.sequence=2 on two GPUs and the same run on one. Exit status: {codes}; "
            f"{starts}; {'the same' if r['same_batches'] else 'NOT the same'} batches.", ""] + \
        table(["step", "loss, 2 GPUs per clip", "loss, 1 GPU"], rows) + \
        ([f"First step: relative difference {diff:.2e} (bound {r['rtol']:g}).", ""] if diff is not None else [])


def gpu_compile(r: dict) -> list[str]:
    rows = [[name, x["cell"], f"{x['mfu_median']:.3f}", f"{x['step_s_median']:.3f}", f"{x['first_step_s']:.1f}"]
            for name, x in r["rows"].items() if "error" not in x and x["steps_measured"]]
    if "mfu_ratio" not in r:
        return [f"A cell failed: {', '.join(n for n, x in r['rows'].items() if 'error' in x)}.", ""]
    return ([f"The MFU cell trained by the trainer's loop with model.compile=false and true (each block's forward "
             f"under torch.compile): medians after {r['warmup_steps']} warm-up steps. **Compiled / eager: MFU "
             f"{r['mfu_ratio']:.3f}x, step time {r['step_ratio']:.3f}x** (MFU floor {r['mfu_min_ratio']}x); largest "
             f"per-step loss difference {r['loss_max_rel_diff']:.2e} relative (bound {r['loss_rtol']}).", ""]
            + table(["blocks", "cell", "MFU", "step s", "first step s"], rows))


GPU_CHECKS = [("trainer", "Trainer on one GPU: NCCL, ZeRO-3 bf16, exact resume", gpu_trainer),
              ("attention", "Attention kernels and bf16 against fp32", gpu_attention),
              ("plan_memory", "Memory planner against the allocator's peak", gpu_plan_memory),
              ("mfu", "MFU of the training step", gpu_mfu),
              ("decode", "DALI mixed decoding and the loader", gpu_decode),
              ("shipped", "The shipped configs on one GPU", gpu_shipped),
              ("shipped_model", "The shipped configs' models: attention kernels and host syncs", gpu_shipped_model),
              ("flash", "Every config's video tower on FlashAttention or cuDNN", gpu_flash),
              ("two_gpu", "Two GPUs: NCCL ranks, then the resume on one", gpu_two_gpu),
              ("packed", "Padded batches: packed (varlen attention) against masked rows", gpu_packed),
              ("ulysses", "Sequence parallelism: a clip over two GPUs against one", gpu_ulysses),
              ("compile", "Compiled blocks against eager: MFU and losses", gpu_compile)]


def gpu_section(folder: Path) -> list[str]:
    """bench/results/gpu/*.json (bench/gpu.py, tests/gpu): every statement from the numbers."""
    s = load(folder, "summary")
    lines = [f"### GPU acceptance suite: {s['machine']['gpu']}", ""] + gpu_provenance(s)
    for name, title, render_check in GPU_CHECKS:
        r = load(folder, name)
        if r is None:
            continue
        run_by = "" if r["command"] == s["command"] else f"`{r['command']}`, "
        lines += [f"#### {title}", "", f"{run_by}{r['date']}, {r['wall_s']:.0f} s.", ""]
        if "error" in r:
            lines += [f"Error: {r['error']}", ""]
        elif "skipped" in r:
            lines += [f"Skipped: {r['skipped']}", ""]
        else:
            lines += render_check(r)
    return lines


def render(results: Path) -> str:
    lines = [BEGIN, "## Performance (CPU decoding, memory planner, masking, MFU, peers, trade-off, offload)", "",
             "Regenerate everything with `bash bench/run_all.sh`; this part is rendered by "
             "`bench/report.py` from bench/results/*.json.", ""]
    for name, section in SECTIONS:
        if name in ("padding", "zero_init"):
            r = [load(results, p.stem) for p in sorted(results.glob(f"{name}_*.json"))]
        elif name in ("claims", "demo_seeds"):  # NAME.json, then any further calls (NAME_*.json)
            r = [load(results, p.stem) for p in sorted(results.glob(f"{name}*.json"), key=lambda p: p.stem != name)]
        elif name == "mc_probe":  # seed 0's runs, then other seeds' (mc_probe_seed*.json)
            r = [load(results, p.stem) for p in [results / "mc_probe.json", *sorted(results.glob("mc_probe_seed*.json"))]
                 if p.is_file()]
        else:
            r = merged(results, name) if name == "masking" else load(results, name)
        if r:
            lines += section(r)
        elif name not in OPTIONAL:
            lines += [f"(no results yet for {name}: run bench/run_all.sh)", ""]
    if load(results / "gpu", "summary"):
        lines += gpu_section(results / "gpu")
    return "\n".join(lines + [END]) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default="bench/results")
    p.add_argument("--out", default="bench/RESULTS.md")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    Path(args.out).write_text(HEADER + "\n" + render(Path(args.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
