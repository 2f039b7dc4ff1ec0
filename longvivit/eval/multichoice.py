"""Zero-shot multiple choice, as a contrastive model answers EgoSchema, SSv2-MC or
Charades-MC: an item is a clip, a question and K answers; each answer's text (alone, or
after the question) is embedded by the text tower and scored against the clip's video
embedding, and the best-scoring answer is the model's choice.

    item = {"question": str, "answers": [str, ...] (K >= 2), "answer": int (the right one),
            "kind": str (optional: a category the metrics are also split by)}

A clip may hold several items (the shards' "mc" column, checked when the manifest is read:
manifest.py; the synthetic long-range benchmark writes three a clip, `longvivit import
egoschema` one). Metrics: top-1 accuracy (%) with the
answers alone and after the question, next to chance (the mean over items of 1/K), and per
kind. Ties and non-finite scores count against the model, as in retrieval
(retrieval.beats): an item is right only when its right answer scores strictly above every
other answer of the item.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from longvivit.eval.retrieval import beats


def answer_texts(item: dict, with_question: bool) -> list[str]:
    """The texts scored against the clip: each answer, or the question then the answer."""
    return [f"{item['question']} {a}".strip() if with_question else a for a in item["answers"]]


@dataclass
class McEmbeddings:
    """A split's items, embedded: every answer of every item, item by item.

    answers (A, E) the answers alone and answers_with_question (A, E) after the question,
    L2-normalised; answer_item (A,) the item of each answer; item_video (I,) the row of the
    video embeddings each item asks about; correct (I,) the right answer's index within its
    item; kinds: each item's kind ("" for none)."""
    answers: torch.Tensor
    answers_with_question: torch.Tensor
    answer_item: torch.Tensor
    item_video: torch.Tensor
    correct: torch.Tensor
    kinds: list[str]


@torch.no_grad()
def embed_items(items: Sequence[dict], item_video: Sequence[int],
                embed_texts: Callable[[list[str]], torch.Tensor], chunk: int = 256) -> McEmbeddings:
    """McEmbeddings of `items`, item i asking about video row item_video[i]; embed_texts:
    texts -> (n, E) L2-normalised (the text tower), called on `chunk` texts at a time."""
    def embed(with_question: bool) -> torch.Tensor:
        texts = [t for it in items for t in answer_texts(it, with_question)]
        return torch.cat([embed_texts(texts[i:i + chunk]).float() for i in range(0, len(texts), chunk)])

    sizes = torch.tensor([len(it["answers"]) for it in items], dtype=torch.long)
    return McEmbeddings(embed(False), embed(True), torch.repeat_interleave(torch.arange(len(items)), sizes),
                        torch.tensor(list(item_video), dtype=torch.long),
                        torch.tensor([it["answer"] for it in items], dtype=torch.long),
                        [it.get("kind", "") for it in items])


def item_right(video: torch.Tensor, answers: torch.Tensor, mc: McEmbeddings) -> torch.Tensor:
    """(I,) bool: whether each item's right answer outscores every other answer of it."""
    scores = (video.double()[mc.item_video[mc.answer_item]] * answers.double()).sum(-1)  # (A,)
    n = len(mc.correct)
    first = torch.zeros(n, dtype=torch.long)
    first[1:] = torch.bincount(mc.answer_item, minlength=n).cumsum(0)[:-1]
    right_row = first + mc.correct  # (I,)
    other = torch.arange(len(mc.answer_item)) != right_row[mc.answer_item]  # (A,)
    against = beats(scores, scores[right_row][mc.answer_item]) & other  # (A,)
    return torch.bincount(mc.answer_item, weights=against.double(), minlength=n) == 0


def mc_metrics(video: torch.Tensor, mc: McEmbeddings) -> dict:
    """video (Nv, E) L2-normalised -> items, top1, top1_with_question and chance_top1 (%),
    and per kind items_KIND, top1_KIND, chance_top1_KIND (answers alone)."""
    right = item_right(video, mc.answers, mc)
    sizes = torch.bincount(mc.answer_item, minlength=len(mc.correct)).double()
    out = {"items": len(mc.correct), "top1": 100.0 * right.double().mean().item(),
           "top1_with_question": 100.0 * item_right(video, mc.answers_with_question, mc).double().mean().item(),
           "chance_top1": 100.0 * (1.0 / sizes).mean().item()}
    for kind in sorted(set(mc.kinds) - {""}):
        mine = torch.tensor([k == kind for k in mc.kinds])
        out.update({f"items_{kind}": int(mine.sum()), f"top1_{kind}": 100.0 * right[mine].double().mean().item(),
                    f"chance_top1_{kind}": 100.0 * (1.0 / sizes[mine]).mean().item()})
    return out


def items_of(dataset, indices: Sequence[int]) -> list[list[dict]]:
    """The items of samples `indices` of a shard split (its "mc" column; [] where a sample
    has none, or the shards predate it)."""
    return [list(dataset[int(i)].get("mc") or []) for i in indices]
