"""The package's shape: imports follow the data flow (config <- model <- data <- train,
data never reaching into the model), the config home pulls in nothing heavy, and no piece of
logic is written twice."""
from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
from collections import defaultdict
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
    """(subpackage, file); the modules at the package root (longvivit/*.py) count as config."""
    files = [("config", p) for p in sorted((ROOT / "longvivit").glob("*.py"))]
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


# ---------------------------------------------------------------------------- twins

WINDOW = 5  # this many consecutive logic lines found in two places make a twin
# lines that carry no logic of their own: lone brackets, bare keywords, decorators
BOILERPLATE = re.compile(r"[\[\](){},:;]*|return|pass|else:|try:|finally:|@.*")


def _no_logic(node: ast.AST) -> bool:
    """Imports, and string statements (docstrings)."""
    return isinstance(node, (ast.Import, ast.ImportFrom)) or (
        isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str))


def logic_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of every line of `path` that carries logic: blank lines,
    comments, docstrings, imports and boilerplate left out."""
    text = path.read_text()
    lines = text.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            lines[row - 1] = lines[row - 1][:col]
    skip = {n for node in ast.walk(ast.parse(text)) if _no_logic(node)
            for n in range(node.lineno, node.end_lineno + 1)}
    kept = [(n, line.strip()) for n, line in enumerate(lines, 1) if n not in skip]
    return [(n, line) for n, line in kept if line and not BOILERPLATE.fullmatch(line)]


def twins(paths: list[Path], root: Path) -> list[str]:
    """'a.py:LINE = b.py:LINE' for each run of WINDOW or more logic lines found in two or
    more places (a longer run is reported once, at its first window)."""
    places = defaultdict(list)  # window text -> [(path, index of its first logic line, line)]
    for path in paths:
        lines = logic_lines(path)
        for i in range(len(lines) - WINDOW + 1):
            places["\n".join(text for _, text in lines[i:i + WINDOW])].append((path, i, lines[i][0]))
    found, seen = [], set()
    for spots in places.values():  # windows in file order, so a run's first window comes first
        spots = [s for k, s in enumerate(spots)  # a line repeated in place is not a twin
                 if not any(p == s[0] and s[1] - i < WINDOW for p, i, _ in spots[:k])]
        key = tuple((p, i) for p, i, _ in spots)
        if len(spots) > 1 and tuple((p, i - 1) for p, i in key) not in seen:
            found.append(" = ".join(f"{p.relative_to(root)}:{line}" for p, _, line in spots))
        seen.add(key)
    return found


def test_no_logic_is_written_twice():
    found = twins([path for _, path in sources()], ROOT)
    assert not found, f"the same {WINDOW}+ lines in two places (make one helper):\n" + "\n".join(found)


def test_the_twin_scan_flags_a_planted_copy_and_only_it(tmp_path):
    body = ["total = 0", "for x in xs:", "    total += x * x", "mean = total / len(xs)", "print(mean)",
            "print(total)"]  # six lines: two windows, reported once
    indent = lambda lines: "".join(f"    {line}\n" for line in lines)  # noqa: E731
    (tmp_path / "a.py").write_text('import os\n\n\ndef f(xs):\n    """Sum of squares."""\n'
                                   + indent(body) + "    return mean\n")
    # the same logic under another name, with a comment, blank lines and an import between
    (tmp_path / "b.py").write_text("def g(xs):  # twin\n" + indent(body[:3]) + "\n    # why\n"
                                   + indent(["import math"] + body[3:]))
    (tmp_path / "c.py").write_text("def h(xs):\n" + indent(body[:4]) + indent(["print(xs)"] * 6))
    assert twins(sorted(tmp_path.glob("*.py")), tmp_path) == ["a.py:6 = b.py:2"]
