"""Symmetric InfoNCE and SigLIP against naive references, the temperature, and the
cross-rank losses on 2 gloo processes against one process on the concatenated batch."""
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from longvivit.distributed.collectives import free_port
from longvivit.model import ContrastiveLoss, SigLipLoss, build_model, model_config

from dist_support import LOSSES, data_parallel


def naive_infonce(video, text, scale):
    """-log softmax of the matching pair, row by row, in both directions, averaged."""
    n = video.shape[0]
    total = 0.0
    for i in range(n):
        sims_v = [scale * float(video[i] @ text[j]) for j in range(n)]
        sims_t = [scale * float(text[i] @ video[j]) for j in range(n)]
        total += -sims_v[i] + math.log(sum(math.exp(s) for s in sims_v))
        total += -sims_t[i] + math.log(sum(math.exp(s) for s in sims_t))
    return total / (2 * n)


def naive_siglip(video, text, scale, bias):
    """Every pair its own logistic regression: label +1 for the match, -1 otherwise; the sum
    over all pairs divided by the number of videos."""
    n = video.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = scale * float(video[i] @ text[j]) + bias
            total += math.log(1 + math.exp(-z if i == j else z))
    return total / n


def test_siglip_equals_naive_reference():
    torch.manual_seed(0)
    video = F.normalize(torch.randn(6, 16), dim=-1)
    text = F.normalize(video + 0.5 * torch.randn(6, 16), dim=-1)
    loss, logits, labels = SigLipLoss()(video, text, torch.tensor(10.0), torch.tensor([-10.0]))
    assert loss.item() == pytest.approx(naive_siglip(video, text, 10.0, -10.0), rel=1e-5)
    assert logits.shape == (6, 6) and torch.equal(labels, torch.arange(6))


def test_siglip_model_learns_its_bias_and_infonce_has_none():
    torch.manual_seed(0)
    cfg = model_config("tiny", ["video.frames=4", "loss=siglip", "init_logit_scale=2.302585", "init_logit_bias=-5"])
    model = build_model(cfg)
    loss, metrics = model(*batch(cfg, 2))
    loss.backward()
    assert float(metrics["logit_bias"]) == -5.0 and model.logit_bias.grad.abs().item() > 0
    assert "logit_bias" in model.no_weight_decay()
    plain = build_model(model_config("tiny", ["video.frames=4"]))
    assert not hasattr(plain, "logit_bias") and "logit_bias" not in plain(*batch(cfg, 2))[1]


@pytest.mark.parametrize("mode", ["gather_with_grad", "local_loss"])
def test_loss_equals_naive_reference(mode):
    torch.manual_seed(0)
    video = F.normalize(torch.randn(6, 16), dim=-1)
    text = F.normalize(video + 0.5 * torch.randn(6, 16), dim=-1)
    loss, logits, labels = ContrastiveLoss(mode)(video, text, torch.tensor(10.0))
    assert loss.item() == pytest.approx(naive_infonce(video, text, 10.0), rel=1e-5)
    assert logits.shape == (6, 6) and torch.equal(labels, torch.arange(6))


def test_logit_scale_starts_at_1_over_007_and_is_clamped_at_100():
    torch.manual_seed(0)
    cfg = model_config("tiny", ["video.frames=4"])
    model = build_model(cfg)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    video, ids, mask = batch(cfg, 2)
    _, metrics = model(video, ids, mask)
    assert float(metrics["logit_scale"]) == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    loss, metrics = model(video, ids, mask)
    assert float(metrics["logit_scale"]) == pytest.approx(100.0, rel=1e-5)
    loss.backward()
    assert model.logit_scale.grad.item() == 0.0  # above the clamp the temperature stops moving


# ----------------------------------------------------------------------------- 2 processes

def batch(cfg, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = cfg.video
    video = torch.randint(0, 256, (n, v.frames, v.image_size, v.image_size, 3), dtype=torch.uint8, generator=g)
    ids = torch.randint(1, cfg.text.vocab_size, (n, 12), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[::2, 8:] = False
    return video, ids, mask


def run_step(mode, rows):
    """Same weights everywhere; returns (loss, {name: grad}) on the samples `rows` of one batch."""
    torch.manual_seed(0)
    cfg = model_config("tiny", ["video.frames=4", *LOSSES[mode]])
    model = build_model(cfg).train()
    video, ids, mask = batch(cfg, 4)
    loss, _ = model(video[rows], ids[rows], mask[rows], mask_ratio=0.0)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def _worker(rank, world, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {}
        for mode in LOSSES:
            results[mode] = data_parallel(*run_step(mode, slice(2 * rank, 2 * rank + 2)), world)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.multiproc
@pytest.mark.timeout(180)
def test_two_gloo_ranks_match_one_process_on_the_concatenated_batch(tmp_path):
    assert not dist.is_initialized()
    refs = {"infonce": run_step("gather_with_grad", slice(0, 4)), "siglip": run_step("siglip", slice(0, 4))}
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for mode, (losses, grads) in results.items():
            ref_loss, ref_grads = refs["siglip" if mode == "siglip" else "infonce"]
            if mode == "gather_with_grad":  # every rank computes the full-batch loss
                assert torch.allclose(losses, ref_loss.expand(2), atol=1e-5), (mode, losses, ref_loss)
            else:  # each rank's own rows (local_loss, siglip); their mean is the full-batch loss
                assert not torch.allclose(losses[0], losses[1])
                assert torch.allclose(losses.mean(), ref_loss, atol=1e-5), (mode, losses, ref_loss)
            for name, g in grads.items():
                assert torch.allclose(g, ref_grads[name], atol=2e-5, rtol=1e-4), (mode, rank, name, (g - ref_grads[name]).abs().max())
