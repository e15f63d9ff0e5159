"""Contract tables small enough for the driver, read and validated with pyarrow + pandas.

The Spark reader (``contract_read.read_table``) and the rules of ``contract`` stay the reference:
this module gives the same typed values, raw strings, reason codes and reason columns for the
stored types it converts exactly (``LOCAL_CONVERSIONS``), and raises ``NeedsSpark`` for any
other, so a caller falls back to Spark instead of guessing. The rules are built from the same
``ColumnSpec`` fields in the same precedence as ``contract._rules``; tests/test_providers.py
runs both readers on the same files.
"""
from __future__ import annotations

import datetime as dt
import decimal
import re
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pythia import contract, contract_read, storage
from pythia.contract import (NULL_REQUIRED, OUT_OF_DOMAIN, REASON, REASON_COLUMN, WRONG_TYPE,
                             TableSpec)
from pythia.contract_read import RAW_PREFIX
from pythia.parquet_footers import iter_file_batches

_INTS = {"tinyint", "smallint", "int", "bigint"}
_FRACTIONS = {"float", "double"}
# contract type -> Spark read types (``StoredColumn.read_as``; "decimal" = any decimal(p,s))
# this module converts exactly as ``contract_read._typed`` does. A timestamp contract column
# (impressions' ts) is typed as integer microseconds since the epoch; stored as a number, a
# boolean or a date it is not an instant (null, so bad_timestamp) but keeps its raw string.
_INSTANTS = {"timestamp", "timestamp_ntz"}
LOCAL_CONVERSIONS = {
    "string": {"string", "boolean", "date"} | _INTS,
    "int32": {"string", "decimal"} | _INTS | _FRACTIONS,
    "int64": {"string", "decimal"} | _INTS | _FRACTIONS,
    "double": {"decimal"} | _INTS | _FRACTIONS,
    "date": {"date"} | _INSTANTS,
    "timestamp": {"boolean", "date"} | _INSTANTS | _INTS,
}
_INT_RANGE = {"int32": (-2**31, 2**31 - 1), "int64": (-2**63, 2**63 - 1)}
_DEC = decimal.Context(prec=200)
_NINE = decimal.Decimal("1e-9")  # contract_read._FRACTION_CHECK_TYPE: decimal(38,9)
_JAVA_DECIMAL = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_EPOCH = dt.datetime(1970, 1, 1)
# the instants whose text Spark and Python agree on: 0001-01-01 .. 9999-12-31 23:59:59.999999
_MIN_US, _MAX_US = -62_135_596_800 * 10**6, 253_402_300_800 * 10**6 - 1
_UNIT_US = {"s": 1_000_000, "ms": 1_000, "us": 1}


class NeedsSpark(ValueError):
    """The files hold a stored type this module does not convert exactly as Spark does."""


# ------------------------------------------------------------------------------- values

def _java_double(x: float, single: bool = False) -> str:
    """Spark's (Java's) string of a float/double: plain in [1e-3, 1e7), else d.dddE±n."""
    if np.isnan(x):
        return "NaN"
    if np.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    digits = str(np.float32(x)) if single else repr(float(x))
    if x == 0 or 1e-3 <= abs(x) < 1e7:
        text = format(decimal.Decimal(digits), "f")
        return text if "." in text else text + ".0"
    mant, _, exp = format(decimal.Decimal(digits), "E").partition("E")
    mant = mant.rstrip("0").rstrip(".") if "." in mant else mant
    return f"{mant if '.' in mant else mant + '.0'}E{int(exp)}"


def micros(arr: pa.Array, nanos_div: bool) -> tuple[np.ndarray, np.ndarray]:
    """(int64 microseconds since the epoch, validity) of a timestamp array: UTC, or the wall
    clock when naive.

    INT64 nanoseconds are divided as Spark's ``div`` does (toward zero); INT96 (read as
    microseconds, ``read_parquet``) is floored as Spark's INT96 reader does. NeedsSpark for an
    instant outside years 1..9999, whose text this module cannot give as Spark does."""
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    raw = arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    if arr.type.unit == "ns":
        us = raw // 1000
        if nanos_div:
            us = us + ((raw % 1000 != 0) & (raw < 0))
    else:
        scale = _UNIT_US[arr.type.unit]
        if valid.any() and not (_MIN_US // scale <= raw[valid].min()
                                and raw[valid].max() <= _MAX_US // scale):
            raise NeedsSpark("a timestamp outside years 1..9999")
        us = raw * scale
    us = np.where(valid, us, 0)
    if valid.any() and not (_MIN_US <= us.min() and us.max() <= _MAX_US):
        raise NeedsSpark("a timestamp outside years 1..9999")
    return us, valid


def timestamp_texts(us: np.ndarray, valid: np.ndarray) -> pa.Array:
    """Spark's string of each instant (``cast(ts as string)`` in a UTC session):
    ``yyyy-MM-dd HH:mm:ss`` and the microseconds without trailing zeros, if any."""
    secs = us // 1_000_000
    frac = us - secs * 1_000_000
    base = pa.array(secs, pa.timestamp("s"), mask=~valid).cast(pa.string())
    suffix = np.full(len(us), "", dtype=object)
    fractional = valid & (frac != 0)
    suffix[fractional] = [f".{f:06d}".rstrip("0") for f in frac[fractional].tolist()]
    return pc.binary_join_element_wise(base, pa.array(suffix, pa.string()), "")


def _integral(value: decimal.Decimal, kind: str) -> int | None:
    """contract_read._typed for integer targets: via decimal(38,9) (HALF_UP), whole or null."""
    if not value.is_finite():
        return None
    exact = value.quantize(_NINE, rounding=decimal.ROUND_HALF_UP, context=_DEC)
    if exact.adjusted() >= 29 or exact != exact.to_integral_value(context=_DEC):
        return None
    lo, hi = _INT_RANGE[kind]
    whole = int(exact)
    return whole if lo <= whole <= hi else None


def _string_to_int(text: str, kind: str) -> int | None:
    stripped = text.strip("".join(chr(i) for i in range(33)))
    if not _JAVA_DECIMAL.match(stripped):
        return None
    return _integral(decimal.Decimal(stripped), kind)


def convert_column(arr: pa.Array, read_as: str, nanos: bool,
                   contract_type: str) -> tuple[list, list]:
    """(typed values, raw strings) of one stored column, as ``contract_read.normalize`` gives.

    Raises NeedsSpark when the (stored, contract) pair is not in LOCAL_CONVERSIONS, or for
    strings that are not UTF-8 (Spark keeps their bytes)."""
    while pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    kind = _kind(read_as, nanos)
    if kind not in LOCAL_CONVERSIONS.get(contract_type, set()):
        raise NeedsSpark(f"{arr.type} stored for a {contract_type} column")
    if kind in _INSTANTS:
        us, valid = micros(arr, nanos_div=nanos)
        raw = timestamp_texts(us, valid).to_pylist()
        if contract_type == "timestamp":
            return [int(v) if ok else None for v, ok in zip(us.tolist(), valid)], raw
        return [(_EPOCH + dt.timedelta(microseconds=v)).date() if ok else None
                for v, ok in zip(us.tolist(), valid)], raw
    try:
        values = arr.to_pylist()
        if kind == "string":
            values = [v.decode("utf8") if isinstance(v, bytes) else v for v in values]
    except UnicodeDecodeError as exc:
        raise NeedsSpark(f"a string that is not UTF-8 ({exc.reason})") from exc
    if kind == "string":
        raw = values
    elif kind in _FRACTIONS:
        raw = [None if v is None else _java_double(v, single=kind == "float") for v in values]
    elif kind == "boolean":
        raw = [None if v is None else ("true" if v else "false") for v in values]
    elif kind == "date":
        raw = [None if v is None else f"{v.year:04d}-{v.month:02d}-{v.day:02d}" for v in values]
    else:  # integers, decimals
        raw = [None if v is None else str(v) for v in values]
    return [None if v is None else _typed(v, kind, contract_type, raw_v)
            for v, raw_v in zip(values, raw)], raw


def convert_arrow(arr: pa.Array, read_as: str, nanos: bool,
                  contract_type: str) -> tuple[pa.Array, pa.Array]:
    """``convert_column`` as Arrow arrays (typed in ``contract.ARROW_TYPES``, a timestamp as
    int64 microseconds; raw as string), vectorised for strings and instants."""
    while pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    kind = _kind(read_as, nanos)
    if kind == "string" and contract_type == "string":
        try:
            text = arr.cast(pa.string())
            text.validate(full=True)
        except pa.ArrowInvalid as exc:
            raise NeedsSpark(f"a string that is not UTF-8 ({exc})") from exc
        return text, text
    if kind in _INSTANTS and contract_type == "timestamp":
        us, valid = micros(arr, nanos_div=nanos)
        return pa.array(us, pa.int64(), mask=~valid), timestamp_texts(us, valid)
    typed, raw = convert_column(arr, read_as, nanos, contract_type)
    kind_type = pa.int64() if contract_type == "timestamp" else contract.ARROW_TYPES[
        contract_type]
    return pa.array(typed, kind_type), pa.array(raw, pa.string())


def _kind(read_as: str, nanos: bool) -> str:
    """The LOCAL_CONVERSIONS name of a stored column (``StoredColumn.read_as``/``nanos``)."""
    if nanos:
        return "timestamp"
    return "decimal" if read_as.startswith("decimal") else read_as


def _typed(v: Any, kind: str, contract_type: str, raw: str) -> Any:
    if contract_type == "string":
        return raw
    if contract_type in _INT_RANGE:
        if kind in _INTS:
            lo, hi = _INT_RANGE[contract_type]
            return v if lo <= v <= hi else None
        if kind == "string":
            return _string_to_int(v, contract_type)
        if kind in _FRACTIONS:  # Spark: the double's decimal string, then decimal(38,9)
            return None if not np.isfinite(v) else _integral(
                decimal.Decimal(repr(float(np.float32(v)) if kind == "float" else float(v))),
                contract_type)
        return _integral(decimal.Decimal(v), contract_type)  # uint64 arrives as int
    if contract_type == "double":
        return float(np.float32(v)) if kind == "float" else float(v)
    if contract_type == "timestamp":
        return None  # contract_read._typed: numbers, booleans and dates are not instants
    return v  # date from date


# ------------------------------------------------------------------------------- reading

def read_table(files: Sequence[str], table: TableSpec, report: bool = True
               ) -> tuple[pd.DataFrame, list[str]]:
    """``contract_read.read_table`` on the driver: a pandas frame of typed contract columns,
    ``_raw_*`` strings and partition columns; also the extra column names.

    Raises NeedsSpark (before reading any data) when a file stores a column in a type this
    module does not convert exactly."""
    groups, extras = inspect_local(files, table)
    if report:
        contract_read._print_read_notes(table, groups, extras)
    frames = [_read_file(uri, key, table) for key, group in sorted(groups.items())
              for uri in group]
    columns = [*table.names, *[RAW_PREFIX + n for n in table.names],
               *[p.name for p in table.partition_columns]]
    if not frames:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns}), extras
    return pd.concat(frames, ignore_index=True)[columns], extras


def inspect_local(files: Sequence[str], table: TableSpec) -> tuple[dict[tuple, list[str]],
                                                                   list[str]]:
    """``contract_read.inspect_files``, raising NeedsSpark (before any data is read) when a
    file stores a column in a type this module does not convert exactly."""
    groups, extras = contract_read.inspect_files(files, table)
    for key in groups:
        for col in key:
            if _kind(col.read_as, col.nanos) not in LOCAL_CONVERSIONS.get(
                    table.column(col.name).type, set()):
                raise NeedsSpark(f"{table.name}: column {col.stored} stored as {col.read_as} "
                                 "is read by Spark only")
    return groups, extras


def read_parquet(uri: str, columns: Sequence[str]) -> pa.Table:
    """``columns`` of one Parquet file (INT96 as microseconds, as Spark reads it); a file that
    cannot be read is one line naming it and the fix."""
    return pa.concat_tables(iter_parquet(uri, columns, None))


def iter_parquet(uri: str, columns: Sequence[str], batch_rows: int | None
                 ) -> Iterator[pa.Table]:
    """``read_parquet`` in tables of at most ``batch_rows`` rows (None: the whole file as one;
    at least one table, maybe empty), so a reader holds a batch, not the file; the same
    one-line error."""
    fs, path = storage.filesystem(uri)
    try:
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle, coerce_int96_timestamp_unit="us")
            if batch_rows is None:
                yield parquet.read(columns=list(columns))
                return
            schema = parquet.schema_arrow
            yielded = False
            for batch in iter_file_batches(parquet, batch_rows, list(columns)):
                yielded = True
                yield pa.Table.from_batches([batch])
            if not yielded:
                yield pa.schema([schema.field(c) for c in columns]).empty_table()
    except (OSError, pa.ArrowException) as exc:
        detail = " ".join(str(exc).split())[:240]
        raise ValueError(f"cannot read {uri}: {detail}. Fix: the file is damaged or not "
                         "Parquet: rewrite it, or remove it / move it out of the source") from exc


def iter_table(files: Sequence[str], table: TableSpec, batch_rows: int, report: bool = True
               ) -> tuple[Iterator[pd.DataFrame], list[str]]:
    """``read_table`` as frames of at most ``batch_rows`` rows, in its row order (NeedsSpark
    is raised here, before any data is read)."""
    groups, extras = inspect_local(files, table)
    if report:
        contract_read._print_read_notes(table, groups, extras)
    columns = [*table.names, *[RAW_PREFIX + n for n in table.names],
               *[p.name for p in table.partition_columns]]

    def frames() -> Iterator[pd.DataFrame]:
        for key, group in sorted(groups.items()):
            for uri in group:
                for data in iter_parquet(uri, [k.stored for k in key], batch_rows):
                    yield _frame(data, uri, key, table)[columns]
    return frames(), extras


def _read_file(uri: str, key: tuple, table: TableSpec) -> pd.DataFrame:
    return _frame(read_parquet(uri, [k.stored for k in key]), uri, key, table)


def _frame(data: pa.Table, uri: str, key: tuple, table: TableSpec) -> pd.DataFrame:
    out: dict[str, list] = {}
    for c in table.columns:
        out[c.name] = out[RAW_PREFIX + c.name] = [None] * data.num_rows
    for col in key:
        typed, raw = convert_column(data.column(col.stored).combine_chunks(), col.read_as,
                                    col.nanos, table.column(col.name).type)
        out[col.name], out[RAW_PREFIX + col.name] = typed, raw
    for part, value in zip(table.partition_columns,
                           contract_read.partition_values(uri, table)):
        out[part.name] = [value] * data.num_rows
    return pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in out.items()})


# ------------------------------------------------------------------------------- rules

Rule = tuple[Callable[[pd.DataFrame], np.ndarray], str, str]


def _java_regex(pattern: str) -> re.Pattern:
    """Java's ``$`` also matches before a final line terminator of any kind (rlike)."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + "(?:\r\n|[\n\r\u0085\u2028\u2029])?\\Z"
    return re.compile(pattern)


def _notnull(s: pd.Series) -> np.ndarray:
    return s.map(lambda v: v is not None).to_numpy(dtype=bool)


def _domain(c: contract.ColumnSpec, allowed: Sequence[str] | None = None) -> Rule | None:
    allowed = c.allowed if allowed is None else allowed
    if allowed is not None:
        ok = set(allowed)
        test = (lambda v: v not in ok)
    elif c.pattern is not None:
        rx = _java_regex(c.pattern)
        test = (lambda v: rx.search(v) is None)
    elif c.min_value is not None or c.max_value is not None:
        lo, hi, nan_bad = c.min_value, c.max_value, c.type == "double"
        test = (lambda v: (lo is not None and v < lo) or (hi is not None and v > hi)
                or (nan_bad and v != v))
    else:
        return None
    return (lambda df: df[c.name].map(lambda v: v is not None and test(v)).to_numpy(dtype=bool),
            OUT_OF_DOMAIN, c.name)


def rules(table: TableSpec, allowed: dict[str, Sequence[str]] | None = None) -> list[Rule]:
    """(condition, reason, column) in ``contract._rules``' precedence; ``allowed`` replaces a
    column's allowed values (labels: the run's age buckets)."""
    out: list[Rule] = []
    for c in table.columns:
        if c.required:
            out.append((lambda df, n=c.name: df[RAW_PREFIX + n].map(
                lambda v: v is None or v.strip(" ") == "").to_numpy(dtype=bool),
                NULL_REQUIRED, c.name))
    for c in table.columns:  # no timestamp columns here: bad_timestamp never applies
        if c.type == "timestamp":
            raise NeedsSpark(f"{table.name}: timestamp columns are validated by Spark only")
        out.append((lambda df, n=c.name: _notnull(df[RAW_PREFIX + n]) & ~_notnull(df[n]),
                    WRONG_TYPE, c.name))
    for c in table.columns:
        rule = _domain(c, (allowed or {}).get(c.name))
        if rule is not None:
            out.append(rule)
    return out


def apply_rules(df: pd.DataFrame, table_rules: list[Rule]) -> pd.DataFrame:
    """``df`` with ``reason``/``reason_column``: the first rule that applies, else None."""
    reason = np.full(len(df), None, dtype=object)
    column = np.full(len(df), None, dtype=object)
    open_ = np.ones(len(df), dtype=bool)
    for cond, r, c in table_rules:
        hit = open_ & cond(df) if len(df) else open_
        reason[hit], column[hit] = r, c
        open_ &= ~hit
    return df.assign(**{REASON: reason, REASON_COLUMN: column})


def split_valid(flagged: pd.DataFrame, table: TableSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(valid typed rows, quarantined raw rows with reason) as ``contract._split_valid``."""
    parts = [p.name for p in table.partition_columns]
    bad = flagged[REASON].map(lambda v: v is not None).to_numpy(dtype=bool)
    valid = flagged.loc[~bad, [*table.names, *parts]].reset_index(drop=True)
    quarantine = flagged.loc[bad, [RAW_PREFIX + n for n in table.names] + parts
                             + [REASON, REASON_COLUMN]].reset_index(drop=True)
    quarantine.columns = [*table.names, *parts, REASON, REASON_COLUMN]
    return valid, quarantine
