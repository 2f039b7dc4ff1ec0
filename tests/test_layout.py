"""The package's shape: imports follow the data flow (config <- model <- data <- train,
data never reaching into the model), and the config home pulls in nothing heavy."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the repository folder of each subpackage, and the subpackages it may import
FOLDERS = {"model": ROOT / "model", "data": ROOT / "data", "train": ROOT / "train"}
ALLOWED = {"config": set(), "model": set(), "data": set(), "train": {"model", "data"}}


def imported_subpackages(path: Path, package: str) -> set[tuple[str, int]]:
    """(subpackage, line) for every import of longvivit.model/data/train in `path`,
    absolute (longvivit.data.x) or relative (..data.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names = [node.module or ""]
            elif node.level == 2:  # from ..data import x / from .. import data
                names = [f"longvivit.{node.module}"] if node.module else [f"longvivit.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "longvivit" and len(parts) > 1 and parts[1] in FOLDERS and parts[1] != package:
                found.add((parts[1], node.lineno))
    return found


def sources() -> list[tuple[str, Path]]:
    files = [("config", ROOT / "longvivit" / "config.py")]
    files += [(pkg, p) for pkg, folder in FOLDERS.items() for p in sorted(folder.rglob("*.py"))]
    return files


def test_imports_follow_the_data_flow():
    wrong = [f"{path.relative_to(ROOT)}:{line} imports longvivit.{dep}"
             for pkg, path in sources() for dep, line in sorted(imported_subpackages(path, pkg))
             if dep not in ALLOWED[pkg]]
    assert not wrong, "\n".join(wrong)


def test_the_scan_sees_absolute_and_relative_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import longvivit.train.run\nfrom ..model import dual\nfrom .. import data\n"
                 "from longvivit.config import check\nfrom .loader import x\n")
    assert {d for d, _ in imported_subpackages(f, "data")} == {"train", "model"}


@pytest.mark.parametrize("module", ["longvivit.config", "longvivit.data.config", "longvivit.data.shards",
                                    "longvivit.data.synth"])
def test_configs_and_data_writers_import_without_torch_or_the_model(module):
    code = (f"import sys, {module}; bad = [m for m in sys.modules if m == 'torch' or "
            "m.startswith('longvivit.model')]; print(bad); sys.exit(bool(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
