"""`longvivit eval`, `export`, `embed` and `search` on bad input: every case is one line on stderr
naming the input and what is wrong, exit 2, no traceback, and nothing created or changed
(issue 22: 42 of 49 such inputs ended in a traceback, and a failed export left an empty
out folder). The checkpoints are broken copies of one real tiny run (train_support.tiny_run,
trained once for the module on the local synthetic shards, so --data and --tokenizer have
real neighbours). Each command runs in this process (capfd sees every byte written to
stderr); two cases also run through the real command line."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from longvivit.cli.embed import main as embed_main
from longvivit.cli.eval import main as eval_main
from longvivit.cli.export import main as export_main
from longvivit.cli.search import main as search_main
from longvivit.train import export as export_module
from train_support import broken_copy, replace_file, run_in_process, tiny_run


def truncate(name: str):
    def change(tag: Path) -> None:
        file = next(tag.glob(name))
        replace_file(file, file.read_bytes()[: file.stat().st_size // 2])
    return change


def remove(name: str):
    return lambda tag: [p.unlink() for p in tag.glob(name)]


def write(name: str, text: str):
    return lambda tag: replace_file(tag / name, text.encode())


def other_width(tag: Path) -> None:
    """run_config.yaml says the video tower is 64 wide; the shards hold 128."""
    text = (tag / "run_config.yaml").read_text()
    replace_file(tag / "run_config.yaml", text.replace("width: 128", "width: 64", 1).encode())


BROKEN_RUNS = {
    "incomplete": remove("complete"),
    "latest_gone": lambda tag: shutil.rmtree(tag),  # `latest` names a tag that is not there
    "optim_missing": remove("*optim_states.pt"),
    "optim_truncated": truncate("*optim_states.pt"),
    "model_missing": remove("*model_states.pt"),
    "model_truncated": truncate("*model_states.pt"),
    "config_missing": remove("run_config.yaml"),
    "config_garbage": write("run_config.yaml", "model: [\n"),
    "config_unknown_key": write("run_config.yaml", "bogus_key: 1\n"),
    "config_other_width": other_width,
}


def header_only(data: bytes) -> bytes:
    return data[: 8 + int.from_bytes(data[:8], "little")]


BROKEN_EXPORTS = {  # file in the export -> its new content from the old (None: removed)
    "weights_truncated": ("model.safetensors", lambda d: d[: len(d) // 2]),
    "weights_garbage": ("model.safetensors", lambda d: b"not safetensors at all " * 4),
    "weights_empty": ("model.safetensors", lambda d: b""),
    "weights_header_only": ("model.safetensors", header_only),
    "config_yaml_missing": ("config.yaml", lambda d: None),
    "config_yaml_other_width": ("config.yaml", lambda d: d.replace(b"width: 128", b"width: 64", 1)),
    "run_config_missing": ("run_config.yaml", lambda d: None),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """The tiny run, its export, the local data, and broken copies of each; with `files`,
    odd files and folders the cases point at."""
    made = tiny_run(tmp_path_factory.mktemp("tiny"), source="shards")
    broken = tmp_path_factory.mktemp("broken")
    for name, change in BROKEN_RUNS.items():
        broken_copy(made["run"], broken / name, change)
    for name, (file, change) in BROKEN_EXPORTS.items():
        shutil.copytree(made["export"], broken / name, copy_function=os.link)
        replace_file(broken / name / file, change((made["export"] / file).read_bytes()))
    for name, change in {"garbage_index": write("index.json", "not json {"), "truncated_shard": truncate("shard.*.mds"),
                         "missing_shard": remove("shard.*.mds")}.items():  # broken copies of the val shards
        shutil.copytree(made["data"] / "val", broken / name, copy_function=os.link)
        change(broken / name)
    files = broken / "files"
    files.mkdir()
    (files / "afile").write_text("")
    (files / "empty").mkdir()
    (files / "notspm.model").write_text("not a sentencepiece model\n")
    (files / "no_braces.txt").write_text("a video of a thing\n")
    (files / "garbage.safetensors").write_bytes(b"\xff" * 64)
    return {**made, "broken": broken, "files": files}


def fill(args: list[str], world: dict, tmp: Path) -> list[str]:
    return [a.format(run=world["run"], tag=world["tag"], export=world["export"], data=world["data"],
                     broken=world["broken"], files=world["files"], tmp=tmp) for a in args]


def listing(*roots: Path) -> dict:
    return {str(p): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
            for root in roots for p in [root, *root.rglob("*")]}


def assert_refused(status: int, out: str, err: str, command: str, key: str, words: str) -> None:
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"longvivit {command}: {key}") and words in lines[0], lines[0]
    assert all("[WARNING]" in line for line in out.splitlines()), out  # DeepSpeed's first import may log


EVAL_CASES = [
    # the checkpoint: not one, not complete, not whole
    (["{data}/val"], "checkpoint", "holds MDS shards (index.json), not a checkpoint"),
    (["{files}/empty"], "checkpoint", "holds no checkpoint"),
    (["{tmp}/none"], "checkpoint", "no such file or directory"),
    (["{files}/afile"], "checkpoint", "is a file"),
    (["{broken}/incomplete"], "checkpoint", "no 'complete' marker"),
    (["{broken}/incomplete/checkpoints/step00000001"], "checkpoint", "no 'complete' marker"),
    (["{broken}/latest_gone"], "checkpoint", "names 'step00000001', which is not there"),
    (["{broken}/optim_missing"], "checkpoint", "optim_states.pt is missing"),
    (["{broken}/optim_truncated"], "checkpoint", "optim_states.pt: truncated"),
    (["{broken}/model_missing"], "checkpoint", "no DeepSpeed model states"),
    (["{broken}/model_truncated"], "checkpoint", "model_states.pt: truncated"),
    (["{broken}/config_missing"], "checkpoint", "no run_config.yaml"),
    (["{broken}/config_garbage"], "checkpoint", "run_config.yaml cannot be read"),
    (["{broken}/config_unknown_key"], "checkpoint", "bogus_key"),
    (["{broken}/config_other_width"], "checkpoint", "does not fit this model"),
    (["{broken}/weights_truncated"], "checkpoint", "not a whole safetensors file"),
    (["{broken}/weights_garbage"], "checkpoint", "not a whole safetensors file"),
    (["{broken}/weights_empty"], "checkpoint", "not a whole safetensors file"),
    (["{broken}/weights_header_only"], "checkpoint", "not a whole safetensors file"),
    (["{broken}/config_yaml_missing"], "checkpoint", "config.yaml: no such file"),
    (["{broken}/config_yaml_other_width"], "checkpoint", "does not fit this model"),
    (["{broken}/run_config_missing"], "checkpoint", "run_config.yaml: no such file"),
    # what the checkpoint is evaluated on
    (["{run}", "--data", "{tmp}/none"], "--data", "missing index.json"),
    (["{run}", "--data", "{files}/afile"], "--data", "missing index.json"),
    (["{run}", "--data", "{broken}/garbage_index"], "--data", "is not an MDS index"),
    (["{run}", "--data", "{broken}/truncated_shard"], "--data", "index.json says"),
    (["{run}", "--data", "{broken}/missing_shard"], "--data", "is missing (index.json lists it)"),
    (["{run}", "--tokenizer", "{tmp}/none.model"], "--tokenizer", "no tokenizer model"),
    (["{run}", "--tokenizer", "{files}"], "--tokenizer", "no tokenizer model"),
    (["{run}", "--tokenizer", "{files}/notspm.model"], "--tokenizer", "cannot read"),
    (["{run}", "--templates", "{tmp}/none.txt"], "--templates", "No such file"),
    (["{run}", "--templates", "{files}/no_braces.txt"], "--templates", "has no '{}'"),
    # where it writes
    (["{run}", "--out", "{files}/empty"], "--out", "is a directory"),
    (["{run}", "--out", "{files}/afile/lines.jsonl"], "--out", "is not a directory"),
    (["{run}", "--out", "/proc/x/lines.jsonl"], "--out", "is not a directory"),
    (["{run}", "--out", "/proc/lines.jsonl"], "--out", "cannot create anything in /proc"),
    (["{run}", "--save-embeddings", "{files}/empty"], "--save-embeddings", "is a directory"),
    (["{run}", "--save-embeddings", "{files}/afile/e.safetensors"], "--save-embeddings", "is not a directory"),
    (["{run}", "--report", "{files}/afile/report"], "--report", "is a file"),
    (["{run}", "--log-dir", "{files}/afile"], "--log-dir", "is a file"),
    (["{run}", "--log-dir", "/proc/run"], "--log-dir", "cannot create anything in /proc"),
    # embeddings instead of a checkpoint
    (["--from-embeddings", "{tmp}/none.safetensors"], "--from-embeddings", "no such file"),
    (["--from-embeddings", "{files}/garbage.safetensors"], "--from-embeddings", "not a whole safetensors file"),
    (["--from-embeddings", "{export}/model.safetensors"], "--from-embeddings", "holds no eval embeddings"),
    (["--from-embeddings", "{files}/garbage.safetensors", "--report", "{tmp}/r"], "--report and --log-dir", ""),
    # numbers
    (["{run}", "--batch-size", "-1"], "--batch-size -1", "must be >= 1"),
    (["{run}", "--batch-size", "0"], "--batch-size 0", "must be >= 1"),
    (["{run}", "--batch-size", "x"], "argument --batch-size", "invalid int value"),
    (["{run}", "--mask-ratio", "1.0"], "--mask-ratio 1", "outside [0, 1)"),
    (["{run}", "--mask-ratio", "-0.5"], "--mask-ratio -0.5", "outside [0, 1)"),
    (["{run}", "--max-batches", "-1"], "--max-batches -1", "must be >= 0"),
    (["{run}", "--gallery", "-1"], "--gallery -1", "must be >= 0"),
    (["{run}", "--collective-timeout", "0"], "--collective-timeout 0", "must be > 0"),
    (["{run}", "--dsl-temperature", "0"], "--dsl-temperature 0", "must be > 0"),
    (["{run}", "--tasks", "t2v_v2t,bogus"], "unknown task(s) bogus", ""),
    ([], "give a CHECKPOINT or --from-embeddings FILE", ""),
    (["{run}", "--from-embeddings", "{files}/garbage.safetensors"], "give a CHECKPOINT", ""),
]


@pytest.mark.parametrize("argv, key, words", EVAL_CASES)
def test_eval_refuses_bad_input_in_one_line(argv, key, words, world, tmp_path, capfd):
    before = listing(world["broken"], world["run"], world["export"], world["data"], tmp_path)
    status, out, err = run_in_process(eval_main, fill(argv, world, tmp_path), capfd)
    assert_refused(status, out, err, "eval", key, words)
    assert listing(world["broken"], world["run"], world["export"], world["data"], tmp_path) == before


EXPORT_CASES = [
    (["{data}/val"], "checkpoint", "holds MDS shards (index.json), not a checkpoint"),
    (["{files}/empty"], "checkpoint", "holds no checkpoint"),
    (["{tmp}/none"], "checkpoint", "no such file or directory"),
    (["{files}/afile"], "checkpoint", "is a file"),
    (["{broken}/incomplete"], "checkpoint", "no 'complete' marker"),
    (["{broken}/latest_gone"], "checkpoint", "which is not there"),
    (["{broken}/optim_missing"], "checkpoint", "optim_states.pt is missing"),
    (["{broken}/optim_truncated"], "checkpoint", "optim_states.pt: truncated"),
    (["{broken}/model_missing"], "checkpoint", "no DeepSpeed model states"),
    (["{broken}/model_truncated"], "checkpoint", "model_states.pt: truncated"),
    (["{broken}/config_missing"], "checkpoint", "no run_config.yaml"),
    (["{broken}/config_garbage"], "checkpoint", "run_config.yaml cannot be read"),
    (["{broken}/config_unknown_key"], "checkpoint", "no usable model config"),
    (["{broken}/config_other_width"], "checkpoint", "does not fit this model"),
    (["{export}"], "checkpoint", "is already an export"),
    (["{run}", "--out", "{files}/afile"], "--out", "is a file, not a directory"),
    (["{run}", "--out", "{files}/afile/exported"], "--out", "is a file, not a directory"),
    (["{run}", "--out", "/proc/x/exported"], "--out", "cannot create anything in /proc"),
    (["{run}", "--out", "/proc"], "--out", "cannot create anything in /proc"),
    (["{run}"], "give --out DIR, --hf DIR or both", ""),
    (["{run}", "--hf", "{files}/afile"], "--hf", "is a file, not a directory"),
    (["{run}", "--hf", "/proc/x/hf"], "--hf", "cannot create anything in /proc"),
    (["{broken}/model_truncated", "--hf", "{tmp}/hf"], "checkpoint", "model_states.pt: truncated"),
    (["{run}", "--out", "{tmp}/exported", "--hf", "{files}/afile"], "--hf", "is a file, not a directory"),
]


@pytest.mark.parametrize("argv, key, words", EXPORT_CASES)
def test_export_refuses_bad_input_in_one_line(argv, key, words, world, tmp_path, capfd):
    argv = fill(argv, world, tmp_path)
    if "--out" not in argv and len(argv) == 1 and argv[0] != str(world["run"]):
        argv += ["--out", str(tmp_path / "exported")]
    before = listing(world["broken"], world["run"], world["data"], tmp_path)
    status, out, err = run_in_process(export_main, argv, capfd)
    assert_refused(status, out, err, "export", key, words)
    assert listing(world["broken"], world["run"], world["data"], tmp_path) == before


def test_an_export_that_fails_midway_leaves_nothing(world, tmp_path, monkeypatch):
    """Past the checks, a failure while writing (here: consolidating the shards) removes
    what was written: no out folder (it was one, empty, before), no partial file."""
    def fail(tag):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_module, "consolidated_state_dict", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export_module.export(world["tag"], tmp_path / "new" / "exported")
    assert list(tmp_path.iterdir()) == []


def test_an_export_writes_into_out_and_leaves_no_work_folder(world, tmp_path):
    out = export_module.export(world["tag"], tmp_path / "a" / "exported")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.safetensors", "preprocess.json",
                                                     "run_config.yaml", "tokenizer.model"]
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["exported"]
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


@pytest.mark.parametrize("command, argv, key", [
    ("eval", ["{broken}/optim_truncated"], "checkpoint"),
    ("export", ["{run}", "--out", "/proc/x/exported"], "--out"),
])
def test_the_command_line_prints_one_line_and_exits_2(command, argv, key, world, tmp_path):
    """The same through `python -m longvivit.cli`: one line on stderr, nothing else."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "longvivit.cli", command, *fill(argv, world, tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"longvivit {command}: {key}: "), line
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []


EMBED_CASES = [  # INPUT: the tiny run's val shards, unless a case names another
    (["{broken}/weights_truncated", "{data}/val"], "MODEL", "not a whole safetensors file"),
    (["{broken}/run_config_missing", "{data}/val"], "MODEL", "run_config.yaml: no such file"),
    (["{broken}/incomplete", "{data}/val"], "MODEL", "no complete checkpoint"),
    (["{export}", "{tmp}/none.jsonl"], "INPUT", "no such file or folder"),
    (["{export}", "{files}/empty"], "INPUT", "holds no videos"),
    (["{export}", "{files}/no_braces.txt"], "INPUT", "neither a manifest"),
    (["{export}", "{broken}/missing_shard"], "INPUT", "missing"),
    (["{export}", "--text", "{tmp}/none.txt"], "--text", "no such file or folder"),
    (["{export}", "{data}/val", "--stride", "4"], "--stride", "needs --window"),
    (["{export}", "{data}/val", "--window", "-1"], "--window -1", "must be >= 1"),
    (["{export}", "{data}/val", "--batch-size", "0"], "--batch-size 0", "must be >= 1"),
    (["{export}"], "INPUT", "give videos to embed"),
]


@pytest.mark.parametrize("argv, key, words", EMBED_CASES)
def test_embed_refuses_bad_input_in_one_line(argv, key, words, world, tmp_path, capfd):
    argv = fill(argv, world, tmp_path) + ["--out", str(tmp_path / "idx")]
    before = listing(world["broken"], world["export"], world["data"], tmp_path)
    status, out, err = run_in_process(embed_main, argv, capfd)
    assert_refused(status, out, err, "embed", key, words)
    assert listing(world["broken"], world["export"], world["data"], tmp_path) == before


SEARCH_CASES = [
    (["{tmp}/none", "a red circle"], "INDEX", "no such folder"),
    (["{files}/afile", "a red circle"], "INDEX", "is a file, not an index folder"),
    (["{files}/empty", "a red circle"], "INDEX", "no index.json"),
    (["{tmp}/unfinished", "a red circle"], "INDEX", "not complete"),
    (["{tmp}/unfinished", "  "], "TEXT", "give at least one query text"),
    (["{tmp}/unfinished", "a red circle", "-k", "0"], "-k 0", "must be >= 1"),
    (["{tmp}/unfinished", "--queries", "{tmp}/none.txt"], "--queries", "No such file"),
]


@pytest.mark.parametrize("argv, key, words", SEARCH_CASES)
def test_search_refuses_bad_input_in_one_line(argv, key, words, world, tmp_path, capfd):
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "index.json").write_text('{"complete": false}\n')
    before = listing(world["broken"], world["files"], tmp_path)
    status, out, err = run_in_process(search_main, fill(argv, world, tmp_path), capfd)
    assert_refused(status, out, err, "search", key, words)
    assert listing(world["broken"], world["files"], tmp_path) == before
