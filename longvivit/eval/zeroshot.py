"""Zero-shot classification: class names and prompt templates -> one text embedding per class
(open_clip's zero_shot_classifier: each template filled with the class name, embedded,
normalised, averaged, normalised again) -> each video's class is the nearest.

Metrics: top-1 and top-5 accuracy and the mean per-class accuracy (the mean over classes of
the share of that class's videos ranked top-1; Kinetics and UCF papers report it when
classes are unbalanced). Ties and non-finite scores count against the model, as in
retrieval (retrieval.beats): the true class's rank is 1 + the number of other classes
scoring at least as high, and last when its own score is not finite.

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


def text_embedder(model, tokenizer, text_length: int) -> Callable[[list[str]], torch.Tensor]:
    """texts -> (n, E) L2-normalised embeddings from the model's text tower, on the CPU."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def embed_texts(texts: list[str]) -> torch.Tensor:
        ids, mask = tokenizer.encode(texts, text_length)
        return model.encode_text(ids.to(device), mask.to(device), normalize=True).cpu()

    return embed_texts
