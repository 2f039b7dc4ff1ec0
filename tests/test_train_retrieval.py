"""Retrieval with every caption a query (longvivit/eval/retrieval.py) and `longvivit eval` end to end.

Metrics: a hand-made matrix with several captions per video and ties, a naive loop
reference on random tied matrices, the one-caption case equal to the square evaluation,
dual-softmax re-ranking. End to end, on synthetic long clips with 1, 2 or 3 captions each
and a randomly initialised exported tiny model: the eval loader carries every caption,
the caption and paragraph embeddings are the model's on those strings, 2 CPU ranks under
torchrun give the single process's metrics and embeddings, and saved embeddings give the
same lines again. Pictures: --report's page in headless chromium (every task's numbers,
the gallery's queries and their top clips from the embeddings, every image loaded), the
same gallery and frame strips from 2 ranks, --log-dir's TensorBoard image, and --report
refused with --from-embeddings.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import torch

from longvivit.eval.evaluate import Embeddings, paragraph_text
from longvivit.cli.eval import main as eval_main
from longvivit.eval.retrieval import dual_softmax, ranks_of_diagonal, retrieval_metrics, t2v_ranks, v2t_ranks

from browser_support import ReportPage, loaded_dom, processes_using
from train_support import ROOT, communicate

# ---------------------------------------------------------------------------- metrics

def test_several_captions_per_video_hand_made():
    # rows: captions, columns: videos V0..V3; c0, c1 -> V0; c2, c3, c4 -> V1; c5 -> V2; c6 -> V3
    sim = torch.tensor([
        [0.9, 0.1, 0.3, 0.0],  # c0: V0 on top                          t2v rank 1
        [0.9, 0.9, 0.1, 0.0],  # c1: V0 ties V1                          t2v rank 2 (pessimistic)
        [0.5, 0.4, 0.6, 0.0],  # c2: V0 and V2 beat V1                   t2v rank 3
        [0.2, 0.8, 0.3, 0.0],  # c3                                      t2v rank 1
        [0.7, 0.7, 0.7, 0.7],  # c4: all tie                             t2v rank 4
        [0.1, 0.2, 0.3, 0.0],  # c5                                      t2v rank 1
        [0.5, 0.5, 0.5, 0.2],  # c6: V3 last                             t2v rank 4
    ])
    caption_video = torch.tensor([0, 0, 1, 1, 1, 2, 3])
    assert t2v_ranks(sim, caption_video).tolist() == [1, 2, 3, 1, 4, 1, 4]
    # v2t, the video's best own caption against the other videos' captions:
    # V0: c0 and c1 tie at 0.9 on top (both correct: a hit at 1, not rank 2)     -> 1
    # V1: best own c3 0.8; c1 0.9 beats it                                        -> 2
    # V2: own c5 0.3; c0 ties at 0.3, c2 0.6, c3 0.3, c4 0.7, c6 0.5 count        -> 6
    # V3: own c6 0.2; c4 0.7                                                      -> 2
    assert v2t_ranks(sim, caption_video).tolist() == [1, 2, 6, 2]
    m = retrieval_metrics(sim, caption_video)
    assert (m["pairs"], m["videos"], m["captions"]) == (4, 4, 7)
    assert m["t2v_r1"] == pytest.approx(100 * 3 / 7) and m["t2v_r5"] == m["t2v_r10"] == 100.0
    assert m["t2v_median_rank"] == 2.0 and m["t2v_mean_rank"] == pytest.approx(16 / 7)
    assert (m["v2t_r1"], m["v2t_r5"], m["v2t_r10"]) == (25.0, 75.0, 100.0)
    assert m["v2t_median_rank"] == 2.0 and m["v2t_mean_rank"] == pytest.approx(11 / 4)
    assert m["chance_r1"] == 25.0
    assert not any(k.startswith("dsl_") for k in m)


def naive_ranks(sim: torch.Tensor, caption_video: list[int]) -> tuple[list[int], list[int]]:
    """Loops: t2v 1 + wrong videos scoring >= the right one; v2t the best over the video's
    captions of 1 + other videos' captions scoring >= that caption."""
    n_text, n_video = sim.shape
    t2v = [1 + sum(sim[i, j] >= sim[i, caption_video[i]] for j in range(n_video) if j != caption_video[i])
           for i in range(n_text)]
    v2t = []
    for j in range(n_video):
        own = [c for c in range(n_text) if caption_video[c] == j]
        wrong = [c for c in range(n_text) if caption_video[c] != j]
        v2t.append(min(1 + sum(sim[w, j] >= sim[c, j] for w in wrong) for c in own))
    return [int(r) for r in t2v], [int(r) for r in v2t]


@pytest.mark.parametrize("seed", range(5))
def test_ranks_match_a_naive_loop_on_tied_matrices(seed):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 4, (9,), generator=g)
    caption_video = torch.repeat_interleave(torch.arange(9), counts)
    caption_video = caption_video[torch.randperm(len(caption_video), generator=g)]  # any order
    sim = torch.randint(0, 4, (len(caption_video), 9), generator=g).float()  # many ties
    t2v, v2t = naive_ranks(sim, caption_video.tolist())
    assert t2v_ranks(sim, caption_video).tolist() == t2v
    assert v2t_ranks(sim, caption_video).tolist() == v2t


def test_one_caption_per_video_is_the_square_evaluation():
    sim = torch.randint(0, 5, (12, 12), generator=torch.Generator().manual_seed(0)).float()
    assert t2v_ranks(sim, torch.arange(12)).tolist() == ranks_of_diagonal(sim).tolist()
    assert v2t_ranks(sim, torch.arange(12)).tolist() == ranks_of_diagonal(sim.t()).tolist()
    assert retrieval_metrics(sim) == retrieval_metrics(sim, torch.arange(12))


def test_a_video_without_captions_is_an_error():
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(torch.rand(3, 3), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="caption_video"):
        retrieval_metrics(torch.rand(3, 3), torch.tensor([0, 1, 3]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_are_never_a_hit(bad):
    """A model whose embeddings went NaN (optim.lr=inf) scored 100%: every comparison with
    NaN is False, so nothing outranked the correct item. Non-finite scores count against it."""
    everything = torch.full((4, 4), bad)
    m = retrieval_metrics(everything, torch.tensor([0, 1, 2, 3]), dsl_temperature=0.01)
    for prefix in ("t2v", "v2t", "dsl_t2v", "dsl_v2t"):
        assert m[f"{prefix}_r1"] == 0.0 and m[f"{prefix}_median_rank"] == 4.0, (prefix, m)
    assert ranks_of_diagonal(everything).tolist() == [4, 4, 4, 4]
    sim = torch.eye(4)  # perfect, but for one wrong video's NaN in row 0 and row 2's own NaN
    sim[0, 3], sim[2, 2] = float("nan"), bad
    assert t2v_ranks(sim, torch.arange(4)).tolist() == [2, 1, 4, 1]
    assert v2t_ranks(sim, torch.arange(4)).tolist() == [1, 1, 4, 2]


def test_dual_softmax_demotes_a_hub_video():
    """Video 3 scores 0.9 with every caption, each caption 0.8 with its own video: plain
    text-to-video puts the hub first for all but its own caption; the softmax over
    captions spreads the hub's column thin, so every caption finds its own video."""
    n = 4
    sim = torch.full((n, n), 0.1)
    sim.fill_diagonal_(0.8)
    sim[:, 3] = 0.9
    plain = retrieval_metrics(sim)
    assert plain["t2v_r1"] == 25.0
    m = retrieval_metrics(sim, dsl_temperature=0.05)
    assert m["dsl_t2v_r1"] == 100.0 and m["dsl_temperature"] == 0.05
    assert all(m[k] == plain[k] for k in plain)  # the plain keys are unchanged beside dsl_*
    # the formula: sim * softmax(sim / T) over the other axis
    for_videos, for_captions = dual_softmax(sim.double(), 0.05)
    e = (sim.double() / 0.05).exp()
    torch.testing.assert_close(for_videos, sim.double() * e / e.sum(0, keepdim=True))
    torch.testing.assert_close(for_captions, sim.double() * e / e.sum(1, keepdim=True))


# ---------------------------------------------------------------------------- end to end

VIDEOS, FRAMES, SIZE, BATCH = 16, 32, 32, 3


def caption_sets(row: dict, i: int) -> list[str]:
    """1, 2 or 3 captions (clip i's two phrasings, and a third made of the first)."""
    first, second = row["caption"]
    return [[first], [first, second], [first, second, f"in this clip {first}"]][i % 3]


def mc_of(rows: list[dict], i: int) -> dict:
    """Every other clip holds an item: its own first caption against the next clip's, the
    right one first or second in turn."""
    if i % 2:
        return {}
    own, other = rows[i]["caption"][0], rows[(i + 1) % len(rows)]["caption"][0]
    answers = [own, other] if i % 4 == 0 else [other, own]
    return {"mc": {"question": "what happens in this clip?", "answers": answers,
                   "answer": answers.index(own), "kind": "which"}}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict:
    """Synthetic clips of 16-32 frames, val captions per caption_sets, its shards and
    tokenizer, and an export directory of a randomly initialised tiny model at 32 frames."""
    from safetensors.torch import save_file

    from longvivit.config import to_yaml
    from longvivit.data import train_tokenizer, write_benchmark, write_shards
    from longvivit.data.prepare.shards import ShardOptions
    from longvivit.model import build_model
    from longvivit.train.config import load_run_config

    root = tmp_path_factory.mktemp("retrieval")
    write_benchmark(root / "synth", videos=VIDEOS, frames=FRAMES, min_frames=16, size=SIZE, seed=5,
                    val_fraction=0.5)
    rows = [json.loads(line) for line in (root / "synth" / "val.jsonl").read_text().splitlines()]
    rows = [{**row, "caption": caption_sets(row, i), **mc_of(rows, i)} for i, row in enumerate(rows)]
    (root / "synth" / "val3.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = write_shards(root / "synth" / "val3.jsonl", root / "val", ShardOptions(size=SIZE), progress=False)
    assert summary["skipped"] == 0, summary
    tok = train_tokenizer([root / "synth" / "train.jsonl"], root / "spm")
    cfg = load_run_config(ROOT / "longvivit" / "configs" / "demo.yaml", overrides=[
        f"model.video.frames={FRAMES}", "model.text.context_length=96", f"data.val={root / 'val'}",
        f"data.train={root / 'val'}", f"data.tokenizer={tok}", f"data.batch_size={BATCH}",
        "data.text_length=32", "data.num_workers=0"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    export = root / "export"
    export.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(export / "model.safetensors"))
    (export / "config.yaml").write_text(to_yaml(cfg.model))
    (export / "run_config.yaml").write_text(to_yaml(cfg))
    shutil.copy(tok, export / "tokenizer.model")
    return {"root": root, "rows": rows, "export": export, "val": root / "val"}


def run_eval(args: list[str], capsys) -> list[dict]:
    assert eval_main([str(a) for a in args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def single(bench, tmp_path_factory) -> dict:
    """One plain process: `longvivit eval EXPORT --save-embeddings ... --report ... --log-dir
    ...` (in this process)."""
    out = tmp_path_factory.mktemp("single")
    code = eval_main([str(bench["export"]), "--save-embeddings", str(out / "emb.safetensors"),
                      "--out", str(out / "lines.jsonl"), "--report", str(out / "report"),
                      "--log-dir", str(out / "run")])
    assert code == 0
    lines = [json.loads(x) for x in (out / "lines.jsonl").read_text().splitlines()]
    return {"lines": lines, "emb": out / "emb.safetensors", "report": out / "report", "run": out / "run"}


def test_eval_loader_carries_every_caption_training_batches_do_not(bench):
    from longvivit.config import load_config
    from longvivit.data import DataConfig, build_loader

    cfg = load_config(DataConfig, dict(val=str(bench["val"]), train=str(bench["val"]),
                                       tokenizer=str(bench["export"] / "tokenizer.model"),
                                       frames=FRAMES, image_size=SIZE, batch_size=BATCH, num_workers=0,
                                       text_length=32))
    seen = {}
    for batch in build_loader(cfg, "val", torch.device("cpu"), 0, 1, training=False):
        seen.update(zip(batch["index"].tolist(), batch["captions"]))
    assert seen == {i: row["caption"] for i, row in enumerate(bench["rows"])}
    batch = next(iter(build_loader(cfg, "train", torch.device("cpu"), 0, 1, training=True)))
    assert "captions" not in batch and set(batch) == {"video", "real_frames", "text_ids", "text_mask", "index"}


def test_lines_per_task_and_queries_are_the_model_on_every_caption(bench, single):
    """One line per task, t2v_v2t last; the text rows are the model's embeddings of every
    caption of every clip in stored order, the paragraph rows of the clips' joined captions
    (tokenized at context_length, past data.text_length), and the lines score them."""
    from longvivit.data.load.tokenizer import Tokenizer
    from longvivit.train.export import load_exported

    rows, lines = bench["rows"], single["lines"]
    assert [x["task"] for x in lines] == ["zeroshot", "multilabel", "mc", "paragraph", "t2v_v2t"]  # synth rows are labelled
    emb, info = Embeddings.load(single["emb"])
    counts = [len(r["caption"]) for r in rows]
    assert counts[:3] == [1, 2, 3] and info["data"] == str(bench["val"])
    assert emb.index.tolist() == list(range(len(rows))) and emb.video.shape[0] == len(rows)
    assert emb.caption_video.tolist() == [i for i, n in enumerate(counts) for _ in range(n)]

    model, tok = load_exported(bench["export"]), Tokenizer(bench["export"] / "tokenizer.model")
    with torch.no_grad():
        text = model.encode_text(*tok.encode([c for r in rows for c in r["caption"]], 32), normalize=True)
        par_ids, par_mask = tok.encode([paragraph_text(r["caption"]) for r in rows], 96)
        par = model.encode_text(par_ids, par_mask, normalize=True)
    assert par_mask.sum(1).max() > 32  # paragraphs are longer than one caption's budget
    torch.testing.assert_close(emb.text, text, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(emb.paragraph, par, atol=1e-5, rtol=1e-4)

    by_task = {x["task"]: x for x in lines}
    want = {"t2v_v2t": retrieval_metrics(text @ emb.video.t(), emb.caption_video),
            "paragraph": retrieval_metrics(par @ emb.video.t())}
    for task, metrics in want.items():
        assert by_task[task]["decode_failures"] == 0 and by_task[task]["checkpoint"] == str(bench["export"])
        assert {k: by_task[task][k] for k in metrics} == pytest.approx(metrics), task
    assert by_task["t2v_v2t"]["captions"] == sum(counts) and by_task["paragraph"]["captions"] == len(rows)
    assert by_task["t2v_v2t"]["pairs"] == by_task["paragraph"]["pairs"] == len(rows)


def test_mc_line_is_the_model_on_each_answer_against_its_clip(bench, single):
    """The mc line scores every item's answers (alone, and after the question, at the text
    tower's context_length) from the model's own text embeddings against its clip's video
    embedding, as a plain loop does."""
    from longvivit.data.load.tokenizer import Tokenizer
    from longvivit.train.export import load_exported

    rows, emb = bench["rows"], Embeddings.load(single["emb"])[0]
    items = [(i, r["mc"]) for i, r in enumerate(rows) if "mc" in r]
    model, tok = load_exported(bench["export"]), Tokenizer(bench["export"] / "tokenizer.model")
    right = {False: 0, True: 0}
    with torch.no_grad():
        for clip, item in items:
            for with_question in right:
                texts = [f"{item['question']} {a}" if with_question else a for a in item["answers"]]
                scores = model.encode_text(*tok.encode(texts, 96), normalize=True) @ emb.video[clip]
                others = torch.cat([scores[:item["answer"]], scores[item["answer"] + 1:]])
                right[with_question] += bool((scores[item["answer"]] > others).all())
    line = next(x for x in single["lines"] if x["task"] == "mc")
    assert line["items"] == line["items_which"] == len(items) > 0
    assert line["top1"] == pytest.approx(100 * right[False] / len(items))
    assert line["top1_with_question"] == pytest.approx(100 * right[True] / len(items))
    assert line["chance_top1"] == line["chance_top1_which"] == 50.0
    assert emb.mc.item_video.tolist() == [clip for clip, _ in items]


def test_multilabel_line_is_the_model_on_each_object_against_every_clip(bench, single):
    """Synth rows list their objects: the multilabel line's mAP is the mean over the objects
    of the average precision of ranking the clips by the object's template-averaged text
    embedding, and chance is a random ranking's."""
    from longvivit.data.load.tokenizer import Tokenizer
    from longvivit.eval.zeroshot import DEFAULT_TEMPLATES, average_precision, random_ap
    from longvivit.train.export import load_exported

    rows, emb = bench["rows"], Embeddings.load(single["emb"])[0]
    names = sorted({x for r in rows for x in r["labels"]})
    model, tok = load_exported(bench["export"]), Tokenizer(bench["export"] / "tokenizer.model")
    aps, chance = [], []
    with torch.no_grad():
        for name in names:
            texts = [t.format(name) for t in DEFAULT_TEMPLATES]
            mean = model.encode_text(*tok.encode(texts, 32), normalize=True).mean(0)
            positive = torch.tensor([name in r["labels"] for r in rows])
            aps.append(average_precision(emb.video @ (mean / mean.norm()), positive))
            chance.append(random_ap(len(rows), int(positive.sum())))
    line = next(x for x in single["lines"] if x["task"] == "multilabel")
    assert line["classes"] == len(names) and line["videos"] == len(rows)
    assert line["map"] == pytest.approx(100 * sum(aps) / len(aps), abs=1e-4)
    assert line["chance_map"] == pytest.approx(100 * sum(chance) / len(chance))


def test_saved_embeddings_reproduce_the_lines(single, tmp_path, capsys):
    again = run_eval(["--from-embeddings", single["emb"]], capsys)
    assert again == single["lines"]
    dsl = run_eval(["--from-embeddings", single["emb"], "--tasks", "t2v_v2t", "--dual-softmax"], capsys)
    assert len(dsl) == 1 and dsl[0]["task"] == "t2v_v2t" and "dsl_v2t_median_rank" in dsl[0]
    assert {k: v for k, v in dsl[0].items() if not k.startswith("dsl_")} == single["lines"][-1]
    emb, _ = Embeddings.load(single["emb"])
    emb.paragraph = None
    emb.save(tmp_path / "no_paragraph.safetensors")
    assert [x["task"] for x in run_eval(["--from-embeddings", tmp_path / "no_paragraph.safetensors"], capsys)] \
        == ["zeroshot", "multilabel", "mc", "t2v_v2t"]  # the tasks the file holds
    emb.classes = emb.label = emb.mc = emb.label_classes = emb.targets = None
    emb.save(tmp_path / "unlabelled.safetensors")
    assert [x["task"] for x in run_eval(["--from-embeddings", tmp_path / "unlabelled.safetensors"], capsys)] \
        == ["t2v_v2t"]
    assert eval_main(["--from-embeddings", str(tmp_path / "no_paragraph.safetensors"), "--tasks", "paragraph"]) == 2
    assert "no paragraph embeddings" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # argparse's error: usage and one line
        eval_main(["--from-embeddings", str(single["emb"]), "--report", str(tmp_path / "report")])
    assert exit_.value.code == 2 and "need the clips' frames" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def report_page(report) -> ReportPage:
    page = ReportPage()
    page.feed((report / "index.html").read_text(encoding="utf-8"))
    return page


def test_report_opens_in_chromium_with_the_metrics_and_the_gallery(bench, single, tmp_path):
    """The page as headless chromium loads it: each task's table holds its line's numbers;
    the gallery's 4 queries are clips 0-3's first captions, each with the 3 clips its
    caption embedding scores highest, the right one marked; every image is loaded (a
    frame strip of 4 thumbnails of the 32 px clips); no chromium process is left."""
    profile = tmp_path / "profile"
    page = ReportPage()
    page.feed(loaded_dom(single["report"] / "index.html", profile))
    assert not processes_using(profile)
    for line in single["lines"]:
        numbers = {k: v for k, v in line.items() if isinstance(v, (int, float))}
        table = page.tables[line["task"]]
        assert table.keys() == numbers.keys(), line["task"]
        for key, value in numbers.items():
            assert float(table[key]) == pytest.approx(value, abs=0.005), (line["task"], key)

    emb, _ = Embeddings.load(single["emb"])
    assert [s["caption"] for s in page.sections] == [row["caption"][0] for row in bench["rows"][:4]]
    for clip, section in enumerate(page.sections):
        first = int((emb.caption_video == clip).nonzero()[0])
        top = (emb.text[first] @ emb.video.t()).topk(3).indices.tolist()
        hits = [f for f in section["figures"] if f["class"].startswith("hit")]
        assert [f["clip"] for f in hits] == top and section["clip"] == clip
        assert [f["class"] for f in hits] == ["hit right" if c == clip else "hit wrong" for c in top]
        assert [f["clip"] for f in section["figures"] if "right" in f["class"]] == [clip]  # missed or a hit

    images = sum(len(s["figures"]) for s in page.sections)
    assert page.body["data-images"] == f"{images}/{images}" and images >= 12
    from PIL import Image

    for section in page.sections:
        for f in section["figures"]:
            assert Image.open(single["report"] / f["src"]).size == (4 * SIZE, SIZE)


def test_log_dir_gets_the_metrics_and_the_gallery_image(single):
    """--log-dir: the trainer's eval record in RUN_DIR at the export's step 0: eval/* in
    RUN_DIR/tb with the gallery image the report shows, an eval line in metrics.jsonl."""
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(single["run"] / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    (image,) = acc.Images("eval/gallery")
    width, height = Image.open(single["report"] / "gallery.png").size
    assert (image.step, image.width, image.height) == (0, width, height)
    retrieval, zeroshot = single["lines"][-1], single["lines"][0]
    assert acc.Scalars("eval/t2v_r1")[0].value == pytest.approx(retrieval["t2v_r1"])
    assert acc.Scalars("eval/zeroshot_top1")[0].value == pytest.approx(zeroshot["top1"])
    by_task = {x["task"]: x for x in single["lines"]}
    assert acc.Scalars("eval/paragraph_t2v_r1")[0].value == pytest.approx(by_task["paragraph"]["t2v_r1"])
    assert acc.Scalars("eval/mc_top1")[0].value == pytest.approx(by_task["mc"]["top1"])
    assert acc.Scalars("eval/mc_top1_which")[0].value == pytest.approx(by_task["mc"]["top1_which"])
    (line,) = [json.loads(x) for x in (single["run"] / "metrics.jsonl").read_text().splitlines()]
    assert line["kind"] == "eval" and line["step"] == 0 and line["v2t_r1"] == pytest.approx(retrieval["v2t_r1"])


def test_two_torchrun_ranks_equal_one_process(bench, single, tmp_path):
    """Each rank embeds half the clips (batches of 3: a different batching than one
    process's), the gathered embeddings and the metrics are the single process's."""
    from longvivit.distributed.collectives import free_port

    port = free_port()
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
           "127.0.0.1", "--master_port", str(port), "-m", "longvivit.cli", "eval", str(bench["export"]),
           "--save-embeddings", str(tmp_path / "emb.safetensors"), "--report", str(tmp_path / "report")]
    rc, output = communicate(cmd, port, 600, env)
    assert rc == 0, output[-4000:]
    lines = [json.loads(x) for x in output.splitlines() if x.startswith('{"task"')]
    assert [x["task"] for x in lines] == ["zeroshot", "multilabel", "mc", "paragraph", "t2v_v2t"], output[-4000:]  # rank 0 only
    for got, want in zip(lines, single["lines"]):
        assert got == pytest.approx(want)
    two, _ = Embeddings.load(tmp_path / "emb.safetensors")
    one, _ = Embeddings.load(single["emb"])
    assert torch.equal(two.index, one.index) and torch.equal(two.caption_video, one.caption_video)
    for name in ("video", "text", "paragraph", "classes"):
        torch.testing.assert_close(getattr(two, name), getattr(one, name), atol=1e-5, rtol=1e-4)
    # the gallery: the same queries and hits, each strip gathered from the rank that decoded the clip
    one_page, two_page = report_page(single["report"]), report_page(tmp_path / "report")
    assert two_page.sections == one_page.sections and len(two_page.sections) == 4
    for src in {f["src"] for s in one_page.sections for f in s["figures"]}:
        assert (tmp_path / "report" / src).read_bytes() == (single["report"] / src).read_bytes(), src
