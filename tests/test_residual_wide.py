"""A regional MLP's wide part refitted on the region's rows on top of the start's logits
(``models.residual_wide``, the MLP hparam ``warm_residual``)."""
from __future__ import annotations

import numpy as np
import pytest

from pythia import features
from pythia.models import get_model, load_model
from pythia.models import residual_wide as rw
from test_models import FAST, HPARAMS, make_encoders, make_split, uniform_priors


def _regional(n: int, seed: int) -> dict:
    """Rows like ``make_split``'s, where device_make (noise in the global rows) shows the
    AgeGender class in 60% of the rows: an effect only this region has."""
    split = make_split(n, seed)
    rng = np.random.default_rng(seed + 100)
    said = rng.random(n) < 0.6
    split["device_make"] = np.where(said, 2 + split["y_age_gender"], split["device_make"])
    return split


@pytest.fixture(scope="module")
def start():
    model = get_model("mlp")(make_encoders(), HPARAMS["mlp"], FAST)
    model.fit(make_split(600, 0), make_split(300, 1), uniform_priors())
    return model


@pytest.fixture(scope="module")
def region():
    return {"train": _regional(400, 3), "valid": _regional(300, 4), "test": _regional(300, 5)}


def _warm(start, region, **hparams):
    model = get_model("mlp")(make_encoders(), {**HPARAMS["mlp"], "warm_epochs": 0, **hparams},
                             FAST)
    summary = model.fit(region["train"], region["valid"], uniform_priors(), start=start)
    return model, summary


def _log_loss(model, split) -> float:
    p = model.predict_proba(split)["age_gender"]
    return float(-np.mean(np.log(p[np.arange(len(p)), split["y_age_gender"]])))


def test_the_design_is_the_wide_parts_own_input():
    """``X @ W`` equals a row per categorical id summed over the features, plus the numerics
    times their rows: what ``WideLogits`` computes."""
    split = make_split(50, 7)
    sizes = [make_encoders().vocabularies[f].size for f in features.CATEGORICAL_FEATURES]
    X = rw.design(split, sizes)
    rng = np.random.default_rng(0)
    W = rng.normal(size=(X.shape[1], 4))
    expected = np.zeros((50, 4))
    offset = 0
    for f, size in zip(features.CATEGORICAL_FEATURES, sizes):
        expected += W[offset + np.asarray(split[f])]
        offset += size
    for j, f in enumerate(features.NUMERIC_FEATURES):
        expected += np.asarray(split[f], dtype=np.float64)[:, None] * W[offset + j]
    np.testing.assert_allclose(np.asarray(X @ W), expected, rtol=1e-12, atol=1e-12)


def test_the_offset_fit_learns_what_the_offset_misses_and_a_strong_prior_keeps_it_at_zero():
    rng = np.random.default_rng(1)
    n, k = 4000, 3
    group = rng.integers(0, 2, n)  # a column the offset ignores
    from scipy import sparse
    X = sparse.csr_matrix(np.stack([group == 0, group == 1], axis=1).astype(float))
    truth = np.array([[1.5, 0.0, -1.5], [-1.5, 0.0, 1.5]])
    z = np.zeros((n, k))
    p = np.exp(truth[group]) / np.exp(truth[group]).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    W, b = rw.fit_offset(X, y, z, l2_rows=1.0)
    fitted = W + b  # per group, the logits up to a constant
    np.testing.assert_allclose(fitted - fitted.mean(axis=1, keepdims=True), truth, atol=0.15)
    assert rw.cross_entropy(np.asarray(X @ W) + b, y) < rw.cross_entropy(z, y) - 0.3
    W0, _ = rw.fit_offset(X, y, z, l2_rows=1e9)
    assert np.abs(W0).max() < 1e-3


def test_a_regional_effect_the_start_never_saw_is_learnt(start, region, tmp_path):
    """The start ignores device_make (noise in its rows). Warm epochs off: without the
    residual fit the regional model is the start; with it, it learns the region's device_make
    and scores its unseen rows better, and the gain is in the saved network."""
    plain, plain_summary = _warm(start, region)
    fitted, summary = _warm(start, region, warm_residual=True)
    assert "residual_wide" not in plain_summary
    record = summary["residual_wide"]
    assert record["l2_rows"] in rw.GRID and record["rows"] == 400
    assert record["val_loss_after"] < record["val_loss_before"] - 0.05
    assert _log_loss(fitted, region["test"]) < _log_loss(plain, region["test"]) - 0.05
    # only AgeGender's wide columns and bias moved; the deep part is the start's
    for layer in ("trunk_0", "emb_device_make", "gender", "age"):
        for a, b in zip(fitted.keras_model.get_layer(layer).get_weights(),
                        start.keras_model.get_layer(layer).get_weights()):
            np.testing.assert_array_equal(a, b)
    table = fitted.keras_model.get_layer("wide").get_weights()[0]
    before = start.keras_model.get_layer("wide").get_weights()[0]
    assert not np.allclose(table[:, -6:], before[:, -6:])
    np.testing.assert_array_equal(table[:, :-6], before[:, :-6])
    fitted.save(str(tmp_path / "m"))
    again = load_model(str(tmp_path / "m"))
    for t, p in fitted.predict_proba(region["test"]).items():
        np.testing.assert_allclose(again.predict_proba(region["test"])[t], p, atol=1e-6)


def test_a_region_with_nothing_to_add_keeps_the_start(start):
    """Region rows whose labels are noise: no strength beats the start on validation, so the
    network is left exactly as the start's."""
    rng = np.random.default_rng(5)
    noise = make_split(300, 8)
    ag = rng.integers(0, 6, 300)
    noise.update(y_age_gender=ag, y_gender=ag // 3, y_age=ag % 3)
    model, summary = _warm(start, {"train": noise, "valid": make_split(300, 1)},
                           warm_residual=True)
    assert summary["residual_wide"]["l2_rows"] is None
    valid = make_split(300, 1)
    for head in start.heads:
        np.testing.assert_allclose(model._predict_raw(valid)[head],
                                   start._predict_raw(valid)[head], rtol=0, atol=1e-6)
