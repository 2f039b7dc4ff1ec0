"""Checkpoints: completeness, pruning, architecture refusal, RNG, named parts (with a stand-in
engine, then a real one on one gloo rank), and every rank resuming what rank 0 chose."""
import json
import os
import random
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from longvivit.config import ConfigError
from longvivit.distributed.collectives import free_port
from longvivit.train import checkpoint as ckpt

DEMO = Path(__file__).resolve().parent.parent / "longvivit" / "configs" / "demo.yaml"


def _tag(root, step, complete=True, model=None, world=2):
    d = root / ckpt.tag_for(step)
    d.mkdir(parents=True)
    (d / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"x")
    if model is not None:
        (d / ckpt.CONFIG_FILE).write_text(json.dumps({"model": model}))  # JSON is YAML
    if complete:
        (d / ckpt.MARKER).write_text(json.dumps({"step": step, "world_size": world}))
    return d


def test_newest_complete_skips_half_written(tmp_path):
    root = ckpt.ckpt_root(tmp_path)
    _tag(root, 3)
    _tag(root, 6)
    _tag(root, 9, complete=False)  # killed while writing
    assert ckpt.newest_complete(root).name == "step00000006"
    assert ckpt.resume_tag(tmp_path, "auto").name == "step00000006"
    assert ckpt.resume_tag(tmp_path, "never") is None
    assert ckpt.find_checkpoint(tmp_path).name == "step00000006"
    assert ckpt.find_checkpoint(root / "step00000003").name == "step00000003"
    with pytest.raises(FileNotFoundError):
        ckpt.find_checkpoint(root / "step00000009")
    assert [p.name for p in ckpt.remove_incomplete(tmp_path)] == ["step00000009"]
    assert not (root / "step00000009").exists()


def test_prune_keeps_last_k_complete(tmp_path):
    root = ckpt.ckpt_root(tmp_path)
    for s in (1, 2, 3, 4):
        _tag(root, s)
    _tag(root, 5, complete=False)
    ckpt.prune(root, keep_last=2)
    assert [p.name for p in ckpt.list_tags(root)] == ["step00000003", "step00000004"]


def test_resume_refuses_other_architecture(tmp_path):
    model = {"embed_dim": 64, "preset": "tiny", "video": {"width": 64, "depth": 2, "mask_ratio": 0.0},
             "text": {"width": 64}}
    d = _tag(ckpt.ckpt_root(tmp_path), 4, model=model, world=2)
    same_but_masked = {**model, "preset": "x", "video": {**model["video"], "mask_ratio": 0.75}}
    ckpt.check_compatible(d, same_but_masked)  # training knobs may change
    # how padded batches run is no architecture, and a checkpoint from before the key resumes
    ckpt.check_compatible(d, {**model, "video": {**model["video"], "packing": "packed"}})
    wider = {**model, "video": {**model["video"], "width": 96}}
    with pytest.raises(ConfigError, match=r"^model\.video\.width: .*64.*96"):
        ckpt.check_compatible(d, wider)
    assert ckpt.saved_world_size(d) == 2  # another world size resumes (tests/test_train_elastic.py)


def test_rng_roundtrip():
    state = ckpt.RNGState().state_dict()
    a = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.RNGState().load_state_dict(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


class _Engine:
    """What checkpoint.save and load need of a DeepSpeed engine; records what the tag held
    when DeepSpeed was asked to write into it."""
    global_rank, world_size = 0, 1

    def __init__(self):
        self.found = []

    def save_checkpoint(self, root, tag, client_state, save_latest):
        tag_dir = Path(root) / tag
        self.found.append(sorted(p.name for p in tag_dir.iterdir()) if tag_dir.exists() else None)
        tag_dir.mkdir(parents=True, exist_ok=True)
        (tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"new")

    def load_checkpoint(self, root, tag, load_optimizer_states, load_lr_scheduler_states):
        return str(Path(root) / tag), {}


class _Loader:
    def state_dict(self):
        return {"position": 7}


class _Counter:
    """A part checkpoint.py has never heard of (say, images seen by a second loader)."""

    def __init__(self, count: int = 0):
        self.count = count

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]


def test_save_never_writes_into_a_complete_tag(tmp_path):
    """A complete tag of the same step left by another run in this directory (resume=never)
    is removed, marker first, before a byte is written: a kill mid-save then leaves an
    incomplete tag, never a complete marker over half-written files."""
    root = ckpt.ckpt_root(tmp_path)
    stale = _tag(root, 4, world=2)
    (stale / "rank00001.pt").write_bytes(b"from a 2-rank run")
    engine = _Engine()
    tag = ckpt.save(engine, tmp_path, 4, {"loader": _Loader()}, "model: {}\n", keep_last=2)
    assert engine.found == [None]
    assert ckpt.is_complete(tag) and ckpt.tag_step(tag) == 4
    assert sorted(p.name for p in tag.iterdir()) == sorted([ckpt.CONFIG_FILE, ckpt.MARKER, "rank00000.pt",
                                                            "zero_pp_rank_0_mp_rank_00_model_states.pt"])
    assert torch.load(tag / "rank00000.pt", weights_only=False)["loader"] == {"position": 7}
    assert (root / "latest").read_text() == tag.name


def test_resume_from_a_path_without_a_checkpoint_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^resume: .*no complete checkpoint"):
        ckpt.resume_tag(tmp_path, str(tmp_path / "nothing"))


def test_a_part_registered_by_the_caller_comes_back(tmp_path):
    from longvivit.train.trainer import TrainState

    saved_parts = {"train": TrainState(step=5), "images": _Counter(41), "rng": ckpt.RNGState()}
    tag = ckpt.save(_Engine(), tmp_path, 5, saved_parts, "model: {}\n", keep_last=1)
    expected = torch.rand(3)  # the draw the saved generator makes next
    fresh = {"train": TrainState(), "images": _Counter(), "rng": ckpt.RNGState()}
    ckpt.load(_Engine(), tag, fresh)
    assert fresh["train"].step == 5 and fresh["images"].count == 41
    assert torch.equal(torch.rand(3), expected)
    with pytest.raises(RuntimeError, match=r"no saved state for videos .*it holds train, images, rng"):
        ckpt.load(_Engine(), tag, {**fresh, "videos": _Counter()})


def _engine_roundtrip(rank: int, port: int, out: str, results) -> None:
    """Save a trained tiny ZeRO-3 engine with a counter part, load both into fresh ones."""
    os.environ.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    import deepspeed

    from longvivit.config import to_yaml
    from longvivit.distributed import collectives as dist
    from longvivit.model import build_model
    from longvivit.train.config import load_run_config, resolve_ds_config
    from longvivit.train.engine import build_engine

    d = dist.DistEnv(0, 1, 0, 1, "127.0.0.1", port)
    dist.setup_env(d)
    dist.bind_device(d)
    dist.init_process_group(timedelta(seconds=120))
    try:
        cfg = load_run_config(DEMO, overrides=["model.video.frames=4", "data.batch_size=2"])

        def engine(seed: int):
            torch.manual_seed(seed)
            return build_engine(build_model(cfg.model), cfg, resolve_ds_config(cfg, 1))

        def weights(e) -> dict:
            with deepspeed.zero.GatheredParameters(list(e.module.parameters())):
                return {n: p.detach().clone() for n, p in e.module.named_parameters()}

        trained = engine(0)
        v, t = cfg.model.video, cfg.model.text
        loss, _ = trained(torch.randint(0, 256, (2, v.frames, v.image_size, v.image_size, 3), dtype=torch.uint8),
                          torch.randint(4, t.vocab_size, (2, 8)), torch.ones(2, 8, dtype=torch.bool))
        trained.backward(loss)
        trained.step()
        tag = ckpt.save(trained, out, 1, {"images": _Counter(7)}, to_yaml(cfg), keep_last=1)
        fresh, counter = engine(1), _Counter()
        untouched = weights(fresh)
        ckpt.load(fresh, tag, {"images": counter})
        before, after = weights(trained), weights(fresh)
        results["count"] = counter.count
        results["equal"] = all(torch.equal(before[n], after[n]) for n in before)
        results["differed"] = any(not torch.equal(before[n], untouched[n]) for n in before)
    finally:
        dist.shutdown(d)


@pytest.mark.multiproc
def test_a_real_engine_and_a_caller_part_round_trip(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_engine_roundtrip, args=(free_port(), str(tmp_path), results), nprocs=1, join=True)
    assert results["count"] == 7
    assert results["differed"] and results["equal"]  # the fresh engine started elsewhere and came back


def _views(rank: int, port: int, root: str, results) -> None:
    """Each rank looks at its own copy of `out`: rank 1's lags behind rank 0's."""
    import torch.distributed as tdist

    from longvivit.distributed import collectives as dist

    dist.bind_device(dist.DistEnv(rank, 2, rank, 2, "127.0.0.1", port))
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        out = Path(root) / f"view{rank}"
        ahead = ckpt.rank0_choice(ckpt.resume_tag(out / "ahead", "auto"))
        empty = ckpt.rank0_choice(ckpt.resume_tag(out / "empty", "auto"))
        results[rank] = (ahead, empty)
    finally:
        tdist.destroy_process_group()


@pytest.mark.multiproc
def test_every_rank_resumes_what_rank_0_sees(tmp_path):
    """Rank 0 sees steps 4 and 8 complete where rank 1 still sees step 8 half-written; in
    the second directory rank 0 sees nothing and rank 1 a complete step 4. Both ranks take
    rank 0's view: step 8, then a fresh start."""
    for rank, complete in ((0, True), (1, False)):
        ahead = ckpt.ckpt_root(tmp_path / f"view{rank}" / "ahead")
        _tag(ahead, 4)
        _tag(ahead, 8, complete=complete)
    (tmp_path / "view0" / "empty").mkdir()
    _tag(ckpt.ckpt_root(tmp_path / "view1" / "empty"), 4)
    assert ckpt.resume_tag(tmp_path / "view1" / "ahead", "auto").name == "step00000004"  # the views differ
    results = mp.Manager().dict()
    mp.spawn(_views, args=(free_port(), str(tmp_path), results), nprocs=2, join=True)
    chosen = ckpt.ckpt_root(tmp_path / "view0" / "ahead") / "step00000008"
    assert results[0] == results[1] == (chosen, None)
