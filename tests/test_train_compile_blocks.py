"""compile_blocks (longvivit/train/compile.py) on the model's variants in one plain process:
the loss and every parameter's gradient equal eager's, with joint and factorized attention,
a CLS token, padded clips (masked rows), activation checkpointing and the text tower's
causal attention; each Block is compiled and made a ZeRO-3 leaf, one graph serves every
block of a tower, and backward keeps as many bytes as eager's.

Backend aot_eager: dynamo's capture and AOTAutograd's forward/backward split, without
inductor's code generation (which costs ~20 s per graph on this CPU and is what the 2-rank
test, tests/test_train_compile.py, runs). So this covers what regional compilation changes
in the model's code paths (graph breaks, guards, the ActivationLinear path under compile),
not inductor's kernels."""
import copy

import pytest
import torch

from longvivit.model import build_model, model_config, saved_bytes
from longvivit.model.transformer import Block
from longvivit.train.compile import compile_blocks

FRAMES = 16
REAL = torch.tensor([16, 6])  # one whole clip, one padded: masked rows with a key mask
CASES = {
    "joint": [],
    "joint-cls-checkpointed": ["video.cls_token=true", "video.grad_checkpointing=2"],
    "factorized": ["video.attention=factorized", "video.mask_scheme=tube"],
}


def loss(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    video = torch.randint(0, 256, (2, FRAMES, 32, 32, 3), dtype=torch.uint8, generator=g)
    ids = torch.randint(1, 1000, (2, 32), generator=g)
    mask = torch.ones(2, 32, dtype=torch.bool)
    return model(video, ids, mask, 0.5, torch.Generator().manual_seed(0), REAL)[0]


def loss_and_grads(model) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    value = loss(model)
    value.backward()
    return value.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("case", CASES)
def test_compiled_blocks_give_eager_losses_and_gradients(case):
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = build_model(model_config("tiny", [f"video.frames={FRAMES}", "video.depth=3", *CASES[case]])).train()
    compiled = copy.deepcopy(eager)
    blocks = [m for m in compiled.modules() if isinstance(m, Block)]
    assert compile_blocks(compiled, backend="aot_eager") == len(blocks) == 3 + 2  # video and text
    assert all(b._z3_leaf for b in blocks)
    loss_e, grads_e = loss_and_grads(eager)
    counters = torch._dynamo.utils.counters
    counters.clear()
    loss_c, grads_c = loss_and_grads(compiled)
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])  # one per tower, not per block
    assert not counters["graph_break"], dict(counters["graph_break"])
    torch.testing.assert_close(loss_c, loss_e, atol=1e-6, rtol=0)
    assert set(grads_c) == set(grads_e) and all(g is not None for g in grads_c.values())
    for name, grad in grads_e.items():
        torch.testing.assert_close(grads_c[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    # what backward keeps: as much as eager (the MLP keeps its pre-activation, not act of it,
    # under compile too), so the memory planner's count holds for compiled blocks
    kept = {name: saved_bytes(lambda m=m: loss(m), ignore=list(m.parameters()))
            for name, m in (("eager", eager), ("compiled", compiled))}
    assert kept["compiled"] == kept["eager"], kept
