"""Initial weights (longvivit/model/transformer.py): a function of the seed alone, drawn as each
module is built, in fp32 whatever dtype the parameters have (what lets a ZeRO-3 build under
deepspeed.zero.Init hold a whole build's weights: tests/test_train_construct.py)."""
import torch
from torch import nn

from longvivit.model import build_model, model_config
from longvivit.model.transformer import fill_


def weights(seed: int, overrides=()) -> dict:
    torch.manual_seed(seed)
    return build_model(model_config("tiny", list(overrides))).state_dict()


def test_the_seed_fixes_every_weight_and_another_seed_changes_them():
    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    drawn = [k for k in a if a[k].numel() > 1 and a[k].std() > 0]  # not the constant norms and biases
    assert drawn and not any(torch.equal(a[k], c[k]) for k in drawn)


def test_a_fresh_factorized_block_starts_with_temporal_attention_equal_to_its_spatial_one():
    torch.manual_seed(0)
    model = build_model(model_config("tiny", ["video.attention=factorized", "video.mask_scheme=tube"]))
    for block in model.video.blocks:
        for spatial, temporal in ((block.norm1, block.temporal_norm), (block.attn, block.temporal_attn)):
            pairs = zip(spatial.state_dict().values(), temporal.state_dict().values())
            assert all(torch.equal(s, t) for s, t in pairs)
        assert not torch.equal(block.attn.qkv.weight, block.mlp.fc1.weight[: 3 * 128])
    assert not torch.equal(model.video.blocks[0].attn.qkv.weight, model.video.blocks[1].attn.qkv.weight)


def test_a_bf16_parameter_gets_the_fp32_draws_rounded_once():
    """zero.Init creates parameters in the training dtype; drawing into a bf16 tensor directly
    gives other values (on this shape) than drawing in fp32 and casting the whole model."""
    fp32, bf16 = torch.empty(40, 25), torch.empty(40, 25, dtype=torch.bfloat16)
    fill_(fp32, nn.init.trunc_normal_, torch.Generator().manual_seed(0), std=0.02)
    fill_(bf16, nn.init.trunc_normal_, torch.Generator().manual_seed(0), std=0.02)
    assert torch.equal(bf16, fp32.to(torch.bfloat16))
    direct = nn.init.trunc_normal_(torch.empty(40, 25, dtype=torch.bfloat16), std=0.02,
                                   generator=torch.Generator().manual_seed(0))
    assert not torch.equal(direct, bf16)  # so the check above can fail
