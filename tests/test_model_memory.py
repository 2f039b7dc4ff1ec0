"""Activation memory, measured with saved_tensors_hooks: checkpointing and masking."""
import pytest
import torch

from longvivit.model import build_model, model_config, saved_bytes


def video_batch(frames=16, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, frames, 32, 32, 3), dtype=torch.uint8, generator=g)


def loss_and_grads(model, video, ids, mask, ratio):
    model.zero_grad()
    loss, _ = model(video, ids, mask, mask_ratio=ratio, generator=torch.Generator().manual_seed(0))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("attention,ratio", [("joint", 0.5), ("factorized", 0.0)])
def test_checkpointing_keeps_loss_and_gradients_and_saves_less(attention, ratio):
    torch.manual_seed(0)
    cfg = model_config("tiny", [f"video.attention={attention}", "video.mask_scheme=tube"])
    model = build_model(cfg).train()
    video = video_batch()
    ids = torch.randint(1, cfg.text.vocab_size, (2, cfg.text.context_length))
    mask = torch.ones_like(ids, dtype=torch.bool)

    model.set_grad_checkpointing(False)
    ref_loss, ref_grads = loss_and_grads(model, video, ids, mask, ratio)
    plain = saved_bytes(lambda: model(video, ids, mask, mask_ratio=ratio), ignore=model.parameters())
    model.set_grad_checkpointing(True)
    loss, grads = loss_and_grads(model, video, ids, mask, ratio)
    checkpointed = saved_bytes(lambda: model(video, ids, mask, mask_ratio=ratio), ignore=model.parameters())

    assert torch.allclose(loss, ref_loss, atol=1e-6)
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], atol=1e-6, rtol=1e-4), name
    assert checkpointed < 0.5 * plain, (checkpointed, plain)


def test_checkpointing_some_blocks_saves_in_between():
    torch.manual_seed(0)
    model = build_model(model_config("tiny")).train()
    video = video_batch()
    measure = lambda: saved_bytes(lambda: model.encode_video(video, mask_ratio=0.0),  # noqa: E731
                                  ignore=model.parameters())
    sizes = []
    for n in (0, 2, 4):
        model.set_grad_checkpointing(n)
        sizes.append(measure())
    assert sizes[0] > sizes[1] > sizes[2]


def test_75_percent_masking_saves_at_most_030_of_unmasked_at_32_frames():
    torch.manual_seed(0)
    model = build_model(model_config("tiny", ["video.frames=32"])).train()
    video = video_batch(frames=32)
    measure = lambda r: saved_bytes(  # noqa: E731
        lambda: model.encode_video(video, mask_ratio=r, generator=torch.Generator().manual_seed(0)),
        ignore=model.parameters())
    unmasked, masked = measure(0.0), measure(0.75)
    ratio = masked / unmasked
    print(f"saved for backward: {unmasked} B unmasked, {masked} B at 75% masking, ratio {ratio:.3f}")
    assert ratio <= 0.30


def test_frozen_stem_and_prefix_save_no_activations_below_the_trainable_blocks():
    torch.manual_seed(0)
    video = video_batch()
    sizes = {}
    for stem in (True, False):
        model = build_model(model_config("tiny", ["video.trainable_last_k=1", f"video.train_stem={stem}"]))
        sizes[stem] = saved_bytes(lambda: model.train().encode_video(video, mask_ratio=0.0),
                                  ignore=model.parameters())
    # 1 of 4 blocks trains: with the stem frozen too, about a quarter of the activations remain
    assert sizes[False] < 0.4 * sizes[True], sizes


def test_saved_bytes_counts_a_storage_once():
    x = torch.randn(1000, requires_grad=True)
    one = saved_bytes(lambda: (x * x).sum())  # mul saves x twice: one storage
    assert one == 1000 * 4
    assert saved_bytes(lambda: (x * x).sum(), ignore=[x]) == 0
