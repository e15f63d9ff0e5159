"""The cheaper model work of issue 14 outside reading: each faster path gives the numbers of
the path it replaced (TabNet's batches, gbdt's prediction, the MLP's validation pass)."""
from __future__ import annotations

import numpy as np
import pytest

from pythia import features
from tests.test_models import FAST, HPARAMS, make_encoders, make_split, uniform_priors


def _tabnet_pair():
    """The library's classifier and ours, built from one set of hparams."""
    from pytorch_tabnet.tab_model import TabNetClassifier

    from pythia.models.tabnet import BatchTabNetClassifier, TabNetModel

    model = TabNetModel(make_encoders(), HPARAMS["tabnet"], FAST)
    ours = model._new_classifier()
    theirs = TabNetClassifier(**ours.get_params())
    assert type(ours) is BatchTabNetClassifier and type(theirs) is TabNetClassifier
    return theirs, ours


def test_tabnet_batches_fit_and_predict_exactly_as_the_library():
    import torch

    from pythia.models.tabnet import to_matrix

    train, valid = make_split(700, 0), make_split(300, 1)
    X, y = to_matrix(train), train["y_age_gender"]
    Xv, yv = to_matrix(valid), valid["y_age_gender"]
    fits = []
    for clf in _tabnet_pair():
        torch.set_num_threads(1)
        torch.manual_seed(0)
        clf.fit(X, y, eval_set=[(Xv, yv)], eval_name=["valid"], max_epochs=3, patience=3,
                batch_size=128, virtual_batch_size=32, num_workers=0, drop_last=False,
                compute_importance=False)
        fits.append((clf.history.history["loss"], clf.predict_proba(Xv),
                     [p.detach().numpy().copy() for p in clf.network.parameters()]))
    (loss_a, p_a, w_a), (loss_b, p_b, w_b) = fits
    assert loss_a == loss_b  # same batches in the same order, epoch after epoch
    for a, b in zip(w_a, w_b):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(p_a, p_b)
    assert p_b.shape == (len(Xv), 6)
    ours = _tabnet_pair()[1]
    ours.batch_size, ours.num_workers, ours.drop_last, ours.pin_memory = 64, 0, False, False
    ours.updated_weights, ours.classes_ = 0, np.arange(6)
    ours.target_mapper = {c: c for c in range(6)}
    train_loader, (valid_loader,) = ours._construct_loaders(X, y, [(Xv, yv)])
    assert type(train_loader.dataset).__name__ == type(valid_loader.dataset).__name__ \
        == "_Batches"


def test_tabnet_batches_serve_rows_by_index():
    from pythia.models.tabnet import _Batches

    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    data = _Batches(x, np.arange(6))
    xb, yb = data.__getitems__([4, 0, 5])
    np.testing.assert_array_equal(xb.numpy(), x[[4, 0, 5]])
    assert yb.tolist() == [4, 0, 5] and len(data) == 6
    with pytest.raises(IndexError):
        data.__getitems__([6])


def _old_valid_loss(model, valid, task) -> float:
    """logreg's validation score before issue 14: softmax, prior correction, pick."""
    from pythia.models import priors as pr

    p = pr.correct_priors(pr.apply_temperature(model.linear_logits(valid), 1.0),
                          model.train_cfg.prior_correction, task.train_prior,
                          task.natural_prior)
    picked = np.maximum(p[np.arange(len(task.yv)), task.yv], pr.PROB_FLOOR)
    return float(np.sum(-np.log(picked) * task.valid_weights) / np.sum(task.valid_weights))


@pytest.mark.parametrize("correction", ["bayes", "none", "em"])
def test_logreg_validation_score_equals_the_softmax_path(correction):
    import dataclasses

    from pythia.models.design import design_matrix
    from pythia.models.logreg import LinearTask, LogRegModel

    train, valid = make_split(600, 0), make_split(300, 1)
    cfg = dataclasses.replace(FAST, prior_correction=correction)
    model = LogRegModel(make_encoders(), {"c_grid": [0.1]}, cfg)
    model.fit(train, valid, uniform_priors())
    yv = valid["y_age_gender"]
    # skewed priors, one class absent from the natural mix: its rows hit the floor
    task = LinearTask(train["y_age_gender"], yv, 6, [0.1, 0.2, 0.3, 0.2, 0.1, 0.1],
                      [0.3, 0.0, 0.2, 0.2, 0.2, 0.1], np.linspace(0.5, 2.0, len(yv)))
    Xv = design_matrix(valid, model.tables, model.n_onehot, model.num_mean, model.num_std,
                       np.float64)
    np.testing.assert_allclose(Xv @ model.coef + model.intercept,
                               model.linear_logits(valid), rtol=0, atol=1e-12)
    assert model._valid_loss(Xv, task) == pytest.approx(_old_valid_loss(model, valid, task),
                                                        rel=1e-12, abs=1e-12)
    if correction == "bayes":  # the natural prior really moves the score
        assert model._valid_loss(Xv, task) != pytest.approx(_old_valid_loss(
            model, valid, task._replace(natural_prior=task.train_prior)), abs=1e-3)


@pytest.mark.parametrize("patience", [1, 3])
def test_mlp_calibrates_on_the_validation_logits_early_stopping_computed(patience):
    from pythia.models import priors as pr
    from pythia.models.mlp import MLPModel

    train, valid = make_split(600, 0), make_split(300, 1)
    model = MLPModel(make_encoders(), {**HPARAMS["mlp"], "patience": patience, "min_delta": 0.0},
                     FAST)
    calls = []
    original = MLPModel._raw_and_labels

    def spy(self, data):
        calls.append(len(data["y_age_gender"]))
        return original(self, data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MLPModel, "_raw_and_labels", spy)
        out = model.fit(train, valid, uniform_priors())
    # one pass before the first epoch and one after each: calibration adds none
    assert calls == [300] * (out["epochs"] + 1)
    raw, y = original(model, valid)  # the restored best weights, scored afresh
    for t in model.heads:
        assert model.temperature[t] == pr.fit_temperature(raw[t], y[t], model.link(t))
    calibrated = pr.apply_temperature(raw["age_gender"], model.temperature["age_gender"])
    assert out["val_logloss"]["age_gender"] == pr.mean_log_loss(calibrated, y["age_gender"])


@pytest.mark.parametrize("n_classes", [2, 5])
def test_gbdt_binned_prediction_equals_predict_proba(n_classes):
    from sklearn.ensemble import HistGradientBoostingClassifier

    from pythia.models import hgb as gbdt

    rng = np.random.default_rng(0)
    n = 3000
    cat = rng.integers(0, 40, n).astype(np.float64)
    num = rng.normal(size=n)
    num[rng.random(n) < 0.05] = np.nan
    y = (cat % n_classes + (num > 0.5)) % n_classes
    X = np.column_stack([cat, num, np.round(rng.normal(size=n), 1)])
    clf = HistGradientBoostingClassifier(max_iter=15, categorical_features=[True, False, False],
                                         random_state=0).fit(X, y)
    test = np.column_stack([rng.integers(0, 60, n),  # ids 40..59: never seen in training
                            np.where(rng.random(n) < 0.1, np.nan, rng.normal(0, 3, n)),
                            np.concatenate([X[:n // 2, 2], rng.normal(size=n - n // 2)])])
    old = gbdt.PREDICT_BLOCK_ROWS
    try:
        gbdt.PREDICT_BLOCK_ROWS = 1000  # several blocks
        got = gbdt.predict_binned_proba(clf, test, 1)
    finally:
        gbdt.PREDICT_BLOCK_ROWS = old
    np.testing.assert_array_equal(got, clf.predict_proba(test))
    assert got.shape == (n, n_classes)


def test_gbdt_predicts_as_hgb_predict_proba():
    from pythia.models.gbdt import GBDTModel
    from pythia.models.hgb import expand_classes, to_matrix
    from pythia.models.priors import log_probabilities

    model = GBDTModel(make_encoders(), HPARAMS["gbdt"], FAST)
    model.fit(make_split(600, 0), make_split(300, 1), uniform_priors())
    test = make_split(400, 2)
    expected = expand_classes(model.clf.predict_proba(to_matrix(test, model.category_maps)),
                              model.clf.classes_, 6)
    np.testing.assert_array_equal(model._predict_raw(test)["age_gender"],
                                  log_probabilities(expected))


def test_gbdt_keeps_the_trees_up_to_the_best_validation_iteration():
    """HGB's early stopping keeps the worse iterations it tried after the best one; the fitted
    model is cut back to the best, and predicts as HGB's own model did at that iteration."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from pythia.models.gbdt import GBDTModel
    from pythia.models.hgb import expand_classes, known_class_rows, to_matrix
    from pythia.models.priors import log_probabilities

    hp = {"max_iter": 200, "n_iter_no_change": 4, "learning_rate": 0.5, "n_threads": 1}
    train, valid, test = make_split(600, 0), make_split(300, 1), make_split(400, 2)
    model = GBDTModel(make_encoders(), hp, FAST)
    model.fit(train, valid, uniform_priors())
    # the same HGB without the cut: same seed, same data, so the same trees
    y, yv = train["y_age_gender"], valid["y_age_gender"]
    keep = known_class_rows(yv, np.unique(y))
    ref = HistGradientBoostingClassifier(**{
        k: v for k, v in model.clf.get_params().items() if k != "max_iter"}, max_iter=200)
    ref.fit(to_matrix(train, model.category_maps), y,
            X_val=to_matrix({k: np.asarray(v)[keep] for k, v in valid.items()},
                            model.category_maps), y_val=yv[keep])
    best = int(np.argmax(ref.validation_score_))
    assert 1 <= best < ref.n_iter_  # the data must make early stopping try worse iterations
    assert model.clf.n_iter_ == best and len(model.clf.validation_score_) == best + 1
    X = to_matrix(test, model.category_maps)
    staged = list(ref.staged_predict_proba(X))[best - 1]
    np.testing.assert_allclose(model.clf.predict_proba(X), staged, rtol=0, atol=1e-12)
    np.testing.assert_allclose(model._predict_raw(test)["age_gender"],
                               log_probabilities(expand_classes(staged, ref.classes_, 6)),
                               rtol=0, atol=1e-9)
