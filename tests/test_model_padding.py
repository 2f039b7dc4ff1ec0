"""Padded frames are not content: a clip shorter than the model's frames (its last frame
repeated by the loader) embeds the same whatever the padding holds, masking draws only
among its real tokens at the configured ratio, and a batch of whole clips is unchanged."""
import pytest
import torch

from longvivit.model import build_model, model_config
from longvivit.model.masking import sample_visible, sample_visible_padded

FRAMES, REAL = 16, 6  # tubelet t=2: 8 slices, 3 of content

CASES = {
    "joint-mean": [],
    "joint-cls": ["video.cls_token=true", "video.pool=cls"],
    "joint-cls-mean": ["video.cls_token=true"],
    "factorized-mean": ["video.attention=factorized", "video.mask_scheme=tube"],
    "factorized-cls": ["video.attention=factorized", "video.mask_scheme=tube", "video.cls_token=true",
                       "video.pool=cls"],
}


def model(overrides):
    torch.manual_seed(0)
    return build_model(model_config("tiny", [f"video.frames={FRAMES}", "video.depth=2", *overrides])).eval()


def clips(padding: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two clips: one of REAL frames then `padding` (its last frame repeated, or noise),
    one whole clip."""
    g = torch.Generator().manual_seed(1)
    video = torch.randint(0, 256, (2, FRAMES, 32, 32, 3), dtype=torch.uint8, generator=g)
    if padding == "repeat":
        video[0, REAL:] = video[0, REAL - 1]
    return video, torch.tensor([REAL, FRAMES])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mask_ratio", [0.0, 0.5])
def test_padding_content_changes_nothing(case, mask_ratio):
    m = model(CASES[case])
    out = []
    for padding in ("repeat", "noise"):
        video, real = clips(padding)
        with torch.no_grad():
            out.append(m.encode_video(video, mask_ratio=mask_ratio, real_frames=real,
                                      generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(out[0], out[1], atol=1e-6), (out[0] - out[1]).abs().max()
    # and the padding really is dropped: without real_frames the repeated frames are content
    video, real = clips("repeat")
    with torch.no_grad():
        as_content = m.encode_video(video, mask_ratio=0.0)
    assert not torch.allclose(as_content[0], out[0][0], atol=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_whole_clips_take_the_unpadded_path_bit_for_bit(case):
    m = model(CASES[case])
    video, _ = clips("noise")
    with torch.no_grad():
        plain = m.encode_video(video, mask_ratio=0.5, generator=torch.Generator().manual_seed(0))
        whole = m.encode_video(video, mask_ratio=0.5, generator=torch.Generator().manual_seed(0),
                               real_frames=torch.tensor([FRAMES, FRAMES + 3]))
    assert torch.equal(plain, whole)


def test_a_padded_clip_alone_embeds_as_in_a_batch_with_a_longer_one():
    """Row padding (fillers up to the longest clip's token count) changes nothing either."""
    m = model([])
    video, real = clips("noise")
    with torch.no_grad():
        both = m.encode_video(video, mask_ratio=0.0, real_frames=real)
        alone = m.encode_video(video[:1], mask_ratio=0.0, real_frames=real[:1])
    assert torch.allclose(both[0], alone[0], atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_an_image_embeds_as_the_one_content_frame_of_a_padded_clip(case):
    """An image (T = 1) gets the first temporal position and the tubelet kernel summed over
    time: the same as a clip whose only content is that frame, whatever the weights (here
    random, with a non-zero temporal table)."""
    m = model(CASES[case])
    image = torch.randint(0, 256, (2, 1, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    # the loader repeats the last frame, so the first tubelet (t = 2) is the image twice;
    # the slices after it are dropped whatever they hold
    padded = torch.randint(0, 256, (2, FRAMES, 32, 32, 3), dtype=torch.uint8)
    padded[:, :2] = image
    with torch.no_grad():
        still = m.encode_video(image, mask_ratio=0.0)
        clip = m.encode_video(padded, mask_ratio=0.0, real_frames=torch.ones(2, dtype=torch.long))
    assert torch.allclose(still, clip, atol=1e-5), (still - clip).abs().max()


@pytest.mark.parametrize("scheme", ["random", "tube"])
def test_masking_keeps_the_ratio_of_each_clips_own_tokens(scheme):
    slices, spatial, ratio = 8, 16, 0.75
    real = torch.tensor([8, 3, 1, 5])
    index, valid = sample_visible_padded(slices, spatial, ratio, scheme, real, torch.Generator().manual_seed(0))
    kept = valid.sum(1)
    assert kept.tolist() == [round(0.25 * r * spatial) for r in real.tolist()]
    assert index.shape[1] == int(kept.max())
    for row, keep, r in zip(index, valid, real.tolist()):
        tokens = row[keep]
        assert (tokens < r * spatial).all() and tokens.unique().numel() == tokens.numel()
        assert torch.equal(tokens, tokens.sort().values)
    if scheme == "tube":  # the same spatial positions in every slice of content
        rows = index.view(4, -1, 4)
        for b, r in enumerate(real.tolist()):
            assert all(torch.equal(rows[b, t] % spatial, rows[b, 0] % spatial) for t in range(r))
    else:  # a whole clip keeps what the unpadded sampler keeps from the same noise
        plain = sample_visible(4, slices, spatial, ratio, scheme, torch.Generator().manual_seed(0))
        assert torch.equal(index[0], plain[0])
