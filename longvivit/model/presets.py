"""Model sizes, parameter counts without allocation, and analytic FLOPs.

  tiny  tests and the CPU demo (32 px, 16 frames, ~1M parameters)
  B     ViT-B/16 video tower (~87M) + BERT-medium-size text tower (512 wide, 8 deep)
  L     ViT-L/16 video tower (~305M) + BERT-base-size text tower (768 wide, 12 deep)
  g     ViT-H/16-class video tower (1280 wide, 32 deep) + BERT-large-size text tower,
        ~0.97B in all. (A ViT-g video tower alone is ~1B, which with any text tower
        overshoots the ~1B target.)
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from longvivit.config import load_config, to_dict
from longvivit.model.config import ModelConfig, TextConfig, VideoConfig
from longvivit.model.dual import build_model


def _preset(name, embed, video, text) -> ModelConfig:
    return ModelConfig(preset=name, embed_dim=embed, video=VideoConfig(**video), text=TextConfig(**text))


PRESETS: dict[str, ModelConfig] = {
    "tiny": _preset("tiny", 64,
                    dict(frames=16, image_size=32, tubelet=[2, 8, 8], width=128, depth=4, heads=4),
                    dict(vocab_size=1000, context_length=32, width=64, depth=2, heads=4)),
    "B": _preset("B", 512, dict(width=768, depth=12, heads=12), dict(width=512, depth=8, heads=8)),
    "L": _preset("L", 768, dict(width=1024, depth=24, heads=16), dict(width=768, depth=12, heads=12)),
    "g": _preset("g", 1024, dict(width=1280, depth=32, heads=16), dict(width=1024, depth=24, heads=16)),
}


def model_config(preset: str, overrides: Sequence[str] = ()) -> ModelConfig:
    """The preset's ModelConfig with ``key=value`` overrides (e.g. "video.frames=64")."""
    if preset not in PRESETS:
        raise KeyError(f"unknown model preset {preset!r}; choose from {', '.join(PRESETS)}")
    return load_config(ModelConfig, to_dict(PRESETS[preset]), overrides=overrides)


def num_params(cfg: ModelConfig, part: Optional[str] = None) -> int:
    """Parameters of the model `cfg` builds (part: None for all, "video" or "text"),
    counted on the meta device: nothing is allocated, so `g` costs nothing."""
    with torch.device("meta"):
        model = build_model(cfg)
    module = model if part is None else getattr(model, part)
    return sum(p.numel() for p in module.parameters())


def _block_flops(tokens: int, width: int, mlp_ratio: float, context: int) -> float:
    """Forward FLOPs of one transformer block on `tokens` tokens attending to `context` keys
    each: qkv, out and MLP matmuls, plus QK^T and attention-times-V."""
    linear = 2 * tokens * width * width * (4 + 2 * mlp_ratio)
    attention = 2 * 2 * tokens * context * width
    return linear + attention


def video_flops(cfg: VideoConfig, mask_ratio: float = 0.0) -> float:
    """Forward FLOPs of the video tower on one clip at `mask_ratio`."""
    t, p, _ = cfg.tubelet
    slices = cfg.frames // t
    n = cfg.visible_tokens(mask_ratio)  # visible patch tokens
    extra = 1 if cfg.cls_token else 0
    embed = 2 * n * (3 * t * p * p) * cfg.width  # only the kept tubelets are embedded
    if cfg.attention == "joint":
        copies = slices - 1 if cfg.cls_token else 0  # the CLS key's extra copies (VideoEncoder.cls_key_copies)
        blocks = _block_flops(n + extra, cfg.width, cfg.mlp_ratio, n + extra + copies)
    else:
        per_slice = n // slices + extra
        blocks = (_block_flops(slices * per_slice, cfg.width, cfg.mlp_ratio, per_slice)
                  + 2 * slices * per_slice * cfg.width * cfg.width * 4  # temporal qkv + out
                  + 2 * 2 * slices * per_slice * slices * cfg.width)  # temporal attention
    return embed + cfg.depth * blocks


def text_flops(cfg: TextConfig) -> float:
    """Forward FLOPs of the text tower on one caption padded to context_length."""
    L = cfg.context_length
    return cfg.depth * _block_flops(L, cfg.width, cfg.mlp_ratio, L)


def flops_per_sample(cfg: ModelConfig, mask_ratio: Optional[float] = None) -> float:
    """Model FLOPs of forward + backward (3x forward) for one video-text pair, counting
    matmuls and attention at the visible token count (recomputation by activation
    checkpointing is not model FLOPs, so MFU leaves it out). mask_ratio None: the config's."""
    ratio = cfg.video.mask_ratio if mask_ratio is None else mask_ratio
    heads = 2 * (cfg.video.width + cfg.text.width) * cfg.embed_dim
    return 3 * (video_flops(cfg.video, ratio) + text_flops(cfg.text) + heads)
