"""longvivit.data: videos -> MDS shards -> frame batches.

    config.py   DataConfig: which shards, how many frames, which tokenizer, batch sizes
    prepare/    offline, once per dataset: the synthetic benchmark (synth), manifests,
                importers of public annotations, video I/O (PyAV), shards, object storage
    load/       at training and evaluation time: the streaming reader, decoding (DALI, PyAV),
                the loader, synthetic batches, tokenizers; `load.open_loader` picks one

The names below load their module on first use (torch, streaming and DALI are heavy), so
`longvivit synth` and `longvivit shards` workers start quickly.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"DataConfig": "config", "build_loader": "load.loader", "Tokenizer": "load.tokenizer",
            "write_benchmark": "prepare.synth", "write_shards": "prepare.shards",
            "train_tokenizer": "load.tokenizer"}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


__all__ = list(_EXPORTS)
