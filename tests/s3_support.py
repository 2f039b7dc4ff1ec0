"""A local S3 server for tests: moto's server mode on a loopback port, one bucket.

    from s3_support import s3  # noqa: F401 (fixture)
    def test_x(s3):
        s3.env            # S3_ENDPOINT_URL and AWS_* for subprocesses (os.environ has them too)
        s3.url("train")   # s3://<bucket>/train

The server runs in a thread of the pytest process (moto.server.ThreadedMotoServer) for the
test module and is stopped when the module ends, whatever happened; the variables are set in
os.environ only while it runs. Credentials are moto's dummies: nothing leaves the machine.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from longvivit.distributed.collectives import free_port

BUCKET = "longvivit-test"


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        return {"S3_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def objects(self, prefix: str) -> dict[str, int]:
        """{key: size in bytes} of the bucket's objects under `prefix`, sorted by key."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return dict(sorted((obj["Key"], obj["Size"]) for page in pages for obj in page.get("Contents", [])))


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    store = S3(f"http://127.0.0.1:{port}", BUCKET)
    with pytest.MonkeyPatch.context() as patch:
        try:
            for key, value in store.env.items():
                patch.setenv(key, value)
            for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
                patch.delenv(key, raising=False)  # only the dummies above, whatever the machine has
            store.client().create_bucket(Bucket=BUCKET)
            yield store
        finally:
            server.stop()
