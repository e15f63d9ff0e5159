"""benchmarks/fresh_users.py: users drawn afresh from a world's tables, labelled by the run's
providers, scored against the population posterior (the run end to end: test_flow.py)."""
import datetime as dt

import numpy as np
import pandas as pd
import pytest

from pythia import features
from pythia.synth import generate_world, load_world
from pythia.synth.activity import user_impressions_today
from pythia.synth.population import build_users
from repo_modules import load_repo_module

fu = load_repo_module("benchmarks/fresh_users.py")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fresh") / "tiny")
    generate_world(root, "tiny", seed=0)
    return load_world(root)


def test_hours_are_parsed_or_refused_in_one_line():
    assert fu.parse_hours("0-3,7") == [0, 1, 2, 3, 7]
    assert fu.parse_hours("5") == [5]
    for bad in ("", "a-b", "3-30", "-1"):
        with pytest.raises(SystemExit, match="--hours"):
            fu.parse_hours(bad)


def test_fresh_rows_are_new_users_labelled_by_the_runs_providers(world):
    params = world.params
    day = dt.date.fromisoformat(params.vocab["label_dates"][-1])
    countries = params.vocab["countries"]
    providers = params.config.providers
    # half the countries labelled by one provider, the rest by another; one not at all
    chosen = {c: providers[i % len(providers)] for i, c in enumerate(countries[1:])}
    df = fu.fresh_rows(params, 400, 17, day, list(range(24)), chosen, power_threshold=30)
    assert len(df) and not (df.country == countries[0]).any()  # an unlabelled country: gone
    assert (df.label_provider == df.country.map(chosen)).all()
    # the count is the world's reference definition over every drawn row of the day
    whole = fu.fresh_rows(params, 400, 17, day, list(range(24)), dict.fromkeys(countries,
                                                                              providers[0]), None)
    ref = user_impressions_today(whole)
    np.testing.assert_array_equal(whole[features.USER_IMPRESSIONS_TODAY], ref)
    # power user-days by their total over the hours drawn, as the ETL flags them
    totals = df.groupby("user_id").size()
    assert (df.is_power_user == df.user_id.map(totals > 30)).all()
    # a label is the provider's latest for the user, in features' class order
    assert df.y_age_gender.between(0, len(features.age_gender_labels()) - 1).all()
    agree = np.mean(df.y_age_gender.to_numpy() == pd.Index(features.age_gender_labels())
                    .get_indexer(np.array(world.class_labels)[df.true_class]))
    assert agree > 0.5  # noisy labels, but mostly the truth: the orders line up
    # another seed: not the world's own users (the same index draws another class)
    own = build_users(params)
    fresh_cls = df.drop_duplicates("user_id").set_index("user_id").true_class
    idx = fresh_cls.index.str[1:].astype(int)
    assert (own.cls[idx] != fresh_cls.to_numpy()).mean() > 0.5
    with pytest.raises(SystemExit, match="--hours"):
        fu.main(["--run", "1", "--hours", "25"])


def test_slice_table_is_relative_to_the_population_on_the_same_rows():
    n_age = 6
    y = np.array([0, 1, 7, 7, 11, 3])
    p_pop = np.full((6, 12), 1 / 12)
    p_good = np.full((6, 12), 0.5 / 11)
    p_good[np.arange(6), y] = 0.5
    df = pd.DataFrame({"user_id": list("aabbcd"), "y_age_gender": y,
                       features.IS_POWER_USER: [True, True, False, False, False, False],
                       features.USER_IMPRESSIONS_TODAY: [150, 151, 0, 1, 2, 3]})
    probs = {name: features.marginals_from_joint(p, n_age)
             for name, p in (("population", p_pop), ("good", p_good))}
    table = fu.slice_table(probs, df, n_age).set_index(["scorer", "slice"])
    assert table.loc[("population", "all"), "age_gender_x_pop"] == 1.0
    assert table.loc[("good", "all"), "age_gender"] == pytest.approx(-np.log(0.5), abs=1e-4)
    assert table.loc[("good", "power"), "age_gender_x_pop"] == pytest.approx(
        np.log(0.5) / np.log(1 / 12), abs=1e-4)
    assert table.loc[("good", "power"), "users"] == 1 and table.loc[("good", "power"), "rows"] == 2
    assert table.loc[("good", f"{fu.HEAVY}+_today"), "rows"] == 2
    # by region: each region's rows, and its non-power user-days, against the same population
    p_mixed = p_good.copy()
    p_mixed[4:] = 1 / 12  # right in NA, the population's guess in EU
    probs["mixed"] = features.marginals_from_joint(p_mixed, n_age)
    regions = np.array(["NA", "NA", "NA", "NA", "EU", "EU"], dtype=object)
    table = fu.slice_table(probs, df, n_age, regions).set_index(["scorer", "slice"])
    assert table.loc[("mixed", "NA"), "rows"] == 4 and table.loc[("mixed", "EU"), "rows"] == 2
    assert table.loc[("mixed", "NA non_power"), "rows"] == 2
    assert table.loc[("mixed", "EU"), "age_gender_x_pop"] == pytest.approx(1.0)
    assert table.loc[("mixed", "NA"), "age_gender_x_pop"] == pytest.approx(
        np.log(0.5) / np.log(1 / 12), abs=1e-4)
    assert table.loc[("mixed", "all"), "rows"] == 6  # the other slices stay
    # four users are too few for an SE of the ratio; the population against itself has none
    assert np.isnan(table.loc[("good", "all"), "age_gender_x_pop_se"])


def test_slice_table_gives_the_ratio_se_clustered_by_user():
    from pythia.evaluate.margins import row_ratio_se

    rng = np.random.default_rng(4)
    n_age, n = 6, 3000
    users = rng.integers(0, 300, n)
    y = rng.integers(0, 12, n)
    p_pop = rng.dirichlet(np.ones(12), n)
    p_model = 0.7 * p_pop + 0.3 * rng.dirichlet(np.ones(12), n)
    df = pd.DataFrame({"user_id": [f"u{u}" for u in users], "y_age_gender": y,
                       features.IS_POWER_USER: users < 30,
                       features.USER_IMPRESSIONS_TODAY: np.zeros(n, int)})
    probs = {name: features.marginals_from_joint(p, n_age)
             for name, p in (("population", p_pop), ("model", p_model))}
    table = fu.slice_table(probs, df, n_age).set_index(["scorer", "slice"])
    rows = np.arange(n)
    loss_m, loss_p = -np.log(p_model[rows, y]), -np.log(p_pop[rows, y])
    for slice_name, m in (("all", np.ones(n, bool)), ("non_power", users >= 30),
                          ("power", users < 30)):
        want = row_ratio_se(loss_m[m], loss_p[m], df["user_id"].to_numpy()[m])
        assert table.loc[("model", slice_name), "age_gender_x_pop_se"] == pytest.approx(
            want, abs=5e-5) and want > 0
    assert table.loc[("population", "all"), "age_gender_x_pop_se"] == 0


def test_per_bin_scales_undo_a_bins_over_confidence():
    """``fit_bin_scales`` finds the logit scale that calibrates each activity bin (and leaves
    a calibrated bin and an empty one at 1); ``retemper`` applies it around the prior shift."""
    rng = np.random.default_rng(3)
    n, k = 40_000, 4
    log_ratio = np.log(np.array([0.5, 1.0, 1.5, 2.0]))
    z = rng.normal(0, 1.5, (n, k))
    truth = np.exp(z) / np.exp(z).sum(1, keepdims=True)  # the labels' distribution
    y = (truth.cumsum(1) > rng.random((n, 1))).argmax(1)
    bins = np.repeat([0, 1], n // 2)
    p = truth.copy()
    p[bins == 1] = fu.retemper(truth[bins == 1], log_ratio, np.full(n // 2, 4.0))  # 4x sharp
    np.testing.assert_allclose(fu.retemper(p, log_ratio, np.ones(n)), p, atol=1e-12)
    scales = fu.fit_bin_scales(p, y, bins, 3, log_ratio)
    assert abs(scales[0] - 1) < 0.05 and abs(scales[1] - 0.25) < 0.02 and scales[2] == 1
    fixed = fu.retemper(p, log_ratio, scales[bins])
    assert fu.log_loss(fixed, y) < fu.log_loss(p, y) - 0.05
    np.testing.assert_allclose(fixed.sum(1), 1, atol=1e-12)
    # labels under the training priors (a resampled split): the scorer's natural-prior
    # output is moved back by the prior ratio before the fit
    natural = truth * np.exp(log_ratio)  # softmax(log truth + log r)
    natural /= natural.sum(1, keepdims=True)
    p = natural.copy()
    p[bins == 1] = fu.retemper(natural[bins == 1], log_ratio, np.full(n // 2, 4.0))
    scales = fu.fit_bin_scales(p, y, bins, 2, log_ratio, natural=False)
    assert abs(scales[0] - 1) < 0.05 and abs(scales[1] - 0.25) < 0.02


@pytest.mark.parametrize("bins", ["0,3", "10,3", "3,x", "3,3"])
def test_bad_activity_bins_are_refused_in_one_line(bins):
    with pytest.raises(SystemExit, match="--activity-bins"):
        fu.main(["--run", "1", "--activity-bins", bins])
    with pytest.raises(SystemExit, match="--fit-stream must differ"):
        fu.main(["--run", "1", "--activity-bins", "3", "--fit-stream", "5", "--stream", "5"])


def test_rate_key_projects_the_count_to_the_whole_utc_day():
    """``activity_key(by='rate')``: (count + 1) * 24 / (hours since UTC midnight + 0.5), from
    ``ts`` as the generator (tz-aware, microseconds) and a split (naive UTC, nanoseconds) write
    it; ``count`` is the counter itself. 20 impressions by 01:00 UTC is a heavier day than 20
    by 22:00, which the count alone cannot tell."""
    stamps = ["2026-11-20 01:00:00", "2026-11-20 22:00:00", "2026-11-21 00:00:00",
              "2026-11-20 11:30:00"]
    counts = [20, 20, 0, 5]
    want = [21 * 24 / 1.5, 21 * 24 / 22.5, 24 / 0.5, 6 * 24 / 12.0]
    for ts in (pd.to_datetime(stamps, utc=True).astype("datetime64[us, UTC]"),
               pd.to_datetime(stamps).astype("datetime64[ns]")):
        df = pd.DataFrame({features.TS: ts, features.USER_IMPRESSIONS_TODAY: counts})
        np.testing.assert_allclose(fu.activity_key(df, "rate"), want)
        np.testing.assert_array_equal(fu.activity_key(df), counts)
    with pytest.raises(ValueError, match="activity key 'hour'"):
        fu.activity_key(df, "hour")


def test_rate_bins_need_edges():
    with pytest.raises(SystemExit, match="--bin-by rate bins nothing without --activity-bins"):
        fu.main(["--run", "1", "--bin-by", "rate"])


def test_a_regenerated_world_is_refused_by_its_fingerprint(world, tmp_path):
    """``synth.world_fingerprint``: the same world gives the same one; a world regenerated in
    place (another generator or preset: another ``truth/world.json``) another, and
    ``check_world`` refuses it in one line naming the folder; no record (a run from before
    it, real data): nothing to check."""
    import json
    import shutil

    from pythia.evaluate.io import read_world
    from pythia.synth import check_world, world_fingerprint

    root = world.root
    recorded = world_fingerprint(root)
    assert recorded and recorded == world_fingerprint(root) and len(recorded) == 16
    check_world(root, recorded)
    check_world(root, None)
    assert read_world(root, recorded) is not None
    assert world_fingerprint(str(tmp_path)) is None  # no truth/world.json: real data
    copy = str(tmp_path / "regenerated")
    shutil.copytree(root, copy)
    meta_path = tmp_path / "regenerated" / "truth" / "world.json"
    meta = json.loads(meta_path.read_text())
    meta["generator_version"] = int(meta["generator_version"]) + 1
    meta_path.write_text(json.dumps(meta))
    assert world_fingerprint(copy) not in (None, recorded)
    for load in (lambda: check_world(copy, recorded), lambda: read_world(copy, recorded)):
        with pytest.raises(ValueError, match="not the synthetic world the run was made on") as e:
            load()
        assert copy in str(e.value) and "\n" not in str(e.value)


def test_paired_table_gives_one_runs_minus_the_others_on_the_same_users():
    """``--versus``: per scorer of both runs, this run's AgeGender log-loss minus the other's
    on the same fresh rows, × the population's, with an SE clustered by user."""
    from pythia.evaluate.margins import paired_margin

    rng = np.random.default_rng(5)
    n_age, n = 6, 4000
    users = rng.integers(0, 400, n)
    y = rng.integers(0, 12, n)
    p_pop = rng.dirichlet(np.ones(12) * 3, n)
    p_b = 0.8 * p_pop + 0.2 / 12
    p_a = p_b.copy()
    better = users < 200  # run A knows half the users' class a little better
    p_a[better] = 0.9 * p_b[better] + 0.1 * np.eye(12)[y[better]]
    df = pd.DataFrame({"user_id": [f"u{u}" for u in users], "y_age_gender": y,
                       features.IS_POWER_USER: users < 40,
                       features.USER_IMPRESSIONS_TODAY: np.zeros(n, int)})
    run_a = {"population": features.marginals_from_joint(p_pop, n_age),
             "mlp/global#0": features.marginals_from_joint(p_a, n_age),
             "bundle": features.marginals_from_joint(p_b, n_age)}
    run_b = {"population": run_a["population"],
             "mlp/global#0": features.marginals_from_joint(p_b, n_age),
             "bundle": features.marginals_from_joint(p_b, n_age),
             "logreg/global#0": features.marginals_from_joint(p_pop, n_age)}
    table = fu.paired_table(run_a, run_b, df, fu.slice_masks(df)).set_index(["scorer", "slice"])
    assert set(table.index.get_level_values(0)) == {"mlp/global#0", "bundle"}  # in both runs
    rows = np.arange(n)
    la, lb, lp = (-np.log(p[rows, y]) for p in (p_a, p_b, p_pop))
    want = paired_margin(la - lb, np.ones(n), df["user_id"].to_numpy())
    got = table.loc[("mlp/global#0", "all")]
    assert got["diff_x_pop"] == pytest.approx(want.diff / lp.mean(), abs=1e-4)
    assert got["diff_x_pop"] < 0
    assert got["se"] == pytest.approx(want.se / lp.mean(), abs=1e-4) and got["z"] < -5
    assert table.loc[("bundle", "all"), "diff_x_pop"] == 0  # the same probabilities
    assert table.loc[("mlp/global#0", "power"), "rows"] == int((users < 40).sum())
    assert fu.same_fresh_users(df, df.copy()) is None
    other = df.assign(y_age_gender=np.roll(y, 1))
    assert "differ in 'y_age_gender'" in fu.same_fresh_users(df, other)
    assert "differ in 'user_id'" in fu.same_fresh_users(df, df.iloc[1:])
