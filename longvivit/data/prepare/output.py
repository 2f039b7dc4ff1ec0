"""Where the data commands write (`synth`, `shards`, `import`, `tokenizer`): output paths
checked before anything is written, and nothing left behind when a write fails.

Every refusal is an OSError whose message names the output and what is wrong with it, for
the command's one line on stderr.
"""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence


def prepare_out(out: Path, overwrite: bool, ours: Callable[[str], bool], what: str) -> Path:
    """`out`, created if missing. A non-empty folder is refused unless `overwrite`; then the
    entries whose names `ours` accepts (what this writer writes) are removed, and a folder
    holding anything else is refused rather than wiped. A path at a file, under a file or
    where no folder can be made (under /proc) is refused before anything is touched."""
    check_out(out, f"output {out}", folder=True)
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
    make_folders(out, f"output {out}")
    return out


def check_out(out: Path, name: str, folder: bool) -> None:
    """Refuse an output that cannot be what it must be: for a `folder`, an existing file;
    for a file, an existing folder; for either, a path under a file. `name` starts the
    message ("output DIR", "--out FILE"). Creates nothing: a place where no folder can be
    made at all (/proc) shows when `make_folders` tries."""
    if folder and out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{name}: is a file, not a folder")
    if not folder and out.is_dir():
        raise IsADirectoryError(f"{name}: is a folder, not a file")
    above = _nearest_existing(out.parent)
    if not above.is_dir():
        raise NotADirectoryError(f"{name}: {above} is a file, not a folder")


def make_folders(folder: Path, name: str) -> list[Path]:
    """Make `folder` and its missing parents; returns those made, outermost first. When one
    cannot be made, those made are removed and the OSError names `name` and where."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    made: list[Path] = []
    try:
        for path in missing:
            path.mkdir()
            made.append(path)
    except OSError as err:
        remove_folders(made)
        where = _nearest_existing(folder)
        raise OSError(f"{name}: cannot make a folder in {where}: "
                      f"{err.strerror or err}") from None
    return made


def remove_folders(made: Sequence[Path]) -> None:
    """Undo `make_folders`: remove the folders it made, innermost first, if still empty."""
    for path in reversed(made):
        try:
            path.rmdir()
        except OSError:
            break


@contextmanager
def new_files(name: str, files: Sequence[Path]) -> Iterator[None]:
    """Make the folder of `files` (and its missing parents); should the body fail, remove
    the files among `files` that did not exist before and the folders made, so that a write
    that fails leaves nothing behind (a file that was there before is left as it is)."""
    fresh = [f for f in files if not f.exists()]
    made = make_folders(files[0].parent, name)
    try:
        yield
    except BaseException:
        for path in fresh:
            path.unlink(missing_ok=True)
        remove_folders(made)
        raise


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (lexically: '..' is not resolved)."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")
