"""A batch of requests as columns, cleaned and looked up with array operations.

``RequestEncoder.encode_many`` reads its batch through ``batch_columns`` (a list of request
dicts, or columns: a dict of arrays/lists, a pandas DataFrame, a pyarrow Table/RecordBatch) and
encodes each column here. Every cell follows the one-request rules of
``pythia.scoring.cleaning`` exactly: the fast paths run only where they cannot differ (a column
of plain strings / None, of ints, a NumPy int or float array, an Arrow string or dictionary
column), every other column goes value by value through the same cleaning functions. A cell
means the value Python sees for it (``list(array)``; ``Series.to_numpy()``; Arrow's
``to_pylist()``). Neither pandas nor pyarrow is imported unless the batch is one of theirs.

Vocabulary lookup of an Arrow column, measured (4,096 rows, one core, 20,000-value vocabulary,
1,696 distinct values in the batch): a dict probe per distinct value of the column's
dictionary ~145 us (plus ~65 us ``to_pylist``); ``pandas.Index.get_indexer`` (its hash table
kept) the same, as it wants Python strings too; ``pyarrow.compute.index_in`` ~1,100 us, since
it rehashes its value set on every call (it wins only when the column outgrows the
vocabulary, so ``CategoryLookup`` picks it then); NumPy fingerprints of the Arrow buffers
(polynomial hash, ``searchsorted`` into the vocabulary's sorted fingerprints, ``pc.equal`` to
confirm) ~430 us. So the dict stays, fed by ``dictionary_encode`` for plain string columns.
"""
from __future__ import annotations

from itertools import repeat
from operator import itemgetter
from typing import Any, Mapping

import numpy as np

from pythia.features import OOV_ID
from pythia.scoring.cleaning import (MAX_TS_SECONDS, clean_code, clean_count, clean_ts,
                                     lookup_cleaned)

_NONE = type(None)
_PLAIN = frozenset({str, _NONE})


def batch_columns(batch: Any, names: list[str]) -> tuple[dict[str, Any], int]:
    """(column name -> its values, row count) of a batch, for the columns in ``names``.

    A column the batch lacks maps to ``None`` (every cell missing). Rows of a list that are not
    dicts count as empty requests, as ``encode_one`` treats them.

    Raises:
        ValueError: columnar input whose columns are not arrays/lists of one common length.
    """
    kind = type(batch).__module__.split(".")[0]
    if kind == "pandas" and hasattr(batch, "columns"):
        return {c: (batch[c] if c in batch.columns else None) for c in names}, len(batch)
    if kind == "pyarrow" and hasattr(batch, "column_names"):
        present = set(batch.column_names)
        return ({c: (batch.column(c) if c in present else None) for c in names},
                batch.num_rows)
    if isinstance(batch, Mapping):
        return _mapping_columns(batch, names)
    rows = batch if type(batch) is list else list(batch)
    if set(map(type, rows)) - {dict}:
        rows = [r if type(r) is dict else _as_dict(r, names) for r in rows]
    n = len(rows)
    if n and all(c in rows[0] for c in names):  # uniform rows: transpose in one C-level pass
        try:
            return dict(zip(names, zip(*map(itemgetter(*names), rows)))), n
        except KeyError:  # some later row lacks a key
            pass
    return {c: list(map(dict.get, rows, repeat(c, n))) for c in names}, n


def _as_dict(row: Any, names: list[str]) -> dict:
    if isinstance(row, Mapping):
        return {c: row.get(c) for c in names}  # a Mapping's own get, as encode_one calls it
    return {}


def _mapping_columns(batch: Mapping, names: list[str]) -> tuple[dict[str, Any], int]:
    lengths = {}
    for name, column in batch.items():
        if isinstance(column, (str, bytes)) or not hasattr(column, "__len__"):
            raise ValueError(f"column {name!r} is a {type(column).__name__}, not an array or "
                             f"list (score one request with Scorer.score)")
        lengths[name] = len(column)
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns differ in length: {lengths}")
    n = next(iter(lengths.values()), 0)
    return {c: batch.get(c) for c in names}, n


def all_arrow(columns: Mapping[str, Any]) -> bool:
    """Whether every column present is an Arrow array (a Table's, a RecordBatch's)."""
    kinds = {type(c).__module__.split(".")[0] for c in columns.values() if c is not None}
    return kinds == {"pyarrow"}


def take(column: Any, rows: np.ndarray) -> Any:
    """The cells of a ``batch_columns`` column at ``rows``, each as it was: pandas and Arrow by
    their own ``take`` (dtypes, dictionaries kept), NumPy by indexing, else a list of its cells
    (never through NumPy, which turns a mixed list's numbers into strings)."""
    if column is None:
        return None
    kind = type(column).__module__.split(".")[0]
    if kind == "pandas":
        return column.iloc[rows]
    if kind == "pyarrow":
        return column.take(rows)
    if isinstance(column, np.ndarray):
        return column.reshape(-1)[rows]
    cells = column if type(column) is list or type(column) is tuple else list(column)
    return [cells[i] for i in rows.tolist()]


# ---------------------------------------------------------------- a column as plain values

def _values(column: Any) -> Any:
    """A list, or a NumPy array of numbers / fixed-width strings, with the column's cells."""
    if column is None or type(column) is list or type(column) is tuple:
        return column
    kind = type(column).__module__.split(".")[0]
    if kind == "pandas":
        return _values(column.to_numpy())
    if kind == "pyarrow":
        return _arrow_values(column)
    if not isinstance(column, np.ndarray):
        return list(column)  # a tuple, a range ...: its cells as they are
    if column.dtype.kind in "iuf":
        return column.reshape(-1)
    return column.reshape(-1).tolist()  # objects, str, bytes, bool ...: Python's own values


def _arrow_values(column: Any) -> Any:
    """An Arrow column's cells: NumPy for numbers (a null -> NaN, unusable either way), Python
    objects for strings, ``to_pylist()`` for anything else."""
    import pyarrow as pa

    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return column.to_numpy(zero_copy_only=False).reshape(-1)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return column.to_numpy(zero_copy_only=False).tolist()
    return column.to_pylist()


def _dictionary(column: Any) -> tuple[np.ndarray, Any, bool] | None:
    """(codes with -1 for a null cell, the dictionary (a list, or the Arrow array), whether its
    values are all ``str`` / ``None``) of a categorical column: a pandas category, an Arrow dictionary column, or an
    Arrow string / large_string column, dictionary-encoded here (one C-level hashing pass, so
    each distinct string is converted and looked up once)."""
    kind = type(column).__module__.split(".")[0]
    if kind == "pandas" and getattr(column.dtype, "name", "") == "category":
        return (np.asarray(column.cat.codes, dtype=np.int64),
                column.cat.categories.to_numpy().tolist(), False)
    if kind != "pyarrow":
        return None
    import pyarrow as pa

    if _is_arrow_string(column):
        column = column.dictionary_encode()  # chunks of a ChunkedArray share one dictionary
    elif not pa.types.is_dictionary(column.type):
        return None
    chunks = column.chunks if hasattr(column, "chunks") else [column]
    plain = pa.types.is_string(column.type.value_type) or \
        pa.types.is_large_string(column.type.value_type)
    if not chunks:
        return np.empty(0, dtype=np.int64), [], plain
    whole = pa.chunked_array(chunks).unify_dictionaries().combine_chunks() \
        if len(chunks) > 1 else chunks[0]
    indices = whole.indices
    if indices.null_count:
        codes = indices.cast(pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False)
    else:  # no nulls: the indices as they are (zero copy), no Arrow kernels to run
        codes = indices.to_numpy()
    return codes, whole.dictionary, plain


# ---------------------------------------------------------------- categorical features

class CategoryLookup:
    """One categorical feature's memo (value -> id, what ``encode_one`` uses) applied to columns.

    Args:
        memo: ``{value: Vocabulary.encode_one(value)}`` for the vocabulary's values, plus
            ``None`` and ``""`` -> the missing id.
    """

    # ids of "0" .. "k-1", the derived features' values (``derived_ids``) looked up by position
    _SMALL_INTS = 64

    def __init__(self, memo: Mapping) -> None:
        self.memo = memo
        self._small: np.ndarray | None = None
        self._arrow = None  # (SetLookupOptions of the memo's strings, id per position + OOV)
        self._n_strings = sum(type(k) is str for k in memo)
        self._last = None  # (the last Arrow dictionary, its ids): see _table_of

    def encode(self, column: Any, n: int) -> np.ndarray:
        """Ids (n,) int64 of a column (None: the batch has no such column, all missing).

        An Arrow string column no longer than the vocabulary is dictionary-encoded and each
        distinct value looked up in the memo; a longer one is looked up whole with
        ``pyarrow.compute.index_in`` (which hashes its value set on every call, so it pays
        only when the column outweighs the vocabulary; measured in ``benchmarks/``).
        """
        if column is None:
            return np.full(n, self.memo[None], dtype=np.int64)
        if n >= self._n_strings and type(column).__module__.split(".")[0] == "pyarrow" \
                and _is_arrow_string(column):
            return self._index_in(column)
        coded = _dictionary(column)
        if coded is not None:
            codes, dictionary, plain = coded
            table = self._table_of(dictionary, plain)
            return table.take(codes)
        values = _values(column)
        if isinstance(values, np.ndarray):
            return self._encode_numbers(values)
        return self.encode_list(values)

    def _table_of(self, dictionary: Any, plain: bool) -> np.ndarray:
        """Ids of a dictionary's values, then the missing id (for code -1, a null cell). The
        last Arrow dictionary's table is kept: batches of an Arrow stream share their
        dictionary, and ``equals`` (a C-level compare) finds that out in microseconds. Only
        string dictionaries: Arrow calls -0.0 and 0.0 equal, which print differently."""
        last = self._last
        arrow = plain and type(dictionary) is not list
        if arrow and last is not None and (last[0] is dictionary or last[0].equals(dictionary)):
            return last[1]
        values = list(dictionary) if type(dictionary) is list else dictionary.to_pylist()
        values.append(None)
        if plain:  # strings and None: the memo lookup is the whole rule, no type checks
            table = np.fromiter(map(self.memo.get, values, repeat(OOV_ID)), np.int64,
                                len(values))
        else:
            table = self.encode_list(values)
        if arrow:
            self._last = (dictionary, table)  # one assignment: safe to read from threads
        return table

    def encode_list(self, values: list) -> np.ndarray:
        """Ids of a list of raw values, each by ``encode_one``'s rule."""
        n, memo = len(values), self.memo
        kinds = set(map(type, values))
        if kinds <= _PLAIN:  # plain strings and None: the memo lookup is the whole rule
            return np.fromiter(map(memo.get, values, repeat(OOV_ID, n)), np.int64, n)
        if kinds == {int}:  # equal ints print alike, so each distinct one is cleaned once
            local = {v: lookup_cleaned(memo, v) for v in set(values)}
            return np.fromiter(map(local.__getitem__, values), np.int64, n)
        get = memo.get
        return np.fromiter((get(v, OOV_ID) if (type(v) is str or v is None)
                            else lookup_cleaned(memo, v) for v in values), np.int64, n)

    def small_ints(self, values: np.ndarray) -> np.ndarray | None:
        """Ids of non-negative ints below ``_SMALL_INTS`` (as decimal strings) by one gather,
        from a table built on first use; None when some value is outside that range."""
        if self._small is None:
            self._small = self.encode_list([str(i) for i in range(self._SMALL_INTS)])
        if values.dtype.kind not in "iu" or not len(values) or values.min() < 0 \
                or values.max() >= self._SMALL_INTS:
            return None
        return self._small.take(values)

    def _index_in(self, column: Any) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        if self._arrow is None:  # built once per bundle load
            keys = [k for k in self.memo if type(k) is str]
            self._arrow = (pc.SetLookupOptions(value_set=pa.array(keys, type=pa.string())),
                           np.array([self.memo[k] for k in keys] + [OOV_ID], dtype=np.int64))
        options, ids = self._arrow
        position = pc.index_in(column, options=options).fill_null(-1)
        out = ids.take(position.to_numpy(zero_copy_only=False))  # -1: not in the memo -> OOV
        if column.null_count:
            out[column.is_null().to_numpy(zero_copy_only=False)] = self.memo[None]
        return out

    def _encode_numbers(self, values: np.ndarray) -> np.ndarray:
        if values.dtype.kind == "f":  # -0.0 and 0.0 print differently: compare bit patterns
            bits = values.astype(np.float64).view(np.int64)
            _, first, inverse = np.unique(bits, return_index=True, return_inverse=True)
        else:
            _, first, inverse = np.unique(values, return_index=True, return_inverse=True)
        distinct = values[first].tolist()  # Python ints / floats, as encode_one sees them
        return self.encode_list(distinct)[inverse.reshape(-1)]


def _is_arrow_string(column: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_string(column.type) or pa.types.is_large_string(column.type)


# ---------------------------------------------------------------- ts and codes

def clean_stamps(column: Any, n: int, fallback: int) -> np.ndarray:
    """Epoch seconds (n,) int64 per ``clean_ts``; an unusable or missing ts -> ``fallback``.
    A timestamp column (Arrow, pandas or NumPy datetime64, any unit or time zone) is read as
    the instants it holds, as ``clean_ts`` reads each of its cells."""
    seconds = _timestamp_seconds(column)
    if seconds is not None:
        ok = (seconds >= 0) & (seconds <= MAX_TS_SECONDS)  # a null / NaT is negative here
        return np.where(ok, seconds, fallback).astype(np.int64)
    values = _values(column)
    if values is None:
        return np.full(n, fallback, dtype=np.int64)
    if isinstance(values, list) and set(map(type, values)) == {int}:
        try:
            values = np.array(values, dtype=np.int64)
        except OverflowError:  # an int beyond int64: out of range anyway, value by value
            pass
    if isinstance(values, np.ndarray):
        return _stamps_of_numbers(values, fallback)
    texts = {v: clean_ts(v) for v in set(v for v in values if type(v) is str)}
    stamps = [texts[v] if type(v) is str else clean_ts(v) for v in values]
    return np.array([fallback if s is None else s for s in stamps], dtype=np.int64)


_UNIT_SECONDS = {"s": 1, "ms": 10 ** 3, "us": 10 ** 6, "ns": 10 ** 9}


def _timestamp_seconds(column: Any) -> np.ndarray | None:
    """Floored epoch seconds (int64; a null -> -1) of a timestamp column, else None."""
    kind = type(column).__module__.split(".")[0]
    if kind == "pandas":
        import pandas as pd

        if not (pd.api.types.is_datetime64_any_dtype(column.dtype)):
            return None
        import pyarrow as pa

        column, kind = pa.array(column), "pyarrow"  # a zone-aware column too: its instants
    if kind == "pyarrow":
        import pyarrow as pa
        import pyarrow.compute as pc

        if not pa.types.is_timestamp(column.type):
            return None
        raw = pc.fill_null(column.cast(pa.int64()), -1).to_numpy(zero_copy_only=False)
        return np.floor_divide(raw.reshape(-1), _UNIT_SECONDS[column.type.unit])
    if isinstance(column, np.ndarray) and column.dtype.kind == "M":
        micros = column.reshape(-1).astype("datetime64[us]").astype(np.int64)  # NaT: min int
        return np.where(micros < 0, -1, micros // 1_000_000)
    return None


def _stamps_of_numbers(values: np.ndarray, fallback: int) -> np.ndarray:
    if values.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            floored = np.floor(values.astype(np.float64))
            ok = np.isfinite(floored) & (floored >= 0) & (floored <= MAX_TS_SECONDS)
        return np.where(ok, np.where(ok, floored, 0).astype(np.int64), fallback)
    ok = (values >= 0) & (values <= MAX_TS_SECONDS)
    return np.where(ok, values, fallback).astype(np.int64)


def clean_counts(column: Any, n: int) -> np.ndarray:
    """(n,) float64 activity counters of a column by ``cleaning.clean_count`` (NaN: unknown);
    a NumPy / Arrow column of numbers in one pass, anything else cell by cell."""
    values = _values(column)
    if values is None:
        return np.full(n, np.nan)
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        x = values.astype(np.float64)
        with np.errstate(invalid="ignore"):
            return np.where(np.isfinite(x) & (x >= 0), x, np.nan)
    return np.fromiter(map(clean_count, values), dtype=np.float64, count=n)


def factorize_codes(column: Any, n: int) -> tuple[np.ndarray, list]:
    """Country / subdivision codes per ``clean_code``, factorised: (n,) int64 positions into a
    list of distinct cleaned codes (None: no usable code). Each distinct raw value is cleaned
    once, so routing and zone lookups can work per distinct code."""
    if column is None:
        return np.zeros(n, dtype=np.int64), [None]
    coded = _dictionary(column)
    if coded is not None:
        codes, dictionary, _ = coded
        if type(dictionary) is not list:
            dictionary = dictionary.to_pylist()
        return codes, [clean_code(v) for v in dictionary] + [None]  # code -1 (null): None
    values = _values(column)
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if not set(map(type, values)) <= _PLAIN:  # clean value by value, then factorise
        values = [clean_code(v) for v in values]
    position = {v: i for i, v in enumerate(dict.fromkeys(values))}
    inverse = np.fromiter(map(position.__getitem__, values), np.int64, len(values))
    return inverse, [clean_code(v) for v in position]


def derived_ids(values: np.ndarray, lookup: CategoryLookup) -> np.ndarray:
    """Ids of a derived categorical (small non-negative ints, looked up as decimal strings)."""
    values = np.asarray(values).reshape(-1)
    if len(values) == 0:
        return np.empty(0, dtype=np.int64)
    small = lookup.small_ints(values)
    if small is not None:
        return small
    distinct, inverse = np.unique(values, return_inverse=True)
    return lookup.encode_list([str(v) for v in distinct.tolist()])[inverse.reshape(-1)]


__all__ = ["CategoryLookup", "batch_columns", "clean_counts", "clean_stamps", "derived_ids",
           "factorize_codes"]
