"""Finding and reading contract tables: partition listing, Parquet footers, typed Spark reads.

This module knows the contract's folder layout and type names but none of its tables: every
reader takes a ``contract.TableSpec``. ``contract`` (schemas, validation) builds on it, never the
other way round, so the two cannot import each other. Files are found the way Spark's own
readers find them (``source_layout``); Parquet footers (``parquet_footers``) decide how each
column is read.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple, Sequence

import pyarrow.fs as pafs

from pythia import storage
from pythia.features import DATE, HOUR
from pythia.parquet_footers import StoredColumn, read_footer
from pythia.paths import join
from pythia.source_layout import IMPRESSIONS_DIR, parse_date_folder, scan_date, top_entries

if TYPE_CHECKING:  # annotations only; contract imports this module
    from pythia.contract import TableSpec

RAW_PREFIX = "_raw_"  # normalised frames keep each contract column's original value as a string
PROVIDER = "provider"  # the labels' partition column (``provider=NAME`` folders)
# Partition values from a listed file's path; the last match wins.
PARTITION_PATTERNS = {DATE: r".*/date=(\d{4}-\d{2}-\d{2})/", HOUR: r".*/hour=(\d{1,2})/",
                      PROVIDER: r".*/provider=([^/]+)/"}
PANDAS_INDEX = re.compile(r"__index_level_\d+__")  # pandas' index, written beside the data

# contract type name (``ColumnSpec.type``) -> Spark SQL type
SPARK_TYPES = {"string": "string", "timestamp": "timestamp", "date": "date", "int32": "int",
               "int64": "bigint", "double": "double", "float32": "float", "bool": "boolean"}
_INTEGER_TYPES = {"tinyint", "smallint", "int", "bigint"}
# an exact numeric type wide enough to tell 35.0 (accepted as 35) from 34.7 (wrong_type)
_FRACTION_CHECK_TYPE = "decimal(38,9)"


# ------------------------------------------------------------------------------- listing

def list_partition_files(source: str, dates: Sequence[dt.date],
                         hours: Sequence[int]) -> dict[tuple[str, int], list[str]]:
    """Data files of each requested (date, hour) impression partition ([] when missing).

    ``hour=5`` and ``hour=05`` are the same partition; folders that do not parse are left to
    ``find_partition_problems``.
    """
    found: dict[tuple[str, int], list[str]] = {
        (d.isoformat(), int(h)): [] for d in dates for h in hours}
    for d in dates:
        by_hour, _ = scan_date(source, d)
        for h in hours:
            found[(d.isoformat(), int(h))].extend(by_hour.get(int(h), []))
    return found


def check_partitions(source: str, dates: list[dt.date], hours: list[int],
                     allow_gaps: bool, found: dict | None = None) -> list[str]:
    """Return the missing ``date=…/hour=…`` partitions; raise listing them unless allow_gaps
    (``found``: ``list_partition_files`` of the same arguments, when the caller has it)."""
    found = list_partition_files(source, dates, hours) if found is None else found
    gaps = [f"date={d}/hour={h:02d}" for (d, h), files in sorted(found.items()) if not files]
    if gaps and not allow_gaps:  # start asks for every hour: days said as days
        text, whole = describe_gaps(gaps, 24) if len(hours) == 24 else (", ".join(gaps), [])
        if whole:  # whole days: the data is shorter than the window, not a few hours late
            held = list_dates(source)
            text += (f"; {len(whole)} whole day(s) missing: the window {dates[0]}..{dates[-1]} "
                     f"needs every day (3 train, 1 validation, 1 test), and the source has "
                     + (f"{len(held)} date(s), {held[0]}..{held[-1]}" if held else "none"))
        raise ValueError(f"{len(gaps)} missing impression partition(s) under "
                         f"{join(source, IMPRESSIONS_DIR)}: {text} "
                         "(pass allow_gaps to run anyway)")
    return gaps


def describe_gaps(gaps: list[str], hours_per_day: int) -> tuple[str, list[str]]:
    """Missing ``date=D/hour=HH`` partitions grouped by date: ``date=D (every hour)`` for a
    whole day, ``date=D/hour=01,02`` otherwise; and the whole days' dates."""
    by_date: dict[str, list[str]] = {}
    for gap in gaps:
        day, _, hour = gap.partition("/")
        by_date.setdefault(day, []).append(hour.removeprefix("hour="))
    whole = [d.removeprefix("date=") for d, hs in by_date.items() if len(hs) >= hours_per_day]
    return ", ".join(f"{d} (every hour)" if len(hs) >= hours_per_day else f"{d}/hour="
                     + ",".join(hs) for d, hs in by_date.items()), whole


def task_inputs(source: str, dates: Sequence[dt.date], hours: Sequence[int], allow_gaps: bool
                ) -> tuple[list[str], list[str]]:
    """(files, gaps) of an etl task's hours over ``dates``: the gaps as ``date=…/hour=HH``;
    without ``allow_gaps`` a gap raises (``check_partitions`` lists them all)."""
    found = list_partition_files(source, dates, hours)
    gaps = [f"date={d}/hour={h:02d}" for (d, h), fs in sorted(found.items()) if not fs]
    if gaps and not allow_gaps:
        check_partitions(source, list(dates), list(hours), allow_gaps=False)  # raises, listing
    return [f for _, fs in sorted(found.items()) for f in fs], gaps


def list_dates(source: str) -> list[dt.date]:
    """Dates that have a ``date=YYYY-MM-DD`` folder under ``<source>/impressions/``, sorted.

    Folders whose name does not parse are not dates; ``find_partition_problems`` lists them.
    """
    out = []
    for info in top_entries(source):
        day, _ = parse_date_folder(info.base_name)
        if info.type == pafs.FileType.Directory and day is not None:
            out.append(day)
    return sorted(out)




# ------------------------------------------------------------------------------- reading

class ReadColumn(NamedTuple):
    """How one contract column of a group of files is read (a part of a group key)."""

    name: str  # the contract's name
    read_as: str  # the Spark SQL type of the explicit read schema
    nanos: bool  # INT64 TIMESTAMP(NANOS): read as bigint, converted
    naive: bool  # no time zone (or INT96): taken as UTC
    stored: str  # the file's own name: the contract's, or the contract's but for case


def match_columns(names: Iterable[str], table: TableSpec, uri: str) -> dict[str, str]:
    """{file column: contract column} of the file's columns that name one, in file order.

    Names match as Spark SQL and Hive match them, case-blind (a Snowflake unload writes
    ``USER_ID``). Raises ValueError naming the file when two of its columns name the same
    contract column (``user_id`` and ``USER_ID``): Spark cannot tell them apart either."""
    by_lower = {n.lower(): n for n in table.names}
    found: dict[str, str] = {}
    claimed: dict[str, list[str]] = {}
    for name in names:
        contract_name = by_lower.get(name.lower())
        if contract_name is not None:
            found[name] = contract_name
            claimed.setdefault(contract_name, []).append(name)
    for contract_name, stored in claimed.items():
        if len(stored) > 1:
            raise ValueError(f"{uri}: columns {', '.join(map(repr, stored))} all name the "
                             f"contract column {contract_name} (names match case-blind, as in "
                             "Spark SQL and Hive); fix: drop or rename all but one in the "
                             "producer, or move the file out of the source")
    return found


def _column_key(col: StoredColumn, uri: str, table: TableSpec, name: str) -> ReadColumn:
    if col.read_as is None:
        expected = table.column(name).type
        raise ValueError(f"{uri}: column {col.name!r} is stored as {col.stored}, which cannot "
                         f"be read as the contract's {expected} ({col.problem}); fix: write it "
                         f"as {expected} (see docs/data-contract.md), or move the file out of "
                         "the source")
    return ReadColumn(name, col.read_as, col.nanos, col.naive, col.name)


def inspect_files(files: Iterable[str], table: TableSpec) -> tuple[dict[tuple, list[str]],
                                                                   list[str]]:
    """Group files by how Spark must read their contract columns; list unknown extra columns.

    A group key holds a ``ReadColumn`` per contract column present (all-null columns are left
    out: they read as absent), in the file's column order; a column named as the contract's
    but for case is that column (``match_columns``). Reads only Parquet footers (cheap).
    Raises ValueError naming the file when it is not Parquet, a contract column's stored type
    cannot be read, or two columns name one contract column. pandas' index columns are
    neither contract nor extra columns.
    """
    groups: dict[tuple, list[str]] = {}
    extras: set[str] = set()
    partitions = {c.name for c in table.partition_columns}
    for uri in files:
        columns, _ = read_footer(uri)
        named = match_columns(columns, table, uri)
        key = tuple(_column_key(columns[stored], uri, table, name)
                    for stored, name in named.items() if not columns[stored].all_null)
        extras.update(n for n in columns if n not in named and n not in partitions
                      and not PANDAS_INDEX.fullmatch(n))
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


def _print_read_notes(table: TableSpec, groups: dict[tuple, list[str]],
                      extras: list[str]) -> None:
    """What the step's log must say about a read (print: Metaflow silences warnings)."""
    if extras:
        print(f"note: {table.name}: ignoring column(s) not in the contract: "
              f"{', '.join(extras)}")
    naive: dict[str, int] = {}
    cased: dict[int, set[str]] = {}  # files -> the names read case-blind in that many
    for key, group_files in groups.items():
        for col in key:
            if col.naive:
                naive[col.name] = naive.get(col.name, 0) + len(group_files)
    for stored, n in _cased_names(groups).items():
        cased.setdefault(n, set()).add(stored)
    if cased:
        print(f"note: {table.name}: column(s) named as the contract's but for case, read "
              "case-blind as Spark SQL does: " + "; ".join(
                  f"{', '.join(sorted(names))} ({n} file(s))"
                  for n, names in sorted(cased.items(), reverse=True)))
    for name, n in sorted(naive.items()):
        print(f"note: {table.name}: {name} has no time zone in {n} file(s) (naive timestamp "
              "or INT96): read as UTC")


def _cased_names(groups: dict[tuple, list[str]]) -> dict[str, int]:
    """{a file's name for a contract column that differs from it by case: files so named}."""
    out: dict[str, int] = {}
    for key, group_files in groups.items():
        for col in key:
            if col.stored != col.name:
                out[col.stored] = out.get(col.stored, 0) + len(group_files)
    return out


def partition_values(uri: str, table: TableSpec) -> tuple:
    """The partition column values of a listed file, from its path (last match wins)."""
    out = []
    for pc in table.partition_columns:
        found = re.findall(PARTITION_PATTERNS[pc.name], uri)
        value = found[-1] if found else ""
        out.append((int(value) if value else None) if pc.type == "int32" else value)
    return tuple(out)


def _file_key(path: Any) -> Any:
    """The same string for a path handed to Spark and the path Spark reports for its rows
    (URI-encoded, ``file:`` scheme): decoded, local paths without the scheme."""
    from pyspark.sql import functions as F

    decoded = F.url_decode(F.regexp_replace(path, r"\+", "%2B"))
    return F.regexp_replace(decoded, r"^file:/+", "/")


def _with_partitions(spark: Any, sdf: Any, handed: dict[str, str], table: TableSpec) -> Any:
    """Add the partition columns to ``sdf`` from the listing (handed path -> listed URI).

    Values come from the listed URIs, not from where Spark read the file: an S3 file staged
    to a local folder (``spark_s3.spark_read_path``) keeps its ``date=``/``hour=`` values.
    """
    from pyspark.sql import functions as F

    if not table.partition_columns:
        return sdf
    types = ", ".join(f"`{pc.name}` {SPARK_TYPES[pc.type]}" for pc in table.partition_columns)
    mapping = spark.createDataFrame(
        [(re.sub(r"^file:/+", "/", path), *partition_values(uri, table))
         for path, uri in handed.items()], f"_file string, {types}")
    return (sdf.withColumn("_file", _file_key(F.col("_metadata.file_path")))
            .join(F.broadcast(mapping), "_file", "left").drop("_file"))


def read_table(spark: Any, files: Sequence[str], table: TableSpec,
               report: bool = True) -> tuple[Any, list[str]]:
    """Read ``files`` of ``table`` into one normalised Spark frame; also return extra columns.

    Files are read in groups of identical stored types with an explicit schema (no inference
    job), so a file with a column of the wrong type is read as stored and caught by the
    explicit cast in ``normalize``. Nanosecond timestamps are read as integers and converted
    (Spark refuses them as timestamps). Partition columns come from the listed paths. Extra
    columns and naive timestamps are printed to the step's log (``report=False``: a re-read of
    files a step already reported on).
    """
    from pyspark.sql import functions as F

    groups, extras = inspect_files(files, table)
    if report:
        _print_read_notes(table, groups, extras)
    frames = []
    for key, group_files in sorted(groups.items()):
        # a column absent from the files reads as null: it gives a file without any
        # contract column its row count
        schema = ([f"`{c.stored}` {c.read_as}" for c in key]
                  or [f"`{table.names[0]}` string"])
        handed = {spark_uri(f, spark): f for f in group_files}
        sdf = spark.read.schema(", ".join(schema)).parquet(*handed)
        sdf = _with_partitions(spark, sdf, handed, table)
        cols = [(F.timestamp_micros(F.expr(f"`{c.stored}` div 1000")) if c.nanos
                 else F.col(f"`{c.stored}`")).alias(c.name) for c in key]
        sdf = sdf.select(*cols, *[F.col(pc.name) for pc in table.partition_columns])
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


def _typed(col: Any, stored: str, contract_type: str) -> Any:
    """``col`` (stored as the Spark type ``stored``) cast to the contract type; null when it
    cannot be: a fraction is never truncated into an integer column (34.7 -> null, 35.0 -> 35).
    """
    from pyspark.sql import functions as F

    target = SPARK_TYPES[contract_type]
    if stored == target:
        return col
    if contract_type == "timestamp":
        if stored == "string":
            return F.try_to_timestamp(F.trim(col))
        if stored == "timestamp_ntz":
            return col.try_cast(target)  # the session is UTC: a naive value is taken as UTC
        return F.lit(None).cast(target)  # numbers are not instants in this contract
    if target in _INTEGER_TYPES and stored not in _INTEGER_TYPES:
        exact = (F.trim(col) if stored == "string" else col).try_cast(_FRACTION_CHECK_TYPE)
        return F.when(exact == F.floor(exact), exact.try_cast(target))
    return col.try_cast(target)


def normalize(sdf: Any, table: TableSpec) -> Any:
    """Contract columns cast to their types (null when not castable) + raw string copies.

    Columns missing from ``sdf`` become nulls (so a missing required column quarantines its
    rows as null_required); columns not in the contract are dropped here.
    """
    from pyspark.sql import functions as F

    dtypes = dict(sdf.dtypes)
    typed, raw = [], []
    for c in table.columns:
        if c.name not in dtypes:
            typed.append(F.lit(None).cast(SPARK_TYPES[c.type]).alias(c.name))
            raw.append(F.lit(None).cast("string").alias(RAW_PREFIX + c.name))
            continue
        col = F.col(f"`{c.name}`")
        typed.append(_typed(col, dtypes[c.name], c.type).alias(c.name))
        raw.append(col.cast("string").alias(RAW_PREFIX + c.name))
    parts = [F.col(p.name) if p.name in dtypes else F.lit(None).cast(SPARK_TYPES[p.type])
             .alias(p.name) for p in table.partition_columns]
    return sdf.select(*typed, *raw, *parts)


def is_normalized(sdf: Any, table: TableSpec) -> bool:
    """True when ``sdf`` already holds ``normalize``'s raw string copies of every column."""
    return all(RAW_PREFIX + c.name in sdf.columns for c in table.columns)
