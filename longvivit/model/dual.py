"""DualEncoder: video tower + text tower + learnable temperature (and, for SigLIP, bias) + loss.

One nn.Module holds everything the engine trains, so DeepSpeed wraps a single module and
`forward(video, text_ids, text_mask)` returns the loss and a metrics dict.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from longvivit.distributed.sequence import SequenceShard
from longvivit.model.config import ModelConfig
from longvivit.model.loss import ContrastiveLoss, SigLipLoss
from longvivit.model.text import build_text_tower
from longvivit.model.transformer import full_shape, init_generator
from longvivit.model.video import VideoEncoder


@dataclass
class Negatives:
    """The embeddings (float32, normalised, no gradient) of all micro-batches of an optimizer
    step, and where the micro-batch being run starts among them. temperature_grad: whether
    this pass carries the temperature's (and SigLIP bias's) gradient; exactly one of the
    step's passes does, so their sum is the gradient of the one loss."""

    video: torch.Tensor  # (k*m, E)
    text: torch.Tensor  # (k*m, E)
    start: int
    temperature_grad: bool

    def around(self, v: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(k*m, E) twice: the cached rows with this micro-batch's (with gradient) in place."""
        end = self.start + v.shape[0]
        return (torch.cat([self.video[: self.start], v, self.video[end:]]),
                torch.cat([self.text[: self.start], t, self.text[end:]]))


class DualEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        generator = init_generator()  # both towers draw their initial weights from it, in turn
        self.video = VideoEncoder(cfg.video, cfg.embed_dim, generator)
        self.text = build_text_tower(cfg.text, cfg.embed_dim, generator)
        # 1-D, not 0-dim: DeepSpeed (and FSDP) cannot broadcast or partition 0-dim parameters
        self.logit_scale = nn.Parameter(torch.full((1,), float(cfg.init_logit_scale)))
        if cfg.loss == "siglip":  # only then: an InfoNCE checkpoint keeps its parameter set
            self.logit_bias = nn.Parameter(torch.full((1,), float(cfg.init_logit_bias)))
            self.loss = SigLipLoss()
        else:
            self.loss = ContrastiveLoss(cfg.gather)

    def encode_video(self, video: torch.Tensor, mask_ratio: Optional[float] = None,
                     mask_scheme: Optional[str] = None, generator: Optional[torch.Generator] = None,
                     normalize: bool = False, real_frames: Optional[torch.Tensor] = None,
                     sequence: Optional[SequenceShard] = None) -> torch.Tensor:
        """video (B, T, H, W, C), uint8 or normalised float -> (B, E).
        mask_ratio None: the config's ratio while training, 0 in eval mode. real_frames (B,):
        the leading frames of each clip that are content (the rest is padding: dropped); on
        the CPU it costs no host sync, on a GPU one (VideoEncoder.forward). sequence: this
        rank's place in its sequence group (parallel.sequence; VideoEncoder.forward)."""
        if mask_ratio is None:
            mask_ratio = self.cfg.video.mask_ratio if self.training else 0.0
        x = self.video(video, mask_ratio, mask_scheme or self.cfg.video.mask_scheme, generator, real_frames,
                       sequence)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """ids (B, L) int64, mask (B, L) bool True = real token -> (B, E)."""
        x = self.text(ids, mask)
        return F.normalize(x, dim=-1) if normalize else x

    def embed(self, video: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
              mask_ratio: Optional[float] = None, generator: Optional[torch.Generator] = None,
              real_frames: Optional[torch.Tensor] = None,
              sequence: Optional[SequenceShard] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair's L2-normalised embeddings in float32: (video (B, E), text (B, E))."""
        v = self.encode_video(video, mask_ratio, generator=generator, normalize=True, real_frames=real_frames,
                              sequence=sequence)
        t = self.encode_text(text_ids, text_mask, normalize=True)
        # logits and softmax/sigmoid in float32 even when the towers run in bf16/fp16
        return v.float(), t.float()

    def forward(self, video: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
                mask_ratio: Optional[float] = None, generator: Optional[torch.Generator] = None,
                real_frames: Optional[torch.Tensor] = None, negatives: Optional[Negatives] = None,
                sequence: Optional[SequenceShard] = None):
        """-> (loss, metrics). The loss is over the global batch when a process group is
        initialised (see loss.py). negatives: this batch's embeddings go in at
        negatives.start among the other micro-batches' (the growing-negatives
        accumulation, longvivit/train/accumulate.py), and the loss is over all of them.
        sequence: the video tower splits each clip over this rank's sequence group
        (parallel.sequence); the loss then gathers over its data group (loss.world)."""
        v, t = self.embed(video, text_ids, text_mask, mask_ratio, generator, real_frames, sequence)  # (B, E) twice
        temperature = self.logit_scale, getattr(self, "logit_bias", None)
        if negatives is not None:
            v, t = negatives.around(v, t)
            if not negatives.temperature_grad:
                temperature = tuple(p.detach() if p is not None else None for p in temperature)
        scale = temperature[0].clamp(max=self.cfg.max_logit_scale).exp()
        bias = (temperature[1].float(),) if self.cfg.loss == "siglip" else ()
        loss, logits, labels = self.loss(v, t, scale.float(), *bias)
        metrics = {
            "loss": loss.detach(),
            "logit_scale": scale.detach().squeeze(0),
            "v2t_acc": (logits.argmax(1) == labels).float().mean().detach(),  # local rows, global batch
        }
        if bias:
            metrics["logit_bias"] = bias[0].detach().squeeze(0)
        return loss, metrics

    # ------------------------------------------------------------------ trainer hooks

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def set_grad_checkpointing(self, blocks: int | bool = True) -> None:
        """int n: checkpoint the first n video blocks. True: every block of both towers.
        False / 0: none."""
        self.video.set_grad_checkpointing(blocks)
        self.text.set_grad_checkpointing(blocks is True)

    def no_weight_decay(self) -> set[str]:
        """Parameter names to exclude from weight decay: biases, norms, position and CLS
        embeddings, the temporal gates and the temperature."""
        named = ("pos_embed", "cls_token", "logit_scale", "temporal_gate")
        return {name for name, p in self.named_parameters()  # full_shape: also under ZeRO-3
                if len(full_shape(p)) <= 1 or any(part in name for part in named)}


def build_model(cfg: ModelConfig) -> DualEncoder:
    """A model from a typed config, with the config's grad checkpointing and freezing."""
    return DualEncoder(cfg)
