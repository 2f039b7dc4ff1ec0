"""Manifests: the list of videos and captions that `longvivit shards` turns into shards.

JSONL, one object per line:
    {"video": "clips/a.mp4", "caption": "a dog runs" | ["a dog runs", ...],
     "start": 12.5, "end": 70.0, "id": "a-12", "label": "dog"}   (start, end, id, label optional)
CSV with a header row naming the same columns; a caption cell that starts with "[" is read
as a JSON list of captions, a start/end cell as a number. Relative video paths are relative
to the manifest's folder.
"label" is a class name, kept in the shards for zero-shot classification (longvivit/eval/zeroshot.py);
"labels" a list of class names (the multi-label task); "mc" a list of multiple-choice items
{"question": str, "answers": [str, ...] (2 or more), "answer": index of the right one,
"kind": optional lower-case name} (longvivit/eval/multichoice.py), a single item standing
for a list of one. Other keys are ignored (synth adds "events", "family" and "spans" for
analysis). start/end are
seconds from the start of the video as a player shows it (video.py): JSON numbers from 0
to MAX_SECONDS (a string such as "5" or a boolean is refused, not guessed at). A key that
is null or "" counts as absent. Either format may start with a UTF-8 byte-order mark and use
CRLF line ends; a UTF-16 file is refused as a whole.

The id (a string or an integer) defaults to the video path as the manifest writes it, plus
"@start-end" when the row has a start or an end ("a.mp4@5-end"). Ids are unique: a row
whose id an earlier row already has is rejected ("duplicate id", naming that row), so no
clip is written twice.

A row that cannot be used becomes a `Reject` with a short reason (a malformed row: "bad
manifest row", its detail naming the key and what is wrong: 'start: true is a boolean, not
a number of seconds') instead of stopping the run: the manifest is read as bytes line by
line so that one line of bad UTF-8 or JSON spoils only itself. A video path that is not
UTF-8 is kept as Python spells such a file name (lone surrogates; it opens as it is); ids
and the rejects file show its bad bytes as escapes.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

# start/end past this (about 32 years) are refused: far past the end of any video, and well
# inside what FFmpeg's 64-bit timestamps can seek to at any usual time base (1e308 is not).
MAX_SECONDS = 1e9
BAD_ROW = "bad manifest row"
KIND_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")  # an item's kind: a metric key suffix


@dataclass
class Row:
    line: int  # 1-based line of the manifest (data row for CSV)
    video: str  # absolute path
    captions: list[str]
    start: float | None = None
    end: float | None = None
    id: str = ""
    label: str = ""  # a class name ("" : none)
    labels: list[str] = field(default_factory=list)  # class names (multi-label; [] : none)
    mc: list[dict] = field(default_factory=list)  # multiple-choice items ([] : none)


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
    if path.is_dir():
        raise IsADirectoryError(f"manifest {path}: is a folder, not a manifest file")
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path}: " + (
            "not a regular file" if path.exists() else "no such file"))
    with open(path, "rb") as f:
        if f.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            raise ValueError(f"manifest {path}: UTF-16 text; save it as UTF-8")
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
                yield line, Reject(line, "", BAD_ROW, f"invalid JSON: {err}")
                continue
            yield line, record if isinstance(record, dict) else \
                Reject(line, "", BAD_ROW, "expected a JSON object")


def _csv_records(path: Path) -> Iterator[tuple[int, dict | Reject]]:
    # utf-8-sig: a byte-order mark before the header is not part of its first name
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        try:
            header = reader.fieldnames
        except csv.Error as err:
            raise ValueError(f"manifest {path}: its CSV header cannot be read ({err})") from None
        if not header or "video" not in header:
            raise ValueError(f"manifest {path}: the CSV header must name a 'video' column")
        line = 1
        while True:
            line += 1
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as err:  # a field past the csv module's size limit
                yield line, Reject(line, "", BAD_ROW, f"CSV: {err}")
                continue
            record = {k: v for k, v in record.items() if v not in ("", None)}
            yield line, _typed_cells(line, record, path.parent)


def _typed_cells(line: int, record: dict, base: Path) -> dict | Reject:
    """A CSV record with the cells JSON would hold as lists or numbers parsed."""
    video = str(base / record["video"]) if isinstance(record.get("video"), str) else ""
    caption = record.get("caption", "")
    if isinstance(caption, str) and caption.lstrip().startswith("["):
        try:
            record["caption"] = json.loads(caption)
        except json.JSONDecodeError as err:
            return Reject(line, video, BAD_ROW, f"caption list is not valid JSON: {err}")
    for key in ("start", "end"):
        if isinstance(record.get(key), str):
            try:
                record[key] = float(record[key])
            except ValueError:
                return Reject(line, video, BAD_ROW,
                              f"{key}: {record[key]!r} is not a number of seconds")
    return record


def _to_row(line: int, record: dict, base: Path) -> Row | Reject:
    written = _given(record, "video")
    if written is None:
        return Reject(line, "", BAD_ROW, "no 'video' path")
    if not isinstance(written, str):
        return Reject(line, "", BAD_ROW, f"video: {_shown(written)} is not a path")
    video = str(base / written) if not Path(written).is_absolute() else written
    captions = record.get("caption", record.get("captions"))
    try:
        start, end = _seconds(record, "start"), _seconds(record, "end")
        ident, label = _name(record, "id"), _name(record, "label")
        labels, items = _labels(record), _items(record)
    except ValueError as err:
        return Reject(line, video, BAD_ROW, str(err))
    if start is not None and end is not None and end <= start:
        return Reject(line, video, BAD_ROW, f"end {end:g} <= start {start:g}")
    checked = _captions(captions)
    if isinstance(checked, str):
        return Reject(line, video, checked, f"caption {captions!r}")
    if ident is None:
        ident = written
        if start is not None or end is not None:
            ident += f"@{start or 0:g}-" + ("end" if end is None else f"{end:g}")
    return Row(line, video, checked, start, end, printable(ident),
               printable(" ".join((label or "").split())), labels, items)


def printable(text: str) -> str:
    """`text` as valid UTF-8: the lone surrogates that stand for a file name's non-UTF-8
    bytes become backslash escapes (a file b"caf\\xe9.mp4" has the id r"caf\\xe9.mp4")."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte ("\\ud800" in JSON)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _given(record: dict, key: str) -> Any:
    """record[key], None when the key is absent, null or ""."""
    value = record.get(key)
    return None if value == "" else value


def _shown(value: Any, most: int = 60) -> str:
    """A value as the manifest spells it (JSON: true, "5", ["a"]), cut to `most` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= most else text[: most - 3] + "..."


def _kind(value: Any) -> str:
    kinds = {bool: "a boolean", str: "a string", list: "a list", dict: "an object",
             int: "a number", float: "a number"}
    return kinds.get(type(value), type(value).__name__)


def _seconds(record: dict, key: str) -> float | None:
    """record[key] as seconds (None when absent); ValueError naming the key otherwise."""
    value = _given(record, key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key}: {_shown(value)} is {_kind(value)}, not a number of seconds")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key}: {_shown(value)} is not a finite number of seconds")
    if value < 0:
        raise ValueError(f"{key}: {_shown(value)} is negative")
    if value > MAX_SECONDS:
        raise ValueError(f"{key}: {_shown(value)} s is out of range (at most {MAX_SECONDS:.0f} s)")
    return float(value)


def _name(record: dict, key: str) -> str | None:
    """An id or label: a string or an integer as a string (None when absent)."""
    value = _given(record, key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{key}: {_shown(value)} is {_kind(value)}, not a string")


def _labels(record: dict) -> list[str]:
    """record["labels"]: a list of class names, each once ([] when absent)."""
    value = _given(record, "labels")
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, str) and x.strip() for x in value):
        raise ValueError(f"labels: {_shown(value)} is not a list of class names")
    return list(dict.fromkeys(printable(" ".join(x.split())) for x in value))


def _items(record: dict) -> list[dict]:
    """record["mc"]: multiple-choice items, each checked (module docstring); [] when absent."""
    value = _given(record, "mc")
    if value is None:
        return []
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, list):
        raise ValueError(f"mc: {_shown(value)} is not an item or a list of items")
    for i, item in enumerate(items):
        _check_item(item, f"mc[{i}]")
    return [{k: item[k] for k in ("question", "answers", "answer", "kind") if k in item} for item in items]


def _check_item(item, where: str) -> None:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: {_shown(item)} is {_kind(item)}, not an item")
    question, answers, answer = item.get("question"), item.get("answers"), item.get("answer")
    if not isinstance(question, str):
        raise ValueError(f"{where}.question: {_shown(question)} is not a string")
    if not (isinstance(answers, list) and len(answers) >= 2
            and all(isinstance(a, str) and a.strip() for a in answers)):
        raise ValueError(f"{where}.answers: {_shown(answers)} is not a list of 2 or more answers")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(answers):
        raise ValueError(f"{where}.answer: {_shown(answer)} is not the index of one of its "
                         f"{len(answers)} answers")
    kind = item.get("kind", "")
    if not isinstance(kind, str) or not set(kind) <= KIND_CHARS:
        raise ValueError(f"{where}.kind: {_shown(kind)} is not a lower-case name (a-z, 0-9, _)")


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
