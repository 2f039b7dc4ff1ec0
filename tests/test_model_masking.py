"""Masking before the encoder: how many tokens survive, which ones, reproducibly, and
that each keeps the position embedding of where it came from."""
import pytest
import torch

from longvivit.model import build_model, model_config, sample_visible, visible_count


def tokens_entering_blocks(model, video, **kw):
    """The (B, n, D) sequence the first block receives."""
    seen = {}
    hook = model.video.blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        model.encode_video(video, **kw)
    hook.remove()
    return seen["x"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = model_config("tiny", ["video.ln_pre=false"])  # blocks then see embeddings + positions
    return cfg, build_model(cfg).eval()


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75, 0.9])
def test_random_masking_keeps_round_1_minus_r_times_n_tokens(tiny, ratio):
    cfg, model = tiny
    video = torch.randint(0, 256, (3, 16, 32, 32, 3), dtype=torch.uint8)
    N = cfg.video.tokens  # 8 slices x 16 positions = 128
    x = tokens_entering_blocks(model, video, mask_ratio=ratio, mask_scheme="random")
    assert x.shape == (3, round((1 - ratio) * N), cfg.video.width)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_tube_masking_length_and_same_spatial_set_in_every_slice(tiny, ratio):
    cfg, model = tiny
    slices, S = 8, 16
    index = sample_visible(4, slices, S, ratio, "tube", torch.Generator().manual_seed(3))
    n = round((1 - ratio) * slices * S)  # (1 - r) * S is whole here, so the counts agree
    assert index.shape == (4, n) == (4, visible_count(slices, S, ratio, "tube"))
    per_slice = index.view(4, slices, -1)  # sorted indices: slice-major
    assert torch.equal(per_slice // S, torch.arange(slices)[None, :, None].expand_as(per_slice))
    spatial = per_slice % S
    assert (spatial == spatial[:, :1]).all(), "a tube mask must drop the same positions in every slice"
    assert not (spatial[0, 0] == spatial[1, 0]).all(), "samples should get different tubes"
    video = torch.randint(0, 256, (2, 16, 32, 32, 3), dtype=torch.uint8)
    x = tokens_entering_blocks(model, video, mask_ratio=ratio, mask_scheme="tube")
    assert x.shape[1] == n


def test_tube_count_when_the_spatial_fraction_is_not_whole():
    # 9 positions, r = 0.5: each slice keeps round(4.5) = 4 positions, so 4 * 4 tokens
    assert visible_count(4, 9, 0.5, "tube") == 16
    assert sample_visible(2, 4, 9, 0.5, "tube").shape == (2, 16)


@pytest.mark.parametrize("scheme", ["random", "tube"])
def test_same_seed_same_mask_other_seed_other_mask(scheme):
    draw = lambda seed: sample_visible(3, 8, 16, 0.75, scheme, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))
    index = draw(7)
    assert (index.diff(dim=1) > 0).all(), "kept indices are sorted and distinct"
    if scheme == "random":
        assert not torch.equal(index[0], index[1]), "each sample gets its own mask"


def test_no_masking_returns_none_and_bad_ratio_raises():
    assert sample_visible(2, 8, 16, 0.0) is None
    with pytest.raises(ValueError):
        sample_visible(2, 8, 16, 1.0)
    with pytest.raises(ValueError):
        sample_visible(2, 8, 16, 0.5, "blocks")


@pytest.mark.parametrize("scheme", ["random", "tube"])
def test_each_kept_token_carries_its_original_position(tiny, scheme):
    cfg, model = tiny
    torch.manual_seed(1)
    video = torch.randint(0, 256, (2, 16, 32, 32, 3), dtype=torch.uint8)
    full = tokens_entering_blocks(model, video, mask_ratio=0.0)  # conv path, all 128 tokens
    masked = tokens_entering_blocks(model, video, mask_ratio=0.75, mask_scheme=scheme,
                                    generator=torch.Generator().manual_seed(5))
    index = sample_visible(2, 8, 16, 0.75, scheme, torch.Generator().manual_seed(5))
    expected = full.gather(1, index[..., None].expand(-1, -1, full.shape[-1]))
    assert torch.allclose(masked, expected, atol=1e-5)
    # and the positions matter: the same pixels at another place embed differently
    pos = model.video.pos_embed
    assert not torch.allclose(pos(8, 4, index), pos(8, 4, (index + 1) % 128))


def test_kept_positions_equal_table_indexing_with_a_backward_that_is_the_same_every_run():
    """The kept tokens' positions are temporal[t] + spatial[s] bit for bit, their gradients
    equal those of indexing the tables (float64), and the backward gives the same bits on
    every run with several threads (indexing's backward, index_put with accumulate, sums
    repeated indices in thread order: it differed on 5 of 5 reruns at these sizes)."""
    from longvivit.model.video import PositionEmbedding

    slices, grid, width, batch = 32, 14, 768, 4  # ViT-B at 64 frames, 224 px
    S = grid * grid
    torch.manual_seed(0)
    index = sample_visible(batch, slices, S, 0.75, "random", torch.Generator().manual_seed(1))
    pos = PositionEmbedding(slices, grid, width).double()
    torch.nn.init.normal_(pos.spatial)
    torch.nn.init.normal_(pos.temporal)
    grad_out = torch.randn(batch, index.shape[1], width, dtype=torch.float64)

    def grads(module, indexing: bool):
        module.zero_grad(set_to_none=True)
        out = module.temporal[index // S] + module.spatial[index % S] if indexing else module(slices, grid, index)
        out.backward(grad_out.to(out.dtype))
        return out.detach(), module.temporal.grad.clone(), module.spatial.grad.clone()

    want, got = grads(pos, indexing=True), grads(pos, indexing=False)
    assert torch.equal(got[0], want[0])
    for g, w in zip(got[1:], want[1:]):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    fp32 = pos.float()
    assert torch.equal(grads(fp32, indexing=False)[0], grads(fp32, indexing=True)[0])
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        runs = [grads(fp32, indexing=False) for _ in range(5)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(r[1], runs[0][1]) and torch.equal(r[2], runs[0][2]) for r in runs)


def test_factorized_rejects_random_masking():
    torch.manual_seed(0)
    model = build_model(model_config("tiny", ["video.attention=factorized"]))
    video = torch.randint(0, 256, (1, 16, 32, 32, 3), dtype=torch.uint8)
    with pytest.raises(ValueError, match="tube"):
        model.encode_video(video, mask_ratio=0.5, mask_scheme="random")
    assert model.encode_video(video, mask_ratio=0.5, mask_scheme="tube").shape == (1, 64)
