"""Tokenizers: a sentencepiece model trained on the captions (the BERT-style text tower's),
or open_clip's BPE (the CLIP text tower's); the loader uses one to make text_ids.

    longvivit tokenizer INPUT [INPUT ...] --out PREFIX [--vocab-size 8000]

INPUT is a shard folder (its captions column), a manifest (.jsonl / .csv) or a text file
(one caption per line). Writes PREFIX.model and PREFIX.vocab and prints a JSON line.

Ids: 0 pad, 1 unk, 2 bos, 3 eos. `Tokenizer.encode` wraps every caption as
[bos] text [eos], truncates the text to fit `length`, and pads with 0; the mask is True on
real tokens (what DualEncoder.encode_text expects).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm
import torch

PAD, UNK, BOS, EOS = 0, 1, 2, 3


class Tokenizer:
    def __init__(self, path: str | Path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"tokenizer {path}: no such file (train one with "
                                    "`longvivit tokenizer`)")
        self.path = str(path)
        self.sp = spm.SentencePieceProcessor(model_file=self.path)
        if self.sp.pad_id() != PAD:
            raise ValueError(f"tokenizer {path}: pad id is {self.sp.pad_id()}, expected {PAD} "
                             "(train it with `longvivit tokenizer`)")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: Sequence[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """ids int64 (B, length), mask bool (B, length) True on real tokens."""
        if length < 3:
            raise ValueError(f"text length {length} leaves no room between bos and eos")
        ids = np.zeros((len(texts), length), np.int64)
        for i, pieces in enumerate(self.sp.encode(list(texts))):
            row = [BOS, *pieces[: length - 2], EOS]
            ids[i, : len(row)] = row
        ids = torch.from_numpy(ids)
        return ids, ids != PAD

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [self.sp.decode([int(t) for t in row if t > EOS]) for row in ids]


class ClipTokenizer:
    """open_clip's BPE (its SimpleTokenizer; the vocabulary file ships inside the open_clip
    package, nothing is downloaded): ids [sot] text [eot] padded with 0, a long caption cut
    to end in eot, exactly as open_clip tokenizes. The mask is True up to eot (open_clip's id
    0 is also a real token, "!", so the mask cannot be ids != 0)."""

    vocab_size = 49408

    def __init__(self):
        try:
            from open_clip.tokenizer import SimpleTokenizer
        except ImportError:
            raise ImportError("text.tokenizer=open_clip needs the open_clip package "
                              "(pip install 'longvivit[open_clip]')") from None
        self.bpe = SimpleTokenizer()
        self.path = "open_clip"

    def encode(self, texts: Sequence[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """ids int64 (B, length), mask bool (B, length) True from sot to eot."""
        if length < 3:
            raise ValueError(f"text length {length} leaves no room between sot and eot")
        ids = self.bpe(list(texts), context_length=length)
        return ids, self._until_eot(ids)

    def decode(self, ids: torch.Tensor) -> list[str]:
        special = (self.bpe.sot_token_id, self.bpe.eot_token_id)
        return [self.bpe.decode([int(t) for t in row[keep] if int(t) not in special]).strip()
                for row, keep in zip(ids, self._until_eot(ids))]

    def _until_eot(self, ids: torch.Tensor) -> torch.Tensor:
        eot = (ids == self.bpe.eot_token_id).int().argmax(dim=1, keepdim=True)  # (B, 1)
        return torch.arange(ids.shape[1])[None] <= eot


def make_tokenizer(kind: str, path: str | Path = "") -> Tokenizer | ClipTokenizer:
    """The tokenizer a model's text tower reads (model.text.tokenizer): `sentencepiece`
    loads the .model file at `path`; `open_clip` is open_clip's BPE and needs no file."""
    return ClipTokenizer() if kind == "open_clip" else Tokenizer(path)


def read_captions(source: str | Path) -> Iterator[str]:
    """Every caption in a shard folder, a manifest, or a text file (one per line)."""
    source = Path(source)
    if source.is_dir():
        yield from _shard_captions(source)
    elif source.suffix.lower() in (".jsonl", ".csv"):
        from .manifest import Row, read_manifest
        for row in read_manifest(source):
            if isinstance(row, Row):
                yield from row.captions
    elif source.is_file():
        with open(source, encoding="utf-8", errors="replace") as f:
            yield from (line.strip() for line in f if line.strip())
    else:
        raise FileNotFoundError(f"caption source {source}: no such file or folder")


def _shard_captions(folder: Path) -> Iterator[str]:
    if not (folder / "index.json").is_file():
        raise FileNotFoundError(f"caption source {folder}: a folder without index.json "
                                "(not MDS shards)")
    # StreamingDataset, not LocalDataset: it also reads compressed shards (unpacking them
    # beside the originals, as training would).
    from streaming import StreamingDataset
    dataset = StreamingDataset(local=str(folder), batch_size=1)
    for i in range(dataset.num_samples):
        yield from dataset[i]["captions"]


def train_tokenizer(inputs: Iterable[str | Path], out_prefix: str | Path,
                    vocab_size: int = 8000, character_coverage: float = 0.9995,
                    model_type: str = "bpe") -> str:
    """Train on every caption of `inputs`; returns the path of the .model file.
    `vocab_size` is an upper bound: a small corpus (like synth's) gets fewer pieces.
    BPE by default: on a corpus with a small vocabulary, unigram with a soft vocabulary
    limit falls back to near-character pieces (synth's captions: 44 pieces, 3x the tokens),
    while BPE stops at whole words."""
    captions = [c for source in inputs for c in read_captions(source)]
    if not captions:
        raise ValueError("no captions found in the inputs")
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_prefix=str(out_prefix), vocab_size=vocab_size,
        hard_vocab_limit=False, model_type=model_type, character_coverage=character_coverage,
        pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS, input_sentence_size=2_000_000,
        shuffle_input_sentence=True, minloglevel=2)
    return f"{out_prefix}.model"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="longvivit tokenizer", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="shard folders, manifests or text files")
    p.add_argument("--out", required=True, help="output prefix: writes PREFIX.model")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--character-coverage", type=float, default=0.9995)
    p.add_argument("--model-type", choices=["bpe", "unigram", "word", "char"], default="bpe")
    a = p.parse_args(argv)
    try:
        path = train_tokenizer(a.inputs, a.out, a.vocab_size, a.character_coverage, a.model_type)
    except (ValueError, FileNotFoundError) as err:
        print(f"longvivit tokenizer: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"model": path, "vocab_size": Tokenizer(path).vocab_size}))
    return 0
