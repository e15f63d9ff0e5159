"""Spark Parquet I/O at the edges: atomic dataset writes on local disk and S3 alike."""
from __future__ import annotations

import os
import shutil
import uuid
from typing import Any

from pythia import storage
from pythia.contract import spark_uri
from pythia.paths import join


def write_parquet_atomic(sdf: Any, uri: str) -> str:
    """Write ``sdf`` as a Parquet dataset at ``uri`` so readers never see a partial one.

    Locally Spark writes into a hidden sibling folder that is renamed into place; on S3 (no
    rename) Spark's output committer publishes files at job commit and we check ``_SUCCESS``.
    Returns ``uri``.
    """
    if storage.is_s3(uri):
        from pythia.spark_s3 import spark_writable
        # s3a:// when the session has the S3A connector (Spark's committer publishes at job
        # commit); else, in local mode only, a local folder uploaded once complete
        with spark_writable(sdf.sparkSession, uri) as target:
            sdf.write.mode("overwrite").parquet(target)
        if not storage.exists(join(uri, "_SUCCESS")):
            raise RuntimeError(f"Spark write to {uri} finished without a _SUCCESS marker")
        return uri
    final = os.path.abspath(uri)
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{uuid.uuid4().hex}-{os.path.basename(final)}")
    try:
        sdf.write.mode("overwrite").parquet(tmp)
        if not os.path.exists(os.path.join(tmp, "_SUCCESS")):
            raise RuntimeError(f"Spark write to {uri} finished without a _SUCCESS marker")
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return uri


def read_parquet(spark: Any, uris: list[str] | str) -> Any:
    """Read one or more Parquet datasets written by this package."""
    uris = [uris] if isinstance(uris, str) else list(uris)
    if not uris:
        raise ValueError("read_parquet needs at least one path")
    return spark.read.parquet(*[spark_uri(u, spark) for u in uris])
