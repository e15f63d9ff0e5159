"""Tests of the bid-time scorer: export, fused NumPy runtime, boundary, CLI, parity."""
from __future__ import annotations

import datetime as dt
import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pythia import features
from pythia.config import GLOBAL_REGION, Geography
from pythia.features import (CATEGORICAL_FEATURES, FEATURES, MISSING_ID, NUMERIC_FEATURES,
                             OOV_ID, TARGETS, Encoders, NumericStats, Vocabulary)
from pythia.models.export import NUMPY_LAYERS, SAVED_MODEL
from pythia.scoring import Scorer, read_bundle_doc, run_score_cli, write_bundle
from pythia.scoring.boundary import MAX_VALUE_CHARS, OOV, RequestEncoder, clean_category, clean_ts
from pythia.scoring.runtime import FusedMLP, check_export, load_export_npz, save_export_npz
from s3_fixtures import moto_s3, s3_env  # noqa: F401  (pytest fixtures)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TS = 1_700_000_000  # 2023-11-14T22:13:20Z, a Tuesday


# ---------------------------------------------------------------------- fixtures

def make_encoders() -> Encoders:
    vocab = {f.name: Vocabulary([f"{f.name}_{i}" for i in range(3)])
             for f in FEATURES if f.kind == features.CATEGORICAL}
    vocab["country"] = Vocabulary(["US", "DE", "JP", "ZZ"])
    vocab["inventory_type"] = Vocabulary(["site", "app"])
    vocab["local_hour"] = Vocabulary([str(h) for h in range(24)])
    vocab["local_dow"] = Vocabulary([str(d) for d in range(7)])
    vocab["region_device_make"] = Vocabulary(["NA|device_make_0", "EU|device_make_1",
                                              "APAC|device_make_0", "OTHER|device_make_2"])
    numeric = {name: NumericStats(mean=0.1, std=0.7) for name in NUMERIC_FEATURES}
    return Encoders(vocabularies=vocab, numeric=numeric)


def make_export(encoders: Encoders, seed: int = 0, age_link: str = "corn",
                hidden: tuple[int, ...] = (8, 5), dim: int | tuple[int, ...] = 3,
                wide: bool = False) -> dict:
    """A random export in the ``MLPModel.export_numpy()`` structure (with a wide part when
    ``wide``); ``dim``: every embedding's width, or a width per table (cycled)."""
    rng = np.random.default_rng(seed)
    dims = [dim] * len(CATEGORICAL_FEATURES) if isinstance(dim, int) else \
        [dim[j % len(dim)] for j in range(len(CATEGORICAL_FEATURES))]
    emb = [(n, rng.normal(size=(encoders.vocabularies[n].size, d)))
           for n, d in zip(CATEGORICAL_FEATURES, dims)]
    width = sum(dims) + len(NUMERIC_FEATURES)
    trunk = []
    for h in hidden:
        trunk.append((rng.normal(size=(width, h)) / math.sqrt(width), rng.normal(size=h), "relu"))
        width = h
    n_age = len(encoders.age_edges)
    k = {"gender": 2, "age": n_age - 1 if age_link == "corn" else n_age,
         "age_gender": 2 * n_age}
    links = {"gender": "softmax", "age": age_link, "age_gender": "softmax"}
    heads = {t: (rng.normal(size=(width, k[t])) * 2, rng.normal(size=k[t]), links[t])
             for t in TARGETS}
    n_classes = {t: len(features.class_labels(t, encoders.age_edges)) for t in TARGETS}
    export = {"kind": "mlp", "embeddings": emb, "numeric": list(NUMERIC_FEATURES),
              "trunk": trunk, "heads": heads,
              "temperature": {"gender": 1.3, "age": 0.8, "age_gender": 1.1},
              "prior_ratio": {t: rng.uniform(0.3, 2.0, size=n_classes[t]) for t in TARGETS}}
    if wide:  # per-value logits of the size a fitted LR gives (|w| mostly below 1)
        export["wide"] = {t: [(n, rng.normal(0, 0.5, size=(encoders.vocabularies[n].size, k[t])))
                              for n in CATEGORICAL_FEATURES] for t in TARGETS}
        export["wide_numeric"] = {t: rng.normal(size=(len(NUMERIC_FEATURES), k[t]))
                                  for t in TARGETS}
    return export


def layers(export: dict, **extra) -> dict:
    """A ``write_bundle`` payload of the MLP's fused-NumPy runtime."""
    return {"kind": "mlp", "runtime": NUMPY_LAYERS, "export": export, **extra}


def reference_predict(export: dict, ids: np.ndarray, numeric: np.ndarray) -> dict:
    """The export's definition, computed the plain way (concat, layer by layer); the gender
    and age heads are training aids: the output's gender and age are AgeGender's marginals."""
    x = np.concatenate([t[ids[:, j]] for j, (_, t) in enumerate(export["embeddings"])]
                       + [numeric.astype(np.float64)], axis=1)
    for W, b, act in export["trunk"]:
        x = x @ W + b
        if act == "relu":
            x = np.maximum(x, 0)
    out = {}
    for t, (W, b, link) in export["heads"].items():
        z = x @ W + b
        if "wide" in export:  # a logit row per categorical value, plus numeric @ W
            z = z + sum(table[ids[:, j]] for j, (_, table) in enumerate(export["wide"][t]))
            z = z + numeric.astype(np.float64) @ export["wide_numeric"][t]
        z = z / export["temperature"][t]
        if link == "softmax":
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
        else:
            s = np.cumprod(1 / (1 + np.exp(-z)), axis=1)
            p = np.concatenate([1 - s[:, :1], s[:, :-1] - s[:, 1:], s[:, -1:]], axis=1)
        p = p * export["prior_ratio"][t]
        out[t] = p / p.sum(axis=1, keepdims=True)
    # what every runtime outputs: gender and age as the AgeGender marginals (gender-major)
    return features.marginals_from_joint(out["age_gender"], out["age_gender"].shape[1] // 2)


GEO = Geography(region_of_country={"US": "NA", "CA": "NA", "DE": "EU", "JP": "APAC"})


@pytest.fixture(scope="module")
def encoders() -> Encoders:
    return make_encoders()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, encoders) -> str:
    out = str(tmp_path_factory.mktemp("b") / "bundle")
    models = {GLOBAL_REGION: layers(make_export(encoders, seed=1)),
              "NA": layers(make_export(encoders, seed=2, age_link="softmax"))}
    return write_bundle(models, encoders, GEO, "DemoFlow/7/end/21", out)


@pytest.fixture(scope="module")
def scorer(bundle) -> Scorer:
    return Scorer.load(bundle)


def request(**kw) -> dict:
    base = {"impression_id": "i1", "country": "US", "ts": TS, "inventory_type": "app",
            "site_or_app": "site_or_app_1", "device_type": "device_type_0", "os": "os_2"}
    base.update(kw)
    return base


def assert_valid(out: dict, scorer: Scorer) -> None:
    for t in TARGETS:
        probs = np.array(list(out[t].values()))
        assert list(out[t]) == list(scorer.labels[t])
        assert np.all(np.isfinite(probs)) and np.all(probs >= 0), (t, probs)
        assert abs(probs.sum() - 1) < 1e-6
    assert out["region"] in scorer.models
    assert out["model_version"] == scorer.version


# ---------------------------------------------------------------------- runtime

MIXED_DIMS = (3, 5, 3, 1, 8, 5)  # tables of several widths: the batch path groups them by width


@pytest.mark.parametrize("dim", [3, MIXED_DIMS], ids=["one-width", "mixed-widths"])
@pytest.mark.parametrize("wide", [False, True], ids=["deep", "wide"])
@pytest.mark.parametrize("age_link", ["corn", "softmax"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5)])
def test_fused_mlp_matches_reference(encoders, age_link, dtype, tol, wide, dim):
    export = make_export(encoders, seed=3, age_link=age_link, wide=wide, dim=dim)
    rng = np.random.default_rng(0)
    ids = np.stack([rng.integers(0, encoders.vocabularies[n].size, 50)
                    for n in CATEGORICAL_FEATURES], axis=1)
    numeric = rng.normal(size=(50, len(NUMERIC_FEATURES))).astype(np.float32)
    want = reference_predict(export, ids, numeric)
    got = FusedMLP(export, encoders, dtype=dtype).predict(ids, numeric)
    for t in TARGETS:
        np.testing.assert_allclose(got[t], want[t], atol=tol, rtol=0)


@pytest.mark.parametrize("hidden", [(8, 5), ()], ids=["trunk", "no-trunk"])
@pytest.mark.parametrize("wide", [False, True], ids=["deep", "wide"])
@pytest.mark.parametrize("age_link", ["corn", "softmax"])
@pytest.mark.parametrize("max_fused_bytes", [None, 0])
def test_predict_one_and_chunks_match_reference(encoders, age_link, max_fused_bytes, wide,
                                                hidden):
    export = make_export(encoders, seed=4, age_link=age_link, wide=wide, hidden=hidden,
                         dim=MIXED_DIMS)
    rng = np.random.default_rng(1)
    ids = np.stack([rng.integers(0, encoders.vocabularies[n].size, 23)
                    for n in CATEGORICAL_FEATURES], axis=1)
    numeric = rng.normal(size=(23, len(NUMERIC_FEATURES)))
    kw = {} if max_fused_bytes is None else {"max_fused_bytes": max_fused_bytes}
    mlp = FusedMLP(export, encoders, dtype="float64", **kw)
    assert mlp.premultiplied is (max_fused_bytes is None)
    mlp.chunk_rows = 5  # 23 rows -> 5 chunks, the last one short
    want = reference_predict(export, ids, numeric)
    for few_rows in (FusedMLP.few_rows, 0):  # chunks of few rows: pre-multiplied table or not
        mlp.few_rows = few_rows
        got = mlp.predict(ids, numeric)
        for t in TARGETS:
            np.testing.assert_allclose(got[t], want[t], atol=1e-12)
    for i in range(len(ids)):
        one = mlp.predict_one(ids[i].tolist(), numeric[i].tolist())
        for t in TARGETS:
            np.testing.assert_allclose(one[t], want[t][i], atol=1e-12)


@pytest.mark.parametrize("hidden", [(8, 5), ()], ids=["trunk", "no-trunk"])
@pytest.mark.parametrize("wide", [False, True], ids=["deep", "wide"])
def test_forward_pass_computes_only_the_age_gender_head(encoders, hidden, wide):
    """Gender and age are AgeGender's marginals: the other heads' logits (and their wide
    parts) are not computed, so the last affine map is AgeGender's alone."""
    export = make_export(encoders, seed=9, hidden=hidden, wide=wide)
    mlp = FusedMLP(export, encoders, dtype="float64")
    n_joint = len(features.class_labels("age_gender", encoders.age_edges))
    last = mlp.layers[-1][0] if mlp.layers else mlp._W1_grouped
    assert last.shape[1] == n_joint and mlp.n_out == n_joint
    if wide:
        assert mlp._wide_stacked.shape[1] == n_joint
        assert mlp._wide_numeric.shape == (len(NUMERIC_FEATURES), n_joint)
    # the gender and age heads' weights change nothing
    for t in ("gender", "age"):
        W, b, link = export["heads"][t]
        export["heads"][t] = (W * 7.0 + 1.0, b - 3.0, link)
    ids = np.ones((4, len(CATEGORICAL_FEATURES)), dtype=np.int64)
    numeric = np.linspace(-1, 1, 4 * len(NUMERIC_FEATURES)).reshape(4, -1)
    again = FusedMLP(export, encoders, dtype="float64").predict(ids, numeric)
    for t, p in mlp.predict(ids, numeric).items():
        np.testing.assert_array_equal(p, again[t])


@pytest.mark.parametrize("max_fused_bytes", [None, 0])
def test_empty_batch(encoders, max_fused_bytes):
    kw = {} if max_fused_bytes is None else {"max_fused_bytes": max_fused_bytes}
    mlp = FusedMLP(make_export(encoders, seed=10, wide=True, dim=MIXED_DIMS), encoders, **kw)
    got = mlp.predict(np.zeros((0, len(CATEGORICAL_FEATURES)), dtype=np.int64),
                      np.zeros((0, len(NUMERIC_FEATURES)), dtype=np.float32))
    assert {t: p.shape for t, p in got.items()} == {
        t: (0, len(features.class_labels(t, encoders.age_edges))) for t in TARGETS}


def test_dtype_is_checked(encoders):
    with pytest.raises(ValueError, match="dtype"):
        FusedMLP(make_export(encoders), encoders, dtype="float16")


def test_no_trunk_and_extreme_logits_stay_finite(encoders):
    export = make_export(encoders, seed=5, hidden=())
    for t in TARGETS:
        W, b, link = export["heads"][t]
        export["heads"][t] = (W * 1e4, b, link)  # logits in the 1e4s: exp would overflow
    ids = np.ones((3, len(CATEGORICAL_FEATURES)), dtype=np.int64)
    numeric = np.full((3, len(NUMERIC_FEATURES)), 5.0, dtype=np.float32)
    mlp = FusedMLP(export, encoders)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow is benign
        got = mlp.predict(ids, numeric)
        one = mlp.predict_one(ids[0].tolist(), numeric[0].tolist())
    for t in TARGETS:
        assert np.all(np.isfinite(got[t])) and np.allclose(got[t].sum(axis=1), 1)
        assert np.all(np.isfinite(one[t])) and math.isclose(sum(one[t]), 1)


def test_zero_prior_ratio_rules_a_class_out(encoders):
    export = make_export(encoders, seed=6)
    ratio = np.zeros(12)  # AgeGender is gender-major: only M_65+ keeps mass
    ratio[-1] = 1.0
    export["prior_ratio"]["age_gender"] = ratio
    mlp = FusedMLP(export, encoders)
    got = mlp.predict(np.ones((2, len(CATEGORICAL_FEATURES)), int),
                      np.zeros((2, len(NUMERIC_FEATURES))))
    np.testing.assert_allclose(got["gender"], [[0, 1], [0, 1]])
    np.testing.assert_allclose(got["age"][:, -1], 1)
    one = mlp.predict_one([1] * len(CATEGORICAL_FEATURES), [0.0] * len(NUMERIC_FEATURES))
    assert one["gender"] == [0.0, 1.0] and one["age"][-1] == 1.0


@pytest.mark.parametrize("mutate,match", [
    (lambda e: e.update(kind=""), "kind"),
    (lambda e: e["embeddings"].reverse(), "categorical FEATURES"),
    (lambda e: e.update(numeric=["hour_cos", "hour_sin"]), "numeric"),
    (lambda e: e["embeddings"].__setitem__(0, ("country", np.zeros((2, 3)))), "rows"),
    (lambda e: e["trunk"].__setitem__(0, (*e["trunk"][0][:2], "gelu")), "activation"),
    (lambda e: e["heads"].__setitem__("age", (*e["heads"]["age"][:2], "softmax")), "age"),
    (lambda e: e["heads"].pop("gender"), "gender"),
    (lambda e: e["temperature"].__setitem__("age", 0.0), "temperature"),
    (lambda e: e["prior_ratio"].__setitem__("gender", np.zeros(2)), "prior_ratio"),
    (lambda e: e["trunk"][1][0].__setitem__((0, 0), np.nan), "NaN"),
    (lambda e: e.pop("prior_ratio"), "lacks"),
    (lambda e: e["temperature"].pop("age_gender"), "age_gender"),
    (lambda e: e.pop("wide_numeric"), "needs both"),
    (lambda e: e["wide"]["age"].reverse(), "wide 'age' tables"),
    (lambda e: e["wide"]["age"].__setitem__(4, ("site_or_app", np.zeros((5, 9)))),
     r"wide 'age' table of 'site_or_app' has shape \(5, 9\)"),
    (lambda e: e["wide_numeric"].__setitem__("gender", np.zeros((2, 3))), "wide_numeric of"),
    (lambda e: e["wide"]["gender"][0][1].__setitem__((0, 0), np.inf), "wide 'gender'.*NaN"),
])
def test_check_export_names_the_bad_entry(encoders, mutate, match):
    export = make_export(encoders, seed=7, wide=True)
    mutate(export)
    with pytest.raises(ValueError, match=match):
        check_export(export, encoders)


@pytest.mark.parametrize("wide", [False, True], ids=["deep", "wide"])
def test_npz_round_trip(tmp_path, encoders, wide):
    export = make_export(encoders, seed=8, wide=wide)
    path = str(tmp_path / "w.npz")
    save_export_npz(export, path)
    back = load_export_npz(path)
    assert ("wide" in back) is wide and ("wide_numeric" in back) is wide
    ids = np.stack([np.arange(3) % encoders.vocabularies[n].size for n in CATEGORICAL_FEATURES],
                   axis=1)
    numeric = np.linspace(-1, 1, 3 * len(NUMERIC_FEATURES)).reshape(3, -1).astype(np.float32)
    a, b = reference_predict(export, ids, numeric), reference_predict(back, ids, numeric)
    assert back["temperature"] == export["temperature"]
    for t in TARGETS:
        np.testing.assert_array_equal(a[t], b[t])


# ---------------------------------------------------------------------- boundary

@pytest.mark.parametrize("value,want", [
    ("abc", "abc"), ("", ""), (None, None), (7, "7"), (2.5, "2.5"), (True, "True"),
    (float("nan"), None), (float("inf"), None), ({"a": 1}, None), ([1], None), (object(), None),
    (b"abc", "abc"), (b"\xff\xfe", OOV), ("x" * (MAX_VALUE_CHARS + 1), OOV), (10 ** 5000, OOV),
    (np.int64(3), "3"), (np.str_("q"), "q"),
], ids=lambda v: type(v).__name__)
def test_clean_category(value, want):
    assert clean_category(value) == want if want is not OOV else clean_category(value) is OOV


@pytest.mark.parametrize("value,want", [
    (TS, TS), (TS + 0.9, TS), (str(TS), TS), ("2023-11-14T22:13:20Z", TS),
    ("2023-11-14T22:13:20", TS), ("2023-11-14T23:13:20+01:00", TS), (b"1700000000", TS),
    (None, None), (True, None), ("soon", None), (float("nan"), None), ("inf", None),
    (-5, None), (10 ** 30, None), ({"ts": 1}, None), ("9" * 100, None), (b"\xff", None),
], ids=lambda v: type(v).__name__)
def test_clean_ts(value, want):
    assert clean_ts(value) == want


@pytest.mark.parametrize("value,want", [
    (dt.datetime(2023, 11, 14, 22, 13, 20), TS),  # naive: UTC
    (dt.datetime(2023, 11, 14, 23, 13, 20, 999999, tzinfo=dt.timezone(dt.timedelta(hours=1))),
     TS),
    (pd.Timestamp("2023-11-14 22:13:20.999999999"), TS),  # floored, not rounded up
    (pd.Timestamp("2023-11-14 17:13:20", tz="America/New_York"), TS),
    (np.datetime64("2023-11-14T22:13:20.5"), TS), (np.datetime64("2023-11-14T22:13:20", "ns"), TS),
    (pd.NaT, None), (np.datetime64("NaT"), None), (dt.datetime(1960, 1, 1), None),
], ids=lambda v: type(v).__name__)
def test_clean_ts_reads_timestamps_as_the_instant(value, want):
    """A datetime is what a pandas / pyarrow / Spark timestamp column holds: it is the instant
    it names, not an unusable value (which would silently score the row at 'now')."""
    assert clean_ts(value) == want


def test_a_timestamp_column_scores_like_epoch_seconds(scorer):
    """Bid logs read from Parquet carry ts as a timestamp column (any unit, with or without a
    zone): every batch form scores its rows at their own time, as epoch seconds do, and a
    null stays 'now'."""
    import pyarrow as pa

    secs = [TS, TS + 5 * 3600 + 59, TS + 12 * 3600, None]
    reqs = [request(ts=s) for s in secs]
    want = scorer.score_arrays(reqs, now=TS + 3 * 3600)
    stamps = pd.to_datetime(pd.Series(secs, dtype="float64"), unit="s") + pd.Timedelta("999ms")
    cols = {k: [r[k] for r in reqs] for k in reqs[0] if k != "ts"}
    variants = {
        "pandas": pd.DataFrame({**cols, "ts": stamps}),
        "pandas tz": pd.DataFrame({**cols, "ts": stamps.dt.tz_localize("UTC").dt.tz_convert(
            "Asia/Tokyo")}),
        "arrow us": pa.table({**{k: pa.array(v) for k, v in cols.items()},
                              "ts": pa.array(stamps, pa.timestamp("us"))}),
        "arrow ms tz": pa.table({**{k: pa.array(v) for k, v in cols.items()},
                                 "ts": pa.array(stamps, pa.timestamp("ms", tz="UTC"))}),
        "numpy": {**{k: np.asarray(v, dtype=object) for k, v in cols.items()},
                  "ts": stamps.to_numpy()},
        "datetimes": [dict(r, ts=None if s is None else dt.datetime.fromtimestamp(
            s, dt.timezone.utc)) for r, s in zip(reqs, secs)],
    }
    for name, batch in variants.items():
        got = scorer.score_arrays(batch, now=TS + 3 * 3600)
        for t in TARGETS:
            np.testing.assert_allclose(got[t], want[t], atol=1e-6, err_msg=name)
    assert not np.allclose(want["gender"][0], want["gender"][2])  # the hour matters here


def test_encode_one_matches_features_module(encoders):
    """The scorer encodes a request as the ETL's columns (``derive_batch``) are encoded for
    training, the regional make included (known, unknown, missing, in and out of the map)."""
    enc = RequestEncoder(encoders, GEO, ["global", "NA"])
    made = CATEGORICAL_FEATURES.index("region_device_make")
    cases = [("US", "device_make_0"), ("DE", "device_make_1"), ("JP", "device_make_0"),
             ("DE", "device_make_0"), ("ZZ", "device_make_2"), ("US", "nope"), ("US", None)]
    for country, make in cases:
        req = request(country=country, device_make=make)
        ids, numeric, region = enc.encode_one(req)
        derived = features.derive_batch({"country": np.array([country], dtype=object),
                                         "device_make": np.array([make], dtype=object),
                                         "ts": np.array([TS])}, GEO)
        want = encoders.encode_batch({**{c: np.array([req.get(c)], dtype=object)
                                         for c in features.RAW_INPUT_COLUMNS}, **derived})
        assert ids == [int(want[n][0]) for n in CATEGORICAL_FEATURES], (country, make)
        # the very values the models trained on: the ETL stores hour_sin / hour_cos as float32
        # before the z-score, and so does the scorer (the float64 sine is 1 ulp off at DE's hour)
        assert numeric == [float(want[n][0]) for n in NUMERIC_FEATURES], (country, make)
        assert region == ("NA" if country == "US" else "global")
        if (country, make) in cases[:3]:  # each a value of its region's vocabulary
            assert ids[made] >= features.FIRST_VALUE_ID
    assert enc.encode_one(request(country="DE", device_make="device_make_0"))[0][made] == OOV_ID
    assert enc.encode_one(request(device_make=None))[0][made] == MISSING_ID


def test_encode_many_matches_encode_one(encoders):
    enc = RequestEncoder(encoders, GEO, ["global", "NA"])
    reqs = [request(), request(country="DE", ts="2024-02-29T03:00:00Z", os=b"\xff"),
            request(country=None, ts=None, site_or_app=12), "not a dict", {}]
    makes = [request(device_make="device_make_0"),
             request(country="JP", device_make=b"device_make_0"),
             request(country="DE", device_make="device_make_1"), request(device_make=7),
             request(country="XX", device_make="device_make_2"), request(device_make="")]
    ids, numeric, regions = enc.encode_many(reqs, now=TS)
    for i, r in enumerate(reqs):
        one_ids, one_num, one_region = enc.encode_one(r, now=TS)
        assert ids[i].tolist() == one_ids
        np.testing.assert_array_equal(numeric[i], one_num)
        assert regions[i] == one_region
    assert regions.tolist() == ["NA", "global", "global", "global", "global"]
    os_col = CATEGORICAL_FEATURES.index("os")
    assert ids[1, os_col] == OOV_ID and ids[3, os_col] == MISSING_ID
    # the regional make: the batch's table lookups give each row what encode_one gives
    ids, _, _ = enc.encode_many(makes, now=TS)
    assert ids.tolist() == [enc.encode_one(r, now=TS)[0] for r in makes]
    made = CATEGORICAL_FEATURES.index("region_device_make")
    assert [ids[i, made] >= features.FIRST_VALUE_ID for i in range(len(makes))] == [
        True, True, True, False, True, False]


@settings(max_examples=300, deadline=None)
@given(value=st.text(max_size=12) | st.sampled_from(["os_1", "os_2", "", "OS_1", " os_1"]))
def test_memoised_lookup_equals_encode_one(encoders, value):
    enc = RequestEncoder(encoders, GEO, ["global"])
    column = CATEGORICAL_FEATURES.index("os")
    want = encoders.vocabularies["os"].encode_one(value)
    assert enc.encode_one({"os": value})[0][column] == want
    assert enc.encode_many([{"os": value}])[0][0, column] == want


def test_encoder_rejects_encoders_missing_a_feature(encoders):
    broken = Encoders(vocabularies={k: v for k, v in encoders.vocabularies.items()
                                    if k != "browser"}, numeric=encoders.numeric)
    with pytest.raises(ValueError, match="browser"):
        RequestEncoder(broken, GEO, ["global"])


# ---------------------------------------------------------------------- bundle + scorer

def test_bundle_layout(bundle, encoders):
    doc = read_bundle_doc(bundle)
    assert sorted(os.listdir(bundle)) == ["bundle.json", "encoders.json", "onnx",
                                          "weights-NA.npz", "weights-global.npz"]
    assert sorted(os.listdir(os.path.join(bundle, "onnx"))) == [
        "NA", "encoders.json", "global", "onnx.json"]  # every layer region also as ONNX
    assert doc["version"] == "DemoFlow/7/end/21"
    assert doc["spec_version"] == features.spec_version()
    assert doc["routing"]["region_of_country"]["DE"] == "EU"
    assert doc["format_version"] == 7 and doc["utc_offsets"]  # the compiled IANA table
    assert doc["models"]["NA"] == {"kind": "mlp", "runtime": NUMPY_LAYERS,
                                   "file": "weights-NA.npz", "source": None, "origin": None,
                                   "blessed_in": None, "blessed_date": None}
    assert doc["class_labels"]["age"] == list(features.age_bucket_labels(encoders.age_edges))


def test_write_bundle_rejects_bad_input(tmp_path, encoders):
    export = make_export(encoders)
    with pytest.raises(ValueError, match="global"):
        write_bundle({"NA": layers(export)}, encoders, GEO, "v", str(tmp_path))
    with pytest.raises(ValueError, match="MARS"):
        write_bundle({"global": layers(export), "MARS": layers(export)}, encoders, GEO, "v",
                     str(tmp_path / "x"))
    with pytest.raises(ValueError, match="xgboost"):
        write_bundle({"global": {"kind": "xgboost", "runtime": SAVED_MODEL, "model_dir": "."}},
                     encoders, GEO, "v", str(tmp_path / "y"))
    with pytest.raises(ValueError, match="runtime 'onnx' is not one of"):
        write_bundle({"global": layers(export, runtime="onnx")}, encoders, GEO, "v",
                     str(tmp_path / "z"))
    with pytest.raises(ValueError, match="runtime None"):
        write_bundle({"global": {"kind": "mlp", "export": export}}, encoders, GEO, "v",
                     str(tmp_path / "z"))
    with pytest.raises(ValueError, match="needs 'model_dir'"):
        write_bundle({"global": {"kind": "gbdt", "runtime": SAVED_MODEL}}, encoders, GEO, "v",
                     str(tmp_path / "z"))
    for name in "xyz":
        assert not os.path.exists(tmp_path / name)


def test_bundle_without_runtime_field_still_loads(tmp_path, bundle):
    """Bundles written before entries recorded their runtime (e.g. the previous run's)."""
    import shutil
    copy = str(tmp_path / "old")
    shutil.copytree(bundle, copy)
    path = os.path.join(copy, "bundle.json")
    doc = json.load(open(path))
    for entry in doc["models"].values():
        del entry["runtime"]
    json.dump(doc, open(path, "w"))
    old, new = Scorer.load(copy), Scorer.load(bundle)
    reqs = [request(), request(country="DE"), request(country="JP", os="os_1")]
    for t in TARGETS:
        np.testing.assert_array_equal(old.score_arrays(reqs)[t], new.score_arrays(reqs)[t])


def test_export_bundle_rejects_bad_champions(tmp_path, encoders):
    pytest.importorskip("pythia.models")
    from pythia.scoring import export_bundle
    with pytest.raises(ValueError, match="model_dir"):
        export_bundle([{"region": "global", "model": "gbdt"}], encoders, GEO, "v",
                      str(tmp_path / "a"))
    with pytest.raises(ValueError, match="two champions"):
        export_bundle([{"region": "global", "model": "gbdt", "model_dir": "m"}] * 2, encoders,
                      GEO, "v", str(tmp_path / "b"))
    with pytest.raises(ValueError, match="model kind"):
        export_bundle([{"region": "global", "model": "svm", "model_dir": "m"}], encoders, GEO,
                      "v", str(tmp_path / "c"))


def test_from_run_reads_the_bundle_path_artifact(monkeypatch, bundle):
    import types

    class Data(types.SimpleNamespace):
        def __contains__(self, key):
            return hasattr(self, key)

    seen = []

    def run(pathspec, _namespace_check=True):
        assert _namespace_check is False  # every user's runs, without namespace(None)
        seen.append(pathspec)
        return types.SimpleNamespace(pathspec=pathspec, data=Data(bundle_path=bundle))

    fake = types.ModuleType("metaflow")  # the client API surface from_run uses
    fake.Run = run
    fake.Flow = lambda name, _namespace_check=True: types.SimpleNamespace(
        latest_successful_run=run(f"{name}/99", _namespace_check))
    fake.namespace = lambda ns: pytest.fail("runs.py must not change the process namespace")
    exc = types.ModuleType("metaflow.exception")
    exc.MetaflowNotFound = type("MetaflowNotFound", (Exception,), {})
    monkeypatch.setitem(sys.modules, "metaflow", fake)
    monkeypatch.setitem(sys.modules, "metaflow.exception", exc)
    assert Scorer.from_run("7").version == "DemoFlow/7/end/21"
    assert Scorer.from_run(flow_name="Other").version == "DemoFlow/7/end/21"
    assert seen == ["DemoFlow/7", "Other/99"]
    fake.Run = lambda pathspec, **kw: types.SimpleNamespace(pathspec=pathspec, data=Data())
    with pytest.raises(ValueError, match="no bundle_path"):
        Scorer.from_run("8")


def test_bundle_round_trip_on_s3(s3_env, moto_s3, encoders):
    uri = f"s3://{moto_s3.bucket}/runs/bundle"
    write_bundle({GLOBAL_REGION: layers(make_export(encoders, seed=1))}, encoders, GEO,
                 "s3-run", uri)
    assert any(k.endswith("bundle/weights-global.npz") for k in moto_s3.keys("runs/"))
    scorer = Scorer.load(uri)
    assert_valid(scorer.score(request()), scorer)


def test_load_rejects_other_spec_version(tmp_path, bundle):
    import shutil
    copy = str(tmp_path / "old")
    shutil.copytree(bundle, copy)
    doc = json.load(open(os.path.join(copy, "bundle.json")))
    doc["spec_version"] = "000000000000"
    json.dump(doc, open(os.path.join(copy, "bundle.json"), "w"))
    with pytest.raises(ValueError, match="feature spec"):
        Scorer.load(copy)
    with pytest.raises(FileNotFoundError, match="not a scoring bundle"):
        Scorer.load(str(tmp_path))


def test_score_routes_and_matches_reference(scorer, encoders):
    out = scorer.score(request())
    assert_valid(out, scorer)
    assert out["region"] == "NA"
    assert scorer.score(request(country="DE"))["region"] == "global"  # EU has no champion
    assert scorer.score(request(country="XX"))["region"] == "global"
    ids, numeric, _ = scorer.encoder.encode_one(request())
    export = make_export(encoders, seed=2, age_link="softmax")
    want = reference_predict(export, np.array([ids]), np.array([numeric]))
    for t in TARGETS:
        np.testing.assert_allclose(list(out[t].values()), want[t][0], atol=1e-5)


def test_score_batch_equals_score(scorer):
    reqs = [request(), request(country="JP", ts="2023-11-14T10:00:00Z"), request(country=5),
            {}, None]
    batch = scorer.score_batch(reqs, now=TS)
    assert len(batch) == len(reqs)
    for r, b in zip(reqs, batch):
        single = scorer.score(r, now=TS)
        assert b["region"] == single["region"]
        for t in TARGETS:
            np.testing.assert_allclose(list(b[t].values()), list(single[t].values()),
                                       atol=1e-6)
    arrays = scorer.score_arrays(reqs, now=TS)
    assert arrays["age_gender"].shape == (len(reqs), 12)
    assert scorer.score_arrays([])["gender"].shape == (0, 2)


def test_missing_ts_uses_now(scorer):
    a = scorer.score(request(ts=None), now=TS)
    b = scorer.score(request(ts=TS))
    assert a == b
    night = scorer.score(request(ts=TS + 12 * 3600))
    assert night["gender"] != b["gender"]  # the hour matters, so the fallback is meaningful


_ANY = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids,
                                                              max_size=3),
    max_leaves=5)
_KEYS = st.sampled_from(list(features.RAW_INPUT_COLUMNS) + ["impression_id", "hour_sin",
                                                            "local_hour"]) | st.text(max_size=8)
_REQUEST = st.dictionaries(_KEYS, _ANY | st.sampled_from(["US", "DE", "JP", "app", "ZZ"]),
                           max_size=12) | _ANY


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=_REQUEST)
def test_score_never_fails_on_random_requests(scorer, req):
    assert_valid(scorer.score(req), scorer)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=st.lists(_REQUEST, max_size=12))
def test_score_batch_never_fails_on_random_requests(scorer, reqs):
    out = scorer.score_batch(reqs, now=TS)
    assert len(out) == len(reqs)
    for o in out:
        assert_valid(o, scorer)


# ---------------------------------------------------------------------- CLI

def test_cli_streams_and_reports_bad_lines(bundle, scorer):
    lines = [json.dumps(request(impression_id="a")).encode(), b"{not json",
             json.dumps([1, 2]).encode(), b"", b'{"impression_id": "b", "os": "\xff\xfe"}',
             json.dumps(request(impression_id=None, ts="2023-11-14T22:13:20Z")).encode()]
    stdin = io.BytesIO(b"\n".join(lines) + b"\n")
    stdout, stderr = io.StringIO(), io.StringIO()
    code = run_score_cli(bundle, stdin, stdout, stderr=stderr, batch_size=2)
    out = [json.loads(x) for x in stdout.getvalue().splitlines()]
    assert code == 1 and len(out) == len(lines)
    assert out[0]["impression_id"] == "a"
    assert out[0]["gender"] == pytest.approx(scorer.score(request(impression_id="a"))["gender"],
                                             abs=1e-6)
    assert out[1]["line"] == 2 and "invalid JSON" in out[1]["error"]
    assert out[2] == {"line": 3, "error": "not a JSON object (got list)"}
    assert out[3] == {"line": 4, "error": "empty line"}
    assert out[4]["impression_id"] == "b" and math.isclose(sum(out[4]["age"].values()), 1,
                                                                  abs_tol=1e-6)
    assert out[5]["impression_id"] is None and out[5]["region"] == "NA"
    assert "6 lines, 3 scored, 3 errors" in stderr.getvalue()


def test_cli_text_stream_all_good_and_missing_bundle(tmp_path, bundle):
    stdout = io.StringIO()
    code = run_score_cli(bundle, io.StringIO(json.dumps(request()) + "\n"), stdout,
                         stderr=io.StringIO())
    assert code == 0 and json.loads(stdout.getvalue())["impression_id"] == "i1"
    stderr = io.StringIO()
    assert run_score_cli(str(tmp_path / "nope"), io.StringIO(""), io.StringIO(),
                         stderr=stderr) == 2
    assert "cannot load bundle" in stderr.getvalue()


# ---------------------------------------------------------------------- import hygiene

def test_mlp_bundle_scores_with_numpy_only(bundle):
    code = (
        "import sys, json\n"
        "from pythia.scoring import Scorer\n"
        f"s = Scorer.load({bundle!r})\n"
        "s.score({'country': 'US', 'ts': 1700000000})\n"
        "s.score_batch([{'country': 'JP'}, {}])\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'tensorflow', 'metaflow', 'torch', 'sklearn', 'pyarrow', 'pandas', 'keras'})\n"
        "print(json.dumps(heavy))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True)
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


# ---------------------------------------------------------------------- parity with pythia.models

def _tiny_world(encoders: Encoders, n: int, seed: int) -> tuple[list[dict], dict]:
    """Raw requests whose labels depend on a few fields, so a model has something to learn."""
    rng = np.random.default_rng(seed)
    n_age = len(encoders.age_edges)
    reqs = []
    for i in range(n):
        r = {f.source: rng.choice(encoders.vocabularies[f.name].values + [""])
             for f in FEATURES if f.kind == features.CATEGORICAL and f.source != "derived"}
        r["country"] = str(rng.choice(["US", "DE", "JP", "ZZ"]))
        r["ts"] = int(TS + rng.integers(0, 7 * 86400))
        reqs.append(r)
    gender = np.array([r["os"] == "os_1" for r in reqs], dtype=np.int64)
    age = np.array([(sum(map(ord, r["site_or_app"])) + i) % n_age for i, r in enumerate(reqs)])
    return reqs, {"y_gender": gender, "y_age": age,
                  "y_age_gender": features.age_gender_index(gender, age, n_age)}


def _fit_and_bundle(kind: str, tmp_path, hparams: dict) -> tuple:
    pytest.importorskip("pythia.models")
    from pythia.config import TrainConfig
    from pythia.models import get_model, load_model
    from pythia.models.priors import priors_from_labels
    from pythia.scoring import export_champions

    encoders = make_encoders()
    reqs, labels = _tiny_world(encoders, 400, seed=0)
    enc = RequestEncoder(encoders, GEO, ["global"])
    ids, numeric, _ = enc.encode_many(reqs)
    X = {n: ids[:, j] for j, n in enumerate(CATEGORICAL_FEATURES)}
    X.update({n: numeric[:, j] for j, n in enumerate(NUMERIC_FEATURES)})
    data = {**X, **labels}
    train = {k: v[:300] for k, v in data.items()}
    valid = {k: v[300:] for k, v in data.items()}
    n_classes = {t: len(features.class_labels(t, encoders.age_edges)) for t in TARGETS}
    y = {t: labels[c][:300] for t, c in features.LABEL_COLUMNS.items()}
    natural = priors_from_labels(y, n_classes)
    skewed = {t: (np.asarray(p) + np.linspace(0, 1, len(p))).tolist() for t, p in natural.items()}
    model = get_model(kind)(encoders, hparams, TrainConfig(max_epochs=2, batch_size=64,
                                                           patience=1))
    model.fit(train, valid, {"train": natural, "natural": skewed})
    model_dir = str(tmp_path / kind)
    model.save(model_dir)
    bundle = export_champions([{"region": "global", "model": kind, "model_dir": model_dir,
                                "source": "test"}], encoders.to_json(), GEO, f"Test/{kind}",
                              str(tmp_path / "bundle"))
    entry = read_bundle_doc(bundle)["models"]["global"]
    assert (entry["kind"], entry["source"], entry["origin"]) == (kind, model_dir, "test")
    return load_model(model_dir), Scorer.load(bundle), reqs, X


def test_parity_with_trained_keras_mlp(tmp_path):
    pytest.importorskip("tensorflow")
    model, scorer, reqs, X = _fit_and_bundle(
        "mlp", tmp_path, {"hidden_units": [16, 8], "dropout": 0.1, "age_head": "corn"})
    assert sorted(os.listdir(tmp_path / "bundle")) == ["bundle.json", "encoders.json", "onnx",
                                                       "weights-global.npz"]
    assert read_bundle_doc(str(tmp_path / "bundle"))["models"]["global"]["runtime"] == \
        NUMPY_LAYERS
    want = model.predict_proba(X)
    got = scorer.score_arrays(reqs)
    for t in TARGETS:
        np.testing.assert_allclose(got[t], want[t], atol=1e-5, rtol=0)
    one = scorer.score(reqs[0])
    np.testing.assert_allclose(list(one["age"].values()), want["age"][0], atol=1e-5)


def test_saved_mlp_export_is_the_class_export_and_needs_no_tensorflow(tmp_path):
    # the end step exports the champions: from the export saved with the model, without
    # importing TensorFlow (3.7 of its 5 CPU-s on the default world before)
    pytest.importorskip("tensorflow")
    from pythia.models import get_model
    from pythia.scoring.bundle import saved_export

    _fit_and_bundle("mlp", tmp_path, {"hidden_units": [8], "age_head": "corn"})
    model_dir = str(tmp_path / "mlp")
    saved = saved_export(model_dir)
    assert saved is not None
    np.testing.assert_equal(saved, get_model("mlp").export(model_dir))
    code = (
        "import json, sys\n"
        "from pythia.config import Geography\n"
        "from pythia.scoring import export_champions\n"
        f"enc = json.load(open({model_dir + '/encoders.json'!r}))\n"
        f"export_champions([{{'region': 'global', 'model': 'mlp', 'model_dir': {model_dir!r}}}],"
        f" enc, Geography(region_of_country={{'US': 'NA'}}), 'T/1', {str(tmp_path / 'b2')!r})\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    # a folder saved without the export (an older run's champion) is exported from its weights
    meta_path = tmp_path / "mlp" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["extra"]["numpy_export"]
    meta_path.write_text(json.dumps(meta))
    assert saved_export(model_dir) is None


def test_parity_with_gbdt_through_saved_model(tmp_path):
    pytest.importorskip("sklearn")
    model, scorer, reqs, X = _fit_and_bundle("gbdt", tmp_path, {"max_iter": 5})
    entry = read_bundle_doc(str(tmp_path / "bundle"))["models"]["global"]
    assert (entry["kind"], entry["runtime"], entry["dir"]) == ("gbdt", SAVED_MODEL, "model-global")
    # the model folder and the bundle say which libraries made them (pythia.stack)
    import importlib.metadata
    meta = json.loads((tmp_path / "gbdt" / "meta.json").read_text())
    assert meta["stack"]["scikit-learn"] == importlib.metadata.version("scikit-learn")
    assert read_bundle_doc(str(tmp_path / "bundle"))["stack"]["numpy"] == np.__version__
    want = model.predict_proba(X)
    got = scorer.score_arrays(reqs)
    for t in TARGETS:
        np.testing.assert_allclose(got[t], want[t], atol=1e-9, rtol=0)
    assert_valid(scorer.score({"country": [1], "ts": "garbage"}), scorer)


@pytest.mark.parametrize("kind", ["logreg", "class_prior"])
def test_parity_with_the_baselines_through_saved_model(tmp_path, kind):
    """The new baselines export as saved models; a scorer built from the bundle scores them."""
    pytest.importorskip("sklearn")
    model, scorer, reqs, X = _fit_and_bundle(kind, tmp_path, {})
    entry = read_bundle_doc(str(tmp_path / "bundle"))["models"]["global"]
    assert (entry["kind"], entry["runtime"], entry["dir"]) == (kind, SAVED_MODEL, "model-global")
    want = model.predict_proba(X)
    got = scorer.score_arrays(reqs)
    for t in TARGETS:
        np.testing.assert_allclose(got[t], want[t], atol=1e-9, rtol=0)
    if kind == "class_prior":  # the same answer for every request
        assert np.ptp(got["age_gender"], axis=0).max() < 1e-12
    else:
        assert np.ptp(got["age_gender"], axis=0).max() > 1e-3
    assert_valid(scorer.score({"country": [1], "ts": "garbage"}), scorer)


def test_a_slot_scores_every_row_and_the_previous_check_scores_global_with_it(bundle):
    """``score_arrays(slot=)`` scores every row with one slot's model; evaluate's check of a
    champion against the previous bundle scores ``global`` with the global slot alone (this
    run's global champion is scored alone: routed, the previous NA model would score the US
    rows) and a region's rows as the bundle routes them."""
    from pythia.evaluate.io import bundle_scorer

    scorer = Scorer.load(bundle)
    reqs = [request(), request(country="DE", os="os_1"), request(country="JP"),
            request(impression_id="i4", country="CA", site_or_app="site_or_app_2")]
    routed = scorer.score_arrays(reqs)
    glob = scorer.score_arrays(reqs, slot=GLOBAL_REGION)
    na = scorer.score_arrays(reqs, slot="NA")
    us_ca, rest = [0, 3], [1, 2]  # NA's slot scores US and CA; the global one DE and JP
    for t in TARGETS:
        np.testing.assert_allclose(routed[t][us_ca], na[t][us_ca], rtol=0, atol=1e-12)
        np.testing.assert_allclose(routed[t][rest], glob[t][rest], rtol=0, atol=1e-12)
    assert np.abs(glob["age_gender"][us_ca] - na["age_gender"][us_ca]).max() > 1e-3
    with pytest.raises(KeyError, match="has no 'EU' slot"):
        scorer.score_arrays(reqs, slot="EU")

    rows = pd.DataFrame(reqs)
    rows[features.TS_SECONDS] = rows[features.TS]
    previous = bundle_scorer(bundle)
    np.testing.assert_allclose(previous(GLOBAL_REGION, rows)["age_gender"], glob["age_gender"],
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(previous("NA", rows)["age_gender"], routed["age_gender"],
                               rtol=0, atol=1e-12)
