"""Shapes, gradients to every parameter, no NaN: joint and factorized, masked and unmasked."""
import pytest
import torch

from longvivit.model import build_model, model_config


def batch(cfg, B=2, frames=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = frames or cfg.video.frames
    S = cfg.video.image_size
    video = torch.randint(0, 256, (B, T, S, S, 3), dtype=torch.uint8, generator=g)
    ids = torch.randint(1, cfg.text.vocab_size, (B, cfg.text.context_length), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 5:] = False  # a padded caption
    ids[~mask] = 0
    return video, ids, mask


CASES = {
    "joint-unmasked": ["video.mask_ratio=0.0"],
    "joint-random75": ["video.mask_ratio=0.75"],
    "joint-tube50-cls": ["video.mask_ratio=0.5", "video.mask_scheme=tube", "video.cls_token=true",
                         "video.pool=cls"],
    "factorized-unmasked": ["video.attention=factorized"],
    "factorized-tube75-cls": ["video.attention=factorized", "video.mask_ratio=0.75",
                              "video.mask_scheme=tube", "video.cls_token=true"],
}


@pytest.mark.parametrize("case", CASES)
def test_every_parameter_gets_a_finite_nonzero_gradient(case):
    torch.manual_seed(0)
    cfg = model_config("tiny", CASES[case])
    model = build_model(cfg).train()
    for block in model.video.blocks:  # a = 0 gives the temporal branch an exactly zero gradient
        if hasattr(block, "temporal_gate"):
            block.temporal_gate.data.fill_(0.5)
    video, ids, mask = batch(cfg)
    loss, metrics = model(video, ids, mask)
    assert loss.shape == () and torch.isfinite(loss)
    assert set(metrics) >= {"loss", "logit_scale", "v2t_acc"}
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.shape == p.shape
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("attention", ["joint", "factorized"])
def test_embedding_shapes_and_eval_default_is_unmasked(attention):
    torch.manual_seed(0)
    cfg = model_config("tiny", [f"video.attention={attention}", "video.mask_ratio=0.75",
                                "video.mask_scheme=tube"])
    model = build_model(cfg)
    video, ids, mask = batch(cfg, B=3)
    with torch.no_grad():
        v = model.eval().encode_video(video, normalize=True)
        assert v.shape == (3, cfg.embed_dim)
        assert torch.allclose(v.norm(dim=-1), torch.ones(3))
        # eval mode: no masking unless asked, so the embedding is deterministic
        assert torch.equal(v, model.encode_video(video, normalize=True))
        assert not torch.allclose(v, model.encode_video(video, mask_ratio=0.75, normalize=True))
        # train mode: the config's ratio applies
        g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
        trained = model.train().encode_video(video, generator=g(), normalize=True)
        assert torch.allclose(trained, model.encode_video(video, mask_ratio=0.75, generator=g(), normalize=True))
        t = model.encode_text(ids, mask)
        assert t.shape == (3, cfg.embed_dim) and torch.isfinite(t).all()


def test_float_video_is_taken_as_normalised_and_uint8_is_normalised_inside():
    torch.manual_seed(0)
    cfg = model_config("tiny")
    model = build_model(cfg).eval()
    video, _, _ = batch(cfg)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])
    normalised = (video.float() / 255 - mean) / std
    with torch.no_grad():
        assert torch.allclose(model.encode_video(video), model.encode_video(normalised), atol=1e-5)


def test_text_pooling_ignores_padding():
    torch.manual_seed(0)
    cfg = model_config("tiny")
    model = build_model(cfg).eval()
    ids = torch.randint(1, cfg.text.vocab_size, (1, 8))
    short = model.encode_text(ids, torch.ones(1, 8, dtype=torch.bool))
    padded_ids = torch.cat([ids, torch.zeros(1, 8, dtype=torch.long)], 1)
    padded_mask = torch.cat([torch.ones(1, 8), torch.zeros(1, 8)], 1).bool()
    assert torch.allclose(short, model.encode_text(padded_ids, padded_mask), atol=1e-5)
    empty = model.encode_text(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.bool))
    assert torch.isfinite(empty).all()


@pytest.mark.parametrize("train_stem", [True, False])
def test_trainable_last_k_gives_gradients_to_exactly_the_trainable_parameters(train_stem):
    torch.manual_seed(0)
    cfg = model_config("tiny", ["video.trainable_last_k=1", f"video.train_stem={train_stem}",
                                "video.mask_ratio=0.5", "video.cls_token=true"])
    model = build_model(cfg).train()
    video, ids, mask = batch(cfg)
    loss, _ = model(video, ids, mask)
    loss.backward()
    stem = ("video.patch_embed.", "video.pos_embed.", "video.cls_token", "video.ln_pre.")
    for name, p in model.named_parameters():
        frozen = name.startswith(("video.blocks.0.", "video.blocks.1.", "video.blocks.2."))
        frozen |= (not train_stem) and name.startswith(stem)
        assert p.requires_grad == (not frozen), name
        if frozen:
            assert p.grad is None, f"frozen {name} holds a gradient"
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    trainable = model.num_params(trainable_only=True)
    assert 0 < trainable < model.num_params()


def test_smoke_command_prints_one_json_line(capsys):
    import json

    from longvivit.cli.smoke import main

    assert main(["--batch", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip())
    assert out["params"] < 5_000_000 and out["grads_finite"] and out["loss"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--preset", "nope"], "longvivit smoke: argument --preset: invalid choice: 'nope' (choose from"),
    (["--mask-ratio", "1.5"], "longvivit smoke: video.mask_ratio: 1.5 is outside [0, 1)"),
    (["--batch", "0"], "longvivit smoke: argument --batch: 0 must be >= 1"),
])
def test_smoke_command_refuses_bad_input_in_one_line(argv, message, tmp_path, monkeypatch, capfd):
    from longvivit.cli.smoke import main
    from train_support import run_in_process

    monkeypatch.chdir(tmp_path)
    status, out, err = run_in_process(main, argv, capfd)
    assert status == 2 and out == "" and err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []
