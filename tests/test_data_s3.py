"""Shards in object storage, against a local S3 server (moto, tests/s3_support.py):
`longvivit shards --out s3://...` uploads what it writes locally, streaming reads it back
through its own remote support into a local cache, and a bad remote output is refused
before any clip is transcoded, in one line naming the URL. (tests/test_train_s3.py trains
and evaluates from s3:// on two ranks.)"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from longvivit.cli.shards import main as shards_main
from longvivit.data.load.reader import cache_dir, clean_stale_shared_memory, open_split
from longvivit.distributed.collectives import free_port

from data_support import SHARD_SIZE, synth_data  # noqa: F401 (fixture)
from s3_support import s3  # noqa: F401 (fixture)


def shards(manifest: Path, out: str, capsys, *extra: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `longvivit shards MANIFEST --out OUT` as synth_data's
    shards were written (48 px, 200 kB shards)."""
    code = shards_main([str(manifest), "--out", out, "--size", str(SHARD_SIZE), "--shard-size", "200kb",
                        "--workers", "0", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def samples(dataset) -> list[dict]:
    return [dataset[i] for i in range(dataset.num_samples)]


def staging_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("longvivit-upload-*")}


def test_shards_cli_uploads_and_streaming_reads_the_same_samples(synth_data, s3, capsys, tmp_path):  # noqa: F811
    before = staging_folders()
    code, out, err = shards(synth_data["val"], s3.url("val"), capsys)
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    local = json.loads((synth_data["shards_val"] / "summary.json").read_text())
    assert summary["out"] == s3.url("val") and summary["rejects"] == s3.url("val/rejects.jsonl")
    # the same clips as the local writer: same counts, same shard files, same bytes
    for key in ("written", "skipped", "shards", "shard_bytes", "video_bytes"):
        assert summary[key] == local[key], key
    files = {p.name: p.stat().st_size for p in sorted(synth_data["shards_val"].iterdir())}
    names = list(files)
    uploaded = s3.objects("val/")
    assert list(uploaded) == [f"val/{n}" for n in names]  # shards, index, rejects, summary
    shard_files = [n for n in names if n.startswith("shard.")]
    assert all(uploaded[f"val/{n}"] == files[n] for n in shard_files + ["index.json"])
    assert summary["shard_bytes"] == sum(files[n] for n in shard_files)
    assert staging_folders() == before  # nothing left on local disk

    clean_stale_shared_memory()
    remote = open_split(s3.url("val"), batch_size=2, shuffle=False, seed=0, local_cache=str(tmp_path / "cache"))
    copy = open_split(str(synth_data["shards_val"]), batch_size=2, shuffle=False, seed=0)
    got, want = samples(remote), samples(copy)
    assert len(got) == local["written"] > 0
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        assert all(np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k] for k in a)
    cached = Path(cache_dir(s3.url("val"), str(tmp_path / "cache")))
    assert sorted(p.name for p in cached.glob("shard.*")) == shard_files


def test_a_remote_output_is_checked_before_any_clip_is_transcoded(synth_data, s3, capsys, monkeypatch):  # noqa: F811
    manifest = synth_data["val"]
    code, _, err = shards(manifest, "s3://no-such-bucket/val", capsys)
    assert code == 2 and err.strip() == (f"longvivit shards: s3://no-such-bucket/val: no bucket 'no-such-bucket' "
                                         f"at {s3.endpoint}"), err

    s3.client().put_object(Bucket=s3.bucket, Key="taken/index.json", Body=b"{}")
    code, _, err = shards(manifest, s3.url("taken"), capsys)
    assert code == 2 and err.startswith(f"longvivit shards: output {s3.url('taken')} is not empty (taken/index.json); "
                                        "pass --overwrite"), err
    assert list(s3.objects("taken/")) == ["taken/index.json"]
    code, out, err = shards(manifest, s3.url("taken"), capsys, "--overwrite")
    assert code == 0, err
    assert json.loads(s3.client().get_object(Bucket=s3.bucket, Key="taken/index.json")["Body"].read())["shards"]

    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("S3_ENDPOINT_URL", nowhere)
    code, out, err = shards(manifest, s3.url("val2"), capsys)
    assert code == 2 and not out, out
    assert err.startswith(f"longvivit shards: {s3.url('val2')}: cannot use the object store at {nowhere}: "), err
    assert len(err.strip().splitlines()) == 1
