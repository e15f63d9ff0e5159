"""Local time with daylight saving: the UTC offset table the ETL and the scorer share.

A country's clock is its IANA zone (``zoneinfo`` over the ``tzdata`` package, daylight saving
included), chosen by ``pythia.geo.countries.zone_of``. ``build_offset_table`` (in
``pythia.geo.tzcompile``) compiles those zones once into plain transition/offset arrays (JSON,
carried by the bundle);
``local_offset_minutes`` looks an instant up in them with a binary search, so the ETL
(vectorised over a batch) and the scorer (one request, no tz database) derive the same local
time from the same table.
"""
from __future__ import annotations

import bisect
import json
import math
from itertools import repeat
from typing import Any, Iterable, Mapping

import numpy as np

from pythia.geo.countries import UTC_ZONE, subdivision_code
from pythia.geo.tzcompile import (DEFAULT_YEARS, OFFSETS_FORMAT, OFFSETS_FORMAT_VERSION,
                                  build_offset_table)

# Instants are clipped into [_TS_MIN, _TS_MAX) before the vectorised search (about years
# 881..3058; any table's transitions lie inside, so clipping changes no result).
_TS_MIN = -(2 ** 35)
_TS_MAX = 2 ** 35
_BLOCK = _TS_MAX - _TS_MIN  # key space per zone in the vectorised search
_WINDOW_MIN_ROWS = 64  # from this many rows, series without a change in the batch's span skip
_PAIR_MEMO_MAX = 65_536  # (country, subdivision) pairs memoised per table
_PLAIN_CODES = frozenset({str, type(None)})  # code types looked up as dict keys directly


# ---------------------------------------------------------------- the compiled table

def _is_scalar(value: Any) -> bool:
    if value is None or type(value) is str or type(value) is int or type(value) is float:
        return True
    if isinstance(value, (list, tuple, np.ndarray)):  # a column, whatever its cells hold
        return False
    return np.ndim(value) == 0


def _plain(value: Any) -> Any:
    """A NumPy string scalar as a str; anything that is not a string as None (no code)."""
    return str(value) if isinstance(value, str) else None


class OffsetTable:
    """A compiled offset table, ready for lookups (build it once, then share it).

    ``OffsetTable.from_json(build_offset_table(...))``; ``to_json()`` gives the document back
    exactly. Lookups need only NumPy and ``bisect``: no tz database.
    """

    def __init__(self, doc: Mapping[str, Any]) -> None:
        if (doc.get("format"), doc.get("format_version")) != (OFFSETS_FORMAT,
                                                               OFFSETS_FORMAT_VERSION):
            raise ValueError(f"not a {OFFSETS_FORMAT} v{OFFSETS_FORMAT_VERSION} document "
                             f"(format {doc.get('format')!r} v{doc.get('format_version')})")
        self._doc = json.loads(json.dumps(doc))  # a private copy, plain JSON types
        zones = self._doc["zones"]
        # Series 0 is UTC (unknown countries); then one per distinct zone series.
        series: list[tuple[list[int], list[int]]] = [([_TS_MIN], [0])]
        index_of: dict[str, int] = {}
        for zone, entry in zones.items():
            if "same_as" not in entry:
                t, o = entry["transitions"], entry["offsets_minutes"]
                if not t or len(t) != len(o) or t != sorted(t):
                    raise ValueError(f"offset table zone {zone!r}: transitions must be sorted "
                                     f"and as many as the offsets")
                index_of[zone] = len(series)
                series.append((t, o))
        for zone, entry in zones.items():
            if "same_as" in entry:
                if entry["same_as"] not in index_of:
                    raise ValueError(f"offset table zone {zone!r}: same_as "
                                     f"{entry['same_as']!r} has no series")
                index_of[zone] = index_of[entry["same_as"]]
        for owner, zone in [*self._doc["countries"].items(), *self._doc["subdivisions"].items()]:
            if zone not in index_of:
                raise ValueError(f"offset table: {owner!r} names zone {zone!r} without a series")
        # Scalar path: country -> (transitions, offsets, series id, its subdivisions or None),
        # the subdivisions under both spellings ('US-CA' and 'CA').
        subs: dict[str, dict[str, tuple]] = {}
        for code, zone in self._doc["subdivisions"].items():
            country, short = code.split("-", 1)
            entry = (*series[index_of[zone]], index_of[zone], None)
            subs.setdefault(country, {})[code] = entry
            subs[country][short] = entry
        self._utc = (*series[0], 0, None)
        self._by_country = {c: (*series[index_of[z]], index_of[z], subs.get(c))
                            for c, z in self._doc["countries"].items()}
        # Vectorised path: every series in one sorted key array, block j = series j.
        sizes = [len(t) for t, _ in series]
        self._starts = np.cumsum([0, *sizes[:-1]]).astype(np.int64)
        self._keys = np.concatenate([j * _BLOCK + (np.asarray(t, dtype=np.int64) - _TS_MIN)
                                     for j, (t, _) in enumerate(series)])
        self._offsets = np.concatenate([np.asarray(o, dtype=np.int64) for _, o in series])
        self._bases = np.arange(len(series), dtype=np.int64) * _BLOCK - _TS_MIN
        self._pair_memo: dict[tuple, int] = {}  # (country, subdivision) -> series id
        self._country_series = {c: e[2] for c, e in self._by_country.items()}  # UTC: 0
        self._subdivided = frozenset(c for c, e in self._by_country.items() if e[3] is not None)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the pair memo: equal tables pickle equal, whatever they looked up."""
        return {**self.__dict__, "_pair_memo": {}}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "OffsetTable":
        """The table of a ``build_offset_table`` document (e.g. read from a bundle)."""
        return cls(doc)

    @classmethod
    def build(cls, countries: Iterable[str] | None = None,
              years: tuple[int, int] = DEFAULT_YEARS) -> "OffsetTable":
        """``from_json(build_offset_table(countries, years))``."""
        return cls(build_offset_table(countries, years))

    def to_json(self) -> dict[str, Any]:
        """The JSON-able document this table was built from (an equal copy)."""
        return json.loads(json.dumps(self._doc))

    @property
    def years(self) -> tuple[int, int]:
        return tuple(self._doc["years"])

    @property
    def tzdata_version(self) -> str:
        return self._doc["tzdata"]

    @property
    def countries(self) -> list[str]:
        return sorted(self._doc["countries"])

    def zone_of(self, country: str | None, geo_region: str | None = None) -> str:
        """The zone this table uses for a country/subdivision (``UTC_ZONE`` if unknown)."""
        if country not in self._doc["countries"]:
            return UTC_ZONE
        code = subdivision_code(country, geo_region)
        return self._doc["subdivisions"].get(code) or self._doc["countries"][country]

    def _entry(self, country: Any, geo_region: Any) -> tuple:
        """(transitions, offsets, series id, subdivisions) of a country/subdivision, else UTC's."""
        entry = self._by_country.get(country) if isinstance(country, str) else None
        if entry is None:
            return self._utc
        subs = entry[3]
        if subs is not None and isinstance(geo_region, str) and geo_region:
            return subs.get(geo_region) or subs.get(geo_region.strip().upper()) or entry
        return entry

    def offset_minutes(self, ts_seconds: Any, country: Any, geo_region: Any = None) -> Any:
        """UTC offset in minutes at instant(s) ``ts_seconds`` (see ``local_offset_minutes``)."""
        kind = type(ts_seconds)
        if ((kind is int or kind is float) and (type(country) is str or country is None)
                and (geo_region is None or type(geo_region) is str)):
            # The scorer's path, kept to plain Python: a dict hit or two and one bisect.
            entry = self._by_country.get(country, self._utc)
            subs = entry[3]
            if subs is not None and geo_region:
                entry = subs.get(geo_region) or subs.get(geo_region.strip().upper()) or entry
            if kind is float:
                ts_seconds = math.floor(ts_seconds)
            i = bisect.bisect_right(entry[0], ts_seconds) - 1
            return entry[1][i if i > 0 else 0]
        if _is_scalar(ts_seconds) and _is_scalar(country) and _is_scalar(geo_region):
            # NumPy scalars and other odd types: plain values, or no code at all.
            transitions, offsets, _, _ = self._entry(_plain(country), _plain(geo_region))
            i = bisect.bisect_right(transitions, math.floor(ts_seconds)) - 1
            return offsets[i if i > 0 else 0]
        return self._offsets_many(ts_seconds, country, geo_region)

    def _offsets_many(self, ts_seconds: Any, country: Any, geo_region: Any) -> np.ndarray:
        ts = np.asarray(ts_seconds)
        if ts.dtype.kind == "f":
            ts = np.floor(ts)
        ts = ts.astype(np.int64).reshape(-1)
        countries = [country] if _is_scalar(country) else list(country)
        regions = [geo_region] if _is_scalar(geo_region) else list(geo_region)
        lengths = {len(ts), len(countries), len(regions)} - {1}
        if len(lengths) > 1:
            raise ValueError(f"offset lookup: ts, country and geo_region lengths differ "
                             f"({len(ts)}, {len(countries)}, {len(regions)})")
        n = lengths.pop() if lengths else 1
        ts = np.broadcast_to(ts, (n,))
        countries = countries * n if len(countries) == 1 else countries
        regions = regions * n if len(regions) == 1 else regions
        ids = np.fromiter(self._series_ids(countries, regions), dtype=np.int64, count=n)
        return self._lookup(ids, ts)

    def offset_minutes_coded(self, ts_seconds: np.ndarray, country_at: np.ndarray,
                             countries: list, region_at: np.ndarray, regions: list
                             ) -> np.ndarray:
        """``offset_minutes`` of factorised columns: row i is at ``ts_seconds[i]`` in country
        ``countries[country_at[i]]`` and subdivision ``regions[region_at[i]]`` (codes as
        ``offset_minutes`` reads them; positions as NumPy indexes, -1 the last value). Each
        distinct country is resolved once, and each (country, subdivision) pair of a country
        with several zones once per table (memoised for str/None codes); the rows are never
        walked in Python: what a caller that already holds its columns factorised (the
        scorer's batch encoder) saves over ``offset_minutes``.

        Returns:
            (n,) int64 minutes, equal to ``offset_minutes`` of the expanded columns.
        """
        country_at = np.asarray(country_at, np.int64).reshape(-1)
        region_at = np.asarray(region_at, np.int64).reshape(-1)
        if not len(country_at):
            return np.empty(0, dtype=np.int64)
        width = len(regions)
        if country_at.min() < 0:
            country_at = np.where(country_at < 0, country_at + len(countries), country_at)
        if region_at.min() < 0:
            region_at = np.where(region_at < 0, region_at + width, region_at)
        # Per distinct country: its series and whether a subdivision can change it; only the
        # rows of those countries are resolved per (country, subdivision) pair.
        if _PLAIN_CODES.issuperset(map(type, countries)):  # C-level dict lookups
            ids = np.fromiter(map(self._country_series.get, countries, repeat(0)), np.int64,
                              len(countries))
            split = np.fromiter(map(self._subdivided.__contains__, countries), bool,
                                len(countries))
        else:
            entries = [self._entry(c, None) for c in countries]
            ids = np.array([e[2] for e in entries], dtype=np.int64)
            split = np.array([e[3] is not None for e in entries], dtype=bool)
        ids = ids[country_at]
        if split.any():
            rows = np.flatnonzero(split[country_at])
            if len(rows):
                pairs, inverse = np.unique(country_at[rows] * width + region_at[rows],
                                           return_inverse=True)
                found = self._pair_series([countries[i] for i in (pairs // width).tolist()],
                                          [regions[i] for i in (pairs % width).tolist()])
                ids[rows] = found[inverse.reshape(-1)]
        ts = np.asarray(ts_seconds)
        if ts.dtype.kind == "f":
            ts = np.floor(ts)
        return self._lookup(ids, np.broadcast_to(ts.astype(np.int64).reshape(-1), ids.shape))

    def _pair_series(self, countries: list, regions: list) -> np.ndarray:
        """Series ids of (country, subdivision) pairs; pairs of plain codes (str or None) are
        memoised on the table, so a pair seen in an earlier batch is one dict lookup."""
        if not (_PLAIN_CODES.issuperset(map(type, countries))
                and _PLAIN_CODES.issuperset(map(type, regions))):
            return np.array([self._entry(c, r)[2] for c, r in zip(countries, regions)],
                            dtype=np.int64)  # odd values: resolved, never memoised
        keys = list(zip(countries, regions))
        memo = self._pair_memo
        found = list(map(memo.get, keys))
        if None in found:
            if len(memo) + len(keys) > _PAIR_MEMO_MAX:
                memo.clear()
            for i, key in enumerate(keys):
                if found[i] is None:
                    found[i] = memo[key] = self._entry(*key)[2]
        return np.array(found, dtype=np.int64)

    def _lookup(self, ids: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Offsets of instants ``ts`` in series ``ids``. A series with no change between the
        batch's first and last instant has one offset for all its rows (two binary searches
        per series); the rows of the others take one binary search over all series."""
        if len(ts) < _WINDOW_MIN_ROWS:
            return self._search(ids, np.clip(ts, _TS_MIN, _TS_MAX - 1))
        low, high = int(ts.min()), int(ts.max())
        if low < _TS_MIN or high >= _TS_MAX:
            ts = np.clip(ts, _TS_MIN, _TS_MAX - 1)
            low, high = max(low, _TS_MIN), min(high, _TS_MAX - 1)
        first = np.searchsorted(self._keys, self._bases + low, side="right")
        moving = first != np.searchsorted(self._keys, self._bases + high, side="right")
        out = self._offsets[np.maximum(first - 1, self._starts)][ids]
        if moving.any():
            rows = np.flatnonzero(moving[ids])
            if len(rows):
                out[rows] = self._search(ids[rows], ts[rows])
        return out

    def _search(self, ids: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Offsets of clipped instants ``ts`` in series ``ids``: one binary search over all."""
        pos = np.searchsorted(self._keys, ids * _BLOCK + (ts - _TS_MIN), side="right") - 1
        return self._offsets[np.maximum(pos, self._starts[ids])]

    def _series_ids(self, countries: list, regions: list) -> list[int]:
        """Series id per row; each distinct (country, geo_region) pair is resolved once."""
        memo: dict[tuple, int] = {}
        get, ids = memo.get, []
        try:
            for key in zip(countries, regions):
                sid = get(key)
                if sid is None:
                    sid = memo[key] = self._entry(*key)[2]
                ids.append(sid)
        except TypeError:  # an unhashable value (a list, a dict): no code, like any non-string
            ids = [self._entry(*(v if isinstance(v, str) else None for v in key))[2]
                   for key in zip(countries, regions)]
        return ids


def local_offset_minutes(ts_seconds: Any, country: Any, geo_region: Any,
                         table: OffsetTable) -> Any:
    """UTC offset (minutes) of the local clock at an impression's instant, DST included.

    The one function the ETL and the scorer share. Scalars in -> a Python int (O(log n), no
    NumPy call); any array argument -> an int64 array (the others broadcast), vectorised.

    Args:
        ts_seconds: epoch seconds (UTC), int/float or an array of them.
        country: ISO-3166-1 alpha-2 code(s); unknown, empty or None -> UTC (offset 0).
        geo_region: ISO-3166-2 subdivision(s) ('US-CA' or 'CA') or None; used where the
            country spans several zones, ignored otherwise.
        table: the compiled ``OffsetTable`` (the bundle's own, at scoring time).
    """
    return table.offset_minutes(ts_seconds, country, geo_region)
