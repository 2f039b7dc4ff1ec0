"""build_loader: shards -> batches of decoded frames and tokenized captions on the device.

    loader = build_loader(cfg, "train", device, rank, world_size, training=True)
    for batch in loader:          # one epoch; iterate again for the next one
        batch["video"]            # uint8 (B, T, H, W, C) on `device` (the model normalises)
        batch["real_frames"]      # int64 (B,): frames before edge padding
        batch["text_ids"], batch["text_mask"]   # int64 / bool (B, L)
        batch["index"]            # int64 (B,): global sample index in the split
    state = loader.state_dict()   # mid-epoch; a fresh loader.load_state_dict(state) resumes

DataLoader workers read encoded clips and captions from the StreamingDataset; a background
thread in this process decodes them with DALI and keeps `cfg.prefetch` batches ready, so
decoding overlaps the training step. The position saved by state_dict counts only batches
handed to the caller, not the ones prefetched, so resuming neither repeats nor skips.

A clip that fails to decode is replaced by the last good clip (with its caption and index)
and counted in `loader.decode_failures`; a batch never fails for one bad sample. Only a
long unbroken run of failures, which means the shards or the decoder are unusable (for
example H.264 shards without a GPU), raises.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Iterator

import numpy as np
import torch
from streaming import StreamingDataLoader

from .config import DataConfig
from .decode import DecodeError, VideoDecoder, plan_clip
from .reader import clean_stale_shared_memory, launcher_env, open_split
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)
_END = object()


def build_loader(cfg: DataConfig, split: str, device: torch.device, rank: int,
                 world_size: int, training: bool, clean_shm: bool = True) -> "VideoLoader":
    """One rank's loader over `cfg.train` or `cfg.val`. training=False: no shuffle, the
    first caption, centred window and crop, no flip.

    clean_shm: first drop the shared memory a killed run left behind (streaming's
    per-dataset segments). With several ranks on a host, clean once on every rank behind a
    barrier before any loader exists and pass False: a rank cleaning while another rank
    creates its segments can remove them (what the trainer does)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    return VideoLoader(cfg, split, torch.device(device), rank, world_size, training, clean_shm)


def collate_samples(samples: list[dict]) -> dict[str, list]:
    """Column lists (encoded bytes cannot be stacked; DALI takes lists)."""
    return {key: [s[key] for s in samples] for key in samples[0]}


class VideoLoader:
    def __init__(self, cfg: DataConfig, split: str, device: torch.device, rank: int,
                 world_size: int, training: bool, clean_shm: bool = True):
        self.cfg, self.device, self.training, self.world_size = cfg, device, training, world_size
        if clean_shm:
            clean_stale_shared_memory()
        source = cfg.train if split == "train" else cfg.val
        with launcher_env(rank, world_size):
            self.dataset = open_split(source, cfg.batch_size, cfg.shuffle and training and
                                      split == "train", cfg.seed, cfg.local_cache,
                                      cfg.canonical_nodes)
        self.tokenizer = Tokenizer(cfg.tokenizer)
        self.decoder = VideoDecoder(cfg.batch_size, cfg.image_size, device)
        self.samples = StreamingDataLoader(
            self.dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
            collate_fn=collate_samples, drop_last=False,
            timeout=600 if cfg.num_workers else 0)  # a stuck worker raises, never hangs
        self.decode_failures = 0
        self._failure_streak = 0
        self._reserve: tuple | None = None  # the last good (video, real, caption, index)
        self._consumed = 0  # samples of this epoch handed out since __iter__ began
        self._producer: _Producer | None = None

    @property
    def samples_per_epoch(self) -> int:
        """Samples this rank yields per epoch (streaming pads ranks to equal counts)."""
        return len(self.dataset)

    # --------------------------------------------------------------- iteration

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self._stop_producer()
        self._consumed = 0
        self._producer = producer = _Producer(self._batches, self.cfg.prefetch)
        try:
            for batch, n_samples in producer:
                self._consumed += n_samples
                yield batch
        finally:
            self._stop_producer()

    def _batches(self) -> Iterator[tuple[dict, int]]:
        """(batch, samples read for it); runs in the producer thread."""
        skipped = 0
        for raw in self.samples:
            batch = self._decode_batch(raw)
            if batch is None:  # nothing in it decoded and nothing to replace it with
                skipped += len(raw["index"])
                continue
            yield batch, len(raw["index"]) + skipped
            skipped = 0

    def _decode_batch(self, raw: dict[str, list]) -> dict[str, torch.Tensor] | None:
        self._check_codec(raw)
        captions, plans = self._plan(raw)
        video, good, error = self.decoder.decode(raw["video"], plans)
        rows = {pos: (video[k], plans[pos].real_frames, captions[pos], raw["index"][pos])
                for k, pos in enumerate(good)}
        self._count_failures(raw["index"], good, error)
        # Prefer a clip from an earlier batch: a duplicate inside the batch would be a
        # second positive for the same caption in the contrastive loss.
        fallback = self._reserve if self._reserve is not None else \
            rows[good[0]] if good else None
        if good:
            self._reserve = tuple(x.clone() if torch.is_tensor(x) else x for x in rows[good[-1]])
        if fallback is None:
            return None
        return self._assemble([rows.get(pos, fallback) for pos in range(len(plans))])

    def _plan(self, raw: dict[str, list]) -> tuple[list[str], list]:
        """The caption and the frames/crop of each sample: drawn from (seed, epoch, index)
        when training, so that a resumed run draws what an uninterrupted one would."""
        epoch = self.dataset.next_epoch - 1  # streaming's epoch, set by its __iter__
        rngs = [np.random.default_rng([self.cfg.seed, epoch, i]) if self.training else None
                for i in raw["index"]]
        captions = [c[int(r.integers(len(c)))] if r is not None else c[0]
                    for c, r in zip(raw["captions"], rngs)]
        plans = [plan_clip(s, self.cfg.frames, self.cfg.sampling, r, self.cfg.flip)
                 for s, r in zip(_rows(raw, "num_frames", "width", "height"), rngs)]
        return captions, plans

    def _assemble(self, rows: list[tuple]) -> dict[str, torch.Tensor]:
        video, real, captions, index = zip(*rows)
        ids, mask = self.tokenizer.encode(captions, self.cfg.text_length)
        to = dict(device=self.device, non_blocking=True)
        return {"video": torch.stack(video), "real_frames": torch.tensor(real).to(**to),
                "text_ids": ids.to(**to), "text_mask": mask.to(**to),
                "index": torch.tensor(index, dtype=torch.int64).to(**to)}

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
        if state["sample_in_epoch"] >= self.samples_per_epoch * self.world_size:
            # The epoch is used up: resume at the start of the next one, not with an
            # empty remainder of this one.
            state.update(epoch=state["epoch"] + 1, sample_in_epoch=0)
        return {"streaming": state, "decode_failures": self.decode_failures}

    def load_state_dict(self, state: dict) -> None:
        """Takes effect at the next iteration: call before iterating."""
        self.dataset.load_state_dict(state["streaming"])
        self.decode_failures = int(state.get("decode_failures", 0))

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
