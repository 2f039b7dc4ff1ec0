"""DataConfig: where the shards are and how clips become frame batches.

Loaded through longvivit.config.load_config like every other config; `validate()`
names the offending key.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from longvivit.config import check, choice


@dataclass
class ImageConfig:
    """Image-text pairs beside the videos (the paper's stage 1; InternVideo2 mixes them the
    same way): shards written by `longvivit shards --still-images` (each image a JPEG, decoded
    by DALI's image decoder; shards of one-frame clips, as stills were written before, are
    read too), read like the videos' (resolution, text length, tokenizer, flip, workers: data's),
    one batch of images in place of a batch of videos on a `proportion` of the optimizer
    steps: step s (from 1) is an image step when floor(s * p) > floor((s - 1) * p), so any
    N steps hold floor(N * p) or one fewer or more of them, the same on every rank and after
    a resume. Each source keeps its own batch size and mask ratio; its loss is logged on its
    own (loss_image, loss_video)."""
    train: str = ""  # image shards ("" : no images)
    proportion: float = 0.0  # of the optimizer steps
    batch_size: int = 32  # per device
    mask_ratio: float = 0.5  # of an image's patch tokens dropped before the encoder

    def validate(self) -> None:
        check(0.0 <= self.proportion < 1.0, "proportion", f"{self.proportion} is outside [0, 1)")
        check(self.proportion == 0.0 or bool(self.train), "train",
              f"is empty but proportion={self.proportion}: image steps need image shards")
        check(self.batch_size > 0, "batch_size", f"{self.batch_size} must be > 0")
        check(0.0 <= self.mask_ratio < 1.0, "mask_ratio", f"{self.mask_ratio} is outside [0, 1)")

    def is_image_step(self, step: int) -> bool:
        """Whether optimizer step `step` (counted from 1) trains on images."""
        return self.train != "" and int(step * self.proportion) > int((step - 1) * self.proportion)


@dataclass
class DataConfig:
    # shards: the MDS shards below; synthetic: random clips and captions of these shapes on
    # the device, for throughput work and the GPU suite (no shards, tokenizer or decoder)
    source: str = choice("shards", "synthetic")
    synthetic_samples: int = 1024  # samples per epoch of a synthetic split, over all ranks
    train: str = ""  # shard folder or a remote URL that streaming supports (s3://, gs://, ...)
    val: str = ""
    tokenizer: str = ""  # sentencepiece .model (longvivit tokenizer)
    frames: int = 16  # frames per clip fed to the model (T)
    # uniform: `frames` frames spread over the whole clip; fps: `frames` consecutive frames
    # at the shard FPS (a random window when training, the centred one otherwise)
    sampling: str = choice("uniform", "fps")
    image_size: int = 224  # square crop side fed to the model (H == W)
    batch_size: int = 8  # per device
    text_length: int = 64  # tokens per caption, bos/eos and padding included
    flip: bool = True  # random horizontal flip when training
    num_workers: int = 2  # DataLoader processes reading shards (decoding is DALI's)
    prefetch: int = 2  # decoded batches kept ready ahead of the training step
    shuffle: bool = True  # training split only; val is never shuffled
    seed: int = 0  # shuffle order, caption draws, crops and flips
    local_cache: str = ""  # local folder for a remote split ("" : a folder under /tmp)
    # streaming's num_canonical_nodes: the sample order is a function of it, not of the
    # number of physical nodes. 0: the physical nodes of the first run (streaming's default;
    # a resumed run keeps the value it started with). Fix it to get the same order on any
    # node count.
    canonical_nodes: int = 0
    images: ImageConfig = field(default_factory=ImageConfig)

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
