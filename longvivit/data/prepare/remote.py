"""Shards in object storage (s3://bucket/prefix, gs://, ...), through streaming's own storage code.

Reading: StreamingDataset(remote=URL, local=cache) (reader.py) copies shards into the local
cache as they are needed. Writing: MDSWriter(out=(staging, URL)) uploads each shard as it is
flushed and index.json last (shards.py). For s3:// both use boto3, which reads the AWS_*
credential variables and, through streaming, S3_ENDPOINT_URL (any S3-compatible server:
MinIO, Ceph, moto).

What is added here: an unreachable store, a missing bucket or refused credentials become
one-line errors naming the URL and the endpoint instead of a botocore traceback, and a
remote output that already holds objects is refused unless --overwrite, as a local one is
(output.py).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


def is_remote(path: str) -> bool:
    return "://" in path


def endpoint() -> str:
    return os.environ.get("S3_ENDPOINT_URL") or "the default AWS endpoint"


@contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """botocore's errors as OSErrors that name `url`: FileNotFoundError (no such bucket),
    PermissionError (credentials refused), ConnectionError (store unreachable, no
    credentials). Other schemes' errors pass unchanged."""
    try:  # boto3/botocore are optional: installed only where an S3 store is used
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # no boto3: only non-S3 remotes can be in use
        yield
        return
    bucket = urllib.parse.urlparse(url).netloc
    try:
        yield
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            raise FileNotFoundError(f"{url}: no bucket {bucket!r} at {endpoint()}") from None
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise PermissionError(f"{url}: access refused by {endpoint()} ({code}); check "
                                  "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY") from None
        raise OSError(f"{url}: {err}") from None
    except BotoCoreError as err:
        raise ConnectionError(f"{url}: cannot use the object store at {endpoint()}: {err}") from None


@dataclass
class RemoteOutput:
    """A remote output folder: a writer puts files into `staging` (a local temporary
    folder), `upload` sends them to `url` and removes them; `close` removes `staging`."""
    url: str
    staging: Path
    uploader: Any  # streaming.base.storage.CloudUploader

    def upload(self, *names: str) -> None:
        with storage_errors(self.url):
            for name in names:
                self.uploader.upload_file(name)

    def close(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def open_remote_output(url: str, overwrite: bool, what: str) -> RemoteOutput:
    """streaming's uploader for `url`, checked before anything is written: the store
    answers, the bucket exists, and the prefix is empty (or `overwrite`: objects of the same
    name are then replaced, others left)."""
    from streaming.base.storage import CloudUploader  # imports torch: only when writing to a store

    url = url.rstrip("/")
    staging = Path(tempfile.mkdtemp(prefix="longvivit-upload-"))
    try:
        with storage_errors(url):
            uploader = CloudUploader.get((str(staging), url), keep_local=False, exist_ok=True)
            held = uploader.list_objects() or []
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if held and not overwrite:
        shutil.rmtree(staging, ignore_errors=True)
        more = ", ..." if len(held) > 3 else ""
        raise FileExistsError(f"output {url} is not empty ({', '.join(held[:3])}{more}); pass "
                              f"--overwrite to replace the {what} in it")
    return RemoteOutput(url, staging, uploader)
