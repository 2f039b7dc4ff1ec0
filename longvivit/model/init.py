"""Image-to-video initialisation from an open_clip ViT image tower saved as a state dict.

    init_from_open_clip(model, "ViT-B-16.pt")   # before the engine wraps the model

The file may hold a whole open_clip CLIP model ("visual." keys), the visual tower alone,
or a training checkpoint ({"state_dict": ...}, "module." prefixes); .safetensors works too.

  conv1 (D, 3, p, p)        -> tubelet kernel (D, 3, t, p, p): repeated over time and divided
                               by t, so a static video gives each tubelet its frame's patch
                               embedding
  positional_embedding[1:]  -> spatial table (bicubic-resized to another grid); the temporal
                               table starts at zero
  class_embedding + pos[0]  -> cls_token (when the video model keeps one: cls_token=true)
  ln_pre, resblocks, ln_post, proj -> ln_pre, blocks, norm, head (renames; proj transposed)
  factorized attention: each temporal attention copies its block's spatial one, gate a = 0

With cls_token=true and matching pooling (pool=mean <-> open_clip pool_type='avg',
pool=cls <-> 'tok') a static video embeds exactly like the image tower embeds its frame
(see VideoEncoder.cls_key_copies). Without a CLS token the image's class token is dropped and
the match is only approximate: trained CLIP towers use it as an attention sink.

A whole CLIP model also initialises the text tower when the model's is open_clip's
(text.arch=clip): token_embedding, positional_embedding (its first context_length rows),
resblocks, ln_final, text_projection -> token_embed, pos_embed, blocks, norm, head; and
the temperature (logit_scale) and, for SigLIP, logit_bias. A BERT-style text tower has no
CLIP counterpart and starts fresh.
"""
from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from longvivit.model.text import ClipTextEncoder
from longvivit.model.transformer import full_shape
from longvivit.model.video import FactorizedBlock, VideoEncoder, resize_spatial

BLOCK_RENAMES = {
    "ln_1": "norm1", "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj.weight": "attn.proj.weight", "attn.out_proj.bias": "attn.proj.bias",
    "ln_2": "norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}


def load_open_clip(path: str | Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of an open_clip file, without "state_dict" nesting or "module." prefixes.
    mmap: map a torch.save zip file instead of reading it (the trainer's config check reads
    only the keys)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    state = state.get("state_dict", state)
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_image_tower(path: str | Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The visual tower's tensors from an open_clip file, keys as in VisionTransformer."""
    return image_part(load_open_clip(path, mmap), path)


def image_part(state: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    if "conv1.weight" not in state:
        raise ValueError(f"{path}: no open_clip ViT image tower (conv1.weight) in it")
    return state


def text_part(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text tower's tensors of a whole CLIP state dict (CLIP keeps them at the top,
    CustomTextCLIP under "text."), keys as in TextTransformer; {} when there are none."""
    if any(k.startswith("text.") for k in state):
        state = {k[len("text."):]: v for k, v in state.items() if k.startswith("text.")}
    if "token_embedding.weight" not in state:
        return {}
    return {k: v for k, v in state.items() if not k.startswith(("visual.", "logit_"))}


def video_state_from_image(image: dict[str, torch.Tensor], video: VideoEncoder) -> dict[str, torch.Tensor]:
    """Map an open_clip VisionTransformer state dict onto `video`'s parameter names."""
    cfg = video.cfg
    t, p, _ = cfg.tubelet
    image = dict(image)
    conv = image.pop("conv1.weight")  # (D, 3, p, p)
    _expect(conv.shape[0] == cfg.width, f"image width {conv.shape[0]} != video width {cfg.width}")
    _expect(conv.shape[-1] == p, f"image patch {conv.shape[-1]} != tubelet patch {p}; "
            f"set model.video.tubelet=[{t},{conv.shape[-1]},{conv.shape[-1]}]")
    pos = image.pop("positional_embedding")  # (1 + S, D)
    cls = image.pop("class_embedding")  # (D,)
    out = {
        "patch_embed.weight": conv[:, :, None].repeat(1, 1, t, 1, 1) / t,  # (D, 3, t, p, p)
        "pos_embed.spatial": resize_spatial(pos[1:], cfg.image_size // p),
        "pos_embed.temporal": torch.zeros(full_shape(video.pos_embed.temporal)),
        "norm.weight": image.pop("ln_post.weight"), "norm.bias": image.pop("ln_post.bias"),
        "head.weight": image.pop("proj").t(),  # (E, D)
    }
    _expect(out["head.weight"].shape == full_shape(video.head.weight),
            f"image projection {tuple(out['head.weight'].shape)} != video head "
            f"{tuple(full_shape(video.head.weight))} (embed_dim)")
    if video.cls_token is not None:
        out["cls_token"] = cls + pos[0]
    else:
        warnings.warn("video model has no CLS token: the image tower's class token is dropped, "
                      "so video embeddings only approximate the image tower's (set video.cls_token=true)")
    has_ln_pre = "ln_pre.weight" in image
    _expect(has_ln_pre == cfg.ln_pre, f"image tower ln_pre={has_ln_pre} but video ln_pre={cfg.ln_pre}")
    if has_ln_pre:
        out["ln_pre.weight"], out["ln_pre.bias"] = image.pop("ln_pre.weight"), image.pop("ln_pre.bias")
    out.update(_blocks(image, video))
    _expect(not image, f"open_clip tower parts with no video counterpart: {sorted(image)[:6]}")
    return out


def _blocks(image: dict[str, torch.Tensor], video: VideoEncoder) -> dict[str, torch.Tensor]:
    """resblocks.i.* -> blocks.i.*, consuming the keys from `image`."""
    out = _resblocks(image, video.blocks, "image", "video")
    for i, block in enumerate(video.blocks):
        if isinstance(block, FactorizedBlock):  # temporal attention starts as the spatial one
            for a, b in (("norm1", "temporal_norm"), ("attn", "temporal_attn")):
                for key in [k for k in out if k.startswith(f"blocks.{i}.{a}.")]:
                    out[key.replace(f".{a}.", f".{b}.", 1)] = out[key].clone()
            out[f"blocks.{i}.temporal_gate"] = torch.zeros(1)
    return out


def _resblocks(state: dict[str, torch.Tensor], blocks, source: str, target: str) -> dict[str, torch.Tensor]:
    """open_clip's transformer.resblocks.i.* -> blocks.i.*, consuming the keys from `state`."""
    depth = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
    _expect(depth == len(blocks), f"{source} depth {depth} != {target} depth {len(blocks)}")
    out = {}
    for i in range(depth):
        src = f"transformer.resblocks.{i}."
        for key in [k for k in state if k.startswith(src)]:
            name = key[len(src):]
            old = next((o for o in BLOCK_RENAMES if name == o or name.startswith(o + ".")), None)
            _expect(old is not None, f"unsupported open_clip block parameter {key}")
            out[f"blocks.{i}.{BLOCK_RENAMES[old]}{name[len(old):]}"] = state.pop(key)
    return out


def text_state_from_clip(text: dict[str, torch.Tensor], tower: ClipTextEncoder) -> dict[str, torch.Tensor]:
    """Map an open_clip TextTransformer state dict onto a ClipTextEncoder's names."""
    text = dict(text)
    token = text.pop("token_embedding.weight")  # (V, D)
    _expect(tuple(token.shape) == tuple(full_shape(tower.token_embed.weight)),
            f"text token_embedding {tuple(token.shape)} != model (vocab_size, width) "
            f"{tuple(full_shape(tower.token_embed.weight))}")
    pos = text.pop("positional_embedding")  # (77, D)
    L = tower.cfg.context_length
    _expect(pos.shape[0] >= L, f"CLIP context length {pos.shape[0]} < text.context_length {L}")
    proj = text.pop("text_projection")  # (D, E) parameter, or a Linear's (E, D) weight
    head = full_shape(tower.head.weight)
    proj = proj.t() if proj.shape == head[::-1] else proj
    out = {"token_embed.weight": token, "pos_embed": pos[:L], "head.weight": proj,
           "norm.weight": text.pop("ln_final.weight"), "norm.bias": text.pop("ln_final.bias")}
    _expect(out["head.weight"].shape == head,
            f"text projection {tuple(proj.shape)} != text head {tuple(head)} (embed_dim)")
    out.update(_resblocks(text, tower.blocks, "text", "model text"))
    text.pop("attn_mask", None)  # a buffer older open_clip versions saved
    _expect(not text, f"open_clip text parts with no counterpart: {sorted(text)[:6]}")
    return out


def init_from_open_clip(model: torch.nn.Module, path: str | Path) -> dict:
    """Initialise `model` (a DualEncoder or a VideoEncoder) from the open_clip file `path`:
    the video tower always (every parameter); a DualEncoder's CLIP-style text tower (every
    parameter), temperature and SigLIP bias too when the file holds a whole CLIP model.
    Returns a summary: video tensors loaded, whether the spatial table was resized, what
    else. (A model deepspeed.zero.Init partitioned loads open_clip_state another way,
    longvivit/train/construct.py.)"""
    state, summary = open_clip_state(model, path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    check_loaded(model, state, missing, unexpected)
    return summary


def open_clip_state(model: torch.nn.Module, path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(the entries of `model`'s state dict that the open_clip file `path` gives, the
    summary init_from_open_clip returns). Reads `path` memory-mapped where torch.load can
    (a torch.save zip file): no copy of the whole file is made, tensors come in as used."""
    video = model.video if hasattr(model, "video") else model
    prefix = "video." if video is not model else ""
    source = load_open_clip(path, mmap=True)
    image = image_part(source, path)
    state = {prefix + k: v for k, v in video_state_from_image(image, video).items()}
    grid = video.cfg.image_size // video.cfg.tubelet[1]
    summary = {"tensors": len(state),
               "resized_positions": image["positional_embedding"].shape[0] != grid * grid + 1,
               "text": False, "logit_scale": False, "logit_bias": False}
    if video is not model:
        text = text_part(source)
        if text and isinstance(model.text, ClipTextEncoder):
            state.update({"text." + k: v for k, v in text_state_from_clip(text, model.text).items()})
            summary["text"] = True
        for name in ("logit_scale", "logit_bias"):
            if name in source and hasattr(model, name):
                state[name] = source[name].reshape(1)  # open_clip's are 0-dim
                summary[name] = True
    return state, summary


def check_loaded(model: torch.nn.Module, state: dict, missing: list[str], unexpected: list[str]) -> None:
    """After loading open_clip_state(model, ...): nothing was left over, and every
    parameter of each tower the file initialised came from it."""
    towers = [t for t in ("video.", "text.") if any(k.startswith(t) for k in state)]
    towers = towers if hasattr(model, "video") else [""]  # a VideoEncoder: all of it
    incomplete = [k for k in missing if any(k.startswith(t) for t in towers)]
    _expect(not incomplete and not unexpected,
            f"parameters not in the file: {incomplete[:6]}; file tensors with no parameter: {unexpected[:6]}")


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"init_from_open_clip: {msg}")
