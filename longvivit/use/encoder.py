"""`longvivit.load`: a trained encoder, its preprocessing and its tokenizer, in one call.

    model, preprocess, tokenizer = longvivit.load("runs/exp1-export")   # or a run / checkpoint dir
    v = model.encode_video(["a.mp4", "b.webm"])          # (2, E), L2-normalised, float32
    t = model.encode_text(["a dog catches a frisbee"])   # (1, E)
    scores = t @ v.T

As open_clip's create_model_and_transforms + get_tokenizer: `model` (an Encoder) holds the
DualEncoder in eval mode on the device; `preprocess(path | bytes | array)` is the clip as
training and eval see it (preprocess.py); `tokenizer(texts)` gives the ids and mask the run
tokenized captions with (its sentencepiece model or open_clip's BPE, at data.text_length).
`encode_video` / `encode_text` take lists (decoded and tokenized here, batch by batch) or
tensors already made by preprocess / tokenizer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from longvivit.config import ConfigError, load_config
from longvivit.data.load.tokenizer import make_tokenizer
from longvivit.data.preprocessing import PREPROCESS_FILE, PreprocessConfig, config_for, read_preprocess_json
from longvivit.model.config import ModelConfig
from longvivit.model.dual import DualEncoder
from longvivit.train import checkpoint, export
from longvivit.train.config import RunConfig, check_tokenizer_file
from longvivit.use.preprocess import Clip, Preprocess, Source


class TextTokenizer:
    """texts -> (ids (B, L) int64, mask (B, L) bool), L = the run's data.text_length."""

    def __init__(self, kind: str, path: str, length: int):
        self.inner, self.length = make_tokenizer(kind, path), length

    def __call__(self, texts: Sequence[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.encode([texts] if isinstance(texts, str) else list(texts), self.length)


class Encoder(nn.Module):
    """A trained DualEncoder with the preprocessing and tokenizer it was trained with."""

    def __init__(self, model: DualEncoder, preprocess: Preprocess, tokenizer: TextTokenizer):
        super().__init__()
        self.model, self.preprocess, self.tokenizer = model.eval(), preprocess, tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def embed_dim(self) -> int:
        return self.model.cfg.embed_dim

    @torch.no_grad()
    def encode_video(self, videos: Sequence[Source | Clip] | torch.Tensor, batch_size: int = 8,
                     real_frames: torch.Tensor | None = None, normalize: bool = True) -> torch.Tensor:
        """(N, E) float32 on the model's device. videos: sources (paths, bytes, uint8
        arrays) or Clips, preprocessed here batch by batch; or a (B, T, S, S, 3) uint8
        tensor (with `real_frames` (B,) when clips are padded)."""
        if isinstance(videos, torch.Tensor):
            return self._video_batch(videos, real_frames, normalize)
        out = []
        for i in range(0, len(videos), batch_size):
            clips = [v if isinstance(v, Clip) else self.preprocess(v) for v in videos[i:i + batch_size]]
            video = torch.stack([c.video for c in clips])
            out.append(self._video_batch(video, torch.tensor([c.real_frames for c in clips]), normalize))
        return torch.cat(out) if out else torch.empty(0, self.embed_dim, device=self.device)

    def _video_batch(self, video: torch.Tensor, real_frames: torch.Tensor | None, normalize: bool) -> torch.Tensor:
        # real_frames stays on the CPU: the model reads it on the host (DualEncoder.encode_video)
        real = None if real_frames is None else real_frames.cpu()
        return self.model.encode_video(video.to(self.device), mask_ratio=0.0, normalize=normalize,
                                       real_frames=real).float()

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str] | tuple[torch.Tensor, torch.Tensor], batch_size: int = 256,
                    normalize: bool = True) -> torch.Tensor:
        """(N, E) float32 on the model's device. texts: strings (tokenized here) or the
        (ids, mask) a tokenizer made."""
        if isinstance(texts, tuple):
            ids, mask = texts
            return self.model.encode_text(ids.to(self.device), mask.to(self.device), normalize=normalize).float()
        out = [self.encode_text(self.tokenizer(texts[i:i + batch_size]), normalize=normalize)
               for i in range(0, len(texts), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.embed_dim, device=self.device)

    def forward(self, video: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_video(video), self.encode_text((ids, mask))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def preprocess_config(path: str | Path, run: RunConfig) -> PreprocessConfig:
    """An export's preprocess.json, else the run's data config and shards (config_for)."""
    stored = Path(path) / PREPROCESS_FILE
    return read_preprocess_json(stored) if stored.is_file() else config_for(run.data)


def load(path: str | Path, device: str | torch.device | None = None,
         threads: int = 1) -> tuple[Encoder, Preprocess, TextTokenizer]:
    """(model, preprocess, tokenizer) of an export directory, a run directory, its
    checkpoints directory or one checkpoint tag (the newest complete one), the model in
    eval mode on `device` (default: the GPU when there is one). `threads`: DALI's resize
    threads in preprocess."""
    model, run = export.load_any(path)
    preprocess = Preprocess(preprocess_config(path, run), threads)
    tokenizer = TextTokenizer(run.model.text.tokenizer, run.data.tokenizer, run.data.text_length)
    encoder = Encoder(model, preprocess, tokenizer).to(torch.device(device) if device else default_device())
    return encoder, preprocess, tokenizer


def check_model(path: str, key: str) -> RunConfig:
    """What `load(path)` reads, checked without building the model: an export or complete
    checkpoint with whole files, configs that load, weights that fit them, and the run's
    tokenizer. Returns the run config; ConfigError naming `key` otherwise."""
    source = export.checked_source(path, key)
    folder = source.parent if source.name == export.WEIGHTS else source
    stored = "run_config.yaml" if source.name == export.WEIGHTS else checkpoint.CONFIG_FILE
    run = _stored_config(RunConfig, folder / stored, key)
    model_cfg = _stored_config(ModelConfig, folder / "config.yaml", key) if source.name == export.WEIGHTS else run.model
    export.check_fits(source, model_cfg, key)
    kept = folder / "tokenizer.model"
    run.data.tokenizer = str(kept) if source.name == export.WEIGHTS and kept.is_file() else run.data.tokenizer
    check_tokenizer_file(f"{key} (its tokenizer)", model_cfg.text.tokenizer, run.data.tokenizer)
    return run


def _stored_config(schema, path: Path, key: str):
    try:
        return load_config(schema, path)
    except ConfigError as err:  # load_yaml's own errors name the file already
        raise ConfigError(f"{key}: {path}: {str(err).removeprefix(f'config: {path}: ')}") from None
