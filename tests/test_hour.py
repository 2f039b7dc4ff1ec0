"""An hour of video, 60 minutes at 1 FPS (3,600 frames), through the whole path on CPU:
`longvivit shards`, build_loader, one training step of the tiny model at 90% masking with
its memory measured, and `longvivit plan` for the g and L presets at 3,600 frames.
(bench/hour.py records the same step's numbers and the plans in bench/RESULTS.md.)"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from longvivit.config import load_config
from longvivit.data import DataConfig, build_loader
from longvivit.data.load.tokenizer import train_tokenizer
from longvivit.data.prepare.shards import ShardOptions, write_shards
from longvivit.data.prepare.synth import write_benchmark
from longvivit.data.prepare.video import frames_at
from longvivit.model import build_model, model_config, sample_visible, saved_bytes
from longvivit.train.plan import make_plan

from data_support import psnr, read_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from hour import HOUR_OVERRIDES  # noqa: E402  (bench/hour.py: what an hour of each config needs)

import common  # noqa: E402  (bench/common.py: peak_rss_increase)

HOUR = 3600  # frames: 60 minutes at 1 FPS
RATIO = 0.9
SIZE = 32  # the tiny model's image_size; the shards are written at it
SHARD_LIMIT = 256_000  # bytes, below one clip's (~0.9 MB here): each hour exceeds its shard's limit
GiB = 2**30


@pytest.fixture(scope="module")
def hour(tmp_path_factory) -> dict:
    """Two synthetic hour-long clips at 32 px written to shards, and the loader's first
    batch of them: {"summary", "batch", "rows", "dir", "shards"}."""
    root = tmp_path_factory.mktemp("hour")
    write_benchmark(root / "synth", videos=2, frames=HOUR, size=SIZE, seed=1, val_fraction=0.5,
                    hard_negatives=0)
    manifest = root / "synth" / "all.jsonl"
    manifest.write_text((root / "synth" / "train.jsonl").read_text() + (root / "synth" / "val.jsonl").read_text())
    summary = write_shards(manifest, root / "shards", ShardOptions(size=SIZE), progress=False,
                           shard_size=SHARD_LIMIT)
    tokenizer = train_tokenizer([manifest], root / "tok" / "spm")
    cfg = load_config(DataConfig, dict(train=str(root / "shards"), val=str(root / "shards"), tokenizer=tokenizer,
                                       frames=HOUR, image_size=SIZE, sampling="uniform", batch_size=2,
                                       num_workers=0, text_length=32))
    batch = next(iter(build_loader(cfg, "train", torch.device("cpu"), 0, 1, training=False)))
    return {"summary": summary, "batch": batch, "rows": read_jsonl(manifest), "dir": root / "synth",
            "shards": root / "shards"}


def test_an_hour_is_one_sample_and_loads_whole(hour):
    s = hour["summary"]
    assert (s["written"], s["skipped"], s["hours"]) == (2, 0, 2.0), s
    # streaming writes a sample bigger than the shard limit alone in a shard of its own
    shards = sorted(hour["shards"].glob("shard.*.mds"))
    assert len(shards) == 2 and all(p.stat().st_size > SHARD_LIMIT for p in shards), shards
    b = hour["batch"]
    assert b["video"].shape == (2, HOUR, SIZE, SIZE, 3) and b["video"].dtype == torch.uint8
    assert b["real_frames"].tolist() == [HOUR, HOUR]
    wanted = [0, 1, HOUR // 2, HOUR - 1]  # 1 FPS: frame i is second i
    for clip, index in zip(b["video"], b["index"].tolist()):
        source = str(hour["dir"] / hour["rows"][index]["video"])
        score = psnr(clip[wanted].numpy(), frames_at(source, [float(i) for i in wanted]))
        print(f"\nsample {index}: PSNR {score:.1f} dB at seconds {wanted}")
        assert score >= 30


def test_an_hour_trains_one_step_at_90_percent_masking(hour):
    """One forward/backward/AdamW step of the tiny model on the loader's batch. The bytes
    autograd saves (exact) must be those of 360 unmasked frames, the same 2,880 visible tokens
    a clip, plus the position table of all 28,800; the step's peak resident memory must stay
    within what the config says it can hold at once."""
    cfg = model_config("tiny", [f"video.frames={HOUR}", f"video.mask_ratio={RATIO}"])
    v = cfg.video
    slices, spatial = HOUR // v.tubelet[0], (SIZE // v.tubelet[1]) ** 2
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert model.video.pos_embed.temporal.shape == (slices, v.width)  # a row per 2 s of the hour
    b = hour["batch"]
    B = b["video"].shape[0]
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731 -- the same masks every forward
    index = sample_visible(B, slices, spatial, RATIO, v.mask_scheme, gen())
    assert index.shape == (B, v.visible_tokens()) == (B, round((1 - RATIO) * slices * spatial))
    assert all(row.unique().numel() == row.numel() for row in index) and int(index.max()) < slices * spatial

    forward = lambda: model(b["video"], b["text_ids"], b["text_mask"], generator=gen(),  # noqa: E731
                            real_frames=b["real_frames"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    losses = []

    def step() -> None:
        loss, _ = forward()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())

    peak = common.peak_rss_increase(step)  # the first such step in this process
    assert torch.isfinite(losses[0])
    for (name, p), old in zip(model.named_parameters(), before):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        assert not torch.equal(p.detach(), old), name
    # the position table is used over the whole hour: its rows from the first and last six
    # minutes get gradients, and nearly every row (a slice keeps none of its 16 tokens in
    # either clip with probability 0.9 ** 32, 3%)
    reached = model.video.pos_embed.temporal.grad.abs().sum(1) > 0  # (slices,)
    assert reached[: slices // 10].any() and reached[-slices // 10:].any() and reached.float().mean() > 0.9

    saved = saved_bytes(forward, ignore=model.parameters())
    short = round(HOUR * (1 - RATIO))  # 360 frames unmasked: the same visible tokens
    short_model = build_model(model_config("tiny", [f"video.frames={short}"])).train()
    assert short_model.cfg.video.visible_tokens() == v.visible_tokens()
    short_saved = saved_bytes(lambda: short_model(b["video"][:, :short], b["text_ids"], b["text_mask"]),
                              ignore=short_model.parameters())
    # what masking cannot drop: the (slices * spatial, D) position table the kept tokens are
    # gathered from, saved once for the batch, and the gather's index
    table = slices * spatial * v.width * 4 + B * v.visible_tokens() * 8
    float_clip = B * HOUR * SIZE * SIZE * 3 * 4  # one fp32 copy of the batch
    states = 4 * 4 * sum(p.numel() for p in model.parameters())  # weights, grads, AdamW m, v
    bound = saved + 3 * float_clip + B * slices * spatial * v.width * 4 + states
    print(f"\nsaved {saved / 2**20:.1f} MiB (360 frames unmasked: {short_saved / 2**20:.1f} MiB), "
          f"step peak RSS +{(peak or 0) / 2**20:.1f} MiB (bound {bound / 2**20:.1f} MiB)")
    assert short_saved < saved <= short_saved + table
    # Before masking the clip is normalised to fp32 and cut into tubelets (up to three fp32
    # copies at once); the position table's backward fills one (B, slices * spatial, D)
    # buffer (longvivit/model/video.py); with the saved bytes and the model states that bounds the step.
    if peak is not None:
        assert 0 < peak <= bound, (peak, bound)


@pytest.mark.parametrize("config", ["g_1b", "long_L256"])
def test_the_plan_for_an_hour_of_g_and_L_fits_8_x_80GiB(config):
    overrides = [f"model.video.frames={HOUR}", f"model.video.mask_ratio={RATIO}", *HOUR_OVERRIDES.get(config, [])]
    plan = make_plan(f"{config}.yaml", overrides, gpus=8, gpu_mem=80 * GiB, search=False)
    assert (plan.frames, plan.mask_ratio, plan.micro_batch) == (HOUR, RATIO, 8)
    assert plan.bytes["inputs"] >= plan.micro_batch * HOUR * 224 * 224 * 3  # the uint8 clips on the GPU
    print(f"\n{config}: {plan.total / GiB:.2f} GiB per GPU of {plan.gpu_mem / GiB:.0f}")
    assert plan.fits
