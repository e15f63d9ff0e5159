"""Duplicates across the whole window: the global pass that makes ``duplicate_impression_id``
independent of how the hours are grouped into ``etl_hour`` tasks.

Each task settles duplicates among its own valid rows (``contract.flag_impressions``) and
writes the ids of the survivors (``hourly.IDS_COLUMNS``). Once per run, an id that survived in
more than one task keeps the copy one task reading everything would have kept (earliest ``ts``,
then date, hour, content hash); the other copies ("losers") leave the written or unlabelled
rows, are counted as ``duplicate_impression_id`` in their own hour, and their raw rows are read
again from the source into the quarantine.
"""
from __future__ import annotations

import copy
import datetime as dt
from typing import Any, Callable, Mapping, Sequence

from pythia import contract_read
from pythia.contract import DUPLICATE_IMPRESSION_ID, IMPRESSIONS, REASON, REASON_COLUMN
from pythia.etl import hourly
from pythia.etl.hourly import CONTENT_HASH, OUTCOME, UNLABELLED, WRITTEN
from pythia.etl.io import read_parquet, write_parquet_atomic
from pythia.features import DATE, HOUR, IMPRESSION_ID, SPLIT, TS, Y_AGE_GENDER

# the copy kept among an id's copies: the first in this order (the within-task rule)
WINNER_ORDER = (TS, DATE, HOUR, CONTENT_HASH)
ROW_KEY = (IMPRESSION_ID, DATE, HOUR, CONTENT_HASH)  # identifies one copy in the source


def find_duplicates(spark: Any, hour_manifests: Sequence[Mapping], out_uri: str) -> dict:
    """Find the copies of ids kept by more than one task that lose to another task's copy.

    Args:
        spark: the session.
        hour_manifests: the manifests of ``hourly.run_hours``, one per task (each names its
            ``ids_path``).
        out_uri: where the losers' ids table (columns ``hourly.IDS_COLUMNS``) is written.

    Returns:
        ``{"path", "rows", "counts"}``: the losers' table (None when there cannot be any: a
        single task), how many, and ``[date, hour, split, outcome, y_age_gender, n]`` per group.
    """
    from pyspark.sql import Window as W
    from pyspark.sql import functions as F

    if not needs_settling(hour_manifests):
        return {"path": None, "rows": 0, "counts": []}
    ids = read_parquet(spark, [m["ids_path"] for m in hour_manifests])
    # rank only the ids kept by several tasks: a hash aggregate over every id, then a sort of
    # the few candidates, instead of sorting every id of the window
    repeated = ids.groupBy(IMPRESSION_ID).count().filter(F.col("count") > 1).select(IMPRESSION_ID)
    rank = F.row_number().over(W.partitionBy(IMPRESSION_ID).orderBy(*WINNER_ORDER))
    losers = (ids.join(repeated, IMPRESSION_ID, "left_semi").withColumn("_rank", rank)
              .filter(F.col("_rank") > 1).drop("_rank"))
    path = write_parquet_atomic(losers, out_uri)
    grouped = read_parquet(spark, path).groupBy(DATE, HOUR, SPLIT, OUTCOME,
                                                Y_AGE_GENDER).count().collect()
    counts = sorted_counts(grouped)
    return {"path": path, "rows": sum(r[-1] for r in counts), "counts": counts}


def needs_settling(hour_manifests: Sequence[Mapping]) -> bool:
    """Whether there are several tasks to settle; ValueError when one names no ids table."""
    if len(hour_manifests) < 2:
        return False
    missing = [m["hours"] for m in hour_manifests if not m.get("ids_path")]
    if missing:
        raise ValueError(f"hour manifest(s) of hours {missing} name no ids table (written by an "
                         "older pythia?): rerun their etl_hour tasks so duplicates can be "
                         "settled across the window")
    return True


def sorted_counts(grouped: Sequence[Sequence]) -> list[list]:
    """``[date, hour, split, outcome, y_age_gender, n]`` groups as Python values, in order."""
    counts = [[d, int(h), s, o, None if y is None else int(y), int(n)]
              for d, h, s, o, y, n in grouped]
    return sorted(counts, key=lambda r: (r[0], r[1], r[3], -1 if r[4] is None else r[4]))


def apply_duplicates(hour_manifests: Sequence[Mapping], counts: Sequence[Sequence]
                     ) -> list[dict]:
    """Copies of the hour manifests with the losers moved, in their own (date, hour), from
    ``written``/``unlabelled`` to ``quarantined[duplicate_impression_id]`` (class counts and
    totals follow), so that ``reconcile`` balances exactly.

    Raises:
        ValueError: a group names an hour no manifest holds, or more rows than it had.
    """
    out = [copy.deepcopy(dict(m)) for m in hour_manifests]
    where = {(p[DATE], int(p[HOUR])): (m, p) for m in out for p in m["per_hour"]}
    for date, hour, split, outcome, y, n in counts:
        if (date, int(hour)) not in where:
            raise ValueError(f"duplicates counted in date {date} hour {hour}, which no hour "
                             "manifest holds")
        m, p = where[(date, int(hour))]
        if outcome not in (WRITTEN, UNLABELLED) or p[outcome] < n:
            raise ValueError(f"{n} duplicate(s) of outcome {outcome!r} in date {date} hour "
                             f"{hour}, but its manifest counts {p.get(outcome, 0)}")
        p[outcome] -= n
        p["quarantined"][DUPLICATE_IMPRESSION_ID] += n
        if outcome == WRITTEN:
            classes = m["class_counts"][split]
            classes[str(y)] -= n
            if classes[str(y)] == 0:  # as if the row had never been written
                del classes[str(y)]
    for m in out:
        m.update(hourly.manifest_totals(m["per_hour"]))
    return out


def write_quarantine(spark: Any, source: str, losers_path: str, quarantine_uri: str,
                     expected: int) -> str:
    """Read the losers' raw rows again from the source partitions that hold them and write
    them as quarantine rows (``duplicate_impression_id``) to ``quarantine_uri``.

    Raises:
        ValueError: the source no longer holds exactly ``expected`` of those rows.
    """
    from pyspark.sql import functions as F

    losers = read_parquet(spark, losers_path).select(*ROW_KEY)
    parts = sorted({(d, int(h)) for d, h in losers.select(DATE, HOUR).distinct().collect()})
    found = contract_read.list_partition_files(
        source, sorted({dt.date.fromisoformat(d) for d, _ in parts}), sorted({h for _, h in parts}))
    files = [f for key in parts for f in found.get(key, [])]
    # extra columns and naive-timestamp notes were reported by the etl_hour tasks already
    raw, _ = contract_read.read_table(spark, files, IMPRESSIONS, report=False)
    rows = (raw.withColumn(CONTENT_HASH, hourly.content_hash())
            .join(losers, list(ROW_KEY), "left_semi")
            .dropDuplicates(list(ROW_KEY))  # byte-identical copies: one was the task's survivor
            .select(*[F.col(contract_read.RAW_PREFIX + c).alias(c) for c in IMPRESSIONS.names],
                    DATE, HOUR, F.lit(DUPLICATE_IMPRESSION_ID).alias(REASON),
                    F.lit(IMPRESSION_ID).alias(REASON_COLUMN)))
    path = write_parquet_atomic(rows, quarantine_uri)
    n = read_parquet(spark, path).count()
    if n != expected:
        raise ValueError(f"{expected} duplicate impression row(s) to quarantine, but {n} found "
                         f"again under {source}: the source changed since etl_hour read it; "
                         "rerun the run")
    return path


def settle_duplicates(spark: Any, hour_manifests: Sequence[Mapping], work_uri: str,
                      quarantine_uri: str) -> tuple[list[dict], dict]:
    """The global pass: find the losers, move their counts, quarantine their rows.

    Returns:
        (adjusted hour manifests, summary) where the summary holds ``path`` (the losers' ids,
        None when there are none), ``rows``, ``written``, ``unlabelled``, ``counts`` and the
        ``quarantine_path`` of their rows. A line saying how many were found is printed.
    """
    found = find_duplicates(spark, hour_manifests, work_uri)
    return settle(hour_manifests, found, lambda source: write_quarantine(
        spark, source, found["path"], quarantine_uri, found["rows"]))


def settle(hour_manifests: Sequence[Mapping], found: Mapping,
           quarantine: Callable[[str], str]) -> tuple[list[dict], dict]:
    """``settle_duplicates`` once the losers are ``found`` (either engine): their counts move,
    ``quarantine(source)`` writes their raw rows when there are any, and then one line says
    so (none found: join_hours' summary line gives the 0)."""
    adjusted = apply_duplicates(hour_manifests, found["counts"])
    by_outcome = {o: sum(r[-1] for r in found["counts"] if r[3] == o)
                  for o in (WRITTEN, UNLABELLED)}
    q_path = None
    if found["rows"]:
        sources = sorted({m["source"] for m in hour_manifests})
        if len(sources) != 1:
            raise ValueError(f"hour manifests read different sources {sources}")
        q_path = quarantine(sources[0])
    if found["rows"]:
        print(f"duplicates across etl tasks: {found['rows']} row(s) lost to an earlier copy in "
              f"another task ({by_outcome[WRITTEN]} labelled, {by_outcome[UNLABELLED]} "
              f"unlabelled); quarantined as {DUPLICATE_IMPRESSION_ID} under {q_path}")
    return adjusted, {"path": found["path"] if found["rows"] else None, "rows": found["rows"],
                      **by_outcome, "counts": found["counts"], "quarantine_path": q_path}
