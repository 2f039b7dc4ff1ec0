"""data.source=synthetic: random batches of the configured shapes, deterministic, resumable."""
import torch

from longvivit.config import load_config
from longvivit.data.config import DataConfig
from longvivit.data.load.synthetic import SyntheticBatches
from longvivit.data.load.tokenizer import BOS, EOS, PAD

CPU = torch.device("cpu")


def cfg(**kw):
    base = dict(source="synthetic", frames=4, image_size=16, batch_size=3, text_length=8,
                synthetic_samples=20)
    return load_config(DataConfig, {**base, **kw})


def loader(rank=0, world=2, split="train", **kw):
    return SyntheticBatches(cfg(**kw), split, CPU, rank, world, training=True, vocab_size=50)


def test_shapes_and_caption_format():
    batch = next(iter(loader()))
    assert batch["video"].shape == (3, 4, 16, 16, 3) and batch["video"].dtype == torch.uint8
    ids, mask = batch["text_ids"], batch["text_mask"]
    assert ids.shape == mask.shape == (3, 8) and mask.dtype == torch.bool
    lengths = mask.sum(1)
    assert (lengths >= 3).all() and (ids[:, 0] == BOS).all()
    for row, n in zip(ids, lengths.tolist()):
        assert row[n - 1] == EOS and (row[n:] == PAD).all()
        assert ((row[1:n - 1] > EOS) & (row[1:n - 1] < 50)).all()
    assert batch["real_frames"].tolist() == [4, 4, 4]


def test_open_clip_layout_ends_each_caption_at_its_highest_id():
    """sot and eot are open_clip BPE's two highest ids: the CLIP text tower pools at the
    row's maximum, which must be the eot."""
    batch = next(iter(SyntheticBatches(cfg(), "train", CPU, 0, 2, True, vocab_size=49408, tokenizer="open_clip")))
    ids, lengths = batch["text_ids"], batch["text_mask"].sum(1)
    assert (ids[:, 0] == 49406).all() and (ids.argmax(1) == lengths - 1).all()
    for row, n in zip(ids, lengths.tolist()):
        assert row[n - 1] == 49407 and (row[n:] == PAD).all() and ((row[1:n - 1] >= 1) & (row[1:n - 1] < 49406)).all()


def test_ranks_see_disjoint_indices_and_epochs_differ():
    # 20 samples over 2 ranks: 10 each -> 3 whole batches of 3 per rank
    r0 = [b["index"].tolist() for b in loader(rank=0)]
    r1 = [b["index"].tolist() for b in loader(rank=1)]
    assert len(r0) == len(r1) == 3
    assert set(sum(r0, [])).isdisjoint(sum(r1, [])) and sum(r0, [])[:3] == [0, 2, 4]
    it = loader()
    e0 = [b["video"] for b in it]
    e1 = [b["video"] for b in it]
    assert not torch.equal(e0[0], e1[0])
    assert all(torch.equal(a, b["video"]) for a, b in zip(e0, loader()))  # same seed, same batches
    assert not torch.equal(e0[0], next(iter(loader(seed=1)))["video"])
    assert not torch.equal(e0[0], next(iter(loader(split="val")))["video"])


def test_resume_mid_epoch_and_at_the_epoch_end_is_exact():
    whole = loader()
    straight = [b["video"] for _ in range(2) for b in whole]  # two epochs, 6 batches
    for cut in (1, 3, 4):  # mid-epoch, right after the last batch of an epoch, mid second epoch
        first, seen = loader(), []
        stream = (b for _ in range(2) for b in first)
        for _ in range(cut):
            seen.append(next(stream)["video"])
        resumed = loader()
        resumed.load_state_dict(first.state_dict())
        rest = [b["video"] for _ in range(2) for b in resumed][: len(straight) - cut]
        assert all(torch.equal(a, b) for a, b in zip(seen + rest, straight)), cut
