"""Out-of-fold calibration of the validation predictions (models/crossfit.py): each validation
row of a region with enough user groups is scored under temperatures fitted without its fold
of users, so changing a fold's labels changes every other fold's predictions and never its
own; every candidate scores a region the same way (out of fold from ``MIN_REGION_GROUPS`` user
groups, else in-sample); the folds keep the shipped wide-only cut; rows without a user group
are scored as shipped; the train step's predictions file carries the out-of-fold rows; the
shipped temperatures are untouched."""
from __future__ import annotations

import copy

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
    model.fold_regions = ("EU",)  # the train step's: EU's rows are scored out of fold
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
    before = crossfit.predict_validation(model, valid, "EU")["age_gender"]
    kept = model.fold_calibration
    try:
        model.fold_calibration = crossfit.fold_calibrations(model, raw, shuffled)
        after = crossfit.predict_validation(model, valid, "EU")["age_gender"]
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
    oof = crossfit.predict_validation(model, valid, "EU")
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
    got = crossfit.predict_validation(model, {**valid, USER_GROUP: unknown}, "EU")["age_gender"]
    np.testing.assert_array_equal(got[:100], shipped[:100])
    assert np.abs(got[100:] - shipped[100:]).max() > 1e-4
    no_key = {k: v for k, v in valid.items() if k != USER_GROUP}
    np.testing.assert_array_equal(
        crossfit.predict_validation(model, no_key, "EU")["age_gender"], shipped)
    # a region the model does not score out of fold: every row as shipped
    np.testing.assert_array_equal(
        crossfit.predict_validation(model, valid, "NA")["age_gender"], shipped)
    raw, y = model._raw_and_labels(valid)
    assert crossfit.fold_calibrations(model, raw, {k: v for k, v in y.items()
                                                   if k != at.GROUPS}) is None
    kept = model.fold_regions
    try:
        model.fold_regions = ()
        assert crossfit.fold_calibrations(model, raw, y) is None
    finally:
        model.fold_regions = kept
    np.testing.assert_array_equal(crossfit.fold_of([-1, 0, 7, 1024]), [-1, 0, 2, 4])


def test_the_train_steps_validation_predictions_are_out_of_fold(fitted, monkeypatch):
    """EU (a fold region) is written out of fold; NA, scored by the same global model but
    not a fold region, in-sample; the test day as shipped."""
    from pythia import tfrecords
    from pythia.models.predictions import prediction_blocks

    model, valid = fitted
    n = len(valid["y_age_gender"])
    manifest = {"splits": {s: {"rows": 2 * n, "rows_by_region": {"EU": n, "NA": n}}
                           for s in ("validation", "test_natural")}}

    def iter_numpy(man, split, regions=None, chunk_rows=None):
        for start in range(0, n, 1000):
            yield {k: v[start:start + 1000] for k, v in valid.items()}

    monkeypatch.setattr(tfrecords, "iter_numpy", iter_numpy)
    counts = {}
    blocks = list(prediction_blocks(model, manifest, "global", ["validation", "test_natural"],
                                    counts))
    table = pa.concat_tables(blocks).to_pandas()

    def got(split, region):
        rows = table[(table["split"] == split) & (table["region"] == region)]
        return np.stack(rows["p_age_gender"].to_numpy())

    shipped = model.predict_proba(valid)["age_gender"]
    np.testing.assert_allclose(got("validation", "EU"),
                               crossfit.predict_validation(model, valid, "EU")["age_gender"],
                               rtol=0, atol=1e-6)
    assert np.abs(got("validation", "EU") - shipped).max() > 1e-4
    for split, region in (("validation", "NA"), ("test_natural", "EU"),
                          ("test_natural", "NA")):
        np.testing.assert_allclose(got(split, region), shipped, rtol=0, atol=1e-6)
    assert counts == {"validation": 2 * n, "test_natural": 2 * n}


def test_a_region_is_scored_out_of_fold_from_enough_user_groups_by_every_candidate(
        monkeypatch):
    """The run's rule reads each region's validation user groups: EU has exactly
    ``MIN_REGION_GROUPS`` (unknown groups not counted), NA one fewer; the global candidate
    scores every fold region out of fold, a regional one only its own."""
    from pythia import tfrecords

    need = crossfit.MIN_REGION_GROUPS
    groups = {"EU": np.r_[np.arange(need), -np.ones(50, np.int64), np.arange(need)],
              "NA": np.r_[np.arange(need - 1), -np.ones(500, np.int64)],
              "LATAM": np.arange(5 * need)}

    def iter_numpy(man, split, regions=None, chunk_rows=None):
        assert split == "validation" and len(regions) == 1
        g = groups[regions[0]]
        for start in range(0, len(g), 60):  # the groups of several chunks add up
            yield {USER_GROUP: g[start:start + 60]}

    monkeypatch.setattr(tfrecords, "iter_numpy", iter_numpy)
    manifest = {"splits": {"validation": {"rows_by_region": {
        "EU": len(groups["EU"]), "NA": len(groups["NA"]), "LATAM": len(groups["LATAM"]),
        "APAC": 0}}}}
    regions = crossfit.fold_regions(manifest)
    assert regions == ("EU", "LATAM")
    assert crossfit.candidate_fold_regions("global", regions) == ("EU", "LATAM")
    assert crossfit.candidate_fold_regions("EU", regions) == ("EU",)
    assert crossfit.candidate_fold_regions("NA", regions) == ()
    assert crossfit.fold_regions({"splits": {}}) == ()


def test_the_card_states_the_rules_number_of_user_groups():
    from pythia.evaluate import card

    assert f"{crossfit.MIN_REGION_GROUPS} user groups" in " ".join(card.INTRO.split())


def _deep_model(enc, shipped_cut=None):
    """A stand-in wide & deep model for the cut: AgeGender only, bins by activity."""
    from types import SimpleNamespace

    return SimpleNamespace(
        heads=("age_gender",), temperature={"age_gender": 1.0}, link=lambda t: "softmax",
        bins_by_activity=True, encoders=enc, train_cfg=TrainConfig(), start=None,
        hparams={}, fold_regions=("EU",), activity_temperature=None)


def test_the_folds_keep_the_shipped_wide_only_cut():
    """The deep part sees the class on light users' rows and guesses on heavy users': each
    fold left free would score the heavy bins with the wide part alone; with the shipped
    model keeping the deep part everywhere (or cutting at 30+), every fold keeps that cut."""
    enc = activity_encoders()
    data = world(enc, 6000, 0)
    rng = np.random.default_rng(4)
    k = int(data["y_age_gender"].max()) + 1
    heavy = data["counts"] >= 30
    guess = np.where(heavy, rng.integers(0, k, len(heavy)), data["y_age_gender"])
    deep = 3.0 * np.eye(k)[guess]
    raw = {at.JOINT: deep + 0.1 * rng.normal(size=deep.shape), at.DEEP: deep}
    y = {"age_gender": data["y_age_gender"], at.FEATURE: data[at.FEATURE],
         at.GROUPS: rng.integers(0, 300, len(heavy))}
    model = _deep_model(enc)
    free = at.fit_for(model, raw, y, 1.0)
    assert free is not None and not all(free.deep)  # left free, the heavy bins go wide-only
    for cut, want in ((99, (True,) * 5), (None, None)):
        model.activity_temperature = (at.fit_for(model, raw, y, 1.0, cut=cut) if cut
                                      else free)
        shipped = model.activity_temperature.deep
        folds = crossfit.fold_calibrations(model, raw, y)
        assert len(folds) == crossfit.N_FOLDS
        assert all(bins.deep == shipped for _, bins in folds), (shipped, folds)
        assert want is None or shipped == want
    # the cut in a fold's own pools: the pool of the first wide-only bin
    assert crossfit.shipped_cut(free, y[at.FEATURE]) == free.pools[free.deep.index(False)]
    assert crossfit.shipped_cut(None, y[at.FEATURE]) is None
    assert crossfit.shipped_cut(free, None) is None


def test_a_warm_started_models_folds_start_from_its_starts_same_fold(fitted):
    """A regional model's bins are its start's times one scale; its fold f starts from the
    start's bins fitted without fold f (the start's full fit saw fold f's labels), and a
    start without folds is refused (the region's candidates would be scored two ways)."""
    from pythia.models import get_model

    start, _ = fitted
    enc = activity_encoders()
    train = world(enc, 2000, 5)
    valid = _with_groups(world(enc, 1500, 6), 200, 8)
    regional = get_model("logreg")(enc, {}, TrainConfig())
    regional.fold_regions = ("EU",)
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
        again.fold_regions = ("EU",)
        with pytest.raises(ValueError, match="start's fold calibrations"):
            again.fit(train, valid, priors_of(train, enc), start=start)
    finally:
        start.fold_calibration = kept


def test_a_regional_candidate_that_keeps_its_start_scores_exactly_as_its_start(fitted):
    """A regional fit that keeps its start (here: no L-BFGS iteration) on rows of the start's
    own world: the scale its rows fit is noise (``start_temp.START_SCALE_Z``), so the
    candidate ships its start's bins and scores every row as the start does, in its shipped
    predictions and in every out-of-fold calibration."""
    from pythia.models import get_model

    start, _ = fitted
    enc = activity_encoders()
    train, valid = world(enc, 2000, 5), _with_groups(world(enc, 1500, 6), 200, 8)
    regional = get_model("logreg")(enc, {"warm_max_iter": 0}, TrainConfig())
    regional.fold_regions = ("EU",)
    regional.fit(train, valid, priors_of(train, enc), start=start)
    bins = regional.activity_temperature
    assert bins.start_scale == 1.0 and bins.fitted_scale != 1.0, bins
    assert bins.temperature == start.activity_temperature.temperature
    rows = world(enc, 500, 9)
    mine, theirs = regional.predict_proba(rows), start.predict_proba(rows)
    for target in mine:
        np.testing.assert_array_equal(mine[target], theirs[target])
    for (_, fold), (_, start_fold) in zip(regional.fold_calibration, start.fold_calibration):
        assert fold.temperature == start_fold.temperature, (fold, start_fold)


def test_only_a_kept_start_noise_tests_its_scale(fitted):
    """``fit_for`` tests the scale of a model that kept its start; a network that moved
    (``kept_start`` False) refits its scale, untested, as early stopping's score does."""
    start, valid = fitted
    enc = activity_encoders()
    rows = _with_groups(world(enc, 1500, 6), 200, 8)
    model = copy.copy(start)
    model.start = start
    raw, y = model._raw_and_labels(rows)
    model.kept_start = True
    kept = at.fit_for(model, raw, y, 1.0)
    assert kept.start_scale == 1.0 and kept.fitted_scale not in (None, 1.0)
    model.kept_start = False
    moved = at.fit_for(model, raw, y, 1.0)
    assert moved.start_scale == kept.fitted_scale and moved.fitted_scale is None
    model.kept_start = True
    assert at.fit_for(model, raw, y, 1.0, noise_test=False) == moved


def test_a_kept_start_with_one_temperature_keeps_its_starts_unless_beaten_beyond_noise():
    """``activity_bins = []``: a regional fit that kept its start keeps its start's AgeGender
    temperature (in each fold: the start's fold's), and so scores every row as its start;
    a refitted temperature that beats the start's beyond noise ships."""
    from pythia.models import get_model, start_temp

    enc, cfg = activity_encoders(), TrainConfig(activity_bins=())
    train = world(enc, 6000, 0)
    start = get_model("logreg")(enc, {}, cfg)
    start.fold_regions = ("EU",)
    start.fit(train, _with_groups(world(enc, 3000, 1), 200, 7), priors_of(train, enc))
    regional = get_model("logreg")(enc, {"warm_max_iter": 0}, cfg)
    regional.fold_regions = ("EU",)
    regional.fit(world(enc, 2000, 5), _with_groups(world(enc, 1500, 6), 200, 8),
                 priors_of(train, enc), start=start)
    assert regional.activity_temperature is None and regional.kept_start
    assert regional.temperature["age_gender"] == start.temperature["age_gender"]
    rows = world(enc, 500, 9)
    np.testing.assert_array_equal(regional.predict_proba(rows)["age_gender"],
                                  start.predict_proba(rows)["age_gender"])
    for (mine, _), (theirs, _) in zip(regional.fold_calibration, start.fold_calibration):
        assert mine["age_gender"] == theirs["age_gender"]
    # logits three times too hot on these rows: the refit beats the start's beyond noise
    model = copy.copy(regional)
    model.start = start
    valid = _with_groups(world(enc, 1500, 6), 200, 8)
    raw, y = model._raw_and_labels(valid)
    hot = {**raw, "age_gender": raw["age_gender"] * 3 * start.temperature["age_gender"]}
    refit = start_temp.fit_temperatures(model, hot, y)
    assert abs(refit["age_gender"] / start.temperature["age_gender"] - 3) < 0.5
    model.kept_start = False  # a network that moved: the refit, untested
    assert start_temp.fit_temperatures(model, raw, y)["age_gender"] != start.temperature[
        "age_gender"]


def test_a_kept_start_without_bins_has_none_either(fitted):
    """A start whose bins gained nothing (``activity_temperature`` None) under a bins config:
    the regional fit that kept it fits no pools of its own and scores as its start."""
    from pythia.models import get_model

    start = copy.copy(fitted[0])
    start.activity_temperature, start.fold_calibration = None, None
    enc = activity_encoders()
    train = world(enc, 2000, 5)
    regional = get_model("logreg")(enc, {"warm_max_iter": 0}, TrainConfig())
    regional.fit(train, _with_groups(world(enc, 1500, 6), 200, 8), priors_of(train, enc),
                 start=start)
    assert regional.kept_start and regional.activity_temperature is None
    rows = world(enc, 500, 9)
    np.testing.assert_array_equal(regional.predict_proba(rows)["age_gender"],
                                  start.predict_proba(rows)["age_gender"])
