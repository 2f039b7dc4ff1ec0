"""Retrieval metrics on hand-made similarity matrices, ties included; LR schedule; param groups."""
import math

import pytest
import torch

from longvivit.eval.retrieval import ranks_of_diagonal, retrieval_metrics
from longvivit.train.engine import param_groups, warmup_cosine


def test_ranks_hand_made():
    # text i -> video i is correct.
    sim = torch.tensor([
        [0.9, 0.1, 0.2, 0.0],   # correct is top          -> rank 1
        [0.5, 0.4, 0.3, 0.6],   # 0.5 and 0.6 beat 0.4    -> rank 3
        [0.7, 0.1, 0.7, 0.2],   # tie with column 0       -> pessimistic rank 2
        [0.3, 0.3, 0.3, 0.3],   # all tied                -> rank 4
    ])
    assert ranks_of_diagonal(sim).tolist() == [1, 3, 2, 4]
    m = retrieval_metrics(sim)
    assert m["pairs"] == 4
    assert m["t2v_r1"] == pytest.approx(25.0)
    assert m["t2v_r5"] == pytest.approx(100.0)
    assert m["t2v_median_rank"] == pytest.approx(2.5)
    assert m["t2v_mean_rank"] == pytest.approx(2.5)
    # video-to-text uses the columns: video j's scores over texts are sim[:, j].
    # col0 [0.9,.5,.7,.3] -> 1; col1 [.1,.4,.1,.3] -> 1; col2 [.2,.3,.7,.3] -> 1; col3 [0,.6,.2,.3] -> 2
    assert ranks_of_diagonal(sim.t()).tolist() == [1, 1, 1, 2]
    assert m["v2t_r1"] == pytest.approx(75.0)
    assert m["v2t_median_rank"] == pytest.approx(1.0)
    assert m["chance_r1"] == pytest.approx(25.0)


def test_constant_embeddings_score_zero_not_perfect():
    m = retrieval_metrics(torch.ones(12, 12))
    assert m["t2v_r1"] == 0.0 and m["v2t_r10"] == 0.0
    assert m["t2v_median_rank"] == 12


def test_identity_and_r10():
    n = 20
    assert retrieval_metrics(torch.eye(n))["t2v_r1"] == 100.0
    # the correct item ranks k+1 for row k (k columns ahead of it): R@10 counts rows 0..9
    sim = torch.zeros(n, n)
    for i in range(n):
        sim[i, i] = 0.5
        sim[i, [(i + 1 + j) % n for j in range(i % n)]] = 1.0
    m = retrieval_metrics(sim)
    assert m["t2v_r1"] == pytest.approx(5.0)
    assert m["t2v_r5"] == pytest.approx(25.0)
    assert m["t2v_r10"] == pytest.approx(50.0)
    assert m["t2v_median_rank"] == pytest.approx(10.5)


def test_warmup_cosine():
    f = lambda s: warmup_cosine(s, warmup=4, total=14, min_ratio=0.1)  # noqa: E731
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(4, 20))


def test_param_groups_decay_only_trainable_matrices():
    """The model owns the rule (DualEncoder.no_weight_decay); the engine's groups follow it:
    no decay on norms, biases, position tables and the logit scale, frozen blocks left out."""
    from longvivit.model import build_model, model_config

    model = build_model(model_config("tiny", ["video.trainable_last_k=1"]))
    decay, no_decay = param_groups(model, 0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert {names[id(p)] for p in decay["params"]} == {
        n for n, p in trainable.items() if p.ndim >= 2 and "pos_embed" not in n}
    assert {names[id(p)] for p in no_decay["params"]} == {
        n for n, p in trainable.items() if p.ndim < 2 or "pos_embed" in n}
    assert {"logit_scale", "video.pos_embed.spatial", "text.norm.weight"} <= trainable.keys()
    assert len(trainable) < len(names)  # the frozen video blocks are in neither group
