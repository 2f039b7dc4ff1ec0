"""DataConfig: where the shards are and how clips become frame batches.

A run trains on `sources`, a list of named SourceConfigs (videos or images, each with its
shards, share of the steps, batch size, frames, mask ratio); the loader of one source reads
a DataConfig whose `train` is that source's shards (longvivit/train/sources.py makes it).
`with_sources` turns the older `train` + `images` form into sources. Loaded through
longvivit.config.load_config like every other config; `validate()` names the offending key.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, List, Optional

from longvivit.config import ConfigError, check, choice, validated

# a source's name is its checkpoint part's and its TensorBoard tag's (train/loss_NAME); the
# trainer's own parts take these two
NAME = re.compile(r"^[A-Za-z0-9_-]+$")
RESERVED_NAMES = ("train", "rng")
# the old form's sources: data.train is the one named "video", data.images the one named "images"
OLD_VIDEO, OLD_IMAGES = "video", "images"


def shard_streams(shards: Any) -> list[tuple[str, Optional[float]]]:
    """[(path, weight)] of a source's `shards`: one folder or URL (weight None: read as it
    is), or a list of {path, weight} mixed sample-wise by streaming's Streams."""
    if isinstance(shards, str):
        return [(shards, None)]
    return [(s["path"], float(s.get("weight", 1.0))) for s in shards]


def check_shards_value(shards: Any, key: str) -> None:
    """`shards` is a string, or a non-empty list of {path, weight} with distinct non-empty
    paths and finite weights > 0."""
    if isinstance(shards, str):
        return
    check(isinstance(shards, list) and len(shards) > 0, key,
          f"{shards!r}: expected a shard folder or URL, or a list of {{path, weight}}")
    paths = []
    for j, item in enumerate(shards):
        check(isinstance(item, dict) and set(item) <= {"path", "weight"} and "path" in item, f"{key}.{j}",
              f"{item!r}: expected {{path: FOLDER_OR_URL, weight: NUMBER}}")
        check(isinstance(item["path"], str) and bool(item["path"]), f"{key}.{j}.path",
              f"{item['path']!r}: expected a shard folder or URL")
        weight = item.get("weight", 1.0)
        check(isinstance(weight, (int, float)) and not isinstance(weight, bool) and math.isfinite(weight)
              and weight > 0, f"{key}.{j}.weight", f"{weight!r} must be a number > 0")
        check(item["path"] not in paths, f"{key}.{j}.path", f"{item['path']} is listed twice")
        paths.append(item["path"])


@dataclass
class SourceConfig:
    """One named source of training data: on `weight` of the optimizer steps (normalised
    over the sources) a step trains on a batch of it. Unset values take data's
    (batch_size, frames) and the model's (mask_ratio); an image is one frame."""
    name: str = ""
    kind: str = choice("video", "image")
    weight: float = 1.0  # its share of the optimizer steps, before normalising
    # one shard folder or URL, or a list of {path, weight}: streams mixed sample-wise by
    # streaming (each weight its share of the source's samples)
    shards: Any = ""
    batch_size: Optional[int] = None  # per device; None: data.batch_size
    frames: Optional[int] = None  # video: frames per clip fed to the model; None: data.frames
    mask_ratio: Optional[float] = None  # of the tokens dropped before the encoder; None: model.video's
    # the key an error about these shards names: the old form's it came from (with_sources)
    shards_key: ClassVar[str] = ""

    def validate(self) -> None:
        check(bool(NAME.match(self.name)), "name", f"{self.name!r}: expected letters, digits, _ or -")
        check(self.name not in RESERVED_NAMES, "name", f"{self.name!r} names a part of every checkpoint "
              f"({', '.join(RESERVED_NAMES)}): choose another")
        check(math.isfinite(self.weight) and self.weight > 0, "weight", f"{self.weight} must be a number > 0")
        check_shards_value(self.shards, "shards")
        check(self.batch_size is None or self.batch_size > 0, "batch_size", f"{self.batch_size} must be > 0")
        check(self.frames is None or self.frames > 0, "frames", f"{self.frames} must be > 0")
        check(self.frames is None or self.kind == "video", "frames", "an image is one frame: leave it unset")
        check(self.mask_ratio is None or 0.0 <= self.mask_ratio < 1.0, "mask_ratio",
              f"{self.mask_ratio} is outside [0, 1)")


@dataclass
class ImageConfig:
    """The older form of an image source (with_sources converts it): image-text shards on a
    `proportion` of the steps, with their own batch size and mask ratio. Unset (None): not
    given; the defaults below apply where with_sources makes the source."""
    train: str = ""  # image shards
    proportion: Optional[float] = None  # of the optimizer steps (0: no image source)
    batch_size: Optional[int] = None  # per device; 32 where it makes the source
    mask_ratio: Optional[float] = None  # 0.5 where it makes the source
    DEFAULT_BATCH: ClassVar[int] = 32
    DEFAULT_MASK_RATIO: ClassVar[float] = 0.5

    def validate(self) -> None:
        p = self.proportion
        check(p is None or 0.0 <= p < 1.0, "proportion", f"{p} is outside [0, 1)")
        check(self.batch_size is None or self.batch_size > 0, "batch_size", f"{self.batch_size} must be > 0")
        check(self.mask_ratio is None or 0.0 <= self.mask_ratio < 1.0, "mask_ratio",
              f"{self.mask_ratio} is outside [0, 1)")

    def given(self) -> bool:
        return bool(self.train) or any(v is not None for v in (self.proportion, self.batch_size, self.mask_ratio))


@dataclass
class DataConfig:
    # shards: the MDS shards below; synthetic: random clips and captions of these shapes on
    # the device, for throughput work and the GPU suite (no shards, tokenizer or decoder)
    source: str = choice("shards", "synthetic")
    synthetic_samples: int = 1024  # samples per epoch of a synthetic split, over all ranks
    # what a run trains on (SourceConfig); empty: made from train + images (with_sources)
    sources: List[SourceConfig] = field(default_factory=list)
    # the training shards a loader reads (a shard folder or URL that streaming supports, or a
    # list of {path, weight}); in a run config, the older form of the source named "video"
    train: Any = ""
    val: str = ""
    tokenizer: str = ""  # sentencepiece .model (longvivit tokenizer)
    frames: int = 16  # frames per clip fed to the model (T); a video source's default
    # uniform: `frames` frames spread over the whole clip; fps: `frames` consecutive frames
    # at the shard FPS (a random window when training, the centred one otherwise)
    sampling: str = choice("uniform", "fps")
    image_size: int = 224  # square crop side fed to the model (H == W)
    batch_size: int = 8  # per device; a source's default
    text_length: int = 64  # tokens per caption, bos/eos and padding included
    flip: bool = True  # random horizontal flip when training
    num_workers: int = 2  # DataLoader processes reading shards (decoding is DALI's)
    prefetch: int = 2  # decoded batches kept ready ahead of the training step
    shuffle: bool = True  # training split only; val is never shuffled
    seed: int = 0  # shuffle order, caption draws, crops and flips (source i: seed + i)
    local_cache: str = ""  # local folder for a remote split ("" : a folder under /tmp)
    # streaming's num_canonical_nodes: the sample order is a function of it, not of the
    # number of physical nodes. 0: the physical nodes of the first run (streaming's default;
    # a resumed run keeps the value it started with). Fix it to get the same order on any
    # node count.
    canonical_nodes: int = 0
    images: ImageConfig = field(default_factory=ImageConfig)  # the older form of an image source

    def validate(self) -> None:
        check(self.synthetic_samples > 0, "synthetic_samples", f"{self.synthetic_samples} must be > 0")
        check(self.frames > 0, "frames", f"{self.frames} must be > 0")
        check(self.image_size > 0, "image_size", f"{self.image_size} must be > 0")
        check(self.batch_size > 0, "batch_size", f"{self.batch_size} must be > 0")
        check(self.text_length >= 3, "text_length", f"{self.text_length} must be >= 3 "
              "(bos, one token, eos)")
        check(self.num_workers >= 0, "num_workers", f"{self.num_workers} must be >= 0")
        check(self.prefetch >= 1, "prefetch", f"{self.prefetch} must be >= 1")
        check(self.canonical_nodes >= 0, "canonical_nodes", f"{self.canonical_nodes} must be >= 0")
        check(self.seed >= 0, "seed", f"{self.seed} must be >= 0 (streaming's shuffle seed)")
        check_shards_value(self.train, "train")
        self.validate_sources()

    def validate_sources(self) -> None:
        names = []
        for i, src in enumerate(self.sources):
            validated(src, f"sources.{i}.")
            check(src.name not in names, f"sources.{i}.name", f"{src.name!r} names two sources")
            names.append(src.name)
        remote = [p for src in self.sources for p, _ in shard_streams(src.shards) if "://" in p]
        for url in remote:  # each is cached in a folder named after its URL: once per run
            check(remote.count(url) == 1, "sources", f"{url} is read by two sources; list it once")


# ---------------------------------------------------------------------------- the older form

def with_sources(data: DataConfig) -> DataConfig:
    """`data` with `sources` made from the older form and that form cleared:

        data.train                    the shards of the source named "video" (a config
                                      without sources: that source, kind video, weight 1)
        data.images.proportion = p    the source named "images" (kind image) on p of the
                                      steps, the others' weights scaled to 1 - p (p = 0:
                                      no such source)
        data.images.train, .batch_size, .mask_ratio   that source's shards, batch_size, mask_ratio

    On a config that lists sources these keys address the sources of those names (what a
    one-source command line such as `data.train=PATH` needs). `data` itself when the
    older form is not used."""
    sources = list(data.sources)
    if not sources:
        sources = [SourceConfig(name=OLD_VIDEO, kind="video", shards=data.train)]
        sources[0].shards_key = "data.train"
    elif data.train:
        video = _named(sources, OLD_VIDEO, "data.train", "video")
        sources[sources.index(video)] = _given(video, "data.train", shards=data.train)
    elif not data.images.given():
        return data
    sources = _with_images(sources, data.images)
    return dataclasses.replace(data, sources=sources, train="", images=ImageConfig())


def _with_images(sources: list[SourceConfig], images: ImageConfig) -> list[SourceConfig]:
    """`sources` with data.images applied to the source named "images" (with_sources)."""
    p, present = images.proportion, any(s.name == OLD_IMAGES for s in sources)
    if p == 0:
        return [s for s in sources if s.name != OLD_IMAGES]
    if p is not None and not present:
        check(bool(images.train), "data.images.train", f"is empty but proportion={p}: image steps need image shards")
        sources = [*sources, SourceConfig(name=OLD_IMAGES, kind="image", batch_size=images.DEFAULT_BATCH,
                                          mask_ratio=images.DEFAULT_MASK_RATIO)]
    elif not present:  # no image steps: the other keys have nothing to apply to (as before)
        return sources
    target = _named(sources, OLD_IMAGES, "data.images", "image")
    changes = {k: getattr(images, k) for k in ("batch_size", "mask_ratio") if getattr(images, k) is not None}
    if images.train:
        changes["shards"] = images.train
    if p is not None:
        others = sum(s.weight for s in sources if s is not target)
        check(others > 0, "data.images.proportion", f"{p}: no other source shares the steps with the images")
        sources = [s if s is target else _given(s, "", weight=s.weight * (1 - p) / others) for s in sources]
        changes["weight"] = p
    return [_given(s, "data.images.train" if images.train else "", **changes) if s is target else s
            for s in sources]


def _named(sources: list[SourceConfig], name: str, key: str, kind: str) -> SourceConfig:
    found = next((s for s in sources if s.name == name), None)
    listed = ", ".join(s.name for s in sources)
    check(found is not None, key, f"this config lists data.sources ({listed}) and none is named {name!r}, "
          f"which {key} stands for: set the shards in data.sources")
    check(found.kind == kind, key, f"stands for the source {name!r}, which is of kind {found.kind}, not {kind}")
    return found


def _given(src: SourceConfig, shards_key: str, **changes) -> SourceConfig:
    """A copy of `src` with `changes`; errors about its shards name `shards_key` if given."""
    out = dataclasses.replace(src, **changes)
    out.shards_key = shards_key or src.shards_key
    return out


__all__ = ["DataConfig", "SourceConfig", "ImageConfig", "ConfigError", "shard_streams", "with_sources"]
