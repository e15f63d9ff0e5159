"""Activity bins a wide & deep model scores with its wide part alone (issue 15, session 38:
``activity_temp``'s ``deep``): chosen on validation where the deep part loses, saved, exported
(bundle format 6) and applied alike by the model, the NumPy scorer and the ONNX graph."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pythia import features
from pythia.config import TrainConfig
from pythia.features import TARGETS
from pythia.models import activity_temp as at
from pythia.models.priors import apply_temperature, mean_log_loss
from pythia.scoring.runtime import FusedMLP, check_export, load_export_npz, save_export_npz
from test_activity_temperature import (activity_encoders, assert_every_numpy_path,
                                       assert_onnx_is_numpy, binned_export, binned_reference,
                                       inputs, priors_of, world)

COUNTS = (3, 10, 30, 100)
GATES = [1.0, 1.0, 1.0, 0.0, 0.0]  # 30+ impressions today: the wide part alone


def gated_world(seed: int, n: int = 20_000):
    """Logits of a wide & deep model: the labels follow wide + deep on light users, and only
    the wide part on heavy ones (30+), where the deep part is noise of its own."""
    rng = np.random.default_rng(seed)
    enc = activity_encoders()
    counts = rng.choice([0, 2, 5, 12, 40, 150], size=n)
    x = enc.numeric[at.FEATURE].normalize(counts)
    wide = rng.normal(0, 1.5, (n, 12))
    deep = rng.normal(0, 1.5, (n, 12))
    heavy = counts >= 30
    truth = np.where(heavy[:, None], wide, wide + deep)
    p = np.exp(truth - truth.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return enc, x, counts, {at.JOINT: wide + deep, at.DEEP: deep}, y


def test_bins_where_the_deep_part_is_noise_are_scored_by_the_wide_part():
    enc, x, counts, raw, y = gated_world(0)
    fitted = at.fit(raw[at.JOINT], y, x, enc, COUNTS, 1.0, deep=raw[at.DEEP])
    assert fitted.deep == (True, True, True, False, False)
    assert "30-99: " in fitted.describe() and "(the wide part alone)" in fitted.describe()
    # on unseen rows of the same world the gated model beats the same bins without the gate
    enc, x, counts, raw, y = gated_world(1)
    ungated = at.fit(raw[at.JOINT], y, x, enc, COUNTS, 1.0)
    assert ungated.deep is None
    heavy = counts >= 30

    def loss(bins):
        z = bins.logits(raw, x) / bins.per_row(x)[:, None]
        return mean_log_loss(apply_temperature(z[heavy], 1.0, "softmax"), y[heavy])
    assert loss(fitted) < loss(ungated) - 0.05
    np.testing.assert_allclose(fitted.logits(raw, x)[~heavy], raw[at.JOINT][~heavy])
    np.testing.assert_allclose(fitted.logits(raw, x)[heavy],
                               (raw[at.JOINT] - raw[at.DEEP])[heavy])


def test_where_the_deep_part_helps_every_bin_keeps_it():
    enc, x, counts, raw, y = gated_world(2)
    both = raw[at.JOINT]
    # labels drawn from wide + deep everywhere: the deep part is signal in every bin
    rng = np.random.default_rng(5)
    p = np.exp(both - both.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) > rng.random((len(y), 1))).argmax(axis=1)
    fitted = at.fit(both, y, x, enc, COUNTS, 1.0, deep=raw[at.DEEP])
    assert fitted is None or all(fitted.deep)
    if fitted is not None:
        assert "deep" not in fitted.export()  # nothing gated: the format-5 entry


def test_one_cut_the_deep_part_below_it_the_wide_part_from_it_up():
    """Wide-only bins are the heaviest ones: a middle bin where the deep part is noise keeps
    it when the bins above gain from it (chosen bin by bin it would go wide-only)."""
    rng = np.random.default_rng(7)
    enc = activity_encoders()
    n = 30_000
    counts = rng.choice([0, 2, 5, 12, 40, 150], size=n)
    x = enc.numeric[at.FEATURE].normalize(counts)
    wide, deep = rng.normal(0, 1.5, (n, 12)), rng.normal(0, 1.5, (n, 12))
    middle = (counts >= 10) & (counts < 30)
    truth = np.where(middle[:, None], wide, wide + deep)
    p = np.exp(truth - truth.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    fitted = at.fit(wide + deep, y, x, enc, COUNTS, 1.0, deep=deep)
    assert fitted.deep == (True,) * 5
    # and where the heavy bins do not need it, the cut takes the middle bin with them
    truth = np.where((counts >= 10)[:, None], wide, wide + deep)
    p = np.exp(truth - truth.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    assert at.fit(wide + deep, y, x, enc, COUNTS, 1.0, deep=deep).deep == (True,) * 2 + (
        False,) * 3


def test_the_gates_round_trip_and_a_warm_start_keeps_its_starts():
    enc, x, counts, raw, y = gated_world(0)
    fitted = at.fit(raw[at.JOINT], y, x, enc, COUNTS, 1.0, deep=raw[at.DEEP])
    assert at.from_json(at.to_json(fitted)) == fitted
    assert fitted.export()["deep"] == GATES
    old = {k: v for k, v in at.to_json(fitted).items() if k != "deep"}  # saved before gates
    assert at.from_json(old).deep is None
    # a regional model warm-started from it: its start's gates, one scale on gated logits
    enc, x, counts, raw, y = gated_world(3, 4000)
    warm = at.fit(raw[at.JOINT], y, x, enc, COUNTS, 1.0, start=fitted, deep=raw[at.DEEP])
    assert warm.deep == fitted.deep and warm.start_scale is not None
    np.testing.assert_allclose(np.array(warm.temperature) / warm.start_scale,
                               fitted.temperature)


def gated_export(encoders, seed: int = 3, wide: bool = True) -> dict:
    export = binned_export(encoders, seed=seed, wide=wide)
    export[at.EXPORT_KEY]["deep"] = list(GATES)
    return export


def gated_reference(export, ids, numeric):
    """The definition: rows of a wide-only bin scored with the head's kernel at 0."""
    col = list(export["numeric"]).index(at.FEATURE)
    entry = export[at.EXPORT_KEY]
    off = np.asarray(entry["deep"])[at.bin_of(entry["edges"], numeric[:, col])] == 0
    plain = dict(export, **{at.EXPORT_KEY: {k: v for k, v in entry.items() if k != "deep"}})
    W, b, link = export["heads"]["age_gender"]
    cut = dict(plain, heads={**export["heads"], "age_gender": (np.zeros_like(W), b, link)})
    on, gone = binned_reference(plain, ids, numeric), binned_reference(cut, ids, numeric)
    return {t: np.where(off[:, None], gone[t], on[t]) for t in TARGETS}


@pytest.mark.parametrize("wide", [False, True], ids=["deep", "wide"])
def test_numpy_scorer_scores_wide_only_bins_without_the_deep_part_on_every_path(wide):
    enc = activity_encoders()
    export = gated_export(enc, wide=wide)
    ids, numeric = inputs(enc, 2000, 4)
    want = gated_reference(export, ids, numeric)
    assert_every_numpy_path(export, enc, ids, numeric, want, 125)
    # the gates matter
    ungated = binned_export(enc, wide=wide)
    plain = FusedMLP(ungated, enc, dtype="float64").predict(ids, numeric)
    assert np.abs(plain["age_gender"] - want["age_gender"]).max() > 0.05


@pytest.mark.parametrize("wide", [False, True], ids=["deep", "wide"])
def test_onnx_graph_scores_wide_only_bins_as_numpy_does(wide):
    enc = activity_encoders()
    ids, numeric = inputs(enc, 2000, 6)
    assert_onnx_is_numpy(gated_export(enc, seed=5, wide=wide), enc, ids, numeric)


def test_the_gates_are_checked_and_round_trip_in_the_npz(tmp_path):
    enc = activity_encoders()
    export = gated_export(enc)
    path = str(tmp_path / "w.npz")
    save_export_npz(export, path)
    assert load_export_npz(path)[at.EXPORT_KEY] == export[at.EXPORT_KEY]
    entry = export[at.EXPORT_KEY]
    for bad in ([1.0, 0.0], [1, 1, 1, 0.5, 0], [1, 1, 1, 2, 0]):
        with pytest.raises(ValueError, match="'deep' needs 5 factors of 0 or 1"):
            check_export({**export, at.EXPORT_KEY: {**entry, "deep": bad}}, enc)


def test_a_trained_mlp_with_wide_only_bins_scores_alike_in_keras_numpy_and_onnx():
    """The Keras model's deep part (the head's kernel, its bias left with the wide part) is
    what the NumPy scorer and the ONNX graph leave out of a wide-only bin's rows."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("onnxruntime")
    from pythia.models import get_model
    from pythia.models.mlp_valid import forward_in_batches
    from pythia.scoring.onnx_export import OnnxMLP
    from pythia.scoring.onnx_graph import build_onnx_model

    enc = activity_encoders()
    train, valid, test = world(enc, 3000, 0), world(enc, 1500, 1), world(enc, 400, 2)
    model = get_model("mlp")(enc, {"hidden_units": [16], "age_head": "softmax"},
                             TrainConfig(max_epochs=1, batch_size=256, patience=1))
    model.fit(train, valid, priors_of(train, enc))
    head = model.keras_model.get_layer("age_gender")
    W, b = head.get_weights()  # a kernel of its own (the fit may have kept the LR start's 0)
    head.set_weights([np.random.default_rng(0).normal(0, 0.5, W.shape).astype(W.dtype), b])
    raw = forward_in_batches(model, model._inputs(test))
    assert np.abs(raw[at.DEEP]).max() > 0.01  # the kernel part, not the bias
    model.activity_temperature = at.ActivityTemperature(
        COUNTS, at.normalized_edges(enc, COUNTS), (0.8, 1.0, 1.3, 2.0, 3.0), (1,) * 5,
        (True,) * 5, (0, 1, 2, 3, 4), deep=(True, True, True, False, False))
    want = model.predict_proba(test)
    export = model.export_numpy()
    assert export[at.EXPORT_KEY]["deep"] == GATES
    ids = np.stack([test[f] for f in features.CATEGORICAL_FEATURES], axis=1).astype(np.int64)
    numeric = np.stack([test[f] for f in features.NUMERIC_FEATURES], axis=1).astype(np.float32)
    for got in (FusedMLP(export, enc, dtype="float64").predict(ids, numeric),
                OnnxMLP(build_onnx_model(export, enc)).predict(ids, numeric)):
        assert max(np.abs(np.asarray(got[t]) - want[t]).max() for t in TARGETS) <= 2e-5
    # the gates matter on these rows
    heavy = test["counts"] >= 30
    ungated = dataclasses.replace(model.activity_temperature, deep=None)
    model.activity_temperature = ungated
    assert np.abs(model.predict_proba(test)["age_gender"][heavy]
                  - want["age_gender"][heavy]).max() > 1e-3


@pytest.mark.parametrize("allowed", [True, False])
def test_wide_only_bins_can_be_turned_off(allowed):
    """``wide_only_bins`` (an MLP hparam, default on): off, the network gives no deep part
    to take out and no bin is wide-only, whatever validation says."""
    pytest.importorskip("tensorflow")
    from pythia.models import get_model
    from pythia.models.mlp_valid import forward_in_batches

    enc = activity_encoders()
    train, valid = world(enc, 3000, 0), world(enc, 2500, 1)
    model = get_model("mlp")(enc, {"hidden_units": [16], "age_head": "softmax",
                                   "wide_only_bins": allowed},
                             TrainConfig(max_epochs=2, batch_size=256, patience=1))
    model.fit(train, valid, priors_of(train, enc))
    raw = forward_in_batches(model, model._inputs(valid))
    assert (at.DEEP in raw) == allowed
    assert model.activity_temperature is not None
    assert (model.activity_temperature.deep is not None) == allowed
