"""Zero-shot retrieval: text-to-video and video-to-text R@1/5/10 and median rank.

    longvivit eval CHECKPOINT [--data SHARDS] [--batch-size N] [--mask-ratio R] [--out FILE]

CHECKPOINT is a run directory, its checkpoints/ directory, a tag directory or an exported
directory (model.safetensors + config.yaml). Ends with one JSON line of metrics, with the
shards evaluated (`data`) and how many of their clips failed to decode (`decode_failures`:
those are left out of `pairs`).

Ties: the rank of the correct item is 1 + the number of *other* candidates scoring at
least as high (the pessimistic rank). A model that maps everything to one point scores
R@1 = 0, not 100%, whatever the order of the candidates.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from . import dist


def ranks_of_diagonal(sim: torch.Tensor) -> torch.Tensor:
    """sim (N, N): row i's correct column is i. Pessimistic 1-based rank of it per row."""
    correct = sim.diagonal().unsqueeze(1)  # (N, 1)
    at_least = (sim >= correct).sum(dim=1)  # counts the correct column itself
    return at_least  # = 1 + others scoring >= correct


def retrieval_metrics(sim: torch.Tensor) -> dict:
    """sim[i, j] = similarity of text i and video j; pair i is (text i, video i)."""
    sim = sim.double()
    out = {"pairs": int(sim.shape[0])}
    for name, s in (("t2v", sim), ("v2t", sim.t())):
        ranks = ranks_of_diagonal(s).double()
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * (ranks <= k).double().mean().item()
        out[f"{name}_median_rank"] = ranks.quantile(0.5).item()  # averages the middle two when N is even
        out[f"{name}_mean_rank"] = ranks.mean().item()
    out["chance_r1"] = 100.0 / max(1, out["pairs"])
    return out


# ---------------------------------------------------------------------------- eval loop

@torch.no_grad()
def embed_split(model, loader, mask_ratio: float = 0.0, max_batches: int = 0) -> dict:
    """Video and text embeddings of this rank's part of a split, keyed by sample index.

    Under ZeRO-3 every rank must run the same number of forwards (each forward gathers
    the partitioned weights), so a rank that runs out of batches repeats its last one
    and throws the result away until no rank has batches left.
    """
    it, last, out, n = iter(loader), None, {}, 0
    while True:
        batch = next(it, None) if not (max_batches and n >= max_batches) else None
        if not dist.dist_any(batch is not None):
            return out
        real = batch is not None
        batch = batch if real else last
        v = model.encode_video(batch["video"], mask_ratio=mask_ratio, normalize=True,
                               real_frames=batch["real_frames"])
        t = model.encode_text(batch["text_ids"], batch["text_mask"], normalize=True)
        if real:
            for i, idx in enumerate(batch["index"].tolist()):
                out[idx] = (v[i].float().cpu(), t[i].float().cpu())
            last, n = batch, n + 1


def gather_embeddings(local: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All-gather per-rank embeddings, dedupe by sample index (the val split may repeat
    samples to even ranks out): (index (N,), video (N, E), text (N, E)), sorted by index."""
    merged = {}
    for part in dist.all_gather_object(local):
        merged.update(part)
    if not merged:
        raise RuntimeError("the val split yielded no samples")
    keys = sorted(merged)
    video = F.normalize(torch.stack([merged[k][0] for k in keys]), dim=-1)
    text = F.normalize(torch.stack([merged[k][1] for k in keys]), dim=-1)
    return torch.tensor(keys), video, text


def embed(model, loader, mask_ratio: float = 0.0, max_batches: int = 0):
    """(index, video, text) embeddings of the whole split, gathered from every rank, with
    the model in eval mode meanwhile."""
    was_training = model.training
    model.eval()
    try:
        return gather_embeddings(embed_split(model, loader, mask_ratio, max_batches))
    finally:
        model.train(was_training)


def evaluate(model, loader, mask_ratio: float = 0.0, max_batches: int = 0,
             embeddings_file: Path | None = None) -> dict:
    """Retrieval metrics of the whole split (the same on every rank). `embeddings_file`:
    also save (index, video, text) there; pass it on one rank only, as every rank holds
    all of them."""
    index, video, text = embed(model, loader, mask_ratio, max_batches)
    metrics = retrieval_metrics(text @ video.t())
    # clips that failed to decode were replaced by others of the split: `pairs` counts the
    # distinct ones evaluated, decode_failures the ones missing from them
    metrics["decode_failures"] = int(dist.all_reduce([loader.decode_failures])[0])
    if embeddings_file is not None:
        torch.save({"index": index, "video": video, "text": text}, embeddings_file)
    return metrics


# ---------------------------------------------------------------------------- CLI

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="longvivit eval", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="run dir, checkpoints dir, tag dir or exported dir")
    p.add_argument("--data", help="val shards (default: the checkpoint's data.val)")
    p.add_argument("--tokenizer", help="sentencepiece model (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=0, help="default: the run's data.batch_size")
    p.add_argument("--mask-ratio", type=float, default=0.0, help="0 (default): unmasked")
    p.add_argument("--max-batches", type=int, default=0)
    p.add_argument("--out", help="also write the JSON to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from . import export

    args = parse_args(sys.argv[1:] if argv is None else argv)
    model, run_cfg = export.load_any(args.checkpoint)
    data_cfg = run_cfg.data
    data_cfg.val = args.data or data_cfg.val
    data_cfg.tokenizer = args.tokenizer or data_cfg.tokenizer
    data_cfg.batch_size = args.batch_size or data_cfg.batch_size
    from longvivit.data import build_loader
    from longvivit.data.tokenizer import make_tokenizer

    device = torch.device("cpu")
    tokenizer = make_tokenizer(run_cfg.model.text.tokenizer, data_cfg.tokenizer)  # the one it trained with
    loader = build_loader(data_cfg, "val", device=device, rank=0, world_size=1, training=False,
                          tokenizer=tokenizer)
    metrics = evaluate(model, loader, args.mask_ratio, args.max_batches)
    metrics.update(data=str(data_cfg.val), checkpoint=str(args.checkpoint))
    line = json.dumps(metrics)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line)
    return 0
