"""Parquet I/O at the edges: atomic dataset writes on local disk and S3 alike, from Spark
(``write_parquet_atomic``) or from Arrow on the driver (``write_arrow_atomic``)."""
from __future__ import annotations

import os
from typing import Any

from pythia import storage
from pythia.contract_read import spark_uri
from pythia.paths import join


def write_parquet_atomic(sdf: Any, uri: str) -> str:
    """Write ``sdf`` as a Parquet dataset at ``uri`` so readers never see a partial one.

    ``spark_s3.spark_writable`` picks the target: locally a hidden sibling folder renamed into
    place; on S3 with the S3A connector Spark's committer publishes at job commit; on S3
    without it (local mode) a local folder uploaded once complete. ``_SUCCESS`` is checked.
    Returns ``uri``.
    """
    from pythia.spark_s3 import spark_writable
    with spark_writable(sdf.sparkSession, uri) as target:
        sdf.write.mode("overwrite").parquet(target)
    if not storage.exists(join(uri, "_SUCCESS")):
        raise RuntimeError(f"Spark write to {uri} finished without a _SUCCESS marker")
    return uri


def read_parquet(spark: Any, uris: list[str] | str) -> Any:
    """Read one or more Parquet datasets written by this package."""
    uris = [uris] if isinstance(uris, str) else list(uris)
    if not uris:
        raise ValueError("read_parquet needs at least one path")
    return spark.read.parquet(*[spark_uri(u, spark) for u in uris])


def write_arrow_atomic(table: Any, uri: str, int96_timestamps: bool = False) -> str:
    """Write a pyarrow Table as a one-file Parquet dataset at ``uri`` with a ``_SUCCESS``
    marker, so readers never see a partial one (``storage.staged_dir``: a hidden sibling renamed
    into place, or uploaded to S3 once complete). ``int96_timestamps`` stores timestamps as
    Spark writes them by default (INT96). Returns ``uri``."""
    import pyarrow.parquet as pq

    with storage.staged_dir(uri) as folder:
        pq.write_table(table, os.path.join(folder, "part-00000-driver.parquet"),
                       use_deprecated_int96_timestamps=int96_timestamps)
        open(os.path.join(folder, "_SUCCESS"), "wb").close()
    return uri
