"""etl_hour's labels join: the labels are broadcast only up to ``LABELS_BROADCAST_MAX_ROWS``
rows (a broadcast is held whole in the heap, ~200 B a label row, while Spark's own
10 MB rule reads the Parquet files' ~6 B a row), else sort-merged; the joined rows are the
same either way. Labels written by pyarrow (two files, one provider, a null age) and
impressions with users absent from the labels and labels of users never seen."""
from __future__ import annotations

import datetime as dt

import pytest

from pythia import providers_local
from pythia.etl import hourly, sample

AGES = (18, 25, 35, 45, 55, 65)
COUNTRIES = ("US", "GB", "DE", "JP", "BR")


def _labels(root: str, users: int) -> str:
    rows = [{"user_id": f"u{u}", "gender": "FM"[u % 2], "age": None if u == 7 else 18 + u % 60,
             "country": COUNTRIES[u % len(COUNTRIES)], "observed_date": dt.date(2024, 3, 1)}
            for u in range(users)]
    sample.write_labels(root, "acme", rows[: users // 2], name="part-0.parquet")
    sample.write_labels(root, "acme", rows[users // 2:], name="part-1.parquet")
    return providers_local.prepare_labels(root, {}, AGES, root + "-labels", "acme")["labels_path"]


def _join(spark, labels_path: str):
    # skewed impressions: user 0 most, users 300-339 have no label
    users = [0] * 50 + list(range(1, 120)) + list(range(300, 340))
    imps = spark.createDataFrame([(f"i{i}", f"u{u}") for i, u in enumerate(users)],
                                 ["impression_id", "user_id"])
    joined = imps.join(hourly.read_labels(spark, labels_path), "user_id", "left")
    rows = sorted(tuple(r) for r in joined.collect())
    return rows, joined._jdf.queryExecution().executedPlan().toString()


@pytest.mark.spark
def test_labels_are_broadcast_up_to_the_row_limit_else_sort_merged(spark, tmp_path,
                                                                   monkeypatch):
    labels_path = _labels(str(tmp_path / "src"), 200)
    small, small_plan = _join(spark, labels_path)
    assert "BroadcastHashJoin" in small_plan and "SortMergeJoin" not in small_plan
    monkeypatch.setattr(hourly, "LABELS_BROADCAST_MAX_ROWS", 150)  # 199 label rows: over it
    large, large_plan = _join(spark, labels_path)
    assert "SortMergeJoin" in large_plan and "BroadcastHashJoin" not in large_plan
    assert large == small  # the same rows either way
    assert len(small) == 209 and sum(r[-1] is None for r in small) >= 40  # unlabelled users
