"""j. A padded batch (B tower, bf16, 8 clips of 64 and 16 frames at 75% masking, a CLS token)
packed (video.packing=packed: torch's varlen attention over every clip's tokens of content)
against the masked rows the CPU runs: a fused kernel, no math fallback, both within
check_attention's bounds of the masked path in fp32, no host sync, and packed vs padded step
time (bench/gpu.py check_packed). Not run on a GPU yet."""
import gpu

CHECK = "packed"


def test_both_paths_run_fused_attention_kernels(record):
    for name in ("packed", "masked"):
        assert record[name]["fused"] and not record[name]["math"], (name, record[name]["kernels"])


def test_packed_and_masked_bf16_agree_with_masked_fp32(record):
    for name in ("packed", "masked"):
        a = record[name]["vs_fp32_masked"]
        assert a["embedding_cosine_min"] >= gpu.EMBED_COSINE_MIN, (name, a)
        assert a["grad_cosine"] >= gpu.GRAD_COSINE_MIN, (name, a)
        assert a["grad_norm_rel_diff"] <= gpu.GRAD_NORM_RTOL, (name, a)


def test_packed_makes_no_host_sync_with_real_frames_on_the_host(record):
    assert record["packed_syncs"] == 0, record["sync_sites"]


def test_packed_is_faster_than_padded_rows(record):
    """640 of 1,024 row tokens carry content (half the clips a quarter long) and no mask keeps
    attention off FlashAttention: the packed step must take less time than the masked one."""
    print(f"packed {record['packed']['step_s']:.4f} s, masked {record['masked']['step_s']:.4f} s")
    assert record["packed_vs_masked_time"] < 1.0, (record["packed"]["step_s_samples"],
                                                   record["masked"]["step_s_samples"])
