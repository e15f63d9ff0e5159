"""``etl.splits.finalize_splits`` on the driver (pyarrow + NumPy, no JVM), for runs small enough.

Only the data movement differs from the Spark path: the power-user totals and threshold
(``splits.threshold_rule`` with Spark's exact quantile, ``spark_quantile``), the class counts,
mode, rates and manifest (``splits.plan`` / ``splits.finish``) are the same Python functions;
the keep decision is Spark's ``pmod(xxhash64(impression_id, seed), 2^53) / 2^53 < rate``
bit for bit (``keep_uniform``), and the four splits are written with the columns, order,
Parquet types and nullability Spark writes (``ts`` as INT96), since ``pythia.tfrecords``
(Spark) reads them. tests/test_join_local.py runs both paths on the same ETL outputs.
"""
from __future__ import annotations

import struct
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from pythia import contract
from pythia.config import EtlConfig
from pythia.etl import splits
from pythia.etl.activity import user_impressions_today
from pythia.etl.content_hash import SPARK_SEED
from pythia.etl.dedupe_local import read_dataset
from pythia.etl.hourly import OUTCOME, WRITTEN
from pythia.etl.io import write_arrow_atomic
from pythia.etl.quantile import rank_quantile
from pythia.features import (DATE, ETL_SPLIT_OF, HOUR, IMPRESSION_ID, IS_POWER_USER,
                             OUTPUT_SPLITS, SPLIT, USER_ID, USER_IMPRESSIONS_TODAY,
                             Y_AGE_GENDER)
from pythia.etl.splits import _HASH_BITS, RESAMPLED_SPLITS

_INT32_RANGE = (-(1 << 31), 1 << 31)
# columns Spark writes as non-nullable: literals (and coalesce with a literal)
_NOT_NULL = (SPLIT, IS_POWER_USER, USER_IMPRESSIONS_TODAY)


def keep_uniform(ids: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """``pmod(xxhash64(impression_id, lit(seed)), 2^53) / 2^53`` as Spark computes it: the id's
    UTF-8 bytes hashed from 42 (a null id skipped), then the seed literal (an int, or a long
    outside the int range) hashed as its little-endian bytes, as Spark's hashInt/hashLong."""
    lo, hi = _INT32_RANGE
    literal = struct.pack("<i" if lo <= seed < hi else "<q", seed)
    digest = xxhash.xxh64_intdigest
    hashes = [digest(literal, SPARK_SEED if v is None else digest(v, SPARK_SEED))
              for v in ids.cast(pa.binary()).to_pylist()]
    signed = np.array(hashes, dtype=np.uint64).view(np.int64)
    return (signed % (1 << _HASH_BITS)).astype(np.float64) / float(1 << _HASH_BITS)


def spark_quantile(values: np.ndarray, q: float) -> float | None:
    """``approxQuantile([q], 0.0)`` of Spark: the exact summary's element of rank
    ceil(q * n) (1-based), the minimum for q <= 0, the maximum for q >= 1; None for no values.
    The rule is ``etl.quantile.rank_quantile``'s, the Spark path's, on the values' histogram."""
    distinct, rows = np.unique(np.asarray(values, dtype=np.float64), return_counts=True)
    return rank_quantile(list(zip(distinct.tolist(), rows.tolist())), q)


def power_user_threshold(user_day_paths: Sequence[str], cfg: EtlConfig,
                         losers: pa.Table | None) -> tuple[pa.Table, float | None]:
    """``splits.power_user_threshold`` on the driver: the (user, date) totals (n > 0) less
    the written losers, and the threshold by the shared ``splits.threshold_rule``."""
    counts = read_dataset(list(user_day_paths)).select([USER_ID, DATE, "n"])
    counts = counts.set_column(2, "n", counts["n"].cast(pa.int64()))
    if losers is not None and losers.num_rows:
        lost = losers.group_by([USER_ID, DATE]).aggregate([([], "count_all")])
        counts = pa.concat_tables([counts, pa.table(
            [lost[USER_ID], lost[DATE], pc.negate(lost["count_all"])], schema=counts.schema)])
    totals = counts.group_by([USER_ID, DATE]).aggregate([("n", "sum")]).rename_columns(
        [USER_ID, DATE, "n"])
    totals = totals.filter(pc.greater(totals["n"], 0))
    n = totals["n"].to_numpy()
    return totals, splits.threshold_rule(cfg, lambda q: spark_quantile(n, q))


def finalize_splits(hour_manifests: Sequence[Mapping], cfg: EtlConfig, out_root,
                    duplicates: str | None = None) -> dict:
    """``splits.finalize_splits`` without Spark (same arguments but the session, same files
    and manifest)."""
    if not hour_manifests:
        raise ValueError("finalize_splits needs at least one hour manifest")
    splits._check_manifests(hour_manifests)
    uri_of = splits._out_uri(out_root)
    n_age = len(cfg.age_edges)
    losers = None
    if duplicates:
        losers = read_dataset([duplicates])
        losers = losers.filter(pc.equal(losers[OUTCOME], WRITTEN))
    totals, threshold = power_user_threshold(
        [m["user_day_counts_path"] for m in hour_manifests], cfg, losers)
    rows = read_dataset([m["rows_path"] for m in hour_manifests])
    order = rows.column_names
    if losers is not None:
        keys = [IMPRESSION_ID, DATE, HOUR]
        rows = rows.join(losers.select(keys), keys, join_type="left anti").select(order)
    # over every kept row: before any flag or sample (``etl.activity``)
    rows = rows.append_column(USER_IMPRESSIONS_TODAY,
                              pa.array(user_impressions_today(rows), pa.int64()))
    power = np.zeros(rows.num_rows, dtype=bool)
    if threshold is not None:
        over = totals.filter(pc.greater(totals["n"], threshold))
        marked = rows.select([USER_ID, DATE]).append_column(
            "_i", pa.array(np.arange(rows.num_rows), pa.int64())).join(
            over.select([USER_ID, DATE]), [USER_ID, DATE], join_type="left semi")
        power[marked["_i"].to_numpy()] = True
    flagged = rows.append_column(IS_POWER_USER, pa.array(power))
    split = flagged[SPLIT].to_numpy(zero_copy_only=False)
    y = flagged[Y_AGE_GENDER]
    before = _groups(flagged, [SPLIT, IS_POWER_USER, Y_AGE_GENDER])
    planned = splits.plan(before, cfg, n_age)
    rates = planned[-1]
    uniform = keep_uniform(flagged[IMPRESSION_ID], int(cfg.seed))
    keep = {}
    for out in RESAMPLED_SPLITS:
        rate = _rate_per_row(y, rates[out], cfg.resample_target, n_age)
        keep[out] = (split == ETL_SPLIT_OF[out]) & (uniform < rate)  # nan: not kept
    after = _groups(flagged.select([DATE, HOUR, SPLIT, IS_POWER_USER, Y_AGE_GENDER]).append_column(
        "_k0", pa.array(keep[RESAMPLED_SPLITS[0]])).append_column(
        "_k1", pa.array(keep[RESAMPLED_SPLITS[1]])).append_column(
        "_k2", pa.array(keep[RESAMPLED_SPLITS[2]])), None)
    paths = {}
    for out in OUTPUT_SPLITS:
        sel = split == ETL_SPLIT_OF[out]
        if out in RESAMPLED_SPLITS:
            if cfg.drop_power_users:
                sel = sel & ~power
            sel = sel & keep[out]
        paths[out] = write_arrow_atomic(_split_columns(flagged.filter(pa.array(sel)), out),
                                        uri_of(out), int96_timestamps=True)
    return splits.finish(after, planned, threshold, paths, cfg)


def _rate_per_row(y: pa.ChunkedArray, rates: Mapping[int, float], target: str, n_age: int
                  ) -> np.ndarray:
    """The keep-rate of each row's class of ``target`` (``splits.target_class`` of its
    AgeGender), NaN where the class has no rate or the row no AgeGender: Spark's null."""
    values = pc.unique(y).drop_null()
    table = np.array([rates.get(splits.target_class(v, target, n_age), np.nan)
                      for v in values.to_pylist()] + [np.nan], dtype=np.float64)
    where = pc.fill_null(pc.index_in(y, value_set=values), len(values))
    return table[where.to_numpy(zero_copy_only=False)]


def _groups(table: pa.Table, keys: Sequence[str] | None) -> list[tuple]:
    """``groupBy(keys).count().collect()`` as tuples (every column when ``keys`` is None)."""
    keys = list(keys or table.column_names)
    grouped = table.group_by(keys).aggregate([([], "count_all")])
    return [tuple(r[k] for k in keys) + (int(r["count_all"]),) for r in grouped.to_pylist()]


def _split_columns(part: pa.Table, out: str) -> pa.Table:
    """``splits._split_columns`` of the rows with split = ``out``: the columns of
    ``contract.SPLIT`` in order, their Arrow types, Spark's nullability."""
    part = part.set_column(part.column_names.index(SPLIT), SPLIT,
                           pa.array([out] * part.num_rows, pa.string()))
    fields = [pa.field(c.name, contract.ARROW_TYPES[c.type], nullable=c.name not in _NOT_NULL)
              for c in contract.SPLIT.columns]
    return pa.table([part[f.name].cast(f.type) for f in fields], schema=pa.schema(fields))
