"""`longvivit shards`: awkward inputs, summary, rejects, columns, output-folder rules."""
from __future__ import annotations

import json

import numpy as np
import pytest
from data_support import moving_frames, psnr, read_jsonl, write_audio_only, write_video

from longvivit.data.shards import ShardOptions, main, write_shards
from longvivit.data.video import frames_at, probe, read_resampled


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
    assert summary["hours"] == pytest.approx((4 + 3 + 6) / 3600, abs=1e-6)


def test_resampled_frames_are_the_frames_on_screen(awkward):
    """25 FPS -> 1 FPS picks the frame shown at 0 s, 1 s, 2 s; the transcode keeps it."""
    src = str(awkward / "vp9.mkv")
    ours = [f.to_ndarray(format="rgb24") for f in read_resampled(src, fps=1.0, short_side=None)]
    reference = frames_at(src, [0.0, 1.0, 2.0])
    off_by_one = frames_at(src, [0.04, 1.04, 2.04])  # the next frame at 25 FPS
    assert len(ours) == 3
    for a, b, c in zip(ours, reference, off_by_one):
        # the same frame differs only by YUV->RGB rounding; the next frame (new noise, moved
        # square) is far off
        assert psnr(a, b) > 35 and psnr(a, c) < 25


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
