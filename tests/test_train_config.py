"""Run-config validation: every invalid case is one line naming the key, exit status 2,
before any process group exists (the runs below claim WORLD_SIZE=2 with no peer, so a
process group would hang instead of exiting), with nothing created or changed: the config
and its overrides, the ds_config against what DeepSpeed accepts, the shards' index and
files, the tokenizer, out, and the files of a checkpoint to resume or initialise from."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from longvivit.config import ConfigError
from longvivit.distributed.collectives import free_port, read_env
from longvivit.train.config import keep_global_batch, load_run_config, resolve_ds_config
from train_support import broken_copy, replace_file, run_in_process, tiny_run

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "longvivit" / "configs" / "demo.yaml"


def _command(args, tmp_path, config, out_given: bool) -> list[str]:
    return ["train", str(config), *([] if out_given else [f"out={tmp_path / 'run'}"]), *args]


def _env(port: int) -> dict:
    """Rank 0 of 2 with no peer: a run that passed validation would wait for its peer."""
    return {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "DS_ACCELERATOR": "cpu"}


def _after(tmp_path: Path, port: int) -> None:
    assert not (tmp_path / "run").exists(), "validation must fail before the output directory is made"
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))


def _train(args, tmp_path, config=DEMO, out_given=False):
    """`python -m longvivit.cli train CONFIG out=TMP/run ARGS` as rank 0 of 2 with no peer."""
    port = free_port()
    cmd = [sys.executable, "-m", "longvivit.cli", *_command(args, tmp_path, config, out_given)]
    proc = subprocess.run(cmd, env={**os.environ, **_env(port)}, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    _after(tmp_path, port)
    return proc


class PassedValidation(AssertionError):
    pass


@pytest.fixture
def train_in_process(monkeypatch, capfd):
    """The same command through longvivit.cli.main in this process (a fresh interpreter costs
    seconds of imports a case; the few cases run by _train check what only a real process
    shows). A run that passed validation fails the test at once instead of waiting for its
    peer."""
    from longvivit.cli import main
    from longvivit.train.trainer import Trainer

    def passed(self):
        raise PassedValidation("validation passed: the run would have started")

    monkeypatch.setattr(Trainer, "__enter__", passed)

    def run(args, tmp_path, config=DEMO, out_given=False) -> subprocess.CompletedProcess:
        port = free_port()
        for key, value in _env(port).items():
            monkeypatch.setenv(key, value)
        monkeypatch.chdir(tmp_path)
        status, out, err = run_in_process(main, _command(args, tmp_path, config, out_given), capfd)
        _after(tmp_path, port)
        # DeepSpeed's first import in this process may log to stdout; a real process's is checked by _train
        out = "\n".join(line for line in out.splitlines() if "[WARNING]" not in line)
        return subprocess.CompletedProcess(["longvivit", "train"], status, out, err)
    return run


def _shard_index(*shards: dict) -> str:
    return json.dumps({"version": 2, "shards": list(shards)})


def _shard(name: str = "shard.00000.mds", size: int = 64, zipped: str | None = None) -> dict:
    """An MDS index entry; the validation reads only the names and sizes."""
    zip_data = {"basename": zipped, "bytes": 32, "hashes": {}} if zipped else None
    return {"format": "mds", "samples": 1, "raw_data": {"basename": name, "bytes": size, "hashes": {}},
            "zip_data": zip_data, "compression": "zstd" if zipped else None}


def _ds(**entries) -> str:
    """A CPU ds_config (ZeRO-3) with `entries` on top; zero=... replaces zero_optimization's."""
    zero = {"stage": 3, **entries.pop("zero", {})}
    return json.dumps({"_accelerator": "cpu", "zero_optimization": zero, **entries})


# Bad files the cases below point at ({tmp}: the test's tmp_path), written before each run;
# a name with a / is a file in a folder (shard folders: index.json and the shard files).
BAD_FILES = {
    "list.yaml": "- model\n- data\n",
    "scalar.yaml": "42\n",
    "syntax.yaml": "model: {video: [\n",
    "latin1.yaml": b'model:\n  preset: tiny\n  note: "caf\xe9"\n',  # byte 34 is not UTF-8
    "empty.yaml": "",
    "comments.yaml": "# a config with nothing in it\n",
    "empty_map.yaml": "{}\n",
    "video_int.yaml": "model:\n  video: 5\n",
    "video_list.yaml": "model:\n  video: [1, 2]\n",
    "list.json": "[1, 2]",
    "zero_string.json": '{"zero_optimization": "three"}',
    "unmarked.json": '{"zero_optimization": {"stage": 3}}',  # says neither "_accelerator": "cuda" nor "cpu"
    "offload_string.json": _ds(zero={"offload_optimizer": "cpu"}),
    "offload_gpu.json": _ds(zero={"offload_optimizer": {"device": "gpu"}}),
    "zero_unknown.json": _ds(zero={"stage3_bogus_bucket": 10}),
    "threshold_string.json": _ds(zero={"stage3_param_persistence_threshold": "lots"}),
    "threshold_fraction.json": _ds(zero={"stage3_param_persistence_threshold": 1.5}),
    "print_often.json": _ds(steps_per_print="often"),
    "print_zero.json": _ds(steps_per_print=0),
    "breakdown_yes.json": _ds(wall_clock_breakdown="yes"),
    "top_unknown.json": _ds(bogus_top_key=1),
    "comm_fp9.json": _ds(communication_data_type="fp9"),
    "fp16_scale.json": _ds(fp16={"enabled": "auto", "loss_scale": "x"}),
    "garbage.pt": "not a torch file",
    "afile": "",
    "notspm.model": "not a sentencepiece model\n",
    "shards/index.json": _shard_index(_shard()),
    "shards/shard.00000.mds": b"\0" * 64,
    "garbage_index/index.json": "not json {",
    "garbage_index/shard.00000.mds": b"\0" * 64,
    "list_index/index.json": "[1, 2]",
    "no_shards/index.json": _shard_index(),
    "entry_garbage/index.json": json.dumps({"shards": [5]}),
    "missing_shard/index.json": _shard_index(_shard(), _shard("shard.00001.mds")),
    "missing_shard/shard.00000.mds": b"\0" * 64,
    "truncated_shard/index.json": _shard_index(_shard()),
    "truncated_shard/shard.00000.mds": b"\0" * 10,
    "zipped_missing/index.json": _shard_index(_shard(zipped="shard.00000.mds.zstd")),
}
SYNTHETIC = "data.source=synthetic"  # past the data checks, to the ones after them
SHARDS = ["data.train={tmp}/shards", "data.val={tmp}/shards"]  # past the shard checks (index and sizes)
TOKENIZER = ["model.text.vocab_size=512"]


def write_bad_files(root: Path) -> dict:
    for name, content in BAD_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return listing(root)


def listing(root: Path) -> dict:
    """Every path under `root` with its size and modification time."""
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def assert_one_line(proc, key: str, words: str = "") -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"longvivit train: {key}:"), lines[0]
    assert words in lines[0], lines[0]
    assert proc.stdout == ""
    return lines[0]


# (overrides, the key the error names[, words the line holds]); CONFIG=... runs that file
CASES = [
    (["bogus_key=1"], "bogus_key"),
    (["model.video.frames=15"], "model.video.frames"),
    (["model.video.mask_ratio=1.0"], "model.video.mask_ratio"),
    (["model.video.heads=0"], "model.video.heads"),
    (["model.video.heads=-4"], "model.video.heads"),
    (["model.video.width=0"], "model.video.width"),
    (["model.video.depth=-1"], "model.video.depth"),
    (["model.text.heads=0"], "model.text.heads"),
    (["model.compile=maybe"], "model.compile", "not a valid bool"),
    (["model.video=5"], "model.video", "5 is not a mapping"),
    (["model.video=[1,2]"], "model.video", "[1, 2] is not a mapping"),
    (["model=5"], "model", "is not a mapping"),
    (["data.images=x"], "data.images", "is not a mapping"),
    (["CONFIG={tmp}/video_int.yaml"], "model.video", "5 is not a mapping"),
    (["CONFIG={tmp}/video_list.yaml"], "model.video", "is not a mapping"),
    (["optim.lr=inf"], "optim.lr"),
    (["precision=fp16"], "precision"),
    (["seed=-1"], "seed"),
    ([f"seed={10**20}"], "seed"),
    ([f"seed={2**63}"], "seed"),
    (["seed=1e30"], "seed"),
    (["ds_config=zero3.json"], "ds_config.bf16.enabled"),
    # no CUDA here: a GPU run is refused, not trained on CPUs over gloo
    (["ds_config=zero3.json", "precision=bf16"], "ds_config"),
    (["ds_config={tmp}/unmarked.json", "precision=bf16"], "precision"),
    (["ds_config={tmp}/list.json"], "ds_config"),
    (["ds_config={tmp}/zero_string.json"], "ds_config.zero_optimization"),
    # what DeepSpeed itself would refuse only once the engine starts, or never
    (["ds_config={tmp}/offload_string.json"], "ds_config.zero_optimization.offload_optimizer", "'cpu'"),
    (["ds_config={tmp}/offload_gpu.json"], "ds_config.zero_optimization.offload_optimizer.device", "'gpu'"),
    (["ds_config={tmp}/zero_unknown.json"], "ds_config.zero_optimization.stage3_bogus_bucket"),
    (["ds_config={tmp}/threshold_string.json"], "ds_config.zero_optimization.stage3_param_persistence_threshold",
     "'lots'"),
    (["ds_config={tmp}/threshold_fraction.json"],
     "ds_config.zero_optimization.stage3_param_persistence_threshold", "1.5"),
    (["ds_config={tmp}/print_often.json"], "ds_config.steps_per_print", "'often'"),
    (["ds_config={tmp}/print_zero.json"], "ds_config.steps_per_print", "must be >= 1"),
    (["ds_config={tmp}/breakdown_yes.json"], "ds_config.wall_clock_breakdown", "'yes'"),
    (["ds_config={tmp}/top_unknown.json"], "ds_config.bogus_top_key", "not a key DeepSpeed"),
    (["ds_config={tmp}/comm_fp9.json"], "ds_config", "fp9"),
    (["ds_config={tmp}/fp16_scale.json"], "ds_config", "loss_scale"),
    (["data.train=/nonexistent/shards"], "data.train"),
    (["data.train={tmp}/garbage_index", "data.val={tmp}/shards"], "data.train", "not an MDS index"),
    (["data.train={tmp}/list_index", "data.val={tmp}/shards"], "data.train", "lists no shards"),
    (["data.train={tmp}/no_shards", "data.val={tmp}/shards"], "data.train", "lists no shards"),
    (["data.train={tmp}/entry_garbage", "data.val={tmp}/shards"], "data.train", "names no file"),
    (["data.train={tmp}/missing_shard", "data.val={tmp}/shards"], "data.train", "shard.00001.mds is missing"),
    (["data.train={tmp}/truncated_shard", "data.val={tmp}/shards"], "data.train", "is 10 bytes"),
    (["data.train={tmp}/zipped_missing", "data.val={tmp}/shards"], "data.train", "shard.00000.mds.zstd is missing"),
    (["data.train={tmp}/shards", "data.val={tmp}/truncated_shard"], "data.val", "is 10 bytes"),
    ([*SHARDS, "data.tokenizer={tmp}/notspm.model", *TOKENIZER], "data.tokenizer", "notspm.model"),
    ([*SHARDS, "data.tokenizer={tmp}", *TOKENIZER], "data.tokenizer", "no tokenizer model"),
    ([*SHARDS, "data.tokenizer={tmp}/none.model", *TOKENIZER], "data.tokenizer", "no tokenizer model"),
    (["data.source=nope"], "data.source"),
    (["eval_gallery=-1"], "eval_gallery"),
    (["timeouts.data_s=-1"], "timeouts.data_s"),
    (["timeouts.collective_s=0"], "timeouts.collective_s"),
    (["timeouts.checkpoint_s=soon"], "timeouts.checkpoint_s"),
    (["parallel.sequence=0"], "parallel.sequence", "must be >= 1"),
    (["parallel.sequence=3"], "parallel.sequence", "does not divide model.video.heads=4"),
    (["parallel.sequence=4"], "parallel.sequence", "does not divide the world size 2"),  # WORLD_SIZE=2
    (["parallel.sequence=2", "model.video.packing=packed"], "parallel.sequence", "packing=packed"),
    (["parallel.sequence=2", "model.compile=true"], "parallel.sequence", "model.compile=true"),
    (["parallel.sequence=2", "model.video.attention=factorized", "model.video.mask_scheme=tube"],
     "parallel.sequence", "model.video.attention is factorized"),
    (["parallel.sequence=2", "model.video.frames=2", "model.video.image_size=8"], "parallel.sequence",
     "a clip keeps 1 token (model.video.mask_ratio=0.75)"),
    (["global_batch=-8"], "global_batch"),
    (["global_batch_by=steps"], "global_batch_by"),
    (["global_batch=40"], "global_batch"),  # WORLD_SIZE=2 x data.batch_size=16 does not divide it
    (["global_batch=3", "global_batch_by=batch_size"], "global_batch"),  # nor grad_accum=1 x 2
    ([SYNTHETIC, "resume=/nonexistent"], "resume"),
    ([SYNTHETIC, "init=open_clip:/nonexistent/clip.pt"], "init"),
    ([SYNTHETIC, "init=open_clip:{tmp}/garbage.pt"], "init"),
    ([SYNTHETIC, "init=open_clip:{tmp}"], "init"),  # a directory
    ([SYNTHETIC, "init=checkpoint:{tmp}/garbage.pt"], "init"),
    ([SYNTHETIC, "init=checkpoint:{tmp}"], "init"),  # a directory without a checkpoint
    ([SYNTHETIC, "out={tmp}/afile"], "out", "is a file"),
    ([SYNTHETIC, "out={tmp}/afile/run"], "out", "is a file"),
    ([SYNTHETIC, "out=/proc/x/run"], "out", "cannot create anything in /proc"),
    ([SYNTHETIC, "out=/proc"], "out", "cannot create anything in /proc"),
    (["CONFIG={tmp}/list.yaml"], "config"),
    (["CONFIG={tmp}/scalar.yaml"], "config"),
    (["CONFIG={tmp}/syntax.yaml"], "config"),
    (["CONFIG={tmp}/latin1.yaml"], "config", "not UTF-8 text (byte 0xe9 at offset 34)"),
    (["CONFIG={tmp}/empty.yaml"], "config", "is empty"),
    (["CONFIG={tmp}/comments.yaml"], "config", "is empty"),
    (["CONFIG={tmp}/empty_map.yaml"], "config", "is empty"),
    (["CONFIG={tmp}/none.yaml"], "config", "no such file"),
    (["CONFIG={tmp}/shards"], "config", "is a directory"),
]


def _invalid_config(train, args, key, words, tmp_path):
    before = write_bad_files(tmp_path)
    args = [a.format(tmp=tmp_path) for a in args]
    config = next((a.split("=", 1)[1] for a in args if a.startswith("CONFIG=")), DEMO)
    proc = train([a for a in args if not a.startswith("CONFIG=")], tmp_path, config)
    assert_one_line(proc, key, words)
    assert listing(tmp_path) == before, "nothing created or changed"


@pytest.mark.parametrize("args, key, words", [(*case, "")[:3] for case in CASES])
def test_invalid_config_exits_2_naming_the_key(args, key, words, tmp_path, train_in_process):
    _invalid_config(train_in_process, args, key, words, tmp_path)


@pytest.mark.parametrize("args, key, words", [(*case, "")[:3] for case in CASES
                                              if case[0][0] in ("bogus_key=1", "CONFIG={tmp}/latin1.yaml",
                                                                "global_batch=40")])
def test_the_command_line_refuses_an_invalid_config_in_one_line(args, key, words, tmp_path):
    """A few of the cases above through a fresh `python -m longvivit.cli`: its exit status,
    and nothing else on stdout or stderr (imports included)."""
    _invalid_config(_train, args, key, words, tmp_path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A real one-step checkpoint (synthetic batches) and its export, copied and broken below."""
    return tiny_run(tmp_path_factory.mktemp("tiny"), source="synthetic")


def _truncate(name: str):
    def change(tag: Path) -> None:
        file = next(tag.glob(name))
        replace_file(file, file.read_bytes()[: file.stat().st_size // 2])
    return change


def _remove(name: str):
    return lambda tag: [p.unlink() for p in tag.glob(name)]


def _write(name: str, text: str):
    def change(tag: Path) -> None:
        replace_file(tag / name, text.encode())
    return change


BROKEN = {  # how each broken copy of the tiny run differs
    "optim_truncated": _truncate("*optim_states.pt"),
    "optim_missing": _remove("*optim_states.pt"),
    "model_truncated": _truncate("*model_states.pt"),
    "model_missing": _remove("*model_states.pt"),
    "rank_truncated": _truncate("rank00000.pt"),
    "rank_missing": _remove("rank00000.pt"),
    "config_garbage": _write("run_config.yaml", "model: [\n"),
    "config_missing": _remove("run_config.yaml"),
    "marker_garbage": _write("complete", "{not json"),
    "incomplete": _remove("complete"),
}
STORED = "CONFIG={tag}/run_config.yaml"  # the run's own config: the same model, so only the files differ


BROKEN_CASES = [
    ([STORED, "resume={broken}/optim_truncated"], "resume", "optim_states.pt: truncated"),
    ([STORED, "resume={broken}/optim_missing"], "resume", "optim_states.pt is missing"),
    ([STORED, "resume={broken}/model_truncated"], "resume", "model_states.pt: truncated"),
    ([STORED, "resume={broken}/model_missing"], "resume", "no DeepSpeed model states"),
    ([STORED, "resume={broken}/rank_truncated"], "resume", "rank00000.pt: truncated"),
    ([STORED, "resume={broken}/rank_missing"], "resume", "rank00000.pt is missing"),
    ([STORED, "resume={broken}/config_garbage"], "resume", "run_config.yaml cannot be read"),
    ([STORED, "resume={broken}/config_missing"], "resume", "no run_config.yaml"),
    ([STORED, "resume={broken}/marker_garbage"], "resume", "'complete' marker cannot be read"),
    ([STORED, "resume={broken}/incomplete"], "resume", "no complete checkpoint"),
    # resume=auto in a run directory whose newest checkpoint is broken: refused, with a way out
    ([STORED, "out={broken}/optim_truncated", "resume=auto"], "resume", "resume=never"),
    ([STORED, SYNTHETIC, "resume=never", "init=checkpoint:{broken}/optim_truncated"], "init",
     "optim_states.pt: truncated"),
    ([STORED, SYNTHETIC, "resume=never", "init=checkpoint:{broken}/incomplete"], "init", "no complete checkpoint"),
    ([STORED, SYNTHETIC, "resume=never", "init=checkpoint:{run}", "model.video.width=64"], "init",
     "video.patch_embed.weight is [128, 3, 2, 8, 8] there, [64, 3, 2, 8, 8] here"),
    ([STORED, SYNTHETIC, "resume=never", "init=checkpoint:{export}", "model.video.width=64"], "init",
     "does not fit this model"),
    ([STORED, SYNTHETIC, "resume=never", "init=checkpoint:{export}", "model.video.depth=4"], "init",
     "tensors in it that this model lacks"),
    ([STORED, SYNTHETIC, "resume=never", "init=checkpoint:{broken}/export_truncated"], "init",
     "not a whole safetensors file"),
    ([STORED, "resume={run}", "model.video.width=64"], "model.video.width", "refusing to resume"),
]


def _broken_checkpoint(train, args, key, words, tiny, tmp_path):
    """resume= and init=checkpoint: read every file a load would read, up front (a
    truncated optimizer shard used to fail inside DeepSpeed after the out folder existed)."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for name, change in BROKEN.items():
        broken_copy(tiny["run"], broken / name, change)
    shutil.copytree(tiny["export"], broken / "export_truncated", copy_function=os.link)
    weights = broken / "export_truncated" / "model.safetensors"
    replace_file(weights, weights.read_bytes()[:5000])
    before = listing(tmp_path)
    args = [a.format(broken=broken, tag=tiny["tag"], run=tiny["run"], export=tiny["export"]) for a in args]
    config = next(a.split("=", 1)[1] for a in args if a.startswith("CONFIG="))
    args = [a for a in args if not a.startswith("CONFIG=")]
    proc = train(args, tmp_path, config, out_given=any(a.startswith("out=") for a in args))
    assert_one_line(proc, key, words)
    assert listing(tmp_path) == before, "nothing created or changed"


@pytest.mark.parametrize("args, key, words", BROKEN_CASES)
def test_a_broken_or_foreign_checkpoint_exits_2_naming_it(args, key, words, tiny, tmp_path, train_in_process):
    _broken_checkpoint(train_in_process, args, key, words, tiny, tmp_path)


@pytest.mark.parametrize("args, key, words", BROKEN_CASES[:1])
def test_the_command_line_refuses_a_broken_checkpoint_in_one_line(args, key, words, tiny, tmp_path):
    """The first case above through a fresh `python -m longvivit.cli`."""
    _broken_checkpoint(_train, args, key, words, tiny, tmp_path)


def test_ds_config_disagreement_names_the_key(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 3}}))
    proc = _train([f"ds_config={ds}"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("longvivit train: ds_config.train_micro_batch_size_per_gpu: 4 ")
    assert "data.batch_size=16" in proc.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "longvivit" / "configs" / "ds").glob("*.json")))
def test_every_shipped_ds_config_passes_deepspeeds_own_checks(name):
    precision = "fp32" if name.endswith("_cpu.json") else "bf16"
    resolve_ds_config(load_run_config(DEMO, overrides=[f"ds_config={name}", f"precision={precision}"]), 2)


def test_keys_deepspeed_reads_are_accepted_and_others_named(tmp_path):
    """The top-level keys are the ones the installed DeepSpeed looks up while it parses the
    config (not a list of ours): sections it reads outside the ZeRO one pass."""
    known = {"tensorboard": {"enabled": False}, "flops_profiler": {"enabled": False},
             "activation_checkpointing": {"partition_activations": False}, "checkpoint": {"load_universal": False},
             "comms_logger": {"enabled": False}, "wall_clock_breakdown": False, "zero_force_ds_cpu_optimizer": False,
             "zero_allow_untested_optimizer": True, "steps_per_print": 100, "gradient_predivide_factor": 1}
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"_accelerator": "cpu", "zero_optimization": {"stage": 3}, **known}))
    resolve_ds_config(load_run_config(DEMO, overrides=[f"ds_config={ds}"]), 2)
    ds.write_text(json.dumps({"_accelerator": "cpu", "zero_optimization": {"stage": 3}, "tensor_board": {}}))
    with pytest.raises(ConfigError, match=r"^ds_config\.tensor_board: not a key DeepSpeed \S+ reads"):
        resolve_ds_config(load_run_config(DEMO, overrides=[f"ds_config={ds}"]), 2)


def test_ds_config_auto_filled_and_validated():
    cfg = load_run_config(DEMO, overrides=["data.batch_size=3", "grad_accum=2", "optim.clip=0.5"])
    ds = resolve_ds_config(cfg, world_size=2)
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 2
    assert ds["train_batch_size"] == 12 and ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False
    assert "_comment" not in ds
    bf16 = resolve_ds_config(load_run_config(DEMO, overrides=["precision=bf16"]), world_size=1)
    assert bf16["bf16"]["enabled"] is True


@pytest.mark.parametrize("by, world, batch, accum", [
    ("grad_accum", 1, 16, 4), ("grad_accum", 2, 16, 2), ("grad_accum", 4, 16, 1),
    ("batch_size", 1, 32, 2), ("batch_size", 2, 16, 2), ("batch_size", 4, 8, 2)])
def test_global_batch_derives_grad_accum_or_the_per_device_batch(by, world, batch, accum, tmp_path):
    """global_batch=64 (demo: data.batch_size=16; grad_accum=2 given, replaced under
    global_batch_by=grad_accum): the derived value is what the ds_config and the stored
    run config hold."""
    from longvivit.train.trainer import resolved_yaml

    cfg = keep_global_batch(load_run_config(DEMO, overrides=["global_batch=64", f"global_batch_by={by}",
                                                             "grad_accum=2"]), world)
    assert (cfg.data.batch_size, cfg.grad_accum) == (batch, accum)
    ds = resolve_ds_config(cfg, world)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (batch, accum)
    assert ds["train_batch_size"] == 64
    (tmp_path / "stored.yaml").write_text(resolved_yaml(cfg))  # as a checkpoint stores it
    stored = load_run_config(tmp_path / "stored.yaml")
    assert (stored.global_batch, stored.data.batch_size, stored.grad_accum) == (64, batch, accum)
    assert keep_global_batch(stored, world) == stored  # running the stored config runs the same


def test_global_batch_not_divisible_names_the_keys_and_world_size():
    cfg = load_run_config(DEMO, overrides=["global_batch=40"])  # loads: the world size is not known yet
    with pytest.raises(ConfigError, match=r"^global_batch: 40 is not a multiple of data\.batch_size=16 x "
                                          r"world_size=2 \(= 32\)"):
        keep_global_batch(cfg, 2)
    with pytest.raises(ConfigError, match=r"^global_batch: 40 is not a multiple of grad_accum=3 x world_size=2 "):
        keep_global_batch(load_run_config(DEMO, overrides=["global_batch=40", "global_batch_by=batch_size",
                                                           "grad_accum=3"]), 2)
    unfixed = load_run_config(DEMO)
    assert keep_global_batch(unfixed, 3) is unfixed  # global_batch=0: the batch follows the world size


def test_rescale_event_says_what_it_kept():
    """The rescale line's reason (longvivit/train/trainer.py rescale_kept), from 2 ranks to 1 (the
    resumes themselves: tests/test_train_elastic.py)."""
    from longvivit.train.trainer import rescale_kept

    def kept(*overrides, batch, accum, global_batch):
        return rescale_kept(load_run_config(DEMO, overrides=list(overrides)), batch, accum, global_batch)

    what, why = kept(batch=[16, 16], accum=[1, 1], global_batch=[32, 16])
    assert what == "batch_per_rank" and "global batch follows the world size: 32 -> 16" in why
    what, why = kept("global_batch=32", batch=[16, 16], accum=[1, 2], global_batch=[32, 32])
    assert what == "global_batch" and why == ("the global batch (32) is kept, as global_batch= fixes it: "
                                              "grad_accum 1 -> 2 (global_batch_by=grad_accum)")
    what, why = kept("global_batch=32", "global_batch_by=batch_size", batch=[16, 32], accum=[1, 1],
                     global_batch=[32, 32])
    assert what == "global_batch" and "the per-rank batch 16 -> 32 (global_batch_by=batch_size)" in why
    _, why = kept("global_batch=64", batch=[16, 16], accum=[1, 4], global_batch=[32, 64])
    assert why.startswith("the global batch is global_batch=64 (the checkpoint's was 32): grad_accum 1 -> 4")


def test_presets_and_interpolation():
    cfg = load_run_config(DEMO, overrides=["model.video.frames=32"])
    assert cfg.model.preset == "tiny" and cfg.model.video.width == 128
    assert cfg.data.frames == 32  # data.frames follows model.video.frames
    with pytest.raises(ConfigError, match=r"^model\.preset: 'nope'"):
        load_run_config(DEMO, overrides=["model.preset=nope"])
    with pytest.raises(ConfigError, match=r"^data\.frames: 8 differs"):
        load_run_config(DEMO, overrides=["data.frames=8"])
    for name in ("short_B16", "short_L16", "long_L256", "g_1b"):
        text = (ROOT / "longvivit" / "configs" / f"{name}.yaml").read_text()
        assert text.startswith("# sbatch ") or text.startswith("# longvivit ")
        load_run_config(ROOT / "longvivit" / "configs" / f"{name}.yaml")


def test_rank_from_env():
    d = read_env({"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                  "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "MASTER_ADDR": "node1", "MASTER_PORT": "1234"})
    assert (d.rank, d.world_size, d.local_rank, d.local_world_size) == (3, 8, 1, 4)
    assert (d.master_addr, d.master_port) == ("node1", 1234)
    d = read_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_SIZE": "2"})
    assert (d.rank, d.world_size, d.local_rank, d.local_world_size, d.master_port) == (1, 2, 1, 2, 29500)
    assert read_env({}).world_size == 1
    # a lone process inside an allocation of 4 tasks a node is still alone on its node
    d = read_env({"SLURM_TASKS_PER_NODE": "4(x2)"})
    assert (d.rank, d.world_size, d.local_rank, d.local_world_size) == (0, 1, 0, 1)


def test_torch_extensions_are_cached_per_python_environment(monkeypatch):
    """DeepSpeed builds its shm_comm op at every process-group start; with one cache per
    environment another checkout's build (other paths, so other build flags) no longer
    invalidates ours. A directory the user chose is kept."""
    import sys

    from longvivit.distributed.collectives import extensions_dir, setup_env

    # setup_env exports the rank variables too: let it write into a copy of the environment
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"})
    setup_env(read_env({}))
    assert os.environ["TORCH_EXTENSIONS_DIR"] == extensions_dir()
    monkeypatch.setattr(sys, "prefix", "/another/venv")
    assert extensions_dir() != os.environ["TORCH_EXTENSIONS_DIR"]
    os.environ["TORCH_EXTENSIONS_DIR"] = "/mine"
    setup_env(read_env({}))
    assert os.environ["TORCH_EXTENSIONS_DIR"] == "/mine"


GPU_CONFIGS = sorted(p.name for p in (ROOT / "longvivit" / "configs").glob("*.yaml")
                     if load_run_config(p).ds_config and "_cpu" not in load_run_config(p).ds_config)


def test_the_shipped_gpu_configs_are_the_ones_we_think():
    assert {"short_B16.yaml", "short_L16.yaml", "long_L256.yaml", "g_1b.yaml"} <= set(GPU_CONFIGS)


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_a_shipped_gpu_config_is_refused_without_cuda_and_its_local_form_runs(name, tmp_path, monkeypatch):
    """Without CUDA the real form exits 2 in one line saying why (it would train on CPUs
    over gloo); its local form is the CPU form and passes that check."""
    from longvivit.train import trainer as run

    proc = _train([], tmp_path, ROOT / "longvivit" / "configs" / name)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("longvivit train: ds_config: ") and "is written for GPUs" in line, line
    assert "no CUDA device (this torch" in line or "finds no usable GPU" in line, line
    cfg = load_run_config(ROOT / "longvivit" / "configs" / name, overrides=["local=true", f"local_dir={tmp_path}"])
    run.check_accelerator(cfg, torch.device("cpu"))  # no error
