"""grad_accum_loss=whole_batch (longvivit/train/accumulate.py): k micro-batches of m give the loss and
the gradients of one batch of k*m, on one process and on 2 gloo ranks (each rank k of its
own micro-batches against one process on all W*k*m), for InfoNCE in both gather modes and
for SigLIP; the masks of each micro-batch are drawn identically in both passes."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from longvivit.distributed.collectives import free_port
from longvivit.model import build_model, model_config
from longvivit.train.accumulate import whole_batch_step

from dist_support import LOSSES, data_parallel

K, M = 3, 2  # micro-batches per step, samples per micro-batch


def model_for(mode):
    torch.manual_seed(0)
    cfg = model_config("tiny", ["video.frames=4", "video.mask_ratio=0.5", *LOSSES[mode]])
    return build_model(cfg).train()


def micro_batches(rank: int) -> list[dict]:
    g = torch.Generator().manual_seed(100 + rank)
    out = []
    for _ in range(K):
        ids = torch.randint(4, 1000, (M, 10), generator=g)
        out.append({"video": torch.randint(0, 256, (M, 4, 32, 32, 3), dtype=torch.uint8, generator=g),
                    "text_ids": ids, "text_mask": torch.ones_like(ids, dtype=torch.bool)})
    return out


def generators(rank: int):
    return [lambda i=i: torch.Generator().manual_seed(1000 * rank + i) for i in range(K)]


def accumulated(model, rank: int):
    """(loss, {name: grad}) of one whole_batch step on this rank's micro-batches."""
    embed = lambda b, g: model.embed(b["video"], b["text_ids"], b["text_mask"], generator=g)  # noqa: E731
    forward = lambda b, g, n: model(b["video"], b["text_ids"], b["text_mask"], generator=g, negatives=n)  # noqa: E731
    loss, _ = whole_batch_step(micro_batches(rank), generators(rank), embed, forward,
                               lambda loss: loss.backward(), lambda: None)
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def one_batch(model, ranks: int):
    """The reference: every micro-batch of every rank embedded with its own masks,
    concatenated rank-major into one batch of ranks*K*M, one loss, one backward."""
    pairs = [model.embed(b["video"], b["text_ids"], b["text_mask"], generator=make())
             for r in range(ranks) for b, make in zip(micro_batches(r), generators(r))]
    v, t = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    scale = model.logit_scale.clamp(max=model.cfg.max_logit_scale).exp()
    bias = (model.logit_bias,) if model.cfg.loss == "siglip" else ()
    loss = model.loss(v, t, scale, *bias)[0]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(grads, ref, what):
    assert grads.keys() == ref.keys(), what
    for name, g in grads.items():
        assert torch.allclose(g, ref[name], atol=2e-6, rtol=1e-4), (what, name, (g - ref[name]).abs().max())


@pytest.mark.parametrize("mode", LOSSES)
def test_one_process_equals_one_batch_of_k_times_m(mode):
    loss, grads = accumulated(model_for(mode), 0)
    ref_loss, ref_grads = one_batch(model_for(mode), 1)
    assert torch.allclose(loss, ref_loss, atol=1e-6), (loss, ref_loss)
    assert_same_grads(grads, ref_grads, mode)
    # and it is not plain accumulation: the micro-batches' own losses average to another value
    model = model_for(mode)
    plain = torch.stack([model(b["video"], b["text_ids"], b["text_mask"], generator=make())[0]
                         for b, make in zip(micro_batches(0), generators(0))]).mean()
    assert not torch.allclose(plain.detach(), ref_loss, atol=1e-3)


def _worker(rank, world, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {}
        for mode in LOSSES:
            results[mode] = data_parallel(*accumulated(model_for(mode), rank), world)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_two_gloo_ranks_equal_one_process_on_every_micro_batch_of_both(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    refs = {mode: one_batch(model_for(mode), 2) for mode in LOSSES}
    for rank in range(2):
        results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for mode, (losses, grads) in results.items():
            ref_loss, ref_grads = refs[mode]
            # gather_with_grad: every rank the whole loss; local rows: the ranks' mean is it
            total = losses[rank] if mode == "gather_with_grad" else losses.mean()
            assert torch.allclose(total, ref_loss, atol=1e-5), (mode, losses, ref_loss)
            assert_same_grads(grads, ref_grads, (mode, rank))
