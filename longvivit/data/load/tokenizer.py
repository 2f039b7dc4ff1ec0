"""Tokenizers: a sentencepiece model trained on the captions (the BERT-style text tower's;
`train_tokenizer`, the `longvivit tokenizer` command) or open_clip's BPE (the CLIP text
tower's); the loader uses one to make text_ids.

Ids: 0 pad, 1 unk, 2 bos, 3 eos. `Tokenizer.encode` wraps every caption as
[bos] text [eos], truncates the text to fit `length`, and pads with 0; the mask is True on
real tokens (what DualEncoder.encode_text expects).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm
import torch

from longvivit.data.prepare.manifest import Row, read_manifest
from longvivit.data.prepare.output import check_out, new_files

PAD, UNK, BOS, EOS = 0, 1, 2, 3
MODEL_TYPES = ("bpe", "unigram", "word", "char")


class Tokenizer:
    def __init__(self, path: str | Path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"tokenizer {path}: no such file (train one with "
                                    "`longvivit tokenizer`)")
        self.path = str(path)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=self.path)
        except (RuntimeError, OSError) as err:  # a file of another kind, or cut short
            raise ValueError(f"tokenizer {path}: not a sentencepiece model ("
                             f"{' '.join(str(err).split())})") from None
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
        try:  # open_clip: an optional extra, needed only for text.tokenizer=open_clip
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
    elif source.suffix.lower() in (".jsonl", ".json", ".csv"):
        for row in read_manifest(source):
            if isinstance(row, Row):
                yield from row.captions
    elif source.is_file():
        yield from _text_captions(source)
    else:
        raise FileNotFoundError(f"caption source {source}: no such file or folder")


def _text_captions(path: Path) -> Iterator[str]:
    """The non-blank lines of a UTF-8 text file (a byte-order mark is not text)."""
    with open(path, "rb") as f:
        for line, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8-sig" if line == 1 else "utf-8").strip()
            except UnicodeDecodeError:
                raise ValueError(f"caption source {path}: not UTF-8 text (line {line})") from None
            if text:
                yield text


def _shard_captions(folder: Path) -> Iterator[str]:
    if not (folder / "index.json").is_file():
        raise FileNotFoundError(f"caption source {folder}: a folder without index.json "
                                "(not MDS shards)")
    # StreamingDataset, not LocalDataset: it also reads compressed shards (unpacking them
    # beside the originals, as training would); streaming imports torch: only for shard folders
    from streaming import StreamingDataset
    try:
        dataset = StreamingDataset(local=str(folder), batch_size=1)
        captions = [c for i in range(dataset.num_samples) for c in dataset[i]["captions"]]
    except Exception as err:  # noqa: BLE001 -- streaming's errors are of many kinds
        raise ValueError(f"caption source {folder}: unreadable shards ({type(err).__name__}: "
                         f"{' '.join(str(err).split())})") from None
    yield from captions


def train_tokenizer(inputs: Iterable[str | Path], out_prefix: str | Path,
                    vocab_size: int = 8000, character_coverage: float = 0.9995,
                    model_type: str = "bpe") -> str:
    """Train on every caption of `inputs`; returns the path of the .model file.
    `vocab_size` is an upper bound: a small corpus (like synth's) gets fewer pieces.
    BPE by default: on a corpus with a small vocabulary, unigram with a soft vocabulary
    limit falls back to near-character pieces (synth's captions: 44 pieces, 3x the tokens),
    while BPE stops at whole words."""
    files = _check_training(out_prefix, vocab_size, character_coverage, model_type)
    inputs = list(inputs)
    captions = [c for source in inputs for c in read_captions(source)]
    if not captions:
        raise ValueError(f"no captions found in {', '.join(map(str, inputs)) or 'no input'}")
    with new_files(f"--out {out_prefix}", files):
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(captions), model_prefix=str(out_prefix),
                vocab_size=vocab_size, hard_vocab_limit=False, model_type=model_type,
                character_coverage=character_coverage, pad_id=PAD, unk_id=UNK, bos_id=BOS,
                eos_id=EOS, input_sentence_size=2_000_000, shuffle_input_sentence=True,
                minloglevel=2)
        except RuntimeError as err:  # e.g. a vocabulary smaller than the captions' characters
            why = " ".join(str(err).split("] ")[-1].split()) or str(err)
            raise ValueError(f"sentencepiece cannot train on these captions with --vocab-size "
                             f"{vocab_size}: {why}") from None
    return f"{out_prefix}.model"


def _check_training(out_prefix: str | Path, vocab_size: int, character_coverage: float,
                    model_type: str) -> list[Path]:
    """Refuse what sentencepiece would refuse only after reading every caption (or with an
    internal error), and a prefix whose files cannot be written; returns those files."""
    if not isinstance(vocab_size, int) or vocab_size <= EOS + 1:
        raise ValueError(f"--vocab-size {vocab_size}: must be > {EOS + 1} (ids 0-{EOS} are "
                         "pad, unk, bos, eos)")
    if not 0.98 <= character_coverage <= 1.0:  # sentencepiece's own bounds
        raise ValueError(f"--character-coverage {character_coverage}: must be in [0.98, 1]")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"--model-type {model_type}: not one of {', '.join(MODEL_TYPES)}")
    prefix = str(out_prefix)
    if os.path.basename(prefix) in ("", ".", ".."):
        raise ValueError(f"--out {prefix}: a prefix names files (PREFIX.model), not a folder")
    files = [Path(f"{prefix}.model"), Path(f"{prefix}.vocab")]
    for path in files:
        if path.is_dir():
            raise IsADirectoryError(f"--out {prefix}: {path} is a folder")
    check_out(files[0], f"--out {prefix}", folder=False)  # not under a file
    return files
