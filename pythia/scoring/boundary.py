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
  country, the regional ones (``region_device_make``) from the country's region and their
  column's value (missing / out of vocabulary when that value is); values for them in the
  request are ignored;
* an activity counter (``user_impressions_today``: the bidder's count of the user's impressions
  earlier the same UTC day) that is missing, not a number, negative or non-finite is *unknown*
  (``clean_count``): it is encoded as the training mean (normalised 0), not as 0 impressions.
"""
from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np

from pythia import features
from pythia.config import GLOBAL_REGION, OTHER_REGION, Geography
from pythia.features import (ACTIVITY, CATEGORICAL, COUNTRY, DERIVED, FEATURES, GEO_REGION,
                             OOV_ID, REGIONAL, TS, Encoders)
from pythia.scoring import columnar
from pythia.scoring.cleaning import (MAX_TS_CHARS, MAX_TS_SECONDS, MAX_VALUE_CHARS, OOV,
                                     clean_category, clean_code, clean_count, clean_ts,
                                     lookup_cleaned)

# Re-exported: callers and tests name the rules through this module.
__all__ = ["MAX_TS_CHARS", "MAX_TS_SECONDS", "MAX_VALUE_CHARS", "OOV", "RequestEncoder",
           "clean_category", "clean_code", "clean_count", "clean_ts"]

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
        self._offsets_coded = geo.offset_table.offset_minutes_coded  # the batch path's
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
        # (contract column or None when derived, feature name, memo of encode_one); a regional
        # feature's entry is a placeholder: its ids come from ``_regional`` after the others.
        self._categorical = [(None if f.source in (DERIVED, REGIONAL) else f.source, f.name,
                              self._memo(encoders.vocabularies[f.name]))
                             for f in FEATURES if f.kind == CATEGORICAL]
        self._regional, self._region_code = self._regional_tables(encoders, geo)
        # (feature name, statistics, memo, read from the request (an activity counter) or
        # derived from ts)
        self._numeric = [(f.name, encoders.numeric[f.name], {}, f.source == ACTIVITY)
                         for f in FEATURES if f.kind != CATEGORICAL]
        # a derived numeric as the split Parquet stores it, the value the models trained on
        # (``hour_sin`` as float32: one ulp from the float64 sine at some hours)
        self._stored = np.dtype(features.KIND_TYPES[features.NUMERIC]).type
        # The batch path: the same memos applied to whole columns, and the columns it reads.
        offsets_doc = geo.offsets if geo.offsets is not None else geo.offset_table.to_json()
        self._subdivided = frozenset(code.split("-", 1)[0]
                                     for code in offsets_doc["subdivisions"])
        self._lookups = [columnar.CategoryLookup(memo) for _, _, memo in self._categorical]
        self._columns = list(dict.fromkeys([COUNTRY, GEO_REGION, TS] + [
            column for column, _, _ in self._categorical if column is not None] + [
            name for name, _, _, requested in self._numeric if requested]))

    @staticmethod
    def _regional_tables(encoders: Encoders, geo: Geography) -> tuple[list, dict]:
        """Per regional feature (its position, its column's position, the (region code, column
        id) -> id table as an array and as lists), and country -> region code (unknown
        countries: OTHER_REGION's).

        The table holds what the vocabulary gives ``regional_values``' string of each region and
        value of the column's vocabulary; a missing or out-of-vocabulary value stays so."""
        position = {name: j for j, name in enumerate(features.CATEGORICAL_FEATURES)}
        regions = sorted(set(geo.region_of_country.values()) | {OTHER_REGION})
        code = {c: regions.index(r) for c, r in geo.region_of_country.items()}
        code[None] = regions.index(OTHER_REGION)
        out = []
        for f in features.REGIONAL_FEATURES:
            if f.of not in position:
                raise ValueError(f"regional feature {f.name}: {f.of!r} is not a categorical "
                                 f"feature, so the scorer cannot encode it")
            of, vocab = encoders.vocabularies[f.of], encoders.vocabularies[f.name]
            table = np.empty((len(regions), of.size), dtype=np.int64)
            for r, region in enumerate(regions):
                keys = features.regional_values([region] * len(of.values), of.values)
                table[r] = np.concatenate([[features.MISSING_ID, OOV_ID], vocab.encode(keys)])
            # the one-request path indexes nested lists (a NumPy scalar index costs more)
            out.append((position[f.name], position[f.of], table, table.tolist()))
        return out, code

    @staticmethod
    def _memo(vocab: Any) -> dict:
        memo = {v: vocab.encode_one(v) for v in vocab.values if len(v) <= MAX_VALUE_CHARS}
        memo[None] = memo[""] = vocab.encode_one(None)
        return memo

    def _normalized(self, j: int, value: Any) -> float:
        name, stats, memo, requested = self._numeric[j]
        key = float(value)
        if key != key:  # NaN: unknown -> the mean (and never a memo entry: NaN != NaN)
            return 0.0
        hit = memo.get(key)
        if hit is None:  # a derived value as stored (``_stored``), on a miss only
            hit = float(stats.normalize(value if requested else self._stored(value)))
            if len(memo) < self._NUMERIC_MEMO_MAX:
                memo[key] = hit
        return hit

    def _time_features(self, request: Mapping, now: float | None) -> tuple[dict, str | None]:
        country = clean_code(request.get(COUNTRY))
        ts = clean_ts(request.get(TS))
        if ts is None:
            ts = int(time.time() if now is None else now)
        offset = self._offset_of(ts, country, clean_code(request.get(GEO_REGION)))
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
                ids.append(memo.get(str(derived[name]), OOV_ID) if name in derived else 0)
                continue
            value = get(column)
            if type(value) is str or value is None:
                ids.append(memo.get(value, OOV_ID))
            else:
                ids.append(lookup_cleaned(memo, value))
        if self._regional:
            r = self._region_code.get(country, self._region_code[None])
            for j, j_of, _, rows in self._regional:
                ids[j] = rows[r][ids[j_of]]
        numeric = [self._normalized(j, clean_count(get(name)) if requested else derived[name])
                   for j, (name, _, _, requested) in enumerate(self._numeric)]
        return ids, numeric, self._route.get(country, self._default_route)

    def route_one(self, request: Any) -> str:
        """The model region ``encode_one`` routes ``request`` to, without encoding it."""
        if type(request) is not dict and not isinstance(request, Mapping):
            return self._default_route
        return self._route.get(clean_code(request.get(COUNTRY)), self._default_route)

    # ------------------------------------------------------------------ a batch
    def encode_many(self, requests: Any, now: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Encode a batch column by column with array operations; row i equals
        ``encode_one(request i)`` (``pythia.scoring.columnar`` says how each column is read).

        Args:
            requests: a sequence of request dicts, or the batch as columns: a dict of column
                name -> list/array, a pandas DataFrame or a pyarrow Table/RecordBatch (string
                or dictionary-encoded columns; a column it lacks is missing in every row).
            now: epoch seconds for rows without a usable ``ts`` (default: now).

        Returns:
            (ids (n, n_categorical) int64, numerics (n, n_numeric) float32,
            routed model region per request (n,) object array).

        Raises:
            ValueError: columns that are not arrays/lists of one common length.
        """
        ids, numeric, route_at, routes = self.encode_routed(requests, now)
        return ids, numeric, np.array(routes, dtype=object)[route_at]

    def encode_routed(self, requests: Any, now: float | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """``encode_many`` with the regions factorised: (ids, numerics, (n,) positions into
        the list of region names, that list). A name may have no row."""
        return self.encode_columns(*self.columns_of(requests), now)

    def columns_of(self, requests: Any) -> tuple[dict[str, Any], int]:
        """(the batch's columns this encoder reads, row count): ``columnar.batch_columns``.
        Every encoder of a bundle reads the same columns (the features are the code's)."""
        return columnar.batch_columns(requests, self._columns)

    def encode_columns(self, columns: Mapping[str, Any], n: int, now: float | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """``encode_routed`` of a batch already read by ``columns_of`` (or a ``take`` of its
        rows)."""
        fallback = int(time.time() if now is None else now)
        ts = columnar.clean_stamps(columns[TS], n, fallback)
        country_at, countries = columnar.factorize_codes(columns[COUNTRY], n)
        region_at, regions = columnar.factorize_codes(columns[GEO_REGION], n)
        # A subdivision matters only where the country has several zones: dropping the others
        # leaves the offsets unchanged and the (country, subdivision) pairs few.
        # The codes stay factorised: the table resolves each distinct pair once.
        split = np.array([c in self._subdivided for c in countries], dtype=bool)[country_at]
        offsets = self._offsets_coded(ts, country_at, countries,
                                      np.where(split, region_at, len(regions)), regions + [None])
        derived = features.derive_time_features(ts, offsets)
        ids = np.empty((n, len(self._categorical)), dtype=np.int64)
        for j, ((column, name, _), lookup) in enumerate(zip(self._categorical, self._lookups)):
            if column is None and name not in derived:  # regional: below
                continue
            ids[:, j] = (columnar.derived_ids(derived[name], lookup) if column is None
                         else lookup.encode(columns[column], n))
        if self._regional:  # one gather from the flattened table: row = region, column = id
            other = self._region_code[None]
            region = np.array([self._region_code.get(c, other) for c in countries],
                              dtype=np.intp)[country_at]
            for j, j_of, table, _ in self._regional:
                ids[:, j] = np.take(table.ravel(), region * table.shape[1] + ids[:, j_of])
        numeric = np.empty((n, len(self._numeric)), dtype=np.float32)
        for j, (name, stats, _, requested) in enumerate(self._numeric):
            numeric[:, j] = stats.normalize(columnar.clean_counts(columns[name], n) if requested
                                            else derived[name].astype(self._stored))
        return (ids, numeric, *self._routes(country_at, countries, n))

    def route_columns(self, columns: Mapping[str, Any], n: int
                      ) -> tuple[np.ndarray, list[str]]:
        """The last two of ``encode_columns``' results, without encoding: (n,) positions into
        the list of routed model regions, that list."""
        return self._routes(*columnar.factorize_codes(columns[COUNTRY], n), n)

    def _routes(self, country_at: np.ndarray, countries: list, n: int
                ) -> tuple[np.ndarray, list[str]]:
        route, default = self._route.get, self._default_route
        route_of = [route(c, default) for c in countries]
        routes = list(dict.fromkeys(route_of))
        if len(routes) == 1:
            return np.zeros(n, dtype=np.intp), routes
        code = {r: i for i, r in enumerate(routes)}
        return np.array([code[r] for r in route_of], np.intp)[country_at], routes
