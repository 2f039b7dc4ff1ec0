"""Checks every test gets: it leaves the process environment as it found it. A variable a
test (or the code it calls in-process) leaves behind reaches every later test and every
process they launch: a launcher's variable such as LOCAL_WORLD_SIZE reaches every rank of
a deepspeed-launched run (that launcher sets LOCAL_SIZE, not LOCAL_WORLD_SIZE, which is read
first), so each rank would be streaming's node leader. A change to a variable the
launchers, the ranks or the libraries' thread and device choices read fails the test and
is put back; others (libraries set their own on first import) are left alone."""
import os
import re

import pytest

WATCHED = re.compile(r"^(RANK|WORLD_SIZE|LOCAL_RANK|LOCAL_WORLD_SIZE|LOCAL_SIZE|GROUP_RANK|MASTER_ADDR|MASTER_PORT|"
                     r"SLURM_\w+|CUDA_VISIBLE_DEVICES|DS_ACCELERATOR|OMP_NUM_THREADS|TORCH_EXTENSIONS_DIR|"
                     r"PYTHONPATH|PATH|TMPDIR)$")


@pytest.fixture(autouse=True)
def environment_unchanged():
    before = dict(os.environ)
    yield
    watched = sorted(k for k in before.keys() | os.environ.keys()
                     if before.get(k) != os.environ.get(k) and WATCHED.match(k))
    for key in watched:
        if key in before:
            os.environ[key] = before[key]
        else:
            del os.environ[key]
    if watched:
        pytest.fail(f"the test left the environment changed: {', '.join(watched)}", pytrace=False)
