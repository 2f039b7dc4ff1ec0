"""BERT-style text tower: bidirectional transformer over sentencepiece ids, mean-pooled.

ids (B, L) int64 with pad id 0; mask (B, L) bool, True on real tokens. Padding keys are
masked out of every attention, and the pooled embedding is the mean over real tokens
only, so a caption embeds the same whatever it is padded to.
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
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
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
