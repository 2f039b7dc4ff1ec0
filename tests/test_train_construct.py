"""Building the model partitioned under ZeRO-3 (longvivit/train/construct.py, deepspeed.zero.Init) on
2 CPU ranks: the gathered weights equal the whole build's for the same seed, with and
without init weights from a file; a bad file fails on every rank; preset B's build peaks
well under the whole build's memory on each rank, and g builds (bench/zero_init.py).
"""
import gc
import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from longvivit.distributed.collectives import free_port

from train_support import communicate, remove_shm_buffers

pytestmark = pytest.mark.multiproc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import zero_init  # noqa: E402  (bench/zero_init.py: compare_with_whole, the memory benchmark)

DEMO = ROOT / "longvivit" / "configs" / "demo.yaml"
CLIP_TEXT = ["model.text.arch=clip", "model.text.tokenizer=open_clip", "model.text.vocab_size=49408"]
CASES = {  # name: run config overrides ({clip}, {export}: the files the test writes)
    "factorized": ["model.video.attention=factorized", "model.video.mask_scheme=tube", "model.video.cls_token=true"],
    "clip_text_bf16": [*CLIP_TEXT, "precision=bf16"],  # zero.Init makes bf16 parameters
    "open_clip": [*CLIP_TEXT, "model.video.cls_token=true", "init=open_clip:{clip}"],
    "export_8_frames": ["init=checkpoint:{export}"],  # the temporal table is interpolated 4 -> 8
    "wrong_depth": ["model.video.depth=3", "model.video.cls_token=true", "init=open_clip:{clip}"],
}


def run_config(overrides: list[str]):
    from longvivit.train.config import load_run_config

    return load_run_config(DEMO, overrides=["model.video.frames=16", "ds_config=zero3_cpu.json",
                                            "seed=3", *overrides])


def build_case(overrides: list[str]) -> dict:
    """What this rank built partitioned, against the whole build, or what it raised."""
    from longvivit.train.config import resolve_ds_config
    from longvivit.train.construct import build_for_run
    from longvivit.train.engine import partitioned_numel

    cfg = run_config(overrides)
    try:
        model = build_for_run(cfg, False, resolve_ds_config(cfg, 2))
    except Exception as err:  # noqa: BLE001 -- what each rank raised is the result
        return {"error": f"{type(err).__name__}: {err}"}
    held, total = partitioned_numel(model)
    return {"held": held, "total": total, "dtypes": sorted({str(p.dtype) for p in model.parameters()}),
            **zero_init.compare_with_whole(model, cfg)}


def _ranks(rank: int, port: int, files: dict, results) -> None:
    os.environ.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from longvivit.distributed import collectives as dist

    d = dist.DistEnv(rank, 2, rank, 2, "127.0.0.1", port)
    dist.setup_env(d)
    dist.bind_device(d)
    dist.init_process_group(timedelta(seconds=120))
    try:
        for case, overrides in CASES.items():
            results[case, rank] = build_case([o.format(**files) for o in overrides])
        gc.collect()  # the partitioned models hold the process group: gone before shutdown (bench/zero_init.py)
    finally:
        dist.shutdown(d)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """{(case, rank): what rank built}, from one 2-rank process group."""
    from safetensors.torch import save_file

    from longvivit.train.construct import build_for_run
    from longvivit.train.local import make_open_clip

    pytest.importorskip("open_clip")
    tmp = tmp_path_factory.mktemp("construct")
    files = {"clip": tmp / "clip.pt", "export": tmp / "export"}
    make_open_clip(run_config([*CLIP_TEXT, "model.video.cls_token=true"]), files["clip"])
    files["export"].mkdir()
    source = build_for_run(run_config(["model.video.frames=8", "seed=7"]), resuming=False)
    save_file(source.state_dict(), str(files["export"] / "model.safetensors"))
    port, results = free_port(), mp.Manager().dict()
    try:
        mp.spawn(_ranks, args=(port, {k: str(v) for k, v in files.items()}, results), nprocs=2, join=True)
    finally:
        remove_shm_buffers(port)
    return dict(results)


@pytest.mark.parametrize("case", [c for c in CASES if c != "wrong_depth"])
def test_partitioned_build_holds_half_and_gathers_to_the_whole_builds_weights(built, case):
    for rank in (0, 1):
        r = built[case, rank]
        assert "error" not in r, r
        assert abs(r["held"] - r["total"] / 2) <= 0.01 * r["total"], r
        assert r["same_names"] and r["compared"] > 0 and r["differ"] == [], r
        assert r["same_no_weight_decay"], r  # the optimizer's groups read shapes: ds_shape under ZeRO-3
        assert r["dtypes"] == (["torch.bfloat16"] if case.endswith("bf16") else ["torch.float32"]), r


def test_a_file_that_does_not_fit_fails_on_every_rank(built):
    """Rank 0 reads the file; the others learn of its error instead of waiting in a collective."""
    assert "ValueError" in built["wrong_depth", 0]["error"] and "depth" in built["wrong_depth", 0]["error"]
    assert built["wrong_depth", 1]["error"].startswith("RuntimeError: on rank 0: ValueError"), built["wrong_depth", 1]


# ----------------------------------------------------------------------------- memory (bench/zero_init.py)

def bench(tmp_path: Path, *args: str, timeout: float) -> dict:
    port = free_port()
    cmd = [sys.executable, str(ROOT / "bench" / "zero_init.py"), "--port", str(port), *args]
    rc, output = communicate(cmd, port, timeout, {**os.environ}, cwd=ROOT)
    assert rc == 0, output[-4000:]
    result = json.loads(output.strip().splitlines()[-1])
    (tmp_path / "zero_init.json").write_text(json.dumps(result))
    print(json.dumps({k: result[k] for k in ("highest_peak_rss_increase_bytes", "results")}))
    return result


def holds_half(ranks: list[dict]) -> bool:
    return all(abs(r["params_held"] - r["params_total"] / 2) <= 0.01 * r["params_total"] for r in ranks)


def test_B_builds_partitioned_within_two_thirds_of_the_whole_builds_peak_with_its_weights(tmp_path):
    r = bench(tmp_path, "--preset", "B", "--check", timeout=900)
    whole, parts = r["results"]["whole"]["ranks"], r["results"]["partitioned"]["ranks"]
    assert holds_half(parts) and all(w["params_held"] == w["params_total"] for w in whole)
    for rank in parts:
        check = rank["check"]
        assert check["differ"] == [] and check["compared"] == 254 and check["same_no_weight_decay"], check
    # each rank: its half (2 bytes a parameter of 4) plus the module being built, against all
    # 4 bytes of every parameter; the lowest whole rank against the highest partitioned one
    lowest_whole = min(w["peak_rss_increase_bytes"] for w in whole)
    assert max(p["peak_rss_increase_bytes"] for p in parts) < 2 / 3 * lowest_whole, r


@pytest.mark.slow
def test_g_builds_partitioned_on_two_cpu_ranks_holding_half_each(tmp_path):
    r = bench(tmp_path, "--preset", "g", "--ways", "partitioned", timeout=1800)
    parts = r["results"]["partitioned"]["ranks"]
    assert holds_half(parts) and parts[0]["params_total"] > 0.9e9
    whole_bytes = 4 * parts[0]["params_total"]  # fp32: what a whole build holds at least
    assert all(p["peak_rss_increase_bytes"] < 0.6 * whole_bytes for p in parts), r
