"""`longvivit demo` end to end, both stages of the recipe (slow: about 5-9 minutes on 2 cores)."""
import json
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.multiproc
def test_demo_beats_chance_tenfold(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "longvivit.cli", "demo", "--out", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["t2v_r1"] >= 10 * result["chance"], result  # stage 2, on the 64-frame clips
    assert result["short"]["t2v_r1"] >= 10 * result["short"]["chance"], result
    assert result["short"]["zeroshot_top1"] > result["short"]["zeroshot_chance"], result  # the labelled split
    for stage in ("short", "long"):
        assert (tmp_path / "demo" / stage / "tb").is_dir()
        assert any((tmp_path / "demo" / stage / "checkpoints").glob("step*/complete"))
    # stage 1 trained on images on a quarter of its steps; stage 2 started from stage 1
    rows = [json.loads(x) for x in (tmp_path / "demo" / "short" / "metrics.jsonl").read_text().splitlines()]
    sources = [r["source"] for r in rows if r.get("kind") == "step"]
    assert sources.count("images") == len(sources) // 4, sources  # the source named "images"
    assert "checkpoint:" in (tmp_path / "demo" / "long" / "run_config.yaml").read_text()
