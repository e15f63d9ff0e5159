"""The input data contract: table schemas as data, partition checks, Spark validation + quarantine.

Every table a user points ``--source`` at is described once here (``TABLES``); the Markdown page
``docs/data-contract.md`` is rendered from it (``python -m pythia.contract``). Rows that break the
contract are never dropped: each goes to a quarantine frame with exactly one reason code.
"""
from __future__ import annotations

import datetime as dt
import re
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pythia import storage
from pythia.config import DEFAULT_AGE_EDGES
from pythia.features import GENDER_CLASSES, age_bucket_labels
from pythia.paths import join

# Reason codes, in the order they are checked: a row gets the first that applies.
NULL_REQUIRED = "null_required"
WRONG_TYPE = "wrong_type"
BAD_TIMESTAMP = "bad_timestamp"
OUT_OF_DOMAIN = "out_of_domain"
DUPLICATE_IMPRESSION_ID = "duplicate_impression_id"
REASONS = (NULL_REQUIRED, WRONG_TYPE, BAD_TIMESTAMP, OUT_OF_DOMAIN, DUPLICATE_IMPRESSION_ID)

# A row's ts may stray this far outside its hour partition (late/early flushes of the logger)
# and still be accepted; it must always lie inside the 5-day window.
TS_TOLERANCE_SECONDS = 300

RAW_PREFIX = "_raw_"  # normalised frames keep each contract column's original value as a string
DATE_RE = re.compile(r"date=(\d{4}-\d{2}-\d{2})(?:/|$)")
HOUR_RE = re.compile(r"hour=(\d{1,2})(?:/|$)")
PROVIDER_RE = re.compile(r"provider=([^/]+)(?:/|$)")
COUNTRY_PATTERN = r"^[A-Z]{2}$"


@dataclass(frozen=True)
class ColumnSpec:
    """One contract column: its type, whether it is required, and its allowed values."""

    name: str
    type: str  # string | timestamp | date | int32 | int64 | double | bool
    required: bool = False
    allowed: tuple[str, ...] | None = None  # closed set of values
    min_value: float | None = None  # inclusive range for numbers
    max_value: float | None = None
    pattern: str | None = None  # regular expression a string must match
    description: str = ""

    def domain_text(self) -> str:
        """The allowed values as one short human-readable string (for the docs)."""
        if self.allowed is not None:
            return ", ".join(f"`{a}`" for a in self.allowed)
        if self.min_value is not None or self.max_value is not None:
            return f"[{self.min_value}, {self.max_value}]"
        if self.pattern is not None:
            return f"matches `{self.pattern}`"
        return ""


@dataclass(frozen=True)
class TableSpec:
    """A contract table: where it lives under the source and its columns."""

    name: str
    layout: str
    columns: tuple[ColumnSpec, ...]
    partition_columns: tuple[ColumnSpec, ...] = ()
    notes: str = ""

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns + self.partition_columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name!r} has no column {name!r}")


_S = "string"
IMPRESSIONS = TableSpec(
    name="impressions",
    layout="impressions/date=YYYY-MM-DD/hour=HH/*.parquet",
    columns=(
        ColumnSpec("impression_id", _S, True, description="unique per impression"),
        ColumnSpec("user_id", _S, True, description="join key to labels"),
        ColumnSpec("ts", "timestamp", True,
                   description="UTC instant; must lie in its date/hour partition "
                               f"± {TS_TOLERANCE_SECONDS} s and inside the window"),
        ColumnSpec("country", _S, True, pattern=COUNTRY_PATTERN,
                   description="ISO-3166 alpha-2, upper case"),
        ColumnSpec("geo_region", _S), ColumnSpec("metro", _S), ColumnSpec("zip", _S),
        ColumnSpec("inventory_type", _S, True, allowed=("site", "app")),
        ColumnSpec("site_or_app", _S, True, description="site domain or app bundle"),
        ColumnSpec("content_category", _S), ColumnSpec("supply_vendor", _S),
        ColumnSpec("ad_format", _S, allowed=("banner", "video", "native", "audio")),
        ColumnSpec("ad_size", _S),
        ColumnSpec("device_type", _S, True, allowed=("mobile", "tablet", "desktop", "ctv")),
        ColumnSpec("device_make", _S), ColumnSpec("device_model", _S), ColumnSpec("os", _S),
        ColumnSpec("os_version", _S), ColumnSpec("browser", _S),
    ),
    partition_columns=(
        ColumnSpec("date", _S, True, description="from the folder name, YYYY-MM-DD"),
        ColumnSpec("hour", "int32", True, min_value=0, max_value=23,
                   description="from the folder name, 00..23"),
    ),
)

LABELS = TableSpec(
    name="labels",
    layout="labels/provider=NAME/*.parquet",
    columns=(
        ColumnSpec("user_id", _S, True),
        ColumnSpec("gender", _S, allowed=GENDER_CLASSES),
        ColumnSpec("age", "int32", description="years; used when present"),
        ColumnSpec("age_bucket", _S, allowed=age_bucket_labels(DEFAULT_AGE_EDGES),
                   description="used when age is null; allowed values follow the configured "
                               "age edges"),
        ColumnSpec("country", _S, True, pattern=COUNTRY_PATTERN),
        ColumnSpec("observed_date", "date", True),
    ),
    partition_columns=(ColumnSpec("provider", _S, True, description="from the folder name"),),
    notes="At least one of gender / age / age_bucket must be present (else null_required).",
)

PROVIDER_METRICS = TableSpec(
    name="provider_metrics",
    layout="provider_metrics/*.parquet",
    columns=(
        ColumnSpec("provider", _S, True), ColumnSpec("country", _S, True, pattern=COUNTRY_PATTERN),
        ColumnSpec("date", "date", True),
        ColumnSpec("coverage", "double", min_value=0.0, max_value=1.0),
        ColumnSpec("accuracy", "double", min_value=0.0, max_value=1.0),
        ColumnSpec("consistency", "double", min_value=0.0, max_value=1.0),
        ColumnSpec("n_labels", "int64", min_value=0),
    ),
)

# The ETL output (docs/interfaces.md "Split Parquet"); not validated, but its column order and
# types are pinned here so every writer produces the same schema.
SPLIT = TableSpec(
    name="split",
    layout="RunPaths.split(name)/*.parquet, name in train | validation | test_resampled | "
           "test_natural",
    columns=IMPRESSIONS.columns + (
        ColumnSpec("date", _S, True), ColumnSpec("hour", "int32", True),
        ColumnSpec("ts_seconds", "int64", True), ColumnSpec("local_hour", _S, True),
        ColumnSpec("local_dow", _S, True), ColumnSpec("hour_sin", "float32", True),
        ColumnSpec("hour_cos", "float32", True), ColumnSpec("region", _S, True),
        ColumnSpec("is_power_user", "bool", True), ColumnSpec("label_provider", _S, True),
        ColumnSpec("gender", _S, True, allowed=GENDER_CLASSES),
        ColumnSpec("age_bucket", _S, True), ColumnSpec("y_gender", "int32", True),
        ColumnSpec("y_age", "int32", True), ColumnSpec("y_age_gender", "int32", True),
        ColumnSpec("split", _S, True,
                   allowed=("train", "validation", "test_resampled", "test_natural")),
    ),
    notes="`split` holds the output split name (the test day appears as `test_resampled` and "
          "`test_natural`).",
)

TABLES: dict[str, TableSpec] = {t.name: t for t in (IMPRESSIONS, LABELS, PROVIDER_METRICS)}

_SPARK_TYPES = {"string": "string", "timestamp": "timestamp", "date": "date", "int32": "int",
                "int64": "bigint", "double": "double", "float32": "float", "bool": "boolean"}


# ------------------------------------------------------------------------------- documentation

_ARROW_TYPES = {"string": pa.string(), "timestamp": pa.timestamp("us", tz="UTC"),
                "date": pa.date32(), "int32": pa.int32(), "int64": pa.int64(),
                "double": pa.float64(), "bool": pa.bool_()}


def arrow_schema(table: TableSpec) -> pa.Schema:
    """The Parquet (Arrow) schema of a contract table's stored columns, in contract order."""
    return pa.schema([(c.name, _ARROW_TYPES[c.type]) for c in table.columns])


IMPRESSION_SCHEMA = arrow_schema(IMPRESSIONS)
LABEL_SCHEMA = arrow_schema(LABELS)
PROVIDER_METRICS_SCHEMA = arrow_schema(PROVIDER_METRICS)


def render_markdown() -> str:
    """The contract as Markdown; ``docs/data-contract.md`` is exactly this text."""
    out = [
        "# Input data contract",
        "",
        "Generated from `pythia/contract.py`, `pythia/providers.py` and `pythia/etl/splits.py` "
        "(`python -m pythia.contract > docs/data-contract.md`); edit the code, not this page.",
        "",
        "`source` is a local folder or an `s3://` prefix; both go through the same code path "
        "(Spark reads the files, `pythia.storage` lists them). Columns not listed here are "
        "ignored with a warning (and recorded in the ETL manifest). A file that cannot be read "
        "as Parquet stops the run with an error naming it. Missing hour partitions stop the run "
        "with an error listing them, unless `allow_gaps` (then they are recorded).",
        "",
        "## Quarantine reasons",
        "",
        "Each row breaking the contract is written to the run's quarantine table (Parquet under "
        "`RunPaths.quarantine`: the original columns as strings, plus `reason`, `reason_column`, "
        "and the partition columns). A row gets the first reason that applies:",
        "",
        f"1. `{NULL_REQUIRED}`: a required column is null or an empty string.",
        f"2. `{WRONG_TYPE}`: a value cannot be cast to the column's type (the raw Parquet is "
        "read as stored and cast explicitly).",
        f"3. `{BAD_TIMESTAMP}`: `ts` is malformed, lies outside its date/hour partition by more "
        f"than {TS_TOLERANCE_SECONDS} s, or lies outside the window (also: a partition outside "
        "the requested dates/hours).",
        f"4. `{OUT_OF_DOMAIN}`: a value outside the allowed set, range or pattern.",
        f"5. `{DUPLICATE_IMPRESSION_ID}`: an `impression_id` already seen among the valid rows "
        "of the same ETL task (all window days of its hours); the earliest by `ts` is kept "
        "(ties broken by a hash of the raw values, so the choice is deterministic).",
        "",
    ]
    for table in (IMPRESSIONS, LABELS, PROVIDER_METRICS, SPLIT):
        out += [f"## `{table.name}`", "", f"Layout: `{table.layout}`", ""]
        if table.notes:
            out += [table.notes, ""]
        out += ["| column | type | required | allowed | notes |", "|---|---|---|---|---|"]
        for c in table.columns + table.partition_columns:
            out.append(f"| `{c.name}` | {c.type} | {'yes' if c.required else ''} | "
                       f"{c.domain_text()} | {c.description} |")
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------- listing

def _partition_of(uri: str) -> tuple[str, int] | None:
    d, h = DATE_RE.search(uri), HOUR_RE.search(uri)
    if not d or not h:
        return None
    return d.group(1), int(h.group(1))


def _is_data_file(uri: str) -> bool:
    # Spark/Hadoop side files (_SUCCESS, .crc, hidden temp files) are not data.
    base = uri.rstrip("/").rsplit("/", 1)[-1]
    return not (base.startswith("_") or base.startswith("."))


def list_partition_files(source: str, dates: Sequence[dt.date],
                         hours: Sequence[int]) -> dict[tuple[str, int], list[str]]:
    """Data files of each requested (date, hour) impression partition ([] when missing)."""
    found: dict[tuple[str, int], list[str]] = {
        (d.isoformat(), int(h)): [] for d in dates for h in hours}
    for d in dates:
        for uri in storage.list_files(join(source, "impressions", f"date={d.isoformat()}")):
            part = _partition_of(uri)
            if part in found and _is_data_file(uri):
                found[part].append(uri)
    return found


def check_partitions(source: str, dates: list[dt.date], hours: list[int],
                     allow_gaps: bool) -> list[str]:
    """Return the missing ``date=…/hour=…`` partitions; raise listing them unless allow_gaps."""
    found = list_partition_files(source, dates, hours)
    gaps = [f"date={d}/hour={h:02d}" for (d, h), files in sorted(found.items()) if not files]
    if gaps and not allow_gaps:
        raise ValueError(f"{len(gaps)} missing impression partition(s) under "
                         f"{join(source, 'impressions')}: {', '.join(gaps)} "
                         "(pass allow_gaps to run anyway)")
    return gaps


def list_dates(source: str) -> list[dt.date]:
    """Dates that have a ``date=YYYY-MM-DD`` folder under ``<source>/impressions/``, sorted."""
    fs, path = storage.filesystem(join(source, "impressions"))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise ValueError(f"no impressions/ folder under source {source!r}")
    out = []
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=False)):
        m = DATE_RE.search(info.path.rstrip("/") + "/")
        if info.type == pafs.FileType.Directory and m:
            out.append(dt.date.fromisoformat(m.group(1)))
    return sorted(out)


def list_table_files(source: str, table: str) -> list[str]:
    """Data files of ``labels`` or ``provider_metrics`` under ``source`` (error if none)."""
    uri = join(source, TABLES[table].layout.split("/", 1)[0])
    files = [f for f in storage.list_files(uri) if _is_data_file(f)]
    if not files:
        raise ValueError(f"no {table} files under {uri}")
    return files


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
            pattern = {"date": DATE_RE, "hour": HOUR_RE, "provider": PROVIDER_RE}[pc.name].pattern
            val = F.regexp_extract(path, pattern, 1)
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

    fields = [T.StructField(c.name, _spark_struct_type(c.type)) for c in table.columns]
    fields += [T.StructField(RAW_PREFIX + c.name, T.StringType()) for c in table.columns]
    fields += [T.StructField(c.name, _spark_struct_type(c.type))
               for c in table.partition_columns]
    return spark.createDataFrame([], T.StructType(fields))


def _spark_struct_type(name: str) -> Any:
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
        target = _SPARK_TYPES[c.type]
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
    parts = [F.col(p.name) if p.name in dtypes else F.lit(None).cast(_SPARK_TYPES[p.type])
             .alias(p.name) for p in table.partition_columns]
    return sdf.select(*typed, *raw, *parts)


def _is_normalized(sdf: Any, table: TableSpec) -> bool:
    return all(RAW_PREFIX + c.name in sdf.columns for c in table.columns)


# ------------------------------------------------------------------------------- validation

def _rules(table: TableSpec) -> list[tuple[Any, str, str]]:
    """(condition, reason, column) triples in precedence order, for ordinary columns."""
    from pyspark.sql import functions as F

    rules: list[tuple[Any, str, str]] = []
    for c in table.columns:
        raw = F.col(RAW_PREFIX + c.name)
        if c.required:
            rules.append((raw.isNull() | (F.trim(raw) == ""), NULL_REQUIRED, c.name))
    for c in table.columns:
        if c.type != "timestamp":
            cond = F.col(RAW_PREFIX + c.name).isNotNull() & F.col(c.name).isNull()
            rules.append((cond, WRONG_TYPE, c.name))
    for c in table.columns:
        if c.type == "timestamp":
            cond = F.col(RAW_PREFIX + c.name).isNotNull() & F.col(c.name).isNull()
            rules.append((cond, BAD_TIMESTAMP, c.name))
    for c in table.columns:
        col = F.col(c.name)
        bad = None
        if c.allowed is not None:
            bad = ~col.isin(list(c.allowed))
        elif c.pattern is not None:
            bad = ~col.rlike(c.pattern)
        elif c.min_value is not None or c.max_value is not None:
            lo = col < c.min_value if c.min_value is not None else F.lit(False)
            hi = col > c.max_value if c.max_value is not None else F.lit(False)
            bad = lo | hi | F.isnan(col) if c.type == "double" else lo | hi
        if bad is not None:
            rules.append((col.isNotNull() & bad, OUT_OF_DOMAIN, c.name))
    return rules


def _apply_rules(sdf: Any, rules: list[tuple[Any, str, str]]) -> Any:
    from pyspark.sql import functions as F

    reason = column = None
    for cond, r, c in rules:
        reason = (F if reason is None else reason).when(cond, F.lit(r))
        column = (F if column is None else column).when(cond, F.lit(c))
    return sdf.withColumn("reason", reason).withColumn("reason_column", column)


def _split_valid(sdf: Any, table: TableSpec) -> tuple[Any, Any]:
    from pyspark.sql import functions as F

    valid = sdf.filter(F.col("reason").isNull()).select(
        *table.names, *[p.name for p in table.partition_columns])
    quarantine = sdf.filter(F.col("reason").isNotNull()).select(
        *[F.col(RAW_PREFIX + c.name).alias(c.name) for c in table.columns],
        *[F.col(p.name) for p in table.partition_columns], "reason", "reason_column")
    return valid, quarantine


def flag_impressions(sdf: Any, dates: Sequence[dt.date], hours: Sequence[int],
                     tolerance_seconds: int = TS_TOLERANCE_SECONDS) -> Any:
    """Normalised impressions with ``reason``/``reason_column`` (null when the row is valid)."""
    from pyspark.sql import Window as W
    from pyspark.sql import functions as F

    if not _is_normalized(sdf, IMPRESSIONS):
        sdf = normalize(sdf, IMPRESSIONS)
    if not dates:
        raise ValueError("validate_impressions needs at least one date")
    epoch = dt.date(1970, 1, 1)
    win_lo = (min(dates) - epoch).days * 86400
    win_hi = (max(dates) - epoch).days * 86400 + 86400
    part_start = (F.datediff(F.to_date(F.col("date")), F.lit(epoch)).cast("long") * 86400
                  + F.col("hour").cast("long") * 3600)
    ts_s = F.unix_seconds(F.col("ts"))
    outside = (~F.col("date").isin([d.isoformat() for d in dates])
               | ~F.col("hour").isin([int(h) for h in hours])
               | (ts_s < part_start - tolerance_seconds)
               | (ts_s >= part_start + 3600 + tolerance_seconds)
               | (ts_s < win_lo) | (ts_s >= win_hi))
    rules = _rules(IMPRESSIONS)
    first_domain = next(i for i, r in enumerate(rules) if r[1] == OUT_OF_DOMAIN)
    rules.insert(first_domain, (F.col("ts").isNotNull() & outside, BAD_TIMESTAMP, "ts"))
    flagged = _apply_rules(sdf, rules)
    # Duplicates compete only among otherwise-valid rows; the earliest ts wins, ties broken by
    # a hash of every raw value so the kept row never depends on file order (one hash key
    # sorts far faster than the 19 raw columns themselves).
    content = F.xxhash64(*[F.col(RAW_PREFIX + c.name) for c in IMPRESSIONS.columns])
    order = [F.col("ts").asc(), F.col("date").asc(), F.col("hour").asc(), content.asc()]
    w = W.partitionBy(F.col("impression_id"), F.col("reason").isNull()).orderBy(*order)
    rn = F.row_number().over(w)
    return (flagged.withColumn("_rn", rn)
            .withColumn("reason_column", F.when(F.col("reason").isNull() & (F.col("_rn") > 1),
                                                F.lit("impression_id"))
                        .otherwise(F.col("reason_column")))
            .withColumn("reason", F.when(F.col("reason").isNull() & (F.col("_rn") > 1),
                                         F.lit(DUPLICATE_IMPRESSION_ID))
                        .otherwise(F.col("reason")))
            .drop("_rn"))


def validate_impressions(sdf: Any, dates: Sequence[dt.date], hours: Sequence[int],
                         tolerance_seconds: int = TS_TOLERANCE_SECONDS) -> tuple[Any, Any]:
    """Split impressions into (valid typed rows, quarantined rows with a reason).

    ``sdf`` holds the contract columns (any stored types) and the partition columns ``date``
    (YYYY-MM-DD string) and ``hour`` (int). The window is ``min(dates)`` 00:00 UTC up to the
    day after ``max(dates)``.
    """
    return _split_valid(flag_impressions(sdf, dates, hours, tolerance_seconds), IMPRESSIONS)


def flag_labels(sdf: Any, age_edges: Sequence[int] = DEFAULT_AGE_EDGES) -> Any:
    """Normalised labels with ``reason``/``reason_column`` (null when the row is valid)."""
    from pyspark.sql import functions as F

    if not _is_normalized(sdf, LABELS):
        sdf = normalize(sdf, LABELS)
    rules = _rules(LABELS)
    # the allowed buckets follow the run's age edges, not the defaults
    rules = [(F.col("age_bucket").isNotNull() & ~F.col("age_bucket").isin(
        list(age_bucket_labels(age_edges))), r, c) if (r, c) == (OUT_OF_DOMAIN, "age_bucket")
             else (cond, r, c) for cond, r, c in rules]
    none_given = (F.col(RAW_PREFIX + "gender").isNull() & F.col(RAW_PREFIX + "age").isNull()
                  & F.col(RAW_PREFIX + "age_bucket").isNull())
    rules.insert(0, (none_given, NULL_REQUIRED, "gender|age|age_bucket"))
    return _apply_rules(sdf, rules)


def validate_labels(sdf: Any, age_edges: Sequence[int] = DEFAULT_AGE_EDGES) -> tuple[Any, Any]:
    """Split provider label rows into (valid typed rows, quarantined rows with a reason)."""
    return _split_valid(flag_labels(sdf, age_edges), LABELS)


def validate_provider_metrics(sdf: Any) -> tuple[Any, Any]:
    """Split provider metric rows into (valid typed rows, quarantined rows with a reason)."""
    if not _is_normalized(sdf, PROVIDER_METRICS):
        sdf = normalize(sdf, PROVIDER_METRICS)
    return _split_valid(_apply_rules(sdf, _rules(PROVIDER_METRICS)), PROVIDER_METRICS)


def count_by_reason(quarantine_rows: Iterable[Any]) -> dict[str, int]:
    """{reason: count} from collected (reason, count) rows, every reason code present."""
    out = {r: 0 for r in REASONS}
    for reason, n in quarantine_rows:
        out[reason] = out.get(reason, 0) + int(n)
    return out


def render_document() -> str:
    """The whole ``docs/data-contract.md``: the tables plus the provider, label and ETL rules."""
    from pythia import providers
    from pythia.etl import splits

    return "\n".join([render_markdown(), providers.rules_markdown(), splits.rules_markdown()])


if __name__ == "__main__":
    print(render_document())
