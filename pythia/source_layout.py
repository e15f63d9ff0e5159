"""Where a source's files are: the side files Spark skips, partition folder names, and the
impression folders a run cannot use (quarantine entries, never skipped silently).

Listing only (pyarrow filesystems, Parquet footers for row counts); nothing here reads rows.
``contract_read`` finds a table's files with it; ``source`` and ``etl`` report the entries.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Sequence

import pyarrow.fs as pafs

from pythia import storage
from pythia.parquet_footers import NotParquetError, footer_rows
from pythia.paths import join

IMPRESSIONS_DIR = "impressions"  # the impression table's folder under a source
HIVE_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"  # Hive's folder value for a null key


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


def scan_date(source: str, day: dt.date) -> tuple[dict[int, list[str]],
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


def top_entries(source: str) -> list[pafs.FileInfo]:
    """The entries directly under ``<source>/impressions/`` (side files left out), sorted."""
    fs, path = storage.filesystem(join(source, IMPRESSIONS_DIR))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise ValueError(f"no {IMPRESSIONS_DIR}/ folder under source {source!r}")
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted((i for i in infos if not is_side_file(i.base_name)), key=lambda i: i.path)


def _problem(folder: str, problem: str, files: list[str], count_rows: bool = True) -> dict:
    """A quarantine entry for a partition folder: its row count comes from Parquet footers
    (None without ``count_rows``: a footer read per file, minutes for a flat table on S3)."""
    if not count_rows:
        return {"folder": folder, "problem": problem, "files": len(files), "rows": None}
    rows, unreadable = 0, 0
    for f in files:
        try:
            rows += footer_rows(f)
        except NotParquetError:
            unreadable += 1
    if unreadable:
        problem += f"; {unreadable} file(s) not readable as Parquet"
    return {"folder": folder, "problem": problem, "files": len(files), "rows": rows}


def find_partition_problems(source: str, dates: Sequence[dt.date],
                            count_rows: bool = True) -> list[dict]:
    """Quarantine entries for the impression folders a run cannot use, sorted by folder.

    Listed: folders under ``impressions/`` whose name is not a valid ``date=YYYY-MM-DD``
    (wherever their date would fall), data files lying outside ``date=…/hour=…`` folders,
    and inside the window's ``dates``: ``hour=`` folders that do not parse (``hour=24``,
    ``hour=ab``, Hive's null partition) and files outside any ``hour=`` folder. Each entry is
    ``{"folder", "problem", "files", "rows"}`` (rows from the Parquet footers, None without
    ``count_rows``; no row is read).
    """
    wanted = set(dates)
    out = []
    for info in top_entries(source):
        uri = ("s3://" if storage.is_s3(source) else "") + info.path
        if info.type != pafs.FileType.Directory:
            out.append(_problem(uri, "file outside date=…/hour=… folders", [uri], count_rows))
            continue
        day, problem = parse_date_folder(info.base_name)
        if problem:
            out.append(_problem(uri, problem, list_data_files(uri), count_rows))
        elif day in wanted:
            _, bad = scan_date(source, day)
            out += [_problem(folder, p, files, count_rows) for folder, (p, files) in bad.items()]
    return sorted(out, key=lambda e: e["folder"])


def describe_partition_problem(entry: dict) -> str:
    """One log line for a ``find_partition_problems`` entry."""
    return (f"quarantined partition folder {entry['folder']}: {entry['problem']} "
            f"({entry['files']} file(s), {entry['rows']} row(s) not read)")


LAYOUT = "impressions/date=YYYY-MM-DD/hour=HH/, Parquet files in each hour folder"
REPARTITION = ("rewrite the table in it, the UTC date and hour of ts as the folders (with "
               "Spark: docs/data-contract.md, Partition folders)")
# A producer's table (flat, daily, dt=/hr=) rewritten in the contract's layout; rendered in
# docs/data-contract.md, run as written by tests/test_layout.py. SRC and OUT are the user's.
SPARK_REPARTITION = """\
from pyspark.sql import functions as F
spark.conf.set("spark.sql.session.timeZone", "UTC")  # date and hour of ts in UTC
table = spark.read.parquet(SRC)
table = table.drop(*[c for c in ("dt", "hr", "date", "hour") if c in table.columns])
(table.withColumn("date", F.date_format("ts", "yyyy-MM-dd")).withColumn("hour", F.hour("ts"))
 .write.partitionBy("date", "hour").parquet(OUT + "/impressions"))"""
_KEY_VALUE = re.compile(r"^([^=/]+)=(.*)$")
_DATE_VALUE = re.compile(r"^\d{4}-?\d{2}-?\d{2}$")  # 2026-11-20 or 20261120


def layout_problem(source: str, problems: Sequence[dict]) -> str | None:
    """What is wrong with the impressions' layout, when its ``find_partition_problems``
    entries show a whole producer's layout rather than a few stray folders: date folders
    under another key (``dt=2026-11-20``), files without partition folders, date folders
    without hour folders. One clause each, with an example; None when nothing matches."""
    root = join(source, IMPRESSIONS_DIR)
    other_key, loose, daily = [], [], []
    for e in problems:
        name = e["folder"].rstrip("/").rsplit("/", 1)[-1]
        kv = _KEY_VALUE.match(name)
        if e["problem"] == "file outside date=…/hour=… folders":
            loose.append(e)
        elif e["problem"].startswith("files outside an hour=HH folder"):
            daily.append(e)
        elif kv and kv.group(1) != "date" and _DATE_VALUE.match(kv.group(2)):
            other_key.append((e, kv.group(1)))
    parts = []
    if other_key:
        keys = sorted({k for _, k in other_key})
        first = other_key[0][0]["folder"]
        inner = _inner_keys(first)
        parts.append(f"{len(other_key)} date folder(s) are named {'/'.join(k + '=' for k in keys)}"
                     f", not date= (e.g. {first}"
                     + (f", holding {'/'.join(k + '=' for k in inner)} folders" if inner else "")
                     + ")")
    if loose:
        parts.append(f"{len(loose)} file(s) lie directly in {root}, outside any date folder "
                     f"(e.g. {loose[0]['folder']})")
    if daily:
        parts.append(f"{len(daily)} date folder(s) hold their files without hour=HH folders "
                     f"(daily partitions, e.g. {daily[0]['folder']})")
    if not parts:
        return None
    return "; ".join(parts) + f". The layout is {LAYOUT}: {REPARTITION}"


def _inner_keys(folder: str) -> list[str]:
    """The ``key=`` names of the folders directly under ``folder`` (e.g. ``hr``)."""
    fs, path = storage.filesystem(folder)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted({m.group(1) for i in infos if i.type == pafs.FileType.Directory
                   and (m := _KEY_VALUE.match(i.base_name))})
