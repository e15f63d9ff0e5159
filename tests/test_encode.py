"""The batched request encoder (``RequestEncoder.encode_many``, ``pythia.scoring.columnar``):
every row, whatever form the batch takes, encodes exactly as ``encode_one`` encodes it."""
from __future__ import annotations

import collections
import datetime as dt
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pythia.features import CATEGORICAL_FEATURES, MISSING_ID, OOV_ID, TARGETS, Vocabulary
from pythia.scoring import Scorer, write_bundle
from pythia.scoring.boundary import MAX_VALUE_CHARS, RequestEncoder
from test_scoring import _REQUEST, GEO, layers, make_encoders, make_export

TS = 1_700_000_000
US_DST_START = 1_710_054_000  # 2024-03-10T07:00:00Z: 02:00 EST -> 03:00 EDT
DE_DST_START = 1_711_846_800  # 2024-03-31T01:00:00Z: 02:00 CET -> 03:00 CEST
AU_DST_END = 1_712_415_600  # 2024-04-06T16:00:00Z: 03:00 AEDT -> 02:00 AEST (Sydney)


class _Claims:
    """A hostile value: hashes and compares equal to a vocabulary string."""

    def __hash__(self) -> int:
        return hash("os_1")

    def __eq__(self, other) -> bool:
        return True


class _Unhashable:
    __hash__ = None


def mixed_requests() -> list:
    """Known, unknown, missing, unicode and bad-typed values; several countries, both sides of
    three DST changes; requests that are not dicts."""
    rows = []
    for ts in (US_DST_START - 1, US_DST_START, DE_DST_START - 1, DE_DST_START, AU_DST_END - 1,
               AU_DST_END):
        for country, region in (("US", "CA"), ("US", " ny "), ("US", "US-TX"), ("DE", None),
                                ("AU", "NSW"), ("AU", "AU-WA"), ("JP", "x"), ("XX", "CA")):
            rows.append({"country": country, "geo_region": region, "ts": ts, "os": "os_1",
                         "site_or_app": "site_or_app_2", "inventory_type": "app"})
    odd = [None, "", "os_0", "unknown", "Zürich", "東京", "🙂", "x" * (MAX_VALUE_CHARS + 1), 7,
           2.5, -0.0, 0.0, float("nan"), float("inf"), True, b"os_1", b"\xff\xfe", {"a": 1},
           [1], object(), 10 ** 5000, np.int64(3), np.str_("os_2"), np.float32(0.1),
           _Claims(), _Unhashable()]
    stamps = [TS, TS + 0.9, str(TS), "2023-11-14T22:13:20Z", "2023-11-14T23:13:20+01:00",
              "2023-11-14T22:13:20", b"1700000000", None, "soon", float("nan"), -5, 10 ** 30,
              True, "9" * 100, np.int64(TS), np.float64(TS + 0.5)]
    for i, value in enumerate(odd):
        rows.append({"country": odd[(i + 3) % len(odd)], "ts": stamps[i % len(stamps)],
                     "os": value, "device_model": value, "geo_region": value,
                     "ad_size": odd[(i + 7) % len(odd)]})
    rows.append({"country": "US"})  # no ts: the fallback instant
    rows += ["not a dict", None, 5, [("country", "US")], {},
             types.MappingProxyType({"country": "DE", "os": "os_0", "ts": TS}),
             collections.OrderedDict(country="JP", os="os_2", ts=TS)]
    return rows


@pytest.fixture(scope="module")
def encoder() -> RequestEncoder:
    return RequestEncoder(make_encoders(), GEO, ["global", "NA"])


def assert_rows_equal(encoder: RequestEncoder, batch, rows: list, now: float = TS) -> None:
    ids, numeric, regions = encoder.encode_many(batch, now=now)
    assert ids.shape == (len(rows), len(CATEGORICAL_FEATURES)) and ids.dtype == np.int64
    assert numeric.dtype == np.float32 and len(regions) == len(rows)
    for i, row in enumerate(rows):
        one_ids, one_numeric, one_region = encoder.encode_one(row, now=now)
        assert ids[i].tolist() == one_ids, (i, row)
        np.testing.assert_array_equal(numeric[i], np.array(one_numeric, dtype=np.float32))
        assert regions[i] == one_region, (i, row)


def test_list_of_requests_matches_encode_one(encoder):
    rows = mixed_requests()
    assert_rows_equal(encoder, rows, rows)
    ids, _, _ = encoder.encode_many(rows, now=TS)
    col = CATEGORICAL_FEATURES.index("os")
    claims = next(i for i, r in enumerate(rows) if isinstance(r, dict)
                  and isinstance(r.get("os"), _Claims))
    assert ids[claims, col] == MISSING_ID  # not looked up as "os_1": not a string
    assert {MISSING_ID, OOV_ID} < set(ids[:, col].tolist())


def test_uniform_rows_and_rows_missing_keys_agree(encoder):
    full = [{c: r.get(c) for c in ("country", "geo_region", "ts", "os", "site_or_app",
                                   "inventory_type", "device_model", "ad_size")}
            for r in mixed_requests() if isinstance(r, dict)]
    assert_rows_equal(encoder, full, full)  # every row has every key: the transposing path
    ragged = full + [{"country": "DE"}]  # the last row lacks keys: the per-column path
    assert_rows_equal(encoder, ragged, ragged)


def _dict_rows() -> list[dict]:
    return [r for r in mixed_requests() if type(r) is dict]


def _columns(rows: list[dict]) -> dict[str, list]:
    names = sorted({k for r in rows for k in r})
    return {c: [r.get(c) for r in rows] for c in names}


def test_columns_as_lists_and_object_arrays(encoder):
    rows = _dict_rows()
    cols = _columns(rows)
    assert_rows_equal(encoder, cols, rows)
    assert_rows_equal(encoder, {c: np.array(v + [None], dtype=object)[:-1]
                                for c, v in cols.items()}, rows)


def test_typed_numpy_columns():
    encoders = make_encoders()  # numbers in the vocabularies, so a wrong string shows
    encoders.vocabularies["ad_size"] = Vocabulary(["0.0", "2.0", "1e+20", "-7.0", "nan"])
    encoders.vocabularies["os"] = Vocabulary(["1", "-3", "7", "True"])
    encoder = RequestEncoder(encoders, GEO, ["global", "NA"])
    ts = np.array([TS, TS + 0.9, np.nan, np.inf, -1.0, 1e300, US_DST_START - 0.5, DE_DST_START])
    cols = {"ts": ts, "country": np.array(["US", "DE", "", "AU", "JP", "XX", "US", "DE"]),
            "ad_size": np.array([-0.0, 0.0, np.nan, 2.0, 1e20, 3.5, 0.1, -7.0]),
            "os": np.array([1, 2, -3, 0, 2 ** 62, 7, 7, 1], dtype=np.int64),
            "device_model": np.array([b"device_model_1", b"\xff", b"", b"x"] * 2)}
    rows = [{c: v[i] for c, v in cols.items()} for i in range(len(ts))]
    assert_rows_equal(encoder, cols, rows)
    int_ts = {"ts": np.array([TS, -5, 10 ** 15, US_DST_START], dtype=np.int64),
              "country": ["US"] * 4}
    assert_rows_equal(encoder, int_ts, [{c: v[i] for c, v in int_ts.items()}
                                        for i in range(4)])


def _clean_typed_rows() -> list[dict]:
    """Rows Arrow can hold: strings or null per column, ts int or null."""
    rows = []
    values = [None, "", "os_0", "os_2", "unknown", "Zürich", "🙂", "x" * (MAX_VALUE_CHARS + 1)]
    for i in range(48):
        rows.append({"country": ["US", "DE", "AU", "JP", "XX", None, ""][i % 7],
                     "geo_region": ["CA", "ny", "US-TX", "NSW", None, "", "WA"][i % 7],
                     "ts": [US_DST_START - 1, US_DST_START, DE_DST_START, AU_DST_END - 1,
                            AU_DST_END, None][i % 6],
                     "os": values[i % len(values)],
                     "site_or_app": values[(i + 3) % len(values)].replace("os", "site_or_app")
                     if values[(i + 3) % len(values)] else values[(i + 3) % len(values)]})
    return rows


def test_pyarrow_tables_plain_and_dictionary(encoder):
    pa = pytest.importorskip("pyarrow")
    rows = _clean_typed_rows()
    table = pa.Table.from_pylist(rows)
    assert_rows_equal(encoder, table, table.to_pylist())
    encoded = pa.table({c: (table[c].dictionary_encode() if pa.types.is_string(table[c].type)
                            else table[c]) for c in table.column_names})
    assert_rows_equal(encoder, encoded, rows)
    chunked = pa.concat_tables([encoded.slice(0, 20), encoded.slice(20)])  # two dictionaries
    assert_rows_equal(encoder, chunked, rows)
    assert_rows_equal(encoder, encoded.to_batches()[0], rows)
    # dictionary columns without a null (their indices read as they are) next to ones with
    full = [{c: ("" if v is None and c != "ts" else v) for c, v in r.items()} for r in rows]
    no_nulls = pa.Table.from_pylist(full)
    no_nulls = pa.table({c: (no_nulls[c].dictionary_encode() if c != "ts" else no_nulls[c])
                         for c in no_nulls.column_names})
    assert all(no_nulls[c].null_count == 0 for c in no_nulls.column_names if c != "ts")
    assert_rows_equal(encoder, no_nulls, full)
    large = table.cast(pa.schema([pa.field(f.name, pa.large_string() if
                                           pa.types.is_string(f.type) else f.type)
                                  for f in table.schema]))
    assert_rows_equal(encoder, large, rows)


def _arrow_forms(pa, rows: list[dict]) -> dict:
    """One batch as Arrow tables a producer might send: plain string, large_string,
    dictionary (int32 and int8 indices, large_string values) columns, and two chunks."""
    plain = pa.Table.from_pylist(rows, schema=pa.schema(
        [(c, pa.int64() if c == "ts" else pa.string()) for c in rows[0]]))
    strings = [f.name for f in plain.schema if f.name != "ts"]

    def cast(kind):
        return plain.cast(pa.schema([pa.field(f.name, f.type if f.name == "ts" else kind)
                                     for f in plain.schema]))
    dictionary = pa.table({c: (plain[c].dictionary_encode() if c in strings else plain[c])
                           for c in plain.column_names})
    forms = {"string": plain, "large_string": cast(pa.large_string()),
             "dictionary": dictionary,
             "dictionary int8": cast(pa.dictionary(pa.int8(), pa.string())),
             "dictionary of large_string": cast(pa.dictionary(pa.int32(), pa.large_string()))}
    if len(rows) > 1:
        forms["two chunks"] = pa.concat_tables([plain.slice(0, 1), plain.slice(1)])
        forms["two dictionary chunks"] = pa.concat_tables([dictionary.slice(0, 1),
                                                           dictionary.slice(1)])
    return forms


_EDGE_VALUES = [None, "", "os_0", "os_2", "OS_2", " os_2", "os_2 ", "unseen", "Zürich", "🙂",
                "x" * (MAX_VALUE_CHARS + 1), "os_1", "site_or_app_1", "device_model_2"]


def _edge_rows(n: int) -> list[dict]:
    """n rows of nulls, "", known, unseen, case / whitespace variants, over-long strings."""
    v = _EDGE_VALUES
    return [{"country": ["US", None, "de", "DE", "", "XX", " JP"][i % 7],
             "geo_region": ["CA", None, " ny", "WA", ""][i % 5], "ts": [TS, None][i % 2],
             "os": v[i % len(v)], "site_or_app": v[(i + 5) % len(v)].replace("os", "site_or_app")
             if v[(i + 5) % len(v)] else v[(i + 5) % len(v)],
             "device_model": v[(i + 9) % len(v)]} for i in range(n)]


@pytest.mark.parametrize("n", [1, 3, 4, 60])
@pytest.mark.parametrize("vocab", [3, 400])
def test_arrow_string_columns_both_lookups_match_encode_one(n, vocab):
    """Arrow strings are looked up whole with ``index_in`` when the column is at least as long
    as the vocabulary, else dictionary-encoded and looked up per distinct value: both ways,
    in every Arrow form, every row equals ``encode_one`` (boundary rules unchanged)."""
    pa = pytest.importorskip("pyarrow")
    encoders = make_encoders()
    for name in ("os", "site_or_app", "device_model"):
        encoders.vocabularies[name] = Vocabulary([f"{name}_{i}" for i in range(vocab)])
    encoder = RequestEncoder(encoders, GEO, ["global", "NA"])
    lookup = encoder._lookups[CATEGORICAL_FEATURES.index("os")]
    assert (n >= lookup._n_strings) == (vocab == 3 and n >= 4)  # both lookups are covered
    rows = _edge_rows(n)
    for form, table in _arrow_forms(pa, rows).items():
        assert table.num_rows == n, form
        assert_rows_equal(encoder, table, rows)
        assert_rows_equal(encoder, table.to_batches()[-1], rows[-len(table.to_batches()[-1]):])


def test_arrow_stream_dictionaries_reused_only_when_equal():
    """Batches of an Arrow IPC stream share their dictionaries (the ids of the last one are
    kept); a dictionary of the same length but other values or order, or of another string
    type, must not take them."""
    pa = pytest.importorskip("pyarrow")
    encoder = RequestEncoder(make_encoders(), GEO, ["global", "NA"])
    values = ["os_0", "os_2", None, "", "unseen", "OS_0"]
    rows = [{"ts": TS, "country": "US", "os": values[i % len(values)]} for i in range(30)]
    os_type = pa.dictionary(pa.int32(), pa.string())
    schema = pa.schema([("ts", pa.int64()), ("country", os_type), ("os", os_type)])
    table = pa.Table.from_pylist(rows, schema=schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for batch in table.to_batches(max_chunksize=7):
            writer.write_batch(batch)
    batches = list(pa.ipc.open_stream(sink.getvalue()))
    assert len(batches) == 5
    for k, batch in enumerate(batches):
        assert_rows_equal(encoder, batch, rows[7 * k:7 * k + batch.num_rows])
    lookup = encoder._lookups[CATEGORICAL_FEATURES.index("os")]
    assert lookup._last is not None and lookup._last[0].equals(batches[-1]["os"].dictionary)
    # the same length, other values / order / type: each must be looked up afresh
    known = pa.DictionaryArray.from_arrays(pa.array([0, 1, 2, 3, 4, 5], pa.int32()),
                                           pa.array(values, pa.string()))
    others = [pa.DictionaryArray.from_arrays(known.indices, pa.array(v, kind)) for v, kind in (
        (list(reversed(values)), pa.string()), (["os_1", "os_2", None, "", "x", "os_0"],
                                                pa.string()), (values, pa.large_string()))]
    for dictionary_column in [known] + others + [known]:
        cells = dictionary_column.to_pylist()
        batch = pa.table({"ts": [TS] * len(cells), "os": dictionary_column})
        assert_rows_equal(encoder, batch, [{"ts": TS, "os": v} for v in cells])


def test_empty_and_all_null_arrow_batches(encoder):
    pa = pytest.importorskip("pyarrow")
    for form, table in _arrow_forms(pa, _edge_rows(3)).items():
        empty = table.slice(0, 0)
        ids, numeric, regions = encoder.encode_many(empty, now=TS)
        assert ids.shape == (0, len(CATEGORICAL_FEATURES)) and numeric.shape[0] == 0, form
        assert len(regions) == 0
    nulls = [{"country": None, "geo_region": None, "ts": None, "os": None,
              "site_or_app": None, "device_model": None}] * 5
    for form, table in _arrow_forms(pa, nulls).items():
        assert_rows_equal(encoder, table, nulls)
        ids, _, _ = encoder.encode_many(table, now=TS)
        assert (ids[:, CATEGORICAL_FEATURES.index("os")] == MISSING_ID).all(), form
    typed = pa.table({"os": pa.array([], pa.string()), "ts": pa.array([], pa.int64())})
    assert encoder.encode_many(typed)[0].shape == (0, len(CATEGORICAL_FEATURES))


def test_derived_ids_by_table_and_beyond_it(encoder):
    """Small non-negative ints are looked up by one gather; others (negative, large, floats)
    the general way; both give the vocabulary's id of the decimal string."""
    from pythia.scoring.columnar import derived_ids
    lookup = encoder._lookups[CATEGORICAL_FEATURES.index("local_hour")]
    vocab = make_encoders().vocabularies["local_hour"]
    for values in (np.arange(24), np.array([0, 23, 5, 5]), np.array([-1, 3, 24, 100, 63, 64]),
                   np.array([2 ** 40, 7]), np.array([], dtype=np.int64), np.array([3.0, 7.0])):
        want = [vocab.encode_one(str(v)) for v in values.tolist()]
        assert derived_ids(values, lookup).tolist() == want, values


def test_pandas_frames_object_and_category(encoder):
    pd = pytest.importorskip("pandas")
    rows = _clean_typed_rows()
    frame = pd.DataFrame(rows)  # ts with a null becomes float64 NaN
    assert_rows_equal(encoder, frame, [{**r, "ts": float("nan") if r["ts"] is None else r["ts"]}
                                       for r in rows])
    category = frame.astype({c: "category" for c in ("country", "geo_region", "os",
                                                     "site_or_app")})
    assert_rows_equal(encoder, category, rows)


def _rows_around_every_change(encoder: RequestEncoder, year: int = 2024) -> list[dict]:
    """A request a second before, at and after every change of ``year`` in every zone of the
    encoder's offset table, through each country and subdivision (in both spellings) naming
    the zone, ts as int and as an ISO string, rows shuffled."""
    table = encoder.geo.offset_table
    doc = table.to_json()
    owners = [(c, None) for c in doc["countries"]]
    for code in doc["subdivisions"]:
        owners += [(code.split("-", 1)[0], code), (code.split("-", 1)[0], code.split("-")[1])]
    lo = int(dt.datetime(year, 1, 1, tzinfo=dt.timezone.utc).timestamp())
    hi = int(dt.datetime(year + 1, 1, 1, tzinfo=dt.timezone.utc).timestamp())
    rows = []
    for country, region in owners:
        entry = doc["zones"][table.zone_of(country, region)]
        series = doc["zones"][entry["same_as"]] if "same_as" in entry else entry
        for change in (t for t in series["transitions"][1:] if lo <= t < hi):
            for ts in (change - 1, change, change + 1):
                iso = dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat()
                rows.append({"country": country, "geo_region": region,
                             "ts": ts if len(rows) % 2 else iso, "os": "os_1"})
    order = np.random.default_rng(4).permutation(len(rows))
    return [rows[i] for i in order]


def test_rows_around_every_dst_change_match_encode_one(encoder):
    rows = _rows_around_every_change(encoder)
    assert len(rows) > 300  # dozens of zones change their clocks twice in 2024
    assert_rows_equal(encoder, rows, rows)
    assert_rows_equal(encoder, _columns(rows), rows)
    hour = CATEGORICAL_FEATURES.index("local_hour")
    ids, _, _ = encoder.encode_many(rows, now=TS)
    before_after = {}  # the local hour does change across the changes
    for row, i in zip(rows, ids[:, hour].tolist()):
        before_after.setdefault((row["country"], row["geo_region"]), set()).add(i)
    assert sum(len(v) > 1 for v in before_after.values()) > 20
    pa = pytest.importorskip("pyarrow")
    arrow_rows = [{**r, "ts": r["ts"] if isinstance(r["ts"], int) else int(
        dt.datetime.fromisoformat(r["ts"]).timestamp())} for r in rows]
    table = pa.Table.from_pylist(arrow_rows)
    encoded = pa.table({c: (table[c].dictionary_encode() if pa.types.is_string(table[c].type)
                            else table[c]) for c in table.column_names})
    assert_rows_equal(encoder, encoded, arrow_rows)


def test_absent_columns_and_empty_batches(encoder):
    ids, numeric, regions = encoder.encode_many({"country": ["US", "DE"]}, now=TS)
    assert_rows_equal(encoder, {"country": ["US", "DE"]}, [{"country": "US"}, {"country": "DE"}])
    assert (ids[:, CATEGORICAL_FEATURES.index("os")] == MISSING_ID).all()
    for empty in ([], {}, {"country": []}):
        ids, numeric, regions = encoder.encode_many(empty)
        assert ids.shape == (0, len(CATEGORICAL_FEATURES)) and len(regions) == 0


@pytest.mark.parametrize("batch,match", [
    ({"country": ["US", "DE"], "os": ["os_1"]}, "length"),
    ({"country": "US", "ts": TS}, "not an array"),  # one request, not columns
])
def test_bad_columnar_batches_are_refused(encoder, batch, match):
    with pytest.raises(ValueError, match=match):
        encoder.encode_many(batch)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=st.lists(_REQUEST, max_size=12))
def test_random_batches_match_encode_one(encoder, reqs):
    assert_rows_equal(encoder, reqs, reqs)


# ---------------------------------------------------------------------- the scorer's batch APIs

@pytest.fixture(scope="module")
def scorer64(tmp_path_factory) -> Scorer:
    encoders = make_encoders()
    models = {"global": layers(make_export(encoders, seed=1)),
              "NA": layers(make_export(encoders, seed=2, age_link="softmax"))}
    out = str(tmp_path_factory.mktemp("enc") / "bundle")
    return Scorer.load(write_bundle(models, encoders, GEO, "Test/encode", out), dtype="float64")


def test_score_arrays_and_batch_equal_score(scorer64):
    rows = mixed_requests()
    arrays = scorer64.score_arrays(rows, now=TS)
    batch = scorer64.score_batch(rows, now=TS)
    assert {b["region"] for b in batch} == {"NA", "global"}
    for i, row in enumerate(rows):
        one = scorer64.score(row, now=TS)
        assert batch[i]["region"] == one["region"]
        for t in TARGETS:
            want = list(one[t].values())
            np.testing.assert_allclose(arrays[t][i], want, atol=1e-9, rtol=0)
            np.testing.assert_allclose(list(batch[i][t].values()), want, atol=1e-9, rtol=0)


def test_routes_without_rows_and_empty_batches(scorer64):
    """A sliced Arrow batch whose dictionary still names a country of another model's region
    (a route with no rows) scores like ``score``; an empty batch gives empty arrays."""
    pa = pytest.importorskip("pyarrow")
    rows = [{"country": c, "ts": TS, "os": "os_1"} for c in ("US", "DE", "US", "JP")]
    plain = pa.Table.from_pylist(rows)
    table = pa.table({c: (plain[c].dictionary_encode() if c != "ts" else plain[c])
                      for c in plain.column_names})
    part = table.slice(1, 1)  # DE only; "US" (the NA model's) stays in the dictionary
    assert "US" in part["country"].chunk(0).dictionary.to_pylist()
    arrays = scorer64.score_arrays(part, now=TS)
    batch = scorer64.score_batch(part, now=TS)
    one = scorer64.score(rows[1], now=TS)
    assert [b["region"] for b in batch] == [one["region"]] == ["global"]
    for t in TARGETS:
        np.testing.assert_allclose(arrays[t][0], list(one[t].values()), atol=1e-9, rtol=0)
    for empty in (table.slice(0, 0), plain.slice(0, 0), []):
        arrays = scorer64.score_arrays(empty, now=TS)
        assert {t: a.shape[0] for t, a in arrays.items()} == {t: 0 for t in TARGETS}
        assert scorer64.score_batch(empty, now=TS) == []


def test_score_arrays_takes_columns(scorer64):
    rows = _dict_rows()
    want = scorer64.score_arrays(rows, now=TS)
    got = scorer64.score_arrays(_columns(rows), now=TS)
    for t in TARGETS:
        np.testing.assert_array_equal(got[t], want[t])
