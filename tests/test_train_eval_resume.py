"""An eval that was due and did not finish runs on resume; metrics.jsonl says which of its
lines a resume superseded.

Units: logging.read_metrics on a hand-written metrics.jsonl (a killed run's later steps and
a cut-off line superseded by a resume line; an eval of the resumed step kept, or dropped
when the resume redoes it).

Runs (the demo's local form on 2 ranks, checkpoint and eval every 2 of 4 steps): killed
(SIGKILL, the fault kill_during_eval of tests/hooks_support.py) while the step-2 eval is under way, the rerun
evaluates step 2 before it trains on; killed in the final eval, the rerun trains nothing,
evaluates step 4 and writes summary.json; a third start finds it finished and writes
nothing. Each eval line and the summary are there once.
"""
import json
from pathlib import Path

import pytest

from longvivit.train.metrics import read_metrics

from train_support import CONFIGS, Launch, events, listing


def write_lines(out: Path, *lines) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))


def test_a_resume_line_supersedes_later_steps_and_a_redone_eval(tmp_path):
    step = lambda n: {"kind": "step", "step": n}  # noqa: E731
    evaluated = {"kind": "eval", "step": 2, "t2v_r1": 10.0}
    write_lines(tmp_path, step(1), step(2), evaluated, step(3), '{"kind": "step", "st',
                {"kind": "resume", "step": 2, "redo_eval": False}, step(3), step(4))
    assert [(x["kind"], x["step"]) for x in read_metrics(tmp_path)] == [
        ("step", 1), ("step", 2), ("eval", 2), ("resume", 2), ("step", 3), ("step", 4)]
    write_lines(tmp_path, step(1), step(2), evaluated, {"kind": "resume", "step": 2, "redo_eval": True},
                {**evaluated, "t2v_r1": 11.0})
    assert [x.get("t2v_r1") for x in read_metrics(tmp_path) if x["kind"] == "eval"] == [11.0]
    assert read_metrics(tmp_path / "none") == []


def command(tmp_path: Path) -> tuple:
    return (CONFIGS / "demo.yaml", "local=true", f"local_dir={tmp_path}", "data.source=synthetic", "steps=4",
            "checkpoint_every=2", "eval_every=2", "eval_max_batches=1", "eval_gallery=0")


def launch(tmp_path: Path, name: str, fault: str = "") -> tuple[int, str]:
    with Launch(*command(tmp_path), log=tmp_path / f"{name}.log", faults=fault) as job:
        return job.wait(400), job.output


def evals(out: Path) -> list[int]:
    return [x["step"] for x in read_metrics(out) if x["kind"] == "eval"]


@pytest.mark.multiproc
# Killed in the final eval (4: the rerun only evaluates and finishes, a third start does nothing)
# was the slowest test of the default suite (197 s in a clean-clone CI log, whose whole run took
# 87 of its 90 minutes): it runs with `make test-all`; killed at 2 runs by default.
@pytest.mark.parametrize("killed_at", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_an_eval_killed_midway_runs_again_on_resume(tmp_path, killed_at):
    out = tmp_path / "train"
    rc, output = launch(tmp_path, "killed", f"kill_during_eval:{killed_at}")
    assert rc != 0, output[-3000:]
    assert evals(out) == ([] if killed_at == 2 else [2]) and not (out / "summary.json").exists()
    tag = out / "checkpoints" / f"step{killed_at:08d}"
    assert (tag / "complete").is_file()  # saved before its eval began

    rc, output = launch(tmp_path, "resumed")
    assert rc == 0, output[-3000:]
    assert [s["resumed_from"] for s in events(output, "start")] == [str(tag)] * 2
    resumes = [x for x in read_metrics(out) if x["kind"] == "resume"]
    assert [(x["step"], x["redo_eval"]) for x in resumes] == [(killed_at, True)]
    assert evals(out) == [2, 4]  # each once, the undone one included
    order = [(x["kind"], x["step"]) for x in read_metrics(out) if x["kind"] in ("resume", "eval", "step")]
    assert order.index(("resume", killed_at)) < order.index(("eval", killed_at))  # evaluated after the resume
    if killed_at == 2:
        assert order.index(("eval", 2)) < order.index(("step", 3))  # before training on
    steps = [x["step"] for x in read_metrics(out) if x["kind"] == "step"]
    assert steps == [1, 2, 3, 4]  # nothing trained twice (the final case trains nothing)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["checkpoint"] == str(out / "checkpoints" / "step00000004")

    before = listing(out)
    rc, output = launch(tmp_path, "again")
    assert rc == 0 and [e["step"] for e in events(output, "finished")] == [4], output[-3000:]
    assert listing(out) == before  # finished: nothing evaluated or written
