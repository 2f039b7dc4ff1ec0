"""Sequence parallelism (parallel.sequence, DeepSpeed-Ulysses): one clip batch split over 2 CPU
ranks against the same batch on one rank, and what `longvivit plan` says it buys on GPUs.

    .venv/bin/python bench/sequence.py [--frames 256] [--batch 2] [--ratio 0.75] [--rounds 5] \
        [--threads 1] [--config g_1b.yaml] [--gpus 8] [--gpu-mem 80GiB] [--hour 3600] \
        [--hour-ratios 0.9 0.75 0.5]

step: the tiny dual encoder (both towers, InfoNCE, backward; 32 px, tubelet 2x8x8, CLS token)
on --batch random clips of --frames frames at --ratio random masking, in 2 processes over gloo
with --threads threads each. Timed interleaved (rounds alternate): `one_rank`, rank 0 alone
runs the whole batch while rank 1 waits; `split`, both ranks run it as one sequence group
(each half of every clip's tokens, all-to-all around each attention). Recorded per rank: bytes
saved for backward (exact, longvivit.model.saved_bytes), the step time (median, rank 0's
clock between barriers), the loss of both cases (equal), and the all-to-all traffic.

plans: `longvivit plan CONFIG parallel.sequence=N --gpus G --gpu-mem M` at N = 1 and N = G:
frames that fit (the config's micro-batch and masking), and whether an hour (--hour frames,
the config's micro-batch, every video block checkpointed) fits at each of --hour-ratios.

Prints one JSON object.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from longvivit.distributed import collectives, sequence
from longvivit.model import build_model, model_config, saved_bytes
from longvivit.train.config import load_run_config, repo_path
from longvivit.train.plan import make_plan, parse_bytes

import common


def model(frames: int):
    torch.manual_seed(0)
    return build_model(model_config("tiny", [f"video.frames={frames}", "video.cls_token=true"])).train()


def inputs(m, frames: int, batch: int):
    g = torch.Generator().manual_seed(1)
    video = torch.randint(0, 256, (batch, frames, 32, 32, 3), dtype=torch.uint8, generator=g)
    ids = torch.randint(1, m.cfg.text.vocab_size, (batch, 16), generator=g)
    return video, ids, torch.ones_like(ids, dtype=torch.bool)


def _rank(rank: int, port: int, args) -> dict:
    """This rank's saved bytes, step times, losses and all-to-all traffic."""
    common.set_threads(args.threads)
    collectives.bind_device(collectives.DistEnv(rank, 2, rank, 2, "127.0.0.1", port))
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        sequence.setup(sequence.Layout(rank, 2, 2))
        m = model(args.frames)
        video, ids, mask = inputs(m, args.frames, args.batch)
        shard = sequence.shard()
        losses = {}

        def forward(split: bool):
            return m(video, ids, mask, args.ratio, torch.Generator().manual_seed(2), sequence=shard if split else None)

        def step(split: bool):
            def run():
                m.zero_grad(set_to_none=True)
                if split or rank == 0:
                    loss, _ = forward(split)
                    loss.backward()
                    losses["split" if split else "one_rank"] = float(loss)
                tdist.barrier()  # rank 0's clock stops when both are done
            return run

        traffic = []
        exchange = collectives.exchange
        collectives.exchange = lambda pieces, *a: traffic.append(sum(p.numel() * p.element_size()
                                                                     for p in pieces)) or exchange(pieces, *a)
        forward(True)[0].backward()
        sent = sum(traffic)
        collectives.exchange = exchange
        samples = common.interleaved({"one_rank": step(False), "split": step(True)}, args.rounds, alternate=True)
        saved = {"one_rank": saved_bytes(lambda: forward(False), ignore=list(m.parameters())),
                 "split": saved_bytes(lambda: forward(True), ignore=list(m.parameters()))}
        return {"saved_bytes": saved, "step_s_samples": samples, "loss": losses, "all_to_all_bytes_sent": sent}
    finally:
        sequence.teardown()
        tdist.destroy_process_group()


def _spawned(rank: int, port: int, args, path: str) -> None:
    torch.save(_rank(rank, port, args), f"{path}.{rank}")


def plans(args) -> dict:
    mem = parse_bytes(args.gpu_mem)
    depth = load_run_config(repo_path(args.config)).model.video.depth  # an hour: every block checkpointed
    out = {}
    for n in (1, args.gpus):
        p = make_plan(args.config, [f"parallel.sequence={n}"], args.gpus, mem)
        out[f"sequence_{n}"] = {"max_frames": p.max_frames, "total_bytes": p.total,
                                "activations_bytes": p.bytes["activations"], "max_micro_batch": p.max_micro_batch}
        for ratio in args.hour_ratios:  # the config's micro-batch, as bench/hour.py plans it
            hour = make_plan(args.config, [f"parallel.sequence={n}", f"model.video.frames={args.hour}",
                                           f"model.video.mask_ratio={ratio}", f"model.video.grad_checkpointing={depth}"],
                             args.gpus, mem, search=False)
            out[f"sequence_{n}"][f"hour_at_{ratio}"] = {"fits": hour.fits, "total_bytes": hour.total,
                                                        "activations_bytes": hour.bytes["activations"],
                                                        "micro_batch": hour.micro_batch}
        common.log(f"  plan at parallel.sequence={n}: {out[f'sequence_{n}']}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--ratio", type=float, default=0.75)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--config", default="g_1b.yaml")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu-mem", default="80GiB")
    p.add_argument("--hour", type=int, default=3600)
    p.add_argument("--hour-ratios", nargs="+", type=float, default=[0.9, 0.75, 0.5])
    common.add_threads_arg(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    path = os.path.join("/tmp", f"bench_sequence_{os.getpid()}")
    mp.spawn(_spawned, args=(collectives.free_port(), args, path), nprocs=2, join=True)
    ranks = [torch.load(f"{path}.{r}", weights_only=False) for r in range(2)]
    for r in range(2):
        os.unlink(f"{path}.{r}")
    one, split = (common.median(ranks[0]["step_s_samples"][c]) for c in ("one_rank", "split"))
    common.emit({"benchmark": "sequence", "frames": args.frames, "batch": args.batch, "mask_ratio": args.ratio,
                 "threads_per_rank": args.threads,
                 "step_s": {"one_rank": round(one, 4), "split": round(split, 4)},
                 "split_vs_one_rank": round(split / one, 4),
                 "step_s_samples": {c: [round(s, 4) for s in v] for c, v in ranks[0]["step_s_samples"].items()},
                 "saved_bytes": {"one_rank": ranks[0]["saved_bytes"]["one_rank"],
                                 "split_per_rank": [r["saved_bytes"]["split"] for r in ranks]},
                 "saved_split_vs_one_rank": round(max(r["saved_bytes"]["split"] for r in ranks)
                                                  / ranks[0]["saved_bytes"]["one_rank"], 4),
                 "loss": ranks[0]["loss"], "all_to_all_bytes_sent_per_rank": [r["all_to_all_bytes_sent"] for r in ranks],
                 "plans": {"config": args.config, "gpus": args.gpus, "gpu_mem": args.gpu_mem, "hour_frames": args.hour,
                           **plans(args)}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
