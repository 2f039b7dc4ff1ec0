"""Retrieval metrics from a text-video similarity matrix, every caption of a video a query.

    sim (Nt, Nv): sim[i, j] = similarity of caption i and video j
    caption_video (Nt,): the video (column) caption i describes; None: caption i <-> video i

text-to-video: each caption ranks its own video among all videos. video-to-text: each video
ranks all captions, and counts a hit at k when ANY of its captions is within the first k
(its rank is that of its best caption), as MSR-VTT / DiDeMo / ActivityNet papers report it.
R@1/5/10 in %, median and mean rank.

Ties count against the model: a correct item's rank is 1 + the number of *wrong*
candidates scoring at least as high (a video's other captions are not wrong, so two of its
captions tying at the top still make a hit at 1). A model that maps everything to one point
scores R@1 = 0, not 100%, whatever the order of the candidates. With one caption per video
this is exactly the square-matrix evaluation (ranks_of_diagonal). Non-finite scores count
against the model too (`beats`): a wrong candidate's NaN or inf outranks the correct one, and
a correct item whose own score is not finite ranks last, so a model whose weights became
NaN scores R@1 = 0, never 100% (comparisons with NaN are all False).

Dual-softmax re-ranking (DSL, CAMoE; Cheng et al. 2021): each score is multiplied by a
softmax over the *other* axis, sim * softmax(sim / T) over captions when ranking videos and
over videos when ranking captions, so a video that every caption is close to (a hub) ranks
lower. It uses the whole query set at once, which a deployed retriever does not have:
report it beside the plain score, never instead of it (keys `dsl_*`).
"""
from __future__ import annotations

import torch

KS = (1, 5, 10)


def beats(scores: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Where a candidate counts against the correct one: it scores at least as high, or
    either score is not finite (both broadcast; the correct candidate counts itself)."""
    return (scores >= correct) | ~torch.isfinite(scores) | ~torch.isfinite(correct)


def ranks_of_diagonal(sim: torch.Tensor) -> torch.Tensor:
    """sim (N, N): row i's correct column is i. Pessimistic 1-based rank of it per row."""
    correct = sim.diagonal().unsqueeze(1)  # (N, 1)
    return beats(sim, correct).sum(dim=1)  # counts the correct column itself: 1 + others >= it


def t2v_ranks(sim: torch.Tensor, caption_video: torch.Tensor) -> torch.Tensor:
    """(Nt,) rank of each caption's own video among all videos."""
    correct = sim.gather(1, caption_video[:, None])  # (Nt, 1)
    return beats(sim, correct).sum(dim=1)  # the correct column counts itself: 1 + wrong ones


def v2t_ranks(sim: torch.Tensor, caption_video: torch.Tensor) -> torch.Tensor:
    """(Nv,) rank of each video's best-scoring own caption among all captions, counting
    only other videos' captions against it."""
    own = caption_video[:, None] == torch.arange(sim.shape[1])[None, :]  # (Nt, Nv)
    if not own.any(dim=0).all():
        missing = (~own.any(dim=0)).nonzero().flatten().tolist()
        raise ValueError(f"videos {missing[:10]} have no caption: video-to-text needs one")
    best = sim.masked_fill(~own, float("-inf")).amax(dim=0)  # (Nv,); NaN if an own caption's is
    return 1 + (beats(sim, best[None, :]) & ~own).sum(dim=0)


def rank_summary(ranks: torch.Tensor, prefix: str) -> dict:
    """{prefix}_r1/_r5/_r10 (%), _median_rank, _mean_rank of 1-based ranks."""
    ranks = ranks.double()
    out = {f"{prefix}_r{k}": 100.0 * (ranks <= k).double().mean().item() for k in KS}
    out[f"{prefix}_median_rank"] = ranks.quantile(0.5).item()  # averages the middle two when N is even
    out[f"{prefix}_mean_rank"] = ranks.mean().item()
    return out


def dual_softmax(sim: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores to rank videos by, scores to rank captions by): sim times the softmax of
    sim / temperature over captions (dim 0), resp. over videos (dim 1)."""
    return sim * torch.softmax(sim / temperature, dim=0), sim * torch.softmax(sim / temperature, dim=1)


def retrieval_metrics(sim: torch.Tensor, caption_video: torch.Tensor | None = None,
                      dsl_temperature: float | None = None) -> dict:
    """t2v_* and v2t_* metrics (module docstring), `pairs` (videos, the name kept from the
    one-caption evaluation), `videos`, `captions`, `chance_r1` (text-to-video R@1 of a
    random ranking); with dsl_temperature also dsl_t2v_* and dsl_v2t_*."""
    sim = sim.double()
    n_text, n_video = sim.shape
    caption_video = torch.arange(n_text) if caption_video is None else caption_video.long()
    if caption_video.shape != (n_text,) or bool(((caption_video < 0) | (caption_video >= n_video)).any()):
        raise ValueError(f"caption_video must map each of the {n_text} captions to one of "
                         f"{n_video} videos")
    out = {"pairs": n_video, "videos": n_video, "captions": n_text}
    out.update(rank_summary(t2v_ranks(sim, caption_video), "t2v"))
    out.update(rank_summary(v2t_ranks(sim, caption_video), "v2t"))
    if dsl_temperature is not None:
        for_videos, for_captions = dual_softmax(sim, dsl_temperature)
        out.update(rank_summary(t2v_ranks(for_videos, caption_video), "dsl_t2v"))
        out.update(rank_summary(v2t_ranks(for_captions, caption_video), "dsl_v2t"))
        out["dsl_temperature"] = dsl_temperature
    out["chance_r1"] = 100.0 / max(1, n_video)
    return out
