"""Golden losses (as torchtitan keeps them): the first steps of a fixed tiny run, recorded
in tests/golden/demo_local.json, are reproduced bit for bit.

The run: the demo config's local form on synthetic batches, one plain process (gloo at world
size 1), one torch thread. A change that moves a loss by one ulp is a change of behaviour
and must say so by re-recording (`python tests/test_golden.py`, which writes the file).
Bit-for-bit holds on the CPU the file was recorded on; on a CPU with other vector
instructions (the BLAS picks its kernels by them), the same run may round differently, and
the test then asks for 1e-5 relative instead of equality, saying so.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "demo_local.json"
CONFIG = "demo.yaml"
OVERRIDES = ["local=true", "data.source=synthetic", "steps=6", "log_every=1", "progress=false", "eval_max_batches=1",
             "eval_gallery=0"]


def isa() -> list[str]:
    """The vector instruction sets this CPU offers that the BLAS dispatches on."""
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))


def run(tmp: Path) -> list[float]:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT"):
        env.pop(name, None)
    out = tmp / "run"
    proc = subprocess.run([sys.executable, "-m", "longvivit.cli", "train", CONFIG, *OVERRIDES,
                           f"local_dir={tmp}", f"out={out}"], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if x.get("kind") == "step"]


def test_the_first_losses_are_the_recorded_ones(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    losses = run(tmp_path)
    assert len(losses) == len(golden["losses"]) == 6
    if golden["isa"] == isa():
        assert losses == golden["losses"]  # bit for bit
    else:
        print("this CPU's vector instructions differ from the recording's: comparing to 1e-5")
        assert losses == pytest.approx(golden["losses"], rel=1e-5)


if __name__ == "__main__":  # record
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.write_text(json.dumps({"config": CONFIG, "overrides": OVERRIDES, "isa": isa(),
                                      "losses": run(Path(tmp))}, indent=1) + "\n")
    print(GOLDEN.read_text())
