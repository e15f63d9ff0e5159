"""The power-user threshold from a histogram of counts (``etl.quantile``): the exact quantile
``approxQuantile([q], 0.0)`` gives, without its zero-error summary of every user-day on the
driver, and no broadcast of a power-user table too large to collect."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pythia.config import EtlConfig
from pythia.etl import quantile, splits, splits_local

from test_etl import etl  # noqa: F401  (the hand-made source's labels, tasks and splits)

QS = [0.0, 0.01, 0.1, 0.25, 1 / 3, 0.5, 0.9, 0.99, 0.999, 1.0]


def _histogram(values: np.ndarray) -> list[tuple[float, int]]:
    vals, counts = np.unique(values, return_counts=True)
    return [(float(v), int(c)) for v, c in zip(vals, counts)]


def test_rank_quantile_is_the_spark_rule():
    rng = np.random.default_rng(7)
    for n in (1, 2, 3, 5, 10, 37, 100, 1001, 20_000):
        values = rng.integers(1, 40, n)
        hist = _histogram(values)
        assert [quantile.rank_quantile(hist, q) for q in QS] == \
            [splits_local.spark_quantile(values, q) for q in QS], n
    assert quantile.rank_quantile([], 0.5) is None
    assert quantile.rank_quantile([(3.0, 0)], 0.5) is None
    assert quantile.rows_above([(1.0, 5), (2.0, 3), (9.0, 1)], 1.0) == 4
    assert quantile.rows_above([(1.0, 5)], None) == 0


@pytest.mark.spark
def test_threshold_without_a_summary_of_every_row(spark, tmp_path, monkeypatch):
    rng = np.random.default_rng(11)
    n = rng.integers(1, 60, 5_000)
    path = str(tmp_path / "user_day_counts")
    pq.write_to_dataset(pa.table({"user_id": [f"u{i % 2_000}" for i in range(len(n))],
                                  "date": [f"2024-03-{6 + i // 2_000:02d}" for i in range(len(n))],
                                  "n": pa.array(n, pa.int64())}), path)
    q = 0.95
    totals = spark.read.parquet(path).groupBy("user_id", "date").sum("n")
    want = totals.approxQuantile("sum(n)", [q], 0.0)[0]
    over = totals.where(f"`sum(n)` > {want}").count()
    def refuse(*args, **kwargs):
        raise AssertionError("approxQuantile(..., 0.0) merges one entry per row on the driver")

    monkeypatch.setattr(type(totals), "approxQuantile", refuse)  # Spark 4: the classic class
    got = splits.power_user_threshold(spark, [path], EtlConfig(
        drop_power_users=True, power_user_quantile=q))
    assert got[1] == want  # (totals, threshold, user-days over it)
    assert got[2] == over > 0


@pytest.mark.spark
def test_a_large_power_user_table_is_joined_without_a_broadcast(spark, etl, tmp_path,  # noqa: F811
                                                               monkeypatch):
    from pyspark.sql import functions as F

    def refuse(*args, **kwargs):
        raise AssertionError("broadcast: the power-user table is collected on the driver")

    monkeypatch.setattr(F, "broadcast", refuse)
    monkeypatch.setattr(splits, "BROADCAST_MAX_ROWS", 0, raising=False)
    out = {s: str(tmp_path / s) for s in splits.OUTPUT_SPLITS}
    got = splits.finalize_splits(spark, [etl["a"], etl["b"]], etl["cfg"], out)
    want = etl["final"]
    assert got["power_user_rows"] == want["power_user_rows"] == {"train": 7, "validation": 0,
                                                                 "test": 0}
    assert got["rows"] == want["rows"] and got["rates"] == want["rates"]
    monkeypatch.setattr(splits, "BROADCAST_MAX_ROWS", 10)  # 1 power user-day: broadcast it
    with pytest.raises(AssertionError, match="broadcast"):
        splits.finalize_splits(spark, [etl["a"], etl["b"]], etl["cfg"], out)
