"""The etl_hour step on the driver (pyarrow + NumPy, no JVM), for tasks small enough.

Same contract as ``hourly.run_hours``: the same partitions and files, the same normalised
values and ``_raw_`` strings (``impressions_local``), the rules of ``contract.flag_impressions``
with the same reason codes, reason columns and precedence, duplicates settled by the same order
with Spark's own content hash (``content_hash.spark_xxhash64``), features from the same
``features.derive_batch``, the labels left-joined, and the same four outputs with the column
names, order and Parquet types Spark writes (``ts`` as INT96), so ``join_hours`` (Spark) reads
driver and Spark tasks alike; the manifest comes from ``hourly.build_manifest``. Stored types
it cannot convert exactly raise ``contract_local.NeedsSpark`` before anything is written, and
the caller runs the Spark path. tests/test_etl_local.py runs both on the same inputs.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pythia import contract_local, contract_read, source_layout
from pythia.config import Geography, Window
from pythia.contract import IMPRESSIONS, REASON, REASON_COLUMN
from pythia.contract_read import RAW_PREFIX
from pythia.etl import impressions_local
from pythia.etl.content_hash import spark_xxhash64
from pythia.etl.hourly import (CONTENT_HASH, DERIVED, IDS_COLUMNS, OUTCOME, UNLABELLED,
                               WRITTEN, _hours_tag, build_manifest)
from pythia.etl.io import write_arrow_atomic
from pythia.features import (COUNTRY, DATE, GEO_REGION, HOUR, IMPRESSION_ID,
                             LABEL_PROVIDER, SPLIT, TS,
                             TS_SECONDS, USER_ID, USER_LABEL_COLUMNS, Y_AGE_GENDER,
                             derive_batch)
from pythia.parquet_footers import read_footer
from pythia.paths import join

_STR, _INT32, _INT64 = pa.string(), pa.int32(), pa.int64()
_TS = pa.timestamp("us", tz="UTC")  # written as INT96, as Spark writes timestamps
_KIND_TYPES = {"string": _STR, "float32": pa.float32()}
# Arrow type -> Spark's simpleString, for the manifest's schema
SPARK_NAMES = {_STR: "string", _INT32: "int", _INT64: "bigint", pa.float32(): "float",
               pa.float64(): "double", _TS: "timestamp", pa.bool_(): "boolean",
               pa.date32(): "date"}
LABEL_ARROW_TYPES = (_STR, pa.large_string(), _INT32, _INT64)  # types the labels may hold


def read_labels(labels_path: str) -> pa.Table:
    """``hourly.read_labels`` on the driver: ``user_id`` and the label columns, one row per
    user (ValueError naming up to five users otherwise)."""
    wanted = [USER_ID, *USER_LABEL_COLUMNS]
    files = source_layout.list_data_files(labels_path)
    if not files:
        raise ValueError(f"no labels at {labels_path}: rerun prepare_labels")
    tables = []
    for uri in files:
        missing = [c for c in wanted if c not in read_footer(uri)[0]]
        if missing:
            raise ValueError(f"labels at {uri} lack column(s) {missing}: rerun prepare_labels")
        data = contract_local.read_parquet(uri, wanted)
        types = [data.schema.field(c).type for c in wanted]
        odd = [f"{c} ({t})" for c, t in zip(wanted, types) if t not in LABEL_ARROW_TYPES]
        if odd:
            raise contract_local.NeedsSpark(f"labels stored as {', '.join(odd)}")
        tables.append(data.cast(pa.schema([(c, _STR if pa.types.is_large_string(t) else t)
                                           for c, t in zip(wanted, types)])))
    labels = pa.concat_tables(tables)
    counts = pc.value_counts(labels[USER_ID])
    dup = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(dup):
        raise ValueError(f"labels at {labels_path} hold several rows for user(s) "
                         f"{sorted(dup.to_pylist(), key=str)[:5]}; expected one label per user")
    return labels


def run_hours(source: str, hours: list[int], window: Window, labels_path: str, out_dir: str,
              quarantine_dir: str, geo: Geography, allow_gaps: bool) -> dict:
    """``hourly.run_hours`` without Spark (same arguments but the session, same outputs and
    manifest). Raises ``contract_local.NeedsSpark`` before writing anything when an input
    holds a stored type this path does not convert exactly."""
    hours = sorted(int(h) for h in hours)
    dates = window.dates
    files, gaps = contract_read.task_inputs(source, dates, hours, allow_gaps)
    raw, extras = impressions_local.read_impressions(files)
    labels = read_labels(labels_path)

    reason, column = impressions_local.flag(raw, dates, hours)
    valid = np.flatnonzero(np.equal(reason, None))
    # usually every row is valid and unique: then no copy of the whole table (0.17 s a task)
    kept = raw if len(valid) == raw.num_rows else raw.take(valid)
    hashes = spark_xxhash64([kept[RAW_PREFIX + c] for c in IMPRESSIONS.names])
    ts_us = kept[TS].to_numpy()
    dup = impressions_local.duplicates(kept[IMPRESSION_ID], ts_us,
                                       kept[DATE], kept[HOUR].to_numpy(), hashes)
    reason[valid[dup]], column[valid[dup]] = impressions_local.DUPLICATE
    if dup.any():
        kept, hashes, ts_us = kept.filter(pa.array(~dup)), hashes[~dup], ts_us[~dup]

    split_of = {d.isoformat(): window.split_of(d) for d in dates}
    rows = _labelled(kept, ts_us, labels, geo, split_of)
    labelled = rows[LABEL_PROVIDER].is_valid()
    outcome = pc.if_else(labelled, WRITTEN, UNLABELLED)
    bad = np.flatnonzero(np.not_equal(reason, None))
    quarantine = _quarantine(raw.take(bad), reason[bad], column[bad])
    counts = _counts([rows[DATE], quarantine[DATE]], [rows[HOUR], quarantine[HOUR]],
                     [rows[SPLIT], _splits(quarantine[DATE], split_of)],
                     [outcome, quarantine[REASON]],
                     [rows[Y_AGE_GENDER], pa.nulls(len(bad), rows[Y_AGE_GENDER].type)])

    written = rows.filter(labelled)
    ids = rows.append_column(CONTENT_HASH, pa.array(hashes, _INT64)).append_column(
        OUTCOME, outcome).select(list(IDS_COLUMNS))
    user_days = written.group_by([USER_ID, DATE]).aggregate([([], "count_all")])
    user_days = pa.table([user_days[USER_ID], user_days[DATE], user_days["count_all"]],
                         schema=pa.schema([(USER_ID, _STR), (DATE, _STR),
                                           pa.field("n", _INT64, nullable=False)]))
    rows_path = write_arrow_atomic(written, join(out_dir, "rows"), int96_timestamps=True)
    q_path = write_arrow_atomic(quarantine, join(quarantine_dir, IMPRESSIONS.name,
                                                 _hours_tag(hours)))
    ud_path = write_arrow_atomic(user_days, join(out_dir, "user_day_counts"))
    ids_path = write_arrow_atomic(ids, join(out_dir, "ids"), int96_timestamps=True)
    schema = [[f.name, SPARK_NAMES[f.type]] for f in written.schema]
    return build_manifest(counts, window, hours, gaps, extras, schema, source, labels_path,
                          rows_path, q_path, ud_path, ids_path)


def _labelled(kept: pa.Table, ts_us: np.ndarray, labels: pa.Table, geo: Geography,
              split_of: dict[str, str]) -> pa.Table:
    """The valid rows in the rows/ table's columns: contract columns, date, hour,
    ts_seconds, the derived features, the labels (null when the user has none), split."""
    ts_seconds = ts_us // 1_000_000
    derived = derive_batch({TS: ts_seconds,
                            COUNTRY: kept[COUNTRY].to_numpy(zero_copy_only=False),
                            GEO_REGION: kept[GEO_REGION].to_numpy(zero_copy_only=False)}, geo)
    label_rows = labels.take(pc.index_in(kept[USER_ID], value_set=labels[USER_ID]))
    cols: dict[str, pa.Array | pa.ChunkedArray] = {c: kept[c] for c in IMPRESSIONS.names}
    cols[TS] = pa.array(ts_us, pa.int64()).cast(_TS)
    cols[DATE], cols[HOUR] = kept[DATE], kept[HOUR]
    cols[TS_SECONDS] = pa.array(ts_seconds, _INT64)
    for name, kind in DERIVED:
        cols[name] = pa.array(derived[name], _KIND_TYPES[kind])
    for name in USER_LABEL_COLUMNS:
        cols[name] = label_rows[name]
    cols[SPLIT] = _splits(kept[DATE], split_of)
    return pa.table(cols)


def _splits(dates: pa.ChunkedArray | pa.Array, split_of: dict[str, str]) -> pa.Array:
    """Each row's ETL split from its date (null for a date outside the window)."""
    return pa.array([split_of.get(d) for d in dates.to_pylist()], _STR)


def _quarantine(bad: pa.Table, reason: np.ndarray, column: np.ndarray) -> pa.Table:
    """Quarantined rows as Spark writes them: every contract column as its raw string."""
    cols = {c: bad[RAW_PREFIX + c] for c in IMPRESSIONS.names}
    cols.update({DATE: bad[DATE], HOUR: bad[HOUR], REASON: pa.array(reason.tolist(), _STR),
                 REASON_COLUMN: pa.array(column.tolist(), _STR)})
    return pa.table(cols)


def _counts(*parts: Sequence[pa.Array | pa.ChunkedArray]) -> list[tuple]:
    """``(date, hour, split, outcome, y_age_gender, n)`` per group (nulls form groups), as
    Python values: the Spark path's ``groupBy(...).count().collect()``."""
    keys = list("dhsoy")
    table = pa.table({k: pa.chunked_array([c for a in arrays for c in (
        a.chunks if isinstance(a, pa.ChunkedArray) else [a])], type=arrays[0].type)
        for k, arrays in zip(keys, parts)})
    grouped = table.group_by(keys).aggregate([([], "count_all")])
    return [(r["d"], int(r["h"]), r["s"], r["o"], r["y"], int(r["count_all"]))
            for r in grouped.to_pylist()]
