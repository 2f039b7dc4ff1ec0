"""No silent NaN runs: a step whose loss or gradient norm is not finite is skipped, on
every rank, and max_nonfinite_steps of them in a row stop the run (exit 3) with no
checkpoint of them.

The fault nan_loss (tests/hooks_support.py) makes a rank's loss NaN in value while its gradients stay finite,
so DeepSpeed's own check of the gradient norm cannot see it: only the trainer's check of
the loss (run.nan_grads_if_nonfinite) keeps such a step from being applied. Two runs of the
demo's local form on 2 ranks through the deepspeed launcher:

- one NaN step on rank 1 (grad_accum 2): the run finishes; the checkpoints of the steps
  before and after it hold the same fp32 weights, optimizer state and LR schedule on both
  ranks (compared exactly), while the step before it did change the weights; metrics.jsonl
  and TensorBoard count it.
- two in a row with max_nonfinite_steps=2 (bf16, whole_batch accumulation): the run stops
  at the second with exit 3 and a line naming the steps, the checkpoint due at that step is
  not written, and running it again resumes from the one before, replays the same batches
  and finishes.
"""
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from longvivit.config import ConfigError
from longvivit.train.step import NonFiniteStop, nan_grads_if_nonfinite, nonfinite_since
from longvivit.train.trainer import EXIT_NONFINITE

from train_support import CONFIGS, Launch, events, step_lines


def command(tmp_path: Path, *overrides: str) -> tuple:
    return (CONFIGS / "demo.yaml", "local=true", f"local_dir={tmp_path}", "data.source=synthetic",
            "log_every=1", *overrides)


def tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested dict/list, by its path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else []
    return {k: v for key, value in items for k, v in tensors(value, f"{prefix}/{key}").items()}


def rank_files(tag: Path, rank: int) -> tuple[dict, dict]:
    load = lambda kind: torch.load(tag / f"zero_pp_rank_{rank}_mp_rank_00_{kind}_states.pt",  # noqa: E731
                                   weights_only=False, map_location="cpu")
    return load("model"), load("optim")


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------- units

def test_a_nan_loss_gets_nan_gradients_and_a_finite_one_is_untouched():
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    (nan_grads_if_nonfinite((w * 3).sum())).backward()
    assert torch.equal(w.grad, torch.tensor([3.0, 3.0]))
    w.grad = None
    loss = (w * 3).sum() + float("nan")  # NaN in value, finite gradient
    nan_grads_if_nonfinite(loss).backward()
    assert torch.isnan(w.grad).all()


def fake_run(limit: int, precision: str = "fp32", step: int = 5):
    return SimpleNamespace(state=SimpleNamespace(step=step),
                           cfg=SimpleNamespace(max_nonfinite_steps=limit, precision=precision))


def test_nonfinite_steps_are_counted_in_a_row_and_stop_at_the_limit():
    nan = float("nan")
    assert nonfinite_since(fake_run(3), {"skipped": False}, 1.0, 4) == 0  # a finite step ends the row
    assert nonfinite_since(fake_run(3), {"skipped": True}, nan, 0) == 5
    assert nonfinite_since(fake_run(3), {"skipped": True}, 1.0, 4) == 4  # the gradient norm alone
    with pytest.raises(NonFiniteStop, match=r"^steps 3-5: 3 non-finite steps in a row \(max_nonfinite_steps=3"):
        nonfinite_since(fake_run(3), {"skipped": True}, nan, 3)
    assert nonfinite_since(fake_run(0), {"skipped": True}, nan, 1) == 1  # 0: never stop
    # fp16: a skip with a finite loss is the loss scaler's overflow, not a non-finite step
    assert nonfinite_since(fake_run(1, "fp16"), {"skipped": True}, 1.0, 0) == 0
    with pytest.raises(NonFiniteStop, match=r"^step 5: .*DeepSpeed applied"):  # a NaN loss it did not skip
        nonfinite_since(fake_run(0), {"skipped": False}, nan, 0)


def test_an_update_that_made_parameters_nonfinite_stops_at_once():
    with pytest.raises(NonFiniteStop, match=r"^step 5: 1 non-finite step \(its update made parameters non-finite"):
        nonfinite_since(fake_run(3), {"skipped": False, "params_nonfinite": True}, 1.0, 0)


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_optimizer_numbers_must_be_finite(value):
    from longvivit.train.config import load_run_config

    for key in ("lr", "eps", "weight_decay", "clip"):
        with pytest.raises(ConfigError, match=rf"^optim\.{key}: {value} is not a finite number$"):
            load_run_config(CONFIGS / "demo.yaml", overrides=[f"optim.{key}={value}"])


def test_max_nonfinite_steps_must_not_be_negative():
    from longvivit.train.config import load_run_config

    with pytest.raises(ConfigError, match=r"^max_nonfinite_steps: -1 must be >= 0"):
        load_run_config(CONFIGS / "demo.yaml", overrides=["max_nonfinite_steps=-1"])


# ---------------------------------------------------------------------------- runs

@pytest.mark.multiproc
def test_one_nan_step_on_one_rank_is_skipped_on_both_and_the_run_finishes(tmp_path):
    from longvivit.train.export import consolidated_state_dict

    out, root = tmp_path / "train", tmp_path / "train" / "checkpoints"
    with Launch(*command(tmp_path, "steps=3", "grad_accum=2", "checkpoint_every=1", "keep_last=3"),
                log=tmp_path / "log", faults="nan_loss:3:1") as job:
        rc = job.wait(300)
        output = job.output
    assert rc == 0, output[-4000:]
    assert len(events(output, "done")) == 1 and (out / "summary.json").is_file()
    lines = step_lines(out)
    assert [(x["step"], x["skipped"], math.isfinite(x["loss"])) for x in lines] == [
        (1, False, True), (2, False, True), (3, True, False)]

    tags = [root / f"step{s:08d}" for s in (1, 2, 3)]  # 3: the final checkpoint, after the skipped step
    weights = [consolidated_state_dict(t) for t in tags]
    assert not same(weights[0], weights[1])  # a finite step changes the weights
    assert same(weights[1], weights[2])  # the skipped one did not
    for rank in (0, 1):
        (model2, optim2), (model3, optim3) = rank_files(tags[1], rank), rank_files(tags[2], rank)
        assert (model2["skipped_steps"], model3["skipped_steps"]) == (0, 1), rank
        assert model3["global_steps"] == 3
        # Adam's moments and step count and this rank's fp32 partition: untouched, exactly
        state2, state3 = tensors(optim2["optimizer_state_dict"]), tensors(optim3["optimizer_state_dict"])
        assert len(state2) > 2 and same(state2, state3), rank
        # the LR schedule follows applied updates: it did not advance either
        assert model2["lr_scheduler"] == model3["lr_scheduler"], rank

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/skipped_steps")] == [(1, 0), (2, 0), (3, 1)]


@pytest.mark.multiproc
def test_nonfinite_steps_in_a_row_stop_the_run_before_its_next_checkpoint(tmp_path):
    out, root = tmp_path / "train", tmp_path / "train" / "checkpoints"
    args = command(tmp_path, "steps=6", "grad_accum=2", "grad_accum_loss=whole_batch", "checkpoint_every=2",
                   "max_nonfinite_steps=2", "precision=bf16")
    with Launch(*args, log=tmp_path / "first.log", faults="nan_loss:3-4:1") as job:
        rc = job.wait(300)
        output = job.output
    good = root / "step00000002"
    assert rc == EXIT_NONFINITE == 3, output[-4000:]
    stops = events(output, "nonfinite")
    assert sorted((s["rank"], s["first"], s["step"], s["checkpoint"]) for s in stops) == [
        (0, 3, 4, str(good)), (1, 3, 4, str(good))], stops
    message = [x for x in output.splitlines() if x.startswith("longvivit train: ")]
    assert message == [f"longvivit train: steps 3-4: 2 non-finite steps in a row (max_nonfinite_steps=2; each "
                       f"was skipped): stopped at step 4 without saving; the newest checkpoint, {good}, is from "
                       f"before them (exit 3)"], output[-4000:]
    assert [(x["step"], x["skipped"]) for x in step_lines(out)] == [(1, False), (2, False), (3, True), (4, True)]
    # the checkpoint due at step 4 was not written: the newest complete one is from before the NaNs
    assert sorted(p.name for p in root.glob("step*")) == ["step00000002"] and (good / "complete").is_file()
    assert (root / "latest").read_text() == good.name and not (out / "summary.json").exists()

    with Launch(*args, log=tmp_path / "second.log") as job:
        rc = job.wait(300)
        starts, output = job.events("start"), job.output
    assert rc == 0, output[-4000:]
    assert [s["resumed_from"] for s in starts] == [str(good)] * 2, starts
    first, rerun = step_lines(out)[:4], step_lines(out)[4:]
    assert [(x["step"], x["skipped"]) for x in rerun] == [(s, False) for s in range(3, 7)]
    assert all(math.isfinite(x["loss"]) for x in rerun)
    assert [x["indices"] for x in rerun[:2]] == [x["indices"] for x in first[2:]]  # the same batches again


@pytest.mark.multiproc
def test_an_update_to_nonfinite_weights_stops_the_run_with_no_checkpoint_of_it(tmp_path):
    """optim.lr=1e39 is a finite number, but not in float32: step 1's gradients are finite,
    so DeepSpeed applies it, and the weights become inf/NaN. Before, the run went on (step 2
    skipped as NaN) and its final checkpoint evaluated at R@1 100%; now step 1 stops it
    (exit 3), nothing is saved, and nothing is left to evaluate."""
    out = tmp_path / "train"
    args = command(tmp_path, "steps=4", "checkpoint_every=1", "optim.lr=1e39", "optim.warmup_steps=0")
    with Launch(*args, log=tmp_path / "log") as job:
        rc = job.wait(300)
        output = job.output
    assert rc == EXIT_NONFINITE, output[-4000:]
    assert sorted((s["rank"], s["step"], s["checkpoint"]) for s in events(output, "nonfinite")) == [
        (0, 1, None), (1, 1, None)]
    message = [x for x in output.splitlines() if x.startswith("longvivit train: ")]
    assert message == ["longvivit train: step 1: 1 non-finite step (its update made parameters non-finite, which "
                       "cannot be undone; is optim.lr too large for the precision?): stopped at step 1 without "
                       "saving; no checkpoint was written (exit 3)"], output[-4000:]
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").glob("step*"))
