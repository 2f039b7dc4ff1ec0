"""`longvivit demo` end to end (slow: about 4-6 minutes on 2 cores)."""
import json
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.multiproc
def test_demo_beats_chance_tenfold(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "longvivit.train.cli", "demo", "--out", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["t2v_r1"] >= 10 * result["chance"], result
    assert result["zeroshot_top1"] > result["zeroshot_chance"], result  # the labelled split
    assert (tmp_path / "demo" / "train" / "tb").is_dir()
    assert any((tmp_path / "demo" / "train" / "checkpoints").glob("step*/complete"))
