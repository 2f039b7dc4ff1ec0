"""What reaches F.scaled_dot_product_attention. One training step of each shipped config's
local form on whole clips passes no attn_mask (the CLS key's copies replace the ln T'
bias, the CLIP text tower is causal through is_causal), so on a GPU SDPA may pick
FlashAttention; the copies give the bias's embeddings; a padded BERT batch is still masked."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from longvivit.data.load.synthetic import SyntheticBatches
from longvivit.model import build_model, model_config
from longvivit.model.transformer import Attention
from longvivit.train.config import load_run_config

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "longvivit" / "configs").glob("*.yaml"))


class SdpaCalls(list):
    """Each F.scaled_dot_product_attention call while installed: its mask, causality and
    query and key lengths."""

    def __init__(self, monkeypatch):
        super().__init__()
        sdpa = F.scaled_dot_product_attention

        def recorded(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
            self.append({"mask": attn_mask is not None, "causal": is_causal,
                         "queries": q.shape[-2], "keys": k.shape[-2]})
            return sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)

        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recorded)


def local_step(config: Path, tmp_path: Path, calls: SdpaCalls):
    """One training micro-batch of the config's local form as the trainer runs it (forward
    with the config's masking, loss, backward), on synthetic whole clips whose captions
    fill the context (no padding: a padded BERT batch must mask, see below)."""
    cfg = load_run_config(config, overrides=["local=true", f"local_dir={tmp_path}", "data.source=synthetic"])
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    t = cfg.model.text
    batch = next(iter(SyntheticBatches(cfg.data, "train", torch.device("cpu"), 0, 1, True, t.vocab_size,
                                       t.tokenizer)))
    assert bool((batch["real_frames"] == cfg.data.frames).all())  # whole clips
    calls.clear()
    loss, _ = model(batch["video"], batch["text_ids"], torch.ones_like(batch["text_mask"]),
                    generator=torch.Generator().manual_seed(0), real_frames=batch["real_frames"])
    loss.backward()
    return cfg


@pytest.mark.parametrize("config", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_a_training_step_of_each_shipped_config_passes_no_attention_mask(config, tmp_path, monkeypatch):
    calls = SdpaCalls(monkeypatch)
    cfg = local_step(config, tmp_path, calls)
    v, t = cfg.model.video, cfg.model.text
    assert calls and not [c for c in calls if c["mask"]], calls
    assert any(c["causal"] for c in calls) == (t.arch == "clip")  # only the CLIP text tower is causal
    copies = v.frames // v.tubelet[0] if v.cls_token and v.attention == "joint" else 1
    # the joint video tower with a CLS token: T'-1 more keys than queries, every block
    assert any(c["keys"] - c["queries"] == copies - 1 for c in calls if not c["causal"])


# ----------------------------------------------------------------------------- copies = bias


def test_first_key_copies_are_the_ln_c_bias_on_the_first_key():
    torch.manual_seed(0)
    attention = Attention(64, 4).double()
    x = torch.randn(2, 17, 64, dtype=torch.float64)
    for copies in (2, 4, 128):
        bias = torch.zeros(1, 1, 1, 17, dtype=torch.float64)
        bias[..., 0] = math.log(copies)
        diff = (attention(x, first_key_copies=copies) - attention(x, attn_mask=bias)).abs().max().item()
        print(f"copies {copies}: max |copies - bias| {diff:.3g} (float64)")
        assert diff < 1e-12


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_the_video_tower_embeds_whole_clips_as_with_the_cls_bias(pool, monkeypatch):
    """The copies (whole clips) against padding_bias's ln T' on the CLS key (the padded
    path, taken by declaring every clip's slices real): the same embeddings."""
    torch.manual_seed(0)
    cfg = model_config("tiny", ["video.frames=16", "video.depth=2", "video.cls_token=true", f"video.pool={pool}"])
    tower = build_model(cfg).video.eval()
    with torch.no_grad():
        tower.cls_token.mul_(10)  # a loud CLS token, as trained towers have: the copies matter
    video = torch.randint(0, 256, (2, 16, 32, 32, 3), dtype=torch.uint8)
    calls = SdpaCalls(monkeypatch)
    with torch.no_grad():
        copies = tower(video)
        assert not any(c["mask"] for c in calls) and calls[0]["keys"] == calls[0]["queries"] + 7  # T' = 8
        calls.clear()
        with monkeypatch.context() as m:
            m.setattr(tower, "real_slices", lambda real_frames, slices, batch: torch.full((batch,), slices))
            bias = tower(video)
        assert all(c["mask"] and c["keys"] == c["queries"] for c in calls)
        monkeypatch.setattr(tower, "cls_key_copies", lambda slices: 1)
        once = tower(video)
    diff = (copies - bias).abs().max().item()
    print(f"pool {pool}: max |copies - bias| {diff:.3g} (float32, embeddings of size {copies.abs().max():.3g})")
    assert torch.allclose(copies, bias, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(copies, once, atol=1e-3)  # the CLS key once: another embedding


# ----------------------------------------------------------------------------- BERT tower


def test_the_bert_tower_masks_a_padded_batch_and_passes_none_without_padding(monkeypatch):
    torch.manual_seed(0)
    text = build_model(model_config("tiny")).text.eval()
    assert type(text).__name__ == "TextEncoder"
    ids = torch.randint(3, 100, (2, 12))
    padded = torch.arange(12)[None] < torch.tensor([[12], [7]])  # the second caption is 7 tokens
    calls = SdpaCalls(monkeypatch)
    with torch.no_grad():
        masked = text(ids, padded)
        assert len(calls) == len(text.blocks) and all(c["mask"] for c in calls)
        calls.clear()
        whole = text(ids, torch.ones_like(padded))
        assert len(calls) == len(text.blocks) and not any(c["mask"] for c in calls)
        alone = text(ids[1:, :7], padded[1:, :7])  # the short caption unpadded: no mask
    assert torch.allclose(masked[1], alone[0], atol=1e-5)  # the mask keeps the padding out
    assert torch.allclose(masked[0], whole[0], atol=1e-5)  # an all-True mask changes nothing
