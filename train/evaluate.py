"""Zero-shot retrieval on the val split: every caption a query, and whole-clip paragraphs.

    longvivit eval CHECKPOINT [--data SHARDS] [--batch-size N] [--mask-ratio R]
                   [--tasks t2v_v2t,paragraph] [--dual-softmax [--dsl-temperature T]]
                   [--save-embeddings FILE.safetensors] [--out FILE]
                   [--report DIR] [--log-dir RUN_DIR] [--gallery N] [--collective-timeout S]
    longvivit eval --from-embeddings FILE.safetensors [--tasks ...] [--dual-softmax]
    torchrun --nproc_per_node 8 -m longvivit.train.cli eval CHECKPOINT ...
    deepspeed --num_gpus 8 --module longvivit.train.cli eval CHECKPOINT ...

CHECKPOINT is a run directory, its checkpoints/ directory, a tag directory or an exported
directory (model.safetensors + config.yaml). Under a launcher every rank holds the whole
model, embeds its part of the split, and the embeddings are all-gathered (dist.py); rank 0
prints and writes.

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
             (zeroshot.py; --templates FILE to override): top-1, top-5, mean per-class

Output: one JSON line per task, {"task": ..., metrics, "decode_failures", "data",
"checkpoint"}, the t2v_v2t line last (a script reading the last line gets t2v_r1 etc. as
before). `pairs` counts the distinct clips evaluated, `captions` the queries; clips that
failed to decode are left out of both and counted in `decode_failures`. --dual-softmax adds
dsl_* keys beside the plain ones (retrieval.dual_softmax).

Bad input (a checkpoint that is not one or not whole, shards or a tokenizer that cannot be
read, an output that cannot be written, numbers out of range) is one line on stderr naming
the argument, exit 2, before a process group, a model or any output exists (check_inputs).

--save-embeddings writes the embeddings (video, text, paragraph, the clips' sample `index`
and `caption_video`: the video row each caption belongs to) so --from-embeddings can score
them again, with other options, without a model.

Pictures (gallery.py): --report DIR writes DIR/index.html, every task's metrics and a
gallery of the first --gallery N (default 4) clips' first captions, each with its top-3
clips as frame strips, the right one marked (report.py); --log-dir RUN_DIR adds the metrics
and the gallery image (`eval/gallery`) to RUN_DIR/tb and RUN_DIR/metrics.jsonl at the
checkpoint's step, as the trainer's evals are. The gallery needs the clips' frames: neither
works with --from-embeddings.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from longvivit.config import ArgumentParser, load_config

from . import dist
from .config import ConfigError, TimeoutConfig, one_line
from .gallery import Gallery, clips_shown, select_queries, thumbnail_strip
from .retrieval import retrieval_metrics
from .zeroshot import DEFAULT_TEMPLATES, classification_metrics, classifier, labels_of, read_templates

TASKS = ("zeroshot", "paragraph", "t2v_v2t")  # in printing order: t2v_v2t last
DSL_TEMPERATURE = 0.01  # sim / 0.01: CLIP's logit scale of 100, as DSL evaluations use
ZEROSHOT_SCALARS = ("top1", "top5", "mean_per_class", "chance_top1")  # beside the retrieval metrics


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

    def save(self, path: str | Path, **info: str) -> None:
        from safetensors.torch import save_file

        tensors = {"index": self.index, "video": self.video, "text": self.text,
                   "caption_video": self.caption_video}
        for name in ("paragraph", "classes", "label"):
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name)
        meta = {"decode_failures": str(self.decode_failures), **{k: str(v) for k, v in info.items()}}
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> tuple["Embeddings", dict[str, str]]:
        """(embeddings, the info saved with them)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            t = {k: f.get_tensor(k) for k in f.keys()}
            meta = dict(f.metadata() or {})
        emb = cls(t["index"], t["video"], t["text"], t["caption_video"], t.get("paragraph"),
                  t.get("classes"), t.get("label"), int(meta.pop("decode_failures", 0)))
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


# ---------------------------------------------------------------------------- metrics

def task_metrics(emb: Embeddings, tasks: list[str], dsl_temperature: float | None = None) -> list[dict]:
    """One metrics dict per task, in TASKS order."""
    lines = []
    for task in (t for t in TASKS if t in tasks):
        if task == "zeroshot":
            if emb.classes is None:
                continue  # the split has no labels (or not on every clip)
            metrics = classification_metrics(emb.video, emb.classes, emb.label)
        elif task == "paragraph":
            if emb.paragraph is None:
                raise ValueError("no paragraph embeddings (embedded without the paragraph task)")
            metrics = retrieval_metrics(emb.paragraph @ emb.video.t(), None, dsl_temperature)
        else:
            metrics = retrieval_metrics(emb.text @ emb.video.t(), emb.caption_video, dsl_temperature)
        lines.append({"task": task, **metrics, "decode_failures": emb.decode_failures})
    return lines


def evaluate(model, loader, mask_ratio: float = 0.0, max_batches: int = 0,
             embeddings_file: Path | None = None, gallery_queries: int = 0) -> tuple[dict, Gallery | None]:
    """The t2v_v2t metrics of the whole split, the same on every rank (the trainer's eval),
    with a labelled split's zero-shot accuracy as zeroshot_* keys, and the gallery of
    `gallery_queries` queries (None for 0, or without caption strings).
    `embeddings_file`: also save the embeddings there (a .safetensors file); pass it on one
    rank only, as every rank holds all of them."""
    emb = embed(model, loader, mask_ratio, max_batches, gallery_queries=gallery_queries)
    if embeddings_file is not None:
        emb.save(embeddings_file)
    return eval_scalars(task_metrics(emb, ["zeroshot", "t2v_v2t"])), emb.gallery


def eval_scalars(lines: list[dict]) -> dict:
    """Task lines as one dict, as the trainer logs and summarises them: the t2v_v2t line as
    it is, then the zeroshot line's accuracies and the paragraph line's ranks with the
    task's name in front (zeroshot_top1, paragraph_t2v_r1, ...)."""
    by_task = {line["task"]: line for line in lines}
    out = dict(by_task.get("t2v_v2t", {}))
    for task, line in by_task.items():
        if task == "t2v_v2t":
            continue
        keep = ZEROSHOT_SCALARS if task == "zeroshot" else [k for k in line if k.startswith(("t2v_", "v2t_", "dsl_"))]
        out.update({f"{task}_{k}": line[k] for k in keep})
    return out


# ---------------------------------------------------------------------------- CLI

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ArgumentParser(prog="longvivit eval", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", help="run dir, checkpoints dir, tag dir or exported dir")
    p.add_argument("--data", help="val shards (default: the checkpoint's data.val)")
    p.add_argument("--tokenizer", help="sentencepiece model (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, help="default: the run's data.batch_size")
    p.add_argument("--mask-ratio", type=float, default=0.0, help="0 (default): unmasked")
    p.add_argument("--max-batches", type=int, default=0, help="per rank; 0: the whole split")
    p.add_argument("--tasks", help=f"comma-separated from {','.join(TASKS)} (default: all; "
                   "with --from-embeddings, all the file holds)")
    p.add_argument("--dual-softmax", action="store_true",
                   help="also report dual-softmax re-ranked metrics (dsl_* keys)")
    p.add_argument("--dsl-temperature", type=float, default=DSL_TEMPERATURE)
    p.add_argument("--templates", metavar="FILE", help="zero-shot prompt templates, one per line with {} "
                   "for the class name (default: zeroshot.DEFAULT_TEMPLATES)")
    p.add_argument("--save-embeddings", metavar="FILE", help="write the embeddings (.safetensors)")
    p.add_argument("--from-embeddings", metavar="FILE",
                   help="score embeddings saved by --save-embeddings instead of a checkpoint")
    p.add_argument("--out", help="also write the JSON lines to this file")
    p.add_argument("--report", metavar="DIR", help="write DIR/index.html: the metrics and the retrieval gallery")
    p.add_argument("--log-dir", metavar="RUN_DIR", help="add the metrics and the gallery image to "
                   "RUN_DIR/tb and RUN_DIR/metrics.jsonl at the checkpoint's step")
    p.add_argument("--gallery", type=int, default=4, metavar="N",
                   help="query captions in the gallery of --report / --log-dir (default 4; 0: none)")
    p.add_argument("--collective-timeout", type=float, default=TimeoutConfig.collective_s, metavar="S",
                   help="under a launcher: seconds a collective may wait for a peer before it fails "
                        "(a run config's timeouts.collective_s; default %(default)g)")
    args = p.parse_args(argv)
    if (args.checkpoint is None) == (args.from_embeddings is None):
        p.error("give a CHECKPOINT or --from-embeddings FILE (one of them)")
    if args.from_embeddings and (args.report or args.log_dir):
        p.error("--report and --log-dir need the clips' frames, which an embeddings file does not hold: "
                "give the CHECKPOINT instead")
    if args.gallery < 0:
        p.error(f"--gallery {args.gallery} must be >= 0")
    if args.batch_size is not None and args.batch_size < 1:
        p.error(f"--batch-size {args.batch_size} must be >= 1 (leave it out for the run's data.batch_size)")
    if not 0.0 <= args.mask_ratio < 1.0:
        p.error(f"--mask-ratio {args.mask_ratio:g} is outside [0, 1)")
    if args.max_batches < 0:
        p.error(f"--max-batches {args.max_batches} must be >= 0 (0: the whole split)")
    if args.collective_timeout <= 0:
        p.error(f"--collective-timeout {args.collective_timeout:g} must be > 0")
    tasks = args.tasks.split(",") if args.tasks else []
    if unknown := [t for t in tasks if t not in TASKS]:
        p.error(f"unknown task(s) {', '.join(unknown)}: choose from {', '.join(TASKS)}")
    if args.dsl_temperature <= 0:
        p.error(f"--dsl-temperature {args.dsl_temperature} must be > 0")
    return args


def check_inputs(args: argparse.Namespace) -> None:
    """Every file eval reads and every place it writes, checked before a process group, a
    model or an output exists: one ConfigError naming the argument and what is wrong."""
    from .config import check_writable_dir, check_writable_file

    for key, path in (("--out", args.out), ("--save-embeddings", args.save_embeddings)):
        if path:
            check_writable_file(key, path)
    for key, path in (("--report", args.report), ("--log-dir", args.log_dir)):
        if path:
            check_writable_dir(key, path)
    if args.templates:
        try:
            read_templates(args.templates)
        except OSError as err:
            raise ConfigError(f"--templates: {one_line(err)}") from None
        except ValueError as err:  # names the file and the line
            raise ConfigError(f"--templates: {' '.join(str(err).split())}") from None
    if args.from_embeddings:
        check_embeddings_file(args.from_embeddings)
    else:
        check_checkpoint(args)


def check_embeddings_file(path: str) -> None:
    """A file --save-embeddings wrote: whole safetensors holding the tensors Embeddings.load reads."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise ConfigError(f"--from-embeddings: {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            missing = sorted({"index", "video", "text", "caption_video"} - set(f.keys()))
    except Exception as err:  # noqa: BLE001 -- SafetensorError, OSError
        raise ConfigError(f"--from-embeddings: {path}: not a whole safetensors file ({one_line(err)})") from None
    if missing:
        raise ConfigError(f"--from-embeddings: {path}: holds no eval embeddings (no {', '.join(missing)}; "
                          "write them with --save-embeddings)")


def check_checkpoint(args: argparse.Namespace) -> None:
    """The checkpoint or export (checked_source: whole files), its run config, weights
    that fit its model config, and the val shards and tokenizer the eval would read
    (--data / --tokenizer, else the checkpoint's), as embed_checkpoint reads them."""
    from longvivit.model.config import ModelConfig

    from . import checkpoint, export
    from .config import RunConfig, check_shards, check_tokenizer_file

    source = export.checked_source(args.checkpoint, "checkpoint")
    exported = source.name == export.WEIGHTS
    folder = source.parent if exported else source
    run = _stored(RunConfig, folder / ("run_config.yaml" if exported else checkpoint.CONFIG_FILE))
    model_cfg = _stored(ModelConfig, folder / "config.yaml") if exported else run.model
    export.check_fits(source, model_cfg, "checkpoint")
    if run.data.source == "synthetic":
        return
    val = args.data or run.data.val
    if "://" not in val:
        check_shards("--data" if args.data else "--data (the checkpoint's data.val)", val)
    kept = folder / "tokenizer.model"
    tokenizer = args.tokenizer or (str(kept) if exported and kept.is_file() else run.data.tokenizer)
    key = "--tokenizer" if args.tokenizer else "--tokenizer (the checkpoint's data.tokenizer)"
    vocab = check_tokenizer_file(key, model_cfg.text.tokenizer, tokenizer).vocab_size
    if vocab > model_cfg.text.vocab_size:
        raise ConfigError(f"{key}: {tokenizer} has {vocab} pieces, more than the model's text vocabulary "
                          f"({model_cfg.text.vocab_size})")


def _stored(schema, path: Path):
    """A config stored beside the weights, or ConfigError('checkpoint: PATH: ...')."""
    try:
        return load_config(schema, path)
    except ConfigError as err:  # load_yaml's own errors name the file already
        problem = str(err).removeprefix(f"config: {path}: ")
        raise ConfigError(f"checkpoint: {path}: {problem}") from None


def embed_checkpoint(args: argparse.Namespace, d: dist.DistEnv, paragraphs: bool,
                     gallery_queries: int = 0) -> tuple[Embeddings, str]:
    """This checkpoint's embeddings of the split (call on every rank), and the split."""
    from . import export
    from .run import clean_streaming_shm, open_loader

    model, cfg = export.load_any(args.checkpoint)
    cfg.data.val = args.data or cfg.data.val
    cfg.data.tokenizer = args.tokenizer or cfg.data.tokenizer
    cfg.data.batch_size = args.batch_size or cfg.data.batch_size
    device = dist.bound_device()
    clean_streaming_shm(cfg)
    loader = open_loader(cfg, "val", device, d, training=False)
    try:
        templates = read_templates(args.templates) if args.templates else DEFAULT_TEMPLATES
        emb = embed(model.to(device), loader, args.mask_ratio, args.max_batches, paragraphs, templates,
                    gallery_queries)
        return emb, str(cfg.data.val)
    finally:
        loader.close()


def report(lines: list[dict], out: str | None) -> None:
    text = "".join(json.dumps(line) + "\n" for line in lines)
    if out:
        Path(out).write_text(text)
    print(text, end="", flush=True)


def from_embeddings(args: argparse.Namespace) -> int:
    emb, info = Embeddings.load(args.from_embeddings)
    held = [t for t in TASKS if (t != "paragraph" or emb.paragraph is not None)
            and (t != "zeroshot" or emb.classes is not None)]
    tasks = args.tasks.split(",") if args.tasks else held
    try:
        lines = task_metrics(emb, tasks, args.dsl_temperature if args.dual_softmax else None)
    except ValueError as err:  # a task the file holds no embeddings for
        print(f"longvivit eval: {args.from_embeddings}: {err}", file=sys.stderr)
        return 2
    report([{**line, **info} for line in lines], args.out)
    return 0


def checkpoint_step(path: str | Path) -> int:
    """The step of the checkpoint `path` names; 0 for an export directory (it keeps none)."""
    from . import checkpoint, export

    return 0 if export.is_export(path) else checkpoint.tag_step(checkpoint.find_checkpoint(path))


def log_eval(out: str | Path, step: int, lines: list[dict], gallery: Gallery | None) -> None:
    """The trainer's eval record in run directory `out`: eval/* scalars and the gallery
    image in out/tb, an "eval" line in out/metrics.jsonl."""
    from .gallery import render
    from .logging import RunLogger

    Path(out).mkdir(parents=True, exist_ok=True)
    log = RunLogger(out, 0, 0, step, progress=False)
    try:
        log.scalars(step, {k: v for k, v in eval_scalars(lines).items() if isinstance(v, (int, float))}, "eval")
        if gallery is not None:
            log.image(step, "eval/gallery", render(gallery))
    finally:
        log.close()


def write_pictures(args: argparse.Namespace, lines: list[dict], gallery: Gallery | None, info: dict) -> None:
    """--report and --log-dir (rank 0)."""
    if args.report:
        from .report import write_report

        write_report(args.report, lines, gallery, info)
    if args.log_dir:
        log_eval(args.log_dir, checkpoint_step(args.checkpoint), lines, gallery)


def start_process_group(d: dist.DistEnv, timeout_s: float) -> None:
    """Bind this rank's device, then the process group under a launcher (world size > 1);
    one plain process needs none."""
    dist.setup_env(d)
    dist.bind_device(d)
    if d.world_size > 1:
        dist.init_process_group(timedelta(seconds=timeout_s))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        check_inputs(args)
    except ConfigError as err:
        print(f"longvivit eval: {err}".splitlines()[0], file=sys.stderr)
        return 2
    if args.from_embeddings:
        return from_embeddings(args)
    tasks = args.tasks.split(",") if args.tasks else list(TASKS)
    d = dist.read_env()
    try:
        start_process_group(d, args.collective_timeout)
    except ConfigError as err:  # no device for this rank (dist.rank_device)
        print(f"longvivit eval: {err}", file=sys.stderr)
        return 2
    gallery = args.gallery if args.report or args.log_dir else 0
    try:
        emb, data = embed_checkpoint(args, d, "paragraph" in tasks, gallery)
        if d.is_main:
            info = {"data": data, "checkpoint": str(args.checkpoint)}
            if args.save_embeddings:
                emb.save(args.save_embeddings, **info)
            lines = task_metrics(emb, tasks, args.dsl_temperature if args.dual_softmax else None)
            report([{**line, **info} for line in lines], args.out)
            write_pictures(args, lines, emb.gallery, info)
    finally:
        dist.shutdown(d)
    return 0
