"""The cheaper MLP training paths of issue 14: aid heads started at their priors instead of
their own LR fits, and early stopping that needs a minimum improvement."""
from __future__ import annotations

import numpy as np
import pytest

from pythia.models import MODELS
from pythia.models.links import corn_probabilities
from tests.test_models import FAST, HPARAMS, N_AGE, make_encoders, make_split


def skewed_priors() -> dict:
    ag = np.array([0.05, 0.1, 0.15, 0.2, 0.25, 0.25])
    train = {"age_gender": ag.tolist(), "gender": [ag[:N_AGE].sum(), ag[N_AGE:].sum()],
             "age": (ag[:N_AGE] + ag[N_AGE:]).tolist()}
    return {"train": train, "natural": train}


@pytest.mark.parametrize("corn", [False, True])
def test_prior_start_biases_give_the_training_prior(corn):
    from pythia.models.wide import prior_start

    prior = np.array([0.2, 0.5, 0.3])
    start = prior_start(make_encoders(), prior, corn, 2.0)
    units = 2 if corn else 3
    assert start["bias"].shape == (units,) and start["l2_rows"] == [2.0] * units
    assert all(t.shape[1] == units and not t.any() for t in start["tables"].values())
    assert not start["numeric"].any()
    if corn:
        p = corn_probabilities(start["bias"][None, :])[0]
    else:
        p = np.exp(start["bias"]) / np.exp(start["bias"]).sum()
    np.testing.assert_allclose(p, prior, atol=1e-9)


def test_mlp_with_prior_aid_heads_starts_as_the_agegender_lr_only():
    train, valid = make_split(600, 0), make_split(300, 1)
    model = MODELS["mlp"](make_encoders(), {**HPARAMS["mlp"], "aid_start": "prior",
                                            "wide_per_feature_l2": False}, FAST)
    model.priors = skewed_priors()
    from pythia.models.wide import fit_wide_start

    start = fit_wide_start(train, valid, make_encoders(), skewed_priors(),
                           np.ones(len(valid["y_age_gender"])), model.age_head, FAST,
                           {"per_feature_l2": False}, aid_l2_rows=1.0)
    full = fit_wide_start(train, valid, make_encoders(), skewed_priors(),
                          np.ones(len(valid["y_age_gender"])), model.age_head, FAST,
                          {"per_feature_l2": False})
    for key in ("bias", "numeric"):
        np.testing.assert_allclose(start["age_gender"][key], full["age_gender"][key])
    assert start["gender"]["C"] == [] and full["gender"]["C"] != []
    net = model.build(len(train["y_age_gender"]), start)
    out = net.predict(model._inputs(make_split(50, 2)), verbose=0)
    gender = np.exp(out["gender"]) / np.exp(out["gender"]).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(gender, np.tile(skewed_priors()["train"]["gender"], (50, 1)),
                               atol=1e-5)
    age = corn_probabilities(np.asarray(out["age"], dtype=np.float64))
    np.testing.assert_allclose(age, np.tile(skewed_priors()["train"]["age"], (50, 1)),
                               atol=1e-5)


def test_mlp_with_prior_aid_heads_fits_and_rejects_unknown_starts():
    train, valid = make_split(600, 0), make_split(300, 1)
    model = MODELS["mlp"](make_encoders(), {**HPARAMS["mlp"], "aid_start": "prior"}, FAST)
    summary = model.fit(train, valid, skewed_priors())
    assert summary["wide_start"]["C"]["gender"] == []
    assert summary["val_logloss"]["age_gender"] < np.log(6)
    bad = MODELS["mlp"](make_encoders(), {**HPARAMS["mlp"], "aid_start": "zeros"}, FAST)
    with pytest.raises(ValueError, match="aid_start must be 'logreg' or 'prior'"):
        bad.fit(train, valid, skewed_priors())


class _Weights:
    """A stand-in Keras model: KeepBest only reads and writes its weights."""

    def __init__(self) -> None:
        self.w, self.stop_training = [np.zeros(1)], False

    def get_weights(self):
        return [v.copy() for v in self.w]

    def set_weights(self, w):
        self.w = [v.copy() for v in w]


@pytest.mark.parametrize("min_delta, stops_after", [(0.0, 3), (1e-3, 1)])
def test_keep_best_needs_min_delta_to_keep_going_but_keeps_any_gain(min_delta, stops_after):
    from pythia.models.wide import KeepBest

    losses = iter([2.0, 1.9999, 1.9998, 1.9997, 1.9996])  # start, then tiny gains
    keep = KeepBest(lambda: {"age_gender": next(losses)}, patience=1, min_delta=min_delta)
    model = _Weights()
    keep.set_model(model)
    keep.on_train_begin()
    for epoch in range(3):
        model.w = [np.full(1, epoch + 1.0)]
        keep.on_epoch_end(epoch)
        if model.stop_training:
            break
    keep.on_train_end()
    assert len(keep.history) - 1 == stops_after
    assert keep.best_index == stops_after  # the last, smallest loss is kept either way
    assert model.w[0][0] == stops_after
