"""An installed longvivit works, not only a checkout: `pip install .` (not editable) into a
fresh virtualenv gives a `longvivit` command that, run from a folder outside the checkout,
finds the shipped run configs and ds_configs (package data) and plans and trains."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from longvivit.distributed.collectives import extensions_dir

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent


def site_packages(python: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_path('purelib'))"
    return Path(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip())


def copy_sources(dest: Path) -> None:
    """What the build reads: pyproject.toml, its readme and its package folders."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dest.mkdir()
    for name in ("pyproject.toml", project["project"]["readme"]):
        shutil.copy(ROOT / name, dest)
    shutil.copytree(ROOT / "longvivit", dest / "longvivit", ignore=shutil.ignore_patterns("__pycache__"))


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A new virtualenv with longvivit built from a copy of the sources (the build writes
    build/ and *.egg-info next to them) and installed, without network. Its dependencies are
    this environment's site-packages, named in a .pth file: Python adds that folder to
    sys.path but runs none of the .pth files in it, so the editable longvivit of this
    environment (an __editable__ .pth and its finder) stays out."""
    root = tmp_path_factory.mktemp("install")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", root / "venv"], check=True, timeout=120)
    python = root / "venv" / "bin" / "python"
    deps = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site_packages(python) / "dependencies.pth").write_text("".join(f"{d}\n" for d in deps))
    copy_sources(root / "src")
    # --ignore-installed: pip would otherwise see this environment's longvivit through the
    # .pth and try to uninstall it first
    pip = [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
           "--no-cache-dir", "--ignore-installed", "--quiet", root / "src"]
    proc = subprocess.run(pip, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "venv"


def run(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # DeepSpeed's shm_comm op as this environment built it (the same torch): a new
    # environment would otherwise build its own copy first (25 s or more on 2 cores)
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR") or extensions_dir())
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_installed_copy_is_what_runs(venv, tmp_path):
    code = "import json, longvivit.train.config as c, longvivit.configs as k; print(json.dumps([c.__file__, str(k.HERE)]))"
    module, configs = last_json(run(venv, tmp_path, venv / "bin" / "python", "-c", code))
    installed = site_packages(venv / "bin" / "python") / "longvivit"
    assert Path(module) == installed / "train" / "config.py" and Path(configs) == installed / "configs"
    shipped = ROOT / "longvivit" / "configs"
    for pattern in ("*.yaml", "ds/*.json"):  # package data
        assert sorted(p.name for p in Path(configs).glob(pattern)) == sorted(p.name for p in shipped.glob(pattern))


def test_plan_finds_the_default_ds_config(venv, tmp_path):
    (tmp_path / "tiny.yaml").write_text("model: {preset: tiny}\n"  # no ds_config: the default
                                        "data: {frames: '${model.video.frames}', "
                                        "image_size: '${model.video.image_size}', text_length: 32}\n")
    plan = last_json(run(venv, tmp_path, venv / "bin" / "longvivit", "plan", "tiny.yaml", "--gpus", "2"))
    assert (plan["preset"], plan["zero_stage"], plan["offload_optimizer"]) == ("tiny", 3, False)
    assert plan["fits"] and plan["bytes"]["activations"] > 0


def test_local_train_of_a_shipped_config(venv, tmp_path):
    """g_1b.yaml resolves to the installed copy, its ds_config to the installed
    CPU twin; one process, no launcher."""
    proc = run(venv, tmp_path, venv / "bin" / "longvivit", "train", "g_1b.yaml", "local=true",
               "data.source=synthetic", "steps=2", "progress=false")
    done = last_json(proc)
    assert done["event"] == "done" and done["steps"] == 2
    out = tmp_path / "runs" / "local" / "g_1b"
    assert (out / "checkpoints" / "step00000002" / "complete").is_file()
    assert "ds_config: zero3_cpu.json" in (out / "run_config.yaml").read_text().splitlines()
