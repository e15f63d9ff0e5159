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


class ArrowDatasetWriter:
    """A one-file Parquet dataset at ``uri`` written batch by batch (each ``write`` appends a
    row group), published as ``write_arrow_atomic`` publishes it: a hidden staged folder
    renamed into place (or uploaded) with ``_SUCCESS`` on ``close``; ``abort`` (or leaving a
    ``with`` block by an exception) removes it. The schema is the first batch's (or
    ``schema``); later batches are cast to it, so a driver step writes what it would have
    written in one go while holding only a batch. ``write`` of no batch at all needs
    ``schema`` (or ``close(empty=...)``)."""

    def __init__(self, uri: str, schema: Any = None, int96_timestamps: bool = False):
        self.uri, self.schema, self._int96 = uri, schema, int96_timestamps
        self._stage = storage.staged_dir(uri)
        self._folder = self._stage.__enter__()
        self._writer: Any = None
        self._done = False

    def _open(self, schema: Any) -> None:
        import pyarrow.parquet as pq

        self.schema = schema
        self._writer = pq.ParquetWriter(os.path.join(self._folder, "part-00000-driver.parquet"),
                                        schema, use_deprecated_int96_timestamps=self._int96)

    def write(self, table: Any) -> None:
        """Append ``table``'s rows (cast to the dataset's schema)."""
        if self._writer is None:
            self._open(self.schema if self.schema is not None else table.schema)
        if table.num_rows:
            self._writer.write_table(table.select(self.schema.names).cast(self.schema))

    def close(self, empty: Any = None) -> str:
        """Publish the dataset (``empty``: the table written when no batch came); ``uri``."""
        if self._writer is None:
            if empty is None and self.schema is None:
                raise ValueError(f"nothing written to {self.uri} and no schema to write")
            self._open(empty.schema if empty is not None else self.schema)
        self._writer.close()
        open(os.path.join(self._folder, "_SUCCESS"), "wb").close()
        self._done = True
        self._stage.__exit__(None, None, None)
        return self.uri

    def abort(self) -> None:
        """Drop what was written; ``uri`` is left as it was (no-op once closed)."""
        if self._done:
            return
        self._done = True
        try:
            if self._writer is not None:
                self._writer.close()
        except OSError:  # e.g. a full disk fails the footer too: the folder goes all the same
            pass
        finally:
            self._stage.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> "ArrowDatasetWriter":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is not None:
            self.abort()
