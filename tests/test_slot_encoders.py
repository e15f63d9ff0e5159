"""A bundle slot that reads its own encoders: a previous run's champion kept for a region.

Before (session 62) a bundle carried one set of vocabularies and statistics, so a previous
champion was kept only when its run's encoders equalled this run's: on daily data (new
vocabularies every day) never, and a region without a blessed champion fell to the global slot.
Now each model folder's own ``encoders.json`` travels with its slot when it differs.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pythia import features
from pythia.config import GLOBAL_REGION
from pythia.features import TARGETS, Encoders, NumericStats, Vocabulary
from pythia.scoring import Scorer
from pythia.scoring.boundary import RequestEncoder
from pythia.scoring.bundle import write_bundle
from pythia.scoring.bundle_doc import read_bundle_doc

from test_scoring import GEO, TS, layers, make_encoders, make_export, reference_predict, request


def _other_encoders(encoders: Encoders) -> Encoders:
    """Another day's encoders: vocabularies in another order and one grown by two values,
    other normalisation statistics."""
    vocab = {k: Vocabulary(list(reversed(v.values))) for k, v in encoders.vocabularies.items()}
    vocab["os"] = Vocabulary(["os_new", *encoders.vocabularies["os"].values, "os_newer"])
    numeric = {k: NumericStats(mean=s.mean + 0.5, std=s.std * 2, transform=s.transform)
               for k, s in encoders.numeric.items()}
    return Encoders(vocabularies=vocab, numeric=numeric, age_edges=encoders.age_edges)


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    ours = make_encoders()
    theirs = _other_encoders(ours)
    na = make_export(theirs, seed=2, age_link="softmax")  # trained on the other day's ids
    models = {GLOBAL_REGION: layers(make_export(ours, seed=1)),
              "NA": {**layers(na), "encoders": theirs}}
    out = str(tmp_path_factory.mktemp("b") / "bundle")
    return write_bundle(models, ours, GEO, "DemoFlow/8/end/3", out), ours, theirs, na


def _reference(export, encoders, reqs):
    ids, numeric, _ = RequestEncoder(encoders, GEO, ["NA", GLOBAL_REGION]).encode_many(
        reqs, now=TS)
    return reference_predict(export, ids, numeric)


def test_the_slot_writes_and_reads_its_own_encoders(kept):
    bundle, ours, theirs, na = kept
    doc = read_bundle_doc(bundle)
    assert doc["format_version"] == 7
    assert doc["models"]["NA"]["encoders"] == "encoders-NA.json"
    assert "encoders" not in doc["models"][GLOBAL_REGION]
    with open(os.path.join(bundle, "encoders-NA.json")) as f:
        assert json.load(f) == theirs.to_json()
    with open(os.path.join(bundle, "encoders.json")) as f:
        assert json.load(f) == ours.to_json()


def test_rows_of_the_slot_score_through_its_encoders(kept):
    bundle, ours, theirs, na = kept
    scorer = Scorer.load(bundle)
    reqs = [request(os="os_1"), request(country="DE", os="os_1"), request(country="CA",
            os="os_2", site_or_app="site_or_app_0"), request(os="os_new"), {}, request()]
    routed = scorer.score_arrays(reqs, now=TS)
    want_na = _reference(na, theirs, reqs)
    want_global = _reference(make_export(ours, seed=1), ours, reqs)
    through_ours = _reference(na, ours, reqs)  # what a one-encoders bundle would have scored
    na_rows, global_rows = [0, 2, 3, 5], [1, 4]
    for t in TARGETS:
        np.testing.assert_allclose(routed[t][na_rows], want_na[t][na_rows], atol=1e-5, rtol=0)
        np.testing.assert_allclose(routed[t][global_rows], want_global[t][global_rows],
                                   atol=1e-5, rtol=0)
    assert np.abs(through_ours["age_gender"][na_rows] - want_na["age_gender"][na_rows]
                  ).max() > 1e-3  # the two encodings differ: the test can tell them apart
    batch = scorer.score_batch(reqs, now=TS)
    for i, r in enumerate(reqs):
        one = scorer.score(r, now=TS)
        assert one["region"] == batch[i]["region"] == ("NA" if i in na_rows else GLOBAL_REGION)
        for t in TARGETS:
            np.testing.assert_allclose(list(one[t].values()), routed[t][i], atol=1e-5, rtol=0)
            np.testing.assert_allclose(list(batch[i][t].values()), routed[t][i], atol=1e-6,
                                       rtol=0)
    whole = scorer.score_arrays(reqs, now=TS, slot="NA")  # every row by NA's model
    np.testing.assert_allclose(whole["age_gender"], want_na["age_gender"], atol=1e-5, rtol=0)
    assert len(scorer.score_arrays(iter(reqs), now=TS)["gender"]) == len(reqs)  # read twice


def _mixed_requests() -> list[dict]:
    """Requests of both slots with the cells a bidder's batch really holds: unknown and
    missing countries, a number and NaN where strings belong, a numeric-string ts."""
    out = []
    for i in range(60):
        r = request(country=["US", "DE", "CA", "JP", None, "XX"][i % 6], os=f"os_{i % 4}",
                    site_or_app=f"site_or_app_{i % 3}", user_impressions_today=float(i % 5))
        if i % 7 == 0:
            r["device_type"] = float("nan") if i % 2 else 3
        if i % 11 == 0:
            r["ts"] = str(TS + i * 3600)
        out.append(r)
    return out


def test_every_kind_of_batch_scores_each_slot_through_its_own_encoders(kept):
    """The batch is read once and routed; each encoder encodes a take of its rows. A list of
    dicts, pandas, Arrow (dictionary columns too) and a dict of lists or arrays all give what
    ``score`` gives request by request, and a batch of one slot's rows only, or of none,
    takes no detour."""
    pd = pytest.importorskip("pandas")
    pa = pytest.importorskip("pyarrow")
    scorer = Scorer.load(kept[0])
    reqs = _mixed_requests()
    one = {t: np.array([list(scorer.score(r, now=TS)[t].values()) for r in reqs])
           for t in TARGETS}
    regions = [scorer.score(r, now=TS)["region"] for r in reqs]
    assert set(regions) == {"NA", GLOBAL_REGION}
    frame = pd.DataFrame(reqs)
    typed = frame.assign(  # Arrow columns hold one type: the same cells as it writes them
        ts=frame["ts"].astype("int64"),
        device_type=[None if v != v else str(v) for v in frame["device_type"]])
    arrow = pa.Table.from_pandas(typed, preserve_index=False)
    arrow = arrow.set_column(arrow.schema.get_field_index("os"), "os",
                             arrow.column("os").dictionary_encode())
    batches = {"list": reqs, "pandas": frame, "arrow": arrow,
               "dict of lists": {c: frame[c].tolist() for c in frame.columns},
               "dict of arrays": {c: frame[c].to_numpy() for c in frame.columns}}
    for kind, batch in batches.items():
        got = scorer.score_arrays(batch, now=TS)
        for t in TARGETS:
            np.testing.assert_allclose(got[t], one[t], atol=1e-5, rtol=0, err_msg=kind)
        assert [b["region"] for b in scorer.score_batch(batch, now=TS)] == regions, kind
    na_only = [r for r, region in zip(reqs, regions) if region == "NA"]
    want = _reference(kept[3], kept[2], na_only)
    np.testing.assert_allclose(scorer.score_arrays(na_only, now=TS)["age_gender"],
                               want["age_gender"], atol=1e-5, rtol=0)
    assert scorer.score_arrays([], now=TS)["gender"].shape == (0, 2)


def test_route_one_routes_as_encode_one_does():
    """``Scorer.score`` of a bundle with a kept slot routes a request before encoding it, by
    the rules ``encode_one`` routes with, bad input included."""
    encoder = RequestEncoder(make_encoders(), GEO, ["NA", "EU", GLOBAL_REGION])
    odd = [{}, None, "US", ["US"], {"country": b"US"}, {"country": b"\xff"}, {"country": 840},
           {"country": "US" * 200}, {"country": float("nan")}, {"country": "JP"},
           {"country": "DE"}, {"country": "CA"}, {"country": " US"}, {"country": "us"}]
    for r in odd:
        assert encoder.route_one(r) == encoder.encode_one(r, now=TS)[2], r


def test_the_onnx_export_names_each_regions_encoders(kept, tmp_path):
    pytest.importorskip("onnxruntime")
    from pythia.scoring.onnx_export import encoders_document, export_onnx, load_onnx_scorer

    bundle, ours, theirs, na = kept
    manifest = export_onnx(bundle, str(tmp_path / "onnx"))
    assert manifest["models"]["NA"]["encoders"] == "NA/encoders.json"
    assert manifest["models"][GLOBAL_REGION]["encoders"] == "encoders.json"
    with open(tmp_path / "onnx" / "NA" / "encoders.json") as f:
        assert json.load(f) == json.loads(json.dumps(encoders_document(theirs, GEO)))
    reqs = [request(os=f"os_{i % 3}", site_or_app=f"site_or_app_{i % 3}") for i in range(40)]
    onnx = load_onnx_scorer(bundle, str(tmp_path / "onnx"), numpy_for_small=False)
    want = Scorer.load(bundle).score_arrays(reqs, now=TS)
    got = onnx.score_arrays(reqs, now=TS)
    for t in TARGETS:
        np.testing.assert_allclose(got[t], want[t], atol=1e-5, rtol=0)


def test_a_slot_of_other_age_edges_is_refused(tmp_path):
    ours = make_encoders()
    theirs = Encoders(ours.vocabularies, ours.numeric, age_edges=(18, 30, 50))
    models = {GLOBAL_REGION: layers(make_export(ours, seed=1)),
              "NA": {**layers(make_export(theirs, seed=2)), "encoders": theirs}}
    with pytest.raises(ValueError, match=r"region 'NA''s model has age edges \[18, 30, 50\], "
                                         r"the bundle's classes are of"):
        write_bundle(models, ours, GEO, "DemoFlow/9/end/3", str(tmp_path / "b"))
    assert not os.path.exists(tmp_path / "b")


def test_export_champions_reads_each_models_own_encoders(tmp_path):
    """The end step's path: a model folder saved with another day's encoders (a previous
    run's champion) gets them in its slot; this run's champion reads the bundle's."""
    pytest.importorskip("sklearn")
    from test_scoring import _fit_and_bundle

    from pythia.scoring import export_champions

    model, _, reqs, X = _fit_and_bundle("logreg", tmp_path, {})  # saved with make_encoders()
    day2 = _other_encoders(make_encoders())
    bundle = export_champions(
        [{"region": GLOBAL_REGION, "model": "logreg", "model_dir": str(tmp_path / "logreg"),
          "source": "test"},
         {"region": "NA", "model": "logreg", "model_dir": str(tmp_path / "logreg"),
          "source": "previous run"}], day2.to_json(), GEO, "DemoFlow/10/end/3",
        str(tmp_path / "b2"))
    doc = read_bundle_doc(bundle)
    assert doc["models"]["NA"]["encoders"] == "encoders-NA.json"
    assert doc["models"][GLOBAL_REGION]["encoders"] == "encoders-global.json"
    scorer = Scorer.load(bundle)
    want = model.predict_proba(X)  # the model on its own day's ids
    for slot in ("NA", GLOBAL_REGION):
        got = scorer.score_arrays(reqs, slot=slot)
        for t in TARGETS:
            np.testing.assert_allclose(got[t], want[t], atol=1e-9, rtol=0)
    assert features.class_labels("age", day2.age_edges) == scorer.labels["age"]


def test_an_onnx_export_of_format_3_still_loads(kept, tmp_path):
    """Format 4 only adds each region's encoders file; a v3 export (every region reads
    encoders.json) loads, an older one is refused with the fix."""
    pytest.importorskip("onnxruntime")
    from pythia.scoring.onnx_export import MANIFEST_FILE, export_onnx, load_onnx_scorer

    bundle = kept[0]
    folder = tmp_path / "onnx"
    export_onnx(bundle, str(folder))
    reqs = [request(os=f"os_{i % 3}") for i in range(20)]
    want = load_onnx_scorer(bundle, str(folder), numpy_for_small=False).score_arrays(reqs, now=TS)
    doc = json.loads((folder / MANIFEST_FILE).read_text())
    for entry in doc["models"].values():
        entry.pop("encoders")
    (folder / MANIFEST_FILE).write_text(json.dumps({**doc, "format_version": 3}))
    got = load_onnx_scorer(bundle, str(folder), numpy_for_small=False).score_arrays(reqs, now=TS)
    np.testing.assert_allclose(got["age_gender"], want["age_gender"], rtol=0, atol=1e-12)
    (folder / MANIFEST_FILE).write_text(json.dumps({**doc, "format_version": 2}))
    with pytest.raises(ValueError, match=r"this code reads 'pythia-onnx' v3/v4"):
        load_onnx_scorer(bundle, str(folder))
