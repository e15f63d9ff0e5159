"""``mlp_blind``: the MLP trained blind to some categorical features (``models.mlp_blind``).

The fixture's rows carry AgeGender in ``site_or_app`` (``test_models.make_split``), so a fit
blind to it must lose what the sighted MLP learns there, and its saved network must answer
the same whatever id a row carries: through ``predict_proba``, the export every bid-time
scorer reads, a save and load, and a regional fit started from it.
"""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from pythia import features
from pythia.features import MISSING_ID
from pythia.models import get_model, load_model
from pythia.models.mlp_blind import BLIND_KEY, blind_features, mask_split
from test_models import (FAST, HPARAMS, N_AGE, VOCAB, data,  # noqa: F401 (the fixture)
                         make_encoders, make_split, uniform_priors)

BLIND = {**HPARAMS["mlp"], BLIND_KEY: ["site_or_app"]}


@pytest.fixture(scope="module")
def pair(data):
    """The sighted MLP and its blind twin, fitted on the same rows with the same seed."""
    out = {}
    for name, hparams in (("mlp", HPARAMS["mlp"]), ("mlp_blind", BLIND)):
        model = get_model(name)(make_encoders(), hparams, FAST)
        model.fit_summary = model.fit(data["train"], data["valid"], uniform_priors())
        out[name] = model
    return out


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))


def _scrambled(X: dict, name: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    out = dict(X)
    out[name] = rng.integers(0, VOCAB + features.FIRST_VALUE_ID, len(X[name]))
    return out


def test_the_blind_twin_does_not_learn_the_feature(pair, data):
    y = data["test"]["y_age_gender"]
    sighted = _log_loss(pair["mlp"].predict_proba(data["test"])["age_gender"], y)
    blind = _log_loss(pair["mlp_blind"].predict_proba(data["test"])["age_gender"], y)
    # site_or_app names the class on 70% of the rows: only the sighted fit can read it
    assert sighted < blind - 0.3, (sighted, blind)
    assert pair["mlp_blind"].hparams[BLIND_KEY] == ["site_or_app"]


def test_every_id_gets_the_same_answer(pair, data):
    model = pair["mlp_blind"]
    masked = {**data["test"], "site_or_app": np.full(300, MISSING_ID)}
    want = model.predict_proba(masked)
    for seed in (0, 1):
        got = model.predict_proba(_scrambled(data["test"], "site_or_app", seed))
        for t in features.TARGETS:
            np.testing.assert_array_equal(got[t], want[t])
    # the sighted twin does answer differently: the check can fail
    sighted = pair["mlp"]
    assert not np.allclose(sighted.predict_proba(masked)["age_gender"],
                           sighted.predict_proba(data["test"])["age_gender"])


def test_the_export_every_scorer_reads_is_blind(pair):
    export = pair["mlp_blind"].export_numpy()
    assert export["kind"] == "mlp_blind"
    tables = [dict(export["embeddings"])["site_or_app"]] + [
        dict(export["wide"][t])["site_or_app"] for t in features.TARGETS]
    for table in tables:
        np.testing.assert_array_equal(table, np.broadcast_to(table[MISSING_ID], table.shape))
    other = dict(pair["mlp_blind"].export_numpy()["embeddings"])["device_type"]
    assert not np.allclose(other, other[MISSING_ID])  # the other features are seen


def test_a_saved_blind_twin_reloads_blind(pair, data, tmp_path):
    pair["mlp_blind"].save(str(tmp_path / "m"))
    again = load_model(str(tmp_path / "m"))
    assert type(again).name == "mlp_blind" and again.hparams[BLIND_KEY] == ["site_or_app"]
    X = _scrambled(data["test"], "site_or_app", 3)
    np.testing.assert_array_equal(again.predict_proba(X)["age_gender"],
                                  pair["mlp_blind"].predict_proba(data["test"])["age_gender"])


def test_a_regional_fit_from_a_blind_start_stays_blind(pair):
    skew = np.array([0.3, 0.2, 0.1, 0.1, 0.15, 0.15])
    train, valid = make_split(150, 3, skew), make_split(120, 4, skew)
    regional = get_model("mlp_blind")(make_encoders(), {**BLIND, "warm_epochs": 3}, FAST)
    regional.fit(train, valid, uniform_priors(), start=pair["mlp_blind"])
    test = make_split(100, 5)
    a = regional.predict_proba(test)["age_gender"]
    b = regional.predict_proba(_scrambled(test, "site_or_app", 4))["age_gender"]
    np.testing.assert_array_equal(a, b)
    assert a.shape == (100, 2 * N_AGE)


def test_masking_leaves_the_input_alone_and_reaches_tf_data():
    X = make_split(8, 0)
    before = X["site_or_app"].copy()
    out = mask_split(X, ("site_or_app",))
    assert (out["site_or_app"] == MISSING_ID).all() and (X["site_or_app"] == before).all()
    assert out["device_type"] is X["device_type"]
    ds = tf.data.Dataset.from_tensor_slices(
        ({"site_or_app": before, "device_type": X["device_type"]}, {"age_gender": before})
    ).batch(4)
    batches = list(mask_split(ds, ("site_or_app",)).as_numpy_iterator())
    assert all((x["site_or_app"] == MISSING_ID).all() for x, _ in batches)
    np.testing.assert_array_equal(np.concatenate([x["device_type"] for x, _ in batches]),
                                  X["device_type"])
    np.testing.assert_array_equal(np.concatenate([y["age_gender"] for _, y in batches]), before)
    with pytest.raises(TypeError, match="cannot mask list"):
        mask_split([1, 2], ("site_or_app",))


@pytest.mark.parametrize("names, match", [
    (["hour_sin"], "'hour_sin', not a categorical feature"),
    (["no_such"], "'no_such', not a categorical feature"),
    (["site_or_app", "site_or_app"], "names a feature twice"),
])
def test_a_feature_it_cannot_be_blind_to_is_named(names, match):
    with pytest.raises(ValueError, match=match):
        blind_features({BLIND_KEY: names})
    assert blind_features({}) == () and blind_features({BLIND_KEY: "os"}) == ("os",)


def test_the_config_is_checked_before_the_etl_and_an_empty_list_refused():
    from pythia.models import check_model_hparams

    check_model_hparams({"mlp_blind": {BLIND_KEY: ["os", "browser"]}})
    with pytest.raises(ValueError, match=r"config \[models.mlp_blind\]: mlp_blind blind_to "
                                         r"names 'user_impressions_today', not a categorical"):
        check_model_hparams({"mlp_blind": {BLIND_KEY: ["user_impressions_today"]}})
    with pytest.raises(ValueError, match="blind_to is empty: name the categorical"):
        check_model_hparams({"mlp_blind": {BLIND_KEY: []}})
    with pytest.raises(ValueError, match="'hour_cos', not a categorical"):
        get_model("mlp_blind")(make_encoders(), {BLIND_KEY: ["hour_cos"]})


def test_the_default_is_the_regional_make():
    model = get_model("mlp_blind")(make_encoders())
    assert model.hparams[BLIND_KEY] == ["region_device_make"]
    assert get_model("mlp_blind").sighted == "mlp"


def test_its_fit_speaks_under_its_own_name(data):
    """The train line of a candidate shows what its fit said (``notes``, by model name)."""
    from pythia.config import TrainConfig
    from pythia.models import notes

    notes.take("mlp_blind")  # nothing left over
    model = get_model("mlp_blind")(make_encoders(), BLIND, TrainConfig(max_epochs=1,
                                                                       batch_size=64))
    model.fit(data["train"], data["valid"], uniform_priors())
    said = " ".join(notes.take("mlp_blind"))
    assert "AgeGender's epoch scores" in said  # said as "mlp", it would be lost here


def test_what_the_fit_reports_is_what_the_sealed_network_scores(pair, data):
    """Validation's log-loss in the fit's summary (early stopping, the temperatures, the
    champion rule's figure) is the sealed network's: the fit never saw the feature."""
    model, valid = pair["mlp_blind"], data["valid"]
    for t, col in (("age_gender", "y_age_gender"), ("gender", "y_gender")):
        got = _log_loss(model.predict_proba(valid)[t], valid[col])
        assert got == pytest.approx(model.fit_summary["val_logloss"][t], abs=1e-5), t


def test_the_twin_trains_with_the_mlps_knobs_and_searched_configs():
    """``[models.mlp]`` knobs and ``--search`` configs reach the twin too: the pairs of
    ``blind_twins`` differ by the blind features alone."""
    from pythia.models import BLIND_TWINS, train_grid

    assert BLIND_TWINS == {"mlp_blind": get_model("mlp_blind").sighted}
    tf_manifest = {"splits": {s: {"rows": 10, "rows_by_region": {"NA": 10}}
                              for s in ("train", "validation")}}
    knobs = {"mlp": {"hidden_units": [32], "dropout": 0.2},
             "mlp_blind": {"dropout": 0.3, BLIND_KEY: ["os"]}}
    grid = train_grid(["mlp", "mlp_blind"], ["global"], tf_manifest, search=2, seed=5,
                      model_hparams=knobs)
    by = {(g["model"], g["config_id"]): g["hparams"] for g in grid}
    for k in range(3):
        mlp, blind = by[("mlp", k)], by[("mlp_blind", k)]
        assert {**mlp, "dropout": blind["dropout"], BLIND_KEY: ["os"]} == blind, k
        if k == 0:  # the defaults: the MLP's knobs, the twin's own dropout over them
            assert blind == {"hidden_units": [32], "dropout": 0.3, BLIND_KEY: ["os"]}
    assert by[("mlp_blind", 1)] != by[("mlp_blind", 0)] != by[("mlp_blind", 2)]  # searched


def test_a_streamed_fit_is_blind_too(data):
    """Over ``max_train_rows`` the MLP streams tf.data splits: the masking reaches them (what
    the fit reports on validation is the sealed network's) and the seal follows."""
    def ds(split, shuffle):
        x = {f: split[f] for f in features.FEATURE_NAMES}
        y = {t: split[c] for t, c in features.LABEL_COLUMNS.items()}
        d = tf.data.Dataset.from_tensor_slices((x, y))
        return (d.shuffle(1000, seed=0) if shuffle else d).batch(64)

    model = get_model("mlp_blind")(make_encoders(), BLIND, FAST)
    summary = model.fit(ds(data["train"], True), ds(data["valid"], False), uniform_priors())
    valid = data["valid"]
    got = _log_loss(model.predict_proba(valid)["age_gender"], valid["y_age_gender"])
    assert got == pytest.approx(summary["val_logloss"]["age_gender"], abs=1e-5)
    np.testing.assert_array_equal(
        model.predict_proba(_scrambled(data["test"], "site_or_app", 5))["age_gender"],
        model.predict_proba(data["test"])["age_gender"])
