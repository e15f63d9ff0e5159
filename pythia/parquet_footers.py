"""What a Parquet file's footer says about its columns, and how Spark must read each one.

Real producers differ: pandas writes nanosecond timestamps (Spark 4 refuses them as timestamps,
but reads them as 64-bit integers when told to), Hive/Impala/older Spark write INT96 (pyarrow
reports it as a naive ns timestamp, so only the physical type tells them apart), some writers
leave time zones out, encode strings as dictionaries or large strings, or store unsigned
integers. Only footers are read here (cheap, with pyarrow); nothing knows the contract's tables.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pythia import storage

# Arrow type (as pyarrow names it) -> the Spark SQL type of an explicit read schema. Binary
# strings (no UTF8 annotation, as old Impala/Hive write them) read fine as Spark strings.
ARROW_READ_TYPES = {
    "string": "string", "large_string": "string", "string_view": "string",
    "binary": "string", "large_binary": "string", "binary_view": "string",
    "int8": "tinyint", "int16": "smallint", "int32": "int", "int64": "bigint",
    "uint8": "smallint", "uint16": "int", "uint32": "bigint", "uint64": "decimal(20,0)",
    "float": "float", "double": "double", "bool": "boolean",
    "date32[day]": "date", "date64[ms]": "date",
}
MAX_SPARK_DECIMAL_PRECISION = 38
NOT_PARQUET_FIX = ("remove it or move it out of the source (a table folder may hold only "
                   "Parquet files and the side files Spark skips: names starting with _ or . "
                   "and names ending in .crc)")


@dataclass(frozen=True)
class StoredColumn:
    """One top-level column of a Parquet file, as stored and as Spark must read it."""

    name: str
    stored: str  # the Arrow type pyarrow reports, with the Parquet physical type when telling
    read_as: str | None  # Spark SQL type for the read schema; None: not readable (see problem)
    nanos: bool = False  # INT64 TIMESTAMP(NANOS): read as bigint, converted to an instant
    naive: bool = False  # a timestamp without a time zone (or INT96): taken as UTC
    all_null: bool = False  # Arrow type null (pandas' all-None column): read as absent
    problem: str | None = None  # why Spark cannot read it (read_as is None then)


class NotParquetError(ValueError):
    """A file in a table folder that pyarrow cannot read as Parquet."""


def _read_metadata(uri: str) -> pq.FileMetaData:
    fs, path = storage.filesystem(uri)
    try:
        return pq.read_metadata(path, filesystem=fs)
    except Exception as exc:  # pyarrow raises several types for foreign/corrupt/empty files
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise NotParquetError(f"{uri} is not a readable Parquet file ({reason}): "
                              f"{NOT_PARQUET_FIX}") from exc


def footer_rows(uri: str) -> int:
    """The row count a file's footer records (NotParquetError naming the file otherwise)."""
    return int(_read_metadata(uri).num_rows)


def _physical_types(meta: pq.FileMetaData) -> dict[str, str]:
    """Top-level column name -> Parquet physical type, for flat (non-nested) columns."""
    out = {}
    for i in range(meta.num_columns):
        col = meta.schema.column(i)
        if "." not in col.path:
            out[col.path] = col.physical_type
    return out


def stored_column(field: pa.Field, physical: str | None) -> StoredColumn:
    """How Spark must read one Arrow field whose Parquet physical type is ``physical``."""
    t = field.type
    while pa.types.is_dictionary(t):  # pandas categoricals, pyarrow dictionary arrays
        t = t.value_type
    stored = str(field.type) + (f" ({physical})" if physical == "INT96" else "")
    if physical == "INT96":  # Hive/Impala/older Spark: no unit or zone recorded, UTC by custom
        return StoredColumn(field.name, stored, "timestamp", naive=True)
    if pa.types.is_timestamp(t):
        naive = t.tz is None
        if t.unit == "ns":
            return StoredColumn(field.name, stored, "bigint", nanos=True, naive=naive)
        return StoredColumn(field.name, stored, "timestamp_ntz" if naive else "timestamp",
                            naive=naive)
    if pa.types.is_null(t):
        return StoredColumn(field.name, stored, None, all_null=True)
    if pa.types.is_decimal(t):
        if t.precision <= MAX_SPARK_DECIMAL_PRECISION:
            return StoredColumn(field.name, stored, f"decimal({t.precision},{t.scale})")
        return StoredColumn(field.name, stored, None,
                            problem=f"decimal precision {t.precision} exceeds Spark's "
                                    f"{MAX_SPARK_DECIMAL_PRECISION}")
    read_as = ARROW_READ_TYPES.get(str(t))
    if read_as is None:
        return StoredColumn(field.name, stored, None,
                            problem=f"Spark cannot read {t} as a contract column")
    return StoredColumn(field.name, stored, read_as)


def read_footer(uri: str) -> tuple[dict[str, StoredColumn], int]:
    """Every top-level column of ``uri`` as stored, and the file's row count.

    Raises NotParquetError (a one-line message naming the file and the fix) when the file is
    not Parquet, is empty or its footer is damaged.
    """
    meta = _read_metadata(uri)
    try:
        schema = meta.schema.to_arrow_schema()
    except Exception as exc:  # a footer pyarrow parses but cannot map (exotic writers)
        raise NotParquetError(f"{uri}: its Parquet schema cannot be read ({exc}): "
                              f"{NOT_PARQUET_FIX}") from exc
    physical = _physical_types(meta)
    columns = {f.name: stored_column(f, physical.get(f.name)) for f in schema}
    return columns, int(meta.num_rows)


def iter_file_batches(parquet: pq.ParquetFile, batch_rows: int,
                      columns: list[str] | None = None):
    """A Parquet file's record batches of at most ``batch_rows`` rows, read one row group at a
    time (``iter_batches(row_groups=[i])``): memory stays at about a batch whatever the file's
    size. One ``iter_batches`` over the whole file held what it had read, list columns most
    (a candidate's 4.2M-row predictions file of 65k-row row groups: 486 MB of Arrow memory,
    39 MB this way; session 30), as ``Dataset.to_batches`` does (apache/arrow#39808).
    Yields nothing for a file of no row group. tests/test_parquet_batches.py."""
    for i in range(parquet.num_row_groups):
        yield from parquet.iter_batches(batch_size=batch_rows, row_groups=[i], columns=columns)


def iter_dataset_batches(dataset, batch_rows: int, columns: list[str] | None = None):
    """A ``pyarrow.dataset`` Dataset's record batches, file by file in ``dataset.files``
    order, each file a row group at a time (``iter_file_batches``; not ``to_batches``, which
    holds what it read). Batches keep each file's own schema."""
    for file in dataset.files:
        with dataset.filesystem.open_input_file(file) as f:
            yield from iter_file_batches(pq.ParquetFile(f), batch_rows, columns)
