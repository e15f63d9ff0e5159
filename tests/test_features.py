"""Unit tests: the feature spec's invariants and its encoders (scalar and batch paths agree)."""
import datetime as dt

import numpy as np
import pytest

from pythia import contract
from pythia import features as F
from pythia.config import Geography, Window


def test_spec_invariants():
    assert len(set(F.FEATURE_NAMES)) == len(F.FEATURE_NAMES)
    assert set(F.CATEGORICAL_FEATURES) | set(F.NUMERIC_FEATURES) == set(F.FEATURE_NAMES)
    assert all(f.kind in (F.CATEGORICAL, F.NUMERIC) for f in F.FEATURES)
    assert F.MISSING_ID != F.OOV_ID and F.FIRST_VALUE_ID > max(F.MISSING_ID, F.OOV_ID)
    assert len(F.spec_version()) == 12 and F.spec_version() == F.spec_version()


# ---- invariants in the style of TFX's features_test: the names hang together

def test_every_feature_source_is_a_contract_column_or_derived():
    impressions = set(contract.IMPRESSIONS.names)
    for f in F.FEATURES:
        assert f.source in (F.DERIVED, F.ACTIVITY, F.REGIONAL) or f.source in impressions, f
        # a regional feature pairs the region with a contract column that is itself a feature
        assert (f.source == F.REGIONAL) == (f.of is not None), f
        assert f.source != F.REGIONAL or (f.of in impressions and f.of in F.CATEGORICAL_FEATURES
                                          and F.SPLIT_COLUMN_TYPES[f.name] == F.STRING), f
        # an activity counter is a numeric column the ETL adds to every split row
        assert f.source != F.ACTIVITY or (f.kind == F.NUMERIC
                                          and F.SPLIT_COLUMN_TYPES[f.name] == F.INT64), f
        assert f.transform is None or f.kind == F.NUMERIC, f
    assert set(F.RAW_INPUT_COLUMNS) <= impressions
    # every derived feature is what derive_time_features computes (ETL and scorer alike)
    assert set(F.DERIVED_FEATURES) <= set(F.derive_time_features(0, 0))


def test_split_names_are_known():
    assert set(F.ETL_SPLIT_OF) == set(F.OUTPUT_SPLITS)
    assert set(F.ETL_SPLIT_OF.values()) == set(F.ETL_SPLITS)
    assert sorted(o for outs in F.OUTPUT_SPLITS_OF.values() for o in outs) == sorted(
        F.OUTPUT_SPLITS)
    assert set(contract.SPLIT.column(F.SPLIT).allowed) == set(F.OUTPUT_SPLITS)
    assert set(Window(dt.date(2026, 11, 20)).split_of(d)
               for d in Window(dt.date(2026, 11, 20)).dates) == set(F.ETL_SPLITS)


def test_label_columns_cover_targets():
    assert set(F.LABEL_COLUMNS) == set(F.TARGETS)
    assert (F.Y_GENDER, F.Y_AGE, F.Y_AGE_GENDER) == tuple(F.LABEL_COLUMNS[t] for t in F.TARGETS)
    assert set(F.LABEL_COLUMNS.values()) <= set(F.USER_LABEL_COLUMNS)
    for target in F.TARGETS:
        assert F.class_labels(target)


def test_split_schema_holds_every_feature_label_and_key_column():
    names = contract.SPLIT.names
    assert len(set(names)) == len(names)
    for column in (F.FEATURE_NAMES + tuple(F.LABEL_COLUMNS.values()) + F.KEY_COLUMNS
                   + F.USER_LABEL_COLUMNS + F.DERIVED_COLUMNS + (F.SPLIT, F.TS_SECONDS)):
        assert column in names, column
    # the contract columns come first, then exactly the ETL's columns with their types
    assert names[:len(contract.IMPRESSIONS.names)] == contract.IMPRESSIONS.names
    added = contract.SPLIT.columns[len(contract.IMPRESSIONS.names):]
    assert {c.name: c.type for c in added} == F.SPLIT_COLUMN_TYPES
    assert list(contract.arrow_schema(contract.SPLIT).names) == names


def test_request_columns_are_the_contract_columns_a_request_carries():
    impressions = contract.IMPRESSIONS.names
    assert set(F.REQUEST_COLUMNS) - set(F.ACTIVITY_FEATURES) <= set(impressions)
    assert set(F.REQUEST_COLUMNS) == (set(impressions) - {F.USER_ID, F.TS}
                                      | {F.USER_IMPRESSIONS_TODAY})
    assert set(F.SOURCE_COLUMNS) <= set(F.REQUEST_COLUMNS)


def test_negative_an_unknown_source_or_split_is_caught():
    bad = F.Feature("shoe_size", F.CATEGORICAL, "shoe_size")
    assert bad.source != F.DERIVED and bad.source not in contract.IMPRESSIONS.names
    with pytest.raises(KeyError):
        contract.SPLIT.column("test_unknown")


def test_labels_and_buckets():
    assert F.age_bucket_labels() == ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
    ag = F.age_gender_labels()
    assert len(ag) == 12 and ag[0] == "F_18-24" and ag[-1] == "M_65+"
    np.testing.assert_array_equal(F.age_to_bucket([17, 18, 24, 25, 64, 65, 99]),
                                  [-1, 0, 0, 1, 4, 5, 5])
    g, a = F.split_age_gender(F.age_gender_index([0, 1], [5, 2], 6), 6)
    assert list(g) == [0, 1] and list(a) == [5, 2]
    with pytest.raises(ValueError, match="income"):
        F.class_labels("income")


def test_marginals_from_joint_sum_to_one():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(12), size=5)
    m = F.marginals_from_joint(p, 6)
    np.testing.assert_allclose(m["gender"].sum(1), 1)
    np.testing.assert_allclose(m["age"].sum(1), 1)
    np.testing.assert_allclose(m["gender"][:, 0], p[:, :6].sum(1))


def test_time_features_scalar_and_array_agree():
    ts = int(dt.datetime(2026, 11, 20, 23, 30, tzinfo=dt.timezone.utc).timestamp())  # a Friday
    one = F.derive_time_features(ts, 60)  # UTC+1 -> Saturday 00:30
    assert one["local_hour"] == 0 and one["local_dow"] == 5
    arr = F.derive_time_features(np.array([ts, ts]), np.array([60, -300]))
    assert list(arr["local_hour"]) == [0, 18] and list(arr["local_dow"]) == [5, 4]
    np.testing.assert_allclose(arr["hour_sin"][0], one["hour_sin"])


def test_derive_batch_regions_and_strings():
    out = F.derive_batch({"country": np.array(["US", "ZZ", "JP", "DE"], dtype=object),
                          "device_make": np.array(["Apple", "Apple", None, ""], dtype=object),
                          "ts": np.array([0, 0, 0, 0])}, Geography())
    assert list(out["region"]) == ["NA", "OTHER", "APAC", "EU"]
    assert list(out["local_hour"]) == ["19", "0", "9", "1"]
    # the make within the row's region; no make, no regional value
    assert list(out["region_device_make"]) == ["NA|Apple", "OTHER|Apple", None, None]


def test_vocabulary_reserved_ids_and_min_count():
    v = F.Vocabulary.fit({"a": 10, "b": 3, "c": 1, "": 50, None: 7}, min_count=2, max_vocab=10)
    assert v.values == ["a", "b"] and v.size == 4
    assert v.encode_one("a") == 2 and v.encode_one("c") == F.OOV_ID
    assert v.encode_one(None) == F.MISSING_ID and v.encode_one("") == F.MISSING_ID
    assert list(v.encode(["a", "b", "c", None, "", float("nan")])) == [2, 3, 1, 0, 0, 0]
    assert list(v.encode([5])) == [F.OOV_ID]
    assert F.Vocabulary.fit({"a": 5, "b": 5, "c": 9}, 1, 2).values == ["c", "a"]


def test_numeric_stats_handle_missing_and_inf():
    s = F.NumericStats(mean=2.0, std=4.0)
    np.testing.assert_allclose(s.normalize([6.0, np.nan, np.inf, 2.0]), [1.0, 0.0, 0.0, 0.0])
    assert F.NumericStats(1.0, 0.0).normalize([3.0])[0] == 2.0


def test_encoders_round_trip_json_and_reject_other_spec():
    enc = F.Encoders(
        vocabularies={f: F.Vocabulary(["x"]) for f in F.CATEGORICAL_FEATURES},
        numeric={f: F.NumericStats(0.0, 1.0) for f in F.NUMERIC_FEATURES})
    back = F.Encoders.from_json(enc.to_json())
    cols = {f: np.array(["x", "y"], dtype=object) for f in F.CATEGORICAL_FEATURES}
    cols.update({f: np.array([0.5, np.nan]) for f in F.NUMERIC_FEATURES})
    a, b = enc.encode_batch(cols), back.encode_batch(cols)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert list(a["country"]) == [2, 1]
    doc = enc.to_json()
    doc["spec_version"] = "deadbeef0000"
    with pytest.raises(ValueError, match="deadbeef0000"):
        F.Encoders.from_json(doc)


def _general_time_features(ts, offset) -> dict:
    """The general formula, written out: what integer arrays must equal exactly."""
    local_minutes = ts // 60 + offset
    hour = (local_minutes // 60) % 24
    angle = hour * (2.0 * np.pi / 24.0)
    return {"local_hour": hour, "local_dow": ((local_minutes // 1440) + 3) % 7,
            "hour_sin": np.sin(angle), "hour_cos": np.cos(angle)}


@pytest.mark.parametrize("ts_dtype, offset_dtype", [(np.int64, np.int64), (np.int64, np.int32),
                                                    (np.int32, np.int64), (np.int32, np.int32),
                                                    (np.int64, np.int16)])
def test_time_features_of_integer_arrays_equal_the_general_formula(ts_dtype, offset_dtype):
    """Integer arrays take integer arithmetic on the local epoch seconds and a table of sin /
    cos per hour: the same values (bit for bit) and dtypes as the general formula, for
    instants before 1970, at day and week boundaries, and offsets from -12 h to +14 h."""
    rng = np.random.default_rng(5)
    ts = rng.integers(-2 ** 31, 2 ** 31 - 1, 5000)
    edges = (np.arange(-14, 15)[:, None] * 86_400 + np.array([-61, -60, -1, 0, 1, 59, 60])
             ).reshape(-1)
    ts = np.concatenate([ts, edges]).astype(ts_dtype)
    offset = rng.choice([-720, -570, -300, 0, 45, 330, 345, 525, 765, 840], len(ts))
    offset = offset.astype(offset_dtype)
    fast = F.derive_time_features(ts, offset)
    want = _general_time_features(ts, offset)
    for name, values in want.items():
        assert fast[name].dtype == values.dtype, name
        assert np.array_equal(fast[name], values), name
    assert set(fast["local_hour"].tolist()) == set(range(24))
    assert set(fast["local_dow"].tolist()) == set(range(7))


def test_time_features_of_scalars_and_float_arrays_keep_the_general_formula():
    """One request (Python ints) and float instants are computed as before; a row of an
    integer array equals the same row computed alone."""
    ts, offset = 1_700_000_123, -300
    one = F.derive_time_features(ts, offset)
    assert type(one["local_hour"]) is int and type(one["local_dow"]) is int
    assert one == _general_time_features(ts, offset)
    many = F.derive_time_features(np.array([ts, ts + 3600]), np.array([offset, offset]))
    assert int(many["local_hour"][0]) == one["local_hour"]
    assert float(many["hour_sin"][0]) == float(one["hour_sin"])
    floats = F.derive_time_features(np.array([ts + 0.5]), np.array([offset]))
    assert floats["local_hour"].dtype == np.float64 and floats["local_hour"][0] == 17.0
    assert one["local_hour"] == 17  # 2023-11-14 22:15 UTC at UTC-5


def test_log1p_counts_normalise_with_unknown_as_the_mean():
    stats = F.NumericStats(mean=1.0, std=0.5, transform=F.LOG1P)
    x = np.array([0, 1, np.e - 1, -1, np.nan, np.inf])
    np.testing.assert_allclose(stats.normalize(x), [-2.0, (np.log(2) - 1) / 0.5, 0, 0, 0, 0],
                               rtol=1e-6)
    assert F.feature_transform(F.USER_IMPRESSIONS_TODAY) == F.LOG1P
    assert F.feature_transform("hour_sin") is None
    enc = F.Encoders({}, {"x": stats})
    assert F.Encoders.from_json(enc.to_json()).numeric["x"] == stats  # travels with the model
    with pytest.raises(ValueError, match="unknown numeric transform 'sqrt'"):
        F.transform_values("sqrt", x)


def test_a_regional_vocabulary_keeps_only_values_the_scorer_can_reach():
    """The scorer finds a regional id from its column's id (``scoring.boundary``), so a value
    whose column value has no id of its own (cut by max_vocab, say) would be trained on and
    never served: the encoders drop it."""
    from pythia.tfrecords.layout import make_encoders
    counts = {"device_make": {"Apple": 90, "Nokia": 40},  # "Rare" already cut
              "region_device_make": {"NA|Apple": 60, "EU|Apple": 30, "EU|Nokia": 40,
                                     "APAC|Rare": 9}}
    enc = make_encoders(counts, {}, (18, 25, 35, 45, 55, 65))
    assert enc.vocabularies["region_device_make"].values == ["NA|Apple", "EU|Nokia",
                                                             "EU|Apple"]
