"""The GPU acceptance suite (`make gpu-check`): skipped as a whole where there is no CUDA.

Each test module names its check (CHECK, a bench/gpu.py check); the module-scoped `record`
fixture runs it once, which writes its JSON into $GPU_OUT (default bench/results/gpu) and
refreshes summary.json there, and the tests assert the acceptance criteria on the record.
"""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu  # noqa: E402

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason=gpu.NO_CUDA))


@pytest.fixture(scope="session")
def results_dir() -> Path:
    return Path(os.environ.get("GPU_OUT") or ROOT / "bench" / "results" / "gpu").resolve()


@pytest.fixture(scope="module")
def record(request, results_dir) -> dict:
    """The module's check, run once: its record; an error fails and a skip skips every test."""
    r = gpu.run_check(request.module.CHECK, results_dir)
    if "error" in r:
        pytest.fail(f"{r['error']}\n{r.get('traceback', '')}")
    if "skipped" in r:
        pytest.skip(r["skipped"])
    return r
