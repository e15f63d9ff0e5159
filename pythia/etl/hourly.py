"""The hourly ETL: impression partitions -> validated, feature-derived, labelled rows per split.

One call handles a group of hours of day over the 5 window dates as a single Spark job graph
(one read, one validation, one feature pass, cached on local disk, then small writes and one
count query).
Features come from ``features.derive_batch`` inside ``mapInArrow``: the same Python code as
the bid-time scorer, never a second implementation in SQL. Each task also writes the ids of its
valid rows (``ids/``) so that ``etl.dedupe`` can settle duplicates across tasks.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa

from pythia import contract, contract_read
from pythia.config import Geography, Window
from pythia.contract import IMPRESSIONS, REASON, REASON_COLUMN, REASONS
from pythia.etl.io import read_parquet, write_parquet_atomic
from pythia.features import (COUNTRY, DATE, DERIVED_COLUMNS, ETL_SPLITS, GEO_REGION, HOUR,
                             IMPRESSION_ID, LABEL_PROVIDER, REGIONAL_FEATURES, SPLIT,
                             SPLIT_COLUMN_TYPES, TS, TS_SECONDS, USER_ID,
                             USER_LABEL_COLUMNS, Y_AGE_GENDER, derive_batch)
from pythia.paths import join

WRITTEN = "written"
UNLABELLED = "unlabelled"
OUTCOME = "outcome"  # working column: written | unlabelled | a quarantine reason
CONTENT_HASH = "content_hash"  # xxhash64 of a row's raw values: the last duplicate tie-break
# The per-task ids table (``ids/``): one row per valid row, enough to settle duplicates across
# tasks with the within-task rule (earliest ts, then date, hour, content hash).
IDS_COLUMNS = (IMPRESSION_ID, USER_ID, TS, DATE, HOUR, CONTENT_HASH, SPLIT, OUTCOME,
               Y_AGE_GENDER)
# (name, contract type) of what derive_batch adds to each row
DERIVED = tuple((name, SPLIT_COLUMN_TYPES[name]) for name in DERIVED_COLUMNS)


def _hours_tag(hours: Sequence[int]) -> str:
    return "hours=" + "-".join(f"{h:02d}" for h in hours)


def content_hash() -> Any:
    """The tie-break of ``contract.flag_impressions``: xxhash64 over every raw (string) value of
    a normalised impression row, so the kept copy never depends on file order or task."""
    from pyspark.sql import functions as F

    return F.xxhash64(*[F.col(contract_read.RAW_PREFIX + c.name) for c in IMPRESSIONS.columns])


def derive_features(sdf: Any, geo: Geography) -> Any:
    """Add ``ts_seconds`` and the derived features + ``region`` of ``features.derive_batch``."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    with_ts = sdf.withColumn(TS_SECONDS, F.unix_seconds(F.col(TS)))
    names = with_ts.columns
    schema = T.StructType(with_ts.schema.fields + [
        T.StructField(n, contract_read.spark_struct_type(t)) for n, t in DERIVED])
    arrow_types = [(n, contract.ARROW_TYPES[t]) for n, t in DERIVED]

    def _derive(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            cols = {TS: batch.column(names.index(TS_SECONDS)).to_numpy(zero_copy_only=False),
                    COUNTRY: np.asarray(batch.column(names.index(COUNTRY)).to_pylist(),
                                        dtype=object),
                    GEO_REGION: np.asarray(batch.column(names.index(GEO_REGION)).to_pylist(),
                                           dtype=object),
                    **{f.of: np.asarray(batch.column(names.index(f.of)).to_pylist(), object)
                       for f in REGIONAL_FEATURES}}
            out = derive_batch(cols, geo)
            extra = [pa.array(out[n], type=t) for n, t in arrow_types]
            yield pa.RecordBatch.from_arrays(batch.columns + extra,
                                             names=names + [n for n, _ in arrow_types])

    return with_ts.mapInArrow(_derive, schema)


# the labels joined to a task's impressions are broadcast (held whole in the heap: ~200 B a
# label row measured, docs/scaling.md section 8) up to this many rows, else sort-merged; the
# default world's 32k label rows (one per user) stay broadcast
LABELS_BROADCAST_MAX_ROWS = 250_000


def read_labels(spark: Any, labels_path: str) -> Any:
    """The per-user labels written by ``providers.prepare_labels`` (one row per user), hinted
    to be broadcast to the join up to ``LABELS_BROADCAST_MAX_ROWS`` rows, else sort-merged."""
    from pyspark.sql import functions as F

    labels = read_parquet(spark, labels_path).select(USER_ID, *USER_LABEL_COLUMNS)
    dup = labels.groupBy(USER_ID).count().filter("count > 1").limit(5).collect()
    if dup:
        raise ValueError(f"labels at {labels_path} hold several rows for user(s) "
                         f"{[r[USER_ID] for r in dup]}; expected one label per user")
    # Spark's own rule (autoBroadcastJoinThreshold, 10 MB) reads the Parquet files' size: at
    # 6-9 B a label row on disk that admits 1.1-1.7M rows, 220-340 MB of heap at ~200 B each
    return (F.broadcast(labels) if labels.count() <= LABELS_BROADCAST_MAX_ROWS
            else labels.hint("merge"))


def run_hours(spark: Any, source: str, hours: list[int], window: Window, labels_path: str,
              out_dir: str, quarantine_dir: str, geo: Geography, allow_gaps: bool) -> dict:
    """Validate, quarantine, derive features, join labels and split the given hours of day.

    Args:
        spark: the session (see ``etl.session.get_spark``).
        source: local folder or ``s3://`` prefix in the contract layout.
        hours: hours of day handled by this task (e.g. ``[0, 1, 2, 3]``).
        window: the 5-day window; each row's split comes from ``window.split_of(date)``.
        labels_path: Parquet of ``providers.prepare_labels`` (its manifest's ``labels_path``).
        out_dir: where this task's rows (``rows/``), user-day counts and the ids of its valid
            rows (``ids/``, read by ``etl.dedupe``) go.
        quarantine_dir: root of quarantine tables; rows go to
            ``<quarantine_dir>/impressions/hours=HH-…``.
        geo: country -> region / UTC offset tables.
        allow_gaps: record missing partitions instead of failing.

    Returns:
        A JSON-able manifest: paths, per-(date, hour) counts (rows in, quarantined by reason,
        unlabelled, written), per-split class counts of ``y_age_gender``, schema, extra
        columns, gaps.
    """
    # Long on purpose: one Spark job graph whose persisted frame (``every``) must outlive the
    # count query and the four writes, and be released in the ``finally`` here. It is cached on
    # local disk only: five actions reuse it (one read and one feature pass instead of five),
    # and an in-memory cache keeps a task's rows in the heap (MEMORY_AND_DISK ran a 24-hour
    # task of 8.2M rows out of a 1 GB heap; docs/scaling.md section 8).
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    hours = sorted(int(h) for h in hours)
    dates = window.dates
    files, gaps = contract_read.task_inputs(source, dates, hours, allow_gaps)
    # read_table prints extra columns and naive timestamps to the step's log
    raw, extras = contract_read.read_table(spark, files, IMPRESSIONS)
    if not files:
        raw = contract_read.empty_normalized(spark, IMPRESSIONS)
    flagged = contract.flag_impressions(raw, dates, hours)
    split_of = F.create_map(*[x for d in dates for x in (F.lit(d.isoformat()),
                                                         F.lit(window.split_of(d)))])

    valid = flagged.filter(F.col(REASON).isNull()).select(
        *IMPRESSIONS.names, DATE, HOUR, content_hash().alias(CONTENT_HASH))
    labelled = (derive_features(valid, geo)
                .join(read_labels(spark, labels_path), USER_ID, "left")
                .withColumn(OUTCOME, F.when(F.col(LABEL_PROVIDER).isNull(), F.lit(UNLABELLED))
                            .otherwise(F.lit(WRITTEN))))
    # Quarantined rows keep their raw strings under the _raw_ names: a union with the typed
    # columns would coerce (and fail on) the very values that broke the contract.
    raw_cols = [contract_read.RAW_PREFIX + c for c in IMPRESSIONS.names]
    quarantined = flagged.filter(F.col(REASON).isNotNull()).select(
        *raw_cols, DATE, HOUR, REASON, REASON_COLUMN, F.col(REASON).alias(OUTCOME))
    every = (labelled.unionByName(quarantined, allowMissingColumns=True)
             .withColumn(SPLIT, split_of[F.col(DATE)])
             .persist(StorageLevel.DISK_ONLY))
    try:
        rows = [tuple(r) for r in every.groupBy(DATE, HOUR, SPLIT, OUTCOME, Y_AGE_GENDER,
                                                COUNTRY).count().collect()]
        out_cols = IMPRESSIONS.names + [
            c for c in labelled.columns
            if c not in IMPRESSIONS.names and c not in (OUTCOME, CONTENT_HASH)] + [SPLIT]
        written = every.filter(F.col(OUTCOME) == WRITTEN).select(*out_cols)
        rows_path = write_parquet_atomic(written, join(out_dir, "rows"))
        q_path = write_parquet_atomic(
            every.filter(F.col(REASON).isNotNull()).select(
                *[F.col(r).alias(c) for r, c in zip(raw_cols, IMPRESSIONS.names)],
                DATE, HOUR, REASON, REASON_COLUMN),
            join(quarantine_dir, IMPRESSIONS.name, _hours_tag(hours)))
        # Per-user-day counts of labelled rows, summed over tasks later for the power-user
        # threshold (a user-day spans all 24 hours, i.e. several tasks).
        ud_path = write_parquet_atomic(
            written.groupBy(USER_ID, DATE).agg(F.count(F.lit(1)).alias("n")),
            join(out_dir, "user_day_counts"))
        ids_path = write_parquet_atomic(
            every.filter(F.col(OUTCOME).isin(WRITTEN, UNLABELLED)).select(*IDS_COLUMNS),
            join(out_dir, "ids"))
        schema = [[f.name, f.dataType.simpleString()] for f in written.schema.fields]
    finally:
        every.unpersist()
    return build_manifest(rows, window, hours, gaps, extras, schema, source, labels_path,
                     rows_path, q_path, ud_path, ids_path)


def manifest_totals(per_hour: Sequence[Mapping]) -> dict:
    """The task-level sums of a manifest's ``per_hour`` records: ``total``,
    ``quarantined_by_reason`` and ``written_by_split`` (recomputed after a global dedupe)."""
    total = {"rows_in": sum(p["rows_in"] for p in per_hour),
             "quarantined": {r: sum(p["quarantined"][r] for p in per_hour)
                             for r in REASONS},
             UNLABELLED: sum(p[UNLABELLED] for p in per_hour),
             WRITTEN: sum(p[WRITTEN] for p in per_hour)}
    written_by_split = {s: sum(p[WRITTEN] for p in per_hour if p[SPLIT] == s)
                        for s in ETL_SPLITS}
    return {"total": total, "quarantined_by_reason": dict(total["quarantined"]),
            "written_by_split": written_by_split}


def build_manifest(rows: list[tuple], window: Window, hours: list[int], gaps: list[str],
                   extras: list[str], schema: list, source: str, labels_path: str,
                   rows_path: str, q_path: str, ud_path: str, ids_path: str) -> dict:
    """The task's manifest from ``rows``: ``(date, hour, split, outcome, y_age_gender,
    country, n)`` per group of rows read (both engines of etl_hour build it here).
    ``label_coverage``: per country of the valid rows, [labelled, unlabelled] impressions."""
    per: dict[tuple[str, int], dict] = {}
    for d in window.dates:
        for h in hours:
            per[(d.isoformat(), h)] = {
                DATE: d.isoformat(), HOUR: h, SPLIT: window.split_of(d),
                "gap": f"date={d.isoformat()}/hour={h:02d}" in gaps, "rows_in": 0,
                "quarantined": {r: 0 for r in REASONS}, UNLABELLED: 0, WRITTEN: 0}
    class_counts: dict[str, dict[str, int]] = {s: {} for s in ETL_SPLITS}
    coverage: dict[str, list[int]] = {}
    for date, hour, split, outcome, y, country, n in rows:
        rec = per[(date, int(hour))]
        rec["rows_in"] += n
        if outcome in (WRITTEN, UNLABELLED):
            rec[outcome] += n
            coverage.setdefault(str(country), [0, 0])[0 if outcome == WRITTEN else 1] += n
        else:
            rec["quarantined"][outcome] += n
        if outcome == WRITTEN:
            key = str(int(y))
            class_counts[split][key] = class_counts[split].get(key, 0) + n
    per_hour = [per[k] for k in sorted(per)]
    return {"hours": hours, "dates": [d.isoformat() for d in window.dates],
            "window": window.as_dict(), "source": source, "labels_path": labels_path,
            "rows_path": rows_path, "quarantine_path": q_path, "user_day_counts_path": ud_path,
            "ids_path": ids_path, "gaps": gaps, "extra_columns": extras, "schema": schema,
            "per_hour": per_hour, **manifest_totals(per_hour),
            "label_coverage": dict(sorted(coverage.items())),
            "class_counts": {s: dict(sorted(c.items(), key=lambda kv: int(kv[0])))
                             for s, c in class_counts.items()}}
