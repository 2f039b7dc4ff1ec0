"""Image-to-video initialisation from an open_clip ViT image tower saved as a state dict.

    init_from_open_clip(model, "ViT-B-16.pt")   # before the engine shards the model

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
(see VideoEncoder.cls_bias). Without a CLS token the image's class token is dropped and
the match is only approximate: trained CLIP towers use it as an attention sink.
Only the video tower is initialised; the text tower is BERT-style and starts fresh.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .video import FactorizedBlock, VideoEncoder, resize_spatial

BLOCK_RENAMES = {
    "ln_1": "norm1", "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj.weight": "attn.proj.weight", "attn.out_proj.bias": "attn.proj.bias",
    "ln_2": "norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}


def load_image_tower(path: str | Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The visual tower's tensors from an open_clip file, keys as in VisionTransformer.
    mmap: map a torch.save zip file instead of reading it (the trainer's config check reads
    only the keys)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        import zipfile

        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    state = state.get("state_dict", state)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    if "conv1.weight" not in state:
        raise ValueError(f"{path}: no open_clip ViT image tower (conv1.weight) in it")
    return state


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
        "pos_embed.temporal": torch.zeros_like(video.pos_embed.temporal, device="cpu"),
        "norm.weight": image.pop("ln_post.weight"), "norm.bias": image.pop("ln_post.bias"),
        "head.weight": image.pop("proj").t(),  # (E, D)
    }
    _expect(out["head.weight"].shape == video.head.weight.shape,
            f"image projection {tuple(out['head.weight'].shape)} != video head "
            f"{tuple(video.head.weight.shape)} (embed_dim)")
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
    depth = len({k.split(".")[2] for k in image if k.startswith("transformer.resblocks.")})
    _expect(depth == len(video.blocks), f"image depth {depth} != video depth {len(video.blocks)}")
    out = {}
    for i, block in enumerate(video.blocks):
        src = f"transformer.resblocks.{i}."
        for key in [k for k in image if k.startswith(src)]:
            name = key[len(src):]
            old = next((o for o in BLOCK_RENAMES if name == o or name.startswith(o + ".")), None)
            _expect(old is not None, f"unsupported open_clip block parameter {key}")
            out[f"blocks.{i}.{BLOCK_RENAMES[old]}{name[len(old):]}"] = image.pop(key)
        if isinstance(block, FactorizedBlock):  # temporal attention starts as the spatial one
            for a, b in (("norm1", "temporal_norm"), ("attn", "temporal_attn")):
                for key in [k for k in out if k.startswith(f"blocks.{i}.{a}.")]:
                    out[key.replace(f".{a}.", f".{b}.", 1)] = out[key].clone()
            out[f"blocks.{i}.temporal_gate"] = torch.zeros(1)
    return out


def init_from_open_clip(model: torch.nn.Module, path: str | Path) -> dict:
    """Initialise the video tower of `model` (a DualEncoder or a VideoEncoder) from the
    open_clip image tower in `path`. Every video parameter is set (strict load).
    Returns a summary: tensors loaded and whether the spatial table was resized."""
    video = model.video if hasattr(model, "video") else model
    image = load_image_tower(path)
    state = video_state_from_image(image, video)
    video.load_state_dict(state, strict=True)
    grid = video.cfg.image_size // video.cfg.tubelet[1]
    return {"tensors": len(state), "resized_positions": image["positional_embedding"].shape[0] != grid * grid + 1}


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"init_from_open_clip: {msg}")
