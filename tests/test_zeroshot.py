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
