"""The trainer's hooks (longvivit/train/hooks.py) and the faults the tests inject through them
(tests/hooks_support.py).

Units: a fault spec NAME:STEPS[:RANK] fires at its step (or steps FIRST-LAST), on every rank
or on the one named (kill_during_save: rank 0 unless one is named), and nowhere else; each
fault does what it says from the hook it lives in (a signal, a wait, an exception, a NaN).

A run: the demo's local form in one plain process through tests/scripts/train_with_hooks.py
with every hook call recorded: each hook fires at its documented moment, in order (the
phases, the step's start, each micro-batch's loss, the checkpoint's files before it is
complete, the eval with its embeddings, the step's end), and the run is the run `longvivit
train` makes. The faults' effects on real multi-rank runs are the other tests' subject:
test_train_watchdog.py (stall_PHASE, raise_in_step), test_train_signals.py and
test_slurm.py (hold_for_signal, stop_in_step), test_train_nan.py (nan_loss),
test_train_eval_resume.py (kill_during_eval), test_train_zero3.py, test_train_s3.py and
test_train_images.py (kill_during_save), test_train_elastic.py (kill_during_conversion).
"""
import dataclasses
import json
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from longvivit.config import ConfigError
from longvivit.eval.evaluate import Embeddings
from longvivit.train.hooks import TrainerHooks

import hooks_support
from hooks_support import Fault, FaultHooks, InjectedFault, parse_faults
from train_support import CONFIGS, ROOT, WITH_HOOKS, step_lines


class Stop:
    def __init__(self, requested):
        self._requested = requested

    @property
    def requested(self) -> bool:
        return self._requested()


def rank(r: int, stop_requested=lambda: False):
    """What the fault hooks read of a trainer: its rank, its stop request, its out."""
    return SimpleNamespace(d=SimpleNamespace(rank=r, is_main=r == 0), stop=Stop(stop_requested),
                           cfg=SimpleNamespace(out="/nonexistent"))


def fired(spec: str, name: str, steps=range(1, 7), ranks=(0, 1)) -> list[tuple[int, int]]:
    hooks = FaultHooks(spec)
    return [(s, r) for s in steps for r in ranks if hooks.fires(name, s, rank(r))]


def test_a_fault_fires_at_its_steps_on_every_rank_or_the_named_one():
    assert fired("stop_in_step:3", "stop_in_step") == [(3, 0), (3, 1)]
    assert fired("stop_in_step:3", "kill_during_save") == []
    assert fired("hold_for_signal:3:1", "hold_for_signal") == [(3, 1)]
    assert fired("nan_loss:3-4:1", "nan_loss") == [(3, 1), (4, 1)]  # a range of steps
    assert fired("kill_during_save:3", "kill_during_save") == [(3, 0)]  # rank 0's files, as before
    assert fired("kill_during_save:3:1", "kill_during_save") == [(3, 1)]
    assert fired("", "stop_in_step") == []
    both = "raise_in_step:2:1,stall_step:2:0"  # several at once
    assert fired(both, "raise_in_step") == [(2, 1)] and fired(both, "stall_step") == [(2, 0)]
    assert parse_faults(both) == [Fault("raise_in_step", 2, 2, 1), Fault("stall_step", 2, 2, 0)]
    with pytest.raises(ValueError, match="expected NAME:STEP"):
        parse_faults("stop_in_step")


def test_each_fault_acts_from_its_hook(monkeypatch):
    sent = []
    monkeypatch.setattr(hooks_support.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    hooks = FaultHooks("stop_in_step:2,kill_during_eval:4:1,kill_during_save:5,kill_during_conversion:6")
    hooks.on_step_end(rank(0), 1)
    hooks.on_step_end(rank(0), 2)
    hooks.on_evaluate(rank(0), 4, {"pairs": 1}, SimpleNamespace(index=[0]))
    hooks.on_evaluate(rank(1), 4, {"pairs": 1}, SimpleNamespace(index=[0]))
    hooks.on_checkpoint_written(rank(1), 5)
    hooks.on_checkpoint_written(rank(0), 5)
    hooks.on_checkpoint_converted(rank(0), 6)
    me = os.getpid()
    assert sent == [(me, signal.SIGTERM), (me, signal.SIGKILL), (me, signal.SIGKILL), (me, signal.SIGKILL)]

    polls = []
    FaultHooks("hold_for_signal:2:0").on_step_end(rank(0, lambda: polls.append(1) or len(polls) >= 3), 2)
    assert len(polls) == 3  # held until the stop request came

    hooks = FaultHooks("raise_in_step:2:1,nan_loss:3")
    hooks.on_step_start(rank(0), 2)  # not on rank 0: nothing
    with pytest.raises(InjectedFault, match=r"^fault point raise_in_step at step 2 on rank 1$"):
        hooks.on_step_start(rank(1), 2)
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    loss = hooks.on_before_backward(rank(0), 3, 0, (w * 3).sum())
    loss.backward()
    assert torch.isnan(loss) and torch.equal(w.grad, torch.tensor([3.0, 3.0]))  # NaN in value only
    assert hooks.on_before_backward(rank(0), 2, 0, torch.tensor(1.5)) == 1.5


def test_hooks_do_nothing_by_default():
    hooks, loss = TrainerHooks(), torch.tensor(2.0)
    assert hooks.on_before_backward(None, 1, 0, loss) is loss
    assert hooks.on_step_start(None, 1) is None and hooks.on_phase_start(None, "setup", None) is None


def test_a_stored_run_config_with_the_retired_save_eval_embeddings_still_loads(tmp_path):
    """Checkpoints written before the key was retired hold it in run_config.yaml: they still
    load (resume, `longvivit eval`, export read that file), and the key does nothing; named
    on the command line it is refused with the reason."""
    from longvivit.config import load_config, to_yaml
    from longvivit.train.config import RunConfig, load_run_config

    assert "save_eval_embeddings" not in {f.name for f in dataclasses.fields(RunConfig)}
    old = to_yaml(load_run_config(CONFIGS / "demo.yaml")).replace("progress: true\n",
                                                                  "progress: true\nsave_eval_embeddings: true\n")
    assert "save_eval_embeddings: true" in old
    stored = tmp_path / "run_config.yaml"
    stored.write_text(old)
    assert load_run_config(stored) == load_run_config(CONFIGS / "demo.yaml")
    current = tmp_path / "current.yaml"
    current.write_text(old.replace("save_eval_embeddings: true\n", ""))
    assert load_config(RunConfig, stored) == load_config(RunConfig, current)  # as eval and export read it
    with pytest.raises(ConfigError, match=r"^save_eval_embeddings: retired: .*on_evaluate"):
        load_run_config(CONFIGS / "demo.yaml", overrides=["save_eval_embeddings=true"])


def test_each_hook_fires_at_its_moment_of_a_real_run(tmp_path):
    """2 steps of grad_accum 2, a checkpoint and an eval after each (the last ones from
    finish), in one plain process, every hook call recorded in order."""
    record, out = tmp_path / "hooks.jsonl", tmp_path / "run"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT"):  # one plain process
        env.pop(name, None)
    proc = subprocess.run([sys.executable, str(WITH_HOOKS), "--record", str(record), "--eval-embeddings",
                           str(tmp_path / "emb.safetensors"), "demo.yaml", "local=true", f"local_dir={tmp_path}",
                           "data.source=synthetic", "steps=2", "grad_accum=2", "checkpoint_every=1", "eval_every=1",
                           "eval_max_batches=1", "eval_gallery=0", "progress=false", f"out={out}"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    calls = [json.loads(x) for x in record.read_text().splitlines()]
    assert {c["rank"] for c in calls} == {0}
    assert calls[0] == {"hook": "phase", "rank": 0, "phase": "setup", "step": None}

    def at(c):
        return c["hook"], c.get("phase"), c["step"], c.get("micro")

    shown = [at(c) for c in calls if c["hook"] != "phase" or c["phase"] in ("step", "checkpoint", "eval")]
    assert shown == [
        ("phase", "step", 1, None), ("step_start", None, 1, None),
        ("before_backward", None, 1, 0), ("before_backward", None, 1, 1),
        ("phase", "checkpoint", 1, None), ("checkpoint_written", None, 1, None),
        ("phase", "eval", 1, None), ("evaluate", None, 1, None),
        ("step_end", None, 1, None),
        ("phase", "step", 2, None), ("step_start", None, 2, None),
        ("before_backward", None, 2, 0), ("before_backward", None, 2, 1),
        ("step_end", None, 2, None),  # the final step: finish() saves and evaluates after it
        ("phase", "checkpoint", 2, None), ("checkpoint_written", None, 2, None),
        ("phase", "eval", 2, None), ("evaluate", None, 2, None)], shown
    # each step's batches are waited for in phase data, within the step
    data = [c["step"] for c in calls if c["hook"] == "phase" and c["phase"] == "data"]
    assert data.count(1) >= 2 and data.count(2) >= 2
    # the checkpoint's files were on disk and it was not complete yet; it is now
    written = [c for c in calls if c["hook"] == "checkpoint_written"]
    assert [c["complete"] for c in written] == [False, False]
    assert (out / "checkpoints" / "step00000002" / "complete").is_file()
    # the eval hook had the metrics and embeddings that were then logged
    final = [c for c in calls if c["hook"] == "evaluate"][-1]
    assert final["pairs"] == json.loads((out / "summary.json").read_text())["eval"]["pairs"]
    emb, _ = Embeddings.load(tmp_path / "emb.safetensors")  # rank 0 saved them from the hook
    assert len(emb.index) == final["clips"] > 0
    assert [x["step"] for x in step_lines(out)] == [1, 2]
