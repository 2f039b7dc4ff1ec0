"""The JSON event lines a run prints on stdout for programs to read (tests, SLURM scripts,
log scrapers): one object per line, {"event": NAME, ...}, flushed as it happens. `emit`
is the only writer and checks each event against SCHEMA; `read` is how a reader finds them.

    start      every rank, once set up: where it runs, what it holds, what it resumed
    rescale    rank 0: resuming a checkpoint of another world size, what changed and was kept
    finished   rank 0: the run was already trained to `steps`; nothing done
    stop       every rank: stopped on a signal after a checkpoint (exit 75: requeue me)
    nonfinite  every rank: non-finite steps ended the run (exit 3)
    hang       a rank whose phase outlived its limit (exit 4)
    done       rank 0: the run finished; the summary (also OUT/summary.json)

A field's type is one of the Python types listed; None is allowed where listed. Fields
beyond the schema are refused, so a reader can rely on the schema as documented here.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Iterator

OPT_STR, OPT_INT, OPT_DICT = (str, type(None)), (int, type(None)), (dict, type(None))
NUMBER = (int, float)
SCHEMA: dict[str, dict[str, Any]] = {
    "start": {"rank": int, "pid": int, "world_size": int, "backend": OPT_STR, "device": str,
              "params_local": int, "params_total": int, "step": int, "resumed_from": OPT_STR,
              "optimizer_state": OPT_DICT, "peak_tflops_per_device": NUMBER},
    "rescale": {"checkpoint": str, "step": int, "world_size": list, "batch_per_rank": list, "grad_accum": list,
                "global_batch": list, "kept": str, "message": str},
    "finished": {"step": int, "checkpoint": str, "summary": OPT_STR, "message": str},
    "stop": {"rank": int, "step": int, "checkpoint": str, "signal": OPT_INT, "exit": int},
    "nonfinite": {"rank": int, "first": int, "step": int, "checkpoint": OPT_STR, "exit": int},
    "hang": {"rank": int, "pid": int, "phase": str, "step": OPT_INT, "seconds": NUMBER, "limit": NUMBER,
             "waiting": OPT_STR, "exit": int},
    "done": {"steps": int, "seconds": NUMBER, "samples_per_s": NUMBER, "checkpoint": str, "checkpoints": str,
             "tensorboard": str, "eval": dict},
}


def check(name: str, fields: dict) -> None:
    """ValueError naming what in `fields` does not fit event `name`'s schema."""
    if name not in SCHEMA:
        raise ValueError(f"event {name!r}: not one of {', '.join(SCHEMA)}")
    schema = SCHEMA[name]
    if missing := sorted(set(schema) - set(fields)):
        raise ValueError(f"event {name!r}: missing {', '.join(missing)}")
    if extra := sorted(set(fields) - set(schema)):
        raise ValueError(f"event {name!r}: fields outside its schema: {', '.join(extra)}")
    for key, kind in schema.items():
        value = fields[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"event {name!r}: {key}={value!r} is not {kind}")


def emit(name: str, **fields) -> dict:
    """Print event `name` as one JSON line (checked against SCHEMA); returns it. The line and
    its newline go out in one write: under the deepspeed launcher's `python -u`, print would
    write them separately, and another rank's event could land between the two."""
    check(name, fields)
    line = {"event": name, **fields}
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
    return line


def parse(output: str) -> Iterator[dict]:
    """Every event in a run's output, in order (other text skipped). The ranks of a launch
    share one pipe, and a process that writes a line in pieces (print under `python -u`, as
    emit did before it wrote once; a warning) lets another's text into it, so events are
    looked for anywhere in a line, several to a line."""
    decoder = json.JSONDecoder()
    for line in output.splitlines():
        at = line.find('{"event": ')
        while at >= 0:
            try:
                event, end = decoder.raw_decode(line, at)
            except json.JSONDecodeError:  # cut short by a kill, or by another process's text
                at = line.find('{"event": ', at + 1)
                continue
            if isinstance(event, dict):
                yield event
            at = line.find('{"event": ', end)


def read(output: str, name: str) -> list[dict]:
    """The `name` events in a run's output."""
    return [e for e in parse(output) if e["event"] == name]


__all__ = ["SCHEMA", "check", "emit", "parse", "read"]
