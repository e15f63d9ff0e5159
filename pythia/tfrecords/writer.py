"""Spark side of the TFRecord conversion: fit encoders on train, write shards per split/region.

Nothing is collected to the driver but aggregates and shard metadata: vocabularies come from
Spark ``groupBy`` counts, and every executor encodes its own partitions (``mapInArrow``) and
writes its shards under temporary names, renamed (or uploaded) only once complete.
"""
from __future__ import annotations

import logging
import os
from typing import Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from pythia import features, storage
from pythia.config import DEFAULT_AGE_EDGES
from pythia.contract_read import spark_uri
from pythia.features import OUTPUT_SPLITS, TRAIN, Encoders, NumericStats, Vocabulary
from pythia.paths import join
from pythia.tfrecords import encode
from pythia.tfrecords.shards import SHARD_NAME, write_partition

log = logging.getLogger(__name__)

SPLITS = OUTPUT_SPLITS
COMPRESSIONS = (None, "GZIP")
MANIFEST_NAME = "manifest.json"
FEATURE_SPEC_NAME = "feature_spec.json"
ENCODERS_NAME = "encoders.json"
_SHARD_SCHEMA = "path string, region string, rows long, sha256 string"


def feature_spec() -> dict:
    """The TFRecord schema, derived from ``features.FEATURES`` (written as feature_spec.json).

    ``tfrecord`` maps every key of an Example to its dtype; every feature holds one value.
    """
    dtypes = {f.name: ("int64" if f.kind == features.CATEGORICAL else "float32")
              for f in features.FEATURES}
    dtypes.update({c: "int64" for c in encode.LABEL_COLUMNS})
    dtypes[encode.ID_COLUMN] = "string"
    return {
        "spec_version": features.spec_version(),
        "spec": features.spec_document(),
        "tfrecord": {k: {"dtype": v, "shape": []} for k, v in dtypes.items()},
        "label_columns": dict(features.LABEL_COLUMNS),
        "id_column": encode.ID_COLUMN,
    }


# ---------------------------------------------------------------- encoders

def fit_encoders(spark: SparkSession, train_sdf: DataFrame,
                 age_edges: Sequence[int] = DEFAULT_AGE_EDGES) -> Encoders:
    """Vocabularies and numeric statistics from the TRAIN split only.

    Counts are Spark aggregations (one ``groupBy(feature, value)`` over all categoricals);
    only the kept values (``min_count``/``max_vocab`` of each Feature) reach the driver, and
    ``features.Vocabulary.fit`` makes the final, deterministic choice.

    Args:
        spark: the session (kept for symmetry with the other Spark entry points).
        train_sdf: the train split (split Parquet schema).
        age_edges: age bucket edges recorded in the encoders.

    Raises:
        ValueError: a feature column is missing, or the train split is empty.
    """
    del spark  # the DataFrame carries its session
    missing = [n for n in features.FEATURE_NAMES if n not in train_sdf.columns]
    if missing:
        raise ValueError(f"train split lacks feature column(s) {missing} "
                         f"(has {sorted(train_sdf.columns)})")
    stats = train_sdf.agg(F.count(F.lit(1)).alias("n"), *[
        agg(F.when(~F.isnan(F.col(n).cast("double")), F.col(n).cast("double"))).alias(f"{n}__{k}")
        for n in features.NUMERIC_FEATURES
        for k, agg in (("mean", F.mean), ("std", F.stddev_pop))]).first()
    if not stats["n"]:
        raise ValueError("the train split has no rows: cannot fit vocabularies or statistics")
    numeric = {}
    for n in features.NUMERIC_FEATURES:
        mean, std = stats[f"{n}__mean"], stats[f"{n}__std"]
        if mean is None:
            log.warning("numeric feature %s has no finite value in train; using mean 0, std 1", n)
            mean, std = 0.0, 1.0
        numeric[n] = NumericStats(float(mean), float(std))

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
    vocabularies = {f.name: Vocabulary.fit(by_feature[f.name], f.min_count, f.max_vocab)
                    for f in cats}
    return Encoders(vocabularies, numeric, tuple(age_edges))


# ---------------------------------------------------------------- Spark jobs

_SHARD_ARROW_SCHEMA = pa.schema([("path", pa.string()), ("region", pa.string()),
                                 ("rows", pa.int64()), ("sha256", pa.string())])
BATCH_ROWS = 10_000  # rows per Arrow batch read from a Parquet row group
MAX_FILE_TASKS = 512  # Spark tasks for the file path (units are spread over them)


def _partition_job(encoders: Encoders, split_uri: str, split: str, shard_rows: int,
                   compression: str | None):
    """``mapInArrow`` over the split's rows: a closure with only small, picklable state."""
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext
        task = TaskContext.get().partitionId()
        shards = write_partition(batches, encoders, split_uri, split, task, shard_rows,
                                 compression)
        yield pa.RecordBatch.from_pylist(shards, schema=_SHARD_ARROW_SCHEMA)
    return run


def _read_row_group(uri: str, row_group: int) -> Iterator[pa.RecordBatch]:
    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as f:
        yield from pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, row_groups=[row_group],
                                                  columns=list(encode.INPUT_COLUMNS))


def _file_job(encoders: Encoders, split_uri: str, split: str, shard_rows: int,
              compression: str | None):
    """``mapInArrow`` over (unit, path, row_group) rows: each executor reads its own row groups
    with pyarrow, so the rows never pass through the JVM; the unit number names the shards."""
    def run(units: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        shards: list[dict] = []
        for batch in units:
            for unit, path, row_group in zip(*(batch.column(c).to_pylist()
                                               for c in ("unit", "path", "row_group"))):
                shards += write_partition(_read_row_group(path, row_group), encoders,
                                          split_uri, split, unit, shard_rows, compression)
        yield pa.RecordBatch.from_pylist(shards, schema=_SHARD_ARROW_SCHEMA)
    return run


def parquet_units(uri: str) -> list[tuple[str, int]]:
    """(file, row group) pairs of a Parquet dataset folder, sorted; reads footers only.

    Hidden and ``_``-prefixed files and folders (``_SUCCESS``, ``.tmp-*``) are skipped.

    Raises:
        ValueError: no Parquet file under ``uri``, or one lacks a needed column.
    """
    base = uri.rstrip("/")
    files = [f for f in storage.list_files(uri) if f.endswith(".parquet") and not any(
        part.startswith((".", "_")) for part in f[len(base):].split("/") if part)]
    if not files:
        raise ValueError(f"no Parquet files under {uri}")
    units = []
    for f in files:
        fs, path = storage.filesystem(f)
        with fs.open_input_file(path) as fh:
            meta = pq.ParquetFile(fh)
            encode.check_columns(meta.schema_arrow.names, f"Parquet file {f}")
            units += [(f, rg) for rg in range(meta.metadata.num_row_groups)]
    return units


def _finish_split(rows: list, split_uri: str, regions: Sequence[str]) -> dict:
    shards = sorted(({"path": r["path"], "region": r["region"], "rows": int(r["rows"]),
                      "sha256": r["sha256"]} for r in rows), key=lambda s: s["path"])
    by_region = {r: 0 for r in regions}
    for s in shards:
        by_region[s["region"]] = by_region.get(s["region"], 0) + s["rows"]
    _remove_unlisted(split_uri, {s["path"] for s in shards})
    return {"rows": sum(s["rows"] for s in shards),
            "rows_by_region": dict(sorted(by_region.items())), "shards": shards}


def _remove_unlisted(split_uri: str, keep: set[str]) -> None:
    """Delete stale shards and leftovers of killed writers that the new manifest does not list."""
    for uri in storage.list_files(split_uri):
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        if uri not in keep and (name.startswith(".tmp-") or SHARD_NAME.match(name)):
            fs, path = storage.filesystem(uri)
            fs.delete_file(path)


def _absolute(uri: str) -> str:
    """Local roots become absolute so the manifest's paths work from any working folder."""
    return uri if storage.is_s3(uri) else os.path.abspath(uri)


def _check_args(split: str, shard_rows: int, compression: str | None) -> None:
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")


def write_split(sdf: DataFrame, encoders: Encoders, out_uri: str, split: str,
                shard_rows: int = 200_000, compression: str | None = None,
                regions: Sequence[str] = ()) -> dict:
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

    Returns:
        ``{"rows": n, "rows_by_region": {region: n}, "shards": [{path, region, rows, sha256}]}``
        with shards sorted by path.
    """
    _check_args(split, shard_rows, compression)
    encode.check_columns(sdf.columns, f"split {split!r}")
    split_uri = join(_absolute(out_uri), f"split={split}")
    job = _partition_job(encoders, split_uri, split, shard_rows, compression)
    rows = sdf.select(*encode.INPUT_COLUMNS).mapInArrow(job, _SHARD_SCHEMA).collect()
    return _finish_split(rows, split_uri, regions)


def write_split_files(spark: SparkSession, parquet_uri: str, encoders: Encoders, out_uri: str,
                      split: str, shard_rows: int = 200_000, compression: str | None = None,
                      regions: Sequence[str] = ()) -> dict:
    """``write_split`` for a split stored as Parquet: Spark tasks read row groups themselves.

    The driver lists files and row groups (footers only) and hands them out as a tiny
    DataFrame; each task reads its row groups with pyarrow, encodes and writes shards named
    after the row group's rank (deterministic for the same files). Returns as ``write_split``.
    """
    _check_args(split, shard_rows, compression)
    units = parquet_units(parquet_uri)
    split_uri = join(_absolute(out_uri), f"split={split}")
    job = _file_job(encoders, split_uri, split, shard_rows, compression)
    table = spark.createDataFrame([(i, u, rg) for i, (u, rg) in enumerate(units)],
                                  "unit int, path string, row_group int")
    rows = (table.repartition(min(len(units), MAX_FILE_TASKS))
            .mapInArrow(job, _SHARD_SCHEMA).collect())
    return _finish_split(rows, split_uri, regions)


def convert_splits(spark: SparkSession, split_paths: Mapping[str, str], out_uri: str,
                   shard_rows: int = 200_000, compression: str | None = None,
                   age_edges: Sequence[int] = DEFAULT_AGE_EDGES) -> tuple[dict, Encoders]:
    """Fit encoders on train, write every split, then ``manifest.json`` last (atomically).

    Args:
        spark: the session.
        split_paths: split name -> split Parquet folder, for exactly ``SPLITS``.
        out_uri: the TFRecord root (``RunPaths.tfrecords``).
        shard_rows, compression: see ``write_split``.
        age_edges: recorded in the encoders.

    Returns:
        ``(manifest, encoders)``; the manifest is also at ``<out_uri>/manifest.json``.
    """
    _check_args(TRAIN, shard_rows, compression)
    missing = [s for s in SPLITS if s not in split_paths]
    unknown = [s for s in split_paths if s not in SPLITS]
    if missing or unknown:
        raise ValueError(f"split_paths must name exactly {SPLITS}; missing {missing}, "
                         f"unknown {unknown}")
    out_uri = _absolute(out_uri)
    for s in SPLITS:
        parquet_units(split_paths[s])  # fail fast on a missing split or column
    encoders = fit_encoders(spark, spark.read.parquet(spark_uri(split_paths[TRAIN], spark)),
                            age_edges)
    spec_uri, enc_uri = join(out_uri, FEATURE_SPEC_NAME), join(out_uri, ENCODERS_NAME)
    storage.write_json_atomic(spec_uri, feature_spec())
    storage.write_json_atomic(enc_uri, encoders.to_json())
    splits = {s: write_split_files(spark, split_paths[s], encoders, out_uri, s, shard_rows,
                                   compression) for s in SPLITS}
    regions = sorted({r for entry in splits.values() for r in entry["rows_by_region"]})
    for entry in splits.values():
        entry["rows_by_region"] = {r: entry["rows_by_region"].get(r, 0) for r in regions}
    manifest = {
        "root": out_uri,
        "feature_spec": spec_uri,
        "encoders": enc_uri,
        "compression": compression,
        "spec_version": features.spec_version(),
        "splits": splits,
    }
    storage.write_json_atomic(join(out_uri, MANIFEST_NAME), manifest)
    return manifest, encoders


def read_manifest(out_uri: str) -> dict:
    """The manifest ``convert_splits`` wrote under ``out_uri``."""
    return storage.read_json(join(out_uri, MANIFEST_NAME))
