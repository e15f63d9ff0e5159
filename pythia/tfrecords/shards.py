"""Executor-side shard writing: one partition's rows -> TFRecord shards per region, atomically.

Runs inside Spark tasks (``writer``'s ``mapInArrow`` jobs). A shard is written under a hidden
temporary name and published only when complete, so readers never see a partial shard.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import tempfile
import uuid
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pythia import storage
from pythia.features import Encoders
from pythia.paths import join
from pythia.tfrecords import encode, permute

GZIP_LEVEL = 6  # zlib's default, as TensorFlow's own TFRecordWriter uses
_REGION_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
SHARD_NAME = re.compile(r"^part-\d{5}-\d{4}\.tfrecord(\.gz)?$")


class _HashingFile:
    """A file wrapper that hashes every byte it writes (the sha256 of the file as stored)."""

    def __init__(self, f: Any) -> None:
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data: Any) -> int:
        self.sha.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


class _ShardWriter:
    """Writes one region's records of one task into shards of at most ``shard_rows`` rows.

    A shard is written under a hidden ``.tmp-*`` name and published (``os.replace`` locally,
    one upload on S3) only when complete; names are ``part-<task>-<seq>`` so the same input
    partition always yields the same names and bytes, and a retried task overwrites its own.
    """

    def __init__(self, region_uri: str, region: str, task: int, shard_rows: int,
                 compression: str | None) -> None:
        self.region_uri, self.region, self.task = region_uri, region, task
        self.shard_rows, self.compression = shard_rows, compression
        self.seq, self.rows = 0, 0
        self.done: list[dict] = []
        self._raw = self._hash = self._out = None
        self._tmp = self._final = ""

    def _open(self) -> None:
        suffix = ".tfrecord.gz" if self.compression == "GZIP" else ".tfrecord"
        name = f"part-{self.task:05d}-{self.seq:04d}{suffix}"
        self._final = join(self.region_uri, name)
        if storage.is_s3(self.region_uri):
            folder = tempfile.gettempdir()
        else:
            folder = os.path.abspath(self.region_uri)
            os.makedirs(folder, exist_ok=True)
        self._tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}-{name}")
        self._raw = open(self._tmp, "wb")
        self._hash = _HashingFile(self._raw)
        self._out = (gzip.GzipFile(filename="", mode="wb", fileobj=self._hash,
                                   compresslevel=GZIP_LEVEL, mtime=0)
                     if self.compression == "GZIP" else self._hash)
        self.rows = 0

    def _close(self) -> None:
        if self._out is not self._hash:
            self._out.close()  # flushes the gzip trailer through the hashing wrapper
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        try:
            if storage.is_s3(self._final):
                with open(self._tmp, "rb") as f:
                    storage.write_bytes_atomic(self._final, f.read())
            else:
                os.replace(self._tmp, os.path.abspath(self._final))
        finally:
            if os.path.exists(self._tmp):
                os.remove(self._tmp)
        self.done.append({"path": self._final, "region": self.region, "rows": self.rows,
                          "sha256": self._hash.sha.hexdigest()})
        self._out = None
        self.seq += 1

    def write(self, flat: Any, offsets: Any) -> None:
        """Append framed records ``flat[offsets[i]:offsets[i+1]]``, rolling shards as they fill."""
        i, n = 0, len(offsets) - 1
        while i < n:
            if self._out is None:
                self._open()
            j = min(n, i + self.shard_rows - self.rows)
            self._out.write(memoryview(flat[offsets[i]:offsets[j]]))
            self.rows += j - i
            i = j
            if self.rows >= self.shard_rows:
                self._close()

    def finish(self) -> list[dict]:
        if self._out is not None:
            self._close()
        return self.done

    def abort(self) -> None:
        if self._raw is not None and not self._raw.closed:
            self._raw.close()
        if self._tmp and os.path.exists(self._tmp):
            os.remove(self._tmp)


def write_partition(batches: Iterator[pa.RecordBatch], encoders: Encoders, split_uri: str,
                    split: str, task: int, shard_rows: int, compression: str | None,
                    shuffle_seed: int | None = None, unit_rows: int | None = None) -> list[dict]:
    """Encode and write one partition's batches; returns its shards' metadata.

    Rows are grouped by region within each batch (stable, so order is kept per region), or,
    with ``shuffle_seed``, written per region in the order of ``permute.row_keys`` (spilled to
    a temporary Arrow file by key range as they stream in: ``permute.Spill``; ``unit_rows``, the
    partition's row count when known, sets how many ranges so that one holds about
    ``permute.SPILL_ROWS`` rows).
    """
    writers: dict[str, _ShardWriter] = {}

    def writer(region: str) -> _ShardWriter:
        if region not in writers:
            writers[region] = _ShardWriter(join(split_uri, f"region={region}"), region, task,
                                           shard_rows, compression)
        return writers[region]

    spill = None if shuffle_seed is None else permute.Spill(shuffle_seed, task, unit_rows)
    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            regions = batch.column(encode.REGION_COLUMN)
            if regions.null_count:
                raise ValueError(f"region is null in {regions.null_count} row(s) of split "
                                 f"{split!r}")
            enc = pc.dictionary_encode(regions)
            names = enc.dictionary.to_pylist()
            for region in names:
                if not _REGION_NAME.match(region):
                    raise ValueError(f"region {region!r} in split {split!r} is not a valid "
                                     f"folder name ([A-Za-z0-9_.-]+)")
            if spill is not None:  # cut by key range, to the spill file
                spill.add(batch)
                continue
            codes = enc.indices.to_numpy(zero_copy_only=False)
            order = np.argsort(codes, kind="stable")  # stable: keeps row order per region
            sorted_idx = codes[order]
            batch = batch.take(pa.array(order))
            flat, offsets = encode.encode_records(batch, encoders, f"split {split!r}")
            bounds = [0] + list(1 + (sorted_idx[1:] != sorted_idx[:-1]).nonzero()[0]) \
                + [batch.num_rows]
            for a, b in zip(bounds[:-1], bounds[1:]):
                writer(names[sorted_idx[a]]).write(flat, offsets[a:b + 1])
        for region, rows in (spill.drain() if spill is not None else ()):
            writer(region).write(*encode.encode_records(rows, encoders, f"split {split!r}"))
        return [s for r in sorted(writers) for s in writers[r].finish()]
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        if spill is not None:
            spill.close()
