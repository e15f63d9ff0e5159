"""Regional candidates started from a fitted global one: ``Model.fit(..., start=model)``."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pythia.features import Encoders, NumericStats, Vocabulary
from pythia.models import get_model
from test_models import FAST, HPARAMS, LEARNERS, make_encoders, make_split, uniform_priors

# the budget knob per learner that 0 turns into "keep the start"
ZERO_BUDGET = {"logreg": {"warm_max_iter": 0}, "gbdt": {"warm_max_iter": 0},
               "mlp": {"warm_epochs": 0}, "tabnet": {"warm_epochs": 0}}
# a budget that trains (the tiny data's regional fit)
WARM = {"logreg": {}, "gbdt": {"warm_max_iter": 20}, "mlp": {"warm_epochs": 3},
        "tabnet": {"warm_epochs": 3}}


@pytest.fixture(scope="module")
def data():
    # the "region": fewer rows, another class mix than the global training rows
    skew = np.array([0.3, 0.2, 0.1, 0.1, 0.15, 0.15])
    return {"train": make_split(400, 0), "valid": make_split(200, 1),
            "region_train": make_split(150, 3, skew), "region_valid": make_split(120, 4, skew)}


@pytest.fixture(scope="module")
def globals_(data):
    """One global model per learner that warm-starts (module-scoped: fitting is slow)."""
    out = {}
    for name in LEARNERS:
        model = get_model(name)(make_encoders(), HPARAMS[name], FAST)
        model.fit(data["train"], data["valid"], uniform_priors())
        out[name] = model
    return out


def _warm(name: str, hparams: dict):
    return get_model(name)(make_encoders(), {**HPARAMS[name], **hparams}, FAST)


def test_a_model_that_does_not_warm_start_says_so(data):
    prior = get_model("class_prior")
    fitted = prior(make_encoders(), HPARAMS["class_prior"], FAST)
    fitted.fit(data["train"], data["valid"], uniform_priors())
    assert not prior.warm_starts
    with pytest.raises(ValueError, match="does not start from a fitted model"):
        prior(make_encoders(), {}, FAST).fit(data["train"], data["valid"], uniform_priors(),
                                             start=fitted)


@pytest.mark.parametrize("name", LEARNERS)
def test_warm_fit_with_no_budget_is_the_start(globals_, data, name):
    start = globals_[name]
    model = _warm(name, ZERO_BUDGET[name])
    summary = model.fit(data["region_train"], data["region_valid"], uniform_priors(),
                        start=start)
    raw, raw_start = model._predict_raw(data["region_valid"]), start._predict_raw(
        data["region_valid"])
    for head in start.heads:
        np.testing.assert_allclose(raw[head], raw_start[head], rtol=0, atol=1e-6)
    record = summary["start"]
    assert record["warm"] is True and record["improved"] is False
    assert record["epochs_or_iterations"] == 0
    assert record["best_val_loss"] == pytest.approx(record["val_loss_at_start"])
    assert model.start is None  # exposed during the fit only


@pytest.mark.parametrize("name", LEARNERS)
def test_warm_fit_never_ends_worse_than_its_start(globals_, data, name):
    model = _warm(name, WARM[name])
    summary = model.fit(data["region_train"], data["region_valid"], uniform_priors(),
                        start=globals_[name])
    record = summary["start"]
    assert record["best_val_loss"] <= record["val_loss_at_start"]
    assert record["improved"] is (record["best_val_loss"] < record["val_loss_at_start"])
    assert summary["val_logloss"]["age_gender"] < np.log(6)  # still a model of the data
    json.dumps(summary["start"])  # the flow stores it as is


def _noise_labels(split: dict, seed: int) -> dict:
    """``split`` with AgeGender labels drawn uniformly, unrelated to the features, and a
    feature that lacks some values (a region's rows often do)."""
    rng = np.random.default_rng(seed)
    ag = rng.integers(0, 6, len(split["y_age_gender"]))
    return {**split, "y_age_gender": ag, "y_gender": ag // 3, "y_age": ag % 3,
            "site_or_app": np.maximum(split["site_or_app"], 5)}


@pytest.mark.parametrize("name", LEARNERS)
def test_warm_fit_keeps_the_start_when_training_only_hurts(globals_, data, name):
    # regional training rows whose labels are noise (and a harsh rate for the learners that
    # have one): every step moves away from what validation rewards, so the start is kept
    hurt = {"logreg": {"warm_max_iter": 100, "warm_tol": 1e-10},
            "gbdt": {"warm_max_iter": 5, "learning_rate": 1.0, "min_samples_leaf": 2},
            "mlp": {"warm_epochs": 2, "warm_lr": 1.0},
            "tabnet": {"warm_epochs": 2, "learning_rate": 0.5}}[name]
    start = globals_[name]
    model = _warm(name, hurt)
    summary = model.fit(_noise_labels(data["region_train"], 9), data["valid"],
                        uniform_priors(), start=start)
    record = summary["start"]
    assert record["improved"] is False and record["epochs_or_iterations"] == 0
    raw, raw_start = model._predict_raw(data["valid"]), start._predict_raw(data["valid"])
    for head in start.heads:
        np.testing.assert_allclose(raw[head], raw_start[head], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", LEARNERS)
def test_start_of_another_class_or_other_encoders_is_refused(globals_, data, name):
    other = "gbdt" if name != "gbdt" else "logreg"
    with pytest.raises(ValueError, match="can start only from a fitted"):
        _warm(name, {}).fit(data["region_train"], data["region_valid"], uniform_priors(),
                            start=globals_[other])
    enc = make_encoders()
    vocabularies = dict(enc.vocabularies)
    first = next(iter(vocabularies))
    vocabularies[first] = Vocabulary([f"w{i}" for i in range(8)])
    other_enc = Encoders(vocabularies, {f: NumericStats(0.0, 1.0) for f in enc.numeric},
                         enc.age_edges)
    with pytest.raises(ValueError, match="same encoders"):
        get_model(name)(other_enc, HPARAMS[name], FAST).fit(
            data["region_train"], data["region_valid"], uniform_priors(),
            start=globals_[name])


@pytest.mark.parametrize("name", LEARNERS)
def test_a_loaded_model_serves_as_a_start(globals_, data, name, tmp_path):
    globals_[name].save(str(tmp_path / name))
    loaded = get_model(name).load(str(tmp_path / name))
    a = _warm(name, WARM[name])
    b = _warm(name, WARM[name])
    sa = a.fit(data["region_train"], data["region_valid"], uniform_priors(),
               start=globals_[name])
    sb = b.fit(data["region_train"], data["region_valid"], uniform_priors(), start=loaded)
    assert sb["start"]["val_loss_at_start"] == pytest.approx(sa["start"]["val_loss_at_start"],
                                                             abs=1e-5)
    assert sb["start"]["best_val_loss"] <= sb["start"]["val_loss_at_start"]


def test_gbdt_warm_trees_see_the_bins_they_were_split_on(globals_, data):
    # scikit-learn's own warm_start re-bins the new rows, so the start's trees would read
    # other bins: walking the trees on the bins and on the float thresholds would disagree
    from pythia.models.hgb import predict_binned_proba, to_matrix

    model = _warm("gbdt", {"warm_max_iter": 20})
    region = {**data["region_train"],  # values 2-4 absent: category codes would shift
              "site_or_app": np.maximum(data["region_train"]["site_or_app"], 5)}
    # validated on its own training rows, so that trees are surely added
    summary = model.fit(region, region, uniform_priors(), start=globals_["gbdt"])
    assert summary["epochs"] > 0
    assert model.clf.n_iter_ == globals_["gbdt"].clf.n_iter_ + summary["epochs"]
    X = to_matrix(data["valid"], model.category_maps)
    np.testing.assert_allclose(predict_binned_proba(model.clf, X, 1), model.clf.predict_proba(X),
                               rtol=0, atol=1e-12)


def test_logreg_warm_prior_centred_on_the_start(globals_, data):
    # the start's L2 penalty centred on its weights: the region's skewed class mix moves the
    # intercepts without shrinking the global weights to 0; a tiny C holds the weights there
    start = globals_["logreg"]
    model = _warm("logreg", {"warm_prior": "start"})
    summary = model.fit(data["region_train"], data["region_valid"], uniform_priors(),
                        start=start)
    assert summary["start"]["improved"] is True
    assert summary["start"]["best_val_loss"] < summary["start"]["val_loss_at_start"]
    held = _warm("logreg", {"warm_prior": "start"})
    held.start = start  # the fit's own call, at a C a million times smaller
    held.priors, held.chosen_c, held.col_scale = start.priors, 1e-6 * start.chosen_c, None
    from pythia.models.design import design_matrix
    from pythia.models.warm_logreg import _fit_toward
    Xt = design_matrix(data["region_train"], start.tables, start.n_onehot, start.num_mean,
                       start.num_std)
    _fit_toward(held, Xt, data["region_train"]["y_age_gender"], start.coef, start.intercept,
                (1e-8, 200))
    np.testing.assert_allclose(held.coef, start.coef, atol=1e-3)
    with pytest.raises(ValueError, match="warm_prior must be"):
        _warm("logreg", {"warm_prior": "global"}).fit(
            data["region_train"], data["region_valid"], uniform_priors(), start=start)


def test_tabnet_stops_on_its_own_patience(data):
    from pythia.config import TrainConfig

    cfg = TrainConfig(max_epochs=30, batch_size=64, patience=5, seed=0)
    model = get_model("tabnet")(make_encoders(), {**HPARAMS["tabnet"], "patience": 1}, cfg)
    assert model.patience() == 1
    assert (get_model("tabnet")(
        make_encoders(), {**HPARAMS["tabnet"], "patience": None}, cfg).patience() == 5)
    summary = model.fit(data["train"], data["valid"], uniform_priors())
    assert summary["best_epoch"] < summary["epochs"] <= summary["best_epoch"] + 1
