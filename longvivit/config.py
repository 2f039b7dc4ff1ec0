"""Typed configs: OmegaConf structured configs over dataclasses, for every part of longvivit.

Every config in the project (model, data, run, shard writing, the synthetic benchmark) is a
dataclass. `load_config` builds one from defaults, YAML files and ``key=value`` overrides;
`validated` checks one built in code. Both fail with one ConfigError naming the offending
key: an unknown key, a wrong type, a value outside a field's `choice(...)` (checked here, for
every config), or one that the dataclass's own ``validate()`` rejects. This module needs
only OmegaConf and YAML, so model/, data/ and train/ all use it without importing each other.
`ArgumentParser` gives the commands' own options (`longvivit shards --workers ...`) the same
one-line error style.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Sequence, Type, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and what is wrong."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, except that a bad command line is one line on stderr, exit 2
    ("longvivit shards: argument --workers: invalid int value: 'x'"), in the style of a
    ConfigError, rather than the usage text followed by the error; --help is unchanged."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {' '.join(message.split())}\n")


def choice(*options: str) -> Any:
    """A string field that must be one of `options` (the first is the default); checked by
    `load_config` and `validated` for every config, so no validate() repeats the test."""
    return dataclasses.field(default=options[0], metadata={"choices": options})


def check(cond: bool, key: str, msg: str) -> None:
    """Raise ConfigError('key: msg') unless `cond`; used inside ``validate()`` methods."""
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _explain(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None) or getattr(err, "key", None)
    msg = str(err).splitlines()[0]
    return f"{key}: {msg}" if key else msg


def load_yaml(path: str | Path) -> DictConfig:
    """A YAML config file as a DictConfig; ConfigError('config: PATH: ...') when it is
    missing, is not UTF-8 text (naming the byte offset), is not YAML, holds something other
    than a mapping of keys, or holds no key at all (an empty file would run every default)."""
    if not Path(path).is_file():
        what = "is a directory, not a YAML file" if Path(path).is_dir() else "no such file"
        raise ConfigError(f"config: {path}: {what}")
    try:
        Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config: {path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                          f"{err.start})") from None
    except OSError as err:
        raise ConfigError(f"config: {path}: cannot read it ({err.strerror})") from None
    try:
        node = OmegaConf.load(path)
    except (OSError, yaml.YAMLError, OmegaConfBaseException) as err:
        # OmegaConf raises OSError for a scalar document ("Invalid loaded object type: int")
        raise ConfigError(f"config: {path}: not a YAML mapping of keys ({' '.join(str(err).split())})") from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"config: {path}: holds a list, expected a mapping of keys (model:, data:, ...)")
    if len(node) == 0:
        raise ConfigError(f"config: {path}: is empty (no keys; every default would run)")
    return node


def _merge(cfg: DictConfig, src: Any) -> DictConfig:
    """OmegaConf.merge, except that a value where a section belongs (``model.video=5``,
    a list for ``model.video``), which OmegaConf reports without its key, names the key."""
    try:
        return OmegaConf.merge(cfg, src)
    except OmegaConfBaseException:
        misplaced = _value_for_section(cfg, src)
        if misplaced is None:
            raise
        key, value = misplaced
        raise ConfigError(f"{key}: {value!r} is not a mapping of keys ({key} is a section of the config)") from None


def _value_for_section(cfg: DictConfig, src: Any, prefix: str = "") -> tuple[str, Any] | None:
    """The first (full key, value) of `src` that gives a plain value where `cfg` has a
    section, or None."""
    if OmegaConf.is_config(src):
        src = OmegaConf.to_container(src, resolve=False)
    if not isinstance(src, dict):
        return None
    for key, value in src.items():
        node = cfg._get_node(key) if key in cfg else None
        if not isinstance(node, DictConfig):
            continue
        if not isinstance(value, dict):
            return f"{prefix}{key}", value
        found = _value_for_section(node, value, f"{prefix}{key}.")
        if found is not None:
            return found
    return None


def load_config(schema: Type[T], *sources: Any, overrides: Sequence[str] = ()) -> T:
    """Merge `sources` (YAML paths, dicts or dataclass instances) and ``key=value``
    `overrides` onto the defaults of `schema`; return a validated `schema` instance.

    Raises ConfigError with the offending key on an unknown key, a wrong type, or a value
    that `validated` rejects. The schema's RETIRED_KEYS ({top-level key: why}, where it
    has them) are dropped from `sources` and refused, with the reason, as overrides.
    """
    retired = getattr(schema, "RETIRED_KEYS", {})
    try:
        cfg = OmegaConf.structured(schema)
        for src in sources:
            if isinstance(src, (str, Path)):
                src = load_yaml(src)
            if (isinstance(src, dict) or OmegaConf.is_dict(src)) and any(key in src for key in retired):
                kept = [key for key in src if key not in retired]
                src = OmegaConf.masked_copy(src, kept) if OmegaConf.is_dict(src) else {k: src[k] for k in kept}
            cfg = _merge(cfg, src)
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r}: expected key=value")
            key = item.split("=", 1)[0]
            if key in retired:
                raise ConfigError(f"{key}: retired: {retired[key]}")
        if overrides:
            cfg = _merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err)) from None
    return validated(obj)


def validated(obj: T, prefix: str = "") -> T:
    """`obj` after checking every nested dataclass, children first: each `choice` field
    holds one of its options, then the dataclass's own ``validate()`` passes. ConfigError
    names the full key (``model.video.attention: ...``)."""
    if not dataclasses.is_dataclass(obj):
        return obj
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        validated(value, f"{prefix}{f.name}.")
        options = f.metadata.get("choices")
        check(options is None or value in options, f"{prefix}{f.name}",
              f"{value!r} is not one of {', '.join(options or ())}")
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as err:
            raise ConfigError(f"{prefix}{err}") from None
    return obj


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML (stored in checkpoints and logged to TensorBoard)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


__all__ = ["ArgumentParser", "ConfigError", "choice", "check", "load_config", "load_yaml", "validated", "to_yaml",
           "to_dict", "DictConfig"]
