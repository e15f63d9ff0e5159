"""Finding and reading contract tables: partition listing, Parquet footers, typed Spark reads.

This module knows the contract's folder layout and type names but none of its tables: every
reader takes a ``contract.TableSpec``. ``contract`` (schemas, validation) builds on it, never the
other way round, so the two cannot import each other.
"""
from __future__ import annotations

import datetime as dt
import re
import warnings
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pythia import storage
from pythia.features import DATE, HOUR
from pythia.paths import join

if TYPE_CHECKING:  # annotations only; contract imports this module
    from pythia.contract import TableSpec

RAW_PREFIX = "_raw_"  # normalised frames keep each contract column's original value as a string
IMPRESSIONS_DIR = "impressions"  # the impression table's folder under a source
PROVIDER = "provider"  # the labels' partition column (``provider=NAME`` folders)
DATE_RE = re.compile(r"date=(\d{4}-\d{2}-\d{2})(?:/|$)")
HOUR_RE = re.compile(r"hour=(\d{1,2})(?:/|$)")
PROVIDER_RE = re.compile(r"provider=([^/]+)(?:/|$)")
PARTITION_PATTERNS = {DATE: DATE_RE, HOUR: HOUR_RE, PROVIDER: PROVIDER_RE}

# contract type name (``ColumnSpec.type``) -> Spark SQL type
SPARK_TYPES = {"string": "string", "timestamp": "timestamp", "date": "date", "int32": "int",
               "int64": "bigint", "double": "double", "float32": "float", "bool": "boolean"}


# ------------------------------------------------------------------------------- listing

def _partition_of(uri: str) -> tuple[str, int] | None:
    d, h = DATE_RE.search(uri), HOUR_RE.search(uri)
    if not d or not h:
        return None
    return d.group(1), int(h.group(1))


def is_data_file(uri: str) -> bool:
    """False for Spark/Hadoop side files (``_SUCCESS``, ``.crc``, hidden temp files)."""
    base = uri.rstrip("/").rsplit("/", 1)[-1]
    return not (base.startswith("_") or base.startswith("."))


def list_partition_files(source: str, dates: Sequence[dt.date],
                         hours: Sequence[int]) -> dict[tuple[str, int], list[str]]:
    """Data files of each requested (date, hour) impression partition ([] when missing)."""
    found: dict[tuple[str, int], list[str]] = {
        (d.isoformat(), int(h)): [] for d in dates for h in hours}
    for d in dates:
        for uri in storage.list_files(join(source, IMPRESSIONS_DIR, f"date={d.isoformat()}")):
            part = _partition_of(uri)
            if part in found and is_data_file(uri):
                found[part].append(uri)
    return found


def check_partitions(source: str, dates: list[dt.date], hours: list[int],
                     allow_gaps: bool) -> list[str]:
    """Return the missing ``date=…/hour=…`` partitions; raise listing them unless allow_gaps."""
    found = list_partition_files(source, dates, hours)
    gaps = [f"date={d}/hour={h:02d}" for (d, h), files in sorted(found.items()) if not files]
    if gaps and not allow_gaps:
        raise ValueError(f"{len(gaps)} missing impression partition(s) under "
                         f"{join(source, IMPRESSIONS_DIR)}: {', '.join(gaps)} "
                         "(pass allow_gaps to run anyway)")
    return gaps


def list_dates(source: str) -> list[dt.date]:
    """Dates that have a ``date=YYYY-MM-DD`` folder under ``<source>/impressions/``, sorted."""
    fs, path = storage.filesystem(join(source, IMPRESSIONS_DIR))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise ValueError(f"no {IMPRESSIONS_DIR}/ folder under source {source!r}")
    out = []
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=False)):
        m = DATE_RE.search(info.path.rstrip("/") + "/")
        if info.type == pafs.FileType.Directory and m:
            out.append(dt.date.fromisoformat(m.group(1)))
    return sorted(out)


# ------------------------------------------------------------------------------- reading

_ARROW_TO_SPARK = {
    "string": "string", "large_string": "string", "int8": "tinyint", "int16": "smallint",
    "int32": "int", "int64": "bigint", "float": "float", "double": "double", "bool": "boolean",
    "date32[day]": "date",
}


_READABLE_TYPES = set(_ARROW_TO_SPARK.values()) | {"timestamp", "timestamp_ntz"}


def _spark_type_of(arrow_type: pa.DataType) -> str | None:
    if pa.types.is_timestamp(arrow_type):
        return "timestamp" if arrow_type.tz is not None else "timestamp_ntz"
    if pa.types.is_dictionary(arrow_type):
        return _spark_type_of(arrow_type.value_type)
    return _ARROW_TO_SPARK.get(str(arrow_type))


def inspect_files(files: Iterable[str], table: TableSpec) -> tuple[dict[tuple, list[str]],
                                                                   list[str]]:
    """Group files by the stored types of their contract columns; list unknown extra columns.

    Reads only Parquet footers (cheap). Raises ValueError naming a file that is not readable.
    """
    groups: dict[tuple, list[str]] = {}
    extras: set[str] = set()
    known = set(table.names) | {c.name for c in table.partition_columns}
    for uri in files:
        fs, path = storage.filesystem(uri)
        try:
            schema = pq.read_schema(path, filesystem=fs)
        except Exception as exc:  # pyarrow raises several types for corrupt/foreign files
            raise ValueError(f"cannot read Parquet file {uri}: {exc}") from exc
        key = tuple((f.name, _spark_type_of(f.type) or str(f.type))
                    for f in schema if f.name in table.names)
        extras.update(f.name for f in schema if f.name not in known)
        groups.setdefault(key, []).append(uri)
    return groups, sorted(extras)


def spark_uri(uri: str, spark: Any = None) -> str:
    """The path to hand Spark for ``uri``: ``s3a://`` for S3 when the session has the S3A
    connector; without it (local mode only) a local staged copy (``spark_s3.spark_read_path``).
    Without a session, the plain ``s3a://`` translation."""
    if spark is not None and storage.is_s3(uri):
        from pythia.spark_s3 import spark_read_path
        return spark_read_path(spark, uri)
    return "s3a://" + uri.split("://", 1)[1] if storage.is_s3(uri) else uri


def read_table(spark: Any, files: Sequence[str], table: TableSpec) -> tuple[Any, list[str]]:
    """Read ``files`` of ``table`` into one normalised Spark frame; also return extra columns.

    Files are read in groups of identical stored types with an explicit schema (no inference
    job), so a file with a column of the wrong type is read as stored and caught by the
    explicit cast in ``normalize``. Partition columns come from the file paths.
    """
    from pyspark.sql import functions as F

    groups, extras = inspect_files(files, table)
    if extras:
        warnings.warn(f"{table.name}: ignoring unknown column(s) {extras}", stacklevel=2)
    frames = []
    for key, group_files in sorted(groups.items()):
        types = dict(key)
        known = all(t in _READABLE_TYPES for t in types.values())
        reader = spark.read
        if known:
            reader = reader.schema(", ".join(f"`{n}` {t}" for n, t in key))
        sdf = reader.parquet(*[spark_uri(f, spark) for f in group_files])
        path = F.col("_metadata.file_path")
        parts = []
        for pc in table.partition_columns:
            val = F.regexp_extract(path, PARTITION_PATTERNS[pc.name].pattern, 1)
            parts.append((val.cast("int") if pc.type == "int32" else val).alias(pc.name))
        sdf = sdf.select(*[F.col(n) for n in types], *parts)
        frames.append(normalize(sdf, table))
    if not frames:
        return empty_normalized(spark, table), extras
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out, extras


def empty_normalized(spark: Any, table: TableSpec) -> Any:
    """An empty frame with the normalised schema of ``table`` (for runs with only gaps)."""
    from pyspark.sql import types as T

    fields = [T.StructField(c.name, spark_struct_type(c.type)) for c in table.columns]
    fields += [T.StructField(RAW_PREFIX + c.name, T.StringType()) for c in table.columns]
    fields += [T.StructField(c.name, spark_struct_type(c.type))
               for c in table.partition_columns]
    return spark.createDataFrame([], T.StructType(fields))


def spark_struct_type(name: str) -> Any:
    """The ``pyspark.sql.types`` instance of a contract type name (``ColumnSpec.type``)."""
    from pyspark.sql import types as T

    return {"string": T.StringType(), "timestamp": T.TimestampType(), "date": T.DateType(),
            "int32": T.IntegerType(), "int64": T.LongType(), "double": T.DoubleType(),
            "float32": T.FloatType(), "bool": T.BooleanType()}[name]


def normalize(sdf: Any, table: TableSpec) -> Any:
    """Contract columns cast to their types (null when not castable) + raw string copies.

    Columns missing from ``sdf`` become nulls (so a missing required column quarantines its
    rows as null_required); columns not in the contract are dropped here.
    """
    from pyspark.sql import functions as F

    dtypes = dict(sdf.dtypes)
    typed, raw = [], []
    for c in table.columns:
        target = SPARK_TYPES[c.type]
        if c.name not in dtypes:
            typed.append(F.lit(None).cast(target).alias(c.name))
            raw.append(F.lit(None).cast("string").alias(RAW_PREFIX + c.name))
            continue
        col, stored = F.col(f"`{c.name}`"), dtypes[c.name]
        if stored == target:
            typed.append(col.alias(c.name))
        elif c.type == "timestamp" and stored == "string":
            typed.append(F.try_to_timestamp(F.trim(col)).alias(c.name))
        elif c.type == "timestamp" and stored != "timestamp_ntz":
            # numbers are not instants in this contract: they are malformed timestamps
            typed.append(F.lit(None).cast("timestamp").alias(c.name))
        else:
            typed.append(col.try_cast(target).alias(c.name))
        raw.append(col.cast("string").alias(RAW_PREFIX + c.name))
    parts = [F.col(p.name) if p.name in dtypes else F.lit(None).cast(SPARK_TYPES[p.type])
             .alias(p.name) for p in table.partition_columns]
    return sdf.select(*typed, *raw, *parts)


def is_normalized(sdf: Any, table: TableSpec) -> bool:
    """True when ``sdf`` already holds ``normalize``'s raw string copies of every column."""
    return all(RAW_PREFIX + c.name in sdf.columns for c in table.columns)
