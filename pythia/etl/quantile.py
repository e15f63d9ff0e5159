"""The power-user threshold from a histogram of counts: exact, with driver memory bounded by
the distinct counts (a few hundred), not by the user-days.

``DataFrame.approxQuantile(col, [q], 0.0)`` is exact too, but its zero-error summary keeps
one entry per row and the partitions' summaries are merged on the driver: memory there grows
with the user-days (hundreds of millions at 100x the ``large`` world). A user-day's
impression count has few distinct values, so ``value -> rows`` is small whatever the data,
and the element of rank ceil(q * n) is read off its running sum. ``rank_quantile`` gives
exactly what ``approxQuantile([q], 0.0)`` gives (``splits_local.spark_quantile``'s rule).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

# a broadcast side of at most this many rows is sent to every task; above it the join is
# left to Spark's planner (a shuffle join) instead of being collected on the driver
BROADCAST_MAX_ROWS = 1_000_000


def count_histogram(sdf: Any, column: str) -> list[tuple[float, int]]:
    """``[(value, rows)]`` of a numeric column's non-null values, sorted by value (one
    aggregation on the executors; the driver receives one row per distinct value)."""
    from pyspark.sql import functions as F

    grouped = (sdf.where(F.col(column).isNotNull()).groupBy(column)
               .agg(F.count(F.lit(1)).alias("rows")).collect())
    return sorted((float(r[0]), int(r[1])) for r in grouped)


def rank_quantile(histogram: Sequence[tuple[float, int]], q: float) -> float | None:
    """The element of rank ceil(q * n) (1-based) of the values the histogram counts; the
    minimum for q <= 0, the maximum for q >= 1; None when it counts nothing."""
    pairs = [(v, n) for v, n in sorted(histogram) if n > 0]
    total = sum(n for _, n in pairs)
    if not total:
        return None
    if q <= 0:
        return pairs[0][0]
    if q >= 1:
        return pairs[-1][0]
    rank, seen = max(math.ceil(q * total), 1), 0
    for value, n in pairs:
        seen += n
        if seen >= rank:
            return value
    return pairs[-1][0]


def rows_above(histogram: Sequence[tuple[float, int]], threshold: float | None) -> int:
    """Rows whose value is greater than ``threshold`` (0 when there is none)."""
    if threshold is None:
        return 0
    return sum(n for v, n in histogram if v > threshold)
