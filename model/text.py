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

import torch
import torch.nn as nn

from .config import TextConfig
from .transformer import Block, init_weights, run_blocks


class TextEncoder(nn.Module):
    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.activation)
                                    for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, embed_dim, bias=False)
        self.checkpointed = 0
        self.apply(init_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

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
        attend = mask[:, None, None, :]  # (B, 1, 1, L): keys each query may attend to
        x = run_blocks(self.blocks, x, attend, self.checkpointed)
        x = self.norm(x)
        keep = mask[..., None].to(x.dtype)  # (B, L, 1)
        pooled = (x * keep).sum(1) / keep.sum(1)  # (B, D)
        return self.head(pooled)  # (B, E)


class ClipTextEncoder(TextEncoder):
    """open_clip's TextTransformer with CLIP's defaults (see the module docstring)."""

    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__(cfg, embed_dim)
        # open_clip's init for the embeddings (its blocks' init only matters without weights)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids (B, L) open_clip BPE ids, mask unused (see the module docstring) -> (B, E)."""
        B, L = ids.shape
        if L > self.cfg.context_length:
            raise ValueError(f"text length {L} exceeds context_length {self.cfg.context_length}")
        x = self.token_embed(ids) + self.pos_embed[:L]  # (B, L, D)
        causal = torch.ones(L, L, dtype=torch.bool, device=ids.device).tril()  # query i sees keys <= i
        x = self.norm(run_blocks(self.blocks, x, causal, self.checkpointed))
        eot = ids.argmax(dim=1)  # (B,): the end-of-text id is the highest in open_clip's BPE
        return self.head(x[torch.arange(B, device=ids.device), eot])  # (B, E)


def build_text_tower(cfg: TextConfig, embed_dim: int) -> TextEncoder:
    return ClipTextEncoder(cfg, embed_dim) if cfg.arch == "clip" else TextEncoder(cfg, embed_dim)
