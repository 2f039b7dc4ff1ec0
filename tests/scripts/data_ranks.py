"""One rank of the two-rank loader test (tests/test_data_distributed.py), run under a real
launcher:

    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --no_local_rank --master_port PORT \\
        tests/scripts/data_ranks.py --train SHARDS --tokenizer TOK.model --out DIR

Each rank reads one uninterrupted epoch, then an interrupted one: a loader that yields one
batch and saves its state (rank 0's state, broadcast as a trainer's checkpoint would carry
it), and a fresh loader that loads the state and reads the rest. It writes the sample
indices it saw to DIR/rank<R>.json for the test to compare.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from longvivit.config import load_config
from longvivit.data import DataConfig, build_loader


def indices(batches) -> list[int]:
    return [i for b in batches for i in b["index"].tolist()]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo")  # as the trainer does before it builds loaders
    cfg = load_config(DataConfig, dict(train=a.train, val=a.train, tokenizer=a.tokenizer,
                                       frames=4, image_size=24, batch_size=2, num_workers=2))
    device = torch.device("cpu")

    whole = build_loader(cfg, "train", device, rank, world, training=True)
    full = indices(whole)
    ranks_per_node = whole.dataset._unique_rank_world.ranks_per_node  # what streaming saw

    first = build_loader(cfg, "train", device, rank, world, training=True)
    it = iter(first)
    head = indices([next(it)])
    state = [first.state_dict()]
    dist.broadcast_object_list(state, src=0)  # every rank resumes from rank 0's checkpoint
    del it, first

    resumed = build_loader(cfg, "train", device, rank, world, training=True)
    resumed.load_state_dict(state[0])
    tail = indices(resumed)

    Path(a.out, f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "world": world, "ranks_per_node": ranks_per_node,
         "launcher_local_world_size": os.environ.get("LOCAL_WORLD_SIZE"),
         "full": full, "head": head, "tail": tail, "state": state[0]}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
