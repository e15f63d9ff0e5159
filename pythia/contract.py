"""The input data contract: table schemas as data, and Spark validation with quarantine.

Every table a user points ``--source`` at is described once here (``TABLES``), and so is the
ETL's output (``SPLIT``, built from ``features.SPLIT_COLUMN_TYPES``); ``pythia.docs`` renders
``docs/data-contract.md`` from them. Rows that break the contract are never dropped: each goes
to a quarantine frame with exactly one reason code. Finding and reading the files is
``pythia.contract_read``.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import pyarrow as pa

from pythia.config import DEFAULT_AGE_EDGES
from pythia.contract_read import PROVIDER, RAW_PREFIX, is_normalized, normalize
from pythia.features import SPLIT as SPLIT_COLUMN
from pythia.features import (AGE_BUCKET, COUNTRY, DATE, GENDER, GENDER_CLASSES, HOUR,
                             IMPRESSION_ID, OUTPUT_SPLITS, REGIONAL_FEATURES, SPLIT_COLUMN_TYPES,
                             TEST_NATURAL, TEST_RESAMPLED, TS, USER_ID, ZIP, age_bucket_labels)
from pythia.paths import join
from pythia.source_layout import list_data_files

# Reason codes, in the order they are checked: a row gets the first that applies.
NULL_REQUIRED = "null_required"
WRONG_TYPE = "wrong_type"
BAD_TIMESTAMP = "bad_timestamp"
OUT_OF_DOMAIN = "out_of_domain"
DUPLICATE_IMPRESSION_ID = "duplicate_impression_id"
REASONS = (NULL_REQUIRED, WRONG_TYPE, BAD_TIMESTAMP, OUT_OF_DOMAIN, DUPLICATE_IMPRESSION_ID)
REASON, REASON_COLUMN = "reason", "reason_column"  # the quarantine frame's two extra columns

# A row's ts may stray this far outside its hour partition (late/early flushes of the logger)
# and still be accepted; it must always lie inside the 5-day window.
TS_TOLERANCE_SECONDS = 300

COUNTRY_PATTERN = r"^[A-Z]{2}$"

# ``gender`` values providers send for a user of no known class: valid label values (not
# quarantined) that make no class, so the label is incomplete (rejected and counted).
GENDER_NO_CLASS = {"U": "unknown", "O": "other, OpenRTB user.gender's third value"}
AGE, YOB = "age", "yob"  # the labels' age in years, and year of birth (OpenRTB user.yob)
LABEL_VALUES = (GENDER, AGE, YOB, AGE_BUCKET)  # a label row needs one of them


@dataclass(frozen=True)
class ColumnSpec:
    """One contract column: its type, whether it is required, and its allowed values."""

    name: str
    type: str  # string | timestamp | date | int32 | int64 | double | float32 | bool
    required: bool = False
    allowed: tuple[str, ...] | None = None  # closed set of values
    min_value: float | None = None  # inclusive range for numbers
    max_value: float | None = None
    pattern: str | None = None  # regular expression a string must match
    description: str = ""


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
        ColumnSpec(IMPRESSION_ID, _S, True, description="unique per impression"),
        ColumnSpec(USER_ID, _S, True, description="join key to labels"),
        ColumnSpec(TS, "timestamp", True,
                   description="UTC instant; must lie in its date/hour partition "
                               f"± {TS_TOLERANCE_SECONDS} s and inside the window"),
        ColumnSpec(COUNTRY, _S, True, pattern=COUNTRY_PATTERN,
                   description="ISO-3166 alpha-2, upper case"),
        ColumnSpec("geo_region", _S), ColumnSpec("metro", _S), ColumnSpec(ZIP, _S),
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
        ColumnSpec(DATE, _S, True, description="from the folder name, YYYY-MM-DD"),
        ColumnSpec(HOUR, "int32", True, min_value=0, max_value=23,
                   description="from the folder name, 00..23"),
    ),
)

LABELS = TableSpec(
    name="labels",
    layout="labels/provider=NAME/*.parquet",
    columns=(
        ColumnSpec(USER_ID, _S, True),
        ColumnSpec(GENDER, _S, allowed=GENDER_CLASSES + tuple(GENDER_NO_CLASS),
                   description="; ".join(f"`{v}`: {what}" for v, what in GENDER_NO_CLASS.items())
                   + ": no gender (the label is incomplete, rejected and counted)"),
        ColumnSpec(AGE, "int32", description="years; used when present"),
        ColumnSpec(YOB, "int32", description="year of birth (OpenRTB `user.yob`); used when age "
                                             "is null"),
        ColumnSpec(AGE_BUCKET, _S, allowed=age_bucket_labels(DEFAULT_AGE_EDGES),
                   description="used when age is null; allowed values follow the configured "
                               "age edges"),
        ColumnSpec(COUNTRY, _S, True, pattern=COUNTRY_PATTERN),
        ColumnSpec("observed_date", "date", True),
    ),
    partition_columns=(ColumnSpec(PROVIDER, _S, True, description="from the folder name"),),
    notes="At least one of " + " / ".join(LABEL_VALUES) + " must be present (else "
          "null_required).",
)

PROVIDER_METRICS = TableSpec(
    name="provider_metrics",
    layout="provider_metrics/*.parquet",
    columns=(
        ColumnSpec(PROVIDER, _S, True), ColumnSpec(COUNTRY, _S, True, pattern=COUNTRY_PATTERN),
        ColumnSpec(DATE, "date", True),
        ColumnSpec("coverage", "double", min_value=0.0, max_value=1.0),
        ColumnSpec("accuracy", "double", min_value=0.0, max_value=1.0),
        ColumnSpec("consistency", "double", min_value=0.0, max_value=1.0),
        ColumnSpec("n_labels", "int64", min_value=0),
    ),
)

# The ETL output (docs/interfaces.md "Split Parquet"): the impression columns, then the columns
# and types of ``features.SPLIT_COLUMN_TYPES``. Not validated, but every writer casts to it.
_SPLIT_ALLOWED = {GENDER: GENDER_CLASSES, SPLIT_COLUMN: OUTPUT_SPLITS}
# a regional feature is null where its column is (``features.regional_values``)
_SPLIT_NULLABLE = {f.name: f"the row's region, a bar, `{f.of}` (`APAC\\|Apple`); null where "
                           f"`{f.of}` is" for f in REGIONAL_FEATURES}
SPLIT = TableSpec(
    name="split",
    layout="RunPaths.split(name)/*.parquet, name in " + " | ".join(OUTPUT_SPLITS),
    columns=IMPRESSIONS.columns + tuple(
        ColumnSpec(name, type_, name not in _SPLIT_NULLABLE, allowed=_SPLIT_ALLOWED.get(name),
                   description=_SPLIT_NULLABLE.get(name, ""))
        for name, type_ in SPLIT_COLUMN_TYPES.items()),
    notes=f"`{SPLIT_COLUMN}` holds the output split name (the test day appears as "
          f"`{TEST_RESAMPLED}` and `{TEST_NATURAL}`).",
)

TABLES: dict[str, TableSpec] = {t.name: t for t in (IMPRESSIONS, LABELS, PROVIDER_METRICS)}

# contract type name -> Arrow type
ARROW_TYPES = {"string": pa.string(), "timestamp": pa.timestamp("us", tz="UTC"),
               "date": pa.date32(), "int32": pa.int32(), "int64": pa.int64(),
               "double": pa.float64(), "float32": pa.float32(), "bool": pa.bool_()}


def arrow_schema(table: TableSpec) -> pa.Schema:
    """The Parquet (Arrow) schema of a contract table's stored columns, in contract order."""
    return pa.schema([(c.name, ARROW_TYPES[c.type]) for c in table.columns])


IMPRESSION_SCHEMA = arrow_schema(IMPRESSIONS)
# the labels as the synthetic world and the test sources write them: ages and buckets, no
# year of birth (a column some providers send; tests write it themselves)
LABEL_SCHEMA = pa.schema([f for f in arrow_schema(LABELS) if f.name != YOB])
PROVIDER_METRICS_SCHEMA = arrow_schema(PROVIDER_METRICS)
SPLIT_SCHEMA = arrow_schema(SPLIT)


def list_table_files(source: str, table: str) -> list[str]:
    """Data files of ``labels`` or ``provider_metrics`` under ``source`` (error if none)."""
    uri = join(source, TABLES[table].layout.split("/", 1)[0])
    files = list_data_files(uri)
    if not files:
        raise ValueError(f"no {table} files under {uri}")
    return files


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
    return sdf.withColumn(REASON, reason).withColumn(REASON_COLUMN, column)


def _split_valid(sdf: Any, table: TableSpec) -> tuple[Any, Any]:
    from pyspark.sql import functions as F

    valid = sdf.filter(F.col(REASON).isNull()).select(
        *table.names, *[p.name for p in table.partition_columns])
    quarantine = sdf.filter(F.col(REASON).isNotNull()).select(
        *[F.col(RAW_PREFIX + c.name).alias(c.name) for c in table.columns],
        *[F.col(p.name) for p in table.partition_columns], REASON, REASON_COLUMN)
    return valid, quarantine


def flag_impressions(sdf: Any, dates: Sequence[dt.date], hours: Sequence[int],
                     tolerance_seconds: int = TS_TOLERANCE_SECONDS) -> Any:
    """Normalised impressions with ``reason``/``reason_column`` (null when the row is valid)."""
    from pyspark.sql import Window as W
    from pyspark.sql import functions as F

    if not is_normalized(sdf, IMPRESSIONS):
        sdf = normalize(sdf, IMPRESSIONS)
    if not dates:
        raise ValueError("validate_impressions needs at least one date")
    epoch = dt.date(1970, 1, 1)
    win_lo = (min(dates) - epoch).days * 86400
    win_hi = (max(dates) - epoch).days * 86400 + 86400
    part_start = (F.datediff(F.to_date(F.col(DATE)), F.lit(epoch)).cast("long") * 86400
                  + F.col(HOUR).cast("long") * 3600)
    ts_s = F.unix_seconds(F.col(TS))
    outside = (~F.col(DATE).isin([d.isoformat() for d in dates])
               | ~F.col(HOUR).isin([int(h) for h in hours])
               | (ts_s < part_start - tolerance_seconds)
               | (ts_s >= part_start + 3600 + tolerance_seconds)
               | (ts_s < win_lo) | (ts_s >= win_hi))
    rules = _rules(IMPRESSIONS)
    first_domain = next(i for i, r in enumerate(rules) if r[1] == OUT_OF_DOMAIN)
    rules.insert(first_domain, (F.col(TS).isNotNull() & outside, BAD_TIMESTAMP, TS))
    flagged = _apply_rules(sdf, rules)
    # Duplicates compete only among otherwise-valid rows; the earliest ts wins, ties broken by
    # a hash of every raw value so the kept row never depends on file order (one hash key
    # sorts far faster than the 19 raw columns themselves).
    content = F.xxhash64(*[F.col(RAW_PREFIX + c.name) for c in IMPRESSIONS.columns])
    order = [F.col(TS).asc(), F.col(DATE).asc(), F.col(HOUR).asc(), content.asc()]
    w = W.partitionBy(F.col(IMPRESSION_ID), F.col(REASON).isNull()).orderBy(*order)
    rn = F.row_number().over(w)
    return (flagged.withColumn("_rn", rn)
            .withColumn(REASON_COLUMN, F.when(F.col(REASON).isNull() & (F.col("_rn") > 1),
                                                F.lit(IMPRESSION_ID))
                        .otherwise(F.col(REASON_COLUMN)))
            .withColumn(REASON, F.when(F.col(REASON).isNull() & (F.col("_rn") > 1),
                                         F.lit(DUPLICATE_IMPRESSION_ID))
                        .otherwise(F.col(REASON)))
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

    if not is_normalized(sdf, LABELS):
        sdf = normalize(sdf, LABELS)
    rules = _rules(LABELS)
    # the allowed buckets follow the run's age edges, not the defaults
    rules = [(F.col(AGE_BUCKET).isNotNull() & ~F.col(AGE_BUCKET).isin(
        list(age_bucket_labels(age_edges))), r, c) if (r, c) == (OUT_OF_DOMAIN, AGE_BUCKET)
             else (cond, r, c) for cond, r, c in rules]
    none_given = F.lit(True)
    for c in LABEL_VALUES:
        none_given = none_given & F.col(RAW_PREFIX + c).isNull()
    rules.insert(0, (none_given, NULL_REQUIRED, "|".join(LABEL_VALUES)))
    return _apply_rules(sdf, rules)


def validate_labels(sdf: Any, age_edges: Sequence[int] = DEFAULT_AGE_EDGES) -> tuple[Any, Any]:
    """Split provider label rows into (valid typed rows, quarantined rows with a reason)."""
    return _split_valid(flag_labels(sdf, age_edges), LABELS)


def validate_provider_metrics(sdf: Any) -> tuple[Any, Any]:
    """Split provider metric rows into (valid typed rows, quarantined rows with a reason)."""
    if not is_normalized(sdf, PROVIDER_METRICS):
        sdf = normalize(sdf, PROVIDER_METRICS)
    return _split_valid(_apply_rules(sdf, _rules(PROVIDER_METRICS)), PROVIDER_METRICS)


def count_by_reason(quarantine_rows: Iterable[Any]) -> dict[str, int]:
    """{reason: count} from collected (reason, count) rows, every reason code present."""
    out = {r: 0 for r in REASONS}
    for reason, n in quarantine_rows:
        out[reason] = out.get(reason, 0) + int(n)
    return out
