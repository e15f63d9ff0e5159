"""A regional gbdt adds its own trees' raw scores to those its start computed on the same rows
(``GBDTModel.serve_as_start``, ``gbdt_warm.StartScores``): the same numbers, bit for bit, as
walking every tree, and the start's trees are not walked again on rows it scored."""
from __future__ import annotations

import numpy as np
import pytest

from pythia.models import get_model
from pythia.models import hgb as hgb
from pythia.models.gbdt_warm import StartScores
from test_models import FAST, HPARAMS, make_encoders, make_split, uniform_priors

WARM = {**HPARAMS["gbdt"], "warm_max_iter": 20}


@pytest.fixture(scope="module")
def data():
    skew = np.array([0.3, 0.2, 0.1, 0.1, 0.15, 0.15])
    region_train = make_split(150, 3, skew)
    # validated on rows like its training rows, so that trees are surely added
    return {"train": make_split(400, 0), "valid": make_split(200, 1),
            "test": make_split(300, 2), "region_train": region_train,
            "region_valid": {**region_train,
                             "impression_id": region_train["impression_id"] + "-v"},
            "region_test": make_split(100, 5, skew)}


def _global(data, serve: bool):
    model = get_model("gbdt")(make_encoders(), HPARAMS["gbdt"], FAST)
    if serve:
        model.serve_as_start()
    model.fit(data["train"], data["valid"], uniform_priors())
    return model


def _rows(*parts: dict) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class Walks:
    """Counts the tree walks (``predict_binned`` calls) of HGB's predictors."""

    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor

        real = TreePredictor.predict_binned

        def counted(tree, *args, **kwargs):
            self.calls += 1
            return real(tree, *args, **kwargs)
        monkeypatch.setattr(TreePredictor, "predict_binned", counted)


def test_regional_scores_from_the_start_are_the_full_walk_bit_for_bit(data, monkeypatch):
    start = _global(data, serve=True)
    # the start scores the region's rows as the train step does: calibration (in fit), then
    # its predictions of the scored days
    start.predict_proba(_rows(data["region_valid"], data["region_test"]))
    # its calibration's 200 validation rows, then the region's 150 + 100 rows scored above
    assert (start.own_scores.rows, start.own_scores.skipped) == (200 + 150 + 100, 0)
    walks = Walks(monkeypatch)
    served = get_model("gbdt")(make_encoders(), WARM, FAST)
    served.fit(data["region_train"], data["region_valid"], uniform_priors(), start=start)
    added = served.clf.n_iter_ - start.clf.n_iter_
    assert added > 0 and served.start_iterations == start.clf.n_iter_
    p_served = served.predict_proba(data["region_test"])
    calls_served = walks.calls

    plain_start = _global(data, serve=False)  # no kept scores: every tree walked
    assert plain_start.own_scores is None
    walks.calls = 0
    walked = get_model("gbdt")(make_encoders(), WARM, FAST)
    walked.fit(data["region_train"], data["region_valid"], uniform_priors(), start=plain_start)
    p_walked = walked.predict_proba(data["region_test"])
    assert walked.clf.n_iter_ == served.clf.n_iter_
    for t in p_walked:
        np.testing.assert_array_equal(p_served[t], p_walked[t])
    assert served.temperature == walked.temperature
    np.testing.assert_array_equal(served.clf.validation_score_, walked.clf.validation_score_)
    # the start's trees were walked on the region's training rows only (HGB's warm start)
    assert calls_served < walks.calls
    assert walks.calls - calls_served >= 3 * start.clf.n_iter_ * start.clf.n_trees_per_iteration_


def test_rows_the_start_did_not_score_walk_every_tree(data):
    start = _global(data, serve=True)
    model = get_model("gbdt")(make_encoders(), WARM, FAST)
    model.fit(data["region_train"], data["region_valid"], uniform_priors(), start=start)
    unseen = make_split(50, 9)
    assert start.own_scores.lookup(unseen["impression_id"]) is None
    full = hgb.predict_binned_proba(
        model.clf, hgb.to_matrix(unseen, model.category_maps), 1)
    got = model._predict_raw(unseen)["age_gender"]
    np.testing.assert_allclose(np.exp(got)[:, model.clf.classes_], full, rtol=0, atol=1e-12)


def test_start_scores_keep_whole_blocks_up_to_the_cap():
    scores = StartScores(max_rows=5)
    assert scores.lookup(np.array(["a"])) is None  # nothing kept
    scores.add(np.array(["a", "b", "c"], dtype=object), np.arange(6.0).reshape(3, 2))
    scores.add(np.array(["d", "e", "f"], dtype=object), np.ones((3, 2)))  # would pass the cap
    assert (scores.rows, scores.skipped) == (3, 3)
    np.testing.assert_array_equal(scores.lookup(np.array(["c", "a", "c"])),
                                  [[4.0, 5.0], [0.0, 1.0], [4.0, 5.0]])
    assert scores.lookup(np.array(["a", "d"])) is None  # one id not kept: the whole block walks
    scores.add(np.array(["g"]), np.full((1, 2), 7.0))  # after a lookup, still kept
    np.testing.assert_array_equal(scores.lookup(np.array(["g", "b"])), [[7.0, 7.0], [2.0, 3.0]])


def test_raw_binned_needs_the_start_scores_to_skip_trees(data):
    model = _global(data, serve=False)
    X = hgb.to_matrix(data["test"], model.category_maps)
    with pytest.raises(ValueError, match="need the start's raw scores"):
        hgb.raw_binned(model.clf, X, 1, first=2)
    with pytest.raises(ValueError, match="start scores of shape"):
        hgb.raw_binned(model.clf, X, 1, first=2, start_raw=np.zeros((3, 1)))


def test_the_warm_fit_stops_on_its_own_patience(data):
    # the global fit's early stopping waits n_iter_no_change rounds, a regional warm fit
    # (a smaller, noisier validation day) warm_n_iter_no_change
    start = get_model("gbdt")(make_encoders(), {**HPARAMS["gbdt"], "n_iter_no_change": 3}, FAST)
    start.fit(data["train"], data["valid"], uniform_priors())
    assert start.clf.n_iter_no_change == 3
    model = get_model("gbdt")(make_encoders(), {**WARM, "warm_n_iter_no_change": 7}, FAST)
    model.fit(data["region_train"], data["region_valid"], uniform_priors(), start=start)
    assert model.clf.n_iter_no_change == 7


def test_a_regional_gbdt_that_adds_no_tree_scores_as_its_start(data):
    """No tree added (``warm_max_iter`` 0) on validation rows with user groups: the kept
    start's scale is noise-tested (``start_temp``), and the candidate predicts as its start."""
    from pythia.features import USER_GROUP

    start = _global(data, serve=False)
    rng = np.random.default_rng(11)
    valid = {**data["region_valid"],
             USER_GROUP: rng.integers(0, 60, len(data["region_valid"]["impression_id"]))}
    kept = get_model("gbdt")(make_encoders(), {**WARM, "warm_max_iter": 0}, FAST)
    kept.fit(data["region_train"], valid, uniform_priors(), start=start)
    assert kept.kept_start and kept.clf.n_iter_ == start.clf.n_iter_
    assert kept.temperature["age_gender"] == start.temperature["age_gender"]
    if start.activity_temperature is not None:
        assert kept.activity_temperature.temperature == start.activity_temperature.temperature
    p_kept, p_start = kept.predict_proba(data["region_test"]), start.predict_proba(
        data["region_test"])
    for t in p_start:
        np.testing.assert_array_equal(p_kept[t], p_start[t])
