"""Checkpoint bookkeeping without an engine: completeness, pruning, architecture refusal, RNG."""
import json
import random

import numpy as np
import pytest
import torch

from longvivit.model.config import ConfigError
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
