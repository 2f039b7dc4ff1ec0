"""The benchmark scripts' own arithmetic and rendering (the measurements themselves are the
benchmarks' job; these check what they compute from them)."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import peers  # noqa: E402
import report  # noqa: E402
import tradeoff  # noqa: E402


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


def test_report_renders_every_committed_result():
    results = ROOT / "bench" / "results"
    text = report.render(results)
    assert text.startswith(report.BEGIN) and text.rstrip().endswith(report.END)
    assert "no results yet" not in text
    for path in results.glob("*.json"):
        command = json.loads(path.read_text().strip().splitlines()[-1])["command"]
        assert command in text, (path.name, command)
    # splicing replaces only the marked block
    spliced = report.splice(f"head\n{report.BEGIN}\nold\n{report.END}\ntail\n", text)
    assert spliced.startswith("head\n") and spliced.endswith("tail\n") and "\nold\n" not in spliced
