"""The sources a run trains on (data.sources) and which one each optimizer step takes.

    sources = Sources(cfg)                   # one Source per data.sources entry, in order
    sources.open(lambda data: open_loader(...))   # each source's loader from its DataConfig
    source = sources.at(step)                # the Source optimizer step `step` (from 1) trains on
    sources.parts()                          # {source name: its loader}: checkpoint parts

A step takes all its micro-batches from one source. Which one is a function of the step
and the weights alone (Schedule), so every rank picks the same and a resumed run picks what
an uninterrupted one would. This is the one module that tells one kind of source from
another: what an image source's loader reads (one frame a clip) and what an image costs.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from longvivit.data.config import DataConfig, ImageConfig, SourceConfig
from longvivit.model import flops_per_sample
from longvivit.model.config import ModelConfig

if TYPE_CHECKING:
    from longvivit.data.load import Loader
    from longvivit.train.config import RunConfig

# What checkpoints written before data.sources named a source's loader part (their
# run_config.yaml has data.train and no data.sources): the video loader was "loader"; the
# image loader was "images", the name its source takes now.
OLD_PART_NAMES = {"video": "loader"}


class Schedule:
    """Which source each optimizer step trains on: source i on a share w_i of the steps
    (weights normalised), as evenly as possible. After any s steps (from step 1) source i
    has trained on floor(s * w_i) or ceil(s * w_i) of them, at every s, for any number of
    sources.

    The rule is Tijdeman's for the chairman assignment problem (R. Tijdeman, Discrete
    Mathematics 32 (1980) 323-330), which keeps |count_i(s) - s * w_i| <= 1 - 1/(2n - 2)
    for n sources, hence within floor..ceil: at step s, with deficits d_i = s * w_i -
    count_i(s - 1), among the sources with d_i >= 1/(2n - 2) take the one whose deficit
    would reach 1 - 1/(2n - 2) soonest, (count_i + 1 - 1/(2n - 2)) / w_i smallest, ties to
    the earlier source. With two sources it is "the largest deficit", which rounds s * w
    to the nearest count; with five or more the largest deficit can fall outside
    floor..ceil (weights 9, 9, 1, 1, 1: the second source has 5 of the first 14 steps,
    floor(14 * 9/21) = 6). Exact arithmetic (each weight as the decimal the config
    writes), so ties break the same on every machine."""

    def __init__(self, weights: Sequence[float]):
        exact = [Fraction(repr(float(w))) for w in weights]
        shares = [w / sum(exact) for w in exact]
        self.scale = math.lcm(*(s.denominator for s in shares))  # D: share_i = a_i / D
        self.a = [int(s * self.scale) for s in shares]
        self.k = 2 * len(self.a) - 2  # the threshold 1/(2n - 2) is 1/k
        self.step, self.counts, self.last = 0, [0] * len(self.a), 0

    def pick(self, step: int) -> int:
        """The source (its position) of optimizer step `step`, counted from 1."""
        if step == self.step:
            return self.last
        if step < self.step:  # a step of the past (a resume): replay from the start
            self.step, self.counts = 0, [0] * len(self.a)
        while self.step < step:
            self.last = self._advance()
        return self.last

    def _advance(self) -> int:
        s, k, scale = self.step + 1, self.k, self.scale
        best = 0  # one source: always it
        if k:
            # d_i >= 1/k, in units of 1/(k D): k (s a_i - c_i D) >= D (a non-empty set: the d_i sum to 1)
            ready = [i for i, (a, c) in enumerate(zip(self.a, self.counts)) if k * (s * a - c * scale) >= scale]
            # when d_i would reach 1 - 1/k: (c_i + 1 - 1/k) / w_i, D / k times (k (c_i + 1) - 1) / a_i
            best = min(ready, key=lambda i: Fraction(k * (self.counts[i] + 1) - 1, self.a[i]))
        self.step = s
        self.counts[best] += 1
        return best


@dataclass
class Source:
    """One source of a run: its loader (the checkpoint part named after it), the mask ratio
    of its batches (None: the model's) and what a sample costs (throughput and MFU)."""
    name: str
    data: DataConfig  # what its loader reads: its shards as `train`, its batch size and frames
    mask_ratio: float | None
    tokens: int  # visible video tokens per sample
    flops: float  # model FLOPs per sample
    loader: Loader | None = None

    @property
    def batch_size(self) -> int:
        return self.data.batch_size


def source_data(data: DataConfig, position: int, src: SourceConfig) -> DataConfig:
    """What the loader of the source at `position` in data.sources reads: data's settings
    with the source's shards as `train`, its batch size and frames (an image source: one
    frame, nothing to sample in time), and data.seed + position as its seed (sources draw
    different orders, crops and synthetic batches; the first one draws as a one-source run)."""
    image = src.kind == "image"
    return dataclasses.replace(data, sources=[], images=ImageConfig(), train=src.shards,
                               batch_size=src.batch_size or data.batch_size,
                               frames=1 if image else src.frames or data.frames,
                               sampling="uniform" if image else data.sampling, seed=data.seed + position)


def source_model(model: ModelConfig, src: SourceConfig, data: DataConfig) -> ModelConfig:
    """The model as a sample of `src` meets it: a clip of the source's frames, or an image,
    which fills one tubelet slice."""
    frames = model.video.tubelet[0] if src.kind == "image" else src.frames or data.frames
    return dataclasses.replace(model, video=dataclasses.replace(model.video, frames=frames))


def make_source(cfg: RunConfig, position: int, src: SourceConfig) -> Source:
    model = source_model(cfg.model, src, cfg.data)
    return Source(src.name, source_data(cfg.data, position, src), src.mask_ratio,
                  model.video.visible_tokens(src.mask_ratio), flops_per_sample(model, src.mask_ratio))


class Sources:
    """The run's sources in data.sources order and the schedule over them."""

    def __init__(self, cfg: RunConfig):
        self.sources = [make_source(cfg, i, src) for i, src in enumerate(cfg.data.sources)]
        self.schedule = Schedule([src.weight for src in cfg.data.sources])

    def __iter__(self) -> Iterator[Source]:
        return iter(self.sources)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, name: str) -> Source:
        return next(s for s in self.sources if s.name == name)

    def at(self, step: int) -> Source:
        """The source optimizer step `step` (counted from 1) trains on."""
        return self.sources[self.schedule.pick(step)]

    def open(self, open_loader: Callable[[DataConfig], Loader]) -> None:
        for source in self.sources:
            source.loader = open_loader(source.data)

    def parts(self, saved_names: dict[str, str] | None = None) -> dict[str, Loader]:
        """Each source's loader by its checkpoint part's name: the source's, or as
        `saved_names` maps it (the names a checkpoint being loaded used: saved_part_names)."""
        names = saved_names or {}
        return {names.get(s.name, s.name): s.loader for s in self.sources}

    @property
    def decode_failures(self) -> int:
        return sum(s.loader.decode_failures for s in self.sources if s.loader is not None)

    def close(self) -> None:
        for source in self.sources:
            if source.loader is not None:
                source.loader.close()


def saved_part_names(stored_config: dict) -> dict[str, str]:
    """{source name: its loader's part name} in a checkpoint whose run_config.yaml is
    `stored_config`: OLD_PART_NAMES for one written before data.sources."""
    return {} if (stored_config.get("data") or {}).get("sources") else dict(OLD_PART_NAMES)


__all__ = ["Schedule", "Source", "Sources", "source_data", "saved_part_names"]
