"""Annotation files of public video datasets -> longvivit manifests (see manifest.py).

    longvivit import FORMAT ANNOTATIONS --videos DIR --out MANIFEST.jsonl [--split NAME]
                     [--unit segment|paragraph]                       (--unit: youcook2)
                     [--answers ANSWERS.json]                         (egoschema)

FORMAT, the annotation file it reads, and where it looks for each video in DIR (the first
file that exists wins):

  msrvtt      MSR-VTT's train_val_videodatainfo.json / test_videodatainfo.json
              ({"videos": [{"video_id", "split", ...}], "sentences": [{"video_id",
              "caption", "sen_id"}]}): one row per video, all its captions in sen_id order.
              DIR/<video_id>.mp4. The published mp4s are already cut from the YouTube
              source ("start time"/"end time" are positions in that source): no start/end.
  msrvtt-1ka  the 1k-A test split, MSRVTT_JSFUSION_test.csv (key,vid_key,video_id,sentence):
              one row per line, its one sentence. DIR/<video_id>.mp4.
  youcook2    youcookii_annotations_*.json ({"database": {YOUTUBE_ID: {"subset",
              "recipe_type", "annotations": [{"segment": [start, end], "id", "sentence"}],
              "video_url", ...}}}). --unit segment (default): one row per segment, id
              <youtube_id>_<segment id>, its start/end and sentence. --unit paragraph: one
              row per whole video (no start/end), id <youtube_id>, caption the sentences in
              time order, each ended with a period and joined with a space ("crack the
              eggs. whisk them."), for paragraph-to-video retrieval. DIR/<youtube_id>.<ext>
              or the official downloader's DIR/<subset>/<recipe_type>/<youtube_id>.<ext>,
              ext in VIDEO_EXTS. Segments without a sentence (the test split's file) are
              counted as "uncaptioned", not written.
  kinetics    a Kinetics CSV (label,youtube_id,time_start,time_end[,split][,is_cc]): label
              and caption are the class name. A trimmed clip, <youtube_id>_<time_start:06d>_
              <time_end:06d>.mp4 (the ActivityNet downloader's name, integer seconds), gets no
              start/end (it starts at the action); a whole video, <youtube_id>.<ext>, gets
              start/end = time_start/time_end. Each is looked for in DIR/<label>/,
              DIR/<label with spaces as _>/ and DIR/, trimmed clips first.
  webvid      a WebVid CSV (videoid,contentUrl,duration,page_dir,name): caption = name.
              DIR/<page_dir>/<videoid>.mp4 (the official downloader's layout) or
              DIR/<videoid>.mp4.
  egoschema   EgoSchema's questions.json ([{"q_uid", "question", "option 0" .. "option 4",
              "google_drive_id", ...}]) with --answers subset_answers.json ({q_uid: index of
              the right option}; the full set's answers are not published): one row per
              question that has an answer, id <q_uid>, caption the question, and "mc", its
              multiple-choice item {question, answers: the 5 options, answer, kind:
              "egoschema"} for `longvivit eval --tasks mc`. A question without an answer
              has nothing to score: counted as "uncaptioned", not written. An answer for a
              question the file lacks is an error. DIR/<q_uid>.mp4 (the release's names).

--split keeps the entries whose split is NAME, as the file spells it (msrvtt: train,
validate, test; youcook2: training, validation; kinetics: the CSV's split column). Rows
get "split" (and kinetics "label", youcook2 "recipe_type"): keys `longvivit shards` ignores.

Video paths are written relative to the manifest's folder when the video is under it,
absolute otherwise. A row whose video file is in none of its places is not fatal: it goes
to MANIFEST with .missing.jsonl for .jsonl (out.jsonl -> out.missing.jsonl), one object
per row: {"id", "expected": [every path tried], "url" (where the file gives one), ...}.
That file is always written (empty when nothing is missing) so that a stale one never
survives a re-run.
"""
from __future__ import annotations

import csv
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from longvivit.data.prepare.manifest import MAX_SECONDS, write_jsonl
from longvivit.data.prepare.output import check_out, new_files

VIDEO_EXTS = ("mp4", "mkv", "webm")  # what YouTube downloaders write, mp4 first
UNITS = ("segment", "paragraph")  # youcook2 --unit
EGOSCHEMA_OPTIONS = tuple(f"option {i}" for i in range(5))  # questions.json's keys of the 5 answers
YOUTUBE = "https://www.youtube.com/watch?v="


class AnnotationError(ValueError):
    """The input is not what the format needs; the message says what is wrong."""


@dataclass
class Clip:
    """One manifest row before its video file is looked up."""
    id: str
    caption: str | list[str]
    files: list[Path] = field(default_factory=list)  # whole videos: start/end apply to them
    cut: list[Path] = field(default_factory=list)  # files holding only the clip (tried first)
    start: float | None = None  # seconds into a whole video
    end: float | None = None
    extra: dict = field(default_factory=dict)  # split, label, ...: kept in the row
    url: str | None = None  # where the video comes from: for the missing list


# ----------------------------------------------------------------------------- formats

def read_msrvtt(path: Path, videos: Path) -> Iterator[Clip]:
    data = _load_json(path, {"videos": list, "sentences": list})
    captions = defaultdict(list)  # video_id -> [(sen_id, caption)]
    for i, s in enumerate(data["sentences"]):
        where = f"sentences[{i}]"
        video_id, sen_id, caption = _fields(s, where, "video_id", "sen_id", "caption")
        captions[_name(video_id, f"{where}.video_id")].append(
            (_number(sen_id, f"{where}.sen_id"), _text(caption, f"{where}.caption")))
    for i, v in enumerate(data["videos"]):
        (video_id,) = _fields(v, f"videos[{i}]", "video_id")
        video_id = _name(video_id, f"videos[{i}].video_id")
        ordered = [c for _, c in sorted(captions.get(str(video_id), []), key=lambda sc: sc[0])]
        yield Clip(str(video_id), ordered, files=[videos / f"{video_id}.mp4"],
                   extra=_split(v.get("split")), url=v.get("url"))


def read_msrvtt_1ka(path: Path, videos: Path) -> Iterator[Clip]:
    for _, row in _csv_rows(path, ("video_id", "sentence")):
        yield Clip(row["video_id"], row["sentence"], files=[videos / f"{row['video_id']}.mp4"])


def read_youcook2(path: Path, videos: Path, unit: str = "segment") -> Iterator[Clip]:
    database = _load_json(path, {"database": dict})["database"]
    for youtube_id, video in database.items():
        where = f"database[{youtube_id!r}]"
        (annotations,) = _fields(video, where, "annotations")
        if not isinstance(annotations, list):
            raise AnnotationError(f"{where}.annotations is not a list")
        subset, recipe = video.get("subset"), str(video.get("recipe_type", ""))
        segments = [_segment(a, f"{where}.annotations[{i}]") for i, a in enumerate(annotations)]
        folders = (videos, videos / str(subset or "") / recipe)
        files = [folder / f"{youtube_id}.{ext}" for folder in folders for ext in VIDEO_EXTS]
        extra = {**_split(subset), "recipe_type": recipe}
        url = video.get("video_url")
        if unit == "paragraph":
            yield Clip(youtube_id, paragraph(segments), files, extra=extra, url=url)
            continue
        for seg_id, start, end, sentence in segments:
            yield Clip(f"{youtube_id}_{seg_id}", sentence, files, start=start, end=end,
                       extra=extra, url=url)


def paragraph(segments: Iterable[tuple[object, float, float, str]]) -> str:
    """The segments' sentences in time order, each ended with a period, space-joined."""
    sentences = [s.strip() for *_, s in sorted(segments, key=lambda seg: seg[1])]
    return " ".join(s if s.endswith((".", "!", "?")) else s + "." for s in sentences if s)


def read_kinetics(path: Path, videos: Path) -> Iterator[Clip]:
    for line, row in _csv_rows(path, ("label", "youtube_id", "time_start", "time_end")):
        youtube_id, label = row["youtube_id"], row["label"]
        start, end = (_seconds(row[k], f"line {line}: {k}") for k in ("time_start", "time_end"))
        trimmed = f"{youtube_id}_{int(start):06d}_{int(end):06d}"
        folders = list(dict.fromkeys([videos / label, videos / label.replace(" ", "_"), videos]))
        extra = {"label": label, **(_split(row["split"]) if "split" in row else {})}
        yield Clip(trimmed, label, cut=[f / f"{trimmed}.mp4" for f in folders],
                   files=[f / f"{youtube_id}.{ext}" for f in folders for ext in VIDEO_EXTS],
                   start=start, end=end, extra=extra, url=YOUTUBE + youtube_id)


def read_webvid(path: Path, videos: Path) -> Iterator[Clip]:
    for _, row in _csv_rows(path, ("videoid", "page_dir", "name")):
        name = f"{row['videoid']}.mp4"
        yield Clip(row["videoid"], row["name"], url=row.get("contentUrl"),
                   files=[videos / row["page_dir"] / name, videos / name])


def read_egoschema(path: Path, videos: Path, answers: Path) -> Iterator[Clip]:
    """Answered questions as clips holding their item; an unanswered one as a clip with no
    caption (counted, not written)."""
    right = _egoschema_answers(answers)
    try:
        questions = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise AnnotationError(f"not JSON ({err})") from None
    if not isinstance(questions, list):
        raise AnnotationError("expected a JSON list of questions")
    for i, entry in enumerate(questions):
        where = f"[{i}]"
        q_uid, question = _fields(entry, where, "q_uid", "question")
        q_uid, question = _name(q_uid, f"{where}.q_uid"), _text(question, f"{where}.question")
        options = [_text(o, f"{where}.{k}") for k, o in
                   zip(EGOSCHEMA_OPTIONS, _fields(entry, where, *EGOSCHEMA_OPTIONS))]
        answer = right.pop(q_uid, None)
        item = {"question": question, "answers": options, "answer": answer, "kind": "egoschema"}
        yield Clip(q_uid, question if answer is not None else "", files=[videos / f"{q_uid}.mp4"],
                   extra={"mc": item} if answer is not None else {})
    if right:
        raise AnnotationError(f"--answers {answers}: {len(right)} answer(s) for questions it does "
                              f"not hold (the first: {next(iter(right))!r})")


def _egoschema_answers(path: Path) -> dict[str, int]:
    try:
        answers = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise AnnotationError(f"--answers {path}: not JSON ({err})") from None
    except UnicodeDecodeError:
        raise AnnotationError(f"--answers {path}: not UTF-8 text") from None
    if not isinstance(answers, dict):
        raise AnnotationError(f"--answers {path}: expected a JSON object {{q_uid: option index}}")
    for q_uid, answer in answers.items():
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(EGOSCHEMA_OPTIONS):
            raise AnnotationError(f"--answers {path}: {q_uid!r}: {answer!r} is not an option index "
                                  f"0..{len(EGOSCHEMA_OPTIONS) - 1}")
    return dict(answers)


FORMATS: dict[str, Callable[..., Iterator[Clip]]] = {
    "msrvtt": read_msrvtt, "msrvtt-1ka": read_msrvtt_1ka, "youcook2": read_youcook2,
    "kinetics": read_kinetics, "webvid": read_webvid, "egoschema": read_egoschema,
}


# ----------------------------------------------------------------------------- reading

def _load_json(path: Path, shape: dict[str, type]) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise AnnotationError(f"not JSON ({err})") from None
    missing = [k for k, kind in shape.items() if not isinstance(data, dict)
               or not isinstance(data.get(k), kind)]
    if missing:
        wanted = ", ".join(f"{k!r} ({kind.__name__})" for k, kind in shape.items())
        raise AnnotationError(f"expected a JSON object with {wanted}; {missing[0]!r} is "
                              "missing or of another type")
    return data


def _csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """(line, row) for each data row; values stripped. Checks the header and row lengths."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        try:
            header = [h.strip() for h in reader.fieldnames or []]
            lacking = [c for c in required if c not in header]
            if lacking:
                raise AnnotationError(f"the CSV header {','.join(header) or '(none)'} lacks "
                                      f"{', '.join(lacking)} (expected {','.join(required)})")
            reader.fieldnames = header
            for row in reader:
                if any(row.get(c) is None for c in required):
                    raise AnnotationError(f"line {reader.line_num} has fewer fields than the header")
                yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None}
        except csv.Error as err:  # a field past the csv module's size limit
            raise AnnotationError(f"line {reader.line_num + 1}: {err}") from None


def _fields(entry, where: str, *keys: str) -> list:
    if not isinstance(entry, dict):
        raise AnnotationError(f"{where} is not a JSON object")
    for key in keys:
        if key not in entry:
            raise AnnotationError(f"{where} has no {key!r}")
    return [entry[k] for k in keys]


def _segment(annotation, where: str) -> tuple[object, float, float, str]:
    seg_id, segment = _fields(annotation, where, "id", "segment")
    seg_id = _name(seg_id, f"{where}.id")
    if not (isinstance(segment, list) and len(segment) == 2):
        raise AnnotationError(f"{where}: segment {segment!r} is not [start, end]")
    start, end = (_seconds(t, f"{where}: segment") for t in segment)
    return seg_id, start, end, _text(annotation.get("sentence") or "", f"{where}.sentence")


def _seconds(value, where: str) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        raise AnnotationError(f"{where}: {value!r} is not a number of seconds") from None
    if not 0 <= seconds <= MAX_SECONDS:
        raise AnnotationError(f"{where}: {value!r} is not a number of seconds in [0, "
                              f"{MAX_SECONDS:.0f}]")
    return seconds


def _name(value, where: str) -> str:
    """An id: a string, or an integer written as one."""
    if isinstance(value, str) and value or isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise AnnotationError(f"{where}: {value!r} is not an id (a string or an integer)")


def _number(value, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise AnnotationError(f"{where}: {value!r} is not a number")


def _text(value, where: str) -> str:
    if isinstance(value, str):
        return value
    raise AnnotationError(f"{where}: {value!r} is not a string")


def _split(value) -> dict:
    return {} if value is None else {"split": str(value)}


# ----------------------------------------------------------------------------- writing

def missing_list_path(out: str | Path) -> Path:
    return Path(out).with_suffix(".missing.jsonl")


def import_annotations(fmt: str, annotations: str | Path, videos: str | Path,
                       out: str | Path, split: str | None = None,
                       unit: str | None = None, answers: str | Path | None = None) -> dict:
    """Write the manifest `out` and its missing list; returns the summary. Raises
    AnnotationError (a ValueError) on bad input, before anything is created."""
    annotations, videos, out = Path(annotations), Path(os.path.abspath(videos)), Path(out)
    answers = Path(answers) if answers is not None else None
    _check_inputs(fmt, annotations, videos, out, unit, answers)
    clips = FORMATS[fmt](annotations, videos, **({"unit": unit} if unit else {}),
                         **({"answers": answers} if answers else {}))
    base = Path(os.path.abspath(out)).parent  # where manifest.py resolves relative paths
    try:
        rows, missing, uncaptioned, splits = _collect(clips, split, base)
    except AnnotationError as err:
        raise AnnotationError(f"{annotations}: {err}") from None
    except UnicodeDecodeError:
        raise AnnotationError(f"{annotations}: not UTF-8 text") from None
    if not splits:
        raise AnnotationError(f"{annotations}: no entries in it")
    if split is not None and splits[split] == 0:
        named = ", ".join(sorted(s for s in splits if s is not None))
        raise AnnotationError(f"{annotations}: --split {split}: " + (
            f"no entries in it; its splits are {named}" if named else "it has no splits"))
    with new_files(f"--out {out}", [out, missing_list_path(out)]):
        write_jsonl(out, rows)
        write_jsonl(missing_list_path(out), missing)
    return {"format": fmt, "written": len(rows), "missing": len(missing),
            "uncaptioned": uncaptioned, "out": str(out),
            "missing_list": str(missing_list_path(out))}


def _check_inputs(fmt: str, annotations: Path, videos: Path, out: Path, unit: str | None,
                  answers: Path | None) -> None:
    if fmt not in FORMATS:
        raise AnnotationError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if unit is not None and (fmt != "youcook2" or unit not in UNITS):
        raise AnnotationError(f"--unit {unit}: youcook2 only, one of {', '.join(UNITS)}")
    if (answers is not None) != (fmt == "egoschema"):
        raise AnnotationError("--answers: egoschema needs it (subset_answers.json)" if answers is None
                              else f"--answers {answers}: egoschema only")
    if answers is not None and not answers.is_file():
        raise AnnotationError(f"--answers {answers}: " + ("is a folder, not a file" if answers.is_dir()
                                                          else "no such file"))
    if annotations.is_dir():
        raise AnnotationError(f"{annotations}: is a folder, not an annotation file")
    if not annotations.is_file():
        raise AnnotationError(f"{annotations}: no such file")
    if not videos.is_dir():
        raise AnnotationError(f"--videos {videos}: " + (
            "is a file, not a folder" if videos.exists() else "no such folder"))
    if out.suffix != ".jsonl":
        raise AnnotationError(f"--out {out}: the manifest's name must end in .jsonl")
    if out.resolve() == annotations.resolve():
        raise AnnotationError(f"--out {out} is the annotation file")
    check_out(out, f"--out {out}", folder=False)
    check_out(missing_list_path(out), f"--out {out}: its missing list {missing_list_path(out)}",
              folder=False)


def _collect(clips: Iterable[Clip], split: str | None, base: Path
             ) -> tuple[list[dict], list[dict], int, Counter]:
    """(manifest rows, missing rows, uncaptioned count, entries per split)."""
    rows, missing, uncaptioned, splits = [], [], 0, Counter()
    for clip in clips:
        splits[clip.extra.get("split")] += 1
        if split is not None and clip.extra.get("split") != split:
            continue
        if not any(c.strip() for c in ([clip.caption] if isinstance(clip.caption, str)
                                       else clip.caption)):
            uncaptioned += 1
            continue
        row = _manifest_row(clip, base)
        if row is None:
            expected = [str(p) for p in clip.cut + clip.files]
            missing.append({"id": clip.id, "expected": expected, **clip.extra,
                            **({"url": clip.url} if clip.url else {})})
        else:
            rows.append(row)
    return rows, missing, uncaptioned, splits


def _manifest_row(clip: Clip, base: Path) -> dict | None:
    """The row for the first of the clip's files that exists, or None."""
    for path, whole in [(p, False) for p in clip.cut] + [(p, True) for p in clip.files]:
        if path.is_file():
            row = {"video": _written_path(path, base), "caption": clip.caption}
            if whole:  # a cut file already starts at the clip's start
                row |= {k: t for k, t in (("start", clip.start), ("end", clip.end))
                        if t is not None}
            return row | {"id": clip.id} | clip.extra
    return None


def _written_path(path: Path, base: Path) -> str:
    """Relative to the manifest's folder when under it (manifest.py resolves it there)."""
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)
