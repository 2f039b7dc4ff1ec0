"""The text towers: ids (B, L) int64 and mask (B, L) bool (True on real tokens) -> (B, E).

TextEncoder (arch bert): bidirectional transformer over sentencepiece ids (pad id 0).
Padding keys are masked out of every attention, and the pooled embedding is the mean over
real tokens only, so a caption embeds the same whatever it is padded to.

ClipTextEncoder (arch clip): open_clip's text transformer over its BPE ids, parameter for
parameter (init.py maps a CLIP state dict onto it): causal attention, a final LayerNorm,
the embedding of the end-of-text token (the highest id of each row), a projection without
bias. Causal attention means no token sees the padding after end-of-text, so the mask is
not needed and the embedding is again the same whatever the padding.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from longvivit.model.config import TextConfig
from longvivit.model.transformer import Block, Linear, fill_, init_generator, run_blocks


class TokenEmbedding(nn.Embedding):
    """nn.Embedding whose table is init(std=std) from `generator`, in its own __init__
    (transformer.py says why)."""

    def __init__(self, vocab_size: int, width: int, init, std: float, generator: torch.Generator):
        super().__init__(vocab_size, width)
        fill_(self.weight, init, generator, std=std)


class TextEncoder(nn.Module):
    # (init, std) of the token and position embeddings
    token_init, pos_init = (nn.init.trunc_normal_, 0.02), (nn.init.trunc_normal_, 0.02)

    def __init__(self, cfg: TextConfig, embed_dim: int, generator: Optional[torch.Generator] = None):
        """generator: the CPU generator the initial weights are drawn from (None: one seeded
        from torch's global generator, see transformer.init_generator)."""
        super().__init__()
        generator = init_generator(generator)  # before any part is built
        self.cfg = cfg
        # each part draws its initial weights from `generator` as it is built (transformer.py)
        self.token_embed = TokenEmbedding(cfg.vocab_size, cfg.width, *self.token_init, generator)
        self.pos_embed = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        init, std = self.pos_init
        fill_(self.pos_embed, init, generator, std=std)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.activation, generator)
                                    for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)
        self.head = Linear(cfg.width, embed_dim, bias=False, generator=generator)
        self.checkpointed = 0

    def set_grad_checkpointing(self, blocks: int | bool = True) -> None:
        self.checkpointed = len(self.blocks) if blocks is True else int(blocks)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids (B, L), mask (B, L) True = real token -> (B, E) unnormalised embedding."""
        B, L = ids.shape
        if L > self.cfg.context_length:
            raise ValueError(f"text length {L} exceeds context_length {self.cfg.context_length}")
        mask = mask.bool().clone()
        mask[:, 0] |= ~mask.any(1)  # an empty caption attends to (and pools) its first slot
        x = self.token_embed(ids) + self.pos_embed[:L]  # (B, L, D)
        x = run_blocks(self.blocks, x, self.checkpointed, attn_mask=self.key_mask(mask))
        x = self.norm(x)
        keep = mask[..., None].to(x.dtype)  # (B, L, 1)
        pooled = (x * keep).sum(1) / keep.sum(1)  # (B, D)
        return self.head(pooled)  # (B, E)

    @staticmethod
    def key_mask(mask: torch.Tensor) -> Optional[torch.Tensor]:
        """(B, 1, 1, L) True on the keys each query may attend to; None when no caption is
        padded (no mask: SDPA may pick FlashAttention). Decided for a plain CPU tensor
        only: on an accelerator reading the mask back would be a host sync per micro-batch
        (the model makes none: bench/gpu.py MODEL_SYNCS_ALLOWED), and a batch of real
        captions is nearly always padded anyway, so there the mask stays; the planner's
        FakeTensors have no values to read (and it measures for a GPU, which keeps it)."""
        if type(mask) is torch.Tensor and mask.device.type == "cpu" and bool(mask.all()):
            return None
        return mask[:, None, None, :]


class ClipTextEncoder(TextEncoder):
    """open_clip's TextTransformer with CLIP's defaults (see the module docstring)."""

    # open_clip's init for the embeddings (its blocks' init only matters without weights)
    token_init, pos_init = (nn.init.normal_, 0.02), (nn.init.normal_, 0.01)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids (B, L) open_clip BPE ids, mask unused (see the module docstring) -> (B, E)."""
        B, L = ids.shape
        if L > self.cfg.context_length:
            raise ValueError(f"text length {L} exceeds context_length {self.cfg.context_length}")
        x = self.token_embed(ids) + self.pos_embed[:L]  # (B, L, D)
        x = self.norm(run_blocks(self.blocks, x, self.checkpointed, is_causal=True))  # query i sees keys <= i
        eot = ids.argmax(dim=1)  # (B,): the end-of-text id is the highest in open_clip's BPE
        return self.head(x[torch.arange(B, device=ids.device), eot])  # (B, E)


def build_text_tower(cfg: TextConfig, embed_dim: int, generator: Optional[torch.Generator] = None) -> TextEncoder:
    tower = ClipTextEncoder if cfg.arch == "clip" else TextEncoder
    return tower(cfg, embed_dim, generator)
