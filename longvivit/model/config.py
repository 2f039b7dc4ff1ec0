"""The model's configs: the video tower, the text tower and the dual encoder around them.

Loaded through longvivit.config.load_config like every other config; `choice` fields are
checked there, everything else in each ``validate()``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from longvivit.config import check, choice
from longvivit.model.masking import visible_count

OPEN_CLIP_VOCAB = 49408  # open_clip's SimpleTokenizer: 49,152 BPE merges + bytes + sot/eot


def _check_dims(cfg) -> None:
    """A tower's width, depth and heads are positive (checked before width % heads, so
    heads=0 or depth=-1 is reported as itself) and its MLP ratio is positive."""
    for key in ("width", "depth", "heads"):
        check(getattr(cfg, key) > 0, key, f"{getattr(cfg, key)} must be > 0")
    check(cfg.mlp_ratio > 0, "mlp_ratio", f"{cfg.mlp_ratio} must be > 0")


@dataclass
class VideoConfig:
    """ViViT video tower. Input video is (B, T, H, W, C), T == frames, H == W == image_size."""

    frames: int = 16
    image_size: int = 224
    tubelet: List[int] = field(default_factory=lambda: [2, 16, 16])  # (t, p, p)
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    attention: str = choice("joint", "factorized")
    pool: str = choice("mean", "cls")  # mean over visible patch tokens (the paper's) | cls
    cls_token: bool = False  # a CLS token in the sequence (needed by pool=cls; kept by open_clip inits)
    ln_pre: bool = True  # LayerNorm on the tokens before the first block (CLIP ViTs have one)
    activation: str = choice("gelu", "quick_gelu")  # OpenAI CLIP weights use quick_gelu
    mask_ratio: float = 0.0  # fraction of tubelet tokens dropped before the encoder (training)
    mask_scheme: str = choice("random", "tube")
    # padded batches (clips of different lengths), joint attention: packed puts each clip's tokens of
    # content into one sequence, attention per clip without a mask (torch's varlen kernel on CUDA,
    # a loop of SDPA calls elsewhere); masked pads the rows to the longest clip with a key mask;
    # auto: packed on CUDA, masked elsewhere. The same numbers either way (tests/test_model_packed.py).
    # (Not on/off: YAML and the command line would read those as booleans.)
    packing: str = choice("auto", "packed", "masked")
    grad_checkpointing: int = 0  # number of blocks (from the first) with activation checkpointing
    trainable_last_k: Optional[int] = None  # None: all blocks train; k: only the last k blocks
    train_stem: bool = True  # with trainable_last_k: tubelet/position embeddings keep training.
    # False freezes them too, so nothing below the last k blocks needs a backward pass
    # (the paper's extra memory cut for the short-to-long stage).

    def validate(self) -> None:
        _check_dims(self)
        t, p, p2 = (self.tubelet + [0, 0, 0])[:3]
        check(len(self.tubelet) == 3 and p == p2 and t > 0 and p > 0, "tubelet",
              f"expected [t, p, p] with positive ints, got {self.tubelet}")
        check(self.frames > 0 and self.frames % t == 0, "frames",
              f"{self.frames} is not a positive multiple of the tubelet's {t} frames")
        check(self.image_size > 0 and self.image_size % p == 0, "image_size",
              f"{self.image_size} is not a positive multiple of the patch size {p}")
        check(self.width % self.heads == 0, "width", f"{self.width} not divisible by heads={self.heads}")
        check(self.pool != "cls" or self.cls_token, "pool",
              "pool=cls needs cls_token=true")
        check(0.0 <= self.mask_ratio < 1.0, "mask_ratio", f"{self.mask_ratio} is outside [0, 1)")
        check(not (self.attention == "factorized" and self.mask_scheme != "tube"
                   and self.mask_ratio > 0), "mask_scheme",
              "factorized attention needs mask_scheme=tube (every temporal slice must keep "
              "the same spatial positions)")
        check(0 <= self.grad_checkpointing <= self.depth, "grad_checkpointing",
              f"{self.grad_checkpointing} is outside [0, depth={self.depth}]")
        check(self.trainable_last_k is None or 0 < self.trainable_last_k <= self.depth,
              "trainable_last_k", f"{self.trainable_last_k} is outside [1, depth={self.depth}]")

    @property
    def tokens(self) -> int:
        """Tubelet tokens per clip before masking: (T/t) * (H/p) * (W/p)."""
        t, p, _ = self.tubelet
        return (self.frames // t) * (self.image_size // p) ** 2

    def visible_tokens(self, mask_ratio: Optional[float] = None) -> int:
        """Tubelet tokens per clip the encoder sees at `mask_ratio` (None: the config's);
        factorized attention always masks whole tubes."""
        t, p, _ = self.tubelet
        scheme = "tube" if self.attention == "factorized" else self.mask_scheme
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        return visible_count(self.frames // t, (self.image_size // p) ** 2, ratio, scheme)


@dataclass
class TextConfig:
    """The text tower and the tokenizer it reads (text.py).

    arch bert: bidirectional, mean-pooled over real tokens, sentencepiece ids (pad id 0)
    trained on the captions (`longvivit tokenizer`). arch clip: open_clip's text
    transformer (causal attention, pooled at the end-of-text token) over open_clip's BPE
    ids, so `init=open_clip:` can start it from a CLIP model's text tower."""

    arch: str = choice("bert", "clip")
    tokenizer: str = choice("sentencepiece", "open_clip")  # what makes the ids (longvivit/data/load/tokenizer.py)
    vocab_size: int = 32000
    context_length: int = 64
    width: int = 512
    depth: int = 8
    heads: int = 8
    mlp_ratio: float = 4.0
    activation: str = choice("gelu", "quick_gelu")

    def validate(self) -> None:
        _check_dims(self)
        check(self.arch == "bert" or self.tokenizer == "open_clip", "tokenizer",
              "arch=clip pools at the end-of-text token, the highest id only in open_clip's "
              "BPE: set tokenizer=open_clip")
        check(self.tokenizer != "open_clip" or self.vocab_size == OPEN_CLIP_VOCAB, "vocab_size",
              f"{self.vocab_size}: open_clip's BPE has {OPEN_CLIP_VOCAB} ids")
        check(self.vocab_size > 1, "vocab_size", f"{self.vocab_size} must be > 1")
        check(self.context_length > 0, "context_length", f"{self.context_length} must be > 0")
        check(self.width % self.heads == 0, "width", f"{self.width} not divisible by heads={self.heads}")


@dataclass
class ModelConfig:
    preset: str = "B"  # informational: the preset the config started from
    embed_dim: int = 512  # joint video-text space
    init_logit_scale: float = 2.6592600369644043  # ln(1 / 0.07)
    max_logit_scale: float = 4.605170185988092  # ln(100)
    gather: str = choice("gather_with_grad", "local_loss")  # the cross-rank InfoNCE (loss.py)
    # infonce: symmetric softmax over the batch (CLIP); siglip: pairwise sigmoid with a
    # learnable logit bias (SigLIP; start it at init_logit_scale=2.3026, ln 10, as the paper)
    loss: str = choice("infonce", "siglip")
    init_logit_bias: float = -10.0  # siglip only
    # torch.compile each transformer block's forward in training (longvivit/train/compile.py);
    # the model is built the same either way
    compile: bool = False
    video: VideoConfig = field(default_factory=VideoConfig)
    text: TextConfig = field(default_factory=TextConfig)

    def validate(self) -> None:
        check(self.embed_dim > 0, "embed_dim", f"{self.embed_dim} must be > 0")
