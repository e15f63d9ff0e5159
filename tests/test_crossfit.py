"""Out-of-fold calibration of the validation predictions (models/crossfit.py): each validation
row is scored under temperatures fitted without its fold of users, so changing a fold's labels
changes every other fold's predictions and never its own; rows without a user group, and
models fitted without groups, are scored as shipped; the train step's predictions file
carries the out-of-fold rows; the shipped temperatures are untouched."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pythia.config import TrainConfig
from pythia.features import USER_GROUP
from pythia.models import activity_temp as at
from pythia.models import crossfit
from pythia.models.priors import mean_log_loss
from test_activity_temperature import activity_encoders, priors_of, world


def _with_groups(data, n_groups, seed):
    rng = np.random.default_rng(seed)
    return {**data, USER_GROUP: rng.integers(0, n_groups, len(data["y_age_gender"]))}


@pytest.fixture(scope="module")
def fitted():
    from pythia.models import get_model

    enc = activity_encoders()
    train = world(enc, 6000, 0)
    valid = _with_groups(world(enc, 3000, 1), 200, 7)
    valid["impression_id"] = np.array([f"v{i}" for i in range(3000)], dtype=object)
    model = get_model("logreg")(enc, {}, TrainConfig())
    model.fit(train, valid, priors_of(train, enc))
    return model, valid


def test_a_folds_labels_move_the_other_folds_and_never_its_own(fitted):
    model, valid = fitted
    assert len(model.fold_calibration) == crossfit.N_FOLDS
    raw, y = model._raw_and_labels(valid)
    fold = crossfit.fold_of(valid[USER_GROUP])
    shuffled = {k: v.copy() for k, v in y.items()}
    in0 = fold == 0
    shuffled["age_gender"][in0] = np.random.default_rng(3).permutation(y["age_gender"][in0])
    shuffled["gender"] = shuffled["age_gender"] // model.n_age
    shuffled["age"] = shuffled["age_gender"] % model.n_age
    before = crossfit.predict_validation(model, valid)["age_gender"]
    kept = model.fold_calibration
    try:
        model.fold_calibration = crossfit.fold_calibrations(model, raw, shuffled)
        after = crossfit.predict_validation(model, valid)["age_gender"]
    finally:
        model.fold_calibration = kept
    np.testing.assert_allclose(after[in0], before[in0], rtol=0, atol=1e-12)
    assert np.abs(after[fold == 1] - before[fold == 1]).max() > 1e-4
    # in-sample, the shuffled labels would have moved fold 0's own rows too
    shipped = model.predict_proba(valid)["age_gender"]
    assert np.abs(shipped[in0] - before[in0]).max() > 1e-4


def test_out_of_fold_scores_are_the_honest_ones_and_shipping_is_untouched(fitted):
    model, valid = fitted
    temps = dict(model.temperature)
    bins = model.activity_temperature
    oof = crossfit.predict_validation(model, valid)
    shipped = model.predict_proba(valid)
    assert model.temperature == temps and model.activity_temperature is bins
    y = valid["y_age_gender"]
    # the in-sample fit is the better fit of these rows: out of fold is the higher loss
    assert mean_log_loss(oof["age_gender"], y) > mean_log_loss(shipped["age_gender"], y)
    for t, p in oof.items():
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    # gender and age stay AgeGender's marginals
    p = oof["age_gender"].reshape(len(y), 2, model.n_age)
    np.testing.assert_allclose(oof["gender"], p.sum(axis=2), atol=1e-9)


def test_rows_without_a_group_and_models_without_folds_are_scored_as_shipped(fitted):
    model, valid = fitted
    shipped = model.predict_proba(valid)["age_gender"]
    unknown = valid[USER_GROUP].copy()
    unknown[:100] = -1
    got = crossfit.predict_validation(model, {**valid, USER_GROUP: unknown})["age_gender"]
    np.testing.assert_array_equal(got[:100], shipped[:100])
    assert np.abs(got[100:] - shipped[100:]).max() > 1e-4
    no_key = {k: v for k, v in valid.items() if k != USER_GROUP}
    np.testing.assert_array_equal(crossfit.predict_validation(model, no_key)["age_gender"],
                                  shipped)
    raw, y = model._raw_and_labels(valid)
    assert crossfit.fold_calibrations(model, raw, {k: v for k, v in y.items()
                                                   if k != at.GROUPS}) is None
    few = {**y, at.GROUPS: y[at.GROUPS] % (crossfit.MIN_GROUPS - 1)}
    assert crossfit.fold_calibrations(model, raw, few) is None
    np.testing.assert_array_equal(crossfit.fold_of([-1, 0, 7, 1024]), [-1, 0, 2, 4])


def test_the_train_steps_validation_predictions_are_out_of_fold(fitted, monkeypatch):
    from pythia import tfrecords
    from pythia.models.predictions import prediction_blocks

    model, valid = fitted
    n = len(valid["y_age_gender"])
    manifest = {"splits": {s: {"rows": n, "rows_by_region": {"EU": n}}
                           for s in ("validation", "test_natural")}}

    def iter_numpy(man, split, regions=None, chunk_rows=None):
        for start in range(0, n, 1000):
            yield {k: v[start:start + 1000] for k, v in valid.items()}

    monkeypatch.setattr(tfrecords, "iter_numpy", iter_numpy)
    counts = {}
    blocks = list(prediction_blocks(model, manifest, "EU", ["validation", "test_natural"],
                                    counts))
    table = pa.concat_tables(blocks).to_pandas()
    got = {s: np.stack(table[table["split"] == s]["p_age_gender"].to_numpy())
           for s in ("validation", "test_natural")}
    want_val = crossfit.predict_validation(model, valid)["age_gender"]
    np.testing.assert_allclose(got["validation"], want_val, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["test_natural"], model.predict_proba(valid)["age_gender"],
                               rtol=0, atol=1e-6)
    assert counts == {"validation": n, "test_natural": n}


def test_a_warm_started_models_folds_start_from_its_starts_same_fold(fitted):
    """A regional model's bins are its start's times one scale; its fold f starts from the
    start's bins fitted without fold f (the start's full fit saw fold f's labels), and a
    start without folds gives the regional model none."""
    from pythia.models import get_model

    start, _ = fitted
    enc = activity_encoders()
    train = world(enc, 2000, 5)
    valid = _with_groups(world(enc, 1500, 6), 200, 8)
    regional = get_model("logreg")(enc, {}, TrainConfig())
    regional.fit(train, valid, priors_of(train, enc), start=start)
    assert regional.activity_temperature.start_scale is not None
    for (_, mine), (_, theirs) in zip(regional.fold_calibration, start.fold_calibration):
        np.testing.assert_allclose(np.asarray(mine.temperature),
                                   mine.start_scale * np.asarray(theirs.temperature))
    # the start's shipped bins are back in place after the folds
    assert start.activity_temperature.start_scale is None
    kept = start.fold_calibration
    try:
        start.fold_calibration = None
        again = get_model("logreg")(enc, {}, TrainConfig())
        again.fit(train, valid, priors_of(train, enc), start=start)
        assert again.fold_calibration is None
    finally:
        start.fold_calibration = kept
