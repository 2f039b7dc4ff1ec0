"""Tokenizer: trained on shard captions or a text file; encode pads, truncates, masks."""
from __future__ import annotations

import pytest
import torch
from data_support import synth_data  # noqa: F401 (fixture)

from longvivit.data.tokenizer import BOS, EOS, PAD, Tokenizer, main, read_captions


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
