"""ViViT video tower: tubelets -> + positions -> drop masked tokens -> transformer -> embedding.

Input: video (B, T, H, W, C), one layout everywhere. uint8 (0..255) is normalised here with
CLIP's mean/std; a floating-point video is taken as already normalised. T must be a
multiple of the tubelet's t and H, W of its p; another T or H, W than the config's works
(the position tables are resized on the fly), but a checkpoint for it is better loaded
into a model built for it (load_state_dict resizes the tables once). T = 1 is an image
(image-text pairs beside the videos): it takes the 2D patch path and the first temporal
position (VideoEncoder.as_tubelet, .positions).

Token t * S + s is the tubelet at temporal slice t and spatial position s (row-major over
the (H/p, W/p) grid). Every token carries spatial[s] + temporal[t] before masking, so the
kept ones still know where they came from.

attention: joint      one sequence of all visible tokens (ViViT model 2; no parameters
                      beyond an image ViT's), random or tube masking.
           factorized spatial attention inside each temporal slice, then temporal attention
                      across slices at each spatial position, gated by tanh(a), a = 0.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from longvivit.distributed.sequence import SequenceShard
from longvivit.model import masking
from longvivit.model.config import VideoConfig
from longvivit.model.transformer import (
    Attention,
    Block,
    Linear,
    Packed,
    fill_,
    full_shape,
    init_generator,
    init_linear,
    run_blocks,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_CLIP_PIXELS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # clip_pixel_stats' per device


def clip_pixel_stats(device: torch.device, cached: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's mean and std in 0..255 pixel units, float32 (C,) on `device`: made once per
    device, because a tensor built from Python numbers on a GPU is a host-to-device copy
    that waits for the GPU (a host sync per micro-batch). Plain tensors, not buffers: a
    module's buffers go to bf16 with the module (zero.Init, the engine's cast), and they
    are no state of the model (checkpoints and exports hold none). cached False: made
    anew (for a video that is no plain tensor, e.g. the planner's FakeTensors, whose mode
    takes no real tensor in); only plain tensors are kept."""
    stats = _CLIP_PIXELS.get(device) if cached else None
    if stats is None:
        stats = (torch.tensor(CLIP_MEAN, device=device) * 255, torch.tensor(CLIP_STD, device=device) * 255)
        if cached and all(type(t) is torch.Tensor for t in stats):
            _CLIP_PIXELS[device] = stats
    return stats


# ----------------------------------------------------------------------------- tubelets


def patchify(x: torch.Tensor, tubelet) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, N, C*t*p*p): each tubelet's pixels in Conv3d weight order."""
    t, p, _ = tubelet
    B, C, T, H, W = x.shape
    x = x.view(B, C, T // t, t, H // p, p, W // p, p)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, -1, C * t * p * p)


class TubeletEmbed(nn.Conv3d):
    """A Conv3d with kernel = stride = tubelet (t, p, p). No bias: a bias would be a constant
    added to every token, which the learnable position tables already represent.
    (Subclassing rather than wrapping keeps the weight this module's own parameter, which
    ZeRO-3 gathers when this module's forward runs.)"""

    def __init__(self, tubelet, width: int, channels: int = 3, generator: Optional[torch.Generator] = None):
        super().__init__(channels, width, kernel_size=tuple(tubelet), stride=tuple(tubelet), bias=False)
        init_linear(self, init_generator(generator))

    def forward(self, x: torch.Tensor, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, C, T, H, W); index (B, n) of the kept tokens or None for all -> (B, n, D)."""
        if index is None:
            return super().forward(x).flatten(2).transpose(1, 2)  # (B, N, D)
        # The same convolution applied only to the kept tubelets: equal to conv -> gather,
        # but masked tubelets cost no FLOPs and only the kept pixels are saved for the
        # backward pass (through the conv it would be the whole float video).
        patches = patchify(x, self.kernel_size)  # (B, N, K)
        patches = patches.gather(1, index[..., None].expand(-1, -1, patches.shape[-1]))  # (B, n, K)
        return F.linear(patches, self.weight.flatten(1))  # (B, n, D)


# ----------------------------------------------------------------------------- positions


def resize_spatial(table: torch.Tensor, grid: int) -> torch.Tensor:
    """(g*g, D) -> (grid*grid, D), bicubic over the square grid."""
    g = math.isqrt(table.shape[0])
    if g == grid:
        return table
    x = table.reshape(1, g, g, -1).permute(0, 3, 1, 2).float()  # (1, D, g, g)
    x = F.interpolate(x, size=(grid, grid), mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(table.dtype)


def resize_temporal(table: torch.Tensor, slices: int) -> torch.Tensor:
    """(T', D) -> (slices, D), linear over time (16 -> 256 frames stretches the table)."""
    if table.shape[0] == slices:
        return table
    x = table.t()[None].float()  # (1, D, T')
    x = F.interpolate(x, size=slices, mode="linear", align_corners=False)
    return x[0].t().to(table.dtype)


class PositionEmbedding(nn.Module):
    """pos[t, s] = temporal[t] + spatial[s]; a state dict from another number of frames or
    another resolution is interpolated when loaded (plain load_state_dict works)."""

    def __init__(self, slices: int, grid: int, width: int, generator: Optional[torch.Generator] = None):
        super().__init__()
        generator = init_generator(generator)
        self.spatial = nn.Parameter(torch.empty(grid * grid, width))
        self.temporal = nn.Parameter(torch.empty(slices, width))
        for table in (self.spatial, self.temporal):
            fill_(table, nn.init.trunc_normal_, generator, std=0.02)

    def forward(self, slices: int, grid: int, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Embeddings of the tokens `index` (B, n) -> (B, n, D); all N tokens -> (1, N, D)."""
        spatial = resize_spatial(self.spatial, grid)  # (S, D)
        temporal = resize_temporal(self.temporal, slices)  # (T', D)
        table = (temporal[:, None] + spatial[None]).flatten(0, 1)  # (N, D)
        if index is None:
            return table[None]  # (1, N, D)
        # Each clip gathers its kept tokens from the whole table. The backward then gives every
        # (clip, token) its own slot and sums over clips, slices and positions: plain
        # reductions, the same on every run. Indexing the small tables (temporal[index // S])
        # gives the same values, but its backward accumulates repeated indices in thread
        # order (index_put with accumulate, nondeterministic on CPU), so two runs of one
        # command drifted apart. Costs a (B, N, D) gradient buffer during the backward.
        B, n = index.shape
        return table.expand(B, -1, -1).gather(1, index[..., None].expand(B, n, table.shape[-1]))  # (B, n, D)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, resize in (("spatial", resize_spatial), ("temporal", resize_temporal)):
            key, param = prefix + name, getattr(self, name)
            shape = full_shape(param)  # also under ZeRO-3
            size = math.isqrt(shape[0]) if name == "spatial" else shape[0]
            incoming = state_dict.get(key)
            # numel 0: DeepSpeed's ZeRO-3 checkpoints hold empty placeholders in the module
            # state dict (the real values come from the partitioned optimizer files).
            if incoming is not None and incoming.numel() > 0 and incoming.shape != shape:
                state_dict[key] = resize(incoming, size)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# ----------------------------------------------------------------------------- factorized


class FactorizedBlock(Block):
    """Spatial block (attention within each temporal slice, then MLP) followed by temporal
    attention across slices: h = h + tanh(a) * temporal(h), a = 0 at init, so a fresh or
    image-initialised model starts as the image ViT applied frame by frame.

    Input (B, T', S, D): every slice must hold the same spatial positions, which is why
    only tube masking applies here. Random masking leaves each slice a different number
    of tokens at different positions: there is no (B*T', S) batch for spatial attention
    and no column of one spatial position across time for temporal attention.
    The parameter names of the spatial part are those of Block, so joint and factorized
    checkpoints share them.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, activation: str = "gelu",
                 generator: Optional[torch.Generator] = None):
        generator = init_generator(generator)
        spatial = generator.get_state()
        super().__init__(width, heads, mlp_ratio, activation, generator)
        rest = generator.get_state()
        # Temporal attention starts as the spatial one (the paper's init): the same draws
        # again. Block draws nothing before its attention (norm1 starts at ones and zeros),
        # so replaying the generator from where the block began gives the spatial weights
        # without reading them (under zero.Init they are partitioned by now).
        generator.set_state(spatial)
        self.temporal_norm = nn.LayerNorm(width)
        self.temporal_attn = Attention(width, heads, generator)
        generator.set_state(rest)
        self.temporal_gate = nn.Parameter(torch.zeros(1))  # 1-D: DeepSpeed cannot partition 0-dim

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, T', S, D); attn_mask: None, or (B, 1, 1, T') True on the slices of real
        content, the keys temporal attention may use (padded clips)."""
        B, T, S, D = x.shape
        x = super().forward(x.reshape(B * T, S, D)).view(B, T, S, D)  # spatial, per slice
        h = x.transpose(1, 2).reshape(B * S, T, D)  # one sequence over time per position
        keys = None if attn_mask is None else attn_mask.repeat_interleave(S, dim=0)  # (B*S, 1, 1, T')
        h = self.temporal_attn(self.temporal_norm(h), keys).view(B, S, T, D).transpose(1, 2)
        return x + torch.tanh(self.temporal_gate) * h  # (B, T', S, D)


# ----------------------------------------------------------------------------- encoder


class VideoEncoder(nn.Module):
    def __init__(self, cfg: VideoConfig, embed_dim: int, generator: Optional[torch.Generator] = None):
        """generator: the CPU generator the initial weights are drawn from (None: one seeded
        from torch's global generator, see transformer.init_generator)."""
        super().__init__()
        generator = init_generator(generator)  # before any part is built
        self.cfg = cfg
        t, p, _ = cfg.tubelet
        # each part draws its initial weights from `generator` as it is built (transformer.py)
        self.patch_embed = TubeletEmbed(cfg.tubelet, cfg.width, generator=generator)
        self.pos_embed = PositionEmbedding(cfg.frames // t, cfg.image_size // p, cfg.width, generator)
        self.cls_token = nn.Parameter(torch.empty(cfg.width)) if cfg.cls_token else None
        if self.cls_token is not None:
            fill_(self.cls_token, nn.init.trunc_normal_, generator, std=0.02)
        self.ln_pre = nn.LayerNorm(cfg.width) if cfg.ln_pre else nn.Identity()
        block = FactorizedBlock if cfg.attention == "factorized" else Block
        self.blocks = nn.ModuleList(
            block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.activation, generator) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)
        self.head = Linear(cfg.width, embed_dim, bias=False, generator=generator)
        # leading blocks recomputed in backward; set here only (the trainer and plan.py rely on it)
        self.checkpointed = cfg.grad_checkpointing
        self.frozen_prefix = 0  # leading blocks run without autograd (see freeze)
        if cfg.trainable_last_k is not None:
            self.freeze(cfg.trainable_last_k, cfg.train_stem)

    def freeze(self, last_k: int, train_stem: bool = True) -> None:
        """Train only the last `last_k` blocks (plus final norm and head, and the stem:
        tubelet and position embeddings, CLS, ln_pre, unless train_stem is False).
        Frozen weights get requires_grad False, so they never hold a gradient. With a
        frozen stem nothing below the trainable blocks needs a backward pass: those
        blocks then run under no_grad and save no activations."""
        for block in self.blocks[: len(self.blocks) - last_k]:
            block.requires_grad_(False)
        if not train_stem:
            for part in (self.patch_embed, self.pos_embed, self.ln_pre):
                part.requires_grad_(False)
            if self.cls_token is not None:
                self.cls_token.requires_grad_(False)
            self.frozen_prefix = len(self.blocks) - last_k

    def set_grad_checkpointing(self, blocks: int | bool = True) -> None:
        """Checkpoint the first `blocks` blocks (True: all, False: none)."""
        self.checkpointed = len(self.blocks) if blocks is True else int(blocks)

    def forward(self, video: torch.Tensor, mask_ratio: float = 0.0, mask_scheme: str = "random",
                generator: Optional[torch.Generator] = None,
                real_frames: Optional[torch.Tensor | int] = None,
                sequence: Optional[SequenceShard] = None) -> torch.Tensor:
        """video (B, T, H, W, C) -> (B, E) unnormalised embedding. real_frames (B,): how many
        leading frames of each clip are content; the rest (the loader's padding, the last
        frame repeated) is dropped before the encoder like masked tokens and never pooled.
        A tubelet that straddles the end of a clip counts as content. An int: every clip's;
        None: every clip is whole.

        sequence: this rank's place in a sequence group (parallel.sequence, Ulysses:
        longvivit/distributed/sequence.py), whose ranks get the same video and generator.
        The blocks then run on this rank's chunk of the tokens, and the embedding is the
        same on every rank of the group (joint attention, masked padding: packs() is False).

        Host syncs: none when real_frames is None, an int or a CPU tensor; one when it is a
        GPU tensor (its values are read back once: which tokens exist is a shape, decided on
        the host). Callers on a GPU should pass it on the CPU."""
        x = self.normalize(video)  # (B, C, T, H, W)
        still = x.shape[2] == 1  # an image (T = 1): the 2D patch path, see `as_tubelet`
        if still:
            x = self.as_tubelet(x)  # (B, C, t, H, W)
        slices, grid = self.token_grid(x)
        if self.cfg.attention == "factorized" and mask_scheme != "tube" and mask_ratio > 0:
            raise ValueError("factorized attention needs mask_scheme='tube' "
                             "(every temporal slice must keep the same spatial positions)")
        real = self.real_slices(real_frames, slices, x.shape[0])  # (B,) on the CPU, or None: every clip whole
        clips = None  # the packed layout of a padded batch (PackedClips), when it takes one
        if real is None:
            index, valid = masking.sample_visible(x.shape[0], slices, grid * grid, mask_ratio, mask_scheme,
                                                  generator, x.device), None  # (B, n) or None
        else:
            scheme = "tube" if self.cfg.attention == "factorized" else mask_scheme
            index, valid = masking.sample_visible_padded(slices, grid * grid, mask_ratio, scheme, real,
                                                         generator, x.device)  # (B, n) twice
            if self.packs(x.device, split=sequence is not None):
                clips = self.packed_clips(masking.padded_counts(grid * grid, mask_ratio, scheme, real), real,
                                          index.shape[1], x.device)
        rows = slices if real is None else int(real.max())  # temporal slices in the token rows (host: no sync)
        grad = torch.is_grad_enabled()
        with torch.set_grad_enabled(grad and self.frozen_prefix == 0):
            x = self.patch_embed(x, index) + self.positions(slices, grid, index, still)  # (B, n, D)
            x = self.ln_pre(self.with_cls(x, rows))  # (B, 1+n, D) | (B, T', 1+s, D)
            if clips is not None:
                x, attention = clips.pack(x), {"packed": clips.attention}  # (1, total, D)
            else:
                attention = self.attention_keywords(x, slices, real, valid, rows)
            if sequence is not None:
                if self.cfg.attention != "joint":
                    raise ValueError("sequence parallelism splits joint attention's one sequence; "
                                     f"this tower's attention is {self.cfg.attention}")
                attention["sequence"] = sequence = sequence.for_length(x.shape[1])
                x = sequence.split(x)  # (B, S_place, D): this rank's chunk
            x = run_blocks(self.blocks[: self.frozen_prefix], x, **attention)
        x = run_blocks(self.blocks[self.frozen_prefix:], x, max(0, self.checkpointed - self.frozen_prefix),
                       **attention)
        x = self.norm(x)
        if clips is not None:
            x = clips.unpack(x)  # (B, 1+n, D), zeros on the fillers
        if sequence is not None:
            x = sequence.gather(x)  # (B, 1+n, D), the whole sequence on every rank of the group
        return self.head(self.pool(x, valid))  # (B, E)

    def as_tubelet(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, 1, H, W) -> (B, C, t, H, W), the image repeated over one tubelet. The tubelet
        kernel then acts as its sum over time, which for a tower initialised from an image
        model (each time step 1/t of the 2D kernel, longvivit/model/init.py) is that model's 2D patch
        kernel: an image takes the path it took in the image tower."""
        return image.repeat(1, 1, self.cfg.tubelet[0], 1, 1)

    def positions(self, slices: int, grid: int, index: Optional[torch.Tensor], still: bool) -> torch.Tensor:
        """Position embeddings of the kept tokens, (B, n, D) or (1, N, D) for all of them.
        An image gets those of the first temporal slice of the model's own clip length,
        temporal[0] + spatial[s], as it would as the only content frame of a padded clip;
        resizing the temporal table to one slice would give it an average of the table."""
        if not still:
            return self.pos_embed(slices, grid, index)
        table_slices = self.cfg.frames // self.cfg.tubelet[0]
        pos = self.pos_embed(table_slices, grid, index)  # the first slice's tokens are 0..S-1
        return pos if index is not None else pos[:, : grid * grid]

    def real_slices(self, real_frames: Optional[torch.Tensor | int], slices: int,
                    batch: int) -> Optional[torch.Tensor]:
        """Temporal slices holding content, (B,) int64 on the CPU; None when every clip fills
        them all. real_frames on a GPU is copied back here, the forward's one host sync
        (which clips are whole decides shapes; nothing on the GPU can decide it)."""
        if real_frames is None:
            return None
        if isinstance(real_frames, int):
            real_frames = torch.full((batch,), real_frames)
        t = self.cfg.tubelet[0]
        real = ((real_frames.cpu().to(torch.int64) + t - 1) // t).clamp(1, slices)
        return None if bool((real == slices).all()) else real

    def normalize(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W, C) uint8 or normalised float -> (B, C, T, H, W) in the weights' dtype."""
        if video.dtype == torch.uint8:
            mean, std = clip_pixel_stats(video.device, type(video) is torch.Tensor)  # float32 whatever the weights'
            video = (video.float() - mean) / std
        return video.to(self.patch_embed.weight.dtype).permute(0, 4, 1, 2, 3)

    def token_grid(self, x: torch.Tensor) -> tuple[int, int]:
        """(temporal slices T', spatial grid side) of a (B, C, T, H, W) video."""
        t, p, _ = self.cfg.tubelet
        _, _, T, H, W = x.shape
        if T % t or H % p or H != W:
            raise ValueError(f"video (T={T}, H={H}, W={W}) does not tile into square "
                             f"{self.cfg.tubelet} tubelets")
        return T // t, H // p

    def with_cls(self, x: torch.Tensor, slices: int) -> torch.Tensor:
        """Joint: (B, n, D) -> (B, 1+n, D). Factorized: (B, n, D) -> (B, T', 1+s, D), one CLS
        copy per slice (each slice then attends like the image it came from)."""
        B, n, D = x.shape
        if self.cfg.attention == "factorized":
            x = x.view(B, slices, n // slices, D)
        if self.cls_token is None:
            return x
        cls = self.cls_token.to(x.dtype).expand(*x.shape[:-2], 1, D)
        return torch.cat([cls, x], dim=-2)

    def attention_keywords(self, x: torch.Tensor, slices: int, real: Optional[torch.Tensor],
                           valid: Optional[torch.Tensor], rows: int) -> dict:
        """What every block's attention is told besides the tokens (run_blocks' keywords).
        Whole clips: no mask, only the CLS key's copies (cls_key_copies), so the fused
        kernels, FlashAttention included, can run. Padded clips: padding_bias's mask."""
        if real is not None:
            return {"attn_mask": self.padding_bias(x, masking.to_device(real, x.device), valid, rows)}
        copies = self.cls_key_copies(slices)
        return {"first_key_copies": copies} if copies > 1 else {}

    def packs(self, device: torch.device, split: bool = False) -> bool:
        """Whether a padded batch runs packed (PackedClips) rather than masked (padding_bias):
        video.packing packed, or auto on CUDA. Joint attention only: factorized attention
        keeps its key mask over the padding slices (its spatial attention has no padding).
        split: the clips are split over a sequence group (parallel.sequence), whose
        all-to-all takes rows of clips: masked (the config refuses packing=packed with it)."""
        if self.cfg.attention != "joint" or self.cfg.packing == "masked" or split:
            return False
        return self.cfg.packing == "packed" or torch.device(device).type == "cuda"

    def packed_clips(self, counts: torch.Tensor, real: torch.Tensor, width: int,
                     device: torch.device) -> "PackedClips":
        """The packed layout of a padded batch: row b holds counts[b] kept tokens of content
        (then fillers) among `width`, after the CLS token if there is one, whose key enters
        the clip's keys real[b] times (cls_key_copies per clip). counts, real: (B,) on the CPU."""
        cls = int(self.cls_token is not None)
        copies = real if cls else torch.ones_like(real)
        return PackedClips.of(counts + cls, copies, cls + width, device)

    def cls_key_copies(self, slices: int) -> int:
        """How many times the CLS key and value enter each softmax of joint attention: T'.

        A static video (one frame repeated) holds every patch key T' times but the CLS key
        once. Repeating the CLS key and value T' times in the keys (the queries stay 1+n)
        gives it the weight of T' copies, so every softmax equals the image tower's and a
        static video embeds exactly like its frame (tests/test_model_init.py). Trained CLIP
        CLS tokens act as attention sinks, so without it the equivalence breaks on real
        weights. It is the same softmax as a +ln(T') bias on the CLS key's logits
        (exp(s + ln T') = T' exp(s)), which padding_bias still uses, but it needs no mask:
        an additive mask keeps SDPA off FlashAttention. The cost is T'-1 more keys (2% at
        256 frames with 75% masking) and a copy of each block's q, k, v (Attention). The
        count is a constant of the clip length, independent of the mask. Factorized
        attention has a CLS copy per slice already (with_cls): 1."""
        if self.cls_token is None or self.cfg.attention == "factorized":
            return 1
        return slices

    def padding_bias(self, x: torch.Tensor, real: torch.Tensor, valid: torch.Tensor,
                     rows: int) -> torch.Tensor:
        """The attention mask of a batch with padded clips. Joint: an additive (B, 1, 1, keys)
        bias, -inf on the filler tokens and ln(real slices) on the CLS key (the softmax of
        cls_key_copies per clip, whose count cannot differ between the rows of one batch).
        Factorized: (B, 1, 1, T') True on the slices of content (FactorizedBlock)."""
        if self.cfg.attention == "factorized":
            return (torch.arange(rows, device=x.device)[None] < real[:, None])[:, None, None]
        keys = valid
        if self.cls_token is not None:
            keys = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)  # (B, 1+n)
        bias = torch.zeros(keys.shape, dtype=x.dtype, device=x.device).masked_fill(~keys, float("-inf"))
        if self.cls_token is not None:
            bias[:, 0] = real.to(x.dtype).log()
        return bias[:, None, None]  # (B, 1, 1, keys)

    def pool(self, x: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mean over the visible patch tokens (default) or the CLS token -> (B, D).
        x: joint (B, [1+]n, D) or factorized (B, T', [1+]s, D); valid (B, n): the kept tokens
        of content (None: all), so filler tokens and padding slices are never pooled."""
        if valid is None:
            if self.cls_token is not None:
                cls, x = x[..., 0, :], x[..., 1:, :]  # (B, [T',] D), (B, [T',] n, D)
                if self.cfg.pool == "cls":
                    return cls.mean(1) if cls.dim() == 3 else cls  # factorized: mean of the copies
            return x.flatten(1, -2).mean(1)
        weight = self.content_weight(x, valid)  # (B, [T',] [1+]n)
        if self.cls_token is not None:
            cls, x, cls_weight, weight = x[..., 0, :], x[..., 1:, :], weight[..., 0], weight[..., 1:]
            if self.cfg.pool == "cls":
                return cls if cls.dim() == 2 else weighted_mean(cls, cls_weight)
        return weighted_mean(x.flatten(1, -2), weight.flatten(1))

    def content_weight(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """1 on the tokens of content, 0 on fillers and padding slices, shaped like x
        without its last dimension (CLS tokens count as content)."""
        if x.dim() == 4:  # factorized: a slice is content or padding as a whole
            slices = valid.view(x.shape[0], x.shape[1], -1)[..., 0]  # (B, T')
            return slices[..., None].expand(x.shape[:-1]).to(x.dtype)
        if self.cls_token is not None:
            valid = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)  # (B, 1+n)
        return valid.to(x.dtype)


class PackedClips:
    """A padded batch's tokens of content, every clip's after the last, as one (1, total, D)
    sequence (its CLS token first in each clip): blocks run on it (LayerNorm and MLP act
    per token) and attention stays inside each clip without a mask (transformer.Packed:
    torch's varlen attention on a GPU), so no filler token costs a FLOP and FlashAttention
    can run. Equal to the masked path (padding_bias) up to rounding:
    tests/test_model_packed.py. Which tokens exist comes from the host (masking.padded_counts:
    the valid entries of a row lead it), so packing reads nothing back from the device."""

    def __init__(self, rows: torch.Tensor, batch: int, width: int, attention: Packed):
        self.rows = rows  # (total,) int64 on the device: each packed token's place in the (B * width) rows
        self.batch, self.width = batch, width
        self.attention = attention

    @classmethod
    def of(cls, lengths: torch.Tensor, first_key_copies: torch.Tensor, width: int,
           device: torch.device) -> "PackedClips":
        """lengths (B,): the leading tokens of each `width`-token row that take part, on the CPU."""
        starts = F.pad(lengths.cumsum(0), (1, 0))[:-1]  # (B,)
        clip = torch.repeat_interleave(torch.arange(len(lengths)), lengths)  # (total,)
        rows = clip * width + torch.arange(len(clip)) - starts[clip]  # (total,)
        return cls(masking.to_device(rows, device), len(lengths), width,
                   Packed.of(lengths, first_key_copies, device))

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, width, D) -> (1, total, D)."""
        return x.flatten(0, 1).index_select(0, self.rows)[None]

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(1, total, D) -> (B, width, D), zeros where no token was packed from."""
        D = x.shape[-1]
        return x.new_zeros(self.batch * self.width, D).index_copy(0, self.rows, x[0]).view(self.batch, self.width, D)


def weighted_mean(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(B, N, D), (B, N) -> (B, D): the mean of the rows with weight 1."""
    return (x * weight[..., None]).sum(1) / weight.sum(1, keepdim=True)
