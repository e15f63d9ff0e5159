"""Tests of the ONNX export: graph parity with the NumPy scorer, boundary rules, the export
folder (manifest + portable encoders) applied by a non-pythia encoder, the ONNX Runtime engine."""
from __future__ import annotations

import bisect
import json
import math
import os

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from pythia import features  # noqa: E402
from pythia.config import GLOBAL_REGION  # noqa: E402
from pythia.features import (CATEGORICAL_FEATURES, MISSING_ID, NUMERIC_FEATURES,  # noqa: E402
                             OOV_ID, TARGETS)
from pythia.scoring import Scorer, write_bundle  # noqa: E402
from pythia.scoring.onnx_export import (ENCODERS_FILE, MANIFEST_FILE, MODEL_FILE,  # noqa: E402
                                        OPSET, OnnxMLP, build_onnx_model, export_onnx,
                                        load_onnx_scorer, read_onnx_manifest)
from pythia.scoring.runtime import FusedMLP  # noqa: E402
from test_scoring import (GEO, MIXED_DIMS, TS, _fit_and_bundle, layers,  # noqa: E402
                          make_encoders, make_export, reference_predict, request)

PARITY = 1e-5  # the bound on |ONNX - NumPy scorer| per probability


@pytest.fixture(scope="module")
def encoders():
    return make_encoders()


def random_inputs(encoders, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ids in range, with whole rows (and scattered cells) of missing 0 and OOV 1."""
    rng = np.random.default_rng(seed)
    sizes = [encoders.vocabularies[name].size for name in CATEGORICAL_FEATURES]
    ids = np.stack([rng.integers(0, s, n) for s in sizes], axis=1)
    ids[0], ids[1] = MISSING_ID, OOV_ID
    ids[rng.random(ids.shape) < 0.1] = MISSING_ID
    ids[rng.random(ids.shape) < 0.1] = OOV_ID
    numeric = rng.normal(0, 1.5, size=(n, len(NUMERIC_FEATURES))).astype(np.float32)
    numeric[2] = 0.0
    return ids.astype(np.int64), numeric


def max_abs_diff(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(np.asarray(a[t]) - np.asarray(b[t])))) for t in TARGETS)


# ---------------------------------------------------------------------- graph parity

@pytest.mark.parametrize("wide", [False, True], ids=["deep", "wide"])
@pytest.mark.parametrize("age_link", ["corn", "softmax"])
@pytest.mark.parametrize("hidden", [(8, 5), ()], ids=["trunk", "no-trunk"])
def test_onnx_matches_numpy_scorer(encoders, age_link, hidden, wide):
    export = make_export(encoders, seed=11, age_link=age_link, hidden=hidden, wide=wide)
    engine = OnnxMLP(build_onnx_model(export, encoders))
    ids, numeric = random_inputs(encoders, 200, seed=1)
    got = engine.predict(ids, numeric)
    for dtype in ("float32", "float64"):
        assert max_abs_diff(got, FusedMLP(export, encoders, dtype).predict(ids, numeric)) \
            <= PARITY
    assert max_abs_diff(got, reference_predict(export, ids, numeric)) <= PARITY
    for t in TARGETS:
        assert got[t].shape == (200, len(features.class_labels(t, encoders.age_edges)))
        np.testing.assert_allclose(got[t].sum(axis=1), 1.0, atol=1e-6)
    for i in (0, 1, 7):  # one row through ONNX Runtime equals the batch's row, to float32
        # round-off: a batch's matrix product sums in another order (seen: 2.4e-7, 8 ulp)
        one = engine.predict_one(ids[i].tolist(), numeric[i].tolist())
        for t in TARGETS:
            np.testing.assert_allclose(one[t], got[t][i], atol=1e-6)


@pytest.mark.parametrize("wide", [False, True], ids=["deep", "wide"])
@pytest.mark.parametrize("hidden", [(8, 5), ()], ids=["trunk", "no-trunk"])
def test_onnx_matches_numpy_scorer_with_tables_of_several_widths(encoders, hidden, wide):
    """The NumPy batch path gathers equally wide tables together (first-layer rows permuted
    to match) chunk by chunk; ONNX gathers table by table: both are the export's forward pass,
    with or without a trunk, in chunks or not."""
    export = make_export(encoders, seed=17, hidden=hidden, wide=wide, dim=MIXED_DIMS)
    n = FusedMLP.chunk_rows * 2 + 200  # two full chunks and a short one
    ids, numeric = random_inputs(encoders, n, seed=5)
    got = OnnxMLP(build_onnx_model(export, encoders)).predict(ids, numeric)
    assert max_abs_diff(got, reference_predict(export, ids, numeric)) <= PARITY
    for dtype in ("float32", "float64"):
        assert max_abs_diff(got, FusedMLP(export, encoders, dtype).predict(ids, numeric)) \
            <= PARITY


def test_out_of_range_ids_are_oov_and_bad_numerics_are_zero(encoders):
    export = make_export(encoders, seed=12)
    engine = OnnxMLP(build_onnx_model(export, encoders))
    sizes = np.array([encoders.vocabularies[n].size for n in CATEGORICAL_FEATURES])
    ids, numeric = random_inputs(encoders, 6, seed=2)
    bad_ids = ids.copy()
    bad_ids[0] = sizes  # one past the table: would read the next feature's rows
    bad_ids[1] = -1  # a negative index would wrap around in Gather
    bad_ids[2] = 10 ** 12
    bad_numeric = numeric.copy()
    bad_numeric[3] = np.resize([np.nan, np.inf], numeric.shape[1])
    bad_numeric[4] = np.resize([-np.inf, np.nan], numeric.shape[1])
    clean_ids, clean_numeric = ids.copy(), numeric.copy()
    clean_ids[:3] = OOV_ID
    clean_numeric[3:5] = 0.0
    got = engine.predict(bad_ids, bad_numeric)
    want = FusedMLP(export, encoders).predict(clean_ids, clean_numeric)
    assert max_abs_diff(got, want) <= PARITY
    assert all(np.all(np.isfinite(got[t])) for t in TARGETS)


def test_extreme_logits_and_zero_prior_ratios(encoders):
    export = make_export(encoders, seed=13, hidden=())
    for t in TARGETS:
        W, b, link = export["heads"][t]
        export["heads"][t] = (W * 1e4, b, link)  # logits in the 1e4s
    ratio = np.zeros(12)  # AgeGender (gender-major): every F class ruled out, so gender F = 0
    ratio[6:] = [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    export["prior_ratio"]["age_gender"] = ratio
    engine = OnnxMLP(build_onnx_model(export, encoders))
    ids, numeric = random_inputs(encoders, 50, seed=3)
    numeric[:] = 5.0
    got = engine.predict(ids, numeric)
    want = FusedMLP(export, encoders, "float64").predict(ids, numeric)
    assert max_abs_diff(got, want) <= PARITY
    np.testing.assert_array_equal(got["gender"][:, 0], 0.0)
    np.testing.assert_allclose(got["age"][:, -1], 1.0, atol=1e-6)
    for t in TARGETS:
        assert np.all(np.isfinite(got[t])) and np.allclose(got[t].sum(axis=1), 1, atol=1e-6)


def test_age_output_is_the_age_gender_marginal_whatever_the_age_head_says(encoders):
    """The CORN age head is a training aid: even one with every class ruled out leaves the age
    output the AgeGender marginal, in ONNX as in NumPy."""
    export = make_export(encoders, seed=14, hidden=())
    W, b, _ = export["heads"]["age"]
    export["heads"]["age"] = (W * 0.0, b * 0.0 - 1e4, "corn")  # P(y > 0) = 0: all mass on 0
    export["prior_ratio"]["age"] = np.array([0.0, 1, 1, 1, 1, 1])
    engine = OnnxMLP(build_onnx_model(export, encoders))
    ids, numeric = random_inputs(encoders, 4, seed=4)
    got = engine.predict(ids, numeric)
    cube = np.asarray(got["age_gender"], np.float64).reshape(len(ids), 2, -1)
    np.testing.assert_allclose(got["age"], cube.sum(axis=1), atol=1e-6)
    assert max_abs_diff(got, FusedMLP(export, encoders).predict(ids, numeric)) <= PARITY


@pytest.mark.parametrize("wide", [False, True], ids=["deep", "wide"])
def test_graph_holds_only_the_age_gender_head(encoders, wide):
    """The gender and age heads are training aids: no node or weight of the graph comes from
    them (other such heads give the same bytes) and the head's Gemm has AgeGender's width."""
    export = make_export(encoders, seed=18, wide=wide)
    model = build_onnx_model(export, encoders)
    n_joint = len(features.class_labels("age_gender", encoders.age_edges))
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    assert shapes["head_W"][1] == n_joint
    if wide:
        assert shapes["wide_table"][1] == shapes["wide_numeric_W"][1] == n_joint
    for t in ("gender", "age"):
        W, b, link = export["heads"][t]
        export["heads"][t] = (W * 3.0 - 1.0, b + 2.0, link)
        if wide:
            export["wide"][t] = [(n, w * 5.0) for n, w in export["wide"][t]]
    assert build_onnx_model(export, encoders).SerializeToString() == model.SerializeToString()


def test_model_file_declares_its_interface(encoders):
    import onnx

    model = build_onnx_model(make_export(encoders, seed=15), encoders,
                             metadata={"region": "NA"})
    assert model.opset_import[0].version == OPSET
    assert [i.name for i in model.graph.input] == ["ids", "numeric"]
    assert [o.name for o in model.graph.output] == list(TARGETS)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [0, len(CATEGORICAL_FEATURES)]  # batch dimension is symbolic
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["categorical_features"]) == list(CATEGORICAL_FEATURES)
    assert props["spec_version"] == features.spec_version() and props["region"] == "NA"
    onnx.checker.check_model(model, full_check=True)


def test_build_rejects_a_bad_export(encoders):
    export = make_export(encoders, seed=16)
    export["heads"].pop("gender")
    with pytest.raises(ValueError, match="gender"):
        build_onnx_model(export, encoders)


# ---------------------------------------------------------------------- the export folder

@pytest.fixture(scope="module")
def bundle(tmp_path_factory, encoders) -> str:
    out = str(tmp_path_factory.mktemp("onnx") / "bundle")
    models = {GLOBAL_REGION: layers(make_export(encoders, seed=1)),
              "NA": layers(make_export(encoders, seed=2, age_link="softmax"))}
    return write_bundle(models, encoders, GEO, "DemoFlow/7/end/21", out)


@pytest.fixture(scope="module")
def exported(bundle, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("onnx") / "onnx")
    export_onnx(bundle, out)
    return out


def test_export_folder_layout(exported):
    assert sorted(os.listdir(exported)) == sorted([ENCODERS_FILE, MANIFEST_FILE, "NA",
                                                   GLOBAL_REGION])
    manifest = read_onnx_manifest(exported)
    assert manifest["version"] == "DemoFlow/7/end/21"
    assert manifest["models"] == {  # each region names its encoders (format 4)
        GLOBAL_REGION: {"kind": "mlp", "file": f"global/{MODEL_FILE}", "encoders": ENCODERS_FILE},
        "NA": {"kind": "mlp", "file": f"NA/{MODEL_FILE}", "encoders": ENCODERS_FILE}}
    assert manifest["inputs"]["ids"]["columns"] == list(CATEGORICAL_FEATURES)
    assert manifest["outputs"]["age"]["labels"] == list(features.age_bucket_labels())
    assert manifest["routing"]["region_of_country"]["US"] == "NA"


def test_export_from_payload_lists_unexported_kinds(tmp_path, encoders):
    payload = {"models": {GLOBAL_REGION: layers(make_export(encoders)),
                          "EU": {"kind": "gbdt", "runtime": "saved_model", "model_dir": "unused"},
                          "APAC": {"kind": "tabnet", "runtime": "saved_model",
                                   "model_dir": "unused"}},
               "encoders": encoders, "geo": GEO, "version": "v1"}
    manifest = export_onnx(payload, str(tmp_path))
    assert manifest["models"]["EU"]["file"] is None
    assert "runs in Python" in manifest["models"]["EU"]["reason"]
    assert manifest["models"]["APAC"]["file"] is None
    assert os.path.exists(tmp_path / GLOBAL_REGION / MODEL_FILE)
    assert not os.path.exists(tmp_path / "EU")


def test_read_manifest_rejects_other_spec_and_missing(tmp_path, exported):
    with pytest.raises(FileNotFoundError):
        read_onnx_manifest(str(tmp_path))
    with open(os.path.join(exported, MANIFEST_FILE)) as f:
        doc = json.load(f)
    doc["spec_version"] = "000000000000"
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="feature spec"):
        read_onnx_manifest(str(tmp_path))


def _foreign_offset(table: dict, country, geo_region, ts: int) -> int:
    """encoders.json's 'utc_offset' rule, from the document alone."""
    zone = None
    if isinstance(geo_region, str) and geo_region.strip() and isinstance(country, str):
        code = geo_region.strip().upper()
        code = code if code.startswith(country + "-") else f"{country}-{code}"
        zone = table["subdivisions"].get(code)
    zone = zone or table["countries"].get(country)
    if zone is None:
        return 0
    series = table["zones"][zone]
    while "same_as" in series:
        series = table["zones"][series["same_as"]]
    i = bisect.bisect_right(series["transitions"], ts) - 1
    return series["offsets_minutes"][max(i, 0)]


def _foreign_encode(enc: dict, routing: dict, request: dict) -> tuple[list[int], list[float],
                                                                       str]:
    """What a bidder in another language does with encoders.json + onnx.json (docs/bidder.md),
    written from the documents alone: no pythia encoder is used."""
    country = request.get("country")
    offset = _foreign_offset(enc["utc_offsets"], country, request.get("geo_region"),
                             request["ts"])
    local_minutes = request["ts"] // 60 + offset
    hour = (local_minutes // 60) % 24
    derived = {"local_hour": str(hour), "local_dow": str((local_minutes // 1440 + 3) % 7)}
    raw_numeric = {"hour_sin": float(np.float32(math.sin(hour * 2 * math.pi / 24))),
                   "hour_cos": float(np.float32(math.cos(hour * 2 * math.pi / 24)))}
    ids = [0] * len(enc["categorical"])
    region = routing["region_of_country"].get(country, routing["other_region"])
    by_name = {feat["name"]: feat for feat in enc["categorical"]}
    for feat in enc["categorical"]:
        value = derived[feat["name"]] if feat["source"] == "derived" else \
            request.get(feat["of"] if feat["source"] == "regional" else feat["source"])
        if value is None or value == "":
            ids[feat["column"]] = enc["reserved_ids"]["missing"]
        elif feat["source"] == "regional" and value not in by_name[feat["of"]]["ids"]:
            ids[feat["column"]] = enc["reserved_ids"]["oov"]
        else:
            key = f"{region}|{value}" if feat["source"] == "regional" else value
            ids[feat["column"]] = feat["ids"].get(key, enc["reserved_ids"]["oov"])
    numeric = [0.0] * len(enc["numeric"])
    for feat in enc["numeric"]:
        std = feat["std"] if feat["std"] > 0 else 1.0
        x = raw_numeric.get(feat["name"])
        if feat["source"] == "activity":  # the bidder's counter; unknown -> 0 (the mean)
            x = request.get(feat["name"])
            x = float(x) if isinstance(x, (int, float)) and x >= 0 else None
        if x is not None and feat["transform"] == "log1p":
            x = math.log1p(x)
        numeric[feat["column"]] = 0.0 if x is None else (x - feat["mean"]) / std
    return ids, numeric, region


def test_a_foreign_encoder_reproduces_the_scorer(exported, bundle):
    """encoders.json + onnx.json + model.onnx alone give what Scorer.score gives."""
    with open(os.path.join(exported, ENCODERS_FILE)) as f:
        enc = json.load(f)
    manifest = read_onnx_manifest(exported)
    sessions = {r: OnnxMLP(os.path.join(exported, e["file"]))
                for r, e in manifest["models"].items()}
    scorer = Scorer.load(bundle)
    requests = [request(), request(country="DE", ts=TS + 7 * 3600, os="os_1"),
                request(country="JP", site_or_app="never-seen", device_type=""),
                request(country="US", ts=TS + 13 * 3600 + 1, browser="browser_2"),
                request(country="XX", inventory_type="site"),  # unknown country: UTC, global
                request(country="CA", os=None),  # CA routes to NA, has no UTC offset: UTC
                request(user_impressions_today=0), request(user_impressions_today=37),
                # the make's meaning per region: known, known make in a region without it, an
                # unknown make, a country without a map entry (OTHER), no make
                request(device_make="device_make_0"), request(device_make="device_make_1"),
                request(country="DE", device_make="device_make_1"),
                request(country="JP", device_make="device_make_0"),
                request(country="JP", device_make="never-seen"),
                request(country="XX", device_make="device_make_2"),
                request(country="DE", device_make=""),
                request(country="DE", user_impressions_today=-2)]  # negative: unknown
    for req in requests:
        ids, numeric, region = _foreign_encode(enc, manifest["routing"], req)
        if region not in sessions:
            region = manifest["routing"]["fallback_region"]
        got = sessions[region].predict(np.array([ids]), np.array([numeric], np.float32))
        want = scorer.score(req)
        assert want["region"] == region, req
        for t in TARGETS:
            np.testing.assert_allclose(got[t][0], list(want[t].values()), atol=PARITY)


def test_encoders_document_states_the_rules(exported, encoders):
    with open(os.path.join(exported, ENCODERS_FILE)) as f:
        enc = json.load(f)
    assert enc["reserved_ids"] == {"missing": MISSING_ID, "oov": OOV_ID,
                                   "first_value": features.FIRST_VALUE_ID}
    country = next(c for c in enc["categorical"] if c["name"] == "country")
    assert country["ids"] == {v: encoders.vocabularies["country"].encode_one(v)
                              for v in encoders.vocabularies["country"].values}
    assert [c["name"] for c in enc["categorical"]] == list(CATEGORICAL_FEATURES)
    assert "derive_time_features" in enc["rules"]["derived"]


# ---------------------------------------------------------------------- ONNX Runtime engine

@pytest.mark.parametrize("numpy_for_small", [True, False])
def test_onnx_scorer_matches_numpy_scorer(bundle, exported, numpy_for_small):
    numpy_scorer = Scorer.load(bundle)
    onnx_scorer = load_onnx_scorer(bundle, exported, numpy_for_small=numpy_for_small)
    assert all(isinstance(m, OnnxMLP) for m in onnx_scorer.models.values())
    rng = np.random.default_rng(5)
    reqs = [request(country=str(rng.choice(["US", "DE", "JP", "CA", "ZZ"])),
                    ts=TS + int(rng.integers(0, 86400 * 7)),
                    os=str(rng.choice(["os_0", "os_1", "os_2", "", "nope"])),
                    site_or_app=str(rng.choice(["site_or_app_0", "site_or_app_2", "x"])))
            for _ in range(300)]
    got, want = onnx_scorer.score_arrays(reqs), numpy_scorer.score_arrays(reqs)
    assert max_abs_diff(got, want) <= PARITY
    small = onnx_scorer.score_batch(reqs[:3])  # below ONNX_MIN_ROWS
    assert [s["region"] for s in small] == [s["region"] for s in numpy_scorer.score_batch(
        reqs[:3])]
    one, ref = onnx_scorer.score(reqs[0]), numpy_scorer.score(reqs[0])
    for t in TARGETS:
        np.testing.assert_allclose(list(one[t].values()), list(ref[t].values()), atol=PARITY)


def test_onnx_scorer_exports_on_the_fly_and_checks_versions(bundle, tmp_path):
    scorer = load_onnx_scorer(bundle)  # no <bundle>/onnx: exported to a temporary folder
    assert scorer.score(request())["model_version"] == "DemoFlow/7/end/21"
    payload_dir = str(tmp_path / "stale")
    export_onnx(bundle, payload_dir)
    path = os.path.join(payload_dir, MANIFEST_FILE)
    with open(path) as f:
        doc = json.load(f)
    doc["version"] = "DemoFlow/6/end/1"
    with open(path, "w") as f:
        json.dump(doc, f)
    with pytest.raises(ValueError, match="re-export"):
        load_onnx_scorer(bundle, payload_dir)


@pytest.mark.parametrize("age_head", ["corn", "softmax"])
def test_parity_with_trained_keras_mlp(tmp_path, age_head):
    """A tiny trained wide & deep MLP (wide part started from logistic regression): its
    bundle's ONNX export equals the NumPy scorer and Keras."""
    pytest.importorskip("tensorflow")
    model, scorer, reqs, X = _fit_and_bundle(
        "mlp", tmp_path, {"hidden_units": [16, 8], "dropout": 0.1, "age_head": age_head})
    assert "wide" in model.export_numpy()  # the default: the wide part is exported too
    bundle = str(tmp_path / "bundle")
    onnx_scorer = load_onnx_scorer(bundle, numpy_for_small=False)
    got = onnx_scorer.score_arrays(reqs)
    assert max_abs_diff(got, scorer.score_arrays(reqs)) <= PARITY
    assert max_abs_diff(got, model.predict_proba(X)) <= PARITY
    edge = [{}, {"country": "US", "ts": TS, "os": "never-seen", "site_or_app": "x" * 600}]
    assert max_abs_diff(onnx_scorer.score_arrays(edge), scorer.score_arrays(edge)) <= PARITY


def test_a_blind_twin_is_blind_through_every_scorer(tmp_path):
    """``mlp_blind`` (blind to ``os``, which carries gender in this tiny world): its bundle
    answers alike whatever OS a request names, through the NumPy scorer and the ONNX graph,
    and both agree with the model."""
    pytest.importorskip("tensorflow")
    model, scorer, reqs, X = _fit_and_bundle(
        "mlp_blind", tmp_path, {"hidden_units": [16, 8], "blind_to": ["os"]})
    onnx_scorer = load_onnx_scorer(str(tmp_path / "bundle"), numpy_for_small=False)
    other = [{**r, "os": "os_1" if r["os"] != "os_1" else "os_2"} for r in reqs]
    for s in (scorer, onnx_scorer):
        assert max_abs_diff(s.score_arrays(other), s.score_arrays(reqs)) == 0.0
    got = onnx_scorer.score_arrays(reqs)
    assert max_abs_diff(got, scorer.score_arrays(reqs)) <= PARITY
    assert max_abs_diff(got, model.predict_proba(X)) <= PARITY
