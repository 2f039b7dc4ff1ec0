"""`longvivit shards`: awkward inputs, summary, rejects, columns, output-folder rules, and a
corpus of real-world oddities (offset timestamps, edit lists, rotation, sample aspect
ratio, truncated and damaged files, a still image, non-UTF-8 paths, duplicates, BOM/CRLF
manifests, late-starting stream copies), all made here with PyAV: each is written as a
player shows it (checked against the frames the test put in) or rejected with its reason.
Bad arguments exit 2 in one line before anything is written; malformed rows are skipped
with the key and what is wrong."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from longvivit.cli.shards import main
from longvivit.data.prepare.shards import ShardOptions, write_shards
from longvivit.data.prepare.video import RGB_FLAGS, decode_frames, frames_at, probe, read_resampled

from data_support import moving_frames, pattern_frames, psnr, read_jsonl, refused, remux, write_audio_only, write_video


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    """A folder of awkward inputs and a manifest naming them (plus rows with bad captions)."""
    d = tmp_path_factory.mktemp("awkward")
    write_video(d / "h264.mp4", moving_frames(12, 48, 64, seed=1), 2.0, "libx264", "mp4")
    write_video(d / "vp9.mkv", moving_frames(75, 40, 40, seed=2), 25.0, "libvpx-vp9", "matroska")
    write_video(d / "vp8.webm", moving_frames(6, 32, 48, seed=3), 1.0, "libvpx", "webm")
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000,
                                                                      dtype=np.uint8).tobytes())
    (d / "empty.webm").write_bytes(b"")
    write_audio_only(d / "audio.ogg")
    rows = [
        {"video": "h264.mp4", "caption": "a square moves right", "start": 1, "end": 4.5},
        {"video": "vp9.mkv", "caption": ["un carré rouge se déplace", "赤い四角が動く 🚀"],
         "id": "non-ascii"},
        {"video": "vp8.webm", "caption": "  spaces   are   squeezed  "},
        {"video": "corrupt.mp4", "caption": "noise"},
        {"video": "empty.webm", "caption": "nothing"},
        {"video": "audio.ogg", "caption": "a tone"},
        {"video": "missing.mp4", "caption": "gone"},
        {"video": "vp8.webm", "caption": "   "},
        {"video": "vp8.webm", "caption": ["", None]},
        {"video": "h264.mp4", "caption": "past the end", "start": 30},
    ]
    lines = [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in rows]
    lines.append(b'{"video": "vp8.webm", "caption": "bad \xff\xfe bytes"}')  # not UTF-8
    lines.append(b'{"video": "vp8.webm", "caption": ')  # truncated JSON
    (d / "manifest.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return d


def test_awkward_inputs_good_written_bad_rejected(awkward, tmp_path, capsys):
    out = tmp_path / "shards"
    rc = main([str(awkward / "manifest.jsonl"), "--out", str(out), "--size", "32",
               "--workers", "2"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["written"] == 3 and summary["skipped"] == 9
    assert summary["reasons"] == {
        "bad manifest row": 1, "corrupt file": 1, "empty caption": 2, "empty file": 1,
        "missing file": 1, "no video stream": 1, "undecodable caption": 1, "zero frames": 1}
    rejects = read_jsonl(out / "rejects.jsonl")
    assert [r["line"] for r in rejects] == [4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert json.loads((out / "summary.json").read_text()) == summary

    from streaming import LocalDataset
    samples = [LocalDataset(str(out))[i] for i in range(3)]
    h264, mkv, vp8 = samples
    # [1, 4.5) s at 1 FPS: 4 frames (1, 2, 3, 4 s); 64x48 -> short side 32 -> 42x32 (even)
    assert (h264["num_frames"], h264["width"], h264["height"]) == (4, 42, 32)
    assert (mkv["num_frames"], mkv["fps"], mkv["duration_s"]) == (3, 1.0, 3.0)  # 75 @ 25 FPS
    assert mkv["captions"] == ["un carré rouge se déplace", "赤い四角が動く 🚀"]
    assert mkv["id"] == "non-ascii" and vp8["captions"] == ["spaces are squeezed"]
    assert h264["codec"] == "vp9" and h264["video"][:4] == b"\x1a\x45\xdf\xa3"
    assert probe(h264["video"]).num_frames == 4
    # hours: the source seconds kept ([1, 4.5) is 3.5 s, not 4 frames' 4 s)
    assert (h264["duration_s"], mkv["duration_s"], vp8["duration_s"]) == (3.5, 3.0, 6.0)
    assert summary["hours"] == pytest.approx((3.5 + 3 + 6) / 3600, abs=1e-6)


def test_resampled_frames_are_the_frames_on_screen(awkward):
    """25 FPS -> 1 FPS picks the frame shown at 0 s, 1 s, 2 s; the transcode keeps it."""
    src = str(awkward / "vp9.mkv")
    ours = [f.reformat(format="rgb24", interpolation=RGB_FLAGS).to_ndarray()
            for f in read_resampled(src, fps=1.0, short_side=None)]
    reference = frames_at(src, [0.0, 1.0, 2.0])
    off_by_one = frames_at(src, [0.04, 1.04, 2.04])  # the next frame at 25 FPS
    assert len(ours) == 3
    for a, b, c in zip(ours, reference, off_by_one):
        # the same decoded frame, converted alike; the next one (new noise, moved square) is
        # far off
        assert np.array_equal(a, b) and psnr(a, c) < 25


def test_output_folder_rules_and_exit_status(awkward, tmp_path, capsys):
    out = tmp_path / "o"
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"video": str(awkward / "vp8.webm"), "caption": "x"}) + "\n")
    assert main([str(good), "--out", str(out), "--workers", "0"]) == 0
    capsys.readouterr()
    assert main([str(good), "--out", str(out), "--workers", "0"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main([str(good), "--out", str(out), "--workers", "0", "--overwrite"]) == 0
    (out / "notes.txt").write_text("mine")
    assert main([str(good), "--out", str(out), "--overwrite"]) == 2
    assert "not shards" in capsys.readouterr().err and (out / "notes.txt").exists()

    bad = tmp_path / "bad.csv"
    bad.write_text("video,caption\nmissing.mp4,a\n" + f"{awkward / 'empty.webm'},b\n")
    rc = main([str(bad), "--out", str(tmp_path / "none"), "--workers", "0"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 1 and summary["written"] == 0
    assert summary["reasons"] == {"empty file": 1, "missing file": 1}


def test_summary_and_rejects_are_written_however_the_run_ends(awkward, tmp_path, monkeypatch):
    import longvivit.data.prepare.shards as shards
    real, calls = shards.transcode, []

    def interrupted_at_the_third_row(row, opts):
        calls.append(row.line)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(row, opts)

    monkeypatch.setattr(shards, "transcode", interrupted_at_the_third_row)
    with pytest.raises(KeyboardInterrupt):
        write_shards(awkward / "manifest.jsonl", tmp_path / "o", ShardOptions(size=32), progress=False)
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["written"] == 2 and summary["stopped"].startswith("KeyboardInterrupt")
    assert read_jsonl(tmp_path / "o" / "rejects.jsonl") == []


def test_csv_manifest_with_caption_list_h264_and_compression(awkward, tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text('video,caption,start,end,id\n'
                   f'{awkward / "vp8.webm"},"[""one"", ""two""]",1,3,clip-1\n', encoding="utf-8")
    summary = write_shards(csv, tmp_path / "h", ShardOptions(size=32, codec="h264",
                                                               keyframe_interval=2),
                           compression="zstd", progress=False)
    assert summary["written"] == 1 and list((tmp_path / "h").glob("shard.*.mds.zstd"))
    from streaming import StreamingDataset  # (LocalDataset cannot read compressed shards)
    sample = StreamingDataset(local=str(tmp_path / "h"), batch_size=1)[0]
    assert sample["captions"] == ["one", "two"] and sample["id"] == "clip-1"
    assert sample["codec"] == "h264" and sample["video"][4:8] == b"ftyp"
    assert sample["num_frames"] == 2 and probe(sample["video"]).num_frames == 2


# ---------------------------------------------------------------------------- a player's view

FPS = 2.0  # the corpus is written at 2 FPS from 10 FPS sources: content frame = 5 x shard frame
MOVIE = pattern_frames(40, 48, 64)  # 4 s at 10 FPS; frame i is content i
PORTRAIT = pattern_frames(20, 64, 48)  # what a phone shows upright
WIDE = pattern_frames(20, 48, 70)  # what a 128:117 SAR clip stored at 64x48 shows
NON_UTF8 = os.fsdecode(b"caf\xe9.webm")


def resized(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    t = torch.nn.functional.interpolate(t, size=(height, width), mode="bilinear", antialias=True)
    return t.round().clamp(0, 255).permute(0, 2, 3, 1).to(torch.uint8).numpy()


def cut(path, at: int, out):
    out.write_bytes(path.read_bytes()[:at])
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(folder, rows, expected): each manifest row and what the shards must hold for it:
    ("written", content frames, (width, height), duration_s) or ("rejected", reason)."""
    d = tmp_path_factory.mktemp("corpus")
    noise = np.random.default_rng(0).integers(0, 256, (30, 48, 64, 3), dtype=np.uint8)
    # Timestamps: MPEG-TS (starts near 1.5 s), an mkv cut from 30 s on, an mp4 edit list
    # hiding its first 5 frames.
    write_video(d / "ts_offset.ts", MOVIE, 10, "libx264", "mpegts", first_pts=14)
    write_video(d / "at_30s.mkv", MOVIE, 10, "libvpx-vp9", "matroska", first_pts=300)
    write_video(d / "edit_list.mp4", MOVIE, 10, "libx264", "mp4", first_pts=-5)
    # Display matrix: stored sideways (a player turns it counter-clockwise), and turned
    # the other way then mirrored.
    write_video(d / "rotated.mp4", np.rot90(PORTRAIT, -1, axes=(1, 2)), 10, "libx264", "mp4",
                rotation=90)
    write_video(d / "rotated_mirrored.mp4", np.rot90(PORTRAIT[:, :, ::-1], 1, axes=(1, 2)), 10,
                "libx264", "mp4", rotation=-90, hflip=True)
    write_video(d / "sar.mp4", resized(WIDE, 48, 64), 10, "libx264", "mp4", sar=Fraction(128, 117))
    write_video(d / NON_UTF8, MOVIE[:10], 10, "libvpx-vp9", "webm")
    # Cut short: an mp4 with its index in front, cut in half (through a packet) and exactly
    # where a packet starts; a webm cut in half; an mp4 with 3 kB of garbage mid-file.
    fast = write_video(d / "faststart.mp4", noise, 10, "libx264", "mp4",
                       options={"movflags": "+faststart"})
    with av.open(str(fast)) as c:
        packet_15 = c.streams.video[0].index_entries[15].pos
    cut(fast, fast.stat().st_size // 2, d / "truncated_half.mp4")
    cut(fast, packet_15, d / "truncated_at_packet.mp4")
    webm = write_video(d / "noise.webm", noise, 10, "libvpx-vp9", "webm")
    cut(webm, webm.stat().st_size // 2, d / "truncated.webm")
    damaged = bytearray(fast.read_bytes())
    mid = len(damaged) // 2
    damaged[mid: mid + 3000] = np.random.default_rng(1).integers(0, 256, 3000, np.uint8).tobytes()
    (d / "damaged.mp4").write_bytes(bytes(damaged))
    with av.open(str(d / "picture.png"), "w", format="image2") as out:  # a PNG named .mp4
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = 64, 48, "rgb24"
        out.mux(stream.encode(av.VideoFrame.from_ndarray(MOVIE[0], format="rgb24")))
    (d / "picture.png").rename(d / "still.mp4")

    steps = lambda n, first=0: [first + 5 * k for k in range(n)]  # noqa: E731
    cases = [
        ({"video": "ts_offset.ts"}, ("written", steps(8), (64, 48), 4.0)),
        ({"video": "ts_offset.ts", "start": 1, "end": 3}, ("written", steps(4, 10), (64, 48), 2.0)),
        ({"video": "at_30s.mkv", "start": 0.5, "end": 1.5}, ("written", steps(2, 5), (64, 48), 1.0)),
        ({"video": "at_30s.mkv"}, ("written", steps(8), (64, 48), 4.0)),  # checked to its end
        ({"video": "edit_list.mp4"}, ("written", steps(7, 5), (64, 48), 3.5)),
        ({"video": "rotated.mp4"}, ("written", steps(4), (48, 64), 2.0)),
        ({"video": "rotated_mirrored.mp4"}, ("written", steps(4), (48, 64), 2.0)),
        ({"video": "sar.mp4"}, ("written", steps(4), (70, 48), 2.0)),
        ({"video": NON_UTF8}, ("written", steps(2), (64, 48), 1.0)),
        ({"video": "truncated_half.mp4"}, ("rejected", "decode error")),
        ({"video": "truncated_at_packet.mp4"}, ("rejected", "truncated file")),
        ({"video": "truncated.webm"}, ("rejected", "truncated file")),
        ({"video": "damaged.mp4"}, ("rejected", "decode error")),
        ({"video": "still.mp4"}, ("rejected", "still image")),
        ({"video": os.fsdecode(b"gone\xe9.mp4")}, ("rejected", "missing file")),
        ({"video": "ts_offset.ts", "caption": "again"}, ("rejected", "duplicate id")),
        ({"video": "ts_offset.ts", "start": 5}, ("rejected", "zero frames")),  # a 4 s video
    ]
    rows = [{"caption": f"clip {i}", **row} for i, (row, _) in enumerate(cases)]
    lines = [json.dumps(r, ensure_ascii=False).encode("utf-8", "surrogateescape") for r in rows]
    (d / "manifest.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return d, rows, [e for _, e in cases]


def content_of(row: dict) -> np.ndarray:
    return {"rotated.mp4": PORTRAIT, "rotated_mirrored.mp4": PORTRAIT, "sar.mp4": WIDE}.get(
        row["video"], MOVIE)


def test_corpus_written_as_a_player_shows_it_or_rejected_with_its_reason(corpus, tmp_path, capsys):
    d, rows, expected = corpus
    out = tmp_path / "shards"
    rc = main([str(d / "manifest.jsonl"), "--out", str(out), "--size", "0", "--fps", str(FPS),
               "--workers", "2"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rejects = read_jsonl(out / "rejects.jsonl")  # valid UTF-8 JSON, non-UTF-8 paths included
    assert rc == 0 and json.loads((out / "summary.json").read_text()) == summary
    want_rejects = {i + 1: e[1] for i, e in enumerate(expected) if e[0] == "rejected"}
    assert {r["line"]: r["reason"] for r in rejects} == want_rejects, rejects
    written = [(row, e) for row, e in zip(rows, expected) if e[0] == "written"]
    assert summary["written"] == len(written) and summary["skipped"] == len(want_rejects)
    gone = next(r for r in rejects if r["reason"] == "missing file")
    assert os.fsencode(gone["video"]).endswith(b"gone\xe9.mp4")  # the path reads back exactly

    from streaming import LocalDataset
    samples = [LocalDataset(str(out))[i] for i in range(len(written))]
    for sample, (row, (_, content_ids, size, duration)) in zip(samples, written):
        where = f"{row['video']!r} {row.get('start')}-{row.get('end')}"
        assert (int(sample["width"]), int(sample["height"])) == size, where
        assert (sample["num_frames"], sample["duration_s"]) == (len(content_ids), duration), where
        got = frames_at(sample["video"], [k / FPS for k in range(len(content_ids))])
        content = resized(content_of(row), size[1], size[0])
        scores = np.array([[psnr(g, c) for c in content] for g in got])
        # each shard frame is the content frame a player shows then, and no other
        assert scores.argmax(1).tolist() == content_ids, (where, scores.max(1))
        assert scores.max(1).min() >= 28, (where, scores.max(1))
    assert samples[-1]["id"] == r"caf\xe9.webm"  # the id column is UTF-8; the bad byte escaped
    assert summary["hours"] == pytest.approx(sum(e[3] for _, e in written) / 3600, abs=1e-6)
    reasons = {r["reason"]: r["detail"] for r in rejects}
    print("\n" + "\n".join(f"{k}: {v}" for k, v in reasons.items()))
    assert "the video ends at 4.00 s" in reasons["zero frames"]
    assert "already line 1" in reasons["duplicate id"]


def test_still_image_is_a_clip_only_when_asked(corpus, tmp_path):
    d, _, _ = corpus
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps({"video": str(d / "still.mp4"), "caption": "a still",
                                              **extra}) for extra in ({}, {"start": 0, "end": 2})))
    summary = write_shards(manifest, tmp_path / "s", ShardOptions(size=0, fps=FPS,
                                                                  still_images=True), progress=False)
    assert summary["written"] == 2, summary
    from streaming import LocalDataset
    one, held = (LocalDataset(str(tmp_path / "s"))[i] for i in range(2))
    assert (one["num_frames"], one["duration_s"]) == (1, 0.5)  # one frame at 2 FPS
    assert (held["num_frames"], held["duration_s"]) == (4, 2.0)
    assert (one["codec"], held["codec"]) == ("jpeg", "vp9")  # a picture as a JPEG; held: a clip
    assert (one["width"], one["height"]) == (MOVIE.shape[2], MOVIE.shape[1])
    picture = np.asarray(Image.open(io.BytesIO(one["video"])).convert("RGB"))
    assert psnr(picture, MOVIE[0]) >= 30
    assert psnr(frames_at(held["video"], [1.5])[0], MOVIE[0]) >= 30


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_manifest_with_byte_order_mark_and_crlf(corpus, suffix, tmp_path):
    from longvivit.data.prepare.manifest import Row, read_manifest
    d, _, _ = corpus
    if suffix == ".jsonl":
        lines = [json.dumps({"video": str(d / "ts_offset.ts"), "caption": f"c{i}", "id": f"r{i}"})
                 for i in range(3)]
    else:
        lines = ["video,caption,id"] + [f"{d / 'ts_offset.ts'},c{i},r{i}" for i in range(3)]
    path = tmp_path / f"m{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    rows = list(read_manifest(path))
    assert all(isinstance(r, Row) for r in rows), rows
    assert [(r.id, r.captions) for r in rows] == [(f"r{i}", [f"c{i}"]) for i in range(3)]
    assert rows[0].video == str(d / "ts_offset.ts")  # no stray \r, no BOM in the path


def test_labels_reach_the_shards_and_bad_ones_are_rejected(awkward, tmp_path):
    from streaming import LocalDataset

    video = str(awkward / "vp8.webm")
    rows = [{"video": video, "caption": "x", "id": "a", "label": "  playing   guitar "},
            {"video": video, "caption": "y", "id": "b"},
            {"video": video, "caption": "z", "id": "c", "label": 7},
            {"video": video, "caption": "w", "id": "d", "label": ["two", "labels"]}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = write_shards(manifest, tmp_path / "s", ShardOptions(size=32), progress=False)
    assert summary["written"] == 3 and summary["reasons"] == {"bad manifest row": 1}
    data = LocalDataset(str(tmp_path / "s"))
    assert [data[i]["label"] for i in range(3)] == ["playing guitar", "", "7"]


# ---------------------------------------------------------------------------- late starts

def test_late_starting_copies_hold_the_frames_of_the_clip_at_0(tmp_path):
    """`ffmpeg -i clip.mp4 -c copy -output_ts_offset 30 out.mkv` (issue 22): the mkv header
    says start 30 s, duration 34 s (its end timestamp, not its length), and the whole
    file was rejected as truncated. That copy, the same into mp4 (an edit list) and MPEG-TS,
    and a copy at 0 are written with exactly the frames of the clip itself; the late mkv
    cut in half is still rejected as truncated."""
    from streaming import LocalDataset

    clip = write_video(tmp_path / "clip.mp4", MOVIE, 10, "libx264", "mp4")  # 4 s from 0
    late = remux(clip, tmp_path / "late.mkv", "matroska", offset_s=30)
    remux(clip, tmp_path / "late.mp4", "mp4", offset_s=30)
    remux(clip, tmp_path / "late.ts", "mpegts", offset_s=30)
    remux(clip, tmp_path / "at_0.mkv", "matroska")
    cut(late, late.stat().st_size // 2, tmp_path / "late_cut.mkv")
    with av.open(str(late)) as c:  # the header the issue met
        assert (c.start_time, c.duration) == (30 * av.time_base, 34 * av.time_base)
    names = ["clip.mp4", "late.mkv", "late.mp4", "late.ts", "at_0.mkv", "late_cut.mkv"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"video": n, "caption": n}) + "\n" for n in names))

    summary = write_shards(manifest, tmp_path / "s", ShardOptions(size=0, fps=FPS), progress=False)
    (reject,) = read_jsonl(tmp_path / "s" / "rejects.jsonl")
    assert (reject["line"], reject["reason"]) == (6, "truncated file"), reject
    assert "header says 4.00 s" in reject["detail"], reject
    assert summary["written"] == 5
    data = LocalDataset(str(tmp_path / "s"))
    reference = data[0]
    assert (reference["num_frames"], reference["duration_s"]) == (8, 4.0)
    frames = decode_frames(reference["video"], range(8))
    assert min(psnr(f, MOVIE[5 * k]) for k, f in enumerate(frames)) >= 28  # the clip's frames
    for i, name in enumerate(names[1:5], 1):
        sample = data[i]
        assert (sample["num_frames"], sample["duration_s"]) == (8, 4.0), name
        assert np.array_equal(decode_frames(sample["video"], range(8)), frames), name


# ---------------------------------------------------------------------------- bad input

BAD_FILES = {  # written under the test's tmp_path before each case
    "empty.jsonl": b"", "blank.jsonl": b"\n  \n\r\n", "afile": b"x",
    "utf16.jsonl": '{"video": "a.mp4", "caption": "x"}\n'.encode("utf-16"),
    "novideo.csv": b"path,caption\na.mp4,x\n",
    "parts/part-0/summary.json": b'{"written": 1}',  # not what `shards --part` writes
}
SHARD_SIZE = ["{tmp}/m.jsonl", "--out", "{tmp}/o", "--shard-size"]
OPTION = ["{tmp}/m.jsonl", "--out", "{tmp}/o"]


@pytest.mark.parametrize("argv, message", [
    (SHARD_SIZE + ["lots"], "--shard-size lots: not a size"),
    (SHARD_SIZE + ["0"], "--shard-size 0: not a size"),
    (OPTION + ["--shard-size=-5mb"], "--shard-size -5mb: not a size"),
    (SHARD_SIZE + ["5gb"], "--shard-size 5gb: not a size between 1b and 4gb"),
    (SHARD_SIZE + ["infmb"], "--shard-size infmb: not a size"),
    (OPTION + ["--compression", "bogus"], "--compression bogus: not one of br, bz2, gz, snappy, zstd"),
    (OPTION + ["--compression", "zstd:99"], "--compression zstd:99: not one of"),
    (OPTION + ["--workers", "-1"], "--workers -1: must be >= 0"),
    (OPTION + ["--workers", "two"], "argument --workers: invalid int value: 'two'"),
    (OPTION + ["--part", "3/2"], "argument --part: '3/2': need 0 <= I < N"),
    (OPTION + ["--part", "1/0"], "argument --part: '1/0': need 0 <= I < N"),
    (OPTION + ["--part=-1/2"], "argument --part: '-1/2': need 0 <= I < N"),
    (OPTION + ["--part", "half"], "argument --part: 'half': expected I/N"),
    (OPTION + ["--part", "1/2/3"], "argument --part: '1/2/3': expected I/N"),
    (OPTION + ["--fps", "0"], "fps: 0.0 must be > 0"),
    (OPTION + ["--fps", "-1"], "fps: -1.0 must be > 0"),
    (OPTION + ["--fps", "inf"], "fps: inf is not a finite number"),
    (OPTION + ["--fps", "nan"], "fps: nan must be > 0"),
    (OPTION + ["--fps", "0.0001"], "fps: 0.0001 is below the lowest rate a clip can store"),
    (OPTION + ["--fps", "fast"], "argument --fps: invalid float value: 'fast'"),
    (OPTION + ["--size", "-2"], "size: -2 must be an even number >= 0"),
    (OPTION + ["--size", "33"], "size: 33 must be an even number >= 0"),
    (OPTION + ["--crf", "64"], "crf: 64 is outside [0, 63]"),
    (OPTION + ["--keyframe-interval", "0"], "keyframe_interval: 0 must be >= 1"),
    (OPTION + ["--jpeg-quality", "101"], "jpeg_quality: 101 is outside [1, 100]"),
    (OPTION + ["--codec", "av1"], "argument --codec: invalid choice: 'av1'"),
    (["{tmp}/m.jsonl"], "a MANIFEST and --out are required"),
    (["--out", "{tmp}/o"], "a MANIFEST and --out are required"),
    (["{tmp}/none.jsonl", "--out", "{tmp}/o"], "manifest {tmp}/none.jsonl: no such file"),
    (["{tmp}", "--out", "{tmp}/o"], "manifest {tmp}: is a folder, not a manifest file"),
    (["{tmp}/empty.jsonl", "--out", "{tmp}/o"], "manifest {tmp}/empty.jsonl: no rows in it"),
    (["{tmp}/blank.jsonl", "--out", "{tmp}/o"], "manifest {tmp}/blank.jsonl: no rows in it"),
    (["{tmp}/utf16.jsonl", "--out", "{tmp}/o"], "manifest {tmp}/utf16.jsonl: UTF-16 text"),
    (["{tmp}/novideo.csv", "--out", "{tmp}/o"], "must name a 'video' column"),
    (["{tmp}/m.jsonl", "--out", "{tmp}/afile"], "output {tmp}/afile: is a file, not a folder"),
    (["{tmp}/m.jsonl", "--out", "{tmp}/afile/o"], "output {tmp}/afile/o: {tmp}/afile is a file"),
    (["{tmp}/m.jsonl", "--out", "/proc/x/o"], "output /proc/x/o: cannot make a folder in /proc"),
    (["--merge", "{tmp}/nowhere"], "{tmp}/nowhere: no part folders"),
    (["--merge", "{tmp}/afile"], "{tmp}/afile: no part folders"),
    (["--merge", "{tmp}/parts"], "{tmp}/parts/part-0/summary.json: not a shards summary"),
])
def test_bad_input_exits_2_in_one_line_before_anything_is_written(awkward, tmp_path, capsys,
                                                                  argv, message):
    for name, data in BAD_FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    (tmp_path / "m.jsonl").write_text(json.dumps({"video": str(awkward / "vp8.webm"),
                                                  "caption": "x"}) + "\n")
    argv = [a.format(tmp=tmp_path) for a in argv]
    line = refused(main, argv, capsys, tmp_path, "shards")
    assert message.format(tmp=tmp_path) in line, line


def test_bad_part_exits_2_from_the_command_line(tmp_path):
    """The console script's status (a SystemExit with a message used to exit 1)."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"video": "a.mp4", "caption": "x"}\n')
    proc = subprocess.run([sys.executable, "-m", "longvivit.cli", "shards", str(manifest),
                           "--out", str(tmp_path / "o"), "--part", "3/2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == "", proc
    assert proc.stderr == "longvivit shards: argument --part: '3/2': need 0 <= I < N\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]


BAD_ROWS = [  # extra keys of a row -> the detail of its "bad manifest row" reject
    ({"end": "5"}, 'end: "5" is a string, not a number of seconds'),
    ({"start": "abc"}, 'start: "abc" is a string, not a number of seconds'),
    ({"start": True}, "start: true is a boolean, not a number of seconds"),
    ({"end": False}, "end: false is a boolean, not a number of seconds"),
    ({"start": [1]}, "start: [1] is a list, not a number of seconds"),
    ({"end": {"s": 1}}, 'end: {"s": 1} is an object, not a number of seconds'),
    ({"start": 1e308}, "start: 1e+308 s is out of range (at most 1000000000 s)"),
    ({"end": 1e308}, "end: 1e+308 s is out of range"),
    ({"start": 10 ** 400}, "s is out of range"),
    ({"start": -1}, "start: -1 is negative"),
    ({"start": float("nan")}, "start: NaN is not a finite number of seconds"),
    ({"end": float("inf")}, "end: Infinity is not a finite number of seconds"),
    ({"start": 3, "end": 2}, "end 2 <= start 3"),
    ({"id": ["a"]}, 'id: ["a"] is a list, not a string'),
    ({"id": {"a": 1}}, 'id: {"a": 1} is an object, not a string'),
    ({"id": 1.5}, "id: 1.5 is a number, not a string"),
    ({"id": True}, "id: true is a boolean, not a string"),
    ({"label": ["two", "labels"]}, 'label: ["two", "labels"] is a list, not a string'),
    ({"video": ["a.mp4"]}, 'video: ["a.mp4"] is not a path'),
    ({"video": 5}, "video: 5 is not a path"),
    ({"video": None}, "no 'video' path"),
]
GOOD_ROWS = [  # their neighbours, written: (extra keys, id in the shards, label, duration_s)
    ({"start": 1, "end": 3}, "good-0", "", 2.0),
    ({"id": 7}, "7", "", 6.0),
    ({"id": None, "start": 1}, "{video}@1-end", "", 5.0),  # null: the default id
    ({"id": "", "end": 2}, "{video}@0-2", "", 2.0),
    ({"label": None, "end": 1e9}, "good-4", "", 6.0),  # at the range's end: to the video's
    ({"start": "", "label": 3}, "good-5", "3", 6.0),
]


def test_malformed_rows_are_skipped_naming_the_key_and_what_is_wrong(awkward, tmp_path, capsys):
    video = str(awkward / "vp8.webm")  # 6 s
    bad = [{"video": video, "caption": f"bad {i}", "id": f"bad-{i}", **extra}
           for i, (extra, _) in enumerate(BAD_ROWS)]
    good = [{"video": video, "caption": f"good {i}", "id": f"good-{i}", **extra}
            for i, (extra, *_) in enumerate(GOOD_ROWS)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in good + bad))
    rc = main([str(manifest), "--out", str(tmp_path / "o"), "--size", "32", "--workers", "0"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and summary["written"] == len(GOOD_ROWS)
    assert summary["reasons"] == {"bad manifest row": len(BAD_ROWS)}
    rejects = read_jsonl(tmp_path / "o" / "rejects.jsonl")
    assert [r["line"] for r in rejects] == [len(good) + i + 1 for i in range(len(bad))]
    for reject, (extra, detail) in zip(rejects, BAD_ROWS):
        assert reject["reason"] == "bad manifest row" and detail in reject["detail"], (extra, reject)

    from streaming import LocalDataset
    data = LocalDataset(str(tmp_path / "o"))
    got = [(data[i]["id"], data[i]["label"], data[i]["duration_s"]) for i in range(len(good))]
    assert got == [(ident.format(video=video), label, duration)
                   for _, ident, label, duration in GOOD_ROWS]


def test_malformed_csv_cells_are_skipped_rows(awkward, tmp_path):
    video = str(awkward / "vp8.webm")
    cells = [("abc", "", "start: 'abc' is not a number of seconds"),
             ("true", "", "start: 'true' is not a number of seconds"),
             ("1e308", "", "start: 1e+308 s is out of range"),
             ("nan", "", "start: NaN is not a finite number of seconds"),
             ("-1", "", "start: -1.0 is negative"),
             ("", "soon", "end: 'soon' is not a number of seconds")]
    lines = ["video,caption,start,end"] + [f"{video},c{i},{s},{e}" for i, (s, e, _) in enumerate(cells)]
    lines += [f'{video},"{"x" * 200_000}",,', f"{video},fine, 2 ,3"]  # a field past csv's limit
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    summary = write_shards(manifest, tmp_path / "o", ShardOptions(size=32), progress=False)
    assert summary["written"] == 1 and summary["reasons"] == {"bad manifest row": len(cells) + 1}
    rejects = read_jsonl(tmp_path / "o" / "rejects.jsonl")
    details = [(r["line"], r["detail"]) for r in rejects]
    assert [line for line, _ in details] == list(range(2, len(cells) + 3))
    for (_, detail), (_, _, want) in zip(details, cells):
        assert want in detail, (detail, want)
    assert "field larger than field limit" in details[-1][1]
