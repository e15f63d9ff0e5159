"""The scorer's input boundary: turn any request dict into encoded model inputs, never raising.

Raw request values are cleaned here (types, sizes, encodings, timestamps) and then encoded with
the training encoders of ``pythia.features`` (``Vocabulary.encode_one`` / ``encode``,
``NumericStats.normalize``, ``derive_time_features``); no feature is re-implemented here.

Defined behaviour for bad input (never an exception, never a NaN):

* missing key, ``None``, ``""``, a dict / list / other object, a NaN or infinite number
  -> the feature is *missing* (id ``MISSING_ID``);
* a number where a string is expected -> ``str(number)`` (``True`` -> ``"True"``);
* ``bytes`` -> decoded as UTF-8; bytes that fail to decode -> *out of vocabulary* (``OOV_ID``);
* a string longer than ``MAX_VALUE_CHARS`` (or an int too long to print) -> out of vocabulary;
* an unknown value (including an unknown country) -> out of vocabulary (the vocabulary's rule);
  an unknown country is also routed to the global model and uses UTC for local time;
* ``ts``: epoch seconds (int / float / numeric string) or an ISO-8601 string (naive = UTC);
  a missing or unusable ``ts`` (unparseable, NaN, outside 1970..9999) -> the current time,
  because a bid is scored when it happens;
* a request that is not a dict at all -> every field missing;
* the derived features (``local_hour``, ``hour_sin`` …) are always derived from ``ts`` and the
  country; values for them in the request are ignored.
"""
from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any, Mapping, Sequence

import numpy as np

from pythia import features
from pythia.config import GLOBAL_REGION, OTHER_REGION, Geography
from pythia.features import (CATEGORICAL, COUNTRY, DERIVED, FEATURES, GEO_REGION, OOV_ID, TS,
                             Encoders)

# Longer strings are never real category values; rejecting them early also bounds the work an
# adversarial request can cause (hashing / decoding megabytes).
MAX_VALUE_CHARS = 512
MAX_TS_CHARS = 64
# Valid epoch seconds: 1970-01-01 .. 9999-12-31 (what datetime can represent).
MAX_TS_SECONDS = 253_402_300_799


class _OutOfVocabulary:
    """Marker for a value that must encode to OOV_ID without being looked up."""

    def __repr__(self) -> str:
        return "<OOV>"


OOV = _OutOfVocabulary()


def clean_category(value: Any) -> str | None | _OutOfVocabulary:
    """One raw categorical value -> a string to look up, ``None`` (missing) or ``OOV``."""
    kind = type(value)
    if kind is str:
        return value if len(value) <= MAX_VALUE_CHARS else OOV
    if value is None:
        return None
    if kind is bool:
        return str(value)
    if isinstance(value, str):  # str subclasses, np.str_
        return str(value) if len(value) <= MAX_VALUE_CHARS else OOV
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if len(raw) > 4 * MAX_VALUE_CHARS:
            return OOV
        try:
            return clean_category(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return OOV
    if isinstance(value, (int, np.integer)):
        try:
            text = str(int(value))
        except ValueError:  # more digits than Python will print
            return OOV
        return text if len(text) <= MAX_VALUE_CHARS else OOV
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return str(number) if math.isfinite(number) else None
    return None


def clean_ts(value: Any) -> int | None:
    """Epoch seconds (floored) from an int/float/numeric string/ISO-8601 string, else ``None``."""
    if type(value) is int:  # the common case first
        return value if 0 <= value <= MAX_TS_SECONDS else None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        text = value.strip()
        if not text or len(text) > MAX_TS_CHARS:
            return None
        try:
            value = float(text)
        except ValueError:
            try:
                stamp = dt.datetime.fromisoformat(text)
                if stamp.tzinfo is None:
                    stamp = stamp.replace(tzinfo=dt.timezone.utc)
                value = stamp.timestamp()
            except (ValueError, OverflowError, OSError):
                return None
    if isinstance(value, (int, np.integer)):
        seconds = int(value)
    elif isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return None
        seconds = math.floor(value)
    else:
        return None
    return seconds if 0 <= seconds <= MAX_TS_SECONDS else None


class RequestEncoder:
    """Cleans and encodes requests with a bundle's encoders; routes each to a model region.

    Speed without a second encoder: each vocabulary is memoised into a dict built by calling
    ``Vocabulary.encode_one`` on its own values (plus ``None``/``""`` -> missing), so a dict hit
    returns exactly what ``encode_one`` would; any other string is out of vocabulary for both.
    Values that are not plain strings go through ``clean_category`` first. Normalised numerics
    are memoised per input value (the derived ones take few distinct values).

    Args:
        encoders: the training encoders.
        geo: country -> region map and UTC offsets.
        model_regions: regions that have their own model; others go to ``GLOBAL_REGION``.
    """

    _NUMERIC_MEMO_MAX = 4096  # distinct values memoised per numeric feature

    def __init__(self, encoders: Encoders, geo: Geography, model_regions: Sequence[str]) -> None:
        self.encoders = encoders
        self.geo = geo
        self.model_regions = frozenset(model_regions)
        # Countries outside the map belong to OTHER_REGION (Geography.region_of); it has a model
        # only if the bundle trained one, else the global model scores them.
        self._default_route = OTHER_REGION if OTHER_REGION in self.model_regions else GLOBAL_REGION
        self._route = {c: (r if r in self.model_regions else GLOBAL_REGION)
                       for c, r in geo.region_of_country.items()}
        self._offset_of = geo.offset_table.offset_minutes  # (ts, country, geo_region) -> minutes
        derived = features.derive_time_features(0, 0)
        unknown = [f.name for f in FEATURES if f.source == DERIVED and f.name not in derived]
        if unknown:
            raise ValueError(f"the scorer cannot derive feature(s) {unknown}: "
                             f"derive_time_features gives only {sorted(derived)}")
        missing = [f.name for f in FEATURES if f.kind == CATEGORICAL
                   and f.name not in encoders.vocabularies]
        missing += [f.name for f in FEATURES if f.kind != CATEGORICAL
                    and f.name not in encoders.numeric]
        if missing:
            raise ValueError(f"encoders have no entry for feature(s) {missing}")
        # (contract column or None when derived, feature name, memo of encode_one).
        self._categorical = [(None if f.source == DERIVED else f.source, f.name,
                              self._memo(encoders.vocabularies[f.name]))
                             for f in FEATURES if f.kind == CATEGORICAL]
        self._numeric = [(f.name, encoders.numeric[f.name], {}) for f in FEATURES
                         if f.kind != CATEGORICAL]

    @staticmethod
    def _memo(vocab: Any) -> dict:
        memo = {v: vocab.encode_one(v) for v in vocab.values if len(v) <= MAX_VALUE_CHARS}
        memo[None] = memo[""] = vocab.encode_one(None)
        return memo

    def _normalized(self, j: int, value: Any) -> float:
        name, stats, memo = self._numeric[j]
        key = float(value)
        hit = memo.get(key)
        if hit is None:
            hit = float(stats.normalize(value))
            if len(memo) < self._NUMERIC_MEMO_MAX:
                memo[key] = hit
        return hit

    def _time_features(self, request: Mapping, now: float | None) -> tuple[dict, str | None]:
        country = _clean_code(request.get(COUNTRY))
        ts = clean_ts(request.get(TS))
        if ts is None:
            ts = int(time.time() if now is None else now)
        offset = self._offset_of(ts, country, _clean_code(request.get(GEO_REGION)))
        return features.derive_time_features(ts, offset), country

    # ------------------------------------------------------------------ one request
    def encode_one(self, request: Any, now: float | None = None
                   ) -> tuple[list[int], list[float], str]:
        """Encode one request.

        Returns:
            (categorical ids in ``FEATURES`` order, normalised numerics in ``FEATURES`` order,
            the routed model region).
        """
        if type(request) is not dict and not isinstance(request, Mapping):
            request = {}
        derived, country = self._time_features(request, now)
        ids = []
        get = request.get
        for column, name, memo in self._categorical:
            if column is None:
                ids.append(memo.get(str(derived[name]), OOV_ID))
                continue
            value = get(column)
            if type(value) is str or value is None:
                ids.append(memo.get(value, OOV_ID))
            else:
                ids.append(_lookup_cleaned(memo, value))
        numeric = [self._normalized(j, derived[name]) for j, (name, _, _) in
                   enumerate(self._numeric)]
        return ids, numeric, self._route.get(country, self._default_route)

    # ------------------------------------------------------------------ a batch
    def encode_many(self, requests: Sequence[Any], now: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Encode a batch column by column (vectorised where the encoders allow).

        Returns:
            (ids (n, n_categorical) int64, numerics (n, n_numeric) float32,
            routed model region per request (n,) object array).
        """
        rows = [r if type(r) is dict or isinstance(r, Mapping) else {} for r in requests]
        n = len(rows)
        countries = [_clean_code(r.get(COUNTRY)) for r in rows]
        stamps = [clean_ts(r.get(TS)) for r in rows]
        if any(s is None for s in stamps):
            fallback = int(time.time() if now is None else now)
            stamps = [fallback if s is None else s for s in stamps]
        ts = np.array(stamps, dtype=np.int64)
        subdivisions = np.array([_clean_code(r.get(GEO_REGION)) for r in rows], dtype=object)
        offsets = np.asarray(self._offset_of(ts, np.array(countries, dtype=object),
                                             subdivisions), dtype=np.int64)
        derived = features.derive_time_features(ts, offsets)
        ids = np.empty((n, len(self._categorical)), dtype=np.int64)
        for j, (column, name, memo) in enumerate(self._categorical):
            if column is None:
                # Derived categoricals take few distinct values: encode each distinct one once.
                distinct, inverse = np.unique(np.asarray(derived[name]), return_inverse=True)
                vocab = self.encoders.vocabularies[name]
                ids[:, j] = vocab.encode(distinct.astype(str).tolist())[inverse.reshape(-1)]
                continue
            get = memo.get
            ids[:, j] = [get(v, OOV_ID) if (type(v) is str or v is None)
                         else _lookup_cleaned(memo, v)
                         for v in [r.get(column) for r in rows]]
        numeric = np.empty((n, len(self._numeric)), dtype=np.float32)
        for j, (name, stats, _) in enumerate(self._numeric):
            numeric[:, j] = stats.normalize(derived[name])
        route, default = self._route.get, self._default_route
        regions = np.array([route(c, default) for c in countries], dtype=object)
        return ids, numeric, regions


def _clean_code(value: Any) -> str | None:
    """A country or subdivision code as a lookup key: a usable string, else None (an unknown
    country routes to OTHER / the global model and gets UTC; an unknown subdivision, the
    country's main zone)."""
    if type(value) is str and len(value) <= MAX_VALUE_CHARS:
        return value
    cleaned = clean_category(value)
    return cleaned if type(cleaned) is str else None


def _lookup_cleaned(memo: Mapping, value: Any) -> int:
    cleaned = clean_category(value)
    return OOV_ID if cleaned is OOV else memo.get(cleaned, OOV_ID)
