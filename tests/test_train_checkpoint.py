"""Checkpoint bookkeeping without an engine: completeness, pruning, architecture refusal, RNG."""
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from longvivit.config import ConfigError
from longvivit.train import checkpoint as ckpt


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
    ckpt.check_compatible(d, same_but_masked, world_size=2)  # training knobs may change
    wider = {**model, "video": {**model["video"], "width": 96}}
    with pytest.raises(ConfigError, match=r"^model\.video\.width: .*64.*96"):
        ckpt.check_compatible(d, wider, world_size=2)
    with pytest.raises(ConfigError, match=r"^resume: .*2 ranks.* 1"):
        ckpt.check_compatible(d, model, world_size=1)


def test_rng_roundtrip():
    state = ckpt.rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


class _Engine:
    """What checkpoint.save needs of a DeepSpeed engine; records what the tag held when
    DeepSpeed was asked to write into it."""
    global_rank, world_size = 0, 1

    def __init__(self):
        self.found = []

    def save_checkpoint(self, root, tag, client_state, save_latest):
        tag_dir = Path(root) / tag
        self.found.append(sorted(p.name for p in tag_dir.iterdir()) if tag_dir.exists() else None)
        tag_dir.mkdir(parents=True, exist_ok=True)
        (tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"new")


class _Loader:
    def state_dict(self):
        return {"position": 7}


def test_save_never_writes_into_a_complete_tag(tmp_path):
    """A complete tag of the same step left by another run in this directory (resume=never)
    is removed, marker first, before a byte is written: a kill mid-save then leaves an
    incomplete tag, never a complete marker over half-written files."""
    root = ckpt.ckpt_root(tmp_path)
    stale = _tag(root, 4, world=2)
    (stale / "rank00001.pt").write_bytes(b"from a 2-rank run")
    engine = _Engine()
    tag = ckpt.save(engine, tmp_path, 4, _Loader(), "model: {}\n", keep_last=2)
    assert engine.found == [None]
    assert ckpt.is_complete(tag) and ckpt.tag_step(tag) == 4
    assert sorted(p.name for p in tag.iterdir()) == sorted([ckpt.CONFIG_FILE, ckpt.MARKER, "rank00000.pt",
                                                            "zero_pp_rank_0_mp_rank_00_model_states.pt"])
    assert torch.load(tag / "rank00000.pt", weights_only=False)["loader"] == {"position": 7}
    assert (root / "latest").read_text() == tag.name


def test_resume_from_a_path_without_a_checkpoint_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^resume: .*no complete checkpoint"):
        ckpt.resume_tag(tmp_path, str(tmp_path / "nothing"))
