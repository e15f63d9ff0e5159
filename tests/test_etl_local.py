"""etl_hour on the driver (``etl.hourly_local``) against the Spark path (``etl.hourly``).

First: the driver's content hash is Spark's own xxhash64, bit for bit.
"""
from __future__ import annotations

import random

import pyarrow as pa
import pytest

from pythia.etl.content_hash import spark_xxhash64


def _random_text(rng: random.Random) -> str | None:
    if rng.random() < 0.15:
        return None
    ranges = [(0x20, 0x7e), (0xa0, 0x24f), (0x4e00, 0x4fff), (0x1f300, 0x1f64f), (0, 0x1f)]
    size = rng.choice([0, 1, 3, 7, 8, 31, 32, 33, 64, 100])
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(size))


@pytest.mark.spark
def test_content_hash_is_sparks_xxhash64(spark):
    from pyspark.sql import functions as F

    rng = random.Random(7)
    rows = [tuple(_random_text(rng) for _ in range(4)) for _ in range(3000)]
    rows += [(None,) * 4, ("",) * 4, ("", None, "", None)]
    names = ["a", "b", "c", "d"]
    sdf = spark.createDataFrame(rows, ", ".join(f"{n} string" for n in names))
    want = [r[0] for r in sdf.select(F.xxhash64(*names)).collect()]
    got = spark_xxhash64([pa.array([r[i] for r in rows], pa.string()) for i in range(4)])
    assert got.tolist() == want
    assert spark_xxhash64([pa.array([None], pa.string())]).tolist() == [42]
