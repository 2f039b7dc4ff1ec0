"""longvivit.data: videos -> MDS shards -> DALI-decoded frame batches.

    synth.py      the synthetic long-video benchmark (`longvivit synth`)
    manifest.py   reading video/caption manifests (JSONL, CSV)
    video.py      PyAV: read videos as a player shows them, encode, decode frames by index
    shards.py     manifest -> MDS shards (`longvivit shards`)
    output.py     the output folder rules synth and shards share (--overwrite)
    remote.py     shards in object storage (s3://...): streaming's uploader, errors naming the URL
    tokenizer.py  sentencepiece training and encoding (`longvivit tokenizer`)
    config.py     DataConfig
    reader.py     StreamingDataset over the shards, launcher environment, shared memory
    decode.py     frame selection; decode (NVDEC for the clips it takes, DALI or PyAV on
                  CPU, JPEG stills by DALI's image decoder), resize/crop/flip
    loader.py     build_loader: prefetched batches, decode-failure handling, resume state

The heavy libraries (torch, streaming, DALI) load on first use of the names below, so
`longvivit synth` and `longvivit shards` workers start quickly.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"DataConfig": "config", "build_loader": "loader", "Tokenizer": "tokenizer",
            "write_benchmark": "synth", "write_shards": "shards",
            "train_tokenizer": "tokenizer"}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


__all__ = list(_EXPORTS)
