"""Spark side of the TFRecord conversion: fit encoders on train, write shards per split/region.

Nothing is collected to the driver but aggregates and shard metadata: vocabularies come from
Spark ``groupBy`` counts, and every executor encodes its own partitions (``mapInArrow``) and
writes its shards under temporary names, renamed (or uploaded) only once complete.
"""
from __future__ import annotations

import json
from typing import Iterator, Mapping, Sequence

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from pythia import features
from pythia.config import DEFAULT_AGE_EDGES
from pythia.contract_read import spark_uri
from pythia.features import Encoders
from pythia.paths import join
from pythia.tfrecords import encode, layout
from pythia.tfrecords.layout import (COMPRESSIONS, ENCODERS_NAME, FEATURE_SPEC_NAME,
                                     MANIFEST_NAME, SPLITS, feature_spec, parquet_units,
                                     read_manifest)
from pythia.tfrecords.shards import write_partition

_SHARD_SCHEMA = "path string, region string, rows long, sha256 string"


# ---------------------------------------------------------------- encoders

_MOMENTS_SCHEMA = "feature string, n long, sums string, squares string"


def _moments_job(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """One partition's ``layout.moments`` per numeric feature (floats as exact JSON reprs),
    and its row count under the feature name ''."""
    acc = {n: layout.NO_MOMENTS for n in features.NUMERIC_FEATURES}
    rows = 0
    for batch in batches:
        rows += batch.num_rows
        for n in acc:
            acc[n] = layout.merge_moments(acc[n], layout.feature_moments(n, batch.column(n)))
    out = [{"feature": "", "n": rows, "sums": "[]", "squares": "[]"}]
    out += [{"feature": n, "n": m[0], "sums": json.dumps(m[1]), "squares": json.dumps(m[2])}
            for n, m in acc.items()]
    yield pa.RecordBatch.from_pylist(out, schema=pa.schema([
        ("feature", pa.string()), ("n", pa.int64()), ("sums", pa.string()),
        ("squares", pa.string())]))


def fit_encoders(spark: SparkSession, train_sdf: DataFrame,
                 age_edges: Sequence[int] = DEFAULT_AGE_EDGES) -> Encoders:
    """Vocabularies and numeric statistics from the TRAIN split only.

    Counts are Spark aggregations (one ``groupBy(feature, value)`` over all categoricals;
    exact sums of the numerics per partition, ``layout.moments``); only the kept categorical
    values (``min_count``/``max_vocab`` of each Feature) and a few floats per partition reach
    the driver, where ``layout.make_encoders`` makes the final, deterministic choice (as
    ``writer_local.fit_encoders`` does from pyarrow counts).

    Args:
        spark: the session (kept for symmetry with the other Spark entry points).
        train_sdf: the train split (split Parquet schema).
        age_edges: age bucket edges recorded in the encoders.

    Raises:
        ValueError: a feature column is missing, or the train split is empty.
    """
    del spark  # the DataFrame carries its session
    layout.check_train_columns(train_sdf.columns)
    cats = [f for f in features.FEATURES if f.kind == features.CATEGORICAL]
    pairs = F.explode(F.array(*[
        F.struct(F.lit(f.name).alias("feature"), F.col(f.name).cast("string").alias("value"))
        for f in cats]))
    counts = (train_sdf.select(pairs.alias("kv")).select("kv.feature", "kv.value")
              .where(F.col("value").isNotNull() & (F.col("value") != ""))
              .groupBy("feature", "value").count())
    min_count = F.lit(None)
    max_vocab = F.lit(None)
    for f in cats:
        min_count = F.when(F.col("feature") == f.name, F.lit(f.min_count)).otherwise(min_count)
        max_vocab = F.when(F.col("feature") == f.name, F.lit(f.max_vocab)).otherwise(max_vocab)
    # same order as Vocabulary.fit: count descending, then value (UTF-8 order == code points)
    rank = F.row_number().over(Window.partitionBy("feature")
                               .orderBy(F.col("count").desc(), F.col("value").asc()))
    kept = (counts.where(F.col("count") >= min_count)
            .withColumn("rank", rank).where(F.col("rank") <= max_vocab)
            .select("feature", "value", "count").collect())
    by_feature: dict[str, dict[str, int]] = {f.name: {} for f in cats}
    for row in kept:
        by_feature[row["feature"]][row["value"]] = int(row["count"])
    # numerics: exact sums per partition (layout.moments), merged exactly on the driver, so
    # the driver engine (writer_local) gets the same statistics to the last bit
    numeric = {n: layout.NO_MOMENTS for n in features.NUMERIC_FEATURES}
    rows = 0
    for row in (train_sdf.select(*[F.col(n).cast("double").alias(n)
                                   for n in features.NUMERIC_FEATURES])
                .mapInArrow(_moments_job, _MOMENTS_SCHEMA).collect()):
        if row["feature"] == "":
            rows += int(row["n"])
        else:
            got = (int(row["n"]), json.loads(row["sums"]), json.loads(row["squares"]))
            numeric[row["feature"]] = layout.merge_moments(numeric[row["feature"]], got)
    if not rows:
        raise ValueError(layout.EMPTY_TRAIN)
    return layout.make_encoders(by_feature, numeric, age_edges)


# ---------------------------------------------------------------- Spark jobs

_SHARD_ARROW_SCHEMA = pa.schema([("path", pa.string()), ("region", pa.string()),
                                 ("rows", pa.int64()), ("sha256", pa.string())])
MAX_FILE_TASKS = 512  # Spark tasks for the file path (units are spread over them)


def _partition_job(encoders: Encoders, split_uri: str, split: str, shard_rows: int,
                   compression: str | None, shuffle_seed: int | None):
    """``mapInArrow`` over the split's rows: a closure with only small, picklable state."""
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext
        task = TaskContext.get().partitionId()
        shards = write_partition(batches, encoders, split_uri, split, task, shard_rows,
                                 compression, shuffle_seed)
        yield pa.RecordBatch.from_pylist(shards, schema=_SHARD_ARROW_SCHEMA)
    return run


def _file_job(encoders: Encoders, split_uri: str, split: str, shard_rows: int,
              compression: str | None, shuffle_seed: int | None):
    """``mapInArrow`` over (unit, path, row_group, rows) rows: each executor reads its own row
    groups with pyarrow, so the rows never pass through the JVM; the unit number names the
    shards."""
    def run(units: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        shards: list[dict] = []
        for batch in units:
            for unit, path, row_group, rows in zip(*(
                    batch.column(c).to_pylist() for c in ("unit", "path", "row_group", "rows"))):
                shards += write_partition(layout.read_row_group(path, row_group), encoders,
                                          split_uri, split, unit, shard_rows, compression,
                                          shuffle_seed, rows)
        yield pa.RecordBatch.from_pylist(shards, schema=_SHARD_ARROW_SCHEMA)
    return run


def write_split(sdf: DataFrame, encoders: Encoders, out_uri: str, split: str,
                shard_rows: int = 200_000, compression: str | None = None,
                regions: Sequence[str] = (), shuffle_seed: int | None = None) -> dict:
    """Write one split as TFRecord shards ``<out>/split=<split>/region=<r>/part-<t>-<s>.tfrecord``.

    Each Spark task encodes its own partition (``mapInArrow``) and writes its own shards; only
    shard metadata comes back to the driver. Same input partitions -> same names and bytes.
    (``write_split_files`` does the same from Parquet files, faster: rows skip the JVM.)

    Args:
        sdf: the split (split Parquet schema).
        encoders: fitted on train (``fit_encoders``).
        out_uri: the TFRecord root (local folder or ``s3://`` prefix).
        split: split name (``SPLITS``), used in the folder name.
        shard_rows: most records per shard file.
        compression: None or 'GZIP'.
        regions: regions to report with 0 rows when absent from this split.
        shuffle_seed: None: each region's rows in partition order; else in the seeded order of
            ``permute`` per partition (bounded memory: spilled to local temporary files).

    Returns:
        ``{"rows": n, "rows_by_region": {region: n}, "shards": [{path, region, rows, sha256}]}``
        with shards sorted by path.
    """
    layout.check_args(split, shard_rows, compression)
    encode.check_columns(sdf.columns, f"split {split!r}")
    split_uri = join(layout.absolute(out_uri), f"split={split}")
    job = _partition_job(encoders, split_uri, split, shard_rows, compression, shuffle_seed)
    rows = sdf.select(*encode.INPUT_COLUMNS).mapInArrow(job, _SHARD_SCHEMA).collect()
    return layout.finish_split(rows, split_uri, regions)


def write_split_files(spark: SparkSession, parquet_uri: str, encoders: Encoders, out_uri: str,
                      split: str, shard_rows: int = 200_000, compression: str | None = None,
                      regions: Sequence[str] = (), shuffle_seed: int | None = None) -> dict:
    """``write_split`` for a split stored as Parquet: Spark tasks read row groups themselves.

    The driver lists files and row groups (footers only) and hands them out as a tiny
    DataFrame; each task reads its row groups with pyarrow, encodes and writes shards named
    after the row group's rank (deterministic for the same files). Returns as ``write_split``.
    """
    layout.check_args(split, shard_rows, compression)
    units, source = layout.parquet_source(parquet_uri)
    split_uri = join(layout.absolute(out_uri), f"split={split}")
    job = _file_job(encoders, split_uri, split, shard_rows, compression, shuffle_seed)
    table = spark.createDataFrame([(i, u, rg, n) for i, ((u, rg), n)
                                   in enumerate(zip(units, layout.unit_rows(source)))],
                                  "unit int, path string, row_group int, rows long")
    rows = (table.repartition(max(1, min(len(units), MAX_FILE_TASKS)))
            .mapInArrow(job, _SHARD_SCHEMA).collect())
    return layout.finish_split(rows, split_uri, regions, source)


def convert_splits(spark: SparkSession, split_paths: Mapping[str, str], out_uri: str,
                   shard_rows: int = 200_000, compression: str | None = None,
                   age_edges: Sequence[int] = DEFAULT_AGE_EDGES,
                   shuffle_seed: int | None = None) -> tuple[dict, Encoders]:
    """Fit encoders on train, write every split, then ``manifest.json`` last (atomically).

    Args:
        spark: the session.
        split_paths: split name -> split Parquet folder, for exactly ``SPLITS``.
        out_uri: the TFRecord root (``RunPaths.tfrecords``).
        shard_rows, compression: see ``write_split``.
        age_edges: recorded in the encoders.
        shuffle_seed: see ``write_split``; recorded in the manifest.

    Returns:
        ``(manifest, encoders)``; the manifest is also at ``<out_uri>/manifest.json``.
    """
    def fit(train_uri: str) -> Encoders:
        return fit_encoders(spark, spark.read.parquet(spark_uri(train_uri, spark)), age_edges)

    def write(parquet_uri: str, encoders: Encoders, out: str, split: str) -> dict:
        return write_split_files(spark, parquet_uri, encoders, out, split, shard_rows,
                                 compression, shuffle_seed=shuffle_seed)

    return layout.convert(split_paths, out_uri, shard_rows, compression, fit, write,
                          shuffle_seed)


__all__ = ["COMPRESSIONS", "ENCODERS_NAME", "FEATURE_SPEC_NAME", "MANIFEST_NAME", "SPLITS",
           "convert_splits", "feature_spec", "fit_encoders", "parquet_units", "read_manifest",
           "write_partition", "write_split", "write_split_files"]
