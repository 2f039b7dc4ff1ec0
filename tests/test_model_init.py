"""Loading across frames/resolutions, and image-to-video initialisation from open_clip."""
import pytest
import torch
import torch.nn.functional as F

from longvivit.model import build_model, init_from_open_clip, model_config

open_clip = pytest.importorskip("open_clip")


def test_16_frame_state_dict_loads_into_64_frame_48px_model_with_interpolated_positions():
    torch.manual_seed(0)
    src = build_model(model_config("tiny"))  # 8 slices, 4x4 grid
    dst = build_model(model_config("tiny", ["video.frames=64", "video.image_size=48"]))  # 32, 6x6
    fresh_t, fresh_s = dst.video.pos_embed.temporal.clone(), dst.video.pos_embed.spatial.clone()

    dst.load_state_dict(src.state_dict())  # strict: every key matches after resizing

    temporal, spatial = dst.video.pos_embed.temporal, dst.video.pos_embed.spatial
    assert temporal.shape == (32, 128) and spatial.shape == (36, 128)
    src_t, src_s = src.video.pos_embed.temporal, src.video.pos_embed.spatial
    expected_t = F.interpolate(src_t.t()[None], size=32, mode="linear")[0].t()
    expected_s = F.interpolate(src_s.t().reshape(1, 128, 4, 4), size=(6, 6), mode="bicubic")
    assert torch.allclose(temporal, expected_t, atol=1e-6)
    assert torch.allclose(spatial, expected_s.reshape(128, 36).t(), atol=1e-6)
    assert not torch.allclose(temporal, fresh_t) and not torch.allclose(spatial, fresh_s)
    assert torch.allclose(temporal[:2], src_t[:1].expand(2, -1))  # 4x stretch: slice 0 covers 0..3
    assert torch.equal(dst.video.blocks[0].attn.qkv.weight, src.video.blocks[0].attn.qkv.weight)

    video = torch.randint(0, 256, (1, 64, 48, 48, 3), dtype=torch.uint8)
    with torch.no_grad():
        out = dst.eval().encode_video(video, mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 64) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- open_clip

def small_clip(pool_type: str, quick_gelu: bool):
    """An open_clip CLIP with a 32 px, patch-8 ViT image tower, random weights, no download."""
    vision = dict(image_size=32, patch_size=8, width=128, layers=2, head_width=32, pool_type=pool_type)
    text = dict(context_length=8, vocab_size=100, width=32, heads=2, layers=1)
    clip = open_clip.model.CLIP(embed_dim=64, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu)
    with torch.no_grad():  # open_clip's init leaves zero biases and unit norms: perturb them all
        for name, p in clip.visual.named_parameters():
            if p.ndim == 1 and name != "class_embedding":
                p.add_(0.1 * torch.randn_like(p))
        clip.visual.class_embedding.mul_(10)  # a loud CLS token, as trained towers have
    return clip.eval()


CASES = {  # name: (open_clip pool_type, quick_gelu, video overrides)
    "mean-gelu": ("avg", False, []),
    "cls-quickgelu": ("tok", True, ["video.pool=cls", "video.activation=quick_gelu"]),
    "factorized-mean": ("avg", False, ["video.attention=factorized"]),
}


def video_model(overrides):
    cfg = model_config("tiny", ["video.frames=8", "video.depth=2", "video.cls_token=true"] + overrides)
    return build_model(cfg).eval()


@pytest.mark.parametrize("case", CASES)
def test_static_video_embeds_like_the_image_tower(case, tmp_path):
    torch.manual_seed(0)
    pool_type, quick_gelu, overrides = CASES[case]
    clip = small_clip(pool_type, quick_gelu)
    path = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), path)
    model = video_model(overrides)
    summary = init_from_open_clip(model, path)
    assert summary["tensors"] == len(model.video.state_dict())

    frame = torch.randn(2, 32, 32, 3)  # normalised float
    static = frame[:, None].expand(-1, 8, -1, -1, -1)  # (B, T, H, W, C), 4 temporal slices
    with torch.no_grad():
        image = clip.encode_image(frame.permute(0, 3, 1, 2))  # (B, 64)
        video = model.encode_video(static, mask_ratio=0.0)
        still = model.encode_video(frame[:, None], mask_ratio=0.0)  # T = 1: an image
    cosine = F.cosine_similarity(image, video).min().item()
    print(f"{case}: static-video cosine {cosine:.7f}")
    assert cosine >= 0.999
    assert torch.allclose(image, video, atol=1e-4, rtol=1e-3)
    # an image beside the videos takes the image tower's own path
    assert torch.allclose(image, still, atol=1e-4, rtol=1e-3)


def test_the_cls_key_copies_are_what_makes_the_match_exact(tmp_path, monkeypatch):
    torch.manual_seed(0)
    clip = small_clip("avg", False)
    path = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), path)
    model = video_model([])
    init_from_open_clip(model, path)
    monkeypatch.setattr(model.video, "cls_key_copies", lambda slices: 1)  # the CLS key once
    frame = torch.randn(2, 32, 32, 3)
    with torch.no_grad():
        image = clip.encode_image(frame.permute(0, 3, 1, 2))
        video = model.encode_video(frame[:, None].expand(-1, 8, -1, -1, -1), mask_ratio=0.0)
    print(f"without the CLS key copies: cosine {F.cosine_similarity(image, video).min().item():.5f}")
    assert not torch.allclose(image, video, atol=1e-4, rtol=1e-3)


def test_kernel_inflation_positions_and_safetensors_visual_only_file(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    clip = small_clip("avg", False)
    path = tmp_path / "visual.safetensors"
    save_file({k: v.contiguous() for k, v in clip.visual.state_dict().items()}, str(path))
    model = video_model(["video.image_size=48"])  # another resolution: spatial table resized
    assert init_from_open_clip(model, path)["resized_positions"]
    kernel = model.video.patch_embed.weight  # (D, 3, 2, 8, 8)
    assert torch.allclose(kernel.sum(2), clip.visual.conv1.weight, atol=1e-6)
    assert torch.equal(kernel[:, :, 0], kernel[:, :, 1])
    assert torch.count_nonzero(model.video.pos_embed.temporal) == 0
    assert model.video.pos_embed.spatial.shape == (36, 128)


def test_mismatched_towers_are_refused_with_the_reason(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "clip.pt"
    torch.save(small_clip("avg", False).state_dict(), path)
    with pytest.raises(ValueError, match="depth"):
        init_from_open_clip(video_model(["video.depth=3"]), path)
    with pytest.raises(ValueError, match="patch"):
        init_from_open_clip(video_model(["video.tubelet=[2,4,4]"]), path)
    with pytest.warns(UserWarning, match="no CLS token"):
        init_from_open_clip(video_model(["video.cls_token=false"]), path)


# ----------------------------------------------------------------------------- both towers

CLIP_TEXT = ["text.arch=clip", "text.tokenizer=open_clip", "text.vocab_size=49408"]


def perturb(module: torch.nn.Module) -> None:
    """open_clip's init leaves zero biases and unit norms; random weights should not."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and name != "class_embedding":
                p.add_(0.1 * torch.randn_like(p))


def both_towers_agree(clip, model, path, frames, size, length):
    from longvivit.data.load.tokenizer import make_tokenizer

    summary = init_from_open_clip(model, path)
    assert summary["text"] and summary["logit_scale"]
    captions = ["a red circle moves up", "two blue squares spin", "a green triangle shrinks slowly"]
    ids, mask = make_tokenizer("open_clip").encode(captions, length)
    frame = torch.randn(2, size, size, 3)  # normalised float
    static = frame[:, None].expand(-1, frames, -1, -1, -1)  # one frame repeated
    with torch.no_grad():
        image = clip.encode_image(frame.permute(0, 3, 1, 2), normalize=True)  # (2, E)
        text_ref = clip.encode_text(open_clip.tokenize(captions, context_length=length), normalize=True)
        video = model.encode_video(static, mask_ratio=0.0, normalize=True)
        text = model.encode_text(ids, mask, normalize=True)
        scale = model.logit_scale.exp()
    assert F.cosine_similarity(text, text_ref).min().item() >= 0.9999
    assert F.cosine_similarity(video, image).min().item() >= 0.9999
    logits, logits_ref = scale * text @ video.t(), clip.logit_scale.exp() * text_ref @ image.t()
    assert torch.allclose(logits, logits_ref, atol=1e-3, rtol=1e-4), (logits, logits_ref)


def test_both_towers_and_temperature_from_a_small_clip(tmp_path):
    torch.manual_seed(0)
    vision = dict(image_size=32, patch_size=8, width=128, layers=2, head_width=32, pool_type="tok")
    text = dict(context_length=12, vocab_size=49408, width=32, heads=2, layers=2)
    clip = open_clip.model.CLIP(embed_dim=64, vision_cfg=vision, text_cfg=text, quick_gelu=True)
    perturb(clip)
    with torch.no_grad():
        clip.visual.class_embedding.mul_(10)
        clip.logit_scale.fill_(3.1)
    path = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), path)
    model = build_model(model_config("tiny", [
        "video.frames=4", "video.depth=2", "video.cls_token=true", "video.pool=cls",
        "video.activation=quick_gelu", *CLIP_TEXT, "text.context_length=12", "text.width=32",
        "text.heads=2", "text.depth=2", "text.activation=quick_gelu"])).eval()
    both_towers_agree(clip.eval(), model, path, frames=4, size=32, length=12)
    assert model.logit_scale.item() == pytest.approx(3.1)


def test_both_towers_from_vit_b_16(tmp_path):
    """open_clip's ViT-B-16 architecture (random weights, built here): the B preset with a
    CLIP text tower takes every tensor, and a static video scores captions as the image."""
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-16", pretrained=None)
    perturb(clip)
    path = tmp_path / "vit_b_16.pt"
    torch.save(clip.state_dict(), path)
    model = build_model(model_config("B", [
        "video.frames=2", "video.cls_token=true", "video.pool=cls", *CLIP_TEXT,
        "text.context_length=77", "text.width=512", "text.heads=8", "text.depth=12"])).eval()
    both_towers_agree(clip.eval(), model, path, frames=2, size=224, length=77)


def test_a_bert_text_tower_is_left_fresh_and_a_clip_one_needs_open_clips_vocabulary(tmp_path):
    from longvivit.config import ConfigError

    torch.manual_seed(0)
    path = tmp_path / "clip.pt"
    torch.save(small_clip("avg", False).state_dict(), path)
    model = video_model([])
    before = {k: v.clone() for k, v in model.text.state_dict().items()}
    summary = init_from_open_clip(model, path)
    assert not summary["text"] and summary["logit_scale"]
    assert all(torch.equal(v, model.text.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ConfigError, match="text.tokenizer: arch=clip"):
        model_config("tiny", ["text.arch=clip"])
    with pytest.raises(ConfigError, match="text.vocab_size: 32000: open_clip's BPE has 49408 ids"):
        model_config("tiny", ["text.arch=clip", "text.tokenizer=open_clip", "text.vocab_size=32000"])
