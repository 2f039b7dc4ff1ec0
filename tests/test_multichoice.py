"""Zero-shot multiple choice (longvivit/eval/multichoice.py): hand-made items whose right
answer is known, ties, chance, the question's effect, and the manifest's item checks."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from longvivit.data.prepare.manifest import Reject, Row, read_manifest
from longvivit.eval.multichoice import answer_texts, embed_items, item_right, mc_metrics

WORDS = ["red", "blue", "circle", "square", "up", "down", "grows", "shrinks", "first", "what"]


def bag_of_words(texts: list[str]) -> torch.Tensor:
    """A text tower stand-in: the normalised count of each of WORDS in the text."""
    counts = torch.tensor([[float(t.replace(",", " ").replace("?", " ").split().count(w)) for w in WORDS]
                           for t in texts])
    return F.normalize(counts + 1e-3, dim=-1)


ITEMS = [  # clip 0 shows a red circle moving up; clip 1 a blue square that shrinks
    {"question": "what does the red circle do?", "answers": ["red circle down", "red circle up"],
     "answer": 1, "kind": "action"},
    {"question": "what does the blue square do?", "answers": ["blue square grows", "blue square shrinks",
                                                               "blue square up", "blue square down"],
     "answer": 1, "kind": "action"},
    {"question": "which is first?", "answers": ["blue square first", "red circle first"], "answer": 0,
     "kind": "order"},
]


def test_hand_made_items_pick_the_answer_the_clip_shows():
    """Videos embedded as what they show: every item is answered right; a video showing the
    other direction gets the action items wrong; chance is the mean of 1/K."""
    video = bag_of_words(["red circle up", "blue square shrinks first"])
    mc = embed_items(ITEMS, [0, 1, 1], bag_of_words)
    assert mc.answers.shape == (8, len(WORDS)) and mc.answer_item.tolist() == [0, 0, 1, 1, 1, 1, 2, 2]
    assert item_right(video, mc.answers, mc).tolist() == [True, True, True]
    m = mc_metrics(video, mc)
    assert m["items"] == 3 and m["top1"] == 100.0
    assert m["chance_top1"] == pytest.approx(100 * (1 / 2 + 1 / 4 + 1 / 2) / 3)
    assert (m["items_action"], m["top1_action"], m["chance_top1_action"]) == (2, 100.0, pytest.approx(37.5))
    assert (m["items_order"], m["top1_order"], m["chance_top1_order"]) == (1, 100.0, 50.0)
    wrong = bag_of_words(["red circle down", "blue square grows first"])
    m = mc_metrics(wrong, mc)
    assert m["top1_action"] == 0.0 and m["top1_order"] == 100.0 and m["top1"] == pytest.approx(100 / 3)


def test_the_question_is_put_before_each_answer():
    """With the question: the texts scored are 'question answer'; a question that names the
    wrong object drags every answer alike, so the choice can change, and it is reported."""
    assert answer_texts(ITEMS[0], True) == ["what does the red circle do? red circle down",
                                            "what does the red circle do? red circle up"]
    assert answer_texts(ITEMS[0], False) == ITEMS[0]["answers"]
    seen = []

    def embed(texts):
        seen.extend(texts)
        return bag_of_words(texts)

    mc = embed_items(ITEMS[:1], [0], embed)
    assert seen == ITEMS[0]["answers"] + answer_texts(ITEMS[0], True)
    torch.testing.assert_close(mc.answers_with_question, bag_of_words(answer_texts(ITEMS[0], True)))
    m = mc_metrics(bag_of_words(["red circle up"]), mc)
    assert m["top1"] == 100.0 and m["top1_with_question"] == 100.0


def test_ties_and_non_finite_scores_count_against_the_model():
    mc = embed_items(ITEMS[:1], [0], bag_of_words)
    same = mc.answers.clone()
    same[1] = same[0]  # both answers embed alike: a tie
    assert item_right(bag_of_words(["red circle up"]), same, mc).tolist() == [False]
    nan_video = torch.full((1, len(WORDS)), float("nan"))
    assert item_right(nan_video, mc.answers, mc).tolist() == [False]
    assert mc_metrics(nan_video, mc)["top1"] == 0.0


def test_items_of_several_sizes_index_their_own_answers():
    """An item's right answer is found among its own answers, not at the same offset of
    another item: items of 2, 4 and 2 answers in one call, each right in turn."""
    video = torch.eye(4)
    answers = torch.eye(4)[[0, 1, 2, 3, 0, 1, 3, 2]]
    for right in ([1, 0, 0], [0, 3, 1], [1, 2, 0]):
        mc = embed_items([{"question": "", "answers": ["a", "b"], "answer": right[0]},
                          {"question": "", "answers": ["a", "b", "c", "d"], "answer": right[1]},
                          {"question": "", "answers": ["a", "b"], "answer": right[2]}], [1, 0, 3],
                         lambda texts, it=iter([answers, answers]): next(it)[: len(texts)])
        want = [answers[[0, 1]][right[0]].argmax() == 1, answers[2:6][right[1]].argmax() == 0,
                answers[6:][right[2]].argmax() == 3]
        assert item_right(video, mc.answers, mc).tolist() == [bool(w) for w in want]


def test_manifest_keeps_good_items_and_rejects_a_row_with_a_bad_one(tmp_path):
    good = {"question": "q?", "answers": ["a", "b", "c"], "answer": 2, "kind": "order"}
    rows = [{"video": "v.mp4", "caption": "x", "mc": good},
            {"video": "v.mp4", "caption": "x", "mc": [good, {**good, "kind": ""}]},
            {"video": "v.mp4", "caption": "x", "mc": {**good, "answer": 3}},
            {"video": "v.mp4", "caption": "x", "mc": {**good, "answers": ["only one"]}},
            {"video": "v.mp4", "caption": "x", "mc": {**good, "answer": True}},
            {"video": "v.mp4", "caption": "x", "mc": {**good, "kind": "Order!"}},
            {"video": "v.mp4", "caption": "x", "mc": "q?"}]
    rows = [{**r, "id": f"clip{i}"} for i, r in enumerate(rows)]
    (tmp_path / "v.mp4").write_bytes(b"")
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = list(read_manifest(tmp_path / "m.jsonl"))
    assert isinstance(out[0], Row) and out[0].mc == [good]
    assert isinstance(out[1], Row) and [it["kind"] for it in out[1].mc] == ["order", ""]
    reasons = [r.detail for r in out[2:]]
    assert all(isinstance(r, Reject) for r in out[2:]), out[2:]
    assert "mc[0].answer: 3 is not the index of one of its 3 answers" in reasons[0]
    assert "mc[0].answers" in reasons[1] and "not a list of 2 or more answers" in reasons[1]
    assert "mc[0].answer: true is not the index" in reasons[2]
    assert "mc[0].kind" in reasons[3]
    assert "mc: " in reasons[4] and "not an item or a list of items" in reasons[4]
