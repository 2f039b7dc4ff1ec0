"""`longvivit eval`: a checkpoint's or an export's zero-shot metrics on a val split (the
evaluator: longvivit/eval/evaluate.py; docs/evaluation.md).

    longvivit eval CHECKPOINT [--data SHARDS] [--batch-size N] [--mask-ratio R]
                   [--tasks t2v_v2t,paragraph,zeroshot,multilabel,mc] [--dual-softmax [--dsl-temperature T]]
                   [--save-embeddings FILE.safetensors] [--out FILE]
                   [--report DIR] [--log-dir RUN_DIR] [--gallery N] [--collective-timeout S]
    longvivit eval --from-embeddings FILE.safetensors [--tasks ...] [--dual-softmax]
    torchrun --nproc_per_node 8 -m longvivit.cli eval CHECKPOINT ...
    deepspeed --num_gpus 8 --module longvivit.cli eval CHECKPOINT ...

CHECKPOINT is a run directory, its checkpoints/ directory, a tag directory or an exported
directory. Under a launcher every rank holds the whole model and embeds its part of the
split; the embeddings are all-gathered and rank 0 prints and writes. Output: one JSON line
per task, the t2v_v2t line last. Bad input is one line on stderr naming the argument, exit
2, before a process group, a model or any output exists (check_inputs).
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from pathlib import Path

from safetensors import safe_open

from longvivit.config import ArgumentParser, ConfigError, load_config
from longvivit.data.load import clean_shared_memory, open_loader
from longvivit.distributed import collectives as dist
from longvivit.distributed.config import TimeoutConfig
from longvivit.eval.evaluate import DSL_TEMPERATURE, TASKS, Embeddings, embed, eval_scalars, task_metrics
from longvivit.eval.gallery import Gallery, render
from longvivit.eval.report import write_report
from longvivit.eval.zeroshot import DEFAULT_TEMPLATES, read_templates
from longvivit.model.config import ModelConfig
from longvivit.train import checkpoint, export
from longvivit.train.config import (
    RunConfig,
    check_shards,
    check_tokenizer_file,
    check_writable_dir,
    check_writable_file,
    one_line,
)
from longvivit.train.metrics import RunLogger


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
    model, cfg = export.load_any(args.checkpoint)
    cfg.data.val = args.data or cfg.data.val
    cfg.data.tokenizer = args.tokenizer or cfg.data.tokenizer
    cfg.data.batch_size = args.batch_size or cfg.data.batch_size
    device = dist.bound_device()
    clean_shared_memory(cfg.data)
    loader = open_loader(cfg.data, "val", device, d.rank, d.world_size, False, cfg.model.text.tokenizer,
                         cfg.model.text.vocab_size)
    try:
        templates = read_templates(args.templates) if args.templates else DEFAULT_TEMPLATES
        emb = embed(model.to(device), loader, args.mask_ratio, args.max_batches, paragraphs, templates,
                    gallery_queries)
        return emb, str(cfg.data.val)
    finally:
        loader.close()


def print_lines(lines: list[dict], out: str | None) -> None:
    """The JSON lines on stdout, and in the file `out` when given."""
    text = "".join(json.dumps(line) + "\n" for line in lines)
    if out:
        Path(out).write_text(text)
    print(text, end="", flush=True)


def from_embeddings(args: argparse.Namespace) -> int:
    emb, info = Embeddings.load(args.from_embeddings)
    held = [t for t in TASKS if (t != "paragraph" or emb.paragraph is not None)
            and (t != "zeroshot" or emb.classes is not None)
            and (t != "multilabel" or emb.label_classes is not None) and (t != "mc" or emb.mc is not None)]
    tasks = args.tasks.split(",") if args.tasks else held
    try:
        lines = task_metrics(emb, tasks, args.dsl_temperature if args.dual_softmax else None)
    except ValueError as err:  # a task the file holds no embeddings for
        print(f"longvivit eval: {args.from_embeddings}: {err}", file=sys.stderr)
        return 2
    print_lines([{**line, **info} for line in lines], args.out)
    return 0


def checkpoint_step(path: str | Path) -> int:
    """The step of the checkpoint `path` names; 0 for an export directory (it keeps none)."""
    return 0 if export.is_export(path) else checkpoint.tag_step(checkpoint.find_checkpoint(path))


def log_eval(out: str | Path, step: int, lines: list[dict], gallery: Gallery | None) -> None:
    """The trainer's eval record in run directory `out`: eval/* scalars and the gallery
    image in out/tb, an "eval" line in out/metrics.jsonl."""
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
        write_report(args.report, lines, gallery, info)
    if args.log_dir:
        log_eval(args.log_dir, checkpoint_step(args.checkpoint), lines, gallery)


def start_process_group(d: dist.DistEnv, timeout_s: float) -> dict[str, str | None]:
    """Bind this rank's device, then the process group under a launcher (world size > 1);
    one plain process needs none. The environment variables it set, with their values
    before (dist.restore_env)."""
    saved = dist.setup_env(d)
    dist.bind_device(d)
    if d.world_size > 1:
        dist.init_process_group(timedelta(seconds=timeout_s))
    return saved


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
        saved_env = start_process_group(d, args.collective_timeout)
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
            print_lines([{**line, **info} for line in lines], args.out)
            write_pictures(args, lines, emb.gallery, info)
    finally:
        dist.shutdown(d)
        if d.world_size == 1:  # called in-process (a notebook, the tests): leave no RANK=0 behind
            dist.restore_env(saved_env)
    return 0
