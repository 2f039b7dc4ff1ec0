"""The evaluator: a model's embeddings of a split (every caption a query, whole-clip
paragraphs, zero-shot classes), gathered over ranks, and the metrics of each task. The
trainer's periodic evals and `longvivit eval` (longvivit/cli/eval.py) both call `evaluate`.

Tasks (metrics: retrieval.py):
  t2v_v2t    every caption of every clip is a query: text-to-video ranks each caption's
             clip among all clips; video-to-text counts a hit at k when any of the clip's
             captions is among the first k of all captions
  paragraph  each clip's captions joined in order (`paragraph_text`) into one query,
             tokenized at the text tower's context_length, against the same clip embedding
             (the whole clip at the model's frame count: data.frames = model.video.frames);
             t2v_* / v2t_* in its line mean paragraph-to-video / video-to-paragraph
  zeroshot   when every clip of the split has a class label (the shards' `label` column):
             each clip classified among the classes the split names, by prompt templates
             (zeroshot.py): top-1, top-5, mean per-class
  multilabel when every clip has a list of classes (the shards' `labels` column: the
             synthetic benchmark's objects): mAP over the classes, hit@1, each next to
             chance (zeroshot.py)
  mc         when some clips hold multiple-choice items (the shards' `mc` column): each
             answer, alone and after its question, scored against the clip at the text
             tower's context_length; top-1 next to chance, per kind (multichoice.py)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from longvivit.distributed import collectives as dist
from longvivit.eval.gallery import Gallery, clips_shown, select_queries, thumbnail_strip
from longvivit.eval.multichoice import McEmbeddings, embed_items, items_of, mc_metrics
from longvivit.eval.retrieval import retrieval_metrics
from longvivit.eval.zeroshot import (
    DEFAULT_TEMPLATES,
    classification_metrics,
    classifier,
    label_lists_of,
    labels_of,
    multilabel_classifier,
    multilabel_metrics,
    text_embedder,
)

TASKS = ("zeroshot", "multilabel", "mc", "paragraph", "t2v_v2t")  # in printing order: t2v_v2t last
DSL_TEMPERATURE = 0.01  # sim / 0.01: CLIP's logit scale of 100, as DSL evaluations use
ZEROSHOT_SCALARS = ("top1", "top5", "mean_per_class", "chance_top1")  # beside the retrieval metrics
MULTILABEL_SCALARS = ("map", "chance_map", "hit1", "chance_hit1")
MC_PREFIXES = ("items", "top1", "chance_top1")  # and their per-kind forms (top1_order, ...)
MC_TENSORS = ("answers", "answers_with_question", "answer_item", "item_video", "correct")


# ---------------------------------------------------------------------------- embeddings

@dataclass
class Embeddings:
    """A split's L2-normalised embeddings, clips in sample-index order."""
    index: torch.Tensor  # (Nv,) int64: each clip's sample index in the split
    video: torch.Tensor  # (Nv, E)
    text: torch.Tensor  # (Nt, E): every caption, grouped by clip, in stored order
    caption_video: torch.Tensor  # (Nt,) int64: the row of `video` each caption describes
    paragraph: torch.Tensor | None = None  # (Nv, E): each clip's captions as one query
    classes: torch.Tensor | None = None  # (C, E): zero-shot class embeddings (labelled splits)
    label: torch.Tensor | None = None  # (Nv,) int64: each clip's class row in `classes`
    decode_failures: int = 0
    gallery: Gallery | None = None  # retrieval pictures (embed(gallery_queries=N)); not saved
    label_classes: torch.Tensor | None = None  # (C', E): multi-label class embeddings
    targets: torch.Tensor | None = None  # (Nv, C') bool: the classes each clip holds
    mc: McEmbeddings | None = None  # the split's multiple-choice items, embedded

    def save(self, path: str | Path, **info: str) -> None:
        tensors = {"index": self.index, "video": self.video, "text": self.text,
                   "caption_video": self.caption_video}
        for name in ("paragraph", "classes", "label", "label_classes", "targets"):
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name)
        meta = {"decode_failures": str(self.decode_failures), **{k: str(v) for k, v in info.items()}}
        if self.mc is not None:
            tensors.update({f"mc_{k}": getattr(self.mc, k) for k in MC_TENSORS})
            meta["mc_kinds"] = json.dumps(self.mc.kinds)
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> tuple["Embeddings", dict[str, str]]:
        """(embeddings, the info saved with them)."""
        with safe_open(str(path), framework="pt") as f:
            t = {k: f.get_tensor(k) for k in f.keys()}
            meta = dict(f.metadata() or {})
        emb = cls(t["index"], t["video"], t["text"], t["caption_video"], t.get("paragraph"),
                  t.get("classes"), t.get("label"), int(meta.pop("decode_failures", 0)),
                  label_classes=t.get("label_classes"), targets=t.get("targets"))
        if "mc_kinds" in meta:
            emb.mc = McEmbeddings(*(t[f"mc_{k}"] for k in MC_TENSORS), json.loads(meta.pop("mc_kinds")))
        return emb, meta


def paragraph_text(captions: list[str]) -> str:
    """A clip's captions as one query: in stored order, separated by a space."""
    return " ".join(c.strip() for c in captions)


def caption_queries(batch: dict, tokenizer, length: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(ids, mask) of every caption of the batch's clips, clip by clip, and the number per
    clip. Batches without caption strings (data.source=synthetic) have their one tokenized
    caption."""
    captions = batch.get("captions")
    if captions is None:
        return batch["text_ids"], batch["text_mask"], [1] * len(batch["text_ids"])
    ids, mask = tokenizer.encode([c for clip in captions for c in clip], length)
    device = batch["text_ids"].device
    return ids.to(device), mask.to(device), [len(clip) for clip in captions]


def paragraph_queries(batch: dict, tokenizer, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of each clip's paragraph (its one caption when the batch has no strings)."""
    captions = batch.get("captions")
    if captions is None:
        return batch["text_ids"], batch["text_mask"]
    ids, mask = tokenizer.encode([paragraph_text(clip) for clip in captions], length)
    device = batch["text_ids"].device
    return ids.to(device), mask.to(device)


@torch.no_grad()
def embed_split(model, loader, mask_ratio: float = 0.0, max_batches: int = 0,
                paragraphs: bool = False, thumbnails: dict | None = None) -> dict:
    """This rank's part of the split: {sample index: (video (E,), captions (C, E),
    paragraph (E,) or None)}. `thumbnails`, when given, gets {sample index: (strip,
    caption strings)} of every clip of a batch that has caption strings (gallery.py).

    Under ZeRO-3 every rank must run the same number of forwards (each forward gathers
    the partitioned weights), so a rank that runs out of batches repeats its last one
    and throws the result away until no rank has batches left.
    """
    tokenizer, text_length = getattr(loader, "tokenizer", None), loader.cfg.text_length
    context_length = model.cfg.text.context_length  # paragraphs: as long as the tower reads
    it, last, out, n = iter(loader), None, {}, 0
    while True:
        batch = next(it, None) if not (max_batches and n >= max_batches) else None
        if not dist.dist_any(batch is not None):
            return out
        real = batch is not None
        batch = batch if real else last
        v = model.encode_video(batch["video"], mask_ratio=mask_ratio, normalize=True,
                               real_frames=batch["real_frames"])
        ids, mask, counts = caption_queries(batch, tokenizer, text_length)
        t = model.encode_text(ids, mask, normalize=True).float().cpu().split(counts)
        p = [None] * len(counts)
        if paragraphs:
            p = model.encode_text(*paragraph_queries(batch, tokenizer, context_length), normalize=True)
            p = p.float().cpu()
        if real:
            v = v.float().cpu()
            for i, idx in enumerate(batch["index"].tolist()):
                # clones: a view would pickle the whole batch's storage into the gather
                out[idx] = (v[i].clone(), t[i].clone(), None if p[i] is None else p[i].clone())
            if thumbnails is not None and batch.get("captions") is not None:
                keep_thumbnails(thumbnails, batch)
            last, n = batch, n + 1


def keep_thumbnails(thumbnails: dict, batch: dict) -> None:
    real = batch["real_frames"].tolist()
    for i, idx in enumerate(batch["index"].tolist()):
        thumbnails[idx] = (thumbnail_strip(batch["video"][i], real[i]), list(batch["captions"][i]))


def gather_embeddings(local: dict) -> Embeddings:
    """All-gather per-rank embeddings, dedupe by sample index (the val split may repeat
    samples to even ranks out), in index order."""
    merged = {}
    for part in dist.all_gather_object(local):
        merged.update(part)
    if not merged:
        raise RuntimeError("the val split yielded no samples")
    keys = sorted(merged)
    video, captions, paragraphs = zip(*(merged[k] for k in keys))
    counts = torch.tensor([len(c) for c in captions])
    return Embeddings(
        index=torch.tensor(keys), video=F.normalize(torch.stack(video), dim=-1),
        text=F.normalize(torch.cat(captions), dim=-1),
        caption_video=torch.repeat_interleave(torch.arange(len(keys)), counts),
        paragraph=None if paragraphs[0] is None else F.normalize(torch.stack(paragraphs), dim=-1))


def embed(model, loader, mask_ratio: float = 0.0, max_batches: int = 0,
          paragraphs: bool = False, templates: Sequence[str] = DEFAULT_TEMPLATES,
          gallery_queries: int = 0) -> Embeddings:
    """The whole split's embeddings, gathered from every rank (call on every rank), with
    the model in eval mode meanwhile; a labelled split's zero-shot classes too; with
    gallery_queries > 0 the gallery of that many queries (None without caption strings)."""
    was_training = model.training
    model.eval()
    thumbnails = {} if gallery_queries > 0 else None
    try:
        emb = gather_embeddings(embed_split(model, loader, mask_ratio, max_batches, paragraphs, thumbnails))
        add_classes(emb, model, loader, templates)
        add_label_classes(emb, model, loader, templates)
        add_items(emb, model, loader)
    finally:
        model.train(was_training)
    emb.decode_failures = int(dist.all_reduce([loader.decode_failures])[0])
    if thumbnails is not None:
        emb.gallery = gather_gallery(emb, thumbnails, gallery_queries)
    return emb


def gather_gallery(emb: Embeddings, thumbnails: dict, queries: int) -> Gallery | None:
    """The gallery of the first `queries` clips' first captions (call on every rank: each
    holds the same embeddings, so each picks the same clips), its strips and captions
    gathered from the ranks that embedded them. None when a clip shown has none (batches
    without caption strings: data.source=synthetic)."""
    picked = select_queries(emb.text, emb.video, emb.caption_video, emb.index, queries)
    shown = clips_shown(picked)
    merged = {}
    for part in dist.all_gather_object({k: v for k, v in thumbnails.items() if k in shown}):
        merged.update(part)
    if not picked or not shown <= merged.keys():
        return None
    return Gallery(picked, len(emb.index), {k: merged[k][0] for k in shown}, {k: merged[k][1] for k in shown})


def add_classes(emb: Embeddings, model, loader, templates: Sequence[str]) -> None:
    """The zero-shot classes of a split whose every clip has a label (shards' `label`
    column; synthetic batches have none): the same on every rank."""
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        return
    labels = labels_of(dataset, emb.index.tolist())
    if all(labels):
        _, emb.classes, emb.label = classifier(model, loader.tokenizer, loader.cfg.text_length, labels, templates)


def add_label_classes(emb: Embeddings, model, loader, templates: Sequence[str]) -> None:
    """The multi-label classes of a split whose every clip has a class list (shards'
    `labels` column): the same on every rank."""
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        return
    label_lists = label_lists_of(dataset, emb.index.tolist())
    if all(label_lists):
        _, emb.label_classes, emb.targets = multilabel_classifier(model, loader.tokenizer, loader.cfg.text_length,
                                                                  label_lists, templates)


def add_items(emb: Embeddings, model, loader) -> None:
    """The multiple-choice items of the split's clips (shards' `mc` column), embedded at the
    text tower's context_length (an answer after its question is longer than a caption):
    the same on every rank."""
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        return
    per_clip = items_of(dataset, emb.index.tolist())
    items = [it for clip in per_clip for it in clip]
    if items:
        rows = [row for row, clip in enumerate(per_clip) for _ in clip]
        embed_texts = text_embedder(model, loader.tokenizer, model.cfg.text.context_length)
        emb.mc = embed_items(items, rows, embed_texts)


# ---------------------------------------------------------------------------- metrics

def task_metrics(emb: Embeddings, tasks: list[str], dsl_temperature: float | None = None) -> list[dict]:
    """One metrics dict per task, in TASKS order."""
    lines = []
    for task in (t for t in TASKS if t in tasks):
        if task == "zeroshot":
            if emb.classes is None:
                continue  # the split has no labels (or not on every clip)
            metrics = classification_metrics(emb.video, emb.classes, emb.label)
        elif task == "multilabel":
            if emb.label_classes is None:
                continue  # the split has no class lists (or not on every clip)
            metrics = multilabel_metrics(emb.video, emb.label_classes, emb.targets)
        elif task == "mc":
            if emb.mc is None:
                continue  # no clip of the split holds an item
            metrics = mc_metrics(emb.video, emb.mc)
        elif task == "paragraph":
            if emb.paragraph is None:
                raise ValueError("no paragraph embeddings (embedded without the paragraph task)")
            metrics = retrieval_metrics(emb.paragraph @ emb.video.t(), None, dsl_temperature)
        else:
            metrics = retrieval_metrics(emb.text @ emb.video.t(), emb.caption_video, dsl_temperature)
        lines.append({"task": task, **metrics, "decode_failures": emb.decode_failures})
    return lines


def evaluate(model, loader, mask_ratio: float = 0.0, max_batches: int = 0,
             gallery_queries: int = 0) -> tuple[dict, Embeddings]:
    """The t2v_v2t metrics of the whole split, the same on every rank (the trainer's eval),
    with a labelled split's zero-shot accuracy as zeroshot_* keys, and the embeddings they
    came from (every rank holds all of them), with the gallery of `gallery_queries` queries
    (`.gallery`: None for 0, or without caption strings)."""
    emb = embed(model, loader, mask_ratio, max_batches, gallery_queries=gallery_queries)
    return eval_scalars(task_metrics(emb, ["zeroshot", "multilabel", "mc", "t2v_v2t"])), emb


def eval_scalars(lines: list[dict]) -> dict:
    """Task lines as one dict, as the trainer logs and summarises them: the t2v_v2t line as
    it is, then the other lines' numbers with the task's name in front (zeroshot_top1,
    multilabel_map, mc_top1, mc_top1_order, paragraph_t2v_r1, ...)."""
    by_task = {line["task"]: line for line in lines}
    out = dict(by_task.get("t2v_v2t", {}))
    for task, line in by_task.items():
        if task == "t2v_v2t":
            continue
        out.update({f"{task}_{k}": line[k] for k in scalar_keys(task, line)})
    return out


def scalar_keys(task: str, line: dict) -> list[str]:
    """The keys of a task's line that eval_scalars keeps."""
    if task == "zeroshot":
        return list(ZEROSHOT_SCALARS)
    if task == "multilabel":
        return list(MULTILABEL_SCALARS)
    prefixes = MC_PREFIXES if task == "mc" else ("t2v_", "v2t_", "dsl_")
    return [k for k in line if k.startswith(prefixes)]
