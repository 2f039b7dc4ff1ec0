"""Padded batches packed (video.packing=packed: every clip's tokens of content in one sequence,
attention per clip without a mask) give the masked path's numbers: embeddings and every
parameter's gradient on batches of mixed lengths, with and without CLS, pooled by mean and
by CLS, unmasked and at 75% masking (one generator seed: both paths keep the same tokens).

On the CPU the packed path loops over the clips with one SDPA call each; on CUDA in bf16 it
is torch's varlen attention (tests/gpu/test_gpu_packed.py compares the two there). The
masked path adds ln(real slices) to the CLS key's logits where the packed one enters the
CLS key real-slices times: the same softmax, rounded differently, hence a tolerance."""
import math

import pytest
import torch
import torch.nn.functional as F

from longvivit.config import ConfigError
from longvivit.model import build_model, model_config
from longvivit.model.transformer import Packed

FRAMES = 16  # tubelet t=2: 8 temporal slices
REAL = torch.tensor([16, 6, 11])  # 8, 3 and 6 slices of content: one whole clip, two padded
ATOL = 1e-5  # fp32, embeddings and gradients (measured: see test_packed_equals_masked)

CASES = {
    "mean": [],
    "cls-pool": ["video.cls_token=true", "video.pool=cls"],
    "cls-mean": ["video.cls_token=true"],
    "cls-tube-checkpointed": ["video.cls_token=true", "video.mask_scheme=tube", "video.grad_checkpointing=1"],
}


def model(overrides, packing):
    torch.manual_seed(0)
    cfg = model_config("tiny", [f"video.frames={FRAMES}", "video.depth=2", f"video.packing={packing}",
                                *overrides])
    return build_model(cfg).train()


def embed_and_grads(m, mask_ratio):
    video = torch.randint(0, 256, (len(REAL), FRAMES, 32, 32, 3), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(1))
    emb = m.encode_video(video, mask_ratio=mask_ratio, generator=torch.Generator().manual_seed(0),
                         real_frames=REAL)  # (B, E)
    weight = torch.randn(emb.shape, generator=torch.Generator().manual_seed(2))
    (emb * weight).sum().backward()
    return emb.detach(), {n: p.grad for n, p in m.video.named_parameters()}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mask_ratio", [0.0, 0.75])
def test_packed_equals_masked(case, mask_ratio):
    packed, masked = model(CASES[case], "packed"), model(CASES[case], "masked")
    assert packed.video.packs(torch.device("cpu")) and not masked.video.packs(torch.device("cpu"))
    emb_p, grads_p = embed_and_grads(packed, mask_ratio)
    emb_m, grads_m = embed_and_grads(masked, mask_ratio)
    print(f"{case} r={mask_ratio}: max |embedding diff| {(emb_p - emb_m).abs().max():.2e}, max |grad diff| "
          f"{max((grads_p[n] - grads_m[n]).abs().max() for n in grads_m):.2e}")
    torch.testing.assert_close(emb_p, emb_m, atol=ATOL, rtol=0)
    assert set(grads_p) == set(grads_m)
    for name, grad in grads_m.items():
        assert grad is not None and grads_p[name] is not None, name  # every parameter gets one
        torch.testing.assert_close(grads_p[name], grad, atol=ATOL, rtol=0, msg=name)


def test_packed_attention_is_a_naive_softmax_per_sequence():
    """Packed.attention against float64 math: sequence i's queries see its own keys, its
    first key weighted by first_key_copies[i] (a +ln(c) logit)."""
    lengths, copies = torch.tensor([3, 1, 4]), torch.tensor([2, 1, 5])
    packed = Packed.of(lengths, copies, torch.device("cpu"))
    assert packed.q_bounds == (0, 3, 4, 8) and packed.k_bounds == (0, 4, 5, 13)
    assert packed.key_index.tolist() == [0, 0, 1, 2, 3, 4, 4, 4, 4, 4, 5, 6, 7]
    qkv = torch.randn(8, 3, 2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = packed.attention(qkv)  # (8, H, D/H)
    for (a, b), c in zip(zip(packed.q_bounds, packed.q_bounds[1:]), copies.tolist()):
        q, k, v = qkv[a:b].unbind(1)  # (L, H, D/H) each
        logits = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
        logits[..., 0] += math.log(c)
        want = torch.einsum("hqk,khd->qhd", logits.softmax(-1), v)
        torch.testing.assert_close(got[a:b], want, atol=1e-12, rtol=0)
    no_copies = Packed.of(lengths, torch.ones_like(copies), torch.device("cpu"))
    assert no_copies.key_index is None and no_copies.k_bounds == no_copies.q_bounds


def test_auto_packs_on_cuda_only_and_factorized_never():
    auto = build_model(model_config("tiny", [f"video.frames={FRAMES}", "video.depth=1"])).video
    assert auto.cfg.packing == "auto"
    assert auto.packs(torch.device("cuda")) and not auto.packs(torch.device("cpu"))
    factorized = build_model(model_config("tiny", [f"video.frames={FRAMES}", "video.depth=1", "video.packing=packed",
                                                   "video.attention=factorized", "video.mask_scheme=tube"])).video
    assert not factorized.packs(torch.device("cuda")) and not factorized.packs(torch.device("cpu"))
    with pytest.raises(ConfigError, match="packing"):
        model_config("tiny", ["video.packing=on"])


def test_whole_clips_never_pack():
    """A batch of whole clips takes the unpadded path (CLS key copies, no mask) whatever
    packing says: bit for bit the same embedding."""
    video = torch.randint(0, 256, (2, FRAMES, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = []
    for packing in ("packed", "masked"):
        m = model(["video.cls_token=true"], packing).eval()
        with torch.no_grad():
            out.append(m.encode_video(video, mask_ratio=0.5, generator=torch.Generator().manual_seed(0),
                                      real_frames=torch.tensor([FRAMES, FRAMES])))
    assert torch.equal(*out)


def test_packed_sdpa_calls_take_no_mask(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("attn_mask"))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    embed_and_grads(model(["video.cls_token=true"], "packed"), 0.5)
    assert len(calls) == 2 * len(REAL) and all(mask is None for mask in calls)  # 2 blocks x 3 clips


def test_the_varlen_call_takes_the_packed_operands_on_fake_cuda():
    """What a CPU can check of the CUDA path: torch's varlen op, on FakeTensors standing for
    CUDA bf16 tensors, accepts the operands Packed.attention hands it (order, shapes, dtypes)
    and returns one differentiable (total, H, D/H) output. Its numbers: tests/gpu only."""
    import dataclasses

    from torch._subclasses.fake_tensor import FakeTensorMode

    from longvivit.model import transformer

    if transformer.varlen_attn is None:
        pytest.skip("this torch has no torch.nn.attention.varlen")
    host = Packed.of(torch.tensor([3, 1, 4]), torch.tensor([2, 1, 5]), torch.device("cpu"))
    with FakeTensorMode():
        cuda = {"device": "cuda"}
        packed = dataclasses.replace(host, cu_q=torch.empty(4, dtype=torch.int32, **cuda),
                                     cu_k=torch.empty(4, dtype=torch.int32, **cuda),
                                     key_index=torch.empty(13, dtype=torch.int64, **cuda))
        qkv = torch.empty(8, 3, 2, 8, dtype=torch.bfloat16, requires_grad=True, **cuda)
        out = packed.attention(qkv)
        assert out.shape == (8, 2, 8) and out.dtype == torch.bfloat16 and out.device.type == "cuda"
        assert "varlen" in type(out.grad_fn).__name__
