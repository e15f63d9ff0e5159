"""Impressions on the driver: the pyarrow reader and ``contract.flag_impressions``' rules.

``read_impressions`` gives what ``contract_read.read_table`` gives Spark (typed contract
columns, ``_raw_*`` strings, ``date``/``hour`` from the listed paths) as one Arrow table, ``ts``
as int64 microseconds; stored types it cannot convert exactly raise
``contract_local.NeedsSpark`` before any row is read. ``flag`` applies the contract's rules in
``contract.flag_impressions``' precedence (same reason codes and reason columns), vectorised
with pyarrow; ``duplicates`` settles ids among the valid rows with the same order (earliest ts,
then date, hour, content hash).
"""
from __future__ import annotations

import datetime as dt
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pythia import contract, contract_local, contract_read
from pythia.contract import (BAD_TIMESTAMP, DUPLICATE_IMPRESSION_ID, IMPRESSIONS, NULL_REQUIRED,
                             OUT_OF_DOMAIN, TS_TOLERANCE_SECONDS, WRONG_TYPE, ColumnSpec)
from pythia.contract_read import RAW_PREFIX
from pythia.features import DATE, HOUR, IMPRESSION_ID, TS

_EPOCH = dt.date(1970, 1, 1)
_US = 1_000_000


def normalized_schema() -> pa.Schema:
    """Typed contract columns (``ts`` as int64 microseconds), raw strings, partitions."""
    typed = [(c.name, pa.int64() if c.type == "timestamp" else contract.ARROW_TYPES[c.type])
             for c in IMPRESSIONS.columns]
    raw = [(RAW_PREFIX + c.name, pa.string()) for c in IMPRESSIONS.columns]
    parts = [(p.name, contract.ARROW_TYPES[p.type]) for p in IMPRESSIONS.partition_columns]
    return pa.schema(typed + raw + parts)


def read_impressions(files: Sequence[str], report: bool = True) -> tuple[pa.Table, list[str]]:
    """The normalised impressions of ``files`` and the extra column names; with ``report``,
    extra columns and naive timestamps are printed to the step's log as the Spark reader
    prints them."""
    groups, extras = contract_local.inspect_local(files, IMPRESSIONS)
    if report:
        contract_read._print_read_notes(IMPRESSIONS, groups, extras)
    schema = normalized_schema()
    tables = [_read_file(uri, key, schema) for key, group in sorted(groups.items())
              for uri in group]
    return (pa.concat_tables(tables) if tables else schema.empty_table()), extras


def iter_impressions(files: Sequence[str], batch_rows: int, report: bool = True
                     ) -> tuple[Callable[[], Iterator[tuple[str | None, pa.Table]]], list[str]]:
    """``read_impressions`` in tables of at most ``batch_rows`` rows, in its row order: a
    function giving a fresh pass over ``(file, table)`` each call (at least one table, maybe
    empty: file None when there is no file), and the extra column names. NeedsSpark is
    raised here, before any row is read."""
    groups, extras = contract_local.inspect_local(files, IMPRESSIONS)
    if report:
        contract_read._print_read_notes(IMPRESSIONS, groups, extras)
    schema = normalized_schema()

    def batches() -> Iterator[tuple[str | None, pa.Table]]:
        given = False
        for key, group in sorted(groups.items()):
            for uri in group:
                for data in contract_local.iter_parquet(uri, [k.stored for k in key], batch_rows):
                    given = True
                    yield uri, _normalized(data, uri, key, schema)
        if not given:
            yield None, schema.empty_table()
    return batches, extras


def _read_file(uri: str, key: tuple, schema: pa.Schema) -> pa.Table:
    return _normalized(contract_local.read_parquet(uri, [k.stored for k in key]), uri, key, schema)


def _normalized(data: pa.Table, uri: str, key: tuple, schema: pa.Schema) -> pa.Table:
    n = data.num_rows
    out = {f.name: pa.nulls(n, f.type) for f in schema}
    for col in key:
        typed, raw = contract_local.convert_arrow(data.column(col.stored).combine_chunks(),
                                                  col.read_as, col.nanos,
                                                  IMPRESSIONS.column(col.name).type)
        out[col.name], out[RAW_PREFIX + col.name] = typed, raw
    for pcol, value in zip(IMPRESSIONS.partition_columns,
                           contract_read.partition_values(uri, IMPRESSIONS)):
        out[pcol.name] = pa.array([value] * n, schema.field(pcol.name).type)
    return pa.table(out, schema=schema)


# ------------------------------------------------------------------------------- rules

Mask = Callable[[pa.Table], np.ndarray]


def _np(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A boolean Arrow array as NumPy, null as False."""
    return pc.fill_null(arr, False).to_numpy(zero_copy_only=False).astype(bool)


def _blank(name: str) -> Mask:
    """Spark's ``raw is null or trim(raw) == ''`` (trim: spaces only)."""
    return lambda t: _np(pc.or_kleene(pc.is_null(t[RAW_PREFIX + name]),
                                       pc.equal(pc.utf8_trim(t[RAW_PREFIX + name], " "), "")))


def _lost(name: str) -> Mask:
    """A value given but not convertible: raw not null, typed null."""
    return lambda t: _np(pc.and_(pc.is_valid(t[RAW_PREFIX + name]), pc.is_null(t[name])))


def _domain(c: ColumnSpec) -> Mask | None:
    """``contract._rules``' out-of-domain test of one column (null values pass)."""
    if c.allowed is not None:
        allowed = pa.array(list(c.allowed), pa.string())
        return lambda t: _np(pc.and_(pc.is_valid(t[c.name]),
                                     pc.invert(pc.is_in(t[c.name], value_set=allowed))))
    if c.pattern is not None:
        rx = contract_local._java_regex(c.pattern)

        def _unmatched(t: pa.Table) -> np.ndarray:
            values = pc.unique(t[c.name]).drop_null().to_pylist()
            bad = pa.array([v for v in values if rx.search(v) is None], pa.string())
            return _np(pc.is_in(t[c.name], value_set=bad))
        return _unmatched
    if c.min_value is not None or c.max_value is not None:
        raise contract_local.NeedsSpark(f"impressions: range rule of {c.name} runs in Spark")
    return None


def _outside(t: pa.Table, dates: Sequence[dt.date], hours: Sequence[int],
             tolerance: int) -> np.ndarray:
    """``flag_impressions``' ts test: outside its date/hour partition ± tolerance, or outside
    the window, or a partition not of this task (ts not null)."""
    day = {d.isoformat(): (d - _EPOCH).days * 86400 for d in dates}
    date_ok = _np(pc.is_in(t[DATE], value_set=pa.array(list(day), pa.string())))
    hour_ok = _np(pc.is_in(t[HOUR], value_set=pa.array([int(h) for h in hours], pa.int32())))
    hour = t[HOUR].fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    start = np.array([day.get(d, 0) for d in t[DATE].to_pylist()], dtype=np.int64) + hour * 3600
    ts_s = t[TS].fill_null(0).to_numpy(zero_copy_only=False) // _US
    win_lo = min(day.values())
    win_hi = max(day.values()) + 86400
    off = ((ts_s < start - tolerance) | (ts_s >= start + 3600 + tolerance)
           | (ts_s < win_lo) | (ts_s >= win_hi))
    return _np(pc.is_valid(t[TS])) & (~date_ok | ~hour_ok | off)


def rules(dates: Sequence[dt.date], hours: Sequence[int],
          tolerance: int = TS_TOLERANCE_SECONDS) -> list[tuple[Mask, str, str]]:
    """(mask, reason, column) in ``contract.flag_impressions``' precedence: null_required,
    wrong_type, bad_timestamp (not an instant), bad_timestamp (outside), out_of_domain."""
    if not dates:
        raise ValueError("validate_impressions needs at least one date")
    cols = IMPRESSIONS.columns
    out: list[tuple[Mask, str, str]] = [(_blank(c.name), NULL_REQUIRED, c.name)
                                        for c in cols if c.required]
    out += [(_lost(c.name), WRONG_TYPE, c.name) for c in cols if c.type != "timestamp"]
    out += [(_lost(c.name), BAD_TIMESTAMP, c.name) for c in cols if c.type == "timestamp"]
    out.append((lambda t: _outside(t, dates, hours, tolerance), BAD_TIMESTAMP, TS))
    for c in cols:
        mask = _domain(c)
        if mask is not None:
            out.append((mask, OUT_OF_DOMAIN, c.name))
    return out


def flag(table: pa.Table, dates: Sequence[dt.date], hours: Sequence[int],
         tolerance: int = TS_TOLERANCE_SECONDS) -> tuple[np.ndarray, np.ndarray]:
    """(reason, reason column) per row: the first rule that applies, else None (duplicates
    are settled afterwards by ``duplicates``, among the rows left valid)."""
    n = table.num_rows
    reason = np.full(n, None, dtype=object)
    column = np.full(n, None, dtype=object)
    open_ = np.ones(n, dtype=bool)
    for mask, r, c in rules(dates, hours, tolerance):
        if not n:
            break
        hit = open_ & mask(table)
        reason[hit], column[hit] = r, c
        open_ &= ~hit
    return reason, column


def duplicates(ids: pa.Array, ts: np.ndarray, date: pa.Array, hour: np.ndarray,
               content_hash: np.ndarray) -> np.ndarray:
    """True for each valid row whose impression id an earlier copy keeps: the first in
    (ts, date, hour, content hash) order wins, as ``flag_impressions``' row_number."""
    n = len(ids)
    if not n:
        return np.zeros(0, dtype=bool)
    order = pc.sort_indices(pa.table({"i": ids, "t": ts, "d": date, "h": hour,
                                      "c": content_hash}),
                            sort_keys=[("i", "ascending"), ("t", "ascending"),
                                       ("d", "ascending"), ("h", "ascending"),
                                       ("c", "ascending")]).to_numpy()
    sorted_ids = pc.take(ids, pa.array(order)).to_numpy(zero_copy_only=False)
    repeat = np.zeros(n, dtype=bool)
    repeat[1:] = sorted_ids[1:] == sorted_ids[:-1]
    out = np.zeros(n, dtype=bool)
    out[order] = repeat
    return out


DUPLICATE = (DUPLICATE_IMPRESSION_ID, IMPRESSION_ID)  # (reason, reason column) of a loser
