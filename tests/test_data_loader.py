"""build_loader on CPU: DALI frames match PyAV, padding, decode failures, exact resume,
stale shared memory, long clips."""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import tempfile
from pathlib import Path
from multiprocessing import shared_memory

import numpy as np
import pytest
import torch

from longvivit.config import ConfigError, load_config
from longvivit.data import DataConfig, build_loader
from longvivit.data.load.reader import clean_stale_shared_memory
from longvivit.data.prepare.video import frames_at

from data_support import SYNTH, psnr, read_jsonl, synth_data  # noqa: F401 (fixture)

CPU = torch.device("cpu")


def data_cfg(synth_data, **overrides) -> DataConfig:
    base = dict(train=str(synth_data["shards_all"]), val=str(synth_data["shards_val"]),
                tokenizer=str(synth_data["tokenizer"]), frames=8, image_size=SYNTH["size"],
                batch_size=2, num_workers=1, text_length=32)
    return load_config(DataConfig, base, overrides)


def epoch(loader) -> list[dict]:
    return [{k: v.clone() if torch.is_tensor(v) else v for k, v in b.items()} for b in loader]


_source_frames: dict[tuple, np.ndarray] = {}


def reference(synth_data, index: int, frame_ids, size: int, flip: bool = False) -> np.ndarray:
    """PyAV decoding of the *source* video at the same timestamps (1 FPS: index = second),
    resized like the loader (bilinear with antialiasing) and optionally mirrored."""
    key = (str(synth_data["dir"]), index)
    if key not in _source_frames:
        rows = read_jsonl(synth_data["dir"] / "all.jsonl")
        path = str(synth_data["dir"] / rows[index]["video"])
        _source_frames[key] = frames_at(path, [float(i) for i in range(SYNTH["frames"])])
    frames = _source_frames[key][np.asarray(frame_ids)]
    t = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    if t.shape[-1] != size:
        t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear",
                                            antialias=True)
    t = t.round().clamp(0, 255).permute(0, 2, 3, 1)
    return (t.flip(2) if flip else t).to(torch.uint8).numpy()


@pytest.mark.parametrize("sampling,size", [("uniform", 48), ("fps", 48), ("uniform", 24)])
def test_round_trip_matches_pyav_on_the_source(synth_data, sampling, size):
    """synth -> shards -> StreamingDataset -> DALI equals PyAV decoding the source video
    at the same timestamps: uniform picks segment centres, fps the centred window."""
    cfg = data_cfg(synth_data, sampling=sampling, image_size=size)
    loader = build_loader(cfg, "train", CPU, 0, 1, training=False)
    n, t = SYNTH["frames"], cfg.frames
    expected = (((np.arange(t) + 0.5) * n / t).astype(int) if sampling == "uniform"
                else (n - t) // 2 + np.arange(t))
    scores, seen = [], []
    for batch in loader:
        assert batch["video"].shape == (2, t, size, size, 3) and batch["video"].dtype == torch.uint8
        assert batch["real_frames"].tolist() == [t, t]
        for clip, index in zip(batch["video"].numpy(), batch["index"].tolist()):
            scores.append(psnr(clip, reference(synth_data, index, expected, size)))
            seen.append(index)
    print(f"\n{sampling} {size}px: PSNR min {min(scores):.1f} mean {np.mean(scores):.1f} dB "
          f"over {len(scores)} clips")
    assert sorted(seen) == list(range(16)) and min(scores) >= 30


def test_training_windows_crops_and_flips_are_random_but_reproducible(synth_data):
    cfg = data_cfg(synth_data, sampling="fps", frames=6, num_workers=0)
    first = epoch(build_loader(cfg, "train", CPU, 0, 1, training=True))
    again = epoch(build_loader(cfg, "train", CPU, 0, 1, training=True))
    for a, b in zip(first, again):
        assert all(torch.equal(a[k], b[k]) for k in a)
    starts, flips = set(), set()
    for batch in first:
        for clip, index in zip(batch["video"].numpy(), batch["index"].tolist()):
            best = max(((psnr(clip, reference(synth_data, index, s + np.arange(6), 48, f)), s, f)
                        for s in range(16 - 6 + 1) for f in (False, True)))
            assert best[0] >= 30, f"clip {index} matches no window of its source"
            starts.add(best[1])
            flips.add(best[2])
    assert len(starts) > 2 and flips == {False, True}
    # the shuffled order differs from the stored order, and from one epoch to the next
    order = [i for b in first for i in b["index"].tolist()]
    assert sorted(order) == list(range(16)) and order != list(range(16))


def test_short_clip_is_edge_padded_and_real_frames_counted(synth_data):
    cfg = data_cfg(synth_data, frames=20, image_size=24, num_workers=0)
    batch = next(iter(build_loader(cfg, "val", CPU, 0, 1, training=False)))
    assert batch["real_frames"].tolist() == [16, 16]
    video = batch["video"]
    assert all(torch.equal(video[:, 15], video[:, j]) for j in range(16, 20))
    assert not torch.equal(video[:, 14], video[:, 15])


def test_captions_drawn_per_visit_reproducibly(synth_data):
    """Each video has two phrasings: training draws one per (seed, epoch, index)."""
    cfg = data_cfg(synth_data, num_workers=0)

    def caption_ids(loader):
        out = {}
        for batch in loader:
            for ids, index in zip(batch["text_ids"], batch["index"].tolist()):
                out[index] = tuple(ids.tolist())
        return out

    loader = build_loader(cfg, "train", CPU, 0, 1, training=True)
    e0, e1 = caption_ids(loader), caption_ids(loader)
    assert e0 == caption_ids(build_loader(cfg, "train", CPU, 0, 1, training=True))
    assert e0 != e1  # a new epoch draws again
    phrasings = {i: {tuple(x) for x in (e0[i], e1[i])} for i in e0}
    assert any(len(p) == 2 for p in phrasings.values())
    val = caption_ids(build_loader(cfg, "val", CPU, 0, 1, training=False))
    tok = build_loader(cfg, "val", CPU, 0, 1, training=False).tokenizer
    rows = read_jsonl(synth_data["val"])
    assert [tok.decode(torch.tensor([val[i]]))[0] for i in range(len(rows))] == \
        [r["caption"][0] for r in rows]


def test_garbled_sample_is_replaced_and_counted(synth_data, tmp_path):
    from data_support import garble_sample
    shards = tmp_path / "shards"
    shutil.copytree(synth_data["shards_all"], shards)
    garble_sample(shards, 5)
    cfg = data_cfg(synth_data, train=str(shards), num_workers=1)
    loader = build_loader(cfg, "train", CPU, 0, 1, training=False)
    batches = epoch(loader)
    indices = [i for b in batches for i in b["index"].tolist()]
    assert loader.decode_failures == 1
    assert len(indices) == 16 and 5 not in indices
    assert set(indices) == set(range(16)) - {5}  # the replacement repeats a clip of an
    assert indices.count(3) == 2  # earlier batch (index 3, the last good one before 5)
    epoch(loader)
    assert loader.decode_failures == 2  # cumulative, for logging


def _garbled_copy(synth_data, tmp_path, samples) -> str:
    from data_support import garble_sample
    shards = tmp_path / "shards"
    shutil.copytree(synth_data["shards_all"], shards)
    for sample in samples:
        garble_sample(shards, sample)
    return str(shards)


def test_failures_are_replaced_by_other_batches_clips_never_duplicated(synth_data, tmp_path):
    """Unshuffled batches of 4: [0..3] loses 1 and 2 with no earlier batch in the epoch (the
    first good clips after it stand in, 4 and 5), [8..11] loses 9 and 10 (the last good
    clips before it, newest first: 7 and 6). Every epoch the same; no batch holds a clip
    twice (two positives for one caption)."""
    cfg = data_cfg(synth_data, train=_garbled_copy(synth_data, tmp_path, [1, 2, 9, 10]), batch_size=4)
    loader = build_loader(cfg, "train", CPU, 0, 1, training=False)
    for n in (1, 2):
        batches = [b["index"].tolist() for b in epoch(loader)]
        assert batches == [[0, 4, 5, 3], [4, 5, 6, 7], [8, 7, 6, 11], [12, 13, 14, 15]], batches
        assert loader.decode_failures == 4 * n


def test_resume_replaces_a_failure_exactly_as_the_straight_run(synth_data, tmp_path):
    """The clip a failure is replaced by comes from an earlier batch; a run resumed between
    the two batches decodes it again (state_dict names it) and yields the same batches."""
    cfg = data_cfg(synth_data, num_workers=1)
    order = [i for b in epoch(build_loader(cfg, "train", CPU, 0, 1, training=True))
             for i in b["index"].tolist()]
    bad = order[5]  # in the third batch; the last good clip before it: order[3]
    cfg = data_cfg(synth_data, train=_garbled_copy(synth_data, tmp_path, [bad]), num_workers=1)
    straight = epoch(build_loader(cfg, "train", CPU, 0, 1, training=True))
    assert straight[2]["index"].tolist() == [order[4], order[3]]

    first = build_loader(cfg, "train", CPU, 0, 1, training=True)
    it = iter(first)
    head = [{k: v.clone() for k, v in next(it).items()} for _ in range(2)]
    state = first.state_dict()
    del it, first
    resumed = build_loader(cfg, "train", CPU, 0, 1, training=True)
    resumed.load_state_dict(state)
    tail = epoch(resumed)
    assert len(head) + len(tail) == len(straight)
    for got, want in zip(head + tail, straight):
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert resumed.decode_failures == 1


def test_resume_mid_epoch_gives_exactly_the_rest(synth_data):
    cfg = data_cfg(synth_data, num_workers=2)
    full = build_loader(cfg, "train", CPU, 0, 1, training=True)
    epoch(full)  # epoch 0
    reference_epoch = epoch(full)  # epoch 1: the one we interrupt below
    del full

    first = build_loader(cfg, "train", CPU, 0, 1, training=True)
    epoch(first)
    it = iter(first)
    head = [next(it) for _ in range(3)]
    state = first.state_dict()
    assert state["streaming"]["epoch"] == 1 and state["streaming"]["sample_in_epoch"] == 6
    del it, first

    resumed = build_loader(cfg, "train", CPU, 0, 1, training=True)
    resumed.load_state_dict(state)
    tail = epoch(resumed)
    seen = [i for b in head + tail for i in b["index"].tolist()]
    assert sorted(seen) == list(range(16))  # no repeats, none lost
    assert len(tail) == len(reference_epoch) - 3
    for got, want in zip(head + tail, reference_epoch):  # same batches, same augmentation
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_state_at_end_of_epoch_resumes_at_next_epoch(synth_data):
    cfg = data_cfg(synth_data, num_workers=0)
    loader = build_loader(cfg, "train", CPU, 0, 1, training=True)
    epoch(loader)
    state = loader.state_dict()
    assert (state["streaming"]["epoch"], state["streaming"]["sample_in_epoch"]) == (1, 0)
    fresh = build_loader(cfg, "train", CPU, 0, 1, training=True)
    fresh.load_state_dict(state)
    assert len([i for b in fresh for i in b["index"].tolist()]) == 16


def _crash_holding_shared_memory(cache: str, source: str, report) -> None:
    """A run killed together with its resource tracker (a job step killed as a whole)
    while its dataset is alive: streaming's segments stay behind, still claiming `cache`.
    Sends the segments' prefix through `report`."""
    from multiprocessing import resource_tracker

    from streaming import StreamingDataset
    resource_tracker.register = lambda *args: None  # as if the tracker died with us
    dataset = StreamingDataset(remote=source, local=cache, batch_size=2)
    report.send(f"{dataset._shm_prefix_int:06d}_")
    os._exit(1)


def _expect_reused_local_dir(cache: str, source: str) -> None:
    from streaming import StreamingDataset
    try:
        StreamingDataset(remote=source, local=cache, batch_size=2)
    except ValueError as err:
        os._exit(0 if "Reused local directory" in str(err) else 2)
    os._exit(1)


def test_stale_shared_memory_from_a_crashed_run_is_cleaned(synth_data, tmp_path):
    from longvivit.data.load.reader import cache_dir
    cfg = data_cfg(synth_data, local_cache=str(tmp_path / "cache"), num_workers=0)
    cache = cache_dir(cfg.train, cfg.local_cache)
    ctx = mp.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_crash_holding_shared_memory, args=(cache, cfg.train, send))
    child.start()
    prefix = receive.recv() if receive.poll(60) else "none"
    child.join(60)
    # (other jobs on this machine may be making segments right now: look at ours only)
    leaked = {n for n in os.listdir("/dev/shm") if n.startswith(prefix)}
    assert any(name.endswith("_locals") for name in leaked), leaked
    # streaming alone refuses the same remote + cache now (checked in a child: streaming
    # keeps every segment it looked at mapped until exit, which would make it look live)
    check = mp.get_context("fork").Process(target=_expect_reused_local_dir,
                                           args=(cache, cfg.train))
    check.start()
    check.join(60)
    assert check.exitcode == 0

    # A live segment must survive the cleaning, and so must its prefix's file lock;
    # the crashed run's segments and a lock without segments must not.
    live = shared_memory.SharedMemory(name="999999_locals", create=True, size=16)
    # a prefix some of whose segments are in use keeps all of them: a hole (its locals gone,
    # its barrier there) would send streaming's next pick onto a prefix whose locals exist
    unmapped = Path("/dev/shm/999999_barrier")
    unmapped.write_bytes(b"\0" * 16)
    locks = [os.path.join(tempfile.gettempdir(), f"99999{i}_barrier_filelock") for i in (8, 9)]
    try:
        for lock in locks:
            open(lock, "w").close()
        removed = clean_stale_shared_memory()
        assert leaked <= set(removed) and not {"999999_locals", "999999_barrier"} & set(removed)
        assert os.path.exists("/dev/shm/999999_locals") and unmapped.exists()
        assert not os.path.exists(locks[0]) and os.path.exists(locks[1])
    finally:
        live.close()
        live.unlink()
        os.remove(locks[1])
    assert "999999_barrier" in clean_stale_shared_memory() and not unmapped.exists()
    # the same remote + cache now opens
    batch = next(iter(build_loader(cfg, "train", CPU, 0, 1, training=True)))
    assert batch["video"].shape[0] == 2


def test_256_frame_clip_decodes_on_cpu(tmp_path):
    """Over 4 minutes at 1 FPS: all 256 frames through the DALI CPU decoder."""
    from longvivit.data.load.tokenizer import train_tokenizer
    from longvivit.data.prepare.shards import ShardOptions, write_shards
    from longvivit.data.prepare.synth import write_benchmark
    write_benchmark(tmp_path / "b", videos=2, frames=256, size=32, seed=1, val_fraction=0.5,
                    hard_negatives=0)
    write_shards(tmp_path / "b" / "train.jsonl", tmp_path / "s", ShardOptions(size=32),
                 progress=False)
    tok = train_tokenizer([tmp_path / "b" / "train.jsonl"], tmp_path / "t")
    cfg = load_config(DataConfig, dict(train=str(tmp_path / "s"), val=str(tmp_path / "s"),
                                       tokenizer=tok, frames=256, image_size=32, batch_size=1,
                                       num_workers=0))
    batch = next(iter(build_loader(cfg, "train", CPU, 0, 1, training=False)))
    assert batch["video"].shape == (1, 256, 32, 32, 3) and batch["real_frames"].item() == 256
    row = read_jsonl(tmp_path / "b" / "train.jsonl")[0]
    ids = [0, 100, 200, 255]
    ref = frames_at(str(tmp_path / "b" / row["video"]), [float(i) for i in ids])
    score = psnr(batch["video"][0, ids].numpy(), ref)
    print(f"\n256-frame clip: PSNR {score:.1f} dB at frames {ids}")
    assert score >= 30


def test_config_errors_name_the_key(synth_data):
    with pytest.raises(ConfigError, match="sampling"):
        data_cfg(synth_data, sampling="random")
    with pytest.raises(ConfigError, match="text_length"):
        data_cfg(synth_data, text_length=2)
    cfg = data_cfg(synth_data, train=str(synth_data["dir"]))
    with pytest.raises(FileNotFoundError, match="index.json"):
        build_loader(cfg, "train", CPU, 0, 1, training=True)


@pytest.mark.parametrize("env,expected", [
    ({"LOCAL_SIZE": "2"}, ("1", "2")),  # deepspeed launcher: RANK/LOCAL_RANK, no LOCAL_WORLD_SIZE
    ({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, ("1", "2")),  # torchrun
    ({"SLURM_LOCALID": "1", "SLURM_TASKS_PER_NODE": "2(x2)"}, ("1", "2")),  # srun
    ({"SLURM_LOCALID": "1", "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_TASKS_PER_NODE": "4"}, ("1", "2")),  # srun -n
    ({"SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "2"}, ("1", "2")),  # srun --ntasks-per-node
])
def test_launcher_env_fills_local_world_size_and_restores(monkeypatch, env, expected):
    from longvivit.data.load.reader import launcher_env
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "LOCAL_SIZE",
                "SLURM_LOCALID", "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    before = dict(os.environ)
    with launcher_env(3, 4):
        got = (os.environ["LOCAL_RANK"], os.environ["LOCAL_WORLD_SIZE"])
        assert (os.environ["RANK"], os.environ["WORLD_SIZE"]) == ("3", "4")
    assert got == expected and dict(os.environ) == before
    with pytest.raises(ValueError, match="not a multiple"):
        with launcher_env(0, 3):
            pass


def test_frame_selection_and_crop_boxes():
    from longvivit.data.load.decode import crop_box, select_frames
    idx, real = select_frames(16, 8, "uniform", None)
    assert idx.tolist() == [1, 3, 5, 7, 9, 11, 13, 15] and real == 8
    assert select_frames(16, 8, "fps", None)[0].tolist() == list(range(4, 12))
    rng = np.random.default_rng(0)
    starts = {int(select_frames(16, 8, "fps", rng)[0][0]) for _ in range(50)}
    assert starts <= set(range(9)) and len(starts) > 4
    assert select_frames(5, 8, "uniform", None)[0].tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    assert select_frames(5, 8, "fps", rng)[1] == 5
    start, end = crop_box(64, 48, None, flip=False)  # landscape: centred 48x48, (y, x)
    assert start.tolist() == [0, 8] and end.tolist() == [48, 56]
    start, end = crop_box(48, 64, None, flip=True)  # portrait, mirrored: x runs backwards
    assert start.tolist() == [8, 48] and end.tolist() == [56, 0]
