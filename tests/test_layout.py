"""The package's shape: the import path is the folder path, imports follow the data flow
(config <- distributed <- model <- data <- eval <- train <- use <- cli: nothing imports a package
to its right), no package imports its own modules in a cycle, imports sit at the top of a
module (inside a function only an optional or heavy dependency, saying why), no module is
named after a standard-library one, the config home pulls in nothing heavy, and no piece of
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
PACKAGE = ROOT / "longvivit"
# each subpackage (or root module) of longvivit, and the subpackages it may import
ORDER = ["config", "events", "configs", "distributed", "model", "data", "eval", "train", "use", "cli"]
ROOT_MODULES = {"config", "events"}  # importable from anywhere: they import nothing of longvivit
# The package root re-exports the user's API (`longvivit.load`, as open_clip's
# `open_clip.create_model_and_transforms`) from its module __getattr__: imported on first use
# only, so `import longvivit` loads nothing, and no module imports the root to get it.
LAZY_API = (PACKAGE / "__init__.py", "longvivit.use")
ALLOWED = {
    "config": set(), "events": set(), "configs": set(),
    "distributed": {"config", "events"},
    "model": {"config", "distributed"},  # the loss's data group, sequence parallelism's collectives
    "data": {"config", "configs", "distributed"},
    "eval": {"config", "distributed", "model", "data"},
    "train": {"config", "events", "configs", "distributed", "model", "data", "eval"},
    "use": {"config", "events", "configs", "distributed", "model", "data", "eval", "train"},
    "cli": set(ORDER),
}


def module_name(path: Path) -> str:
    """The dotted name a file is imported under: its path under the repository root."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The subpackage (or root module) of longvivit a module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "config"


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported longvivit module, line, run on import) for every import in `path`, relative
    ones resolved against the file's own package. An import under `if TYPE_CHECKING:` (for
    annotations only) or inside a function does not run on import."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    top = set()  # what runs on import: the module body and its if/try blocks, not `if TYPE_CHECKING:`
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Name) and stmt.test.id == "TYPE_CHECKING":
            continue
        if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            top |= {id(n) for n in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package.split(".")
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            if t == "longvivit" or t.startswith("longvivit."):
                found.append((t, node.lineno, id(node) in top))
    return found


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_imports_under_its_file_path():
    """No package-dir mapping and no extend_path: the file is where the import says."""
    import importlib

    for path in sources():
        name = module_name(path)
        if name.endswith("__main__"):
            continue
        spec = importlib.util.find_spec(name)
        assert spec is not None and Path(spec.origin).resolve() == path.resolve(), name
    assert "package-dir" not in (ROOT / "pyproject.toml").read_text()
    assert "extend_path" not in (PACKAGE / "__init__.py").read_text()


def lazy_api(path: Path, target: str, top: bool) -> bool:
    """The root's lazy re-export of the API (LAZY_API): inside a function, of longvivit.use."""
    return path == LAZY_API[0] and not top and (target == LAZY_API[1] or target.startswith(LAZY_API[1] + "."))


def test_imports_follow_the_data_flow():
    wrong = []
    for path in sources():
        mine = unit(module_name(path))
        for target, line, top in imports(path):
            other = unit(target)
            if lazy_api(path, target, top):
                continue
            if target != "longvivit" and other != mine and other not in ALLOWED[mine]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({mine}) imports {target} ({other})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_inside_a_package():
    """Module-level imports between the modules of one subpackage form no cycle."""
    graph = defaultdict(set)
    modules = {module_name(p) for p in sources()}
    for path in sources():
        me = module_name(path)
        for target, _, top in imports(path):
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if top and target in modules and target != me and unit(target) == unit(me):
                if not (path.name == "__init__.py" and target.startswith(me + ".")):  # a package's own re-exports
                    graph[me].add(target)
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_the_scan_resolves_relative_imports(tmp_path):
    pkg = tmp_path / "longvivit" / "data"
    pkg.mkdir(parents=True)
    f = pkg / "x.py"
    f.write_text("import longvivit.train.trainer\nfrom ..model import dual\nfrom .. import eval\n"
                 "from longvivit.config import check\nfrom .load import loader\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = {t for t, _, _ in imports(f)}
    finally:
        ROOT = saved
    assert {"longvivit.train.trainer", "longvivit.model.dual", "longvivit.eval", "longvivit.config.check",
            "longvivit.data.load.loader"} <= found


# ---------------------------------------------------------------------------- function-level imports

def _statement_runs(tree: ast.AST):
    """(owner, statements) for each list of statements in `tree` (a body, an else, a
    finally) and the node that holds it."""
    for node in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            stmts = getattr(node, name, None)
            if isinstance(stmts, list) and stmts and isinstance(stmts[0], ast.stmt):
                yield node, stmts


FUNCTION_IMPORT_PROBLEMS = {
    "longvivit": "imports {} inside a function (import it at the top; a cycle it hides is broken by moving code)",
    "stdlib": "imports the standard library's {} inside a function (nothing to defer: import it at the top)",
    "unsaid": "imports {} inside a function without a comment saying why (the optional or heavy dependency it defers)",
}


def function_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, problem: a FUNCTION_IMPORT_PROBLEMS key) for each import inside a
    function of `path` that breaks the rule: one of longvivit or of the standard library, or
    of a third-party module with no comment on its line or on the line above its run of
    imports."""
    text = path.read_text()
    tree = ast.parse(text)
    comments = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(text).readline)
                if tok.type == tokenize.COMMENT}
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inside = {id(n) for f in functions for n in ast.walk(f)}
    wrong = []
    for owner, stmts in _statement_runs(tree):
        if id(owner) not in inside:
            continue
        first = None  # line of the first import of the current run of imports
        for stmt in stmts:
            if not isinstance(stmt, (ast.Import, ast.ImportFrom)):
                first = None
                continue
            first = first or stmt.lineno
            if isinstance(stmt, ast.ImportFrom):
                names = ["longvivit" if stmt.level else stmt.module]
            else:
                names = [a.name for a in stmt.names]
            said = first - 1 in comments or any(n in comments for n in range(stmt.lineno, stmt.end_lineno + 1))
            for name in names:
                top = name.split(".")[0]
                problem = ("longvivit" if top == "longvivit" else "stdlib" if top in sys.stdlib_module_names
                           else None if said else "unsaid")
                if problem:
                    wrong.append((stmt.lineno, name, problem))
    return sorted(wrong)


def test_imports_sit_at_the_top_but_for_optional_or_heavy_dependencies():
    wrong = [f"{path.relative_to(ROOT)}:{line} " + FUNCTION_IMPORT_PROBLEMS[problem].format(name)
             for path in sources()
             for line, name, problem in function_imports(path) if not lazy_api(path, name, False)]
    assert not wrong, "\n".join(wrong)


def test_the_function_import_scan_flags_what_it_should(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import os\n\n\ndef f():\n    from longvivit.model import dual\n    from . import y\n"
                 "    import json\n    import deepspeed\n    return os\n\n\n"
                 "def g():\n    # deepspeed is slow to import\n    import deepspeed\n    from deepspeed import comm\n"
                 "    x = 1\n    import torch  # heavy\n    try:  # optional\n        import boto3\n"
                 "    except ImportError:\n        pass\n    import PIL\n    return x\n")
    assert function_imports(f) == [(5, "longvivit.model", "longvivit"), (6, "longvivit", "longvivit"),
                                   (7, "json", "stdlib"), (8, "deepspeed", "unsaid"), (22, "PIL", "unsaid")]


def test_no_module_is_named_after_a_standard_library_one():
    """A longvivit/x/logging.py reads as the standard library's logging wherever it is imported."""
    names = {p.stem for p in sources()} | {p.parent.name for p in sources()}
    clash = sorted(n for n in names if n in sys.stdlib_module_names and not n.startswith("__"))
    assert not clash, clash


@pytest.mark.parametrize("module", ["longvivit.config", "longvivit.data.config", "longvivit.data.prepare.shards",
                                    "longvivit.data.prepare.synth"])
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
    found = twins(sources(), ROOT)
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
