"""The Hugging Face format: `longvivit export CHECKPOINT --hf DIR`.

DIR is what `transformers.AutoModel.from_pretrained(DIR, trust_remote_code=True)` loads
where longvivit is installed, and what `model.push_to_hub(...)` uploads as it is:

    DIR/config.json                 LongViViTConfig: the model config ("longvivit"), the
                                    preprocessing ("preprocess"), the tokenizer's kind and
                                    text length, auto_map naming the two files below
    DIR/model.safetensors           the DualEncoder's weights, under its own names
    DIR/configuration_longvivit.py  the remote-code shims: each imports its class from
    DIR/modeling_longvivit.py       longvivit.use.hf (this file), so the code is longvivit's own
    DIR/tokenizer.model             the run's sentencepiece model (open_clip's BPE ships with open_clip)
    DIR/config.yaml, DIR/run_config.yaml, DIR/preprocess.json   as an export keeps them: DIR is
                                    an export too (longvivit.load, embed and search read it)
    DIR/README.md                   the model card: how to use it, the model, the data, the
                                    run config and the checkpoint's eval numbers

`LongViViTModel.get_video_features(video)` / `get_text_features(input_ids, attention_mask)`
give what Encoder.encode_video / encode_text give (L2-normalised); `tokenize(texts)` makes
the ids and mask with the run's tokenizer. transformers is imported here only, and this
module only by `export --hf` and by the shims.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput, cached_file

from longvivit.config import load_config, to_dict
from longvivit.data.config import DataConfig, shard_streams, with_sources
from longvivit.data.load.tokenizer import make_tokenizer
from longvivit.data.preprocessing import PREPROCESS_FILE, write_preprocess_json
from longvivit.model import build_model, num_params
from longvivit.model.config import ModelConfig
from longvivit.train import checkpoint, export
from longvivit.train.config import RunConfig, check_writable_dir
from longvivit.use.encoder import check_model, preprocess_config

SHIMS = {
    "configuration_longvivit.py": "from longvivit.use.hf import LongViViTConfig  # noqa: F401\n",
    "modeling_longvivit.py": "from longvivit.use.hf import LongViViTConfig, LongViViTModel  # noqa: F401\n",
}
AUTO_MAP = {"AutoConfig": "configuration_longvivit.LongViViTConfig", "AutoModel": "modeling_longvivit.LongViViTModel"}
TOKENIZER_FILE = "tokenizer.model"


class LongViViTConfig(PretrainedConfig):
    model_type = "longvivit"

    def __init__(self, longvivit: dict | None = None, preprocess: dict | None = None,
                 tokenizer: str = "sentencepiece", text_length: int = 64, **kwargs):
        self.longvivit = longvivit or to_dict(ModelConfig())  # the ModelConfig, as a dict
        self.preprocess = preprocess or {}  # PreprocessConfig (longvivit/data/preprocessing.py)
        self.tokenizer, self.text_length = tokenizer, text_length
        super().__init__(**kwargs)


@dataclass
class LongViViTOutput(ModelOutput):
    video_embeds: torch.Tensor | None = None  # (B, E), L2-normalised
    text_embeds: torch.Tensor | None = None  # (B, E), L2-normalised
    logits_per_text: torch.Tensor | None = None  # (Bt, Bv): similarity times the learned scale


class LongViViTModel(PreTrainedModel):
    config_class = LongViViTConfig
    base_model_prefix = "longvivit"  # no such attribute: weights load under their own names
    main_input_name = "video"

    def __init__(self, config: LongViViTConfig):
        super().__init__(config)
        self.cfg = load_config(ModelConfig, config.longvivit)
        dual = build_model(self.cfg)
        # The DualEncoder's parameters under the DualEncoder's names: model.safetensors is
        # then also an export's (longvivit.load, embed and search read this folder as one).
        self.video, self.text, self.logit_scale = dual.video, dual.text, dual.logit_scale
        if self.cfg.loss == "siglip":
            self.logit_bias = dual.logit_bias
        self._tokenizer = None
        self.post_init()

    def _init_weights(self, module) -> None:
        """Nothing: the towers initialise their own weights, and from_pretrained loads all of them."""

    def get_video_features(self, video: torch.Tensor, real_frames: torch.Tensor | None = None) -> torch.Tensor:
        """video (B, T, H, W, 3) uint8 (longvivit.load's preprocess) -> (B, E) normalised:
        DualEncoder.encode_video in eval mode."""
        return F.normalize(self.video(video, 0.0, self.cfg.video.mask_scheme, None, real_frames), dim=-1)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """ids and mask (B, L) (`tokenize`) -> (B, E) normalised."""
        return F.normalize(self.text(input_ids, attention_mask.bool()), dim=-1)

    def forward(self, video: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, real_frames: torch.Tensor | None = None) -> LongViViTOutput:
        v = self.get_video_features(video, real_frames) if video is not None else None
        t = self.get_text_features(input_ids, attention_mask) if input_ids is not None else None
        logits = None
        if v is not None and t is not None:
            scale = self.logit_scale.clamp(max=self.cfg.max_logit_scale).exp()
            logits = scale * t.float() @ v.float().T
        return LongViViTOutput(video_embeds=v, text_embeds=t, logits_per_text=logits)

    def tokenize(self, texts: list[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) of `texts`, as the run tokenized captions."""
        if self._tokenizer is None:
            path = "" if self.config.tokenizer == "open_clip" else cached_file(self.name_or_path, TOKENIZER_FILE)
            self._tokenizer = make_tokenizer(self.config.tokenizer, path)
        return self._tokenizer.encode([texts] if isinstance(texts, str) else list(texts), self.config.text_length)


# ---------------------------------------------------------------------------- writing

def check_hf_args(source: str, out: str) -> RunConfig:
    """The checkpoint or export read (check_model) and the folder written."""
    run = check_model(source, "checkpoint")
    check_writable_dir("--hf", out)
    return run


def write_hf(source: str | Path, out: str | Path) -> Path:
    """The Hugging Face folder of a checkpoint or an export at `out` (made if needed; files
    of the same names replaced), written aside and moved in at the end. Returns `out`."""
    model, run = export.load_any(source)
    out = Path(out)
    with export.written_aside(out, ".hf-tmp") as work:
        _write(work, source, model, run)
    return out


def _write(work: Path, source: str | Path, model, run: RunConfig) -> None:
    preprocess = preprocess_config(source, run)
    config = LongViViTConfig(to_dict(run.model), preprocess.to_json(), run.model.text.tokenizer, run.data.text_length,
                             architectures=["LongViViTModel"], auto_map=AUTO_MAP)
    config.save_pretrained(work)
    tag, step = trained_at(source)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(work / export.WEIGHTS), metadata={"format": "pt", "checkpoint": str(tag or "")})
    (work / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(run.model)))
    for name, text in SHIMS.items():
        (work / name).write_text(text)
    if run.model.text.tokenizer == "sentencepiece":
        shutil.copy2(run.data.tokenizer, work / TOKENIZER_FILE)
    (work / "run_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(run)))
    write_preprocess_json(preprocess, work / PREPROCESS_FILE)
    (work / "README.md").write_text(model_card(run, preprocess.to_json(), eval_line(tag, step), step))


def trained_at(source: str | Path) -> tuple[Path | None, int | None]:
    """(checkpoint tag, step) the weights come from: the tag itself, or the one an export
    names in its weights' metadata; (None, None) when unknown."""
    if not export.is_export(source):
        tag = checkpoint.find_checkpoint(source)
    else:
        with safe_open(str(Path(source) / export.WEIGHTS), framework="pt") as f:
            named = (f.metadata() or {}).get("checkpoint")
        tag = Path(named) if named else None
    return (tag, checkpoint.tag_step(tag)) if tag is not None else (None, None)


def eval_line(tag: Path | None, step: int | None) -> dict | None:
    """The run's eval record at the checkpoint's step (its metrics.jsonl, beside checkpoints/)."""
    metrics = tag.parent.parent / "metrics.jsonl" if tag is not None else None
    if metrics is None or not metrics.is_file():
        return None
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    evals = [x for x in lines if x.get("kind") == "eval" and x.get("step") == step]
    return evals[-1] if evals else None


def training_sources(data: DataConfig) -> str:
    """The run's data sources in one phrase: each one's name, kind, shards and share of the steps."""
    sources = with_sources(data).sources
    total = sum(src.weight for src in sources)
    return ", ".join(f"{src.name} ({src.kind}s, `{', '.join(p for p, _ in shard_streams(src.shards))}`) on "
                     f"{src.weight / total:.0%} of the steps" for src in sources)


def model_card(run: RunConfig, preprocess: dict, evaluation: dict | None, step: int | None) -> str:
    """README.md: hub metadata, how to load it, the model, data, eval numbers and run config."""
    v, t, d = run.model.video, run.model.text, run.data
    params = num_params(run.model)
    metrics = "No evaluation is recorded for this checkpoint (run `longvivit eval` on it)." if evaluation is None \
        else "| metric | value |\n| --- | --- |\n" + "".join(
            f"| {k} | {val:.2f} |\n" if isinstance(val, float) else f"| {k} | {val} |\n"
            for k, val in evaluation.items() if k not in ("kind",))
    return f"""---
library_name: longvivit
pipeline_tag: feature-extraction
tags: [video, video-text-retrieval, contrastive, longvivit]
---
# LongViViT video-text encoder ({run.model.preset}, {v.frames} frames)

A video-first contrastive encoder trained with longvivit, after "A Simple Recipe for Contrastively
Pre-training Video-First Encoders Beyond 16 Frames" ([arXiv 2312.07395](https://arxiv.org/abs/2312.07395)):
a joint space-time ViViT video tower and a {t.arch} text tower in one {run.model.embed_dim}-dimensional space.

## Use

Needs `longvivit` installed (the modeling code is longvivit's own).

```python
from transformers import AutoModel
import longvivit

model = AutoModel.from_pretrained("THIS_FOLDER_OR_REPO", trust_remote_code=True).eval()
_, preprocess, _ = longvivit.load("THIS_FOLDER")          # or: preprocess a video as below
clip = preprocess("video.mp4")                            # (T, S, S, 3) uint8, as training saw clips
video = model.get_video_features(clip.video[None])        # (1, {run.model.embed_dim}), L2-normalised
text = model.get_text_features(*model.tokenize(["a dog catches a frisbee"]))
print(text @ video.T)                                     # cosine similarity
```

Preprocessing (`preprocess.json`): {preprocess["fps"]:g} FPS, short side {preprocess["short_side"]} px,
{preprocess["frames"]} frames by `{preprocess["sampling"]}` sampling, centre crop, {preprocess["image_size"]} px.

## Model

{params / 1e6:.1f}M parameters. Video tower: {v.width} wide, {v.depth} blocks, {v.heads} heads, {v.attention}
attention, tubelets {v.tubelet}, {v.frames} frames of {v.image_size} px, pooling `{v.pool}`. Text tower:
{t.arch}, {t.width} wide, {t.depth} blocks, tokenizer `{t.tokenizer}` ({t.vocab_size} ids), {d.text_length} tokens
per caption. Loss: {run.model.loss}.

## Training data

{training_sources(d)}; held-out shards `{d.val}`;
{run.steps} steps{f" (weights of step {step})" if step is not None else ""}, {d.batch_size} clips per device and
micro-batch, {run.grad_accum} micro-batch(es) per step, mask ratio {v.mask_ratio:g}, {run.precision}.

## Evaluation

Zero-shot retrieval on the held-out shards at step {step if step is not None else "?"} (longvivit's evaluator:
every caption a query; R@k in %):

{metrics}
## Run config

```yaml
{OmegaConf.to_yaml(OmegaConf.structured(run)).rstrip()}
```
"""
