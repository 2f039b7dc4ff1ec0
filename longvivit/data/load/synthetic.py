"""Random clips and captions of the configured shapes: a data source for throughput work.

    data.source=synthetic     (the default is `shards`)

Like torchtitan's and Megatron's benchmarking modes: no shards, no tokenizer, no decoding,
so a step measures the model and the engine alone and runs where the data stack is absent
(a GPU node without DALI, the GPU acceptance suite). Not to be confused with `longvivit
synth`, which renders the synthetic benchmark's real videos.

Each batch is a function of (seed, split, epoch, rank, batch number), drawn on `device`:
video uint8 (B, T, H, W, C), captions of random length in [3, text_length]: random ids
between bos and eos, padded with 0, laid out as the tokenizer does. sentencepiece: ids
0-3 are pad/unk/bos/eos (tokenizer.py), text ids in [4, vocab_size). open_clip: sot and
eot are the two highest ids (the CLIP text tower pools at eot), text ids in
[1, vocab_size - 2).
An epoch holds `synthetic_samples` samples over all ranks; state_dict/load_state_dict
resume mid-epoch exactly as the shard loader does.

Sample indices: the epoch's samples are dealt round-robin over the ranks from `base`
(0 at an epoch's start): rank r's i-th sample is base + i * world_size + r. A run resumed
on another world size (rescale_state) continues the epoch from the global position the
saved ranks reached, so across the change no index is repeated or skipped; the epoch then
ends with the last whole batch of every rank that fits in it (as without a change).
"""
from __future__ import annotations

from typing import Iterator

import torch

from longvivit.data.config import DataConfig
from longvivit.data.load.tokenizer import BOS, EOS, PAD

_SPLIT_KEY = {"train": 0, "val": 1}


class SyntheticBatches:
    def __init__(self, cfg: DataConfig, split: str, device: torch.device, rank: int,
                 world_size: int, training: bool, vocab_size: int, tokenizer: str = "sentencepiece"):
        if vocab_size <= EOS + 1:
            raise ValueError(f"synthetic captions need vocab_size > {EOS + 1}, got {vocab_size}")
        self.cfg, self.split, self.device = cfg, split, torch.device(device)
        self.rank, self.world_size = rank, world_size
        if tokenizer == "open_clip":
            self.bos, self.eos, self.text_ids = vocab_size - 2, vocab_size - 1, (1, vocab_size - 2)
        else:
            self.bos, self.eos, self.text_ids = BOS, EOS, (EOS + 1, vocab_size)
        self.decode_failures = 0  # nothing to decode; the trainer logs it like the shard loader's
        self.epoch, self._consumed, self._start = 0, 0, 0
        self._base = 0  # global position of this rank layout's first sample in the epoch

    @property
    def samples_per_epoch(self) -> int:
        """Samples this rank yields per epoch: whole batches, at least one (counted from
        `base`: after a resume on another world size, what is left of the epoch)."""
        B, W = self.cfg.batch_size, self.world_size
        whole = max(1, self.cfg.synthetic_samples // W // B) * B * W  # the epoch over all ranks
        return (whole - self._base) // (W * B) * B if self._base else whole // W

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        start, self._start = self._start, 0
        self._consumed = start
        B = self.cfg.batch_size
        for first in range(start, self.samples_per_epoch, B):
            batch = self._batch(first // B)
            self._consumed = first + B
            yield batch
        self.epoch += 1
        self._consumed, self._base = 0, 0

    def _batch(self, number: int) -> dict[str, torch.Tensor]:
        c, B = self.cfg, self.cfg.batch_size
        key = 0
        # a rescaled layout (base > 0) draws other batches than the base-0 one of the same numbers
        layout = (self.rank,) if not self._base else (self.rank, self.world_size, self._base)
        for part in (c.seed, _SPLIT_KEY[self.split], self.epoch, *layout, number):
            key = (key * 1_000_003 + part) % (2**63 - 1)
        g = torch.Generator(device=self.device).manual_seed(key)
        draw = dict(generator=g, device=self.device)
        video = torch.randint(0, 256, (B, c.frames, c.image_size, c.image_size, 3), dtype=torch.uint8, **draw)
        lengths = torch.randint(3, c.text_length + 1, (B, 1), **draw)  # bos + text + eos
        position = torch.arange(c.text_length, device=self.device)
        ids = torch.randint(*self.text_ids, (B, c.text_length), **draw)
        ids[:, 0] = self.bos
        ids = torch.where(position == lengths - 1, self.eos, ids)
        mask = position < lengths
        ids = torch.where(mask, ids, PAD)
        first = number * B
        index = self._base + torch.arange(first, first + B) * self.world_size + self.rank
        # real_frames and index stay on the CPU, as the shard loader's: the host reads both
        # (which clips are whole decides shapes; the trainer logs the indices), no GPU sync
        return {"video": video, "real_frames": torch.full((B,), c.frames), "text_ids": ids, "text_mask": mask,
                "index": index}

    def state_dict(self) -> dict:
        """The position after the last batch handed out; a used-up epoch resumes at the next."""
        if self._consumed >= self.samples_per_epoch:  # last batch handed out, epoch not yet closed
            return {"epoch": self.epoch + 1, "sample_in_epoch": 0, "base": 0}
        return {"epoch": self.epoch, "sample_in_epoch": self._consumed, "base": self._base}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self._start = int(state["epoch"]), int(state["sample_in_epoch"])
        self._base = int(state.get("base", 0))

    @staticmethod
    def rescale_state(states: list[dict], rank: int, world_size: int) -> dict:
        """Rank `rank` of `world_size`'s state from the states of the len(states) ranks that
        saved: every rank hands out the same number of samples per step, so they agree on
        epoch, base and sample_in_epoch, and the epoch's global position is base +
        sample_in_epoch * len(states). The new layout deals the rest of the epoch from there."""
        first = states[0]
        if any(s != first for s in states):
            raise ValueError(f"synthetic loader states differ between the saved ranks: {states}")
        position = int(first.get("base", 0)) + int(first["sample_in_epoch"]) * len(states)
        return {"epoch": int(first["epoch"]), "sample_in_epoch": 0, "base": position}

    def close(self) -> None:
        pass
