"""TabNet on top of a logistic regression (``[models.tabnet] offset = "logreg"``,
``pythia/models/tabnet_offset.py``): it starts as the LR, learns what the LR cannot, falls back
to the LR when no epoch beats it, saves and loads the LR with it, and a regional fit keeps its
global start's LR. Tiny data from tests/test_models.py."""
from __future__ import annotations

import os

import numpy as np
import pytest

from pythia.config import TrainConfig
from pythia.models import MODELS, notes
from test_models import FAST, HPARAMS, N_AGE, make_encoders, make_split, uniform_priors

OFFSET = {**HPARAMS["tabnet"], "offset": "logreg"}


@pytest.fixture(scope="module")
def data():
    return {"train": make_split(600, 0), "valid": make_split(300, 1), "test": make_split(300, 2)}


def _lr(data):
    lr = MODELS["logreg"](make_encoders(), {}, FAST)
    lr.fit(data["train"], data["valid"], uniform_priors())
    return lr


def test_a_tabnet_no_epoch_improves_is_its_logistic_regression(data):
    # an absurd learning rate: every epoch is worse than the LR it starts from
    model = MODELS["tabnet"](make_encoders(), {**OFFSET, "learning_rate": 50.0}, FAST)
    summary = model.fit(data["train"], data["valid"], uniform_priors())
    start = summary["offset_start"]
    assert start["kept_start"] is True and summary["best_val_loss"] == start["val_loss_at_start"]
    assert "kept the LR alone" in " ".join(notes.take("tabnet"))
    # the network's output is the baseline's logits: the same fit as the logreg baseline's
    raw = model._predict_raw(data["test"])["age_gender"]
    logits = _lr(data).linear_logits(data["test"])
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(raw, log_softmax, atol=1e-5)


def _band_split(n: int, seed: int) -> dict[str, np.ndarray]:
    """Gender is whether |hour_cos| > 0.7: no model linear in the numeric sees any of it."""
    X = make_split(n, seed)
    rng = np.random.default_rng(seed + 100)
    c = rng.normal(0, 1, n).astype(np.float32)
    g = np.where(rng.random(n) < 0.9, (np.abs(c) > 0.7).astype(int), rng.integers(0, 2, n))
    X["hour_cos"], X["y_gender"], X["y_age_gender"] = c, g, g * N_AGE + X["y_age"]
    return X


def test_a_tabnet_learns_what_its_logistic_regression_cannot():
    train, valid = _band_split(1500, 0), _band_split(500, 1)
    cfg = TrainConfig(max_epochs=12, batch_size=64, patience=3, seed=0)
    model = MODELS["tabnet"](make_encoders(), OFFSET, cfg)
    summary = model.fit(train, valid, uniform_priors())
    start = summary["offset_start"]
    assert start["kept_start"] is False
    assert summary["best_val_loss"] < start["val_loss_at_start"] - 0.05
    assert "at the start" in " ".join(notes.take("tabnet"))
    # the LR's start is the logreg baseline's loss on these rows (TabNet's metric: unweighted)
    lr = MODELS["logreg"](make_encoders(), {}, cfg)
    lr.fit(train, valid, uniform_priors())
    logits = lr.linear_logits(valid)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    y = valid["y_age_gender"]
    assert start["val_loss_at_start"] == pytest.approx(-log_p[np.arange(len(y)), y].mean(),
                                                       abs=1e-5)
    alone = MODELS["tabnet"](make_encoders(), HPARAMS["tabnet"], cfg)
    assert "offset_start" not in alone.fit(train, valid, uniform_priors())


def test_saved_offset_tabnet_loads_with_its_lr_and_scores_the_same(data, tmp_path):
    model = MODELS["tabnet"](make_encoders(), OFFSET, FAST)
    model.fit(data["train"], data["valid"], uniform_priors())
    model.save(str(tmp_path / "m"))
    assert os.path.exists(tmp_path / "m" / "logreg.npz")
    loaded = MODELS["tabnet"].load(str(tmp_path / "m"))
    assert loaded.offset_lr is not None and loaded.clf.n_offset == len(loaded.classes)
    a, b = model.predict_proba(data["test"]), loaded.predict_proba(data["test"])
    for target in a:
        np.testing.assert_array_equal(a[target], b[target])
    # without the LR's columns the network would see other inputs: they are required
    assert loaded.matrix(data["test"]).shape[1] == model.matrix(data["test"]).shape[1]


def test_a_regional_fit_keeps_its_global_starts_lr(data, tmp_path):
    start = MODELS["tabnet"](make_encoders(), OFFSET, FAST)
    start.fit(data["train"], data["valid"], uniform_priors())
    region = {k: make_split(300, 7)[k] for k in data["train"]}
    model = MODELS["tabnet"](make_encoders(), {**OFFSET, "warm_epochs": 2}, FAST)
    model.fit(region, data["valid"], uniform_priors(), start=start)
    assert model.offset_lr is start.offset_lr
    np.testing.assert_array_equal(model.matrix(data["test"])[:, -6:],
                                  start.matrix(data["test"])[:, -6:])
    model.save(str(tmp_path / "r"))
    loaded = MODELS["tabnet"].load(str(tmp_path / "r"))
    np.testing.assert_array_equal(loaded.predict_proba(data["test"])["age_gender"],
                                  model.predict_proba(data["test"])["age_gender"])


def test_an_unknown_offset_is_named(data):
    model = MODELS["tabnet"](make_encoders(), {**OFFSET, "offset": "gbdt"}, FAST)
    with pytest.raises(ValueError, match=r"\[models.tabnet\] offset"):
        model.fit(data["train"], data["valid"], uniform_priors())
