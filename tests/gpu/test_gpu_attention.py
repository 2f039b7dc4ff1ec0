"""c. scaled_dot_product_attention runs a fused kernel (flash, cutlass fmha or cuDNN) in the
video tower's bf16 forward and backward, and bf16 agrees with fp32 on the same weights and
clip (thresholds and why: bench/gpu.py check_attention)."""
import gpu

CHECK = "attention"


def test_sdpa_runs_a_fused_kernel_never_the_math_fallback(record):
    assert record["fused"], record["kernels"]
    assert not record["math"] and "math" not in record["ops"], (record["kernels"], record["ops"])


def test_bf16_forward_and_backward_agree_with_fp32(record):
    a = record["bf16_vs_fp32"]
    assert a["embedding_cosine_min"] >= gpu.EMBED_COSINE_MIN, a
    assert a["grad_cosine"] >= gpu.GRAD_COSINE_MIN, a
    assert a["grad_norm_rel_diff"] <= gpu.GRAD_NORM_RTOL, a
