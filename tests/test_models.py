"""Unit and component tests of pythia.models: priors/EM/temperature math, CORN, the three models,
save/load, the NumPy export parity, the registry's invariants (every model answers for itself,
no model name outside pythia/models), the search helpers and the training stage entry points.

Tiny sizes throughout (a few hundred rows, one hidden layer of 8 units, a few epochs).
"""
from __future__ import annotations

import ast
import io
import math
import pathlib
import re
import sys
import types

import numpy as np
import pyarrow.parquet as pq
import pytest

import pythia
from pythia import features
from pythia.config import TrainConfig
from pythia.features import Encoders, NumericStats, Vocabulary
from pythia.models import MODEL_NAMES, MODELS, get_model, load_model
from pythia.models import export as ex
from pythia.models import priors as pr
from pythia.models.links import corn_probabilities
from pythia.models.mlp_valid import shipped_val_losses
from pythia.models.search import best_config, sample_configs

REPO = pathlib.Path(__file__).resolve().parents[1]
EDGES = (18, 35, 55)  # 3 age buckets -> 6 AgeGender classes: learnable from few rows
N_AGE = len(EDGES)
N_CLASSES = {"gender": 2, "age": N_AGE, "age_gender": 2 * N_AGE}
VOCAB = 8  # values per categorical -> table size 10 (ids 0 missing, 1 OOV, 2..9)
FAST = TrainConfig(max_epochs=6, batch_size=64, patience=2, seed=0)
HPARAMS = {
    "mlp": {"hidden_units": [8], "dropout": 0.0, "learning_rate": 0.02},
    "tabnet": {"n_d": 8, "n_a": 8, "n_steps": 2, "batch_size": 256, "virtual_batch_size": 64,
               "learning_rate": 0.05, "num_threads": 1},
    "gbdt": {"max_iter": 40, "n_threads": 1},
    "logreg": {},
    "class_prior": {},
}
HPARAMS["mlp_blind"] = dict(HPARAMS["mlp"])  # the MLP blind to region_device_make
LEARNERS = ["mlp", "tabnet", "gbdt", "logreg"]  # every model but the constant prior
HPARAMS_LOGREG_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # logreg's default c_grid


def _said(model):
    """What ``model``'s fits said about themselves (``models.notes``) since the last call."""
    from pythia.models import notes
    return " ".join(notes.take(model))


def make_encoders() -> Encoders:
    return Encoders({f: Vocabulary([f"v{i}" for i in range(VOCAB)])
                     for f in features.CATEGORICAL_FEATURES},
                    {f: NumericStats(0.0, 1.0) for f in features.NUMERIC_FEATURES}, EDGES)


REGIONAL = [f.name for f in features.REGIONAL_FEATURES]


def make_split(n: int, seed: int, ag_prior: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Rows whose AgeGender shows in site_or_app, gender in device_type, age in hour_sin."""
    rng = np.random.default_rng(seed)
    k = 2 * N_AGE
    ag = rng.choice(k, size=n, p=ag_prior if ag_prior is not None else np.full(k, 1 / k))
    g, a = ag // N_AGE, ag % N_AGE
    size = VOCAB + features.FIRST_VALUE_ID
    # the regional features missing (no device make): the other columns are drawn as before
    # they existed, and the small fits below see no more noise than they were tuned on
    X: dict[str, np.ndarray] = {f: rng.integers(0, size, n) for f in features.CATEGORICAL_FEATURES
                                if f not in REGIONAL}
    X.update({f: np.full(n, features.MISSING_ID) for f in REGIONAL})
    X["site_or_app"] = np.where(rng.random(n) < 0.3, rng.integers(2, size, n), 2 + ag)
    X["device_type"] = np.where(rng.random(n) < 0.2, 2 + rng.integers(0, 2, n), 2 + g)
    X["hour_sin"] = (a - 1 + rng.normal(0, 0.7, n)).astype(np.float32)
    X["hour_cos"] = rng.normal(0, 1, n).astype(np.float32)
    X[features.USER_IMPRESSIONS_TODAY] = np.zeros(n, np.float32)  # the counter: unknown
    X["y_gender"], X["y_age"], X["y_age_gender"] = g, a, ag
    X["impression_id"] = np.array([f"s{seed}-{i}" for i in range(n)], dtype=object)
    return X


def labels(data) -> dict[str, np.ndarray]:
    return {t: data[c] for t, c in features.LABEL_COLUMNS.items()}


def uniform_priors() -> dict:
    p = {t: [1 / k] * k for t, k in N_CLASSES.items()}
    return {"train": p, "natural": p}


@pytest.fixture(scope="module")
def data():
    return {"train": make_split(600, 0), "valid": make_split(300, 1), "test": make_split(300, 2)}


@pytest.fixture(scope="module")
def fitted(data):
    """One fitted model per registered kind (module-scoped: fitting is the slow part)."""
    out = {}
    for name in MODELS:
        model = MODELS[name](make_encoders(), HPARAMS[name], FAST)
        out[name] = (model, model.fit(data["train"], data["valid"], uniform_priors()))
    return out


# ------------------------------------------------------------------ priors, EM, temperature

def test_prior_correction_hand_computed():
    p = np.array([[0.5, 0.5], [0.2, 0.8]])
    out = pr.apply_prior_ratio(p, pr.prior_ratio([0.5, 0.5], [0.8, 0.2]))
    # row 1: 0.5*1.6 : 0.5*0.4 = 0.8 : 0.2; row 2: 0.2*1.6 : 0.8*0.4 = 0.32 : 0.32
    np.testing.assert_allclose(out, [[0.8, 0.2], [0.5, 0.5]])
    same = pr.correct_priors(p, "none", [0.5, 0.5], [0.8, 0.2])
    np.testing.assert_allclose(same, p)


def test_check_priors_rejects_bad_input():
    good = uniform_priors()
    assert pr.check_priors(good, N_CLASSES)["train"]["gender"] == [0.5, 0.5]
    with pytest.raises(ValueError, match="natural"):
        pr.check_priors({"train": good["train"]}, N_CLASSES)
    bad = {"train": {**good["train"], "age": [0.5, 0.5]}, "natural": good["natural"]}
    with pytest.raises(ValueError, match="'age'.*2 classes, expected 3"):
        pr.check_priors(bad, N_CLASSES)
    neg = {"train": good["train"], "natural": {**good["natural"], "gender": [1.5, -0.5]}}
    with pytest.raises(ValueError, match="gender"):
        pr.check_priors(neg, N_CLASSES)
    with pytest.raises(ValueError, match="correction"):
        pr.correct_priors(np.ones((2, 2)) / 2, "magic", [0.5, 0.5], [0.5, 0.5])


def test_priors_from_split_manifest():
    natural = {"age_gender": [0.3, 0.1, 0.1, 0.2, 0.2, 0.1], "gender": [0.5, 0.5],
               "age": [0.5, 0.3, 0.2]}
    man = {"natural_priors": natural, "resample_target": "age_gender",
           "class_counts_after": {"train": {str(c): 10 for c in range(6)}}}
    got = pr.priors_from_split_manifest(man, EDGES)
    assert got["natural"] == natural
    np.testing.assert_allclose(got["train"]["age_gender"], [1 / 6] * 6)
    np.testing.assert_allclose(got["train"]["gender"], [0.5, 0.5])
    # gender-balanced resampling: keep-rates per gender reweight the natural joint
    man = {"natural_priors": {**natural, "gender": [0.5, 0.5]}, "resample_target": "gender",
           "rates": {"train": {"0": 1.0, "1": 0.5}}}
    got = pr.priors_from_split_manifest(man, EDGES)
    np.testing.assert_allclose(got["train"]["age_gender"],
                               np.array([0.3, 0.1, 0.1, 0.1, 0.1, 0.05]) / 0.75)
    with pytest.raises(ValueError, match="natural_priors"):
        pr.priors_from_split_manifest({"rates": {}}, EDGES)


def test_em_recovers_a_known_prior_shift():
    rng = np.random.default_rng(7)
    means, train_prior, test_prior = np.array([-2.0, 0.0, 2.0]), np.full(3, 1 / 3), \
        np.array([0.6, 0.3, 0.1])
    y = rng.choice(3, size=20_000, p=test_prior)
    x = rng.normal(means[y], 1.0)
    lik = np.exp(-0.5 * (x[:, None] - means[None, :]) ** 2)
    post_train = pr.normalize_rows(lik * train_prior)  # exact posteriors under training priors
    adjusted, est, iters = pr.em_prior_shift(post_train, train_prior)
    np.testing.assert_allclose(est, test_prior, atol=0.02)
    assert 1 < iters < 200
    np.testing.assert_allclose(adjusted.sum(axis=1), 1.0)
    # EM beats leaving the training prior in place on the shifted rows
    assert pr.mean_log_loss(adjusted, y) < pr.mean_log_loss(post_train, y)
    # per group, and a group too small for EM falls back to the fixed Bayes ratio
    groups = np.where(np.arange(len(y)) < 50, "tiny", "big")
    out = pr.correct_priors(post_train, "em", train_prior, train_prior, groups)
    np.testing.assert_allclose(out[:50], post_train[:50])
    assert not np.allclose(out[50:], post_train[50:])


def test_em_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="3 classes"):
        pr.em_prior_shift(np.full((4, 2), 0.5), [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="non-empty"):
        pr.em_prior_shift(np.zeros((0, 2)), [0.5, 0.5])


def test_temperature_fixes_overconfidence():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2000)
    true_logits = rng.normal(0, 1, (2000, 3))
    true_logits[np.arange(2000), y] += 1.0
    overconfident = 4.0 * true_logits  # same ranking, 4x too sharp
    t = pr.fit_temperature(overconfident, y)
    assert t > 2.0
    assert pr.mean_log_loss(pr.apply_temperature(overconfident, t), y) < \
        pr.mean_log_loss(pr.apply_temperature(overconfident, 1.0), y)
    with pytest.raises(ValueError, match="labels"):
        pr.fit_temperature(overconfident, y[:10])
    assert pr.fit_temperature(overconfident[:0], y[:0]) == 1.0
    # per row: the noise tests' differences, whose mean is the mean log-loss
    rows = pr.temperature_row_losses(overconfident, y, t)
    assert rows.shape == (2000,) and (rows > 0).all()
    assert np.isclose(rows.mean(), pr.mean_log_loss(pr.apply_temperature(overconfident, t), y))


# ------------------------------------------------------------------ CORN

def test_corn_probabilities_rank_consistent_and_normalised():
    rng = np.random.default_rng(3)
    logits = np.concatenate([rng.normal(0, 3, (200, 5)), [[50, -50, 50, -50, 50]],
                             [[-800, 800, 0, 0, 0]]])
    p = corn_probabilities(logits)
    assert p.shape == (202, 6) and np.all(p >= 0) and np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    exceed = 1.0 - np.cumsum(p, axis=1)[:, :-1]  # P(y > k)
    assert np.all(np.diff(exceed, axis=1) <= 1e-12)  # rank-consistent: non-increasing
    sig = 1 / (1 + np.exp(-logits[:200]))
    np.testing.assert_allclose(exceed[:200], np.cumprod(sig, axis=1), atol=1e-12)


def test_corn_loss_hand_computed():
    import keras

    from pythia.models.mlp import CornLoss

    logits = np.array([[0.3, -1.2], [2.0, 0.5], [-0.4, 0.1]], dtype=np.float32)
    y = np.array([1, 0, 2])

    def nls(z):  # -log sigmoid(z)
        return math.log1p(math.exp(-z))

    # y=1: task0 "y>0" true, task1 "y>1" false; y=0: task0 false only; y=2: both true
    expected = [nls(0.3) + nls(1.2), nls(-2.0), nls(-0.4) + nls(0.1)]
    loss = CornLoss(3, reduction=None)(y, logits)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        CornLoss(1)


# ------------------------------------------------------------------ models

@pytest.mark.parametrize("name", LEARNERS)
def test_model_beats_class_prior_and_sums_to_one(fitted, data, name):
    model, summary = fitted[name]
    assert summary["epochs"] >= 1 and summary["seconds"] > 0
    prior_loss = {t: math.log(k) for t, k in N_CLASSES.items()}  # validation is balanced
    assert summary["val_logloss"]["age_gender"] < prior_loss["age_gender"] - 0.05
    p = model.predict_proba(data["test"])
    y = labels(data["test"])
    for t, k in N_CLASSES.items():
        assert p[t].shape == (300, k) and np.all(np.isfinite(p[t]))
        np.testing.assert_allclose(p[t].sum(axis=1), 1.0, atol=1e-9)
        assert pr.mean_log_loss(p[t], y[t]) < prior_loss[t]
    if model.joint_only:  # gender/age are the marginals of the joint
        marg = features.marginals_from_joint(p["age_gender"], N_AGE)
        np.testing.assert_allclose(p["gender"], marg["gender"])


def test_class_prior_predicts_the_natural_class_frequencies(fitted, data):
    model, summary = fitted["class_prior"]
    assert summary["val_logloss"]["age_gender"] == pytest.approx(math.log(6), abs=0.02)
    natural = [0.4, 0.1, 0.1, 0.2, 0.1, 0.1]
    skewed = {"train": uniform_priors()["train"],
              "natural": {"age_gender": natural, "gender": [0.6, 0.4], "age": [0.6, 0.2, 0.2]}}
    again = MODELS["class_prior"](make_encoders(), {}, FAST)
    again.fit(data["train"], data["valid"], skewed)
    p = again.predict_proba(data["test"])["age_gender"]
    assert np.ptp(p, axis=0).max() == 0  # the same for every row
    # training rows are balanced, so the natural priors come out (up to sampling noise)
    np.testing.assert_allclose(p[0], natural, atol=0.03)
    with pytest.raises(ValueError, match="smoothing must be >= 0"):
        MODELS["class_prior"](make_encoders(), {"smoothing": -1}, FAST).fit(
            data["train"], data["valid"], uniform_priors())


def test_logreg_chooses_l2_on_validation_and_folds_rare_values(fitted, data, capsys):
    from pythia.models.logreg import fit_columns, path_rows

    _, summary = fitted["logreg"]
    path = summary["c_path"]
    assert summary["C"] == min(path, key=lambda s: s["val_loss"])["C"]
    assert summary["C"] in HPARAMS_LOGREG_GRID
    # a sampled path (every class kept) and the refit on all rows
    small = MODELS["logreg"](make_encoders(), {"path_rows": 200}, FAST)
    out = small.fit(data["train"], data["valid"], uniform_priors())
    assert "path on" in _said("logreg") and math.isfinite(out["best_val_loss"])
    y = np.array([0] * 990 + [1] * 10)
    idx = path_rows(y, 50, seed=0)
    assert set(y[idx]) == {0, 1} and len(idx) <= 52 and np.all(np.diff(idx) > 0)
    assert path_rows(y, 0, seed=0) is None and path_rows(y, 5000, seed=0) is None
    # min_count: values with fewer training rows share the OOV column
    train = {f: np.full(10, 2) for f in features.CATEGORICAL_FEATURES}
    train["os"] = np.array([2] * 8 + [3, 4])
    tables, n_cols = fit_columns(train, make_encoders(), min_count=2)
    assert tables["os"][3] == tables["os"][4] == tables["os"][features.OOV_ID]
    assert tables["os"][2] != tables["os"][features.OOV_ID]
    assert n_cols == 3 * len(features.CATEGORICAL_FEATURES)  # missing, OOV, one kept value


def test_logreg_per_feature_l2_shrinks_noise_features_on_validation(fitted, data, capsys):
    # only site_or_app and device_type carry the label among the categoricals (make_split)
    _, shared = fitted["logreg"]
    assert shared["feature_penalty"] == {}  # the baseline keeps one C for every column
    model = MODELS["logreg"](make_encoders(), {"per_feature_l2": True}, FAST)
    out = model.fit(data["train"], data["valid"], uniform_priors())
    penalty = out["feature_penalty"]
    assert set(penalty) == set(features.CATEGORICAL_FEATURES) and out["C"] == shared["C"]
    assert out["best_val_loss"] < shared["best_val_loss"]  # accepted only on improvement
    noise = [f for f in penalty if f not in ("site_or_app", "device_type")]
    assert max(penalty[f] for f in noise) > 1 and "penalty per feature" in _said("logreg")
    # the weights are those of the 0/1 columns: the validation loss recomputes from them
    p = model.predict_proba(data["valid"])["age_gender"]
    assert pr.mean_log_loss(p, data["valid"]["y_age_gender"]) == pytest.approx(
        out["val_logloss"]["age_gender"], abs=1e-9)


def test_logreg_per_feature_sweep_on_a_sample_ends_with_a_tight_fit_on_all_rows(data, capsys):
    # the sweep's trials run on 300 of the 600 rows at a loose tolerance; the chosen
    # penalties are then refitted on every row at the path's tolerance: the same weights as a
    # fresh fit with those penalties fixed
    model = MODELS["logreg"](make_encoders(), {"per_feature_l2": True, "sweep_rows": 300,
                                               "sweep_tol": 1e-3}, FAST)
    out = model.fit(data["train"], data["valid"], uniform_priors())
    chosen = out["feature_penalty"]
    assert max(chosen.values()) > 1 and "penalty per feature" in _said("logreg")
    fixed = MODELS["logreg"](make_encoders(), {"feature_penalty": chosen, "tol": 1e-7,
                                               "c_grid": [out["C"]]}, FAST)
    fixed.fit(data["train"], data["valid"], uniform_priors())
    np.testing.assert_allclose(model.linear_logits(data["test"]),
                               fixed.linear_logits(data["test"]), atol=1e-2)
    # the sample really was smaller: a sweep on every row gives other weights
    trials = []
    original = type(model)._fit_point

    def spy(self, Xt, *a, **k):
        trials.append(Xt.shape[0])
        return original(self, Xt, *a, **k)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(model), "_fit_point", spy)
        MODELS["logreg"](make_encoders(), {"per_feature_l2": True, "sweep_rows": 300},
                         FAST).fit(data["train"], data["valid"], uniform_priors())
    n = len(data["train"]["y_age_gender"])
    assert trials[0] == n and trials[-1] == n and 300 <= min(trials) <= 306


def test_wide_start_heads_reuse_agegender_feature_penalties(data):
    from pythia.models.wide import fit_wide_start

    start = fit_wide_start(data["train"], data["valid"], make_encoders(), uniform_priors(),
                           np.ones(len(data["valid"]["y_age_gender"])), "softmax", FAST,
                           {"per_feature_l2": True})
    chosen = start["age_gender"]["feature_penalty"]
    assert set(chosen) == set(features.CATEGORICAL_FEATURES) and max(chosen.values()) > 1
    assert start["gender"]["feature_penalty"] == chosen == start["age"]["feature_penalty"]
    plain = fit_wide_start(data["train"], data["valid"], make_encoders(), uniform_priors(),
                           np.ones(len(data["valid"]["y_age_gender"])), "softmax", FAST)
    assert plain["gender"]["feature_penalty"] == {}
    assert start["age_gender"]["val_loss"][0] < plain["age_gender"]["val_loss"][0]


def test_logreg_rejects_what_it_cannot_fit(data):
    one_class = {k: v[:50] for k, v in data["train"].items()}
    one_class["y_age_gender"] = np.zeros(50, dtype=np.int64)
    with pytest.raises(ValueError, match="at least 2 AgeGender classes"):
        MODELS["logreg"](make_encoders(), {}, FAST).fit(one_class, data["valid"],
                                                        uniform_priors())
    with pytest.raises(ValueError, match="c_grid must hold positive"):
        MODELS["logreg"](make_encoders(), {"c_grid": [0.0, 1.0]}, FAST).fit(
            data["train"], data["valid"], uniform_priors())


def test_saved_logreg_scores_without_scikit_learn(fitted, data, tmp_path):
    import json
    import subprocess

    model, _ = fitted["logreg"]
    model.save(str(tmp_path / "lr"))
    np.savez(tmp_path / "x.npz", **{f: data["test"][f] for f in features.FEATURE_NAMES})
    code = ("import sys, json, numpy as np\n"
            "from pythia.models import load_model\n"
            f"m = load_model({str(tmp_path / 'lr')!r})\n"
            f"x = dict(np.load({str(tmp_path / 'x.npz')!r}))\n"
            "p = m.predict_proba(x)['age_gender']\n"
            "print(json.dumps([float(p.sum()), 'sklearn' in sys.modules]))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(REPO), check=True)
    total, imported = json.loads(res.stdout.strip().splitlines()[-1])
    assert total == pytest.approx(300) and not imported


@pytest.mark.parametrize("name", list(MODEL_NAMES))
def test_missing_and_oov_ids_do_not_crash(fitted, data, name):
    model, _ = fitted[name]
    X = {k: v[:20].copy() for k, v in data["test"].items()}
    for i, f in enumerate(features.CATEGORICAL_FEATURES):
        X[f][:] = features.MISSING_ID if i % 2 else features.OOV_ID
    p = model.predict_proba(X)
    for t in features.TARGETS:
        assert np.all(np.isfinite(p[t]))
        np.testing.assert_allclose(p[t].sum(axis=1), 1.0, atol=1e-9)


@pytest.mark.parametrize("name", list(MODEL_NAMES))
def test_save_load_gives_identical_predictions(fitted, data, name, tmp_path):
    model, _ = fitted[name]
    model.save(str(tmp_path / name))
    again = load_model(str(tmp_path / name))
    assert type(again) is type(model) and again.hparams == model.hparams
    assert again.temperature == model.temperature
    before, after = model.predict_proba(data["test"]), again.predict_proba(data["test"])
    for t in features.TARGETS:
        np.testing.assert_array_equal(before[t], after[t])
    other = next(n for n in MODELS if n != name)
    with pytest.raises(ValueError, match=f"holds a {name!r} model"):
        get_model(other).load(str(tmp_path / name))


# ------------------------------------------------------------------ the registry

def test_every_model_answers_for_itself():
    from pythia.models import BASELINE_MODELS, baseline_models
    from pythia.models.base import INPUT_FORMATS, Model

    for name in MODEL_NAMES:
        cls = MODELS[name]
        assert issubclass(cls, Model) and cls.name == name
        assert isinstance(cls.is_baseline, bool)
        assert cls.input_format in INPUT_FORMATS, (name, cls.input_format)
        space = cls.search_space()
        assert isinstance(space, dict), name
        # only a baseline may have nothing to search (the constant prior): config 0 alone
        assert space or (cls.is_baseline and sample_configs(name, 3, 0) == [{}]), name
        unknown = set(space) - set(cls.default_hparams())
        assert not unknown, f"{name} searches knobs it does not have: {unknown}"
        for knob, spec in space.items():
            assert (isinstance(spec, list) and spec) or (
                isinstance(spec, tuple) and spec[0] == "log" and 0 < spec[1] < spec[2]), knob
        assert callable(cls.export) and callable(cls.tie_hparams)
    assert BASELINE_MODELS and set(BASELINE_MODELS) <= set(MODEL_NAMES)
    assert BASELINE_MODELS == baseline_models() == tuple(
        n for n in MODEL_NAMES if MODELS[n].is_baseline)


def test_registry_stays_light_to_import():
    import subprocess

    code = ("import sys, json\n"
            "import pythia.models, pythia.models.export\n"
            "assert pythia.models.MODEL_NAMES\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'tensorflow', 'torch', 'sklearn', 'pyarrow', 'scipy', 'keras'})\n"
            "print(json.dumps(heavy))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(REPO), check=True)
    assert res.stdout.strip().splitlines()[-1] == "[]"
    with pytest.raises(AttributeError, match="no attribute 'MODEL_KINDS'"):
        pythia.models.MODEL_KINDS  # noqa: B018


def test_export_payload_names_a_runtime(fitted, tmp_path):
    for name, (model, _) in fitted.items():
        folder = str(tmp_path / name)
        model.save(folder)
        payload = type(model).export(folder)
        assert payload[ex.RUNTIME] in ex.RUNTIMES, name
        if payload[ex.RUNTIME] == ex.NUMPY_LAYERS:
            assert payload[ex.EXPORT]["kind"] == name
            assert set(payload[ex.EXPORT]["heads"]) == set(features.TARGETS)
        else:
            assert payload == {ex.RUNTIME: ex.SAVED_MODEL, ex.MODEL_DIR: folder}
    with pytest.raises(FileNotFoundError, match="not a saved pythia model"):
        get_model("mlp").export(str(tmp_path))  # its payload is read from the saved model


def _docstring_ids(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, kinds) and node.body and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)}


def model_name_literals(root: pathlib.Path, names: set[str]) -> list[str]:
    """``file:line: [names] in 'text'`` of every string constant (docstrings aside) naming a model.

    A constant counts when one of its identifier-like words is a model name, so a default
    such as ``"mlp,gbdt"`` is found as well as ``"gbdt"``; comments are not in the AST.
    """
    hits = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf8"))
        docs = _docstring_ids(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Constant) or not isinstance(node.value, str) \
                    or id(node) in docs:
                continue
            found = names & set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", node.value))
            if found:
                hits.append(f"{path.relative_to(root.parent)}:{node.lineno}: {sorted(found)} "
                            f"in {node.value[:40]!r}")
    return hits


def test_model_name_scan_finds_literals_and_skips_docstrings(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text('"""Talks about gbdt."""\n# and mlp\nX = "mlp,gbdt"\n'
                              'def f():\n    """The mlp."""\n    return {"kind": "mlp"}\n'
                              'Y = "numpy_layers"\n')
    assert model_name_literals(pkg, {"mlp", "gbdt"}) == [
        "pkg/a.py:3: ['gbdt', 'mlp'] in 'mlp,gbdt'", "pkg/a.py:6: ['mlp'] in 'mlp'"]


def test_no_model_name_outside_pythia_models():
    """Only the registry lists models; everything else asks the classes (issue 12)."""
    hits = [h for h in model_name_literals(REPO / "pythia", set(MODEL_NAMES))
            if not h.startswith("pythia/models/")]
    assert not hits, "model names outside pythia/models:\n" + "\n".join(hits)


def test_bad_inputs_are_named(fitted, data, tmp_path):
    model, _ = fitted["gbdt"]
    X = dict(data["test"])
    X["os"] = X["os"].copy()
    X["os"][0] = VOCAB + features.FIRST_VALUE_ID  # one past the table
    with pytest.raises(ValueError, match="'os'"):
        model.predict_proba(X)
    with pytest.raises(KeyError, match="browser"):
        model.predict_proba({k: v for k, v in data["test"].items() if k != "browser"})
    with pytest.raises(ValueError, match="unknown hparam.*'depth'"):
        MODELS["gbdt"](make_encoders(), {"depth": 3})
    with pytest.raises(RuntimeError, match="not fitted"):
        MODELS["gbdt"](make_encoders()).predict_proba(data["test"])
    with pytest.raises(FileNotFoundError, match="not a saved pythia model"):
        load_model(str(tmp_path))
    with pytest.raises(ValueError, match="unknown model 'xgb'"):
        get_model("xgb")
    with pytest.raises(ValueError, match="age_head"):
        MODELS["mlp"](make_encoders(), {"age_head": "cumulative"})


def test_prior_correction_moves_predictions_to_natural_priors(data):
    """Trained on balanced data, scored with a skewed natural prior: the mean prediction follows."""
    natural_ag = np.array([0.35, 0.05, 0.1, 0.3, 0.1, 0.1])
    marg = features.marginals_from_joint(natural_ag[None, :], N_AGE)
    natural = {"age_gender": natural_ag.tolist(), "gender": marg["gender"][0].tolist(),
               "age": marg["age"][0].tolist()}
    priors = {"train": uniform_priors()["train"], "natural": natural}
    test = make_split(3000, 5, natural_ag)
    losses = {}
    for method in ("none", "bayes", "em"):
        cfg = TrainConfig(max_epochs=1, prior_correction=method, seed=0)
        model = MODELS["gbdt"](make_encoders(), HPARAMS["gbdt"], cfg)
        model.fit(data["train"], data["valid"], priors)
        p = model.predict_proba(test)
        losses[method] = pr.mean_log_loss(p["age_gender"], test["y_age_gender"])
    assert losses["bayes"] < losses["none"]
    assert losses["em"] < losses["none"]


# ------------------------------------------------------------------ MLP specifics

def _reference_forward(export: dict, X: dict) -> dict[str, np.ndarray]:
    """Independent NumPy forward pass over ``export_numpy()`` (the scorer's contract)."""
    parts = [table[np.asarray(X[name], dtype=np.int64)] for name, table in export["embeddings"]]
    parts += [np.asarray(X[name], dtype=np.float64)[:, None] for name in export["numeric"]]
    h = np.concatenate(parts, axis=1).astype(np.float64)
    for W, b, act in export["trunk"]:
        assert act == "relu"
        h = np.maximum(h @ W + b, 0.0)
    out = {}
    for t, (W, b, link) in export["heads"].items():
        z = h @ W + b
        if "wide" in export:  # the wide part: a logit row per categorical value, numeric @ W
            for name, table in export["wide"][t]:
                z = z + table[np.asarray(X[name], dtype=np.int64)]
            num = np.stack([np.asarray(X[n], dtype=np.float64) for n in export["numeric"]], 1)
            z = z + num @ export["wide_numeric"][t]
        z = z / export["temperature"][t]
        if link == "softmax":
            e = np.exp(z - z.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
        else:
            surv = np.cumprod(1.0 / (1.0 + np.exp(-z)), axis=1)
            ones, zeros = np.ones((len(z), 1)), np.zeros((len(z), 1))
            p = np.hstack([ones, surv]) - np.hstack([surv, zeros])
        p = p * export["prior_ratio"][t]
        out[t] = p / p.sum(axis=1, keepdims=True)
    return out


@pytest.mark.parametrize("age_head", ["corn", "softmax"])
def test_numpy_export_matches_predict_proba(fitted, data, age_head):
    if age_head == "corn":
        model = fitted["mlp"][0]
    else:
        model = MODELS["mlp"](make_encoders(), {**HPARAMS["mlp"], "age_head": "softmax"},
                              TrainConfig(max_epochs=2, batch_size=64, seed=1))
        skew = {t: np.linspace(1, 2, k) / np.linspace(1, 2, k).sum() for t, k in N_CLASSES.items()}
        model.fit(data["train"], data["valid"],
                  {"train": uniform_priors()["train"],
                   "natural": {t: v.tolist() for t, v in skew.items()}})
    export = model.export_numpy()
    assert export["kind"] == "mlp"
    assert [n for n, _ in export["embeddings"]] == list(features.CATEGORICAL_FEATURES)
    assert export["numeric"] == list(features.NUMERIC_FEATURES)
    assert export["heads"]["age"][2] == age_head
    assert export["heads"]["age"][0].shape[1] == (N_AGE - 1 if age_head == "corn" else N_AGE)
    for name, table in export["embeddings"]:
        assert table.shape[0] == VOCAB + features.FIRST_VALUE_ID
    assert [n for n, _ in export["wide"]["age"]] == list(features.CATEGORICAL_FEATURES)
    ref = _reference_forward(export, data["test"])  # per head; outputs are AgeGender marginals
    ref = features.marginals_from_joint(ref["age_gender"], N_AGE)
    got = model.predict_proba(data["test"])
    for t in features.TARGETS:
        np.testing.assert_allclose(ref[t], got[t], atol=1e-5)
    # the wide part carries the LR: without it the forward pass answers differently
    bare = _reference_forward({k: v for k, v in export.items() if not k.startswith("wide")},
                              data["test"])
    assert np.abs(bare["age_gender"] - got["age_gender"]).max() > 1e-2


def _wide_start(data, age_head: str) -> tuple:
    from pythia.models.wide import fit_wide_start

    model = MODELS["mlp"](make_encoders(), {**HPARAMS["mlp"], "age_head": age_head}, FAST)
    weights = np.ones(len(data["valid"]["y_age_gender"]))
    start = fit_wide_start(data["train"], data["valid"], make_encoders(), uniform_priors(),
                           weights, model.age_head, FAST)
    return model, start


@pytest.mark.parametrize("age_head", ["corn", "softmax"])
def test_untrained_wide_mlp_is_the_logistic_regression(data, age_head):
    from pythia.models.logreg import LinearTask, fit_linear

    model, start = _wide_start(data, age_head)
    net = model.build(len(data["train"]["y_age_gender"]), start)
    out = net.predict(model._inputs(data["test"]), verbose=0)
    lr = MODELS["logreg"](make_encoders(), {}, FAST)
    lr.fit(data["train"], data["valid"], uniform_priors())
    np.testing.assert_allclose(out["age_gender"], lr.linear_logits(data["test"]), atol=1e-4)
    y, yv = data["train"]["y_gender"], data["valid"]["y_gender"]
    gender, _ = fit_linear(data["train"], data["valid"], LinearTask(
        y, yv, 2, [0.5, 0.5], [0.5, 0.5], np.ones(len(yv)), "gender"), make_encoders(), FAST)
    np.testing.assert_allclose(out["gender"], gender.linear_logits(data["test"]), atol=1e-4)
    assert out["age"].shape[1] == (N_AGE - 1 if age_head == "corn" else N_AGE)
    # CORN: the logit of task k is the binary LR "y > k" among the rows with y >= k
    if age_head == "corn":
        y_age = data["test"]["y_age"]
        first = 1 / (1 + np.exp(-out["age"][:, 0]))
        assert first[y_age > 0].mean() > first[y_age == 0].mean() + 0.2
    # each wide column keeps its LR's penalty, 1 / (2 C) per row (1 / C per softmax column of
    # a binary LR, whose weight is split in two halves)
    wide = net.get_layer("wide")
    n = len(data["train"]["y_age_gender"])
    assert wide.l2[-1] == pytest.approx(0.5 / start["age_gender"]["C"][0] / n)
    assert wide.l2[0] == pytest.approx(1.0 / start["gender"]["C"][0] / n)


def test_wide_mlp_keeps_the_lr_when_no_epoch_beats_it(data, capsys):
    # an absurd learning rate: every epoch is worse than the start, so the start is kept
    model = MODELS["mlp"](make_encoders(), {**HPARAMS["mlp"], "learning_rate": 30.0,
                                            "wide_per_feature_l2": False}, FAST)
    summary = model.fit(data["train"], data["valid"], uniform_priors())
    start = summary["wide_start"]
    assert start["improved"] is False and start["best_epoch"] == 0
    assert start["best_val_loss"] == start["lr_val_loss"]
    assert summary["epochs"] >= 1 and "stays the logistic regression" in _said("mlp")
    lr = MODELS["logreg"](make_encoders(), {}, FAST)
    lr_summary = lr.fit(data["train"], data["valid"], uniform_priors())
    # the kept network is the wide part, the logistic regression (at temperature 1); the
    # epoch scores are AgeGender as shipped (``mlp_valid.shipped_val_losses``)
    assert model.natural_val_losses(data["valid"])["age_gender"] == pytest.approx(
        lr_summary["best_val_loss"], abs=1e-5)
    assert shipped_val_losses(model, data["valid"]) == pytest.approx(start["lr_val_loss"],
                                                                     abs=1e-6)


def test_wide_mlp_trains_past_its_start_when_that_helps(fitted):
    _, summary = fitted["mlp"]
    start = summary["wide_start"]
    assert start["best_epoch"] == summary["best_epoch"]
    assert start["best_val_loss"]["age_gender"] <= start["lr_val_loss"]["age_gender"]
    assert start["improved"] is (start["best_epoch"] > 0)
    assert len(summary["val_loss_by_epoch"]) == summary["epochs"] + 1


def _xor_split(n: int, seed: int) -> dict[str, np.ndarray]:
    """Gender is the XOR of two features' parities: no additive (LR) model sees any of it."""
    X = make_split(n, seed)
    rng = np.random.default_rng(seed + 100)
    size = VOCAB + features.FIRST_VALUE_ID
    a, b = rng.integers(2, size, n), rng.integers(2, size, n)
    g = np.where(rng.random(n) < 0.9, (a + b) % 2, rng.integers(0, 2, n))
    X["site_or_app"], X["device_type"] = a, b
    X["y_gender"], X["y_age_gender"] = g, g * N_AGE + X["y_age"]
    return X


def test_residual_phase_trains_the_deep_part_on_the_fixed_lr(capsys):
    # the deep part must find the interaction the LR start cannot; the wide part stays its LR
    train, valid = _xor_split(1500, 0), _xor_split(500, 1)
    model = MODELS["mlp"](make_encoders(), {**HPARAMS["mlp"], "hidden_units": [16],
                                            "wide_train": "frozen", "aid_start": "logreg",
                                            "wide_per_feature_l2": False, "patience": None,
                                            "min_delta": 0.0, "finetune_epochs": 0},
                          TrainConfig(max_epochs=12, batch_size=64, patience=3, seed=0))
    summary = model.fit(train, valid, uniform_priors())
    start = summary["wide_start"]
    assert start["improved"] is True and summary["best_epoch"] > 0
    assert start["best_val_loss"]["age_gender"] < start["lr_val_loss"]["age_gender"] - 0.01
    assert "training improved it to" in _said("mlp")
    assert summary["phase_ends"] == [summary["epochs"]]  # no fine-tuning phase asked for
    fixed = fit_wide_start_for(model, train, valid)
    wide = model.export_numpy()["wide"]["gender"]
    for name, table in wide:
        np.testing.assert_allclose(table, fixed["gender"]["tables"][name], atol=1e-5)
    with pytest.raises(ValueError, match="wide_train"):
        MODELS["mlp"](make_encoders(), {**HPARAMS["mlp"], "wide_train": "thawed"}, FAST).fit(
            train, valid, uniform_priors())


def test_finetune_phase_moves_the_wide_part_and_keeps_the_best():
    train, valid = _xor_split(1500, 0), _xor_split(500, 1)
    model = MODELS["mlp"](make_encoders(), {**HPARAMS["mlp"], "hidden_units": [16],
                                            "finetune_epochs": 2, "finetune_lr": 0.01},
                          TrainConfig(max_epochs=4, batch_size=64, patience=1, seed=0))
    summary = model.fit(train, valid, uniform_priors())
    first, last = summary["phase_ends"]
    assert first <= 4 and first < last <= first + 2 and last == summary["epochs"]
    history = [h["age_gender"] for h in summary["val_loss_by_epoch"]]
    assert summary["best_val_loss"] == min(history)
    assert shipped_val_losses(model, valid)["age_gender"] == pytest.approx(min(history),
                                                                         abs=1e-6)


@pytest.mark.parametrize("finetune_patience", [1, 2, 3])
def test_joint_phase_runs_until_its_own_patience_runs_out(finetune_patience):
    # a joint rate so large that no joint epoch can gain: the phase stops after exactly
    # finetune_patience epochs (not a fixed count, not the residual phase's patience) and the
    # best weights, from before it, are kept
    train, valid = _xor_split(1500, 0), _xor_split(500, 1)
    model = MODELS["mlp"](make_encoders(), {**HPARAMS["mlp"], "hidden_units": [16],
                                            "patience": 1, "finetune_epochs": None,
                                            "finetune_lr": 50.0,
                                            "finetune_patience": finetune_patience},
                          TrainConfig(max_epochs=6, batch_size=64, seed=0))
    summary = model.fit(train, valid, uniform_priors())
    first, last = summary["phase_ends"]
    assert last - first == finetune_patience
    assert summary["best_epoch"] <= first
    history = [h["age_gender"] for h in summary["val_loss_by_epoch"]]
    assert shipped_val_losses(model, valid)["age_gender"] == pytest.approx(min(history),
                                                                         abs=1e-6)


def fit_wide_start_for(model, train, valid) -> dict:
    from pythia.models.wide import fit_wide_start

    return fit_wide_start(train, valid, make_encoders(), uniform_priors(),
                          np.ones(len(valid["y_age_gender"])), model.age_head, FAST)


def test_mlp_without_wide_part(data):
    model = MODELS["mlp"](make_encoders(), {**HPARAMS["mlp"], "wide": False},
                          TrainConfig(max_epochs=2, batch_size=64, seed=0))
    summary = model.fit(data["train"], data["valid"], uniform_priors())
    assert "wide_start" not in summary and "wide" not in model.export_numpy()
    with pytest.raises(ValueError, match="wide_start"):
        MODELS["mlp"](make_encoders(), {**HPARAMS["mlp"], "wide_start": "lasso"}, FAST).fit(
            data["train"], data["valid"], uniform_priors())


def test_mlp_trains_from_tf_dataset(data):
    import tensorflow as tf

    def ds(split, shuffle):
        x = {f: split[f] for f in features.FEATURE_NAMES}
        y = {t: split[c] for t, c in features.LABEL_COLUMNS.items()}
        d = tf.data.Dataset.from_tensor_slices((x, y))
        return (d.shuffle(1000, seed=0) if shuffle else d).batch(64)

    model = MODELS["mlp"](make_encoders(), HPARAMS["mlp"], TrainConfig(max_epochs=2, seed=0))
    summary = model.fit(ds(data["train"], True), ds(data["valid"], False), uniform_priors())
    # up to 2 epochs of the residual phase (patience 1: it stops after an epoch that gains
    # nothing, as the module's earlier tests' random state may have it), then up to
    # finetune_epochs (default 2) joint ones
    first = summary["phase_ends"][0]
    assert 1 <= first <= 2 and first < summary["epochs"] <= first + 2
    assert summary["n_valid"] == 300
    assert all(np.isfinite(v) for v in summary["val_logloss"].values())
    with pytest.raises(TypeError, match="numpy"):
        model.fit(data["train"], ds(data["valid"], False), uniform_priors())


# ------------------------------------------------------------------ search

def test_sample_configs_deterministic_distinct_and_defaults_first():
    a, b = sample_configs("mlp", 5, seed=3), sample_configs("mlp", 5, seed=3)
    assert a == b and len(a) == 6 and a[0] == {}
    assert len({repr(sorted(c.items())) for c in a}) == 6
    assert sample_configs("mlp", 5, seed=4) != a
    assert sample_configs("gbdt", 0, seed=0) == [{}]
    for name in MODELS:  # every sampled config is accepted by its model
        for cfg in sample_configs(name, 3, seed=0):
            MODELS[name](make_encoders(), cfg)
    with pytest.raises(ValueError, match="unknown model"):
        sample_configs("xgb", 2, 0)
    with pytest.raises(ValueError, match=">= 0"):
        sample_configs("mlp", -1, 0)


def test_sample_configs_of_a_small_space_draws_it_whole(capsys):
    space = get_model("logreg").search_space()
    size = math.prod(len(v) for v in space.values())
    configs = sample_configs("logreg", size + 3, seed=0)
    assert len(configs) == size + 1 and configs[0] == {}
    assert len({str(sorted(c.items())) for c in configs[1:]}) == size
    assert f"logreg has {size} distinct configs" in capsys.readouterr().out
    assert len(sample_configs("logreg", 2, seed=0)) == 3  # negative case: no cap below size


def test_best_config_picks_lowest_age_gender_logloss():
    results = [{"config_id": 0, "val_logloss": {"age_gender": 1.2}},
               {"config_id": 1, "val_logloss": {"age_gender": 0.9}},
               {"config_id": 2, "val_logloss": {"age_gender": None}}]
    assert best_config(results)["config_id"] == 1
    with pytest.raises(ValueError, match="finite"):
        best_config([results[2]])


# ------------------------------------------------------------------ training stage entry points

@pytest.fixture()
def fake_tfrecords(monkeypatch):
    """A stand-in for pythia.tfrecords over in-memory splits of two regions."""
    from pythia.tfrecords.sample import sample_chunks, sample_quotas  # the real sampling rule
    splits = {"train": 0, "validation": 1, "test_natural": 2, "test_resampled": 3}
    sizes = {"NA": 300, "EU": 200}
    store = {(s, r): make_split(n, 10 * seed + i)
             for s, seed in splits.items() for i, (r, n) in enumerate(sizes.items())}
    manifest = {"splits": {s: {"rows": sum(sizes.values()), "rows_by_region": dict(sizes)}
                           for s in splits}}
    manifest["splits"]["test_resampled"]["rows_by_region"]["APAC"] = 0

    def load_numpy(man, split, regions=None):
        regions = regions or sorted(sizes)
        parts = [store[(split, r)] for r in regions if (split, r) in store]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def make_dataset(man, split, regions=None, batch_size=1024, shuffle=False, seed=0,
                     repeat=False, with_ids=False):
        import tensorflow as tf

        d = load_numpy(man, split, regions)
        names = features.FEATURE_NAMES + (("impression_id",) if with_ids else ())
        x = {f: d[f] for f in names}
        y = {t: d[c] for t, c in features.LABEL_COLUMNS.items()}
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        return (ds.shuffle(2000, seed=seed) if shuffle else ds).batch(batch_size)

    def iter_numpy(man, split, regions=None, chunk_rows=65_536):
        d = load_numpy(man, split, regions)
        step = chunk_rows or len(d["impression_id"])
        for start in range(0, len(d["impression_id"]), step):
            yield {k: v[start:start + step] for k, v in d.items()}

    def load_sample(man, split, regions, max_rows, seed):
        d = load_numpy(man, split, regions)
        quotas = sample_quotas(dict(enumerate(np.bincount(d["y_age_gender"]).tolist())),
                               max_rows or len(d["impression_id"]))
        return sample_chunks(iter([d]), quotas, seed), {"split": split, "max_rows": max_rows}

    fake = types.ModuleType("pythia.tfrecords")
    fake.load_numpy, fake.make_dataset = load_numpy, make_dataset
    fake.iter_numpy, fake.load_sample = iter_numpy, load_sample
    fake.load_encoders = lambda man: make_encoders()
    monkeypatch.setitem(sys.modules, "pythia.tfrecords", fake)
    monkeypatch.setattr(pythia, "tfrecords", fake, raising=False)
    return manifest


@pytest.mark.parametrize("name,region", [("gbdt", "global"), ("mlp", "EU")])
def test_fit_candidate_writes_predictions_and_model(fake_tfrecords, tmp_path, name, region):
    import json

    from pythia.models import fit_candidate

    pred_uri = str(tmp_path / "pred" / f"{name}.parquet")
    res = fit_candidate(name, region, 0, HPARAMS[name], fake_tfrecords, uniform_priors(),
                          str(tmp_path / "model"), pred_uri,
                          TrainConfig(max_epochs=2, batch_size=64, seed=0))
    json.dumps(res)  # JSON-able
    assert res["model"] == name and res["region"] == region
    assert res["is_baseline"] is MODELS[name].is_baseline
    assert res["n_train"] == (500 if region == "global" else 200)
    assert set(res["val_logloss"]) == set(features.TARGETS)
    assert res["age_head"] == ("corn" if name == "mlp" else "marginal")
    table = pq.read_table(pred_uri)
    assert table.column_names == ["impression_id", "split", "region", "scored_by_region",
                                  "p_gender", "p_age", "p_age_gender"]
    df = table.to_pandas()
    per_region = 500 if region == "global" else 200
    assert len(df) == 3 * per_region
    assert set(df["split"]) == {"validation", "test_natural", "test_resampled"}
    assert set(df["scored_by_region"]) == {region}
    assert set(df["region"]) == ({"NA", "EU"} if region == "global" else {"EU"})
    assert not df.duplicated(["split", "impression_id"]).any()
    p = np.stack(df["p_age_gender"].to_numpy())
    assert p.shape == (len(df), 2 * N_AGE)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    again = load_model(str(tmp_path / "model"))
    assert again.name == name


def test_fit_candidate_region_without_rows(fake_tfrecords, tmp_path):
    from pythia.models import fit_candidate

    with pytest.raises(ValueError, match="region 'LATAM' has no training rows"):
        fit_candidate("gbdt", "LATAM", 0, {}, fake_tfrecords, uniform_priors(),
                        str(tmp_path / "m"), str(tmp_path / "p.parquet"), FAST)
    assert not (tmp_path / "p.parquet").exists()


def test_train_candidate_takes_the_flow_step_inputs(fake_tfrecords, tmp_path):
    """The ``train`` step's call: grid item, manifests, config, age edges, the run's paths."""
    from pythia.models import train_candidate, train_grid
    from pythia.paths import RunPaths

    natural = {"age_gender": [0.3, 0.1, 0.1, 0.2, 0.2, 0.1], "gender": [0.5, 0.5],
               "age": [0.5, 0.3, 0.2]}
    split_manifest = {"natural_priors": natural, "resample_target": "age_gender",
                      "class_counts_after": {"train": {str(c): 10 for c in range(6)}}}
    paths = RunPaths(str(tmp_path), "DemoFlow", "7")
    item = train_grid(["gbdt"], ["EU"], fake_tfrecords, search=1, seed=0)[1]
    res = train_candidate(item, fake_tfrecords, split_manifest, FAST, EDGES, paths)
    assert (res["model"], res["region"], res["config_id"]) == ("gbdt", "EU", 1)
    assert res["model_dir"] == paths.model("gbdt", "EU", 1)
    assert res["predictions_uri"] == paths.predictions("gbdt", "EU", 1)
    assert pq.read_table(res["predictions_uri"]).num_rows == 3 * 200
    saved, want = load_model(res["model_dir"]), pr.priors_from_split_manifest(split_manifest,
                                                                                 EDGES)
    for kind in pr.PRIOR_KINDS:
        for t in features.TARGETS:
            np.testing.assert_allclose(saved.priors[kind][t], want[kind][t])
    assert {k: saved.hparams[k] for k in item["hparams"]} == item["hparams"]
    with pytest.raises(ValueError, match="natural_priors"):
        train_candidate(item, fake_tfrecords, {}, FAST, EDGES, paths)


def test_train_grid_regions_models_and_configs(fake_tfrecords, capsys):
    from pythia.models import REFERENCE_MODEL, train_grid

    grid = train_grid(["gbdt", "mlp"], None, fake_tfrecords, search=0, seed=0)
    # the constant prior is always trained, last when --models omit it, and says so
    assert [(g["model"], g["region"]) for g in grid] == [
        ("gbdt", "global"), ("gbdt", "EU"), ("gbdt", "NA"),
        ("mlp", "global"), ("mlp", "EU"), ("mlp", "NA"),
        (REFERENCE_MODEL, "global"), (REFERENCE_MODEL, "EU"), (REFERENCE_MODEL, "NA")]
    assert "adding the 'class_prior' baseline" in capsys.readouterr().out
    assert all(g["config_id"] == 0 and g["hparams"] == {} for g in grid)
    searched = train_grid(["tabnet", REFERENCE_MODEL], ["global", "NA"], fake_tfrecords,
                          search=2, seed=3)
    # nothing to search in a constant: the prior keeps config 0 only
    assert [(g["model"], g["region"], g["config_id"]) for g in searched] == [
        ("tabnet", "global", 0), ("tabnet", "global", 1), ("tabnet", "global", 2),
        ("tabnet", "NA", 0), ("tabnet", "NA", 1), ("tabnet", "NA", 2),
        (REFERENCE_MODEL, "global", 0), (REFERENCE_MODEL, "NA", 0)]
    assert "adding" not in capsys.readouterr().out
    assert [g["hparams"] for g in searched[:3]] == sample_configs("tabnet", 2, seed=3)
    with pytest.raises(ValueError, match=r"requested region\(s\) \['LATAM'\] have no training"):
        train_grid(["gbdt"], ["EU", "LATAM"], fake_tfrecords, search=0, seed=0)
    with pytest.raises(ValueError, match="unknown model"):
        train_grid(["xgb"], None, fake_tfrecords, search=0, seed=0)


def test_the_configs_models_sections_reach_every_config_of_their_model(fake_tfrecords):
    """``[models.<name>]`` in the deploy config (flows/pythia.toml) is each config's base: a
    searched knob overrides its value, the other knobs stay."""
    from pythia.models import train_families, train_grid

    knobs = {"mlp": {"members": 3, "hidden_units": [64]}, "tabnet": {}}
    grid = train_grid(["mlp"], ["global"], fake_tfrecords, search=2, seed=0,
                      model_hparams=knobs)
    mlp = [g["hparams"] for g in grid if g["model"] == "mlp"]
    searched = sample_configs("mlp", 2, seed=0)
    assert mlp[0] == {"members": 3, "hidden_units": [64]}
    for got, drawn in zip(mlp[1:], searched[1:]):
        assert got == {"members": 3, "hidden_units": [64], **drawn}
    assert all(g["hparams"] == {} for g in grid if g["model"] != "mlp")
    families = train_families(["mlp"], ["global"], fake_tfrecords, 0, 0, knobs)
    assert families[0]["hparams"] == {"members": 3, "hidden_units": [64]}


@pytest.mark.parametrize("knobs,message", [
    ({"mlp": {"hiden_units": [64]}}, r"config \[models.mlp\]: unknown knob\(s\) "
                                     r"\['hiden_units'\]; mlp's knobs are \[.*'hidden_units'"),
    ({"xgb": {"depth": 3}}, r"config \[models.xgb\]: no model 'xgb'; the models are")])
def test_a_bad_models_section_is_refused_naming_it(knobs, message, fake_tfrecords):
    from pythia.models import check_model_hparams, train_grid

    with pytest.raises(ValueError, match=message):
        check_model_hparams(knobs)
    with pytest.raises(ValueError, match=message):
        train_grid(["mlp"], None, fake_tfrecords, search=0, seed=0, model_hparams=knobs)


def test_the_flow_checks_the_models_sections_before_the_etl():
    import ast
    import pathlib

    flow = pathlib.Path(__file__).resolve().parents[1] / "flows" / "demo_flow.py"
    tree = ast.parse(flow.read_text())
    start = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "start")
    calls = {ast.unparse(c.func) for c in ast.walk(start) if isinstance(c, ast.Call)}
    assert "models.check_model_hparams" in calls
    to_tfrecords = next(n for n in ast.walk(tree)
                        if isinstance(n, ast.FunctionDef) and n.name == "to_tfrecords")
    assert "self.params.model_hparams" in ast.unparse(to_tfrecords)


def test_validation_class_weights_undo_the_validation_resampling():
    from pythia.models.train import validation_class_weights

    by_gender = {"rates": {"validation": {"0": 1.0, "1": 0.25}, "train": {"0": 0.5}},
                 "resample_target": "gender"}
    assert validation_class_weights(by_gender, N_AGE) == [1.0] * N_AGE + [4.0] * N_AGE
    joint = {"rates": {"validation": {"2": 0.5}}, "resample_target": "age_gender"}
    assert validation_class_weights(joint, N_AGE) == [1.0, 1.0, 2.0, 1.0, 1.0, 1.0]
    assert validation_class_weights({}, N_AGE) == [1.0] * 6  # not resampled
    model = MODELS["logreg"](make_encoders(), {}, FAST)
    model.valid_class_weights = np.asarray(validation_class_weights(by_gender, N_AGE))
    np.testing.assert_array_equal(model.validation_weights(np.array([0, 5, 3])), [1, 4, 4])
    with pytest.raises(ValueError, match="resample_target 'device'"):
        validation_class_weights({"resample_target": "device"}, N_AGE)


def test_train_grid_drops_a_region_with_the_global_rows(capsys):
    """All training rows in one region (e.g. OTHER): its candidates would be the global ones."""
    from pythia.models import train_grid

    one = {"splits": {s: {"rows": 500, "rows_by_region": {"OTHER": 500, "EU": 0}}
                      for s in ("train", "validation")}}
    grid = train_grid(["logreg"], None, one, search=0, seed=0)
    assert sorted({g["region"] for g in grid}) == ["global"]
    assert "region 'OTHER' holds all 500 training rows" in capsys.readouterr().out
    # asked for explicitly with global: still dropped; without global it is the only slice
    assert {g["region"] for g in train_grid(["logreg"], ["global", "OTHER"], one, 0, 0)} == {
        "global"}
    assert {g["region"] for g in train_grid(["logreg"], ["OTHER"], one, 0, 0)} == {"OTHER"}
    # negative case: a region with part of the rows is trained
    two = {"splits": {"train": {"rows": 500, "rows_by_region": {"OTHER": 499, "EU": 1}}}}
    assert {g["region"] for g in train_grid(["logreg"], None, two, 0, 0)} == {
        "global", "EU", "OTHER"}


def test_predictions_table_rejects_length_mismatch():
    from pythia.models.predictions import predictions_table

    probs = {"gender": np.full((2, 2), 0.5), "age": np.full((2, 3), 1 / 3),
             "age_gender": np.full((1, 6), 1 / 6)}
    with pytest.raises(ValueError, match="age_gender"):
        predictions_table(np.array(["a", "b"]), "validation", "EU", "EU", probs)
    buf = io.BytesIO()
    ok = predictions_table(np.array(["a", "b"]), "validation", "EU", "EU",
                           {**probs, "age_gender": np.full((2, 6), 1 / 6)})
    pq.write_table(ok, buf)
    assert pq.read_table(io.BytesIO(buf.getvalue())).num_rows == 2


def _raw_batch(split: dict, region: str):
    """Ids of ``make_split`` back to raw values (id 0 -> null, 1 -> an unseen value)."""
    import pyarrow as pa

    def raw(ids):
        return pa.array([None if i == 0 else ("never-seen" if i == 1 else f"v{i - 2}")
                         for i in ids], pa.string())

    cols = {f: raw(split[f]) for f in features.CATEGORICAL_FEATURES}
    cols.update({f: pa.array(split[f], pa.float32()) for f in features.NUMERIC_FEATURES})
    cols.update({c: pa.array(split[c], pa.int32()) for c in features.LABEL_COLUMNS.values()})
    cols["impression_id"] = pa.array(split["impression_id"].astype(str), pa.string())
    cols["user_id"] = pa.array([f"{region}-user-{i % 97}" for i in range(len(split["y_gender"]))],
                               pa.string())  # the split's user, hashed into its user_group
    cols["region"] = pa.array([region] * len(split["impression_id"]), pa.string())
    return pa.RecordBatch.from_pydict(cols)


def test_fit_candidate_on_real_tfrecords(tmp_path):
    """End to end through pythia.tfrecords: shards written by its writer, read by its reader."""
    import pyarrow as pa

    tfr = pytest.importorskip("pythia.tfrecords")
    from pythia import storage
    from pythia.models import fit_candidate
    from pythia.tfrecords.writer import write_partition

    enc = make_encoders()
    root = str(tmp_path / "tfrecords")
    storage.write_json_atomic(f"{root}/encoders.json", enc.to_json())
    manifest = {"root": root, "encoders": f"{root}/encoders.json", "compression": None,
                "spec_version": features.spec_version(), "splits": {}}
    sizes = {"EU": 250, "NA": 350}
    for seed, split in enumerate(["train", "validation", "test_natural", "test_resampled"]):
        batch = pa.Table.from_batches([_raw_batch(make_split(n, 20 * seed + i), r)
                                       for i, (r, n) in enumerate(sizes.items())]
                                      ).combine_chunks().to_batches()[0]
        shards = write_partition(iter([batch]), enc, f"{root}/split={split}", split, 0, 10_000,
                                 None)
        manifest["splits"][split] = {"rows": sum(sizes.values()), "rows_by_region": dict(sizes),
                                     "shards": shards}
    assert tfr.load_numpy(manifest, "train", ["EU"])["site_or_app"].size == 250
    for name, region in [("mlp", "global"), ("tabnet", "NA")]:
        pred = str(tmp_path / f"{name}.parquet")
        res = fit_candidate(name, region, 0, HPARAMS[name], manifest, uniform_priors(),
                              str(tmp_path / f"model_{name}"), pred,
                              TrainConfig(max_epochs=2, batch_size=128, seed=0))
        df = pq.read_table(pred).to_pandas()
        expect = sum(sizes.values()) if region == "global" else sizes[region]
        assert len(df) == 3 * expect and res["n_train"] == expect
        assert set(df["region"]) == (set(sizes) if region == "global" else {region})
        assert math.isfinite(res["val_logloss"]["age_gender"])
        if name == "mlp":  # 600 rows, 2 epochs: the MLP already beats the class prior
            assert res["val_logloss"]["age_gender"] < math.log(6)


def test_tabnet_valid_logloss_tolerates_classes_missing_from_validation():
    from sklearn.metrics import log_loss

    from pythia.models.tabnet import ValidLogLoss
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(12), size=40)
    y = rng.integers(0, 11, size=40)  # class 11 never appears in this validation slice
    got = ValidLogLoss()(y, p)
    assert got == pytest.approx(log_loss(y, p, labels=np.arange(12)))
    with pytest.raises(ValueError):
        log_loss(y, p)  # what pytorch-tabnet's built-in metric would call
