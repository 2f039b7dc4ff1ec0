"""Manifests: the list of videos and captions that `longvivit shards` turns into shards.

JSONL, one object per line:
    {"video": "clips/a.mp4", "caption": "a dog runs" | ["a dog runs", ...],
     "start": 12.5, "end": 70.0, "id": "a-12", "label": "dog"}   (start, end, id, label optional)
CSV with a header row naming the same columns; a caption cell that starts with "[" is read
as a JSON list of captions. Relative video paths are relative to the manifest's folder.
"label" is a class name, kept in the shards for zero-shot classification (train/zeroshot.py).
Other keys are ignored (synth adds "events" and "family" for analysis). start/end are
seconds from the start of the video as a player shows it (video.py). Either format may
start with a UTF-8 byte-order mark and use CRLF line ends.

The id defaults to the video path as the manifest writes it, plus "@start-end" when the
row has a start or an end ("a.mp4@5-end"). Ids are unique: a row whose id an earlier row
already has is rejected ("duplicate id", naming that row), so no clip is written twice.

A row that cannot be used becomes a `Reject` with a short reason instead of stopping the
run: the manifest is read as bytes line by line so that one line of bad UTF-8 or JSON
spoils only itself. A video path that is not UTF-8 is kept as Python spells such a file
name (lone surrogates; it opens as it is); ids and the rejects file show its bad bytes as
escapes.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass
class Row:
    line: int  # 1-based line of the manifest (data row for CSV)
    video: str  # absolute path
    captions: list[str]
    start: float | None = None
    end: float | None = None
    id: str = ""
    label: str = ""  # a class name ("" : none)


@dataclass
class Reject:
    line: int
    video: str
    reason: str  # short category, counted in the summary
    detail: str = ""

    def to_json(self) -> dict:
        return {"line": self.line, "video": self.video, "reason": self.reason,
                "detail": self.detail}


def read_manifest(path: str | Path) -> Iterator[Row | Reject]:
    """Each row of a .jsonl/.json or .csv manifest, parsed and checked (not the video)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path}: no such file")
    records = _csv_records(path) if path.suffix.lower() == ".csv" else _jsonl_records(path)
    first_line: dict[str, int] = {}  # id -> the line that has it
    for line, record in records:
        row = record if isinstance(record, Reject) else _to_row(line, record, path.parent)
        if isinstance(row, Row) and row.id in first_line:
            row = Reject(line, row.video, "duplicate id",
                         f"id {row.id!r} is already line {first_line[row.id]}'s")
        elif isinstance(row, Row):
            first_line[row.id] = line
        yield row


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict | Reject]]:
    with open(path, "rb") as f:
        for line, raw in enumerate(f, 1):
            # surrogateescape keeps undecodable bytes as lone surrogates instead of failing the
            # line: in a path they are how Python spells non-UTF-8 file names; in a caption
            # they make it undecodable, which _captions reports.
            text = raw.decode("utf-8", errors="surrogateescape").strip()
            if line == 1:
                text = text.removeprefix("\ufeff")  # a byte-order mark (Windows editors)
            if not text:
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                yield line, Reject(line, "", "bad manifest row", f"invalid JSON: {err}")
                continue
            yield line, record if isinstance(record, dict) else \
                Reject(line, "", "bad manifest row", "expected a JSON object")


def _csv_records(path: Path) -> Iterator[tuple[int, dict | Reject]]:
    # utf-8-sig: a byte-order mark before the header is not part of its first name
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "video" not in reader.fieldnames:
            raise ValueError(f"manifest {path}: the CSV header must name a 'video' column")
        for line, record in enumerate(reader, 2):
            caption = record.get("caption") or ""
            if caption.lstrip().startswith("["):
                try:
                    record["caption"] = json.loads(caption)
                except json.JSONDecodeError as err:
                    yield line, Reject(line, record["video"] or "", "bad manifest row",
                                       f"caption list is not valid JSON: {err}")
                    continue
            yield line, {k: v for k, v in record.items() if v not in ("", None)}


def _to_row(line: int, record: dict, base: Path) -> Row | Reject:
    written = record.get("video")
    if not isinstance(written, str) or not written:
        return Reject(line, str(written or ""), "bad manifest row", "no 'video' path")
    video = str(base / written) if not Path(written).is_absolute() else written
    captions = record.get("caption", record.get("captions"))
    try:
        start, end = _seconds(record.get("start")), _seconds(record.get("end"))
    except ValueError as err:
        return Reject(line, video, "bad manifest row", str(err))
    if start is not None and end is not None and end <= start:
        return Reject(line, video, "bad manifest row", f"end {end} <= start {start}")
    checked = _captions(captions)
    if isinstance(checked, str):
        return Reject(line, video, checked, f"caption {captions!r}")
    label = record.get("label", "")
    if not isinstance(label, (str, int)) or isinstance(label, bool):
        return Reject(line, video, "bad manifest row", f"label {label!r} is not a class name")
    default_id = written
    if start is not None or end is not None:
        default_id += f"@{start or 0:g}-" + ("end" if end is None else f"{end:g}")
    return Row(line, video, checked, start, end, printable(str(record.get("id", default_id))),
               printable(" ".join(str(label).split())))


def printable(text: str) -> str:
    """`text` as valid UTF-8: the lone surrogates that stand for a file name's non-UTF-8
    bytes become backslash escapes (a file b"caf\\xe9.mp4" has the id r"caf\\xe9.mp4")."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte ("\\ud800" in JSON)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _seconds(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"start/end {value!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"start/end {value!r} is not a non-negative number of seconds")
    return seconds


def _captions(value) -> list[str] | str:
    """The cleaned caption list, or the reject reason."""
    items = [c for c in (value if isinstance(value, list) else [value]) if c is not None]
    if not all(isinstance(c, str) for c in items):
        return "undecodable caption"
    try:
        for c in items:
            c.encode("utf-8")  # lone surrogates: bad bytes in the file or "\ud800" in JSON
    except UnicodeEncodeError:
        return "undecodable caption"
    cleaned = [" ".join(c.split()) for c in items]
    cleaned = [c for c in cleaned if c]
    return cleaned or "empty caption"


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """One JSON object per line, UTF-8. A lone surrogate (a non-UTF-8 byte of a file name)
    is written as a JSON escape ("\\udce9"), which json.loads reads back to the same str, so
    os.fsencode of a path read back gives the file's bytes."""
    with open(path, "wb") as f:
        f.writelines((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")
                     for r in rows)
