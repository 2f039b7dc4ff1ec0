"""Preset sizes (counted on the meta device) and the analytic FLOPs the trainer's MFU uses."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from longvivit.model import ConfigError, build_model, flops_per_sample, model_config, num_params


def rss_bytes():
    with open("/proc/self/status") as f:
        line = next(l for l in f if l.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_preset_sizes():
    before = rss_bytes()
    sizes = {p: num_params(model_config(p)) for p in ("tiny", "B", "L", "g")}
    video = {p: num_params(model_config(p), "video") for p in ("B", "L")}
    print({**sizes, **{f"{p}.video": n for p, n in video.items()}})
    assert rss_bytes() - before < 200 * 2**20, "counting must not allocate the weights (g is ~4 GB)"
    assert sizes["tiny"] < 5_000_000
    assert 0.95e9 <= sizes["g"] <= 1.10e9
    assert abs(video["B"] / 86e6 - 1) <= 0.05
    assert abs(video["L"] / 307e6 - 1) <= 0.05
    assert sizes["tiny"] < sizes["B"] < sizes["L"] < sizes["g"]


def test_meta_count_equals_the_built_model():
    cfg = model_config("tiny", ["video.attention=factorized", "video.cls_token=true"])
    model = build_model(cfg)
    assert num_params(cfg) == model.num_params() == sum(p.numel() for p in model.parameters())
    assert num_params(cfg, "video") + num_params(cfg, "text") + 1 == num_params(cfg)  # + logit_scale


def test_model_config_overrides_and_errors():
    cfg = model_config("B", ["video.frames=64", "video.mask_ratio=0.75"])
    assert (cfg.video.frames, cfg.video.mask_ratio, cfg.video.width) == (64, 0.75, 768)
    with pytest.raises(ConfigError, match="video.mask_ratio"):
        model_config("tiny", ["video.mask_ratio=1.0"])
    with pytest.raises(ConfigError, match="video.pool"):
        model_config("tiny", ["video.pool=cls"])  # needs cls_token=true
    with pytest.raises(KeyError):
        model_config("XL")


@pytest.mark.parametrize("overrides,ratio", [
    ([], 0.0), ([], 0.75), (["video.cls_token=true"], 0.5),
    (["video.attention=factorized", "video.mask_scheme=tube"], 0.0),
    (["video.attention=factorized", "video.mask_scheme=tube", "video.cls_token=true"], 0.75),
])
def test_flops_match_a_flop_counter(overrides, ratio):
    torch.manual_seed(0)
    cfg = model_config("tiny", overrides + ["video.mask_scheme=tube"])
    model = build_model(cfg)
    video = torch.randint(0, 256, (1, 16, 32, 32, 3), dtype=torch.uint8)
    ids = torch.randint(1, 1000, (1, cfg.text.context_length))
    # the math backend decomposes attention into matmuls the counter sees
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model(video, ids, torch.ones_like(ids, dtype=torch.bool), mask_ratio=ratio)
    forward = flops_per_sample(cfg, ratio) / 3
    assert counter.get_total_flops() == pytest.approx(forward, rel=1e-4)


def test_flops_shrink_with_masking():
    cfg = model_config("B")
    full, masked = flops_per_sample(cfg, 0.0), flops_per_sample(cfg, 0.75)
    assert 1.0e12 < full < 1.2e12  # ViT-B/16 on 8 x 196 tubelets + BERT-medium, fwd + bwd
    assert masked < 0.25 * full  # fewer tokens, and attention is quadratic in them
