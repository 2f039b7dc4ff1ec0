"""Sequence parallelism (parallel.sequence, DeepSpeed-Ulysses; longvivit/distributed/sequence.py)
over gloo: with N = 2 on 2 ranks, one clip batch split over the pair gives the unsplit model's
video embedding, loss and every gradient (the pair's gradients averaged, as DeepSpeed averages
over all ranks), with and without CLS, pooled by mean and by CLS, masked and unmasked, with
padded clips, checkpointed and frozen blocks, and token counts that do not divide by 2; and
`longvivit plan` counts what one rank of the pair saves for backward."""
import os

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from longvivit.distributed import collectives as dist
from longvivit.distributed import sequence
from longvivit.model import build_model, model_config, saved_bytes
from longvivit.train import plan
from longvivit.train.config import load_run_config

FRAMES = 8  # tubelet (2, 8, 8): 4 temporal slices of 16 patches at 32 px, 64 tokens
ATOL = 2e-6  # fp32; the split model adds in another order (measured: printed by the test)

CASES = {
    "mean": ([], 0.0, None),
    "cls-pool-masked": (["video.cls_token=true", "video.pool=cls"], 0.75, None),
    "cls-mean-odd": (["video.cls_token=true"], 0.5, None),  # 1 + 32 tokens: chunks of 17 and 16
    "cls-padded": (["video.cls_token=true"], 0.75, torch.tensor([8, 3, 5, 8])),
    "checkpointed-frozen": (["video.cls_token=true", "video.grad_checkpointing=2", "video.trainable_last_k=1",
                             "video.depth=3"], 0.75, None),
}


def model(overrides):
    torch.manual_seed(0)
    return build_model(model_config("tiny", [f"video.frames={FRAMES}", "video.depth=2", *overrides])).train()


def step(case, shard):
    """(video embedding, loss, {name: grad}) of one training step on one batch of 4 clips."""
    overrides, mask_ratio, real = CASES[case]
    m = model(overrides)
    g = torch.Generator().manual_seed(1)
    video = torch.randint(0, 256, (4, FRAMES, 32, 32, 3), dtype=torch.uint8, generator=g)
    ids = torch.randint(1, m.cfg.text.vocab_size, (4, 12), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    emb = m.encode_video(video, mask_ratio, generator=torch.Generator().manual_seed(2), real_frames=real,
                         sequence=shard)
    loss, _ = m(video, ids, mask, mask_ratio, torch.Generator().manual_seed(2), real_frames=real, sequence=shard)
    loss.backward()
    return emb.detach(), loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def split_saved_bytes(shard) -> int:
    """Bytes one rank saves for backward in a training forward of the cls-pool-masked model."""
    m = model(CASES["cls-pool-masked"][0])
    g = torch.Generator().manual_seed(1)
    video = torch.randint(0, 256, (4, FRAMES, 32, 32, 3), dtype=torch.uint8, generator=g)
    ids = torch.randint(1, m.cfg.text.vocab_size, (4, 12), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    return saved_bytes(lambda: m(video, ids, mask, 0.75, g, sequence=shard), ignore=list(m.parameters()))


def _worker(rank, world, port, out_dir):
    d = dist.DistEnv(rank, world, rank, world, "127.0.0.1", port)
    dist.bind_device(d)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        layout = sequence.Layout(rank, world, world)
        sequence.setup(layout)
        assert (layout.data_rank, layout.data_world, layout.place) == (0, 1, rank)
        assert sequence.data_rank_world() == (0, 1)
        exchanges = []  # each all-to-all's piece shapes: the split path runs, one pair per block and pass
        exchange = dist.exchange
        dist.exchange = lambda pieces, *args: exchanges.append(pieces[0].shape) or exchange(pieces, *args)
        results = {}
        for case in CASES:
            ref = step(case, None)  # the unsplit model; the loss's data group is this rank alone
            assert not exchanges
            emb, loss, grads = step(case, sequence.shard())
            assert len(exchanges) >= 4 * 2, (case, exchanges)  # forward and backward of 2 blocks at least
            exchanges.clear()
            for g in grads.values():  # DeepSpeed averages gradients over all ranks
                tdist.all_reduce(g)
                g /= world
            results[case] = ref, (emb, loss, grads)
        results["saved_bytes"] = split_saved_bytes(sequence.shard())
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        sequence.teardown()
        tdist.destroy_process_group()


@pytest.mark.multiproc
@pytest.mark.timeout(240)
def test_a_clip_split_over_two_ranks_equals_the_unsplit_model(tmp_path):
    mp.spawn(_worker, args=(2, dist.free_port(), str(tmp_path)), nprocs=2, join=True)
    # `longvivit plan` counts the first rank of a sequence group on FakeTensors (plan.PlannedShard)
    cfg = load_run_config({"model": {"preset": "tiny", "video": {"frames": FRAMES, "depth": 2, "cls_token": True,
                                                                 "pool": "cls", "mask_ratio": 0.75}},
                           "data": {"train": "unused", "val": "unused", "tokenizer": "unused", "frames": FRAMES,
                                    "image_size": 32, "batch_size": 4, "text_length": 12},
                           "parallel": {"sequence": 2}})
    planned = plan.measure_activations(cfg, 4).saved
    for rank in range(2):
        results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        real = results.pop("saved_bytes")
        print(f"rank {rank}: saved for backward {real} B, planned {planned} B")
        assert abs(planned - real) <= 0.05 * real, (rank, planned, real)
        for case, ((emb_r, loss_r, grads_r), (emb, loss, grads)) in results.items():
            worst = max((grads[n] - grads_r[n]).abs().max() for n in grads_r)
            print(f"rank {rank} {case}: |embedding diff| {(emb - emb_r).abs().max():.2e}, "
                  f"|loss diff| {(loss - loss_r).abs():.2e}, max |grad diff| {worst:.2e}")
            torch.testing.assert_close(emb, emb_r, atol=ATOL, rtol=0)
            torch.testing.assert_close(loss, loss_r, atol=ATOL, rtol=0)
            assert set(grads) == set(grads_r), case
            for name, grad in grads_r.items():
                torch.testing.assert_close(grads[name], grad, atol=ATOL, rtol=0, msg=f"{case} {name}")


def test_layout_groups():
    layout = sequence.Layout(rank=5, world=8, sequence=2)
    assert (layout.data_rank, layout.data_world, layout.place) == (2, 4, 1)
    assert layout.sequence_groups() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert layout.data_groups() == [[0, 2, 4, 6], [1, 3, 5, 7]]


def test_chunk_sizes_split_any_length():
    shard = sequence.SequenceShard(None, 0, 4).for_length(10)
    assert shard.sizes() == [3, 3, 2, 2]
    x = torch.arange(10)[None]
    assert torch.cat([sequence.SequenceShard(None, p, 4).for_length(10).split(x) for p in range(4)], 1).equal(x)
