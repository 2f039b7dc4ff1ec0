"""longvivit.config: one loader, one error style (ConfigError 'key: what is wrong', exit 2
at the command line) for every config, choices checked in one place."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from longvivit.cli.shards import main as shards_main
from longvivit.cli.synth import main as synth_main
from longvivit.config import ConfigError, choice, load_config, load_yaml, validated
from longvivit.data.prepare.shards import ShardOptions
from longvivit.data.prepare.synth import SynthConfig


@dataclass
class Inner:
    mode: str = choice("a", "b")
    n: int = 1

    def validate(self) -> None:
        if self.n < 0:
            raise ConfigError(f"n: {self.n} must be >= 0")


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    kind: str = choice("x", "y", "z")


def test_choice_defaults_to_the_first_option_and_is_checked_with_its_full_key():
    assert load_config(Outer).kind == "x" and load_config(Outer).inner.mode == "a"
    assert load_config(Outer, overrides=["inner.mode=b", "kind=z"]).inner.mode == "b"
    with pytest.raises(ConfigError, match=r"^inner\.mode: 'c' is not one of a, b$"):
        load_config(Outer, overrides=["inner.mode=c"])
    with pytest.raises(ConfigError, match=r"^kind: 'w' is not one of x, y, z$"):
        validated(Outer(kind="w"))
    with pytest.raises(ConfigError, match=r"^inner\.n: -1 must be >= 0$"):
        validated(Outer(inner=Inner(n=-1)))


@pytest.mark.parametrize("key, value, message", [
    ("model.video.attention", "sparse", "'sparse' is not one of joint, factorized"),
    ("model.video.pool", "max", "'max' is not one of mean, cls"),
    ("model.gather", "all", "'all' is not one of gather_with_grad, local_loss"),
    ("data.sampling", "random", "'random' is not one of uniform, fps"),
    ("data.source", "hdf5", "'hdf5' is not one of shards, synthetic"),
    ("precision", "fp8", "'fp8' is not one of fp32, bf16, fp16"),
])
def test_run_config_choices(key, value, message):
    from longvivit.train.config import load_run_config

    with pytest.raises(ConfigError) as err:
        load_run_config(overrides=[f"{key}={value}"])
    assert str(err.value) == f"{key}: {message}"


@pytest.mark.parametrize("opts, message", [
    (ShardOptions(fps=0), "fps: 0 must be > 0"),
    (ShardOptions(size=31), "size: 31 must be an even number >= 0"),
    (ShardOptions(codec="av1"), "codec: 'av1' is not one of vp9, h264"),
    (ShardOptions(keyframe_interval=0), "keyframe_interval: 0 must be >= 1"),
    (ShardOptions(crf=64), "crf: 64 is outside [0, 63]"),
    (SynthConfig(size=15), "size: 15 must be an even number >= 16"),
    (SynthConfig(min_events=3, max_events=2), "min_events: need 1 <= min_events <= max_events, got 3..2"),
    (SynthConfig(videos=1), "videos: 1 must be >= 2"),
    (SynthConfig(val_fraction=1.0), "val_fraction: 1.0 is outside (0, 1)"),
])
def test_shard_options_and_synth_config_fail_like_every_config(opts, message):
    with pytest.raises(ConfigError) as err:
        validated(opts)
    assert str(err.value) == message


def test_writer_commands_exit_2_in_one_line_before_creating_anything(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"video": "a.webm", "caption": "x"}\n')
    assert shards_main([str(manifest), "--out", str(tmp_path / "s"), "--keyframe-interval", "0"]) == 2
    assert capsys.readouterr().err == "longvivit shards: keyframe_interval: 0 must be >= 1\n"
    assert synth_main(["--out", str(tmp_path / "b"), "--videos", "1"]) == 2
    assert capsys.readouterr().err == "longvivit synth: videos: 1 must be >= 2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]


@pytest.mark.parametrize("content, message", [
    (b'kind: x\nnote: "caf\xe9"\n', "not UTF-8 text (byte 0xe9 at offset 18)"),
    (b"\xff\xfekind: x\n", "not UTF-8 text (byte 0xff at offset 0)"),
    (b"", "is empty (no keys; every default would run)"),
    (b"# only a comment\n", "is empty (no keys; every default would run)"),
    (b"{}\n", "is empty (no keys; every default would run)"),
    (b"~\n", "is empty (no keys; every default would run)"),
    (b"- a\n- b\n", "holds a list, expected a mapping of keys"),
])
def test_a_yaml_that_is_not_a_config_names_the_file_and_why(content, message, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    assert str(err.value).startswith(f"config: {path}: {message}")
    with pytest.raises(ConfigError, match=r": is a directory, not a YAML file$"):
        load_yaml(tmp_path)


@pytest.mark.parametrize("source, overrides, message", [
    (None, ["inner=5"], "inner: 5 is not a mapping of keys (inner is a section of the config)"),
    (None, ["inner=[1,2]"], "inner: [1, 2] is not a mapping of keys"),
    ({"inner": "a"}, [], "inner: 'a' is not a mapping of keys"),
    ({"inner": None}, [], "inner: None is not a mapping of keys"),
])
def test_a_value_where_a_section_belongs_names_the_key(source, overrides, message):
    """OmegaConf says only 'Merge error: int is not a subclass of Inner'."""
    with pytest.raises(ConfigError) as err:
        load_config(Outer, *([source] if source else []), overrides=overrides)
    assert str(err.value).startswith(message), str(err.value)
