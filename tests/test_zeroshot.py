"""Zero-shot classification on hand-made embeddings: templates averaged per class, top-k with
pessimistic ties, mean per-class accuracy on unbalanced classes, template files."""
import pytest
import torch
import torch.nn.functional as F

from longvivit.eval.zeroshot import DEFAULT_TEMPLATES, class_embeddings, classification_metrics, read_templates


def test_metrics_on_a_hand_made_case():
    e = torch.eye(3)  # three classes on the axes
    classes = e
    video = F.normalize(torch.tensor([[1.0, 0.1, 0.0],   # class 0, right
                                      [0.9, 0.2, 0.0],   # class 0, right
                                      [0.0, 0.2, 1.0],   # class 0, wrong: rank 3
                                      [0.3, 1.0, 0.0],   # class 1, right
                                      [1.0, 0.0, 1.0]]), dim=-1)  # class 2, tie with class 0: rank 2
    labels = torch.tensor([0, 0, 0, 1, 2])
    m = classification_metrics(video, classes, labels, ks=(1, 2))
    assert m["top1"] == pytest.approx(60.0) and m["top2"] == pytest.approx(80.0)
    # per class: 0 -> 2/3, 1 -> 1, 2 -> 0 (the tie counts against it)
    assert m["mean_per_class"] == pytest.approx(100 * (2 / 3 + 1 + 0) / 3)
    assert m["videos"] == 5 and m["classes"] == 3 and m["chance_top1"] == pytest.approx(100 / 3)


def test_non_finite_scores_are_never_right():
    classes = F.normalize(torch.eye(3), dim=-1)
    video = torch.eye(3)
    video[1] = float("nan")  # one broken embedding: the other two stay right
    m = classification_metrics(video, classes, torch.tensor([0, 1, 2]))
    assert m["top1"] == pytest.approx(200 / 3) and m["mean_per_class"] == pytest.approx(200 / 3)
    assert classification_metrics(torch.full((3, 3), float("nan")), classes, torch.tensor([0, 1, 2]))["top1"] == 0


def test_class_embeddings_average_normalised_template_embeddings():
    table = {"a video of cat.": [2.0, 0.0], "cat.": [0.0, 1.0], "a video of dog.": [0.0, -3.0], "dog.": [0.0, -1.0]}
    embed = lambda texts: torch.tensor([table[t] for t in texts])  # noqa: E731
    out = class_embeddings(embed, ["cat", "dog"], ["a video of {}.", "{}."])
    assert torch.allclose(out[0], F.normalize(torch.tensor([0.5, 0.5]), dim=0))  # mean of unit vectors
    assert torch.allclose(out[1], torch.tensor([0.0, -1.0]))


def test_template_files(tmp_path):
    good = tmp_path / "t.txt"
    good.write_text("\ufeff# video prompts\na video of {}.\n\n{} in slow motion\n", encoding="utf-8")
    assert read_templates(good) == ["a video of {}.", "{} in slow motion"]
    bad = tmp_path / "bad.txt"
    bad.write_text("a video of {}.\na video of a thing\n")
    with pytest.raises(ValueError, match=r"line 2 'a video of a thing' has no '\{\}'"):
        read_templates(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no templates"):
        read_templates(empty)
    assert all("{}" in t for t in DEFAULT_TEMPLATES)


def test_the_classifier_runs_the_text_tower_on_each_template():
    """A tiny model whose text tower returns, per caption, the one-hot of the class name it
    holds: the video embedded as class 1 is classified as class 1."""
    from longvivit.eval.zeroshot import classifier

    names = ["blue square", "red circle"]

    class Tokenizer:
        def encode(self, texts, length):
            ids = torch.tensor([[names.index(n) for n in names if n in t] for t in texts])
            return ids, torch.ones_like(ids, dtype=torch.bool)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def encode_text(self, ids, mask, normalize):
            return F.one_hot(ids[:, 0], 2).float()

    video = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    labels = ["red circle", "blue square", "blue square"]
    names, classes, y = classifier(Model(), Tokenizer(), 8, labels)
    assert names == ["blue square", "red circle"] and y.tolist() == [1, 0, 0]
    m = classification_metrics(video, classes, y)
    assert m["classes"] == 2 and m["top1"] == pytest.approx(200 / 3)
    assert m["mean_per_class"] == pytest.approx(75.0)  # red circle 1/1, blue square 1/2


# ----------------------------------------------------------------------------- multi-label

def test_average_precision_on_a_hand_made_ranking_with_ties_against_the_model():
    from longvivit.eval.zeroshot import average_precision

    positive = torch.tensor([True, False, True, False])
    assert average_precision(torch.tensor([0.9, 0.8, 0.7, 0.6]), positive) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(torch.tensor([0.9, 0.1, 0.8, 0.2]), positive) == 1.0
    # all tied: the positives rank last (precision 1/3 and 2/4)
    assert average_precision(torch.zeros(4), positive) == pytest.approx((1 / 3 + 2 / 4) / 2)
    # a NaN on a positive ranks it last, on a negative first
    nan = float("nan")
    assert average_precision(torch.tensor([nan, 0.8, 0.7, 0.6]), positive) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert average_precision(torch.tensor([0.9, nan, 0.7, 0.6]), positive) == pytest.approx((1 / 2 + 2 / 3) / 2)


@pytest.mark.parametrize("n, positives", [(5, 1), (5, 2), (6, 3), (4, 4)])
def test_chance_ap_is_the_mean_over_every_ranking(n, positives):
    import itertools

    from longvivit.eval.zeroshot import average_precision, random_ap

    aps = [average_precision(-torch.tensor(order, dtype=torch.float), torch.arange(n) < positives)
           for order in itertools.permutations(range(n))]
    assert random_ap(n, positives) == pytest.approx(sum(aps) / len(aps))


def test_multilabel_metrics_and_classifier_on_hand_made_clips():
    """Clips embedded as the sum of the objects they hold score mAP 100 and hit@1 100;
    clips embedded as one object they lack score below; chance is from the targets."""
    from longvivit.eval.zeroshot import multilabel_classifier, multilabel_metrics

    names = ["blue square", "green cross", "red circle"]

    class Tokenizer:
        def encode(self, texts, length):
            ids = torch.tensor([[names.index(n) for n in names if n in t] for t in texts])
            return ids, torch.ones_like(ids, dtype=torch.bool)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def encode_text(self, ids, mask, normalize):
            return F.one_hot(ids[:, 0], 3).float()

    lists = [["red circle", "blue square"], ["green cross"], ["blue square"], ["red circle", "green cross"]]
    got, classes, targets = multilabel_classifier(Model(), Tokenizer(), 8, lists)
    assert got == names
    assert targets.tolist() == [[True, False, True], [False, True, False], [True, False, False],
                                [False, True, True]]
    video = F.normalize(targets.float(), dim=-1)
    m = multilabel_metrics(video, classes, targets)
    assert (m["videos"], m["classes"], m["map"], m["hit1"]) == (4, 3, 100.0, 100.0)
    assert m["labels_per_video"] == 1.5 and m["chance_hit1"] == pytest.approx(50.0)
    from longvivit.eval.zeroshot import random_ap
    assert m["chance_map"] == pytest.approx(100 * random_ap(4, 2))  # each class in 2 of 4 clips
    lacking = F.one_hot(torch.tensor([1, 0, 2, 0]), 3).float()  # each clip: an object it lacks
    m = multilabel_metrics(lacking, classes, targets)
    assert m["hit1"] == 0.0 and m["map"] < m["chance_map"]


def test_manifest_labels_are_class_name_lists(tmp_path):
    import json

    from longvivit.data.prepare.manifest import Reject, Row, read_manifest

    rows = [{"video": "v.mp4", "caption": "x", "id": "a", "labels": ["red  circle", "blue square", "red circle"]},
            {"video": "v.mp4", "caption": "x", "id": "b"},
            {"video": "v.mp4", "caption": "x", "id": "c", "labels": "red circle"},
            {"video": "v.mp4", "caption": "x", "id": "d", "labels": ["red circle", 3]}]
    (tmp_path / "v.mp4").write_bytes(b"")
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b, c, d = read_manifest(tmp_path / "m.jsonl")
    assert isinstance(a, Row) and a.labels == ["red circle", "blue square"]  # spaces folded, each once
    assert isinstance(b, Row) and b.labels == []
    assert isinstance(c, Reject) and "labels:" in c.detail and "not a list of class names" in c.detail
    assert isinstance(d, Reject) and "not a list of class names" in d.detail
