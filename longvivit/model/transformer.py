"""The transformer block both towers share, how a stack of them runs, and how the towers'
weights start (one CPU generator, drawn module by module as they are built).

Pre-norm blocks (x + attn(norm(x)), then x + mlp(norm(x))) with torch's
scaled_dot_product_attention, so the fused CPU/GPU kernels are used whenever no additive
mask is needed. Parameter names and layouts follow open_clip's ResidualAttentionBlock
one-to-one (qkv rows are [q; k; v], heads contiguous inside each), which keeps the
image-to-video mapping in init.py a rename.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from longvivit.model.masking import to_device

if TYPE_CHECKING:
    from longvivit.distributed.sequence import SequenceShard

try:  # FlashAttention's (or cuDNN's) varlen kernel behind torch's own API (torch >= 2.10)
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # an older torch: Packed attends sequence by sequence
    varlen_attn = None

# ----------------------------------------------------------------------------- initial weights
#
# A tower's initial weights are a function of one CPU generator (seeded from torch's global
# one: torch.manual_seed(s) then a build gives the same weights) and nothing else: each
# value is drawn in fp32 on the CPU and copied into its parameter whatever the parameter's
# device or dtype, and every module draws its own parameters in its own __init__, in the
# order the modules are built. That is what lets a sharded build hold exactly the weights
# of a whole one: deepspeed.zero.Init (longvivit/train/construct.py) creates the parameters on the
# accelerator in the training dtype and partitions each module's as soon as its __init__
# returns, so nothing may touch a module's parameters after that (no init pass over the
# built model). nn.Linear's and nn.Embedding's own default init still runs first, from
# torch's global generator, and is overwritten.


def init_generator(generator: Optional[torch.Generator] = None) -> torch.Generator:
    """`generator`, or a new CPU generator seeded by one draw from torch's global one.
    Taken before any submodule is built, so that what the default inits draw (on whatever
    device the parameters are made) does not move it."""
    if generator is not None:
        return generator
    seed = int(torch.randint(2**62, (1,), device="cpu"))
    return torch.Generator(device="cpu").manual_seed(seed)


@torch.no_grad()
def fill_(param: torch.Tensor, init, generator: torch.Generator, **kwargs) -> None:
    """param <- init(fp32 CPU tensor of param's shape, generator=generator, **kwargs),
    rounded once to param's dtype (as casting an fp32 model would). Nothing on the meta
    device (presets.num_params, the planner)."""
    if param.is_meta:
        return
    if param.device.type == "cpu" and param.dtype == torch.float32 and param.is_contiguous():
        init(param, generator=generator, **kwargs)  # the same draws, without a second copy
        return
    # .float(): fp32 even inside a context that makes new tensors another dtype (zero.Init)
    values = torch.empty(tuple(param.shape), device="cpu").float()
    param.copy_(init(values, generator=generator, **kwargs))


def full_shape(param: torch.Tensor) -> torch.Size:
    """A parameter's shape, also when it is a ZeRO-3 partition (1-D; the shape is in ds_shape)."""
    return getattr(param, "ds_shape", param.shape)


def init_linear(module: nn.Module, generator: torch.Generator) -> None:
    """ViT/BERT-style: truncated normal(0.02) weight, zero bias (a Linear or a Conv)."""
    fill_(module.weight, nn.init.trunc_normal_, generator, std=0.02)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class Linear(nn.Linear):
    """nn.Linear initialised ViT/BERT-style from `generator` in its own __init__."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 generator: Optional[torch.Generator] = None):
        super().__init__(in_features, out_features, bias)
        init_linear(self, init_generator(generator))


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation; its released ViT weights were trained with it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": nn.GELU, "quick_gelu": QuickGELU}


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, generator: Optional[torch.Generator] = None):
        super().__init__()
        generator = init_generator(generator)
        self.heads = heads
        self.qkv = Linear(width, 3 * width, generator=generator)
        self.proj = Linear(width, width, generator=generator)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, first_key_copies: int = 1,
                is_causal: bool = False, packed: Optional["Packed"] = None,
                sequence: Optional["SequenceShard"] = None) -> torch.Tensor:
        """x (B, N, D) -> (B, N, D). attn_mask: SDPA's (bool or additive), None for none.
        first_key_copies c: the first token's key and value enter every softmax c times
        (the same softmax as a +ln(c) bias on that key's logits, without a mask, so SDPA
        may pick FlashAttention; VideoEncoder.cls_key_copies says why). is_causal: query i
        sees keys <= i (SDPA takes no attn_mask with it). packed: x is (1, total, D), the
        sequences `packed` describes one after another, each attending only to itself.
        sequence: x is this rank's chunk of the tokens (longvivit/distributed/sequence.py,
        Ulysses): q, k, v of the whole sequence for H/N heads are exchanged in, attended to
        as above (the mask and copies are the whole sequence's), and exchanged back."""
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, D // self.heads)
        if sequence is not None:
            qkv = sequence.heads_to_sequence(qkv)  # (B, S, 3, H/N, D/H)
        if packed is not None:
            return self.proj(packed.attention(qkv[0]).reshape(B, N, D))  # (1, total, D)
        extra = first_key_copies - 1
        if extra:
            # c-1 more copies of the first token's q, k, v in front; the queries then skip
            # them. Copying qkv whole (not k and v apart) lets the original buffer go: the
            # pass keeps what it keeps without copies, plus c-1 tokens.
            qkv = torch.cat([qkv[:, :1].expand(-1, extra, -1, -1, -1), qkv], dim=1)  # (B, c-1+N, 3, H, D/H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, c-1+N, D/H)
        q = q[:, :, extra:]  # (B, h, S, D/H): the queries stay S (h heads: H, or H/N split)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)  # (B, h, S, D/H)
        y = y.transpose(1, 2)  # (B, S, h, D/H)
        if sequence is not None:
            y = sequence.sequence_to_heads(y)  # (B, N, H, D/H)
        return self.proj(y.reshape(B, N, D))  # (B, N, D)


@dataclass(frozen=True)
class Packed:
    """Sequences of different lengths packed one after another into one (1, total, D) row,
    and how Attention attends within each of them: no padding, no mask.

    Sequence i is tokens q_bounds[i]:q_bounds[i+1] of the row. Its keys and values are the
    row's tokens key_index[k_bounds[i]:k_bounds[i+1]]: its own tokens, its first one
    entered first_key_copies[i] times (the CLS key's copies, VideoEncoder.cls_key_copies,
    which may differ between the sequences here). On CUDA in fp16/bf16 one call of torch's
    varlen attention (FlashAttention's or cuDNN's varlen kernel, cumulative lengths cu_q
    and cu_k) covers every sequence; elsewhere a loop calls SDPA once per sequence without
    a mask, the same softmax. Built from lengths on the host (`of`); its device tensors
    arrive without a host sync and the bounds are host ints, so nothing is read back."""

    q_bounds: tuple[int, ...]  # (S+1,) cumulative query lengths, on the host
    k_bounds: tuple[int, ...]  # (S+1,) cumulative key lengths, on the host
    cu_q: torch.Tensor  # (S+1,) int32, q_bounds on the device
    cu_k: torch.Tensor  # (S+1,) int32, k_bounds on the device
    key_index: Optional[torch.Tensor]  # (total keys,) int64 on the device: the row's token behind each
    # key; None when no sequence repeats its first key (the keys are the queries' tokens)
    max_q: int  # the longest sequence's queries
    max_k: int  # and keys

    @classmethod
    def of(cls, lengths: torch.Tensor, first_key_copies: torch.Tensor, device: torch.device) -> "Packed":
        """lengths, first_key_copies: (S,) int64 on the CPU (copies >= 1)."""
        keys = lengths + first_key_copies - 1  # (S,)
        cu_q, cu_k = F.pad(lengths.cumsum(0), (1, 0)), F.pad(keys.cumsum(0), (1, 0))  # (S+1,) twice
        seq = torch.repeat_interleave(torch.arange(len(lengths)), keys)  # (total keys,) which sequence
        within = torch.arange(int(cu_k[-1])) - cu_k[seq]  # position among its sequence's keys
        key_index = cu_q[seq] + (within - (first_key_copies[seq] - 1)).clamp(min=0)  # copies -> the first token
        copied = bool((first_key_copies > 1).any())  # a host tensor: no sync
        return cls(tuple(cu_q.tolist()), tuple(cu_k.tolist()), to_device(cu_q.int(), device),
                   to_device(cu_k.int(), device), to_device(key_index, device) if copied else None,
                   int(lengths.max()), int(keys.max()))

    def attention(self, qkv: torch.Tensor) -> torch.Tensor:
        """qkv (total, 3, H, D/H) -> (total, H, D/H): softmax(q k^T / sqrt(D/H)) v per sequence.
        With first-key copies one gather makes every sequence's keys and values (index_select:
        its backward adds the copies' gradients in index order, the same on every run on the
        CPU); without, they are views of qkv, as in the masked path."""
        q = qkv[:, 0]  # (total, H, D/H)
        kv = qkv[:, 1:] if self.key_index is None else qkv[:, 1:].index_select(0, self.key_index)
        k, v = kv.unbind(1)  # 2 x (total keys, H, D/H)
        if varlen_attn is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
            # dense (tokens, heads, head dim) operands, the layout the varlen kernels document
            # (untested on a GPU yet: tests/gpu/test_gpu_packed.py)
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
            return varlen_attn(q, k, v, self.cu_q, self.cu_k, self.max_q, self.max_k)  # (total, H, D/H)
        out = [F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[c:d].transpose(0, 1),
                                              v[c:d].transpose(0, 1)).transpose(0, 1)  # (L, H, D/H)
               for a, b, c, d in zip(self.q_bounds, self.q_bounds[1:], self.k_bounds, self.k_bounds[1:])]
        return torch.cat(out)  # (total, H, D/H)


class _ActivationLinear(torch.autograd.Function):
    """y = linear(act(h), W, b) that saves h but not act(h): backward recomputes the
    activation (one elementwise pass) instead of keeping a 4 x width tensor per token."""

    @staticmethod
    def forward(ctx, h, weight, bias, act):
        ctx.act = act
        ctx.has_bias = bias is not None
        ctx.save_for_backward(h, weight)
        return F.linear(act(h), weight, bias)  # autograd is off here: act(h) is not kept

    @staticmethod
    def backward(ctx, grad):
        h, weight = ctx.saved_tensors
        with torch.enable_grad():
            h = h.detach().requires_grad_(ctx.needs_input_grad[0])
            a = ctx.act(h)  # (..., hidden), recomputed
        g2 = grad.reshape(-1, grad.shape[-1])  # (tokens, width)
        grad_w = g2.t() @ a.detach().reshape(-1, a.shape[-1]) if ctx.needs_input_grad[1] else None
        grad_b = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        grad_h = None
        if ctx.needs_input_grad[0]:
            (grad_h,) = torch.autograd.grad(a, h, grad @ weight)
        return grad_h, grad_w, grad_b, None


class ActivationLinear(Linear):
    """The MLP's output projection applied to the pre-activation: forward(h, act) =
    linear(act(h)). Same parameters and result as Linear after the activation, but only h
    is saved for backward: a transformer block then keeps 12 instead of 16 token-width
    tensors per token (MAE-style encoders at 1-6k tokens are activation-bound). A Linear
    subclass, so ZeRO-3 gathers its weight when this module runs."""

    def forward(self, h: torch.Tensor, act: Optional[nn.Module] = None) -> torch.Tensor:
        if act is None:
            return super().forward(h)
        if not torch.is_grad_enabled():
            return super().forward(act(h))
        if torch.compiler.is_compiling():  # dynamo cannot trace the Function's torch.autograd.grad;
            # a checkpoint tells the compiled backward the same: keep h, recompute act(h)
            return checkpoint(lambda h: F.linear(act(h), self.weight, self.bias), h, use_reentrant=False)
        return _ActivationLinear.apply(h, self.weight, self.bias, act)


class MLP(nn.Module):
    def __init__(self, width: int, mlp_ratio: float, activation: str = "gelu",
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        generator = init_generator(generator)
        hidden = int(width * mlp_ratio)
        self.fc1 = Linear(width, hidden, generator=generator)
        self.act = ACTIVATIONS[activation]()
        self.fc2 = ActivationLinear(hidden, width, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x), self.act)  # = fc2(act(fc1(x))), act recomputed in backward


class Block(nn.Module):
    """Pre-norm transformer block over a (B, N, D) token sequence."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, activation: str = "gelu",
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        generator = init_generator(generator)
        self.norm1 = nn.LayerNorm(width)  # LayerNorms start at weight 1, bias 0: no draws
        self.attn = Attention(width, heads, generator)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio, activation, generator)

    def forward(self, x: torch.Tensor, **attention) -> torch.Tensor:
        """x (B, N, D); attention: Attention.forward's keywords (mask, first-key copies, causal)."""
        x = x + self.attn(self.norm1(x), **attention)  # (B, N, D)
        return x + self.mlp(self.norm2(x))


def run_blocks(blocks: Sequence[nn.Module], x: torch.Tensor, checkpointed: int = 0, **attention) -> torch.Tensor:
    """Apply `blocks` in order, each with the same `attention` keywords (attn_mask,
    first_key_copies, is_causal, packed: Attention.forward); the first `checkpointed` of them
    recompute their activations in the backward pass instead of keeping them (only their
    input is saved)."""
    for i, block in enumerate(blocks):
        if i < checkpointed and torch.is_grad_enabled():
            x = checkpoint(block, x, use_reentrant=False, **attention)
        else:
            x = block(x, **attention)
    return x
