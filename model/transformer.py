"""The transformer block both towers share, and how a stack of them runs.

Pre-norm blocks (x + attn(norm(x)), then x + mlp(norm(x))) with torch's
scaled_dot_product_attention, so the fused CPU/GPU kernels are used whenever no additive
mask is needed. Parameter names and layouts follow open_clip's ResidualAttentionBlock
one-to-one (qkv rows are [q; k; v], heads contiguous inside each), which keeps the
image-to-video mapping in init.py a rename.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation; its released ViT weights were trained with it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": nn.GELU, "quick_gelu": QuickGELU}


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, D // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, D/H)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, N, D/H)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))  # (B, N, D)


class MLP(nn.Module):
    def __init__(self, width: int, mlp_ratio: float, activation: str = "gelu"):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.fc1 = nn.Linear(width, hidden)
        self.act = ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block over a (B, N, D) token sequence."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, activation: str = "gelu"):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio, activation)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_mask)  # (B, N, D)
        return x + self.mlp(self.norm2(x))


def run_blocks(blocks: Sequence[nn.Module], x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
               checkpointed: int = 0) -> torch.Tensor:
    """Apply `blocks` in order; the first `checkpointed` of them recompute their activations
    in the backward pass instead of keeping them (only their input is saved)."""
    for i, block in enumerate(blocks):
        if i < checkpointed and torch.is_grad_enabled():
            x = checkpoint(block, x, attn_mask, use_reentrant=False)
        else:
            x = block(x, attn_mask)
    return x


def init_weights(module: nn.Module) -> None:
    """ViT/BERT-style init: truncated normal(0.02) weights, zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Conv3d, nn.Embedding)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
