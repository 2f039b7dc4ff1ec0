"""Zero-shot classification: class names and prompt templates -> one text embedding per class
(open_clip's zero_shot_classifier: each template filled with the class name, embedded,
normalised, averaged, normalised again) -> each video's class is the nearest.

Metrics: top-1 and top-5 accuracy and the mean per-class accuracy (the mean over classes of
the share of that class's videos ranked top-1; Kinetics and UCF papers report it when
classes are unbalanced). Ties and non-finite scores count against the model, as in
retrieval (retrieval.beats): the true class's rank is 1 + the number of other classes
scoring at least as high, and last when its own score is not finite.

Multi-label (a clip of several objects or actions, the synthetic benchmark's "labels"):
each class ranks every clip by score, and the class's average precision (AP) is the mean,
over the clips that hold it, of the precision at each one's rank; `map` is the mean over the
classes present (Charades' mAP). Ties count against the model (a clip without the class
tying one with it ranks first), a non-finite score too. `chance_map` is the mean over
classes of the expected AP of a random ranking (exact, not the positive rate). `hit1`: the
share of clips whose best-scoring class is one of theirs (chance: the mean share of the
classes a clip holds).

Templates: DEFAULT_TEMPLATES, or a text file with one template per line, each holding "{}"
where the class name goes (blank lines and lines starting with # skipped).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from longvivit.eval.retrieval import beats

DEFAULT_TEMPLATES = (
    "a video of {}.",
    "a video of a person {}.",
    "a clip showing {}.",
    "an example of {}.",
    "{}.",
)


def read_templates(path: str | Path) -> list[str]:
    """Templates from a file (see the module docstring); ValueError naming the file and
    line when a template has no "{}" or the file holds none."""
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    templates = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{}" not in line:
            raise ValueError(f"templates {path}: line {number} {line!r} has no '{{}}' for the class name")
        templates.append(line)
    if not templates:
        raise ValueError(f"templates {path}: no templates in it")
    return templates


@torch.no_grad()
def class_embeddings(embed_texts: Callable[[list[str]], torch.Tensor], classes: Sequence[str],
                     templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
    """(C, E) L2-normalised: per class, the normalised mean of its templates' normalised
    embeddings. embed_texts: captions -> (n, E) embeddings (e.g. tokenizer + encode_text)."""
    rows = []
    for name in classes:
        emb = F.normalize(embed_texts([t.format(name) for t in templates]).float(), dim=-1)  # (K, E)
        rows.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)


def classification_metrics(video: torch.Tensor, classes: torch.Tensor, labels: torch.Tensor,
                           ks: Sequence[int] = (1, 5)) -> dict:
    """video (N, E) and classes (C, E) L2-normalised, labels (N,) class indices -> metrics:
    top-k accuracy (%), mean per-class accuracy (%) over the classes present, chance."""
    scores = video.double() @ classes.double().t()  # (N, C)
    correct = scores.gather(1, labels[:, None])  # (N, 1)
    ranks = beats(scores, correct).sum(1)  # pessimistic: 1 + others scoring at least as high, or not finite
    out = {"videos": int(labels.numel()), "classes": int(classes.shape[0])}
    for k in ks:
        out[f"top{k}"] = 100.0 * (ranks <= k).double().mean().item()
    present = labels.unique()
    per_class = [(ranks[labels == c] == 1).double().mean().item() for c in present.tolist()]
    out["mean_per_class"] = 100.0 * sum(per_class) / len(per_class)
    out["chance_top1"] = 100.0 / out["classes"]
    return out


def average_precision(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """AP of ranking by `scores` (N,) for the positives `positive` (N,) bool, at least one;
    ties and non-finite scores against the model (see the module docstring)."""
    s = _against(scores, positive)
    order = sorted(range(len(s)), key=lambda i: (-s[i].item(), bool(positive[i])))  # negatives first on ties
    hits = positive[order].double()
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.double)
    return float((precision * hits).sum() / hits.sum())


def _against(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """scores (double) with a non-finite one made the worst for the model: -inf where the
    class is the clip's, inf where it is not."""
    s = scores.double().clone()
    bad = ~torch.isfinite(s)
    s[bad & positive], s[bad & ~positive] = float("-inf"), float("inf")
    return s


def random_ap(n: int, positives: int) -> float:
    """Expected AP of a uniformly random ranking of n items with `positives` of them
    positive: ((R - 1) / (n - 1) * (n - H_n) + H_n) / n, H_n the n-th harmonic number."""
    harmonic = sum(1.0 / k for k in range(1, n + 1))
    share = (positives - 1) / (n - 1) if n > 1 else 0.0
    return (share * (n - harmonic) + harmonic) / n


def multilabel_metrics(video: torch.Tensor, classes: torch.Tensor, targets: torch.Tensor) -> dict:
    """video (N, E), classes (C, E) L2-normalised, targets (N, C) bool -> map, chance_map,
    hit1, chance_hit1 (%) over the classes with at least one clip (module docstring)."""
    scores = video.double() @ classes.double().t()  # (N, C)
    present = [c for c in range(targets.shape[1]) if bool(targets[:, c].any())]
    aps = [average_precision(scores[:, c], targets[:, c]) for c in present]
    chance = [random_ap(len(targets), int(targets[:, c].sum())) for c in present]
    s = _against(scores, targets)
    hit = s.masked_fill(~targets, float("-inf")).amax(1) > s.masked_fill(targets, float("-inf")).amax(1)
    return {"videos": int(targets.shape[0]), "classes": len(present),
            "labels_per_video": targets.sum(1).double().mean().item(),
            "map": 100.0 * sum(aps) / len(aps), "chance_map": 100.0 * sum(chance) / len(chance),
            "hit1": 100.0 * hit.double().mean().item(),
            "chance_hit1": 100.0 * (targets.sum(1).double() / targets.shape[1]).mean().item()}


def label_lists_of(dataset, indices: Sequence[int]) -> list[list[str]]:
    """The class lists of samples `indices` of a shard split (its "labels" column; [] where a
    sample has none, or the shards predate it)."""
    return [[str(x) for x in (dataset[int(i)].get("labels") or [])] for i in indices]


def labels_of(dataset, indices: Sequence[int]) -> list[str]:
    """The class names of samples `indices` of a shard split (its "label" column; "" where a
    sample has none, or the shards predate labels)."""
    return [str(dataset[int(i)].get("label", "") or "") for i in indices]


@torch.no_grad()
def classifier(model, tokenizer, text_length: int, labels: Sequence[str],
               templates: Sequence[str] = DEFAULT_TEMPLATES) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The classes `labels` name (sorted), their text embeddings (C, E) from the model's text
    tower and tokenizer, and each label's class index (N,). Under ZeRO-3 every rank must
    call it (the text forwards gather the partitioned weights)."""
    names = sorted(set(labels))
    index = {name: i for i, name in enumerate(names)}
    classes = class_embeddings(text_embedder(model, tokenizer, text_length), names, templates)
    return names, classes, torch.tensor([index[x] for x in labels])


@torch.no_grad()
def multilabel_classifier(model, tokenizer, text_length: int, label_lists: Sequence[Sequence[str]],
                          templates: Sequence[str] = DEFAULT_TEMPLATES) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The classes the lists name (sorted), their text embeddings (C, E) and each clip's
    targets (N, C) bool. Every rank must call it under ZeRO-3, as `classifier`."""
    names = sorted({x for labels in label_lists for x in labels})
    index = {name: i for i, name in enumerate(names)}
    targets = torch.zeros(len(label_lists), len(names), dtype=torch.bool)
    for row, labels in enumerate(label_lists):
        targets[row, [index[x] for x in labels]] = True
    return names, class_embeddings(text_embedder(model, tokenizer, text_length), names, templates), targets


def text_embedder(model, tokenizer, text_length: int) -> Callable[[list[str]], torch.Tensor]:
    """texts -> (n, E) L2-normalised embeddings from the model's text tower, on the CPU."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def embed_texts(texts: list[str]) -> torch.Tensor:
        ids, mask = tokenizer.encode(texts, text_length)
        return model.encode_text(ids.to(device), mask.to(device), normalize=True).cpu()

    return embed_texts
