"""Spark's ``xxhash64`` of string columns, on the driver, bit for bit.

``hourly.content_hash`` is ``F.xxhash64`` over an impression's raw strings: XXH64 of each
non-null value's UTF-8 bytes, seeded with the hash so far (42 to begin with), nulls skipped, the
result read as a signed 64-bit integer. The ids tables of driver and Spark tasks of one run meet
in ``etl.dedupe``, so the driver path must give the very same numbers; tests/test_etl_local.py
compares them with Spark's on random strings. One C call per value (the ``xxhash`` package),
column by column.
"""
from __future__ import annotations

import struct
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import xxhash

SPARK_SEED = 42  # Spark's seed of xxhash64(...)
UNIFORM_BITS = 53  # uniform draws from a hash, with full double precision
_INT32_RANGE = (-(1 << 31), 1 << 31)


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


def spark_uniform(column: str, seed: int) -> Any:
    """Spark: ``pmod(xxhash64(column, lit(seed)), 2^53) / 2^53``, a uniform draw in [0, 1)
    fixed by the value and the seed (the resample keep draw, the held-out users)."""
    from pyspark.sql import functions as F

    return (F.pmod(F.xxhash64(F.col(column), F.lit(int(seed))), F.lit(1 << UNIFORM_BITS))
            .cast("double") / float(1 << UNIFORM_BITS))


def keep_uniform(ids: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """``spark_uniform`` on the driver, bit for bit: the value's UTF-8 bytes hashed from 42 (a
    null skipped), then the seed literal (an int, or a long outside the int range) hashed as
    its little-endian bytes, as Spark's hashInt/hashLong."""
    lo, hi = _INT32_RANGE
    literal = struct.pack("<i" if lo <= seed < hi else "<q", seed)
    digest = xxhash.xxh64_intdigest
    hashes = [digest(literal, SPARK_SEED if v is None else digest(v, SPARK_SEED))
              for v in ids.cast(pa.binary()).to_pylist()]
    signed = np.array(hashes, dtype=np.uint64).view(np.int64)
    return (signed % (1 << UNIFORM_BITS)).astype(np.float64) / float(1 << UNIFORM_BITS)
