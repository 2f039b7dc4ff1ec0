"""longvivit.model: plain-PyTorch video and text towers, masking, contrastive loss, presets.

    from longvivit.model import build_model, model_config
    model = build_model(model_config("tiny", ["video.mask_ratio=0.75"]))
    loss, metrics = model(video, text_ids, text_mask)   # video (B, T, H, W, C) uint8
"""
from longvivit.config import ConfigError, load_config
from longvivit.model.config import ModelConfig, TextConfig, VideoConfig
from longvivit.model.dual import DualEncoder, build_model
from longvivit.model.init import init_from_open_clip
from longvivit.model.loss import ContrastiveLoss, SigLipLoss
from longvivit.model.masking import sample_visible, visible_count
from longvivit.model.memory import saved_bytes
from longvivit.model.presets import PRESETS, flops_per_sample, model_config, num_params

__all__ = [
    "ConfigError", "ModelConfig", "TextConfig", "VideoConfig", "load_config",
    "DualEncoder", "build_model", "init_from_open_clip", "ContrastiveLoss", "SigLipLoss",
    "sample_visible", "visible_count", "saved_bytes",
    "PRESETS", "flops_per_sample", "model_config", "num_params",
]
