"""Spark and Py4J failures at a step's boundary, turned into one-line errors a user can act on.

Spark reports a damaged or unreadable input file as a JVM stack trace hundreds of lines long,
with the file and column buried inside. ``user_input_errors`` wraps a step's Spark work and
re-raises such failures as one line naming the file, the column and the fix; the original stays
attached as ``__cause__`` for whoever needs the trace. Nothing here imports pyspark eagerly.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import unquote

_ERROR_CLASS = re.compile(r"\[([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)\]\s*([^\n]*)")
_FILE = re.compile(r"((?:file|s3a?|hdfs|gs|abfss?|wasbs?):/+[^\s,;\]\[]+)")
_CHECKSUM_FILE = re.compile(r"Checksum error: (\S+) at \d+")
_JAVA_EXCEPTION = re.compile(r"^[:\s]*(?:[a-z0-9_]+\.)+([A-Za-z0-9_$]+(?:Exception|Error)): ")
_COLUMN = re.compile(r"column:? \[?`?([^\]\s`,]+)`?\]?")
_READING = re.compile(r"Encountered error while reading file \S+?\.(\s|$)")
_MAX_DETAIL = 240

# error-class prefix -> the fix to propose (first match wins)
_FIXES = (
    ("FAILED_READ_FILE.FILE_NOT_EXIST",
     "the file changed or disappeared while the step ran: let the writers of the source "
     "finish, then rerun"),
    ("FAILED_READ_FILE.PARQUET_COLUMN_DATA_TYPE_MISMATCH",
     "rewrite the column with a type docs/data-contract.md accepts, or move the file out of "
     "the source"),
    ("PARQUET_", "rewrite the column with a type docs/data-contract.md accepts, or move the "
                 "file out of the source"),
    ("FAILED_READ_FILE", "the file is damaged or not Parquet: rewrite it, or remove it / move "
                         "it out of the source"),
    ("CANNOT_READ_FILE_FOOTER", "the file is damaged or not Parquet: rewrite it, or remove it "
                                "/ move it out of the source"),
    ("PATH_NOT_FOUND", "the path does not exist (any more): check the source and rerun"),
)
_INPUT_CLASSES = tuple(prefix for prefix, _ in _FIXES)
_INPUT_MARKERS = ("FileNotFoundException", "ParquetDecodingException", "ChecksumException",
                  "SchemaColumnConvertNotSupportedException", "is not a Parquet file")


def is_spark_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from Spark (a PySpark error or a Py4J/JVM error)."""
    try:
        from py4j.protocol import Py4JError
    except ImportError:  # no pyspark here: nothing can be a Spark error
        return False
    from pyspark.errors import PySparkException
    return isinstance(exc, (Py4JError, PySparkException))


def _one_line(text: str) -> str:
    text = _READING.sub("", text.split("SQLSTATE")[0])  # the file is named separately
    text = re.sub(r"\s+", " ", text).strip().rstrip(".") or "Spark could not read it"
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL - 1] + "…"


def _user_path(spark_path: str) -> str:
    """A path as the user wrote it: ``file:///x`` -> ``/x``, ``s3a://`` -> ``s3://``, decoded."""
    path = unquote(spark_path.rstrip("."))
    if path.startswith("file:"):
        return "/" + path[len("file:"):].lstrip("/")
    return "s3://" + path[len("s3a://"):] if path.startswith("s3a://") else path


def file_in_text(text: str) -> str | None:
    """The first file a Spark error's text names with its scheme (``file:``, ``s3a:``, …),
    as the user writes it; None when it names none."""
    found = _FILE.search(text)
    return _user_path(found.group(1)) if found else None


def describe(exc: BaseException) -> dict:
    """The error class, file, column and a one-line detail found in a Spark error's text."""
    text = str(exc)
    found = _ERROR_CLASS.findall(text)
    # the most specific class: a file-reading one if any, else the first
    cls, detail = next(((c, d) for c, d in found if c.startswith(_INPUT_CLASSES)),
                       found[0] if found else ("", ""))
    if not detail:
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("\tat ")]
        detail = lines[-1] if lines else type(exc).__name__
    detail = _JAVA_EXCEPTION.sub(r"\1: ", detail)  # "…hadoop.fs.ChecksumException: x" -> short
    file = _FILE.search(detail) or _FILE.search(text) or _CHECKSUM_FILE.search(text)
    column = _COLUMN.search(detail) or _COLUMN.search(text)
    return {"error_class": cls, "file": _user_path(file.group(1)) if file else None,
            "column": column.group(1) if column else None, "detail": _one_line(detail)}


def translate(exc: BaseException, step: str) -> Exception:
    """A one-line ValueError for a Spark failure caused by an input file, else a one-line
    RuntimeError (a failure that is not about the input, e.g. a bug or lack of memory)."""
    d = describe(exc)
    text = str(exc)
    cls = d["error_class"]
    is_input = cls.startswith(_INPUT_CLASSES) or any(m in text for m in _INPUT_MARKERS)
    if not is_input:
        tag = f"[{cls}] " if cls else ""
        return RuntimeError(f"{step}: Spark failed: {tag}{d['detail']}")
    fix = next((f for prefix, f in _FIXES if cls.startswith(prefix)),
               "check the file against docs/data-contract.md, or move it out of the source")
    if "ChecksumException" in text and d["file"]:  # Hadoop verified a stale .crc side file
        folder, _, name = d["file"].rpartition("/")
        fix = (f"its Hadoop checksum file {folder}/.{name}.crc does not match it (the file "
               "was rewritten): remove that .crc file")
    where = d["file"] or "an input file (Spark did not name it)"
    column = f", column {d['column']}" if d["column"] else ""
    return ValueError(f"{step}: cannot read {where}{column}: {d['detail']} "
                      f"[{cls or 'read error'}]. Fix: {fix}")


@contextmanager
def user_input_errors(step: str) -> Iterator[None]:
    """Re-raise Spark/Py4J failures inside the block as one-line errors (cause kept)."""
    try:
        yield
    except Exception as exc:
        if not is_spark_error(exc):
            raise
        raise translate(exc, step) from exc
