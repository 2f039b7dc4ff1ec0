"""longvivit.events: the JSON event lines a run prints, and reading them back from a launch's
output, where the ranks share one pipe."""
import ast
import json
import os
import subprocess
import sys

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


def test_two_events_on_one_line_are_both_read():
    # print under `python -u` writes a line and its newline apart: two ranks' events can meet
    zero, one = ({"event": "start", **start(r)} for r in (0, 1))
    output = json.dumps(zero) + json.dumps(one) + "\n\n" + json.dumps(zero) + "warning text" + json.dumps(one)
    assert events.read(output, "start") == [zero, one, zero, one]


def test_an_event_goes_out_in_one_write_under_python_u():
    """The deepspeed launcher runs ranks with `python -u` (unbuffered): emit must hand the
    line and its newline to the pipe in one write, or ranks' lines interleave. Counted by
    wrapping the raw stdout's write."""
    code = ("import io, sys\n"
            "raw = sys.stdout.buffer.raw if hasattr(sys.stdout.buffer, 'raw') else sys.stdout.buffer\n"
            "writes = []\n"
            "class Counting(io.RawIOBase):\n"
            "    def writable(self): return True\n"
            "    def write(self, b): writes.append(bytes(b)); return raw.write(b)\n"
            "sys.stdout = io.TextIOWrapper(Counting(), write_through=True)\n"
            "from longvivit import events\n"
            f"events.emit('start', **{start(3)!r})\n"
            "sys.stderr.write(repr(writes))\n")
    done = subprocess.run([sys.executable, "-u", "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    writes = ast.literal_eval(done.stderr.strip().splitlines()[-1])  # the bytes written, repr'd above
    assert len(writes) == 1 and writes[0].endswith(b"\n"), writes
    assert events.read(done.stdout, "start") == [{"event": "start", **start(3)}]
