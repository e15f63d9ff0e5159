"""A batch of requests as columns, cleaned and looked up with array operations.

``RequestEncoder.encode_many`` reads its batch through ``batch_columns`` (a list of request
dicts, or columns: a dict of arrays/lists, a pandas DataFrame, a pyarrow Table/RecordBatch) and
encodes each column here. Every cell follows the one-request rules of
``pythia.scoring.cleaning`` exactly: the fast paths run only where they cannot differ (a column
of plain strings / None, of ints, a NumPy int or float array, an Arrow string or dictionary
column), every other column goes value by value through the same cleaning functions. A cell
means the value Python sees for it (``list(array)``; ``Series.to_numpy()``; Arrow's
``to_pylist()``). Neither pandas nor pyarrow is imported unless the batch is one of theirs.
"""
from __future__ import annotations

from itertools import repeat
from operator import itemgetter
from typing import Any, Mapping

import numpy as np

from pythia.features import OOV_ID
from pythia.scoring.cleaning import MAX_TS_SECONDS, clean_code, clean_ts, lookup_cleaned

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


def _dictionary(column: Any) -> tuple[np.ndarray, list] | None:
    """(codes with -1 for a null cell, the dictionary's values) of a categorical column."""
    kind = type(column).__module__.split(".")[0]
    if kind == "pandas" and getattr(column.dtype, "name", "") == "category":
        return (np.asarray(column.cat.codes, dtype=np.int64),
                column.cat.categories.to_numpy().tolist())
    if kind == "pyarrow" and getattr(column.type, "id", None) == _arrow_dictionary_id():
        import pyarrow as pa

        chunks = column.chunks if hasattr(column, "chunks") else [column]
        if not chunks:
            return np.empty(0, dtype=np.int64), []
        whole = pa.chunked_array(chunks).unify_dictionaries().combine_chunks() \
            if len(chunks) > 1 else chunks[0]
        indices = whole.indices
        if indices.null_count:
            codes = indices.cast(pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False)
        else:  # no nulls: the indices as they are (zero copy), no Arrow kernels to run
            codes = indices.to_numpy().astype(np.int64)
        return codes, whole.dictionary.to_pylist()
    return None


def _arrow_dictionary_id() -> int:
    import pyarrow as pa

    return pa.dictionary(pa.int32(), pa.string()).id


# ---------------------------------------------------------------- categorical features

class CategoryLookup:
    """One categorical feature's memo (value -> id, what ``encode_one`` uses) applied to columns.

    Args:
        memo: ``{value: Vocabulary.encode_one(value)}`` for the vocabulary's values, plus
            ``None`` and ``""`` -> the missing id.
    """

    def __init__(self, memo: Mapping) -> None:
        self.memo = memo
        self._arrow = None  # (value set, id per position), built on the first Arrow column

    def encode(self, column: Any, n: int) -> np.ndarray:
        """Ids (n,) int64 of a column (None: the batch has no such column, all missing)."""
        if column is None:
            return np.full(n, self.memo[None], dtype=np.int64)
        coded = _dictionary(column)
        if coded is not None:
            codes, dictionary = coded
            table = np.append(self.encode_list(dictionary), self.memo[None])
            return table[codes]  # code -1 (null) picks the appended missing id
        if type(column).__module__.split(".")[0] == "pyarrow" and _is_arrow_string(column):
            return self._encode_arrow_strings(column)
        values = _values(column)
        if isinstance(values, np.ndarray):
            return self._encode_numbers(values)
        return self.encode_list(values)

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

    def _encode_numbers(self, values: np.ndarray) -> np.ndarray:
        if values.dtype.kind == "f":  # -0.0 and 0.0 print differently: compare bit patterns
            bits = values.astype(np.float64).view(np.int64)
            _, first, inverse = np.unique(bits, return_index=True, return_inverse=True)
        else:
            _, first, inverse = np.unique(values, return_index=True, return_inverse=True)
        distinct = values[first].tolist()  # Python ints / floats, as encode_one sees them
        return self.encode_list(distinct)[inverse.reshape(-1)]

    def _encode_arrow_strings(self, column: Any) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        if self._arrow is None:
            keys = [k for k in self.memo if type(k) is str]
            self._arrow = (pa.array(keys, type=pa.string()),
                           np.array([self.memo[k] for k in keys] + [OOV_ID], dtype=np.int64))
        value_set, ids = self._arrow
        array = pa.chunked_array([column]) if isinstance(column, pa.Array) else column
        array = array.cast(pa.string())
        position = pc.index_in(array, value_set=value_set).fill_null(-1)
        out = ids[position.to_numpy().astype(np.int64)]  # -1: not in the memo -> OOV
        out[array.is_null().to_numpy()] = self.memo[None]
        return out


def _is_arrow_string(column: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_string(column.type) or pa.types.is_large_string(column.type)


# ---------------------------------------------------------------- ts and codes

def clean_stamps(column: Any, n: int, fallback: int) -> np.ndarray:
    """Epoch seconds (n,) int64 per ``clean_ts``; an unusable or missing ts -> ``fallback``."""
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


def _stamps_of_numbers(values: np.ndarray, fallback: int) -> np.ndarray:
    if values.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            floored = np.floor(values.astype(np.float64))
            ok = np.isfinite(floored) & (floored >= 0) & (floored <= MAX_TS_SECONDS)
        return np.where(ok, np.where(ok, floored, 0).astype(np.int64), fallback)
    ok = (values >= 0) & (values <= MAX_TS_SECONDS)
    return np.where(ok, values, fallback).astype(np.int64)


def factorize_codes(column: Any, n: int) -> tuple[np.ndarray, list]:
    """Country / subdivision codes per ``clean_code``, factorised: (n,) int64 positions into a
    list of distinct cleaned codes (None: no usable code). Each distinct raw value is cleaned
    once, so routing and zone lookups can work per distinct code."""
    if column is None:
        return np.zeros(n, dtype=np.int64), [None]
    coded = _dictionary(column)
    if coded is not None:
        codes, dictionary = coded
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
    values = np.asarray(values)
    if len(values) == 0:
        return np.empty(0, dtype=np.int64)
    distinct, inverse = np.unique(values, return_inverse=True)
    return lookup.encode_list([str(v) for v in distinct.tolist()])[inverse.reshape(-1)]


__all__ = ["CategoryLookup", "batch_columns", "clean_stamps", "derived_ids", "factorize_codes"]
