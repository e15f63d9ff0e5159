"""Hash partitioning of record batches on local scratch disk: every row goes to one of K bucket
files (Arrow IPC) chosen by a fixed hash of a key column, rows of a bucket in arrival order. Two
tables partitioned alike on the same key join bucket by bucket, so memory is bounded by one
bucket, not by the tables. Scratch files live inside one step; no two steps share them.
"""
from __future__ import annotations

import errno
import os
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_BUFFER_ROWS = 65_536  # rows held back in memory across all buckets before writing
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


def bucket_of(keys: pa.Array | pa.ChunkedArray, n_buckets: int) -> np.ndarray:
    """Each key's bucket in ``[0, n_buckets)``: a fixed 64-bit hash of the key as a string
    (null reads "None", as ``astype(str)`` spells it), the same on every machine and run."""
    if n_buckets < 1:
        raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
    if n_buckets == 1:
        return np.zeros(len(keys), dtype=np.int64)
    text = pc.fill_null(pc.cast(keys, pa.string()), "None")
    hashes = pd.util.hash_array(text.to_numpy(zero_copy_only=False).astype(object))
    return (hashes % np.uint64(n_buckets)).astype(np.int64)


def bucket_path(folder: str, bucket: int) -> str:
    return os.path.join(folder, f"bucket-{bucket:06d}.arrow")


class BucketWriter:
    """Append tables to K bucket files under ``folder``; use as a context manager.

    Slices are held in memory until ``buffer_rows`` rows are pending over all buckets (or one
    bucket has its share of them), then written, so writes are not one tiny batch per bucket
    and per input batch while memory stays bounded. Every table must have one schema.
    """

    def __init__(self, folder: str, n_buckets: int, buffer_rows: int = DEFAULT_BUFFER_ROWS):
        os.makedirs(folder, exist_ok=True)
        self.folder, self.n_buckets = folder, n_buckets
        self._per_bucket = max(1, buffer_rows // n_buckets)
        self._buffer_rows = buffer_rows
        self._pending: dict[int, list[pa.Table]] = {}
        self._pending_rows: dict[int, int] = {}
        self._writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
        self.schema: pa.Schema | None = None
        self.rows = 0

    def __enter__(self) -> "BucketWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, table: pa.Table | pa.RecordBatch, buckets: np.ndarray) -> None:
        """Route each row of ``table`` to its bucket (``buckets[i]`` for row i)."""
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if self.schema is None:
            self.schema = table.schema
        elif table.schema != self.schema:
            table = table.cast(self.schema)
        if not table.num_rows:
            return
        order = np.argsort(buckets, kind="stable")  # stable: arrival order within a bucket
        ordered = table.take(pa.array(order))
        ids, starts, counts = np.unique(buckets[order], return_index=True, return_counts=True)
        for b, start, n in zip(ids.tolist(), starts.tolist(), counts.tolist()):
            self._pending.setdefault(b, []).append(ordered.slice(start, n))
            self._pending_rows[b] = self._pending_rows.get(b, 0) + n
            if self._pending_rows[b] >= self._per_bucket:
                self._flush(b)
        self.rows += table.num_rows
        if sum(self._pending_rows.values()) >= self._buffer_rows:
            for b in list(self._pending):
                self._flush(b)

    def _flush(self, bucket: int) -> None:
        parts = self._pending.pop(bucket, [])
        self._pending_rows.pop(bucket, None)
        if not parts:
            return
        if bucket not in self._writers:
            path = bucket_path(self.folder, bucket)
            try:
                self._writers[bucket] = pa.ipc.new_file(path, self.schema, options=_IPC_OPTIONS)
            except OSError as exc:
                if exc.errno == errno.EMFILE:
                    raise OSError(f"too many open files writing {self.n_buckets} "
                                  f"buckets under {self.folder}: raise the open-file limit "
                                  f"(ulimit -n) or the rows per bucket") from exc
                raise
        try:
            self._writers[bucket].write_table(pa.concat_tables(parts).combine_chunks())
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise OSError(errno.ENOSPC, f"no space left on the scratch disk writing "
                              f"{self.n_buckets} buckets under {self.folder}: free space there "
                              f"or point TMPDIR at a larger local disk") from exc
            raise

    def close(self) -> None:
        """Write what is pending and close every bucket file."""
        for b in list(self._pending):
            self._flush(b)
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def partition(batches: Iterable[pa.RecordBatch | pa.Table], key: str, n_buckets: int,
              folder: str) -> tuple[int, pa.Schema | None]:
    """Write ``batches`` into ``n_buckets`` bucket files by the hash of column ``key``;
    returns (rows written, their schema; None when there was no batch)."""
    with BucketWriter(folder, n_buckets) as out:
        for batch in batches:
            out.write(batch, bucket_of(batch.column(key), n_buckets))
    return out.rows, out.schema


def read_bucket(folder: str, bucket: int) -> pa.Table | None:
    """One bucket's rows in arrival order, or None when no row went there."""
    path = bucket_path(folder, bucket)
    if not os.path.exists(path):
        return None
    with pa.OSFile(path) as source:  # read into memory: the file may go once read
        return pa.ipc.open_file(source).read_all()
