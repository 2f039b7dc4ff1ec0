"""The output folder of a data writer (`longvivit synth`, `longvivit shards`)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable


def prepare_out(out: Path, overwrite: bool, ours: Callable[[str], bool], what: str) -> Path:
    """`out`, created if missing. A non-empty folder is refused unless `overwrite`; then the
    entries whose names `ours` accepts (what this writer writes) are removed, and a folder
    holding anything else is refused rather than wiped."""
    entries = sorted(out.iterdir()) if out.exists() else []
    if entries and not overwrite:
        raise FileExistsError(f"output {out} is not empty; pass --overwrite to replace the {what} in it")
    others = [p.name for p in entries if not ours(p.name)]
    if others:
        raise FileExistsError(f"output {out} holds files that are not {what} ({', '.join(others[:5])}); "
                              "refusing to overwrite")
    for p in entries:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out
