"""Finding and reading contract tables: partition listing, Parquet footers, typed Spark reads.

This module knows the contract's folder layout and type names but none of its tables: every
reader takes a ``contract.TableSpec``. ``contract`` (schemas, validation) builds on it, never the
other way round, so the two cannot import each other. Files are found the way Spark's own
readers find them (side files skipped); partition folders whose names do not parse are listed
as quarantine entries (``find_partition_problems``), never skipped silently.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import pyarrow.fs as pafs

from pythia import storage
from pythia.features import DATE, HOUR
from pythia.parquet_footers import NotParquetError, StoredColumn, footer_rows, read_footer
from pythia.paths import join

if TYPE_CHECKING:  # annotations only; contract imports this module
    from pythia.contract import TableSpec

RAW_PREFIX = "_raw_"  # normalised frames keep each contract column's original value as a string
IMPRESSIONS_DIR = "impressions"  # the impression table's folder under a source
PROVIDER = "provider"  # the labels' partition column (``provider=NAME`` folders)
HIVE_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"  # Hive's folder value for a null key
# Partition values from a file's path as Spark reports it (URI-encoded); the last match wins.
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

def is_side_file(name: str) -> bool:
    """Whether Spark's readers skip a file or folder of this name: ``_x`` (not ``_k=v``),
    ``.x`` (hidden, ``.crc`` checksums of Hadoop), ``*._COPYING_``, and any ``*.crc``."""
    return ((name.startswith("_") and "=" not in name) or name.startswith(".")
            or name.endswith(".crc") or name.endswith("._COPYING_"))


def _listing_prefix(uri: str) -> str:
    """The prefix ``storage.list_files(uri)`` puts before paths below ``uri``."""
    _, path = storage.filesystem(uri)
    return ("s3://" if storage.is_s3(uri) else "") + path.rstrip("/") + "/"


def is_data_file(uri: str, root: str | None = None) -> bool:
    """False for Spark/Hadoop side files (``_SUCCESS``, ``_committed_*``, ``.crc``, hidden
    files) and, when ``root`` is given, for files inside side folders below it (``_temporary/``,
    ``.hive-staging…/``)."""
    rel = uri.rstrip("/")
    prefix = _listing_prefix(root) if root else None
    if prefix and rel.startswith(prefix):
        parts = rel[len(prefix):].split("/")
    else:
        parts = [rel.rsplit("/", 1)[-1]]
    return not any(is_side_file(p) for p in parts)


def list_data_files(uri: str) -> list[str]:
    """Data files under ``uri`` (recursive), side files and side folders left out."""
    return [f for f in storage.list_files(uri) if is_data_file(f, uri)]


def parse_date_folder(name: str) -> tuple[dt.date | None, str | None]:
    """(date, None) for ``date=YYYY-MM-DD``; else (None, the problem in words)."""
    if not name.startswith("date="):
        return None, "not a date=YYYY-MM-DD folder"
    value = name[len("date="):]
    if value == HIVE_NULL_PARTITION:
        return None, "null date (Hive's default partition)"
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return None, f"date {value!r} is not YYYY-MM-DD"
    try:
        return dt.date.fromisoformat(value), None
    except ValueError as exc:
        return None, f"date {value!r} does not exist ({exc})"


def parse_hour_folder(name: str) -> tuple[int | None, str | None]:
    """(hour, None) for ``hour=H`` or ``hour=HH`` with 0 <= H <= 23; else (None, problem)."""
    if not name.startswith("hour="):
        return None, "not an hour=HH folder"
    value = name[len("hour="):]
    if value == HIVE_NULL_PARTITION:
        return None, "null hour (Hive's default partition)"
    if not re.fullmatch(r"\d{1,2}", value):
        return None, f"hour {value!r} is not a number 00..23"
    if int(value) > 23:
        return None, f"hour {value} is outside 00..23"
    return int(value), None


def _scan_date(source: str, day: dt.date) -> tuple[dict[int, list[str]],
                                                    dict[str, tuple[str, list[str]]]]:
    """Data files of one ``date=`` folder by hour, and its folders that do not parse
    (folder -> (problem, files)); files lying directly in the date folder count as one."""
    date_uri = join(source, IMPRESSIONS_DIR, f"date={day.isoformat()}")
    prefix = _listing_prefix(date_uri)
    by_hour: dict[int, list[str]] = {}
    bad: dict[str, tuple[str, list[str]]] = {}
    for uri in list_data_files(date_uri):
        parts = uri[len(prefix):].split("/") if uri.startswith(prefix) else [uri]
        if len(parts) == 1:
            bad.setdefault(date_uri, ("files outside an hour=HH folder", []))[1].append(uri)
            continue
        hour, problem = parse_hour_folder(parts[0])
        if problem:
            bad.setdefault(join(date_uri, parts[0]), (problem, []))[1].append(uri)
        else:
            by_hour.setdefault(hour, []).append(uri)
    return by_hour, bad


def list_partition_files(source: str, dates: Sequence[dt.date],
                         hours: Sequence[int]) -> dict[tuple[str, int], list[str]]:
    """Data files of each requested (date, hour) impression partition ([] when missing).

    ``hour=5`` and ``hour=05`` are the same partition; folders that do not parse are left to
    ``find_partition_problems``.
    """
    found: dict[tuple[str, int], list[str]] = {
        (d.isoformat(), int(h)): [] for d in dates for h in hours}
    for d in dates:
        by_hour, _ = _scan_date(source, d)
        for h in hours:
            found[(d.isoformat(), int(h))].extend(by_hour.get(int(h), []))
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


def _top_entries(source: str) -> list[pafs.FileInfo]:
    fs, path = storage.filesystem(join(source, IMPRESSIONS_DIR))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise ValueError(f"no {IMPRESSIONS_DIR}/ folder under source {source!r}")
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted((i for i in infos if not is_side_file(i.base_name)), key=lambda i: i.path)


def list_dates(source: str) -> list[dt.date]:
    """Dates that have a ``date=YYYY-MM-DD`` folder under ``<source>/impressions/``, sorted.

    Folders whose name does not parse are not dates; ``find_partition_problems`` lists them.
    """
    out = []
    for info in _top_entries(source):
        day, _ = parse_date_folder(info.base_name)
        if info.type == pafs.FileType.Directory and day is not None:
            out.append(day)
    return sorted(out)


def _problem(folder: str, problem: str, files: list[str]) -> dict:
    """A quarantine entry for a partition folder: its row count comes from Parquet footers."""
    rows, unreadable = 0, 0
    for f in files:
        try:
            rows += footer_rows(f)
        except NotParquetError:
            unreadable += 1
    if unreadable:
        problem += f"; {unreadable} file(s) not readable as Parquet"
    return {"folder": folder, "problem": problem, "files": len(files), "rows": rows}


def find_partition_problems(source: str, dates: Sequence[dt.date]) -> list[dict]:
    """Quarantine entries for the impression folders a run cannot use, sorted by folder.

    Listed: folders under ``impressions/`` whose name is not a valid ``date=YYYY-MM-DD``
    (wherever their date would fall), data files lying outside ``date=…/hour=…`` folders,
    and inside the window's ``dates``: ``hour=`` folders that do not parse (``hour=24``,
    ``hour=ab``, Hive's null partition) and files outside any ``hour=`` folder. Each entry is
    ``{"folder", "problem", "files", "rows"}`` (rows from the Parquet footers; no row is read).
    """
    wanted = set(dates)
    out = []
    for info in _top_entries(source):
        uri = ("s3://" if storage.is_s3(source) else "") + info.path
        if info.type != pafs.FileType.Directory:
            out.append(_problem(uri, "file outside date=…/hour=… folders", [uri]))
            continue
        day, problem = parse_date_folder(info.base_name)
        if problem:
            out.append(_problem(uri, problem, list_data_files(uri)))
        elif day in wanted:
            _, bad = _scan_date(source, day)
            out += [_problem(folder, p, files) for folder, (p, files) in bad.items()]
    return sorted(out, key=lambda e: e["folder"])


def describe_partition_problem(entry: dict) -> str:
    """One log line for a ``find_partition_problems`` entry."""
    return (f"quarantined partition folder {entry['folder']}: {entry['problem']} "
            f"({entry['files']} file(s), {entry['rows']} row(s) not read)")


# ------------------------------------------------------------------------------- reading

def _column_key(col: StoredColumn, uri: str, table: TableSpec) -> tuple[str, str, bool, bool]:
    if col.read_as is None:
        expected = table.column(col.name).type
        raise ValueError(f"{uri}: column {col.name!r} is stored as {col.stored}, which cannot "
                         f"be read as the contract's {expected} ({col.problem}); fix: write it "
                         f"as {expected} (see docs/data-contract.md), or move the file out of "
                         "the source")
    return col.name, col.read_as, col.nanos, col.naive


def inspect_files(files: Iterable[str], table: TableSpec) -> tuple[dict[tuple, list[str]],
                                                                   list[str]]:
    """Group files by how Spark must read their contract columns; list unknown extra columns.

    A group key holds ``(name, Spark read type, nanos, naive)`` per contract column present
    (all-null columns are left out: they read as absent). Reads only Parquet footers (cheap).
    Raises ValueError naming the file when it is not Parquet or a contract column's stored type
    cannot be read. pandas' index columns are neither contract nor extra columns.
    """
    groups: dict[tuple, list[str]] = {}
    extras: set[str] = set()
    known = set(table.names) | {c.name for c in table.partition_columns}
    for uri in files:
        columns, _ = read_footer(uri)
        key = tuple(_column_key(c, uri, table) for name, c in columns.items()
                    if name in table.names and not c.all_null)
        extras.update(n for n in columns if n not in known and not PANDAS_INDEX.fullmatch(n))
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
    for key, group_files in groups.items():
        for name, _, _, is_naive in key:
            if is_naive:
                naive[name] = naive.get(name, 0) + len(group_files)
    for name, n in sorted(naive.items()):
        print(f"note: {table.name}: {name} has no time zone in {n} file(s) (naive timestamp "
              "or INT96): read as UTC")


def _partition_value(pc: Any) -> Any:
    """A partition column's value from the path Spark reports for a row's file."""
    from pyspark.sql import functions as F

    val = F.regexp_extract(F.col("_metadata.file_path"), PARTITION_PATTERNS[pc.name], 1)
    if pc.type == "int32":
        return val.try_cast("int").alias(pc.name)
    # Spark reports the path URI-encoded: a provider folder "a b" arrives as "a%20b"
    return F.url_decode(F.regexp_replace(val, r"\+", "%2B")).alias(pc.name)


def read_table(spark: Any, files: Sequence[str], table: TableSpec) -> tuple[Any, list[str]]:
    """Read ``files`` of ``table`` into one normalised Spark frame; also return extra columns.

    Files are read in groups of identical stored types with an explicit schema (no inference
    job), so a file with a column of the wrong type is read as stored and caught by the
    explicit cast in ``normalize``. Nanosecond timestamps are read as integers and converted
    (Spark refuses them as timestamps). Partition columns come from the file paths. Extra
    columns and naive timestamps are printed to the step's log.
    """
    from pyspark.sql import functions as F

    groups, extras = inspect_files(files, table)
    _print_read_notes(table, groups, extras)
    frames = []
    for key, group_files in sorted(groups.items()):
        # a column absent from the files reads as null: it gives a file without any
        # contract column its row count
        schema = [f"`{n}` {t}" for n, t, _, _ in key] or [f"`{table.names[0]}` string"]
        sdf = spark.read.schema(", ".join(schema)).parquet(
            *[spark_uri(f, spark) for f in group_files])
        cols = [F.timestamp_micros(F.expr(f"`{n}` div 1000")).alias(n) if nanos
                else F.col(f"`{n}`") for n, _, nanos, _ in key]
        sdf = sdf.select(*cols, *[_partition_value(pc) for pc in table.partition_columns])
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
