"""``etl.splits.finalize_splits`` on the driver (pyarrow + NumPy, no JVM), in bounded memory.

Only the data movement differs from the Spark path: the power-user totals and threshold
(``splits.threshold_rule`` with Spark's exact quantile, ``spark_quantile``), the class counts,
mode, rates and manifest (``splits.plan`` / ``splits.finish``) are the same Python functions;
the keep decision is Spark's ``pmod(xxhash64(impression_id, seed), 2^53) / 2^53 < rate``
bit for bit (``keep_uniform``), and the four splits are written with the columns, order,
Parquet types and nullability Spark writes (``ts`` as INT96), since ``pythia.tfrecords``
(Spark) reads them. tests/test_join_local.py runs both paths on the same ETL outputs.

Memory: a batch of ``BATCH_ROWS`` rows, one bucket of users (``BUCKET_ROWS``; more rows are
spilled to local disk as Arrow IPC by a hash of ``user_id``), and what grows with users, not
rows: the pairs (user, date) over the power-user threshold, and one int64 per (user, date)
for the threshold's quantile. The rows within a split file are in bucket order, not Spark's.
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pythia import buckets, contract
from pythia.config import EtlConfig
from pythia.etl import holdout, splits
from pythia.etl.activity import user_impressions_today
from pythia.etl.content_hash import keep_uniform
from pythia.etl.dedupe_local import BATCH_ROWS, dataset_rows, iter_dataset, read_dataset
from pythia.etl.hourly import OUTCOME, WRITTEN
from pythia.etl.io import ArrowDatasetWriter
from pythia.etl.quantile import rank_quantile
from pythia.features import (DATE, ETL_SPLIT_OF, HOUR, IMPRESSION_ID, IS_POWER_USER,
                             OUTPUT_SPLITS, SPLIT, TRAIN, USER_HELD_OUT, USER_ID,
                             USER_IMPRESSIONS_TODAY, Y_AGE_GENDER)
from pythia.etl.splits import RESAMPLED_SPLITS
from pythia.scratch import ScratchDir

# columns Spark writes as non-nullable: literals (and coalesce with a literal)
_NOT_NULL = (SPLIT, IS_POWER_USER, USER_IMPRESSIONS_TODAY, USER_HELD_OUT)
# Rows of a bucket of users, held whole while its users' counters are computed (~0.5 KB a
# row as Arrow): ceil(rows / BUCKET_ROWS) buckets by a hash of user_id; up to BUCKET_ROWS
# rows, one bucket kept in memory (no spill). Also the user-day counts' buckets.
BUCKET_ROWS = 2_000_000


def spark_quantile(values: np.ndarray, q: float) -> float | None:
    """``approxQuantile([q], 0.0)`` of Spark: the exact summary's element of rank
    ceil(q * n) (1-based), the minimum for q <= 0, the maximum for q >= 1; None for no values.
    The rule is ``etl.quantile.rank_quantile``'s, the Spark path's, on the values' histogram."""
    distinct, rows = np.unique(np.asarray(values, dtype=np.float64), return_counts=True)
    return rank_quantile(list(zip(distinct.tolist(), rows.tolist())), q)


class _Spill:
    """Tables by bucket of users (``pythia.buckets``: LZ4 Arrow IPC files in a private
    ``pythia.scratch`` folder, removed on exit), read back a bucket at a time; with one bucket
    the tables stay in memory (nothing to spill)."""

    def __init__(self, n: int, prefix: str):
        self.n, self._prefix, self._held = n, prefix, []

    def __enter__(self) -> "_Spill":
        self._folder = ScratchDir(self._prefix) if self.n > 1 else None
        self._writer = buckets.BucketWriter(self._folder.path, self.n) if self._folder else None
        return self

    def add(self, table: pa.Table) -> None:
        if self._writer is None:
            self._held.append(table)
        else:
            self._writer.write(table, buckets.bucket_of(table[USER_ID], self.n))

    def take(self, k: int, schema: pa.Schema) -> pa.Table:
        """Every row added to bucket ``k`` (in the order added); call after the last ``add``."""
        if self._writer is None:
            held, self._held = self._held, []
            return pa.concat_tables(held) if held else schema.empty_table()
        self._writer.close()
        table = buckets.read_bucket(self._folder.path, k)
        if table is not None:
            os.remove(buckets.bucket_path(self._folder.path, k))
        return table if table is not None else schema.empty_table()

    def __exit__(self, *exc: object) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            finally:
                self._folder.close()


def power_users(user_day_paths: Sequence[str], cfg: EtlConfig, losers: pa.Table | None
                ) -> tuple[pa.Table, float | None]:
    """``splits.power_user_threshold`` on the driver, streamed: the (user, date) totals (n > 0)
    of the tasks' counts less the written losers, summed a bucket of users at a time, and the
    threshold by the shared ``splits.threshold_rule``. Returns the (user_id, date) pairs over
    the threshold (the power users' days: a small table) and the threshold."""
    n_buckets = max(1, -(-dataset_rows(user_day_paths) // BUCKET_ROWS))
    keys = [USER_ID, DATE]
    schema = pa.schema([(USER_ID, pa.string()), (DATE, pa.string()), ("n", pa.int64())])
    totals = []
    with _Spill(n_buckets, "pythia-user-days-") as spill:
        for batch in iter_dataset(user_day_paths, BATCH_ROWS, [*keys, "n"]):
            spill.add(batch.set_column(2, "n", batch["n"].cast(pa.int64())).cast(schema))
        if losers is not None and losers.num_rows:
            lost = losers.group_by(keys).aggregate([([], "count_all")])
            spill.add(pa.table([lost[USER_ID], lost[DATE], pc.negate(lost["count_all"])],
                               schema=schema))
        for k in range(n_buckets):
            summed = spill.take(k, schema).group_by(keys).aggregate([("n", "sum")]
                                                                    ).rename_columns([*keys, "n"])
            totals.append(summed.filter(pc.greater(summed["n"], 0)))
    # the n of every (user, date) for the quantile; only the pairs over it are kept
    n = np.concatenate([t["n"].to_numpy() for t in totals]) if totals else np.zeros(0)
    threshold = splits.threshold_rule(cfg, lambda q: spark_quantile(n, q))
    over = [t.filter(pc.greater(t["n"], threshold)) for t in totals] \
        if threshold is not None else []
    return (pa.concat_tables(over) if over else schema.empty_table()), threshold


def finalize_splits(hour_manifests: Sequence[Mapping], cfg: EtlConfig, out_root,
                    duplicates: str | None = None) -> dict:
    """``splits.finalize_splits`` without Spark (same arguments but the session, same files
    and manifest), in bounded memory: the rows are read ``BATCH_ROWS`` at a time (pass 1:
    duplicates' losers out, the power-user flag, the class counts before resampling) and
    spilled by a hash of ``user_id`` into ceil(rows / ``BUCKET_ROWS``) buckets; pass 2 takes a
    bucket at a time (every row of its users: what ``user_impressions_today`` needs), draws
    the keep decisions and appends the rows to the four splits."""
    if not hour_manifests:
        raise ValueError("finalize_splits needs at least one hour manifest")
    splits._check_manifests(hour_manifests)
    uri_of = splits._out_uri(out_root)
    n_age = len(cfg.age_edges)
    losers = None
    if duplicates:
        losers = read_dataset([duplicates])
        losers = losers.filter(pc.equal(losers[OUTCOME], WRITTEN))
    over, threshold = power_users([m["user_day_counts_path"] for m in hour_manifests], cfg,
                                  losers)
    row_uris = [m["rows_path"] for m in hour_manifests]
    n_buckets = max(1, -(-dataset_rows(row_uris) // BUCKET_ROWS))
    writers = {out: ArrowDatasetWriter(uri_of(out), _split_schema(), int96_timestamps=True)
               for out in OUTPUT_SPLITS}
    before: Counter = Counter()
    after: Counter = Counter()
    held: Counter = Counter()  # rows the user split removes from train and validation
    try:
        with _Spill(n_buckets, "pythia-splits-") as spill:
            schema = None
            for batch in iter_dataset(row_uris, BATCH_ROWS):
                flagged, removed = holdout.local_split_off(
                    _flag(batch, losers, over, threshold), cfg)
                held.update(removed)
                schema = flagged.schema
                before.update(_groups(flagged, [SPLIT, IS_POWER_USER, Y_AGE_GENDER]))
                spill.add(flagged)
            planned = splits.plan([(*k, n) for k, n in before.items()], cfg, n_age)
            for k in range(n_buckets):
                rows = spill.take(k, schema)
                # over every kept row of these users: before any sample (``etl.activity``)
                rows = rows.append_column(USER_IMPRESSIONS_TODAY,
                                          pa.array(user_impressions_today(rows), pa.int64()))
                after.update(_write_bucket(rows, planned[-1], cfg, n_age, writers))
                del rows
        paths = {out: writer.close() for out, writer in writers.items()}
    finally:
        for writer in writers.values():
            writer.abort()
    return splits.finish([(*k, n) for k, n in after.items()], planned, threshold, paths, cfg,
                         [(*k, n) for k, n in held.items()])


def _flag(batch: pa.Table, losers: pa.Table | None, over: pa.Table,
          threshold: float | None) -> pa.Table:
    """A batch of rows without the duplicates' losers, with ``is_power_user`` (the row's
    (user, date) is over the threshold) and ``splits.CAP`` (threshold / the user-day's n on
    power users' rows, else 1: ``splits.power_user_cap``)."""
    order = batch.column_names
    if losers is not None:
        keys = [IMPRESSION_ID, DATE, HOUR]
        batch = batch.join(losers.select(keys), keys, join_type="left anti").select(order)
    power = np.zeros(batch.num_rows, dtype=bool)
    cap = np.ones(batch.num_rows, dtype=np.float64)
    if over.num_rows and batch.num_rows:
        marked = batch.select([USER_ID, DATE]).append_column(
            "_i", pa.array(np.arange(batch.num_rows), pa.int64())).join(
            over, [USER_ID, DATE], join_type="inner")
        i = marked["_i"].to_numpy()
        power[i] = True
        cap[i] = float(threshold) / marked["n"].to_numpy().astype(np.float64)
    return batch.append_column(IS_POWER_USER, pa.array(power)).append_column(
        splits.CAP, pa.array(cap))


def _write_bucket(rows: pa.Table, rates: Mapping, cfg: EtlConfig, n_age: int,
                  writers: Mapping[str, ArrowDatasetWriter]) -> Counter:
    """The keep decisions of a bucket's rows, its rows appended to each split's writer;
    returns the bucket's groups over (date, hour, split, is_power_user, y_age_gender, kept in
    each resampled split)."""
    split = rows[SPLIT].to_numpy(zero_copy_only=False)
    power = rows[IS_POWER_USER].to_numpy(zero_copy_only=False)
    y = rows[Y_AGE_GENDER]
    uniform = keep_uniform(rows[IMPRESSION_ID], int(cfg.seed))
    keep = {}
    for out in RESAMPLED_SPLITS:
        rate = _rate_per_row(y, rates[out], cfg.resample_target, n_age)
        if out == TRAIN and splits.caps_power_users(cfg):
            rate = rate * rows[splits.CAP].to_numpy()
        keep[out] = (split == ETL_SPLIT_OF[out]) & (uniform < rate)  # nan: not kept
    for out in OUTPUT_SPLITS:
        sel = split == ETL_SPLIT_OF[out]
        if out in RESAMPLED_SPLITS:
            if cfg.drop_power_users:
                sel = sel & ~power
            sel = sel & keep[out]
        writers[out].write(_split_columns(rows.filter(pa.array(sel)), out))
    table = rows.select([DATE, HOUR, SPLIT, IS_POWER_USER, Y_AGE_GENDER])
    for i, out in enumerate(RESAMPLED_SPLITS):
        table = table.append_column(f"_k{i}", pa.array(keep[out]))
    return Counter(_groups(table, None))


def _rate_per_row(y: pa.ChunkedArray, rates: Mapping[int, float], target: str, n_age: int
                  ) -> np.ndarray:
    """The keep-rate of each row's class of ``target`` (``splits.target_class`` of its
    AgeGender), NaN where the class has no rate or the row no AgeGender: Spark's null."""
    values = pc.unique(y).drop_null()
    table = np.array([rates.get(splits.target_class(v, target, n_age), np.nan)
                      for v in values.to_pylist()] + [np.nan], dtype=np.float64)
    where = pc.fill_null(pc.index_in(y, value_set=values), len(values))
    return table[where.to_numpy(zero_copy_only=False)]


def _groups(table: pa.Table, keys: Sequence[str] | None) -> dict[tuple, int]:
    """``groupBy(keys).count().collect()`` as {key tuple: rows} (every column when ``keys`` is
    None); buckets' groups add up (``Counter.update``)."""
    keys = list(keys or table.column_names)
    grouped = table.group_by(keys).aggregate([([], "count_all")])
    return {tuple(r[k] for k in keys): int(r["count_all"]) for r in grouped.to_pylist()}


def _split_schema() -> pa.Schema:
    """``contract.SPLIT``'s columns in order, their Arrow types, Spark's nullability."""
    return pa.schema([pa.field(c.name, contract.ARROW_TYPES[c.type],
                               nullable=c.name not in _NOT_NULL)
                      for c in contract.SPLIT.columns])


def _split_columns(part: pa.Table, out: str) -> pa.Table:
    """``splits._split_columns`` of the rows with split = ``out``: ``_split_schema``."""
    part = part.set_column(part.column_names.index(SPLIT), SPLIT,
                           pa.array([out] * part.num_rows, pa.string()))
    schema = _split_schema()
    return pa.table([part[f.name].cast(f.type) for f in schema], schema=schema)
