"""longvivit.events: the JSON event lines a run prints, and reading them back from a launch's
output, where the ranks share one pipe."""
import json

import pytest

from longvivit import events


def start(rank: int) -> dict:
    return {"rank": rank, "pid": 100 + rank, "world_size": 2, "backend": "gloo", "device": "cpu",
            "params_local": 5, "params_total": 10, "step": 0, "resumed_from": None, "optimizer_state": None,
            "peak_tflops_per_device": 1.0}


def test_an_emitted_event_reads_back(capsys):
    line = events.emit("start", **start(0))
    assert events.read(capsys.readouterr().out, "start") == [line]


def test_an_event_after_another_process_unfinished_line_is_still_read():
    # rank 1's event lands behind a warning another rank's stderr had not finished
    zero, one = ({"event": "start", **start(r)} for r in (0, 1))
    output = "\n".join([json.dumps(zero), "[W1207 12:00:00 ProcessGroupGloo.cpp:12] Warning: " + json.dumps(one),
                        "the warning's rest", '{"event": "start", "rank": 2, "pid"'])  # cut short by a kill
    assert events.read(output, "start") == [zero, one]
    assert events.read(output, "stop") == []


def test_an_event_that_does_not_fit_its_schema_is_refused():
    with pytest.raises(ValueError, match="rank"):
        events.emit("start", **{**start(0), "rank": "zero"})
