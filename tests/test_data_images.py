"""Still images stored as JPEG (`longvivit shards --still-images`) and decoded by DALI's image
decoder give the loader the pixels the one-frame VP9 clips they replace gave, within the
codecs' loss, in the same (B, 1, S, S, 3) batches; shards of one-frame clips still load."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from longvivit.config import load_config
from longvivit.data import DataConfig, build_loader
from longvivit.data.load.tokenizer import train_tokenizer
from longvivit.data.prepare.synth import write_benchmark

from data_support import psnr, read_jsonl

CPU = torch.device("cpu")
IMAGES, SIZE = 16, 32  # the demo's and the local forms' stills are 32 px


@pytest.fixture(scope="module")
def stills(tmp_path_factory) -> dict:
    """The synthetic stills, as JPEG shards (today's writer) and as one-frame VP9 clip
    shards (the writer before: a still taken as a clip), and their source pixels."""
    from streaming import LocalDataset

    from longvivit.data.prepare import shards

    root = tmp_path_factory.mktemp("stills")
    write_benchmark(root / "synth", videos=2, frames=8, size=SIZE, images=IMAGES, min_events=2,
                    max_events=2)
    manifest = root / "synth" / "images.jsonl"
    opts = shards.ShardOptions(size=SIZE, still_images=True)
    assert shards.write_shards(manifest, root / "jpeg", opts, progress=False)["written"] == IMAGES
    with pytest.MonkeyPatch.context() as patch:  # workers=0: transcode runs in this process
        patch.setattr(shards, "is_picture", lambda source: False)
        assert shards.write_shards(manifest, root / "clip", opts, progress=False)["written"] == IMAGES
    source = np.stack([np.asarray(Image.open(root / "synth" / row["video"]).convert("RGB"))
                       for row in read_jsonl(manifest)])
    codecs = {form: {LocalDataset(str(root / form))[i]["codec"] for i in range(IMAGES)}
              for form in ("jpeg", "clip")}
    assert codecs == {"jpeg": {"jpeg"}, "clip": {"vp9"}}, codecs
    return {"root": root, "source": source, "tokenizer": train_tokenizer([manifest], root / "spm")}


def load_all(stills: dict, form: str) -> tuple[np.ndarray, int]:
    """Every still of the `form` shards as the image loader gives it (frames=1, centred
    crop, no flip, in index order) and the loader's decode failures."""
    cfg = load_config(DataConfig, dict(train=str(stills["root"] / form), tokenizer=stills["tokenizer"],
                                       frames=1, sampling="uniform", image_size=SIZE, batch_size=8,
                                       num_workers=0, text_length=16))
    loader = build_loader(cfg, "train", CPU, 0, 1, training=False)
    try:
        batches = list(loader)
        assert all(b["video"].shape == (8, 1, SIZE, SIZE, 3) and b["video"].dtype == torch.uint8
                   for b in batches)
        assert torch.cat([b["index"] for b in batches]).tolist() == list(range(IMAGES))
        return torch.cat([b["video"] for b in batches])[:, 0].numpy(), loader.decode_failures
    finally:
        loader.close()


def test_jpeg_stills_give_the_pixels_of_one_frame_clips_within_the_codecs_loss(stills):
    """Both forms are lossy (VP9 at crf 20 in YUV 4:2:0, JPEG at quality 95 in 4:2:0): each
    is compared with the source picture and with the other. Measured at 32 px (the demo's
    noisy synthetic stills): VP9 -> source 26.5 dB (mean |diff| 9.2 levels), JPEG -> source
    28.2 dB (5.6), JPEG -> VP9 29.4 dB (7.8); the same picture mirrored scores ~16 dB.
    Bounds: JPEG loses no more than VP9 did, is >= 27 dB from the source and >= 27 dB from
    what VP9 gave (a wrong crop, flip or channel order falls far below)."""
    (jpeg, failed_jpeg), (clip, failed_clip) = load_all(stills, "jpeg"), load_all(stills, "clip")
    source = stills["source"]
    assert failed_jpeg == failed_clip == 0
    mad = lambda a, b: float(np.abs(a.astype(np.int16) - b).mean())  # noqa: E731
    numbers = {"vp9-source": (psnr(clip, source), mad(clip, source)),
               "jpeg-source": (psnr(jpeg, source), mad(jpeg, source)),
               "jpeg-vp9": (psnr(jpeg, clip), mad(jpeg, clip)),
               "jpeg-vp9 mirrored": (psnr(jpeg, clip[:, :, ::-1]), mad(jpeg, clip[:, :, ::-1]))}
    print("\n" + "\n".join(f"{k}: PSNR {p:.2f} dB, mean |diff| {m:.2f}" for k, (p, m) in numbers.items()))
    assert numbers["jpeg-source"][1] <= numbers["vp9-source"][1], numbers
    assert numbers["jpeg-source"][0] >= max(27.0, numbers["vp9-source"][0]), numbers
    assert numbers["jpeg-vp9"][0] >= 27.0, numbers
    assert numbers["jpeg-vp9 mirrored"][0] < 20.0, numbers  # the bound can fail


def test_a_jpeg_goes_to_the_image_decoder_and_a_bad_one_spoils_only_itself(stills):
    """Each JPEG still goes to DALI's image decoder (no video decoder is built), and a
    corrupt one is reported like a clip that does not decode."""
    from streaming import LocalDataset

    from longvivit.data.load.decode import VideoDecoder, plan_clip

    samples = [LocalDataset(str(stills["root"] / "jpeg"))[i] for i in range(4)]
    plans = [plan_clip(s, 1, "uniform", None, False) for s in samples]
    decoder = VideoDecoder(4, SIZE, CPU)
    assert [decoder.route(s["video"], p) for s, p in zip(samples, plans)] == ["image"] * 4
    encoded = [s["video"] for s in samples]
    encoded[2] = encoded[2][:3] + bytes(len(encoded[2]) - 3)  # a JPEG marker, then zeros
    video, good, error = decoder.decode(encoded, plans)
    assert good == [0, 1, 3] and video.shape == (3, 1, SIZE, SIZE, 3) and error
    assert set(decoder.pipes) == {"image"}  # no video pipeline was built
