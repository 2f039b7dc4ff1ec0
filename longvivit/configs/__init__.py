"""The shipped configs, as package data: run configs (*.yaml, one per recipe stage and size,
each starting with the command that runs it) and DeepSpeed configs (ds/*.json: ZeRO stage,
offload and precision, each with a `_cpu` twin for local forms). `resolve` is the one way a
command turns a config path into a file."""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
DS = HERE / "ds"


def shipped() -> dict[str, Path]:
    """File name -> path of every shipped config (demo.yaml, zero3_cpu.json, ...)."""
    return {p.name: p for p in (*sorted(HERE.glob("*.yaml")), *sorted(DS.glob("*.json")))}


def resolve(path: str | Path) -> Path:
    """A config file as a run config or a command line names it: the path itself when it
    exists (absolute, or relative to the working directory); else the shipped config of
    that file name, the folder part ignored (`demo.yaml`, `longvivit/configs/demo.yaml`, and
    `train/configs/demo.yaml` or `ds_configs/zero3.json` as configs and checkpoints
    written before the package held them spell it), or of that bare name (`demo`, `zero3_cpu`);
    else the path as given, for the caller to report missing."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    files = shipped()
    for name in (p.name, f"{p.name}.yaml", f"{p.name}.json"):
        if name in files:
            return files[name]
    return p


__all__ = ["HERE", "DS", "resolve", "shipped"]
