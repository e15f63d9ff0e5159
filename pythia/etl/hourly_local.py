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

Memory is bounded by a batch (``ETL_BATCH_ROWS``), not by the task: the files are read in
batches up to three times (ids, then the repeated ids' rows, then everything to write) and each
output is appended a row group at a time (``io.ArrowDatasetWriter``), published at the end.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pythia import contract_local, contract_read, source_layout
from pythia.config import Geography, Window
from pythia.contract import IMPRESSIONS, REASON, REASON_COLUMN
from pythia.contract_read import RAW_PREFIX
from pythia.etl import impressions_local
from pythia.etl.content_hash import key_hashes, spark_xxhash64
from pythia.etl.hourly import (CONTENT_HASH, DERIVED, IDS_COLUMNS, OUTCOME, UNLABELLED,
                               WRITTEN, _hours_tag, build_manifest)
from pythia.etl.io import ArrowDatasetWriter
from pythia.features import (COUNTRY, DATE, GEO_REGION, HOUR, IMPRESSION_ID,
                             LABEL_PROVIDER, REGIONAL_FEATURES, SPLIT, TS,
                             TS_SECONDS, USER_ID, USER_LABEL_COLUMNS, Y_AGE_GENDER,
                             derive_batch)
from pythia.parquet_footers import footer_rows, read_footer
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


# The task's impressions are read ETL_BATCH_ROWS at a time, three times at most: pass 1 keeps
# an int64 hash of each valid row's impression id (8 bytes a row: the only state that grows
# with the task); when some hash repeats, pass 2 re-reads the rows of those ids (exact ids,
# ts, date, hour, content hash) and settles their duplicates as ``impressions_local.duplicates``
# does for the whole task; pass 3 derives, joins and writes each batch as a row group. At
# 32k rows a batch holds about one partition file of the default world (17.7k rows at 1x):
# peak RSS in session 28 (docs/scaling.md) is near-flat from 1x to 8x.
ETL_BATCH_ROWS = 32_768


def run_hours(source: str, hours: list[int], window: Window, labels_path: str, out_dir: str,
              quarantine_dir: str, geo: Geography, allow_gaps: bool) -> dict:
    """``hourly.run_hours`` without Spark (same arguments but the session, same outputs and
    manifest), in bounded memory (``ETL_BATCH_ROWS``). Raises ``contract_local.NeedsSpark``
    before writing anything when an input holds a stored type this path does not convert
    exactly."""
    hours = sorted(int(h) for h in hours)
    dates = window.dates
    files, gaps = contract_read.task_inputs(source, dates, hours, allow_gaps)
    batches, extras = impressions_local.iter_impressions(files, ETL_BATCH_ROWS)
    labels = read_labels(labels_path)
    repeated = _repeated_ids(batches(), dates, hours, sum(footer_rows(f) for f in files))
    losers = _settle(batches(), dates, hours, repeated) if len(repeated) else np.zeros(0, int)
    split_of = {d.isoformat(): window.split_of(d) for d in dates}
    out = {"rows": ArrowDatasetWriter(join(out_dir, "rows"), int96_timestamps=True),
           "quarantine": ArrowDatasetWriter(join(quarantine_dir, IMPRESSIONS.name,
                                                 _hours_tag(hours))),
           "user_days": ArrowDatasetWriter(join(out_dir, "user_day_counts"), _USER_DAYS),
           "ids": ArrowDatasetWriter(join(out_dir, "ids"), int96_timestamps=True)}
    try:
        counts = _write_batches(batches(), dates, hours, losers, labels, geo, split_of, out,
                                Counter(_date_of(f) for f in files))
        schema = [[f.name, SPARK_NAMES[f.type]] for f in out["rows"].schema]
        paths = {k: w.close() for k, w in out.items()}
    finally:
        for w in out.values():
            w.abort()
    return build_manifest(counts, window, hours, gaps, extras, schema, source, labels_path,
                          paths["rows"], paths["quarantine"], paths["user_days"], paths["ids"])


_USER_DAYS = pa.schema([(USER_ID, _STR), (DATE, _STR), pa.field("n", _INT64, nullable=False)])


def _valid(batch: pa.Table, dates: Sequence, hours: list[int]
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reason, reason column, indices of the rows no rule flags) of one batch."""
    reason, column = impressions_local.flag(batch, dates, hours)
    return reason, column, np.flatnonzero(np.equal(reason, None))


def _id_hashes(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash per impression id (equal ids, equal hashes; collisions are settled by
    ``_settle`` on the exact ids)."""
    return key_hashes(ids)


def _repeated_ids(batches: Iterator[tuple[str | None, pa.Table]], dates: Sequence,
                  hours: list[int], rows: int) -> np.ndarray:
    """Pass 1: the id hashes that more than one valid row of the task has, sorted (``rows``:
    the task's rows from the footers, so the hashes fill one array, sorted in place)."""
    hashes, at = np.empty(rows, np.int64), 0
    for _, batch in batches:
        _, _, valid = _valid(batch, dates, hours)
        if at + len(valid) > len(hashes):  # more rows than the footers said
            hashes = np.concatenate([hashes, np.empty(len(valid), np.int64)])
        hashes[at:at + len(valid)] = _id_hashes(batch[IMPRESSION_ID].take(valid))
        at += len(valid)
    hashes = hashes[:at]
    hashes.sort()
    return np.unique(hashes[1:][hashes[1:] == hashes[:-1]])


def _settle(batches: Iterator[tuple[str | None, pa.Table]], dates: Sequence, hours: list[int],
            repeated: np.ndarray) -> np.ndarray:
    """Pass 2: positions (among the task's valid rows, in read order) of the duplicates an
    earlier copy keeps, settled on the rows whose id hash repeats, in the whole task's order."""
    at, parts = 0, []
    for _, batch in batches:
        _, _, valid = _valid(batch, dates, hours)
        picked = np.flatnonzero(np.isin(_id_hashes(batch[IMPRESSION_ID].take(valid)), repeated))
        rows = batch.take(valid[picked])
        parts.append(pa.table({
            "at": pa.array(picked + at, pa.int64()), IMPRESSION_ID: rows[IMPRESSION_ID],
            TS: rows[TS], DATE: rows[DATE], HOUR: rows[HOUR],
            CONTENT_HASH: pa.array(spark_xxhash64([rows[RAW_PREFIX + c]
                                                   for c in IMPRESSIONS.names]), _INT64)}))
        at += len(valid)
    rows = pa.concat_tables(parts)
    dup = impressions_local.duplicates(rows[IMPRESSION_ID], rows[TS].to_numpy(), rows[DATE],
                                       rows[HOUR].to_numpy(), rows[CONTENT_HASH].to_numpy())
    return rows["at"].to_numpy()[dup]


def _write_batches(batches: Iterator[tuple[str | None, pa.Table]], dates: Sequence,
                   hours: list[int], losers: np.ndarray, labels: pa.Table, geo: Geography,
                   split_of: dict[str, str], out: dict[str, ArrowDatasetWriter],
                   files_per_date: dict[str, int]) -> list[tuple]:
    """Pass 3: each batch's rows/, ids/ and quarantine rows appended to ``out``; the
    manifest's counts summed over the batches, and the user-day counts over a date's files
    (written once its last file is read: ``files_per_date``). Returns the counts."""
    at, counts, user_days, left = 0, {}, UserDayCounts(out["user_days"]), dict(files_per_date)
    previous = None
    for uri, batch in batches:
        if uri != previous and previous is not None:
            user_days.file_done(previous, left)
        previous = uri
        reason, column, valid = _valid(batch, dates, hours)
        dup = np.isin(np.arange(at, at + len(valid)), losers)
        at += len(valid)
        reason[valid[dup]], column[valid[dup]] = impressions_local.DUPLICATE
        kept = batch if len(valid) == batch.num_rows and not dup.any() else batch.take(
            valid[~dup])
        hashes = spark_xxhash64([kept[RAW_PREFIX + c] for c in IMPRESSIONS.names])
        rows = _labelled(kept, kept[TS].to_numpy(), labels, geo, split_of)
        labelled = rows[LABEL_PROVIDER].is_valid()
        outcome = pc.if_else(labelled, WRITTEN, UNLABELLED)
        bad = np.flatnonzero(np.not_equal(reason, None))
        quarantine = _quarantine(batch.take(bad), reason[bad], column[bad])
        for key in _counts([rows[DATE], quarantine[DATE]], [rows[HOUR], quarantine[HOUR]],
                           [rows[SPLIT], _splits(quarantine[DATE], split_of)],
                           [outcome, quarantine[REASON]],
                           [rows[Y_AGE_GENDER], pa.nulls(len(bad), rows[Y_AGE_GENDER].type)],
                           [rows[COUNTRY], pa.nulls(len(bad), rows[COUNTRY].type)]):
            counts[key[:-1]] = counts.get(key[:-1], 0) + key[-1]
        written = rows.filter(labelled)
        out["rows"].write(written)
        out["quarantine"].write(quarantine)
        out["ids"].write(rows.append_column(CONTENT_HASH, pa.array(hashes, _INT64)).append_column(
            OUTCOME, outcome).select(list(IDS_COLUMNS)))
        user_days.add(uri, written)
    user_days.flush_all()
    return [(*key, n) for key, n in counts.items()]


class UserDayCounts:
    """Rows per (user, date) summed over batches, written to ``writer`` a date at a time: once
    the last file of a date is read its pairs are final, so what is held is about one date's
    pairs of the task (8x the default world: ~125k of 618k) plus COMPACT_ROWS."""

    COMPACT_ROWS = 200_000  # batch counts are summed once they exceed this many rows

    def __init__(self, writer: ArrowDatasetWriter):
        self.writer, self.parts = writer, {}

    def add(self, uri: str | None, written: pa.Table) -> None:
        parts = self.parts.setdefault(_date_of(uri), [])
        parts.append(written.group_by([USER_ID, DATE], use_threads=False).aggregate(
            [([], "count_all")]))
        if sum(t.num_rows for t in parts) > self.COMPACT_ROWS:
            parts[:] = [_sum_user_days(parts)]

    def file_done(self, uri: str, left: dict[str, int]) -> None:
        date = _date_of(uri)
        left[date] -= 1
        if not left[date]:
            self._write(self.parts.pop(date, []))

    def flush_all(self) -> None:
        for date in sorted(self.parts, key=str):
            self._write(self.parts.pop(date))

    def _write(self, parts: list[pa.Table]) -> None:
        if parts:
            total = _sum_user_days(parts)
            self.writer.write(pa.table([total[USER_ID], total[DATE], total["count_all"]],
                                       schema=_USER_DAYS))


def _date_of(uri: str | None) -> str | None:
    return None if uri is None else contract_read.partition_values(uri, IMPRESSIONS)[0]


def _sum_user_days(parts: list[pa.Table]) -> pa.Table:
    summed = pa.concat_tables(parts).group_by([USER_ID, DATE], use_threads=False).aggregate(
        [("count_all", "sum")])
    return pa.table({USER_ID: summed[USER_ID], DATE: summed[DATE],
                     "count_all": summed["count_all_sum"]})


def _labelled(kept: pa.Table, ts_us: np.ndarray, labels: pa.Table, geo: Geography,
              split_of: dict[str, str]) -> pa.Table:
    """The valid rows in the rows/ table's columns: contract columns, date, hour,
    ts_seconds, the derived features, the labels (null when the user has none), split."""
    ts_seconds = ts_us // 1_000_000
    derived = derive_batch({TS: ts_seconds,
                            COUNTRY: kept[COUNTRY].to_numpy(zero_copy_only=False),
                            GEO_REGION: kept[GEO_REGION].to_numpy(zero_copy_only=False),
                            **{f.of: kept[f.of].to_numpy(zero_copy_only=False)
                               for f in REGIONAL_FEATURES}}, geo)
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
    """``(date, hour, split, outcome, y_age_gender, country, n)`` per group (nulls form
    groups), as Python values: the Spark path's ``groupBy(...).count().collect()``."""
    keys = list("dhsoyc")
    table = pa.table({k: pa.chunked_array([c for a in arrays for c in (
        a.chunks if isinstance(a, pa.ChunkedArray) else [a])], type=arrays[0].type)
        for k, arrays in zip(keys, parts)})
    grouped = table.group_by(keys).aggregate([([], "count_all")])
    return [(r["d"], int(r["h"]), r["s"], r["o"], r["y"], r["c"], int(r["count_all"]))
            for r in grouped.to_pylist()]
