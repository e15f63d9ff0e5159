"""``user_impressions_today`` for every kept row, in Spark and on the driver (pyarrow + NumPy).

The rule is ``pythia.synth.activity.user_impressions_today``'s: per (user_id, UTC date of ts),
the number of the user's rows strictly before the row by (ts, impression_id). ``join_hours``
applies it to all kept rows of the window (after quarantine and duplicate settling), before the
power-user flag, the power-user drop and resampling, so a sampled row keeps the count of the
full day. Both engines order ``ts`` at microseconds (Spark's precision; the driver reads INT96
as microseconds too) and ``impression_id`` by its UTF-8 bytes, so they give the same counts.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pythia.features import IMPRESSION_ID, TS, TS_SECONDS, USER_ID, USER_IMPRESSIONS_TODAY

SECONDS_PER_DAY = 86_400
# The rule as docs/data-contract.md states it (``split_rules.rules_markdown``).
RULE = (f"- `{USER_IMPRESSIONS_TODAY}` (every split row, int64, never null): the number of the "
        "same user's kept impressions earlier the same UTC day of `ts`, ordered by (`ts`, "
        "`impression_id`) -- a bidder's frequency counter. Counted over every valid, distinct "
        "impression of the window (after quarantine and duplicate settling), before the "
        "power-user drop and resampling (reference: "
        "`pythia.synth.activity.user_impressions_today`).")


def add_user_impressions_today(rows: Any) -> Any:
    """Spark: ``rows`` with ``user_impressions_today`` (long, not null) from a window over
    (user_id, UTC day) ordered by (ts, impression_id); a shuffle, nothing goes to the driver.
    ``impression_id`` is unique among the rows (duplicates are settled first), so
    ``row_number() - 1`` is the number of rows strictly before."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    day = F.floor(F.col(TS_SECONDS) / F.lit(SECONDS_PER_DAY))
    window = Window.partitionBy(F.col(USER_ID), day).orderBy(F.col(TS), F.col(IMPRESSION_ID))
    return rows.withColumn(USER_IMPRESSIONS_TODAY,
                           (F.row_number().over(window) - F.lit(1)).cast("long"))


def user_impressions_today(table: pa.Table) -> np.ndarray:
    """Driver: the (n,) int64 counts of ``add_user_impressions_today`` for an Arrow table with
    ``user_id``, ``ts`` (timestamp), ``ts_seconds`` and ``impression_id``."""
    n = table.num_rows
    if not n:
        return np.zeros(0, dtype=np.int64)
    # null user ids (if any) form one group, as Spark's partitionBy groups nulls together
    user = pc.fill_null(pc.dictionary_encode(table[USER_ID]).combine_chunks().indices, -1)
    day = np.floor_divide(table[TS_SECONDS].to_numpy(zero_copy_only=False).astype(np.int64),
                          SECONDS_PER_DAY)
    ts = table[TS].cast(pa.timestamp("us")).cast(pa.int64())
    keys = pa.table({"u": user, "d": day, "t": ts, "i": table[IMPRESSION_ID]})
    order = pc.sort_indices(keys, sort_keys=[("u", "ascending"), ("d", "ascending"),
                                             ("t", "ascending"), ("i", "ascending")]).to_numpy()
    u, d = user.to_numpy(zero_copy_only=False)[order], day[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = (u[1:] != u[:-1]) | (d[1:] != d[:-1])
    position = np.arange(n, dtype=np.int64)
    first = np.maximum.accumulate(np.where(starts, position, 0))
    out = np.empty(n, dtype=np.int64)
    out[order] = position - first
    return out
