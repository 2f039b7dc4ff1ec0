"""`longvivit import`: each dataset's annotation file, written here in its published shape
(BOM and CRLF included), becomes a manifest that `read_manifest` reads back with the right
captions, times and ids; missing videos are listed, not fatal; bad input fails in one line
and creates nothing. One real Kinetics clip goes on through `write_shards`."""
from __future__ import annotations

import csv
import io
import json
import random

import pytest

from longvivit import cli
from longvivit.cli.import_ import main
from longvivit.data.prepare.importers import import_annotations, missing_list_path, paragraph
from longvivit.data.prepare.manifest import Row, read_manifest

from data_support import moving_frames, read_jsonl, refused, write_video

BOM = "\ufeff"


def touch(root, *names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def write_json(path, data):
    """As a Windows tool would save it: byte-order mark, CRLF line ends."""
    path.write_text(BOM + json.dumps(data, indent=1).replace("\n", "\r\n"), encoding="utf-8")
    return path


def write_csv(path, header, rows):
    text = io.StringIO()
    csv.writer(text, lineterminator="\r\n").writerows([header, *rows])
    path.write_text(BOM + text.getvalue(), encoding="utf-8")
    return path


def manifest_rows(path) -> dict[str, Row]:
    rows = list(read_manifest(path))
    assert all(isinstance(r, Row) for r in rows), rows
    return {r.id: r for r in rows}


def run_cli(capsys, *argv) -> tuple[int, dict]:
    rc = cli.main(["import", *map(str, argv)])
    return rc, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- MSR-VTT

def msrvtt_json(path):
    videos = [{"category": 9, "url": f"https://www.youtube.com/watch?v=yt{i}",
               "video_id": f"video{i}", "start time": 10.0 + i, "end time": 25.5 + i,
               "split": split, "id": i}
              for i, split in enumerate(["train", "train", "validate", "test"])]
    sentences = [{"caption": f"video{i} caption {k}", "video_id": f"video{i}", "sen_id": 20 * i + k}
                 for i in range(4) for k in range(20)]
    random.Random(0).shuffle(sentences)  # the file's order is not sen_id order
    return write_json(path, {"info": {"year": "2016"}, "videos": videos, "sentences": sentences})


def test_msrvtt_all_captions_in_sen_id_order(tmp_path, capsys):
    touch(tmp_path / "videos", "video0.mp4", "video1.mp4", "video3.mp4")  # video2 missing
    ann = msrvtt_json(tmp_path / "train_val_videodatainfo.json")
    out = tmp_path / "msrvtt.jsonl"
    summary = import_annotations("msrvtt", ann, tmp_path / "videos", out)
    assert (summary["written"], summary["missing"], summary["uncaptioned"]) == (3, 1, 0)
    written = read_jsonl(out)
    assert [r["video"] for r in written] == ["videos/video0.mp4", "videos/video1.mp4",
                                             "videos/video3.mp4"]  # under the manifest: relative
    assert [r["split"] for r in written] == ["train", "train", "test"]
    rows = manifest_rows(out)
    assert rows["video1"].captions == [f"video1 caption {k}" for k in range(20)]
    assert rows["video3"].video == str(tmp_path / "videos" / "video3.mp4")
    # the published mp4s are already cut: the source's "start time"/"end time" do not apply
    assert all(r.start is None and r.end is None for r in rows.values())
    assert read_jsonl(missing_list_path(out)) == [{
        "id": "video2", "expected": [str(tmp_path / "videos" / "video2.mp4")],
        "split": "validate", "url": "https://www.youtube.com/watch?v=yt2"}]

    rc, summary = run_cli(capsys, "msrvtt", ann, "--videos", tmp_path / "videos",
                          "--out", tmp_path / "train.jsonl", "--split", "train")
    assert rc == 0 and (summary["written"], summary["missing"]) == (2, 0)
    assert list(manifest_rows(tmp_path / "train.jsonl")) == ["video0", "video1"]


def test_msrvtt_1ka_csv_one_sentence_a_video(tmp_path, capsys):
    touch(tmp_path / "all", "video9770.mp4", "video7020.mp4")
    header = ["key", "vid_key", "video_id", "sentence"]
    ann = write_csv(tmp_path / "MSRVTT_JSFUSION_test.csv", header, [
        ["ret0", "msr9770", "video9770", "a person is connecting something to system"],
        ["ret1", "msr7020", "video7020", "a little girl does gymnastics, then smiles"],
        ["ret2", "msr9999", "video9999", "a gone video"]])
    out = tmp_path / "elsewhere" / "1ka.jsonl"  # videos not under it: absolute paths
    rc, summary = run_cli(capsys, "msrvtt-1ka", ann, "--videos", tmp_path / "all", "--out", out)
    assert rc == 0 and (summary["written"], summary["missing"]) == (2, 1)
    assert read_jsonl(out)[0]["video"] == str(tmp_path / "all" / "video9770.mp4")
    rows = manifest_rows(out)
    assert rows["video7020"].captions == ["a little girl does gymnastics, then smiles"]
    assert rows["video9770"].video == str(tmp_path / "all" / "video9770.mp4")
    assert [m["id"] for m in read_jsonl(missing_list_path(out))] == ["video9999"]


# ----------------------------------------------------------------------------- YouCook2

def youcook2_json(path):
    def video(subset, recipe, segments):
        return {"duration": 300.0, "subset": subset, "recipe_type": recipe,
                "video_url": "https://www.youtube.com/watch?v=x",
                "annotations": [{"segment": seg, "id": i, "sentence": s}
                                for i, (seg, s) in segments]}
    database = {
        "GLGh_7ctIlM": video("training", "113", [
            (0, ([90, 102], "spread margarine on two slices of white bread")),
            (1, ([114, 127], "place a slice of cheese on the bread")),
            (2, ([132, 138], "place the bread slices on top of each other."))]),
        # listed out of time order: the paragraph puts them in order
        "fn9anlEL4FI": video("validation", "201", [
            (1, ([40, 55], "add the chopped onions")), (0, ([10, 30], "heat oil in a pan"))]),
        "missingVid1": video("training", "113", [(0, ([5, 9], "cut the tomatoes"))]),
        # the test split's file: segments without sentences
        "testOnly001": {"duration": 100.0, "subset": "testing", "recipe_type": "113",
                        "annotations": [{"segment": [1, 5], "id": 0}]},
    }
    return write_json(path, {"database": database})


def test_youcook2_segments(tmp_path, capsys):
    videos = tmp_path / "raw_videos"
    # mixed extensions; one in the official downloader's <subset>/<recipe_type>/ folders
    touch(videos, "GLGh_7ctIlM.webm", "validation/201/fn9anlEL4FI.mkv", "testOnly001.mp4")
    ann = youcook2_json(tmp_path / "youcookii_annotations_trainval.json")
    out = tmp_path / "yc2.jsonl"
    summary = import_annotations("youcook2", ann, videos, out)
    assert (summary["written"], summary["missing"], summary["uncaptioned"]) == (5, 1, 1)
    rows = manifest_rows(out)
    assert list(rows) == ["GLGh_7ctIlM_0", "GLGh_7ctIlM_1", "GLGh_7ctIlM_2", "fn9anlEL4FI_1",
                          "fn9anlEL4FI_0"]
    first, onions = rows["GLGh_7ctIlM_0"], rows["fn9anlEL4FI_1"]
    assert (first.start, first.end, first.captions) == (
        90.0, 102.0, ["spread margarine on two slices of white bread"])
    assert first.video == str(videos / "GLGh_7ctIlM.webm")
    assert (onions.start, onions.end) == (40.0, 55.0)
    assert onions.video == str(videos / "validation" / "201" / "fn9anlEL4FI.mkv")
    assert read_jsonl(out)[3]["split"] == "validation"
    (gone,) = read_jsonl(missing_list_path(out))
    assert gone["id"] == "missingVid1_0" and str(videos / "missingVid1.mp4") in gone["expected"]
    assert str(videos / "training" / "113" / "missingVid1.webm") in gone["expected"]

    rc, summary = run_cli(capsys, "youcook2", ann, "--videos", videos, "--out",
                          tmp_path / "val.jsonl", "--split", "validation")
    assert rc == 0 and summary["written"] == 2
    assert set(manifest_rows(tmp_path / "val.jsonl")) == {"fn9anlEL4FI_0", "fn9anlEL4FI_1"}


def test_youcook2_paragraphs_in_time_order(tmp_path, capsys):
    videos = tmp_path / "raw_videos"
    touch(videos, "GLGh_7ctIlM.mp4", "fn9anlEL4FI.webm")
    ann = youcook2_json(tmp_path / "yc2.json")
    out = tmp_path / "paragraphs.jsonl"
    rc, summary = run_cli(capsys, "youcook2", ann, "--videos", videos, "--out", out,
                          "--unit", "paragraph")
    assert rc == 0 and (summary["written"], summary["missing"], summary["uncaptioned"]) == (2, 1, 1)
    rows = manifest_rows(out)
    assert rows["fn9anlEL4FI"].captions == ["heat oil in a pan. add the chopped onions."]
    assert rows["GLGh_7ctIlM"].captions == [
        "spread margarine on two slices of white bread. place a slice of cheese on the bread. "
        "place the bread slices on top of each other."]  # no doubled period
    assert all(r.start is None and r.end is None for r in rows.values())  # the whole video
    assert paragraph([(0, 3.0, 4.0, "b!"), (1, 1.0, 2.0, " a "), (2, 5.0, 6.0, "")]) == "a. b!"


# ----------------------------------------------------------------------------- Kinetics

def kinetics_csv(path, rows, split=True):
    header = ["label", "youtube_id", "time_start", "time_end"] + (["split"] if split else [])
    return write_csv(path, header, [r if split else r[:4] for r in rows])


def test_kinetics_trimmed_clips_and_whole_videos(tmp_path, capsys):
    videos = tmp_path / "k400"
    touch(videos, "air drumming/-VtLx-mcPds_000012_000022.mp4",  # ActivityNet downloader
          "playing_guitar/abc123_000003_000013.mp4",  # label folder with underscores
          "wholeVid01.mp4")  # a whole video: start/end apply
    ann = kinetics_csv(tmp_path / "validate.csv", [
        ["air drumming", "-VtLx-mcPds", "12", "22", "val"],
        ["playing guitar", "abc123", "3", "13", "val"],
        ["abseiling", "wholeVid01", "30", "40", "val"],
        ["abseiling", "goneVid0001", "0", "10", "train"]])
    out = tmp_path / "k400.jsonl"
    summary = import_annotations("kinetics", ann, videos, out)
    assert (summary["written"], summary["missing"]) == (3, 1)
    rows = manifest_rows(out)
    drum, guitar, whole = (rows["-VtLx-mcPds_000012_000022"], rows["abc123_000003_000013"],
                           rows["wholeVid01_000030_000040"])
    assert (drum.captions, drum.start, drum.end) == (["air drumming"], None, None)
    assert guitar.video == str(videos / "playing_guitar" / "abc123_000003_000013.mp4")
    assert (whole.captions, whole.start, whole.end) == (["abseiling"], 30.0, 40.0)
    assert [(r["label"], r["split"]) for r in read_jsonl(out)] == [
        ("air drumming", "val"), ("playing guitar", "val"), ("abseiling", "val")]
    (gone,) = read_jsonl(missing_list_path(out))
    assert gone["id"] == "goneVid0001_000000_000010" and gone["label"] == "abseiling"
    assert gone["expected"][0] == str(videos / "abseiling" / "goneVid0001_000000_000010.mp4")
    assert str(videos / "goneVid0001.mp4") in gone["expected"]

    rc, summary = run_cli(capsys, "kinetics", ann, "--videos", videos, "--out",
                          tmp_path / "train.jsonl", "--split", "train")
    assert rc == 1 and (summary["written"], summary["missing"]) == (0, 1)  # nothing found
    assert (tmp_path / "train.jsonl").read_text() == ""


def test_kinetics_clip_goes_through_write_shards(tmp_path):
    from streaming import LocalDataset

    from longvivit.data.prepare.shards import ShardOptions, write_shards
    videos = tmp_path / "videos"
    (videos / "juggling").mkdir(parents=True)
    write_video(videos / "wholeVid01.mp4", moving_frames(12, 32, 48), 2.0, "libx264", "mp4")  # 6 s
    write_video(videos / "juggling" / "clipVid001_000010_000014.mp4", moving_frames(8, 32, 48, 1),
                2.0, "libx264", "mp4")  # 4 s, cut from 10-14 s of its source
    ann = kinetics_csv(tmp_path / "k.csv", [["juggling", "wholeVid01", "1", "4"],
                                            ["juggling", "clipVid001", "10", "14"]], split=False)
    assert import_annotations("kinetics", ann, videos, tmp_path / "k.jsonl")["written"] == 2
    summary = write_shards(tmp_path / "k.jsonl", tmp_path / "shards", ShardOptions(size=32),
                           progress=False)
    assert (summary["written"], summary["skipped"]) == (2, 0), summary
    samples = [LocalDataset(str(tmp_path / "shards"))[i] for i in range(2)]
    assert [s["id"] for s in samples] == ["wholeVid01_000001_000004", "clipVid001_000010_000014"]
    assert [s["captions"] for s in samples] == [["juggling"], ["juggling"]]
    assert [s["duration_s"] for s in samples] == [3.0, 4.0]  # [1, 4) of the whole; all the clip
    assert [s["num_frames"] for s in samples] == [3, 4]


# ----------------------------------------------------------------------------- WebVid

def test_webvid_page_dir_and_flat(tmp_path, capsys):
    videos = tmp_path / "videos"
    touch(videos, "001051_001100/1066674784.mp4", "31353427.mp4")
    ann = write_csv(tmp_path / "results_2M_val.csv",
                    ["videoid", "contentUrl", "duration", "page_dir", "name"], [
                        ["1066674784", "https://ak.picdn.net/1066674784.mp4", "PT00H00M29S",
                         "001051_001100", 'Merida, "mexico" - may 7, 2017: traffic'],
                        ["31353427", "https://ak.picdn.net/31353427.mp4", "PT00H00M16S",
                         "000001_000050", "Aerial shot of winter forest"],
                        ["99", "https://ak.picdn.net/99.mp4", "PT00H00M05S", "000001_000050",
                         "gone"]])
    out = tmp_path / "webvid.jsonl"
    rc, summary = run_cli(capsys, "webvid", ann, "--videos", videos, "--out", out)
    assert rc == 0 and (summary["written"], summary["missing"]) == (2, 1)
    assert [r["video"] for r in read_jsonl(out)] == ["videos/001051_001100/1066674784.mp4",
                                                     "videos/31353427.mp4"]
    rows = manifest_rows(out)
    assert rows["1066674784"].captions == ['Merida, "mexico" - may 7, 2017: traffic']
    assert rows["31353427"].start is None and rows["31353427"].end is None
    assert read_jsonl(missing_list_path(out)) == [{
        "id": "99", "expected": [str(videos / "000001_000050" / "99.mp4"), str(videos / "99.mp4")],
        "url": "https://ak.picdn.net/99.mp4"}]


# ----------------------------------------------------------------------------- bad input

def _bad_inputs(tmp_path):
    """name -> (argv without --out, text the one-line error must hold)"""
    videos = tmp_path / "videos"
    videos.mkdir()
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    no_db = write_json(tmp_path / "no_db.json", {"videos": []})
    not_json = tmp_path / "broken.json"
    not_json.write_text('{"videos": [', encoding="utf-8")
    k_cols = write_csv(tmp_path / "k.csv", ["youtube_id", "time_start"], [["a", "1"]])
    k_time = kinetics_csv(tmp_path / "kt.csv", [["x", "a", "soon", "2", "val"]])
    k_ok = kinetics_csv(tmp_path / "ok.csv", [["x", "a", "1", "2", "val"]])
    short = write_csv(tmp_path / "w.csv", ["videoid", "page_dir", "name"], [["1", "d"]])
    nosplit = kinetics_csv(tmp_path / "ns.csv", [["x", "a", "1", "2"]], split=False)
    yc_seg = write_json(tmp_path / "yc.json", {"database": {"v": {"annotations": [
        {"id": 0, "segment": [3]}]}}})
    empty = write_csv(tmp_path / "empty.csv", ["videoid", "page_dir", "name"], [])
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('{"videos": [{"video_id": "café"}], "sentences": []}'.encode("latin-1"))
    utf16 = tmp_path / "utf16.csv"
    utf16.write_text("label,youtube_id,time_start,time_end\nx,a,1,2\n", encoding="utf-16")
    blank = tmp_path / "blank.json"
    blank.write_bytes(b"")
    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "dir.jsonl").mkdir()
    (tmp_path / "list.missing.jsonl").mkdir()  # where --out list.jsonl puts its missing list
    msrvtt = lambda name, videos, sentences: write_json(  # noqa: E731
        tmp_path / name, {"videos": videos, "sentences": sentences})
    id_list = msrvtt("idlist.json", [{"video_id": ["a"]}], [])
    sen_id = msrvtt("senid.json", [{"video_id": "a"}],
                    [{"video_id": "a", "sen_id": "first", "caption": "x"}])
    caption = msrvtt("caption.json", [{"video_id": "a"}],
                     [{"video_id": "a", "sen_id": 0, "caption": ["x"]}])
    yc = lambda name, video: write_json(tmp_path / name, {"database": {"v": video}})  # noqa: E731
    yc_annotations = yc("ycann.json", {"annotations": 5})
    yc_bool = yc("ycbool.json", {"annotations": [{"id": 0, "segment": [True, 5]}]})
    yc_huge = yc("ychuge.json", {"annotations": [{"id": 0, "segment": [0, 1e308]}]})
    yc_sentence = yc("ycsent.json", {"annotations": [{"id": 0, "segment": [0, 1],
                                                      "sentence": ["x"]}]})
    yc_id = yc("ycid.json", {"annotations": [{"id": None, "segment": [0, 1]}]})
    huge = write_csv(tmp_path / "huge.csv", ["videoid", "page_dir", "name"], [["1", "d", "x" * 200_000]])
    return {
        "no file": (["msrvtt", tmp_path / "nope.json"], "nope.json: no such file"),
        "not an object": (["msrvtt", listing], "list.json: expected a JSON object"),
        "no database": (["youcook2", no_db], "no_db.json: expected a JSON object with 'database'"),
        "not JSON": (["msrvtt", not_json], "broken.json: not JSON"),
        "csv columns": (["kinetics", k_cols],
                        "k.csv: the CSV header youtube_id,time_start lacks label"),
        "bad time": (["kinetics", k_time], "kt.csv: line 2: time_start: 'soon' is not a number"),
        "short row": (["webvid", short], "w.csv: line 2 has fewer fields"),
        "bad segment": (["youcook2", yc_seg], "segment [3] is not [start, end]"),
        "empty": (["webvid", empty], "empty.csv: no entries"),
        "unknown split": (["kinetics", k_ok, "--split", "test"], "its splits are val"),
        "no split column": (["kinetics", nosplit, "--split", "val"], "it has no splits"),
        "unit elsewhere": (["kinetics", k_ok, "--unit", "paragraph"], "youcook2 only"),
        "no videos folder": (["kinetics", k_ok, "--videos", tmp_path / "nowhere"],
                             "--videos"),
        "csv out": (["kinetics", k_ok, "--out", tmp_path / "out" / "m.csv"], "must end in .jsonl"),
        "unknown format": (["vatex", k_ok], "argument FORMAT: invalid choice: 'vatex'"),
        "unknown unit": (["youcook2", yc_seg, "--unit", "chapter"], "argument --unit: invalid choice"),
        "no annotation file": (["kinetics"], "the following arguments are required: annotations"),
        "annotations a folder": (["msrvtt", videos], "videos: is a folder, not an annotation file"),
        "not UTF-8": (["msrvtt", latin1], "latin1.json: not UTF-8 text"),
        "UTF-16": (["kinetics", utf16], "utf16.csv: not UTF-8 text"),
        "empty file": (["msrvtt", blank], "blank.json: not JSON"),
        "videos a file": (["kinetics", k_ok, "--videos", afile], "afile: is a file, not a folder"),
        "out a folder": (["kinetics", k_ok, "--out", tmp_path / "dir.jsonl"],
                         "dir.jsonl: is a folder, not a file"),
        "missing list a folder": (["kinetics", k_ok, "--out", tmp_path / "list.jsonl"],
                                  "list.missing.jsonl: is a folder, not a file"),
        "out under a file": (["kinetics", k_ok, "--out", afile / "m.jsonl"],
                             f"--out {afile / 'm.jsonl'}: {afile} is a file, not a folder"),
        "out under /proc": (["kinetics", k_ok, "--out", "/proc/x/m.jsonl"],
                            "--out /proc/x/m.jsonl: cannot make a folder in /proc"),
        "id a list": (["msrvtt", id_list], "videos[0].video_id: ['a'] is not an id"),
        "sen_id a string": (["msrvtt", sen_id], "sentences[0].sen_id: 'first' is not a number"),
        "caption a list": (["msrvtt", caption], "sentences[0].caption: ['x'] is not a string"),
        "annotations not a list": (["youcook2", yc_annotations], "['v'].annotations is not a list"),
        "segment a boolean": (["youcook2", yc_bool], "segment: True is not a number of seconds"),
        "segment out of range": (["youcook2", yc_huge], "segment: 1e+308 is not a number of seconds in"),
        "sentence a list": (["youcook2", yc_sentence], "annotations[0].sentence: ['x'] is not a string"),
        "segment id null": (["youcook2", yc_id], "annotations[0].id: None is not an id"),
        "CSV field too big": (["webvid", huge], "huge.csv: line 2: field larger than field limit"),
    }


@pytest.mark.parametrize("case", [
    "no file", "not an object", "no database", "not JSON", "csv columns", "bad time", "short row",
    "bad segment", "empty", "unknown split", "no split column", "unit elsewhere", "no videos folder",
    "csv out", "unknown format", "unknown unit", "no annotation file", "annotations a folder",
    "not UTF-8", "UTF-16", "empty file", "videos a file", "out a folder", "missing list a folder",
    "out under a file", "out under /proc", "id a list", "sen_id a string", "caption a list",
    "annotations not a list", "segment a boolean", "segment out of range", "sentence a list",
    "segment id null", "CSV field too big"])
def test_bad_input_fails_in_one_line_and_creates_nothing(tmp_path, capsys, case):
    argv, message = _bad_inputs(tmp_path)[case]
    defaults = {"--videos": tmp_path / "videos", "--out": tmp_path / "out" / "m.jsonl"}
    argv = argv + [x for k, v in defaults.items() if k not in argv for x in (k, v)]
    line = refused(main, argv, capsys, tmp_path, "import")
    assert message in line, line


# ----------------------------------------------------------------------------- EgoSchema

def egoschema_files(root):
    """questions.json and subset_answers.json as the release publishes them: a list of
    questions with five "option N" keys, and {q_uid: right option} for some of them."""
    questions = [{"q_uid": f"uid-{i}", "google_drive_id": f"drive{i}",
                  "question": f"what does c do in video {i}?",
                  **{f"option {k}": f"c does thing {k} in video {i}" for k in range(5)}}
                 for i in range(3)]
    return write_json(root / "questions.json", questions), write_json(root / "subset_answers.json",
                                                                       {"uid-0": 3, "uid-2": 0})


def test_egoschema_questions_with_answers_become_mc_items(tmp_path, capsys):
    questions, answers = egoschema_files(tmp_path)
    touch(tmp_path / "videos", "uid-0.mp4", "uid-1.mp4")  # uid-2's video not downloaded
    rc, summary = run_cli(capsys, "egoschema", questions, "--answers", answers,
                          "--videos", tmp_path / "videos", "--out", tmp_path / "ego.jsonl")
    assert rc == 0 and (summary["written"], summary["missing"], summary["uncaptioned"]) == (1, 1, 1)
    rows = manifest_rows(tmp_path / "ego.jsonl")
    assert list(rows) == ["uid-0"]
    row = rows["uid-0"]
    assert row.captions == ["what does c do in video 0?"]
    assert row.mc == [{"question": "what does c do in video 0?", "kind": "egoschema", "answer": 3,
                       "answers": [f"c does thing {k} in video 0" for k in range(5)]}]
    missing = [json.loads(x) for x in (tmp_path / "ego.missing.jsonl").read_text().splitlines()]
    assert [m["id"] for m in missing] == ["uid-2"] and missing[0]["mc"]["answer"] == 0


@pytest.mark.parametrize("answers, message", [
    ({"uid-0": 5}, "'uid-0': 5 is not an option index 0..4"),
    ({"uid-0": True}, "'uid-0': True is not an option index"),
    ({"uid-9": 1}, "1 answer(s) for questions it does not hold (the first: 'uid-9')"),
    ([3], "expected a JSON object {q_uid: option index}"),
])
def test_egoschema_bad_answers_fail_in_one_line(tmp_path, capsys, answers, message):
    questions, _ = egoschema_files(tmp_path)
    bad = write_json(tmp_path / "bad.json", answers)
    (tmp_path / "videos").mkdir()
    line = refused(main, ["egoschema", questions, "--answers", bad, "--videos", tmp_path / "videos",
                          "--out", tmp_path / "out" / "m.jsonl"], capsys, tmp_path, "import")
    assert message in line, line


def test_egoschema_needs_its_answers_and_five_options(tmp_path, capsys):
    questions, answers = egoschema_files(tmp_path)
    (tmp_path / "videos").mkdir()
    common = ["--videos", tmp_path / "videos", "--out", tmp_path / "out" / "m.jsonl"]
    line = refused(main, ["egoschema", questions, *common], capsys, tmp_path, "import")
    assert "--answers: egoschema needs it" in line
    line = refused(main, ["msrvtt", questions, "--answers", answers, *common], capsys, tmp_path, "import")
    assert "egoschema only" in line
    four = write_json(tmp_path / "four.json", [{"q_uid": "uid-0", "question": "q?",
                                                **{f"option {k}": "a" for k in range(4)}}])
    line = refused(main, ["egoschema", four, "--answers", answers, *common], capsys, tmp_path, "import")
    assert "[0] has no 'option 4'" in line
