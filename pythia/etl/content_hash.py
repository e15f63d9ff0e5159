"""Spark's ``xxhash64`` of string columns, on the driver, bit for bit.

``hourly.content_hash`` is ``F.xxhash64`` over an impression's raw strings: XXH64 of each
non-null value's UTF-8 bytes, seeded with the hash so far (42 to begin with), nulls skipped, the
result read as a signed 64-bit integer. The ids tables of driver and Spark tasks of one run meet
in ``etl.dedupe``, so the driver path must give the very same numbers; tests/test_etl_local.py
compares them with Spark's on random strings. One C call per value (the ``xxhash`` package),
column by column.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import xxhash

SPARK_SEED = 42  # Spark's seed of xxhash64(...)


def spark_xxhash64(columns: Sequence[pa.Array], seed: int = SPARK_SEED) -> np.ndarray:
    """``F.xxhash64(*columns)`` of string arrays of equal length, as int64."""
    digest = xxhash.xxh64_intdigest
    n = len(columns[0]) if columns else 0
    hashes = [seed] * n
    for col in columns:
        if len(col) != n:
            raise ValueError(f"spark_xxhash64: columns of {n} and {len(col)} values")
        values = col.cast(pa.binary()).to_pylist()  # UTF-8 bytes, no str round trip
        hashes = [h if v is None else digest(v, h) for v, h in zip(values, hashes)]
    return np.array(hashes, dtype=np.uint64).view(np.int64)


def key_hashes(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash per value (pandas' ``hash_array``; equal values, equal hashes; a null is
    one value): the driver paths' buckets and their first pass over ids. Not Spark's hash, so
    never written; a collision only costs a second look at the exact values."""
    return pd.util.hash_array(values.to_numpy(zero_copy_only=False),
                              categorize=False).view(np.int64)
