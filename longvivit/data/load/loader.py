"""build_loader: shards -> batches of decoded frames and tokenized captions on the device.

    loader = build_loader(cfg, "train", device, rank, world_size, training=True)
    for batch in loader:          # one epoch; iterate again for the next one
        batch["video"]            # uint8 (B, T, H, W, C) on `device` (the model normalises)
        batch["real_frames"]      # int64 (B,) on the CPU: frames before edge padding
        batch["text_ids"], batch["text_mask"]   # int64 / bool (B, L)
        batch["index"]            # int64 (B,) on the CPU: global sample index in the split
        batch["captions"]         # training=False only: B lists of every caption (str) of the clip
    state = loader.state_dict()   # mid-epoch; a fresh loader.load_state_dict(state) resumes

DataLoader workers read encoded clips and captions from the StreamingDataset; a background
thread in this process decodes them with DALI and keeps `cfg.prefetch` batches ready, so
decoding overlaps the training step. The position saved by state_dict counts only batches
handed to the caller, not the ones prefetched, so resuming neither repeats nor skips.

A clip that fails to decode is replaced by a good clip (with its caption and index) of
another batch of the same epoch on this rank: the last one before it, or, when the epoch
has none yet, the first one after it (read ahead). Never by a clip of its own batch, which
would give that caption a second positive in the contrastive loss, nor one of another
epoch, which another rank may hold in the same step. The replacements are a function of
the epoch's sample order alone, and state_dict names the clips held for them (they are
decoded again when needed), so a resumed run replaces exactly as an uninterrupted one. Failures are counted in `loader.decode_failures`;
a batch never fails for one bad sample. Only a long unbroken run of failures, which means
the shards or the decoder are unusable (for example H.264 shards without a GPU), raises;
a batch with nothing to replace its failures with (nothing else in the epoch decodes) is
skipped.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from typing import Iterator, NamedTuple

import numpy as np
import torch
from streaming import StreamingDataLoader

from longvivit.data.config import DataConfig
from longvivit.data.load.decode import DecodeError, VideoDecoder, plan_clip
from longvivit.data.load.reader import clean_stale_shared_memory, launcher_env, open_split
from longvivit.data.load.tokenizer import ClipTokenizer, Tokenizer

log = logging.getLogger(__name__)
_END = object()


def build_loader(cfg: DataConfig, split: str, device: torch.device, rank: int,
                 world_size: int, training: bool, clean_shm: bool = True,
                 tokenizer: Tokenizer | ClipTokenizer | None = None, replication: int = 1) -> "VideoLoader":
    """One rank's loader over `cfg.train` or `cfg.val`. training=False: no shuffle, the
    first caption, centred window and crop, no flip.

    clean_shm: first drop the shared memory a killed run left behind (streaming's
    per-dataset segments). With several ranks on a host, clean once on every rank behind a
    barrier before any loader exists and pass False: a rank cleaning while another rank
    creates its segments can remove them (what the trainer does).
    tokenizer: the one the model reads (tokenizer.make_tokenizer of model.text.tokenizer);
    None: the sentencepiece model at cfg.tokenizer.
    replication: how many consecutive ranks get the same samples (streaming's `replication`:
    a sequence group, parallel.sequence); positions then count the world_size / replication
    distinct rank groups."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    return VideoLoader(cfg, split, torch.device(device), rank, world_size, training, clean_shm, tokenizer,
                       replication)


def collate_samples(samples: list[dict]) -> dict[str, list]:
    """Column lists (encoded bytes cannot be stacked; DALI takes lists)."""
    return {key: [s[key] for s in samples] for key in samples[0]}


class VideoLoader:
    def __init__(self, cfg: DataConfig, split: str, device: torch.device, rank: int,
                 world_size: int, training: bool, clean_shm: bool = True,
                 tokenizer: Tokenizer | ClipTokenizer | None = None, replication: int = 1):
        # world_size: the rank groups that read distinct samples (each of `replication` ranks)
        self.cfg, self.device, self.training, self.world_size = cfg, device, training, world_size // replication
        if clean_shm:
            clean_stale_shared_memory()
        source = cfg.train if split == "train" else cfg.val
        with launcher_env(rank, world_size):
            self.dataset = open_split(source, cfg.batch_size, cfg.shuffle and training and
                                      split == "train", cfg.seed, cfg.local_cache,
                                      cfg.canonical_nodes, replication)
        self.tokenizer = tokenizer or Tokenizer(cfg.tokenizer)  # the model's (make_tokenizer)
        self.decoder = VideoDecoder(cfg.batch_size, cfg.image_size, device)
        self.samples = StreamingDataLoader(
            self.dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
            collate_fn=collate_samples, drop_last=False,
            timeout=600 if cfg.num_workers else 0)  # a stuck worker raises, never hangs
        self.decode_failures = 0
        self._failure_streak = 0
        self._consumed = 0  # samples of this epoch handed out since __iter__ began
        self._handed_reserve: list = []  # [[epoch, index], ...] of the fallback clips after them
        self._restored_reserve: list = []  # the same, from load_state_dict
        self._producer: _Producer | None = None

    @property
    def samples_per_epoch(self) -> int:
        """Samples this rank yields per epoch (streaming pads ranks to equal counts)."""
        return len(self.dataset)

    # --------------------------------------------------------------- iteration

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self._stop_producer()
        self._consumed = 0
        self._handed_reserve = self._restored_reserve
        self._producer = producer = _Producer(self._batches, self.cfg.prefetch)
        try:
            for batch, n_samples, reserve in producer:
                self._consumed += n_samples
                self._handed_reserve = reserve
                yield batch
        finally:
            self._stop_producer()

    def _batches(self) -> Iterator[tuple[dict, int, list]]:
        """(batch, samples read for it, [[epoch, index], ...] of the fallback clips after
        it); runs in the producer thread."""
        restored, self._restored_reserve = self._restored_reserve, []
        # [epoch, index] of the last good clips of this epoch, oldest first: what a failed
        # sample is replaced by. Keys only: a replacement is decoded again when one is needed
        # (rare), so a batch without failures copies nothing.
        reserve: deque[list] = deque(maxlen=self.cfg.batch_size)
        decoded = _ReadAhead(self._decoded_batches())
        skipped = 0
        for rows, n_read in decoded:
            if restored:  # resuming mid-epoch: the clips the interrupted run held
                reserve.extend(key for key in restored if key[0] == self._epoch())
                restored = []
            good = [r for r in rows if r is not None]
            if len(good) < len(rows):
                fallbacks = self._fallbacks(rows, reserve, decoded)
                if fallbacks is None:  # not enough else in this epoch decodes
                    skipped += n_read
                    continue
                rows = [r if r is not None else fallbacks.pop(0) for r in rows]
            reserve.extend([self._epoch(), r.index] for r in good)
            yield self._assemble(rows), n_read + skipped, list(reserve)
            skipped = 0

    def _decoded_batches(self) -> Iterator[tuple[list, int]]:
        """([a _Row per sample, None where it failed to decode], samples read) per batch of
        this epoch."""
        for raw in self.samples:
            yield self._decode_rows(raw), len(raw["index"])

    def _decode_rows(self, raw: dict[str, list], count: bool = True) -> list:
        self._check_codec(raw)
        captions, plans = self._plan(raw)
        video, good, error = self.decoder.decode(raw["video"], plans)
        if count:
            self._count_failures(raw["index"], good, error)
        rows: list = [None] * len(plans)
        for k, pos in enumerate(good):
            rows[pos] = _Row(video[k], plans[pos].real_frames, captions[pos], raw["index"][pos],
                             list(raw["captions"][pos]))
        return rows

    def _fallbacks(self, rows: list, reserve: deque, decoded: _ReadAhead) -> list | None:
        """One good clip for each failed sample of `rows`, none of them in `rows` nor twice:
        the last good clips before them in this epoch, newest first, then the first good
        ones after them. None if the epoch has too few."""
        taken = {r.index for r in rows if r is not None}
        wanted, picked = rows.count(None), []

        def take(row: _Row | None) -> None:
            if row is not None and len(picked) < wanted:
                picked.append(row)
                taken.add(row.index)

        for _, index in reversed(reserve):
            if len(picked) < wanted and index not in taken:
                take(self._decode_sample(index))
        later = decoded.ahead()
        while len(picked) < wanted and (item := next(later, None)) is not None:
            for row in item[0]:
                take(row if row is not None and row.index not in taken else None)
        return picked if len(picked) == wanted else None

    def _decode_sample(self, index: int) -> _Row | None:
        """Sample `index` of this split decoded as in this epoch (its plan and caption drawn
        from (seed, epoch, index)), or None if it does not decode."""
        return self._decode_rows(collate_samples([self.dataset[index]]), count=False)[0]

    def _epoch(self) -> int:
        return self.dataset.next_epoch - 1  # streaming's epoch, set by its __iter__

    def _plan(self, raw: dict[str, list]) -> tuple[list[str], list]:
        """The caption and the frames/crop of each sample: drawn from (seed, epoch, index)
        when training, so that a resumed run draws what an uninterrupted one would."""
        epoch = self._epoch()
        rngs = [np.random.default_rng([self.cfg.seed, epoch, i]) if self.training else None
                for i in raw["index"]]
        captions = [c[int(r.integers(len(c)))] if r is not None else c[0]
                    for c, r in zip(raw["captions"], rngs)]
        plans = [plan_clip(s, self.cfg.frames, self.cfg.sampling, r, self.cfg.flip)
                 for s, r in zip(_rows(raw, "num_frames", "width", "height", "codec"), rngs)]
        return captions, plans

    def _assemble(self, rows: list[_Row]) -> dict:
        video, real, captions, index, all_captions = zip(*rows)
        ids, mask = self.tokenizer.encode(captions, self.cfg.text_length)
        to = dict(device=self.device, non_blocking=True)
        # real_frames and index stay on the CPU: the model reads which clips are whole on
        # the host (a shape), the trainer logs the indices; on a GPU either would be a sync
        batch = {"video": torch.stack(video), "real_frames": torch.tensor(real, dtype=torch.int64),
                 "text_ids": ids.to(**to), "text_mask": mask.to(**to),
                 "index": torch.tensor(index, dtype=torch.int64)}
        if not self.training:  # evaluation queries with every caption (longvivit/eval/evaluate.py)
            batch["captions"] = list(all_captions)
        return batch

    def _count_failures(self, indices: list[int], good: list[int], error: str) -> None:
        decoded = set(good)
        bad = [indices[p] for p in range(len(indices)) if p not in decoded]
        if not bad:
            self._failure_streak = 0
            return
        self.decode_failures += len(bad)
        self._failure_streak = 0 if good else self._failure_streak + len(bad)
        log.warning("replaced %d sample(s) that failed to decode (indices %s): %s",
                    len(bad), bad, error)
        if self._failure_streak > max(32, 4 * self.cfg.batch_size):
            raise DecodeError(f"{self._failure_streak} samples in a row failed to decode "
                              f"(last error: {error}): the shards or the decoder are unusable")

    def _check_codec(self, raw: dict[str, list]) -> None:
        if self.decoder.dali_device == "cpu" and "h264" in raw.get("codec", ()):
            raise DecodeError("these shards hold H.264, which DALI decodes only on a GPU; "
                              "rewrite them with `longvivit shards --codec vp9` for CPU runs")

    # --------------------------------------------------------------- resume

    def state_dict(self) -> dict:
        """The position after the last batch handed out (not the prefetched ones)."""
        state = self.dataset.state_dict(self._consumed * self.world_size, from_beginning=False)
        reserve = self._handed_reserve
        if state["sample_in_epoch"] >= self.samples_per_epoch * self.world_size:
            # The epoch is used up: resume at the start of the next one, not with an
            # empty remainder of this one.
            state.update(epoch=state["epoch"] + 1, sample_in_epoch=0)
            reserve = []
        return {"streaming": state, "decode_failures": self.decode_failures, "reserve": reserve}

    def load_state_dict(self, state: dict) -> None:
        """Takes effect at the next iteration: call before iterating."""
        self.dataset.load_state_dict(state["streaming"])
        self.decode_failures = int(state.get("decode_failures", 0))
        self._restored_reserve = list(state.get("reserve") or [])

    # --------------------------------------------------------------- teardown

    def _stop_producer(self) -> None:
        if getattr(self, "_producer", None) is not None:  # also from a half-built __del__
            self._producer.stop()
            self._producer = None

    def close(self) -> None:
        """Stop prefetching and the DataLoader workers (also done when garbage-collected)."""
        self._stop_producer()

    def __del__(self) -> None:
        self._stop_producer()


def _rows(columns: dict[str, list], *keys: str) -> list[dict]:
    return [dict(zip(keys, values)) for values in zip(*(columns[k] for k in keys))]


class _Row(NamedTuple):
    """One decoded sample, as _assemble stacks it."""
    video: torch.Tensor  # (T, H, W, C) uint8
    real_frames: int
    caption: str  # the one tokenized into text_ids
    index: int
    captions: list[str]  # all of the sample's, in stored order (eval batches carry them)


class _ReadAhead:
    """Iterates `items`; `ahead()` reads the items after the current one early, keeping
    them for the iteration, so they are still yielded once each and in order."""

    def __init__(self, items: Iterator):
        self._items, self._buffer = items, deque()

    def __iter__(self):
        return self

    def __next__(self):
        return self._buffer.popleft() if self._buffer else next(self._items)

    def ahead(self) -> Iterator:
        yield from list(self._buffer)
        for item in self._items:
            self._buffer.append(item)
            yield item


class _Producer:
    """Runs a generator in a daemon thread, `depth` items ahead of the consumer; an
    exception in the thread is re-raised in the consumer."""

    def __init__(self, make: callable, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(make,), daemon=True,
                                        name="longvivit-decode")
        self._thread.start()

    def _run(self, make) -> None:
        try:
            for item in make():
                if not self._put(item):
                    return  # stopped: leaving the loop closes the DataLoader iterator
            self._put(_END)
        except BaseException as err:  # noqa: BLE001 -- handed to the consumer
            self._put(err)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
