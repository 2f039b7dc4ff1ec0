"""Retrieval pictures (longvivit/eval/gallery.py, longvivit/eval/report.py) on hand-made inputs.

Thumbnail strips take evenly spaced real frames and keep small clips' pixels; the queries'
top clips, right marks and ranks follow the similarities; the picture shows each strip's
pixels inside a green border for the right clip and a grey one otherwise; RunLogger's image
reads back from the TensorBoard event file pixel for pixel; the HTML page holds every task's
numbers, escapes captions and links one PNG per clip. (The page in a real browser, and the
gallery of a real eval on 1 and 2 ranks: tests/test_train_retrieval.py; under ZeRO-3
training: tests/test_train_zero3.py.)
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longvivit.eval.gallery import (
    BORDER,
    MARGIN,
    RIGHT,
    STRIP_FRAMES,
    THUMB_HEIGHT,
    WRONG,
    Gallery,
    Hit,
    Layout,
    Query,
    clips_shown,
    render,
    select_queries,
    strip_image,
    thumbnail_strip,
)

from browser_support import ReportPage


def test_thumbnail_strip_spaces_frames_over_the_real_ones():
    video = torch.arange(10, dtype=torch.uint8).mul(20)[:, None, None, None].expand(10, 112, 150, 3)
    strip = thumbnail_strip(video, real_frames=7)  # frames 7-9 are padding
    assert strip.shape == (STRIP_FRAMES, THUMB_HEIGHT, 75, 3) and strip.dtype == np.uint8
    assert [int(f.mean()) for f in strip] == [0, 40, 80, 120]  # frames 0, 2, 4, 6
    small = torch.randint(0, 256, (5, 32, 24, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(thumbnail_strip(small, 5), small[[0, 1, 3, 4]].numpy())  # no resampling


def test_queries_rank_every_clip_for_each_first_caption():
    video = torch.eye(4)  # rows 0..3 are clips with sample indices 10..13
    text = F.normalize(torch.tensor([[1.0, 0.5, 0.2, 0.0],    # clip 10's first caption: right on top
                                     [0.0, 0.0, 0.0, 1.0],    # clip 10's second: not a query
                                     [0.1, 0.3, 1.0, 0.2],    # clip 11's: 12, then 11 (rank 2), then 13
                                     [0.9, 0.1, 0.0, 0.8]]),  # clip 12's: 10, 13, then 11; 12 ranks 4th
                       dim=-1)
    queries = select_queries(text, video, torch.tensor([0, 0, 1, 2]), torch.tensor([10, 11, 12, 13]), n=5)
    assert [q.clip for q in queries] == [10, 11, 12]  # clip 13 has no caption
    assert [q.rank for q in queries] == [1, 2, 4]
    assert [[(h.clip, h.correct) for h in q.hits] for q in queries] == [
        [(10, True), (11, False), (12, False)], [(12, False), (11, True), (13, False)],
        [(10, False), (13, False), (11, False)]]
    assert queries[1].hits[1].score == pytest.approx(float(text[2, 1]))
    assert clips_shown(queries) == {10, 11, 12, 13}
    assert [q.clip for q in select_queries(text, video, torch.tensor([0, 0, 1, 2]), torch.arange(10, 14), n=1)] == [10]


def hand_made_gallery() -> Gallery:
    """Three clips of different shapes; the second query's right clip is not in its hits."""
    rng = np.random.default_rng(0)
    strips = {7: rng.integers(0, 256, (STRIP_FRAMES, 20, 30, 3), dtype=np.uint8),
              8: rng.integers(0, 256, (STRIP_FRAMES, 16, 20, 3), dtype=np.uint8),
              9: rng.integers(0, 256, (STRIP_FRAMES, 20, 30, 3), dtype=np.uint8)}
    queries = [Query(7, 1, [Hit(7, 0.9, True), Hit(8, 0.5, False), Hit(9, 0.1, False)]),
               Query(8, 3, [Hit(9, 0.7, False), Hit(7, 0.6, False)])]
    captions = {7: ['a red <circle> & "a square"', "two"], 8: ["a green triangle " * 12], 9: ["a blue star"]}
    return Gallery(queries, 12, strips, captions)


def test_the_picture_shows_each_strip_in_its_border():
    gallery = hand_made_gallery()
    image = render(gallery)
    layout = Layout.of(gallery)
    assert (layout.cell_h, layout.cell_w) == (20, STRIP_FRAMES * 30)  # the largest strip
    assert image.shape == (*layout.size(2), 3) and image.dtype == np.uint8
    for qi, q in enumerate(gallery.queries):
        for hi, hit in enumerate(q.hits):
            x0, y0, x1, y1 = layout.cell_box(qi, hi)
            border = RIGHT if hit.correct else WRONG
            for x, y in ((x0, y0), (x1 - 1, y1 - 1), (x0 + BORDER - 1, y0 + BORDER - 1)):
                assert tuple(image[y, x]) == border, (qi, hi, x, y)
            strip = strip_image(gallery.strips[hit.clip])
            h, w = strip.shape[:2]
            assert np.array_equal(image[y0 + BORDER: y0 + BORDER + h, x0 + BORDER: x0 + BORDER + w], strip)
    assert (image == RIGHT).all(-1).sum() > 0 and not (image[MARGIN + layout.row_height():] == RIGHT).all(-1).any(), \
        "only the first row has a right clip among its hits"


def test_the_tensorboard_image_reads_back(tmp_path):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from longvivit.train.metrics import RunLogger

    image = render(hand_made_gallery())
    log = RunLogger(tmp_path, 0, 10, progress=False)
    log.image(5, "eval/gallery", image)
    log.close()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    acc.Reload()
    (event,) = acc.Images("eval/gallery")
    assert (event.step, event.height, event.width) == (5, image.shape[0], image.shape[1])
    import io

    assert np.array_equal(np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")), image)


def test_the_report_page_holds_the_numbers_escaped_captions_and_a_png_per_clip(tmp_path):
    from PIL import Image

    from longvivit.eval.report import write_report

    gallery = hand_made_gallery()
    lines = [{"task": "zeroshot", "top1": 37.5, "classes": 4, "checkpoint": "<ckpt>"},
             {"task": "t2v_v2t", "t2v_r1": 12.3456, "t2v_median_rank": 3.0, "pairs": 12, "data": "d"}]
    index = write_report(tmp_path / "report", lines, gallery, {"data": "d", "checkpoint": "<ckpt>"})
    page = ReportPage()
    page.feed(index.read_text(encoding="utf-8"))
    assert page.tables == {"zeroshot": {"top1": "37.50", "classes": "4"},
                           "t2v_v2t": {"t2v_r1": "12.35", "t2v_median_rank": "3.00", "pairs": "12"}}
    assert [s["caption"] for s in page.sections] == ['a red <circle> & "a square"', "a green triangle " * 12]
    assert "circle" not in page.tags  # the caption's <circle> is text, not an element
    assert [[(f["class"], f["clip"]) for f in s["figures"]] for s in page.sections] == [
        [("hit right", 7), ("hit wrong", 8), ("hit wrong", 9)],
        [("hit wrong", 9), ("hit wrong", 7), ("missed right", 8)]]  # the right clip, ranked 3rd, after the hits
    for s in page.sections:
        for f in s["figures"]:
            png = np.asarray(Image.open(tmp_path / "report" / f["src"]).convert("RGB"))
            assert np.array_equal(png, strip_image(gallery.strips[f["clip"]]))
    gallery_png = np.asarray(Image.open(tmp_path / "report" / "gallery.png").convert("RGB"))
    assert np.array_equal(gallery_png, render(gallery))


def test_a_report_without_a_gallery_says_why(tmp_path):
    from longvivit.eval.report import write_report

    index = write_report(tmp_path, [{"task": "t2v_v2t", "t2v_r1": 1.0}], None, {})
    text = index.read_text()
    assert "No gallery" in text and "<img" not in text and not (tmp_path / "clips").exists()


def test_batches_without_caption_strings_give_no_gallery():
    """data.source=synthetic: random ids, no strings to show: the metrics, and no gallery."""
    from longvivit.data.load.synthetic import SyntheticBatches
    from longvivit.eval.evaluate import evaluate
    from longvivit.model import build_model
    from longvivit.train.config import load_run_config

    from train_support import CONFIGS

    cfg = load_run_config(CONFIGS / "demo.yaml", overrides=[
        "model.video.frames=4", "data.source=synthetic", "data.batch_size=4", "data.synthetic_samples=8"])
    torch.manual_seed(0)
    loader = SyntheticBatches(cfg.data, "val", torch.device("cpu"), 0, 1, False, cfg.model.text.vocab_size)
    metrics, embeddings = evaluate(build_model(cfg.model), loader, gallery_queries=4)
    assert metrics["pairs"] == 8 and embeddings.gallery is None
