"""A real S3 protocol endpoint for tests: a moto server on 127.0.0.1 plus the environment that
points boto3, pyarrow, Metaflow and pythia at it.

Import the fixtures explicitly where needed (``from s3_fixtures import moto_s3, s3_env``; pytest
puts tests/ on sys.path). They are not in conftest.py on purpose, so tests that do not want S3
never start a server.
The credentials are dummy values that only moto accepts; tests use them to check that no
credential ever leaks into an artifact or a log.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterator

import pytest

BUCKET = "pythia-test"
# Dummy credentials, distinctive enough that a leak-scan can find them verbatim.
DUMMY_KEY_ID = "AKIAPYTHIATESTKEY000"
DUMMY_SECRET = "pythia-test-secret-Zq9xW2vR7tY4uJ1k"


@dataclass(frozen=True)
class MotoS3:
    """A running moto S3 server and the bucket created in it."""

    endpoint: str
    bucket: str

    def client(self):
        """A boto3 S3 client for this server (dummy credentials, path-style)."""
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=DUMMY_KEY_ID,
                            aws_secret_access_key=DUMMY_SECRET)

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` in the bucket (paginated)."""
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def start_moto_server() -> tuple[object, str]:
    """Start a threaded moto server on a free loopback port; returns (server, endpoint URL)."""
    from moto.server import ThreadedMotoServer
    # werkzeug logs every request at INFO; tests only want errors
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def s3_environment(endpoint: str, bucket: str, local_root: str) -> dict[str, str]:
    """Env vars that make Metaflow (datastore) and pythia (data root) use the S3 endpoint.

    Metadata stays local (``local_root``): the scale-out path needs a metadata service only
    for remote steps, and a test has none.
    """
    return {
        "AWS_ACCESS_KEY_ID": DUMMY_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint,
        "METAFLOW_S3_ENDPOINT_URL": endpoint,
        "METAFLOW_DEFAULT_DATASTORE": "s3",
        "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{bucket}/metaflow",
        "METAFLOW_DATATOOLS_S3ROOT": f"s3://{bucket}/metaflow/data",
        "METAFLOW_DEFAULT_METADATA": "local",
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": local_root,
        "METAFLOW_USER": "pythia",
        "PYTHIA_DATA_ROOT": f"s3://{bucket}/pythia",
    }


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[MotoS3]:
    """A moto S3 server (one per test module) with the test bucket created."""
    server, endpoint = start_moto_server()
    try:
        s3 = MotoS3(endpoint=endpoint, bucket=BUCKET)
        s3.client().create_bucket(Bucket=BUCKET)
        yield s3
    finally:
        server.stop()


@pytest.fixture()
def s3_env(moto_s3: MotoS3, tmp_path) -> Iterator[dict[str, str]]:
    """Set the S3 environment in this process for one test; restore it afterwards."""
    env = s3_environment(moto_s3.endpoint, moto_s3.bucket, str(tmp_path / "mf-local"))
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
