"""Tokenizer: trained on shard captions or a text file; encode pads, truncates, masks; bad
input exits 2 in one line and leaves nothing behind."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from longvivit.cli.tokenizer import main
from longvivit.data.load.tokenizer import BOS, EOS, PAD, Tokenizer, read_captions

from data_support import refused, synth_data  # noqa: F401 (fixture)


def test_encode_pads_truncates_and_masks(synth_data):
    tok = Tokenizer(synth_data["tokenizer"])
    caption = "a red circle moves up, then a blue square grows"
    ids, mask = tok.encode([caption, "", caption], length=8)
    assert ids.dtype == torch.int64 and mask.dtype == torch.bool and ids.shape == (3, 8)
    assert ids[0, 0] == BOS and ids[0, -1] == EOS and mask[0].all()  # truncated, eos kept
    assert ids[1].tolist() == [BOS, EOS] + [PAD] * 6 and mask[1].sum() == 2
    assert torch.equal(ids[0], ids[2])
    long_ids, _ = tok.encode([caption], length=64)
    n = int((long_ids != PAD).sum())
    assert n < 20, "synth captions should tokenize into whole words"
    assert tok.decode(long_ids) == [caption]
    assert tok.vocab_size < 1000


def test_train_from_shards_and_text_file(synth_data, tmp_path, capsys):
    shard_captions = list(read_captions(synth_data["shards_train"]))
    manifest_captions = list(read_captions(synth_data["train"]))
    assert sorted(shard_captions) == sorted(manifest_captions) and shard_captions
    text = tmp_path / "captions.txt"
    text.write_text("\n".join(["un chat noir dort", "a black cat sleeps"] * 20), encoding="utf-8")
    assert main([str(synth_data["shards_train"]), str(text), "--out", str(tmp_path / "t")]) == 0
    tok = Tokenizer(tmp_path / "t.model")
    ids, _ = tok.encode(["un chat noir dort"], 16)
    assert tok.decode(ids) == ["un chat noir dort"]
    assert main([str(tmp_path / "nothing.txt"), "--out", str(tmp_path / "u")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="longvivit tokenizer"):
        Tokenizer(tmp_path / "missing.model")
    (tmp_path / "text.model").write_text("a caption, not a model")
    with pytest.raises(ValueError, match="text.model: not a sentencepiece model"):
        Tokenizer(tmp_path / "text.model")


def test_text_with_byte_order_mark_and_json_manifest(tmp_path):
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfa cat sleeps\r\n\r\nthe dog runs\n")
    assert list(read_captions(bom)) == ["a cat sleeps", "the dog runs"]  # no BOM in the first
    manifest = tmp_path / "m.json"  # a manifest under the .json name shards also reads
    manifest.write_text(json.dumps({"video": "a.mp4", "caption": ["one", "two"]}) + "\n")
    assert list(read_captions(manifest)) == ["one", "two"]


BAD_FILES = {  # written under the test's tmp_path before each case
    "caps.txt": "a cat sleeps\nthe dog runs\n".encode() * 5,
    "empty.txt": b"", "blank.txt": b"\n \n\t\n", "empty.jsonl": b"",
    "latin1.txt": "a cat\ncafé au lait\n".encode("latin-1"),
    "utf16.txt": "a cat\n".encode("utf-16"),
    "picture.jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "utf16.jsonl": '{"video": "a.mp4", "caption": "x"}\n'.encode("utf-16"),
    "novideo.csv": b"path,caption\na.mp4,x\n", "afile": b"x",
    "garbage/index.json": b"{not json", "nodata/notes.txt": b"x", "t.model/x": b"x",
}
CAPS = ["{tmp}/caps.txt", "--out", "{tmp}/tok"]


@pytest.mark.parametrize("argv, message", [
    (["{tmp}/none.txt", "--out", "{tmp}/tok"], "caption source {tmp}/none.txt: no such file"),
    (["{tmp}/none.jsonl", "--out", "{tmp}/tok"], "manifest {tmp}/none.jsonl: no such file"),
    (["{tmp}/empty.txt", "--out", "{tmp}/tok"], "no captions found in {tmp}/empty.txt"),
    (["{tmp}/blank.txt", "{tmp}/empty.jsonl", "--out", "{tmp}/tok"],
     "no captions found in {tmp}/blank.txt, {tmp}/empty.jsonl"),
    (["{tmp}/latin1.txt", "--out", "{tmp}/tok"], "{tmp}/latin1.txt: not UTF-8 text (line 2)"),
    (["{tmp}/utf16.txt", "--out", "{tmp}/tok"], "{tmp}/utf16.txt: not UTF-8 text (line 1)"),
    (["{tmp}/picture.jpg", "--out", "{tmp}/tok"], "{tmp}/picture.jpg: not UTF-8 text"),
    (["{tmp}/utf16.jsonl", "--out", "{tmp}/tok"], "manifest {tmp}/utf16.jsonl: UTF-16 text"),
    (["{tmp}/novideo.csv", "--out", "{tmp}/tok"], "must name a 'video' column"),
    (["{tmp}/nodata", "--out", "{tmp}/tok"], "{tmp}/nodata: a folder without index.json"),
    (["{tmp}/garbage", "--out", "{tmp}/tok"], "caption source {tmp}/garbage: unreadable shards"),
    (["{tmp}/shards", "--out", "{tmp}/tok"], "caption source {tmp}/shards: unreadable shards"),
    (CAPS + ["--vocab-size", "0"], "--vocab-size 0: must be > 4"),
    (CAPS + ["--vocab-size", "-1"], "--vocab-size -1: must be > 4"),
    (CAPS + ["--vocab-size", "4"], "--vocab-size 4: must be > 4"),
    (CAPS + ["--vocab-size", "lots"], "argument --vocab-size: invalid int value: 'lots'"),
    # refused by sentencepiece after reading the captions: the folders made go again
    (["{tmp}/caps.txt", "--out", "{tmp}/new/deeper/tok", "--vocab-size", "5"],
     "sentencepiece cannot train on these captions with --vocab-size 5: Vocabulary size is smaller"),
    (CAPS + ["--character-coverage", "0.5"], "--character-coverage 0.5: must be in [0.98, 1]"),
    (CAPS + ["--character-coverage", "2"], "--character-coverage 2.0: must be in [0.98, 1]"),
    (CAPS + ["--character-coverage", "nan"], "--character-coverage nan: must be in [0.98, 1]"),
    (CAPS + ["--model-type", "wordpiece"], "argument --model-type: invalid choice: 'wordpiece'"),
    (["--out", "{tmp}/tok"], "the following arguments are required: inputs"),
    (["{tmp}/caps.txt"], "the following arguments are required: --out"),
    (["{tmp}/caps.txt", "--out", "{tmp}/afile/tok"], "--out {tmp}/afile/tok: {tmp}/afile is a file"),
    (["{tmp}/caps.txt", "--out", "/proc/x/tok"], "--out /proc/x/tok: cannot make a folder in /proc"),
    (["{tmp}/caps.txt", "--out", "{tmp}/sub/"], "--out {tmp}/sub/: a prefix names files"),
    (["{tmp}/caps.txt", "--out", "{tmp}/t"], "--out {tmp}/t: {tmp}/t.model is a folder"),
])
def test_bad_input_exits_2_in_one_line_and_leaves_nothing(synth_data, tmp_path, capsys, argv,
                                                          message):
    for name, data in BAD_FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    if "{tmp}/shards" in argv:  # real shards, one of them cut short
        shutil.copytree(synth_data["shards_train"], tmp_path / "shards")
        shard = sorted((tmp_path / "shards").glob("shard.*.mds"))[0]
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    argv = [a.format(tmp=tmp_path) for a in argv]
    line = refused(main, argv, capsys, tmp_path, "tokenizer")
    assert message.format(tmp=tmp_path) in line, line
