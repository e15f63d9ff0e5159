"""AgeGender's temperature per bin of the user's activity today (issue 15,
``pythia.models.activity_temp``): fitted where a model fits its temperature, applied by the
model, the bundle's NumPy scorer and the ONNX graph alike, and bounded by the config."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from pythia import features
from pythia.config import DeployConfig, TrainConfig
from pythia.features import (CATEGORICAL_FEATURES, LOG1P, NUMERIC_FEATURES, TARGETS,
                             NumericStats)
from pythia.models import activity_temp as at
from pythia.models import start_temp
from pythia.models.priors import mean_log_loss, priors_from_labels
from pythia.scoring.runtime import FusedMLP, check_export, load_export_npz, save_export_npz
from test_scoring import GEO, make_encoders, make_export, reference_predict

ACTIVITY_COL = list(NUMERIC_FEATURES).index(at.FEATURE)


def activity_encoders():
    """The test encoders, with the activity column normalised as the ETL does (log1p)."""
    enc = make_encoders()
    enc.numeric[at.FEATURE] = NumericStats(mean=1.5, std=1.2, transform=LOG1P)
    return enc


def world(encoders, n: int, seed: int) -> dict[str, np.ndarray]:
    """Rows whose AgeGender follows ``os`` (and ``site_or_app``) 85% of the time for light
    users (0-9 impressions today) and is uniform for heavy ones (30-400): a linear model,
    which cannot make its confidence depend on activity, is under-confident on the first and
    over-confident on the second."""
    rng = np.random.default_rng(seed)
    n_age = len(encoders.age_edges)
    X = {f: rng.integers(2, encoders.vocabularies[f].size, n) for f in CATEGORICAL_FEATURES}
    X.update({f: rng.normal(size=n).astype(np.float32) for f in NUMERIC_FEATURES})
    heavy = rng.random(n) < 0.4
    counts = np.where(heavy, rng.integers(30, 400, n), rng.integers(0, 10, n))
    X[at.FEATURE] = encoders.numeric[at.FEATURE].normalize(counts)
    signal = (X["os"] * 3 + X["site_or_app"]) % (2 * n_age)
    noisy = heavy | (rng.random(n) < 0.15)
    ag = np.where(noisy, rng.integers(0, 2 * n_age, n), signal)
    gender, age = ag // n_age, ag % n_age
    return {**X, "y_gender": gender, "y_age": age, "y_age_gender": ag, "counts": counts}


def priors_of(data, encoders):
    n_classes = {t: len(features.class_labels(t, encoders.age_edges)) for t in TARGETS}
    y = {t: data[c] for t, c in features.LABEL_COLUMNS.items()}
    p = priors_from_labels(y, n_classes)
    return {"train": p, "natural": p}


# ---------------------------------------------------------------------- the fit

def test_bins_sit_between_whole_counts_and_a_missing_count_takes_the_means_bin():
    enc = activity_encoders()
    edges = at.normalized_edges(enc, (3, 10, 30, 100))
    stats = enc.numeric[at.FEATURE]
    counts = np.array([0, 2, 3, 9, 10, 29, 30, 99, 100, 5000])
    assert at.bin_of(edges, stats.normalize(counts)).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    # float32 and float64 paths agree: a whole count is never near an edge
    assert at.bin_of(edges, stats.normalize(counts).astype(np.float64)).tolist() == \
        at.bin_of(np.float32(edges), stats.normalize(counts)).tolist()
    mean_count = np.expm1(stats.mean)  # ~3.5: normalised to 0, like a missing one
    missing = stats.normalize(np.array([-1.0, np.nan]))
    assert at.bin_of(edges, missing).tolist() == [1, 1] == at.bin_of(edges, [0.0]).tolist() * 2
    assert 3 <= mean_count < 10


def test_a_bin_made_over_confident_is_fitted_back_and_thin_bins_pool_with_their_neighbours():
    enc = activity_encoders()
    rng = np.random.default_rng(0)
    n, k = 6000, 6
    counts = rng.choice([1, 5, 50, 500], size=n, p=[0.3, 0.3, 0.385, 0.015])
    true = rng.normal(size=(n, k))
    y = np.array([rng.choice(k, p=np.exp(z) / np.exp(z).sum()) for z in true])
    logits = true * np.where(counts >= 30, 4.0, 1.0)[:, None]  # 30+: 4x over-confident
    x = enc.numeric[at.FEATURE].normalize(counts)
    fitted = at.fit(logits, y, x, enc, (3, 10, 30, 100), global_temperature=1.7)
    assert fitted.rows == tuple(int(v) for v in np.bincount(at.bin_of(fitted.edges, x),
                                                            minlength=5))
    assert fitted.rows[2] == 0 and fitted.rows[4] < at.MIN_BIN_ROWS  # empty; ~90 rows
    # 10-29 (empty) pools with 30-99, and the thin 100+ joins that pool too
    assert fitted.pools == (0, 1, 2, 2, 2) and all(fitted.fitted)
    t = fitted.temperature
    assert abs(t[0] - 1) < 0.1 and abs(t[1] - 1) < 0.1 and abs(t[3] - 4) < 0.4
    assert t[2] == t[3] == t[4]
    assert fitted.describe().startswith("0-2: ") and ", 10+: " in fitted.describe()
    assert at.from_json(at.to_json(fitted)) == fitted
    before_pools = {k: v for k, v in at.to_json(fitted).items() if k != "pools"}
    assert at.from_json(before_pools).pools == (0, 1, 2, 3, 4)  # saved before pools existed
    # a pool whose own fit (T searched up to 20) would not beat the global temperature keeps
    # it, and says so: heavy rows whose huge logits say nothing about the label
    noise = np.where((counts >= 30)[:, None], rng.normal(size=(n, k)) * 200, true)
    y_noise = np.where(counts >= 30, rng.integers(0, k, n), y)
    flat = at.fit(noise, y_noise, x, enc, (3, 10, 30, 100), global_temperature=1e4)
    assert flat.temperature[3] == 1e4 and not flat.fitted[3] and flat.fitted[0]
    assert "10+: 10000.000 (global: no gain on its 2," in flat.describe()


def test_a_warm_start_keeps_its_starts_bins_times_one_scale():
    """A regional model's own heavy bins are a few users': it keeps the shape of its start's
    bins and fits one scale on its rows (1 when the scale gains nothing)."""
    enc = activity_encoders()
    rng = np.random.default_rng(3)
    n, k = 4000, 6
    counts = rng.choice([1, 5, 15, 50, 500], size=n)
    x = enc.numeric[at.FEATURE].normalize(counts)
    edges = at.normalized_edges(enc, (3, 10, 30, 100))
    start = at.ActivityTemperature((3, 10, 30, 100), edges, (1.0, 1.0, 1.5, 2.0, 4.0),
                                   (900, 900, 900, 900, 900), (True,) * 5, (0, 1, 2, 3, 4))
    true = rng.normal(size=(n, k))
    y = np.array([rng.choice(k, p=np.exp(z) / np.exp(z).sum()) for z in true])
    per_row = np.asarray(start.temperature)[at.bin_of(edges, x)]
    logits = true * per_row[:, None] * 1.5  # the start's shape, 1.5x hotter everywhere
    fitted = at.fit(logits, y, x, enc, (3, 10, 30, 100), 1.3, start=start)
    assert abs(fitted.start_scale - 1.5) < 0.1
    assert np.allclose(np.asarray(fitted.temperature) / np.asarray(start.temperature),
                       fitted.start_scale)
    assert fitted.pools == start.pools and fitted.rows == tuple(
        int(v) for v in np.bincount(at.bin_of(edges, x), minlength=5))
    assert fitted.describe().startswith("the start's bins x 1.")
    assert at.from_json(at.to_json(fitted)) == fitted
    # labels that say nothing: no scale beats 1 by much, the bins stay the start's
    same = at.fit(true * per_row[:, None], y, x, enc, (3, 10, 30, 100), 1.3, start=start)
    assert abs(same.start_scale - 1.0) < 0.1


def start_world(scale: float, n_users: int, rows_per_user: int, seed: int):
    """Rows of ``n_users`` users whose labels follow logits at the start's per-bin
    temperatures times ``scale`` (1: the start's bins are right)."""
    enc = activity_encoders()
    rng = np.random.default_rng(seed)
    n, k = n_users * rows_per_user, 6
    counts = rng.choice([1, 5, 15, 50, 500], size=n)
    x = enc.numeric[at.FEATURE].normalize(counts)
    edges = at.normalized_edges(enc, (3, 10, 30, 100))
    start = at.ActivityTemperature((3, 10, 30, 100), edges, (1.0, 1.0, 1.5, 2.0, 4.0),
                                   (900,) * 5, (True,) * 5, (0, 1, 2, 3, 4))
    true = rng.normal(size=(n, k))
    p = np.exp(true) / np.exp(true).sum(axis=1, keepdims=True)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    per_row = np.asarray(start.temperature)[at.bin_of(edges, x)]
    groups = np.repeat(np.arange(n_users), rows_per_user)
    return enc, start, true * per_row[:, None] * scale, y, x, groups


def test_a_warm_starts_scale_ships_only_beyond_noise():
    """With the rows' user groups, the scale of the start's bins ships when it beats 1 by
    more than START_SCALE_Z user-clustered SEs; within noise, or with too few user groups
    for an SE, the start's bins ship exactly as they are. Early stopping's score
    (``noise_cut=False``) keeps the fitted scale, untested."""
    counts = (3, 10, 30, 100)
    enc, start, logits, y, x, groups = start_world(1.5, 400, 10, 3)
    hot = at.fit(logits, y, x, enc, counts, 1.3, start=start, groups=groups)
    assert abs(hot.start_scale - 1.5) < 0.1 and hot.fitted_scale == hot.start_scale
    assert hot.scale_z < -start_temp.START_SCALE_Z
    assert f"x {hot.start_scale:.3f} (z {hot.scale_z:.2f}): " in hot.describe()
    assert at.from_json(at.to_json(hot)) == hot
    # the start's bins are right: the fitted scale is noise and is not shipped
    enc, start, logits, y, x, groups = start_world(1.0, 400, 10, 4)
    same = at.fit(logits, y, x, enc, counts, 1.3, start=start, groups=groups)
    assert same.start_scale == 1.0 and same.temperature == start.temperature
    assert same.fitted_scale != 1.0 and -start_temp.START_SCALE_Z <= same.scale_z < 0
    assert (f"x 1.000 (fitted {same.fitted_scale:.3f}, z {same.scale_z:.2f}: within noise)"
            in same.describe())
    untested = at.fit(logits, y, x, enc, counts, 1.3, start=start, groups=groups,
                      noise_cut=False)
    assert untested.start_scale == same.fitted_scale and untested.fitted_scale is None
    assert "(" not in untested.describe().split(":")[0]
    # a real scale on too few users for an SE (MIN_USER_GROUPS): the start's bins
    enc, start, logits, y, x, groups = start_world(1.5, 10, 400, 5)
    few = at.fit(logits, y, x, enc, counts, 1.3, start=start, groups=groups)
    assert few.start_scale == 1.0 and few.scale_z is None and abs(few.fitted_scale - 1.5) < 0.1
    assert "(fitted 1.5" in few.describe() and "no SE: within noise)" in few.describe()
    # a model saved before the test reads back untested
    doc = {k: v for k, v in at.to_json(untested).items() if k not in ("fitted_scale",
                                                                       "scale_z")}
    assert at.from_json(doc) == untested


def test_a_regional_logreg_started_from_the_global_one_keeps_its_bins(logreg_fit):
    from pythia.models import get_model

    start, _, _ = logreg_fit
    enc = activity_encoders()
    train, valid = world(enc, 2000, 5), world(enc, 1500, 6)
    regional = get_model("logreg")(enc, {}, TrainConfig())
    summary = regional.fit(train, valid, priors_of(train, enc), start=start)
    fitted = regional.activity_temperature
    assert fitted.start_scale is not None and summary["activity_temperature"]["start_scale"]
    np.testing.assert_allclose(np.asarray(fitted.temperature),
                               fitted.start_scale * np.asarray(
                                   start.activity_temperature.temperature))
    # from scratch, the same rows fit bins of their own
    own = get_model("logreg")(enc, {}, TrainConfig())
    own.fit(train, valid, priors_of(train, enc))
    assert own.activity_temperature.start_scale is None


@pytest.mark.parametrize("rows, pools", [
    ((646, 617, 371, 138, 104), (0, 1, 2, 2, 2)),  # a small region's heavy bins
    ((1106, 1030, 600, 437, 611), (0, 1, 2, 3, 3)),  # a thin bin before a full one
    ((4594, 4212, 2265, 1566, 1621), (0, 1, 2, 3, 4)),  # every bin its own
    ((600, 0, 0, 0, 0), (0, 0, 0, 0, 0)),  # one pool: the global temperature's rows
    ((10, 10, 10, 10, 10), (0, 0, 0, 0, 0))])
def test_thin_bins_pool_upwards_and_a_thin_last_pool_joins_the_one_before(rows, pools):
    assert at.pool_bins(rows, 500) == pools


def test_no_bins_no_column_or_nothing_to_gain_gives_one_temperature():
    enc = activity_encoders()
    rng = np.random.default_rng(1)
    z, y = rng.normal(size=(500, 4)), rng.integers(0, 4, 500)
    x = enc.numeric[at.FEATURE].normalize(rng.integers(0, 200, 500))
    assert at.fit(z, y, x, enc, (), 1.0) is None
    assert at.fit(z, y, None, enc, (3, 10), 1.0) is None
    assert at.fit(z, y, x, enc, (3, 10), 1.0, min_rows=10_000) is None


@pytest.mark.parametrize("bins", [[3, 3], [0, 5], [10, 3], "3,10", [2.5], [True], None])
def test_bad_activity_bins_are_refused_in_one_line(bins):
    with pytest.raises(ValueError, match=r"\[train\] activity_bins must be strictly "
                                         r"increasing whole counts >= 1.*got") as err:
        DeployConfig.from_mapping({"train": {"activity_bins": bins}})
    assert "\n" not in str(err.value)


def test_the_config_reaches_the_training_config():
    assert DeployConfig.from_mapping({}).activity_bins == (3, 10, 30, 100)
    assert DeployConfig.from_mapping({"train": {"activity_bins": []}}).activity_bins == ()
    assert DeployConfig.from_mapping(
        {"train": {"activity_bins": [5, 50.0]}}).activity_bins == (5, 50)


# ---------------------------------------------------------------------- the models

@pytest.fixture(scope="module")
def logreg_fit():
    from pythia.models import get_model

    enc = activity_encoders()
    train, valid, test = (world(enc, n, seed) for n, seed in ((6000, 0), (3000, 1), (4000, 2)))
    priors = priors_of(train, enc)
    model = get_model("logreg")(enc, {}, TrainConfig())
    summary = model.fit(train, valid, priors)
    return model, summary, test


def test_a_linear_model_gets_hotter_on_light_users_and_colder_on_heavy_ones(logreg_fit):
    model, summary, test = logreg_fit
    fitted = model.activity_temperature
    assert fitted is not None and summary["activity_temperature"] == at.to_json(fitted)
    t = fitted.temperature
    assert fitted.rows[2] == 0 and fitted.pools[2] == fitted.pools[3]  # 10-29: no rows
    assert fitted.fitted[0] and fitted.fitted[4]
    assert t[0] < model.temperature["age_gender"] < t[4] and t[4] > 2 * t[0], fitted.describe()
    # on rows it never saw, the per-bin temperature beats the one temperature
    binned = model.predict_proba(test)["age_gender"]
    one = copy.copy(model)  # the same fit with the bins removed
    one.activity_temperature = None
    single = one.predict_proba(test)["age_gender"]
    y = test["y_age_gender"]
    assert mean_log_loss(binned, y) < mean_log_loss(single, y) - 0.01
    heavy = test["counts"] >= 30
    assert mean_log_loss(binned[heavy], y[heavy]) < mean_log_loss(single[heavy], y[heavy])


def test_the_bins_are_saved_with_the_model(logreg_fit, tmp_path):
    from pythia.models import load_model

    model, _, test = logreg_fit
    model.save(str(tmp_path / "m"))
    back = load_model(str(tmp_path / "m"))
    assert back.activity_temperature == model.activity_temperature
    for t, p in model.predict_proba(test).items():
        np.testing.assert_allclose(back.predict_proba(test)[t], p, atol=1e-12)


def test_the_class_prior_stays_one_constant_row_whatever_the_activity():
    """A baseline that knows nothing must not learn activity through its bins' temperatures."""
    from pythia.models import get_model

    enc = activity_encoders()
    train, valid = world(enc, 3000, 0), world(enc, 3000, 1)
    model = get_model("class_prior")(enc, {}, TrainConfig())
    assert model.fit(train, valid, priors_of(train, enc))["activity_temperature"] is None
    p = model.predict_proba(valid)["age_gender"]
    assert np.allclose(p, p[0], atol=1e-12)


def test_a_model_with_bins_off_has_one_temperature():
    from pythia.models import get_model

    enc = activity_encoders()
    train, valid = world(enc, 3000, 0), world(enc, 2000, 1)
    model = get_model("logreg")(enc, {}, TrainConfig(activity_bins=()))
    assert model.fit(train, valid, priors_of(train, enc))["activity_temperature"] is None
    assert model.activity_temperature is None


# ---------------------------------------------------------------------- the scorers

def binned_export(encoders, seed: int = 3, wide: bool = True) -> dict:
    export = make_export(encoders, seed=seed, age_link="softmax", wide=wide)
    export[at.EXPORT_KEY] = {"feature": at.FEATURE,
                             "edges": list(at.normalized_edges(encoders, (3, 10, 30, 100))),
                             "temperature": [0.6, 0.9, 1.4, 2.5, 7.0]}
    return export


def binned_reference(export, ids, numeric):
    """The export's definition with each row's temperature taken from its bin."""
    entry = export[at.EXPORT_KEY]
    rows = np.asarray(entry["temperature"])[at.bin_of(entry["edges"], numeric[:, ACTIVITY_COL])]
    out = []
    for t_row, i, x in zip(rows, ids, numeric):
        e = dict(export, temperature={**export["temperature"], "age_gender": t_row})
        e.pop(at.EXPORT_KEY)
        out.append(reference_predict(e, i[None, :], x[None, :]))
    return {t: np.concatenate([o[t] for o in out]) for t in TARGETS}


def inputs(encoders, n: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.integers(0, encoders.vocabularies[f].size, n)
                    for f in CATEGORICAL_FEATURES], axis=1).astype(np.int64)
    numeric = rng.normal(size=(n, len(NUMERIC_FEATURES))).astype(np.float32)
    counts = rng.choice([0, 1, 2, 3, 9, 10, 29, 30, 99, 100, 2000], size=n)
    numeric[:, ACTIVITY_COL] = encoders.numeric[at.FEATURE].normalize(counts)
    return ids, numeric


def assert_every_numpy_path(export, encoders, ids, numeric, want, every: int) -> None:
    """The NumPy scorer equals ``want`` on its batch, few-rows and one-request paths (one
    request every ``every`` rows), in float64 and float32."""
    for dtype, tol in (("float64", 1e-10), ("float32", 2e-5)):
        fused = FusedMLP(export, encoders, dtype=dtype)
        got = fused.predict(ids, numeric)  # chunks of 1,024 rows
        assert max(np.abs(got[t] - want[t]).max() for t in TARGETS) < tol
        few = fused.predict(ids[:5], numeric[:5])  # the pre-multiplied few-rows path
        assert max(np.abs(few[t] - want[t][:5]).max() for t in TARGETS) < tol
        for r in range(0, len(ids), every):  # one request, Python floats
            one = fused.predict_one(ids[r].tolist(), numeric[r].tolist())
            assert max(np.abs(np.array(one[t]) - want[t][r]).max() for t in TARGETS) < tol


def assert_onnx_is_numpy(export, encoders, ids, numeric) -> None:
    """The ONNX graph of ``export`` scores as the float64 NumPy scorer (<= 1e-5)."""
    pytest.importorskip("onnxruntime")
    from pythia.scoring.onnx_export import OnnxMLP
    from pythia.scoring.onnx_graph import build_onnx_model

    got = OnnxMLP(build_onnx_model(export, encoders)).predict(ids, numeric)
    want = FusedMLP(export, encoders, dtype="float64").predict(ids, numeric)
    assert max(np.abs(np.asarray(got[t]) - want[t]).max() for t in TARGETS) <= 1e-5


@pytest.mark.parametrize("wide", [False, True], ids=["deep", "wide"])
def test_numpy_scorer_applies_each_rows_bin_on_every_path(wide):
    enc = activity_encoders()
    export = binned_export(enc, wide=wide)
    ids, numeric = inputs(enc, 3000, 4)
    want = binned_reference(export, ids, numeric)
    assert_every_numpy_path(export, enc, ids, numeric, want, 250)
    # the bins matter: with the global temperature everywhere the answer differs
    plain = FusedMLP({k: v for k, v in export.items() if k != at.EXPORT_KEY}, enc,
                     dtype="float64").predict(ids, numeric)
    assert np.abs(plain["age_gender"] - want["age_gender"]).max() > 0.05


@pytest.mark.parametrize("wide", [False, True], ids=["deep", "wide"])
def test_onnx_graph_applies_each_rows_bin(wide):
    enc = activity_encoders()
    ids, numeric = inputs(enc, 2000, 6)
    assert_onnx_is_numpy(binned_export(enc, seed=5, wide=wide), enc, ids, numeric)


def test_the_export_entry_is_checked_and_round_trips(tmp_path):
    enc = activity_encoders()
    export = binned_export(enc)
    path = str(tmp_path / "w.npz")
    save_export_npz(export, path)
    back = load_export_npz(path)
    assert back[at.EXPORT_KEY] == export[at.EXPORT_KEY]
    ids, numeric = inputs(enc, 50, 7)
    np.testing.assert_array_equal(FusedMLP(back, enc).predict(ids, numeric)["age_gender"],
                                  FusedMLP(export, enc).predict(ids, numeric)["age_gender"])
    entry = export[at.EXPORT_KEY]
    for bad, match in (({**entry, "feature": "os"}, "bins by 'os'"),
                       ({**entry, "edges": entry["edges"][::-1]}, "strictly increasing"),
                       ({**entry, "temperature": [1.0, 2.0]}, "needs 5 finite temperatures"),
                       ({**entry, "temperature": [1.0, 0.0, 1, 1, 1]}, "needs 5 finite"),
                       ({"edges": [0.0]}, "must hold exactly")):
        with pytest.raises(ValueError, match=match):
            check_export({**export, at.EXPORT_KEY: bad}, enc)


def test_a_trained_mlp_with_bins_scores_alike_in_keras_numpy_onnx_and_the_bundle(tmp_path):
    """An MLP fitted from tf.data (the flow's input): its validation sample keeps the
    activity column, its bins are fitted, saved, exported, and every scorer applies them."""
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("onnxruntime")
    from pythia.models import get_model, load_model
    from pythia.scoring import Scorer, export_champions
    from pythia.scoring.onnx_export import load_onnx_scorer
    from pythia.scoring.boundary import RequestEncoder

    enc = activity_encoders()
    train, valid, test = world(enc, 4000, 0), world(enc, 2500, 1), world(enc, 300, 2)

    def dataset(d):
        x = {f: d[f] for f in features.FEATURE_NAMES}
        y = {t: d[c] for t, c in features.LABEL_COLUMNS.items()}
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(512)
    model = get_model("mlp")(enc, {"hidden_units": [16], "age_head": "softmax"},
                             TrainConfig(max_epochs=2, batch_size=256, patience=1))
    model.fit(dataset(train), dataset(valid), priors_of(train, enc))
    fitted = model.activity_temperature
    assert fitted is not None and sum(fitted.rows) == 2500 and fitted.fitted[4]
    assert model.export_numpy()[at.EXPORT_KEY] == fitted.export()
    model.save(str(tmp_path / "mlp"))
    bundle = export_champions([{"region": "global", "model": "mlp",
                                "model_dir": str(tmp_path / "mlp"), "source": "test"}],
                              enc.to_json(), GEO, "Test/mlp", str(tmp_path / "bundle"))
    # requests as a bidder sends them; their encoding is the model's input
    reqs = [{"country": "US", "os": f"os_{i % 3}", "site_or_app": f"site_or_app_{i % 3}",
             "ts": 1_710_000_000 + 977 * i, at.FEATURE: int(c)}
            for i, c in enumerate(test["counts"])]
    reqs.append({"country": "US", "ts": 1_710_000_000})  # no count: the mean's bin
    ids, numeric, _ = RequestEncoder(enc, GEO, ["global"]).encode_many(reqs)
    X = {n: ids[:, j] for j, n in enumerate(CATEGORICAL_FEATURES)}
    X.update({n: numeric[:, j] for j, n in enumerate(NUMERIC_FEATURES)})
    want = load_model(str(tmp_path / "mlp")).predict_proba(X)
    numpy_scorer = Scorer.load(bundle)
    for got in (numpy_scorer.score_arrays(reqs),
                load_onnx_scorer(bundle, numpy_for_small=False).score_arrays(reqs)):
        assert max(np.abs(np.asarray(got[t]) - want[t]).max() for t in TARGETS) <= 1e-5


def test_the_scorer_reads_format_4_and_5_bundles_and_refuses_older_in_one_line(tmp_path):
    """A format-5 bundle is a format-6 one without wide-only bins, a format-4 one also
    without the bins (a past run's bundle still scores); format 3 is refused naming the
    file."""
    import json
    import os

    from pythia.scoring import Scorer, write_bundle
    from test_scoring import layers

    enc = activity_encoders()
    bundle = str(tmp_path / "b")
    write_bundle({"global": layers(make_export(enc, seed=8, wide=True))}, enc, GEO, "Test/1",
                 bundle)
    doc_path = os.path.join(bundle, "bundle.json")
    with open(doc_path) as f:
        doc = json.load(f)
    assert doc["format_version"] == 7
    reqs = [{"country": "US", "ts": 1_710_000_000, at.FEATURE: 40}]
    now = Scorer.load(bundle).score_arrays(reqs)
    for version, ok in ((6, True), (5, True), (4, True), (3, False)):
        with open(doc_path, "w") as f:
            json.dump({**doc, "format_version": version}, f)
        if ok:
            got = Scorer.load(bundle).score_arrays(reqs)
            assert all(np.array_equal(got[t], now[t]) for t in TARGETS)
        else:
            with pytest.raises(ValueError, match=r"bundle.json is format .* v3, this code "
                                                 r"reads .* v4/v5/v6/v7") as err:
                Scorer.load(bundle)
            assert "\n" not in str(err.value)


def test_early_stopping_scores_each_epoch_as_it_would_ship():
    """The MLP's epoch score is AgeGender's natural-weighted loss at the temperatures the fit
    ships (one and per bin, fitted after the epoch): the kept epoch's score is the shipped
    model's loss on validation, and on a world whose heavy users' labels are noise it is
    below the temperature-1 score the rule used before."""
    pytest.importorskip("tensorflow")
    from pythia.models import get_model
    from pythia.models.mlp_valid import shipped_val_losses

    enc = activity_encoders()
    train, valid = world(enc, 4000, 0), world(enc, 2500, 1)
    model = get_model("mlp")(enc, {"hidden_units": [16], "age_head": "softmax"},
                             TrainConfig(max_epochs=3, batch_size=256, patience=2))
    summary = model.fit(train, valid, priors_of(train, enc))
    assert model.activity_temperature is not None
    p = model.predict_proba(valid)["age_gender"]
    y = valid["y_age_gender"]
    w = model.validation_weights(y)
    shipped = float(np.sum(-np.log(p[np.arange(len(y)), y]) * w) / np.sum(w))
    assert shipped_val_losses(model, valid)["age_gender"] == pytest.approx(shipped, abs=1e-6)
    assert summary["best_val_loss"] == pytest.approx(shipped, abs=1e-6)
    assert shipped < model.natural_val_losses(valid)["age_gender"] - 0.01
