"""Tests of the world's activity levels and the posterior given a user's impressions today."""
from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from scipy.special import ndtr
from scipy.stats import poisson

from pythia import geo
from pythia.features import USER_IMPRESSIONS_TODAY as N_TODAY
from pythia.features import age_bucket_labels, age_to_bucket
from pythia.synth import PRESETS, World, generate_world, load_world
from pythia.synth.activity import (DAY, ExposureClock, activity_levels, expected_weights,
                                   user_impressions_today)
from pythia.synth.impressions import PartitionSampler
from pythia.synth.population import build_users
from pythia.synth.world import WorldConfig, build_params
from test_synth import tiny  # noqa: F401  (the module-scoped tiny world fixture)

N_BINS = ((0, 0), (1, 3), (4, 15), (16, None))  # bins of n for the calibration check
REPLICATE_DAYS = 30  # independent days of the tiny world's users for the calibration checks


@pytest.fixture(scope="module")
def rows(tiny) -> pd.DataFrame:
    """Every impression of the tiny world with its reference count, true class, power flag."""
    df = ds.dataset(f"{tiny}/impressions", partitioning="hive").to_table().to_pandas()
    return _with_truth(load_world(tiny), df)


@pytest.fixture(scope="module")
def replicates(tiny) -> pd.DataFrame:
    """REPLICATE_DAYS independent days of the tiny world's users (the sampler draws any UTC
    day from (seed, date, hour)), with the same columns as ``rows`` and the day's index."""
    world = load_world(tiny)
    sampler = PartitionSampler(world.params, build_users(world.params))
    end = dt.date.fromisoformat(world.params.config.end_date)
    days = [pa.concat_tables([sampler.sample(end - dt.timedelta(days=k), h) for h in range(24)])
            .to_pandas().assign(day=k) for k in range(REPLICATE_DAYS)]
    return _with_truth(world, pd.concat(days, ignore_index=True))


def _with_truth(world, df: pd.DataFrame) -> pd.DataFrame:
    df[N_TODAY] = user_impressions_today(df)
    truth = world.truth().set_index("user_id")
    classes = {c: i for i, c in enumerate(world.class_labels)}
    df["y"] = truth.loc[df["user_id"], "age_gender"].map(classes).to_numpy()
    df["power"] = truth.loc[df["user_id"], "is_power_user"].to_numpy()
    return df


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))


def _calibration_t(p: np.ndarray, y: np.ndarray, n: np.ndarray, day: np.ndarray) -> float:
    """Largest |t| over days of (true count - summed probability) per class and bin of n.

    Rows of one user and day share the class and the count, so rows are not independent;
    days are (given the users), so each statistic's noise is measured across days.
    """
    days = np.unique(day)
    worst = 0.0
    for lo, hi in N_BINS:
        m = (n >= lo) & (n <= (np.inf if hi is None else hi))
        per_day = pd.DataFrame(np.eye(p.shape[1])[y[m]] - p[m]).groupby(day[m]).sum()
        per_day = per_day.reindex(days, fill_value=0.0).to_numpy()
        ok = p[m].sum(axis=0) >= 10 * len(days)  # classes with some hits per day
        ok = ok & (per_day.std(axis=0) > 0)
        t = per_day.mean(axis=0)[ok] / (per_day.std(axis=0, ddof=1)[ok] / np.sqrt(len(days)))
        worst = max([worst] + np.abs(t).tolist())
    return worst


# ------------------------------------------------------------------ levels and the reference count

def test_activity_levels_keep_the_lognormal_mean_and_the_other_draws():
    cfg = WorldConfig(n_users=3000, n_sites=100)
    levels = activity_levels(cfg)
    edges = np.concatenate([[-np.inf], np.linspace(-2.8, 2.8, cfg.activity_levels - 1), [np.inf]])
    assert len(levels) == 16 and np.all(np.diff(levels) > 0)
    assert np.diff(ndtr(edges)) @ levels == pytest.approx(1.0, abs=1e-12)  # the mean is kept
    params = build_params(cfg, seed=1)
    users = build_users(params)
    assert set(np.unique(users.level)) <= set(range(16)) and len(np.unique(users.level)) >= 12
    np.testing.assert_array_equal(users.activity, float(params.base_rate) * levels[users.level]
                                  * np.where(users.power, cfg.power_user_multiplier, 1.0))
    # one level: everyone at the mean; levels change activity only (country, class, ... kept)
    flat = build_users(build_params(dataclasses.replace(cfg, activity_sigma=0.0), seed=1))
    assert np.unique(flat.activity[~flat.power]).size == 1
    np.testing.assert_array_equal(flat.cls, users.cls)
    with pytest.raises(ValueError, match="activity_levels"):
        WorldConfig(activity_levels=1)


def test_reference_count_is_per_user_and_utc_day_strictly_before():
    ts = pd.to_datetime(["2026-11-19 23:59:59", "2026-11-20 00:00:00", "2026-11-20 08:00:00",
                         "2026-11-20 08:00:00", "2026-11-20 07:00:00", "2026-11-20 09:00:00"],
                        utc=True)
    df = pd.DataFrame({"user_id": ["a", "a", "a", "a", "a", "b"], "ts": ts,
                       "impression_id": ["i1", "i2", "i4", "i3", "i5", "i6"]})
    # a's 2026-11-20 rows in order: i2 (00:00), i5 (07:00), i3 then i4 (08:00, by id)
    assert user_impressions_today(df).tolist() == [0, 0, 3, 2, 1, 0]
    with pytest.raises(ValueError, match="repeats ids"):
        user_impressions_today(pd.concat([df, df.head(1)]))
    with pytest.raises(ValueError, match="null"):
        user_impressions_today(df.assign(user_id=[None, "a", "a", "a", "a", "b"]))


def test_cache_regenerates_a_world_of_an_older_generator(tmp_path):
    from pythia.synth import generate as gen_mod
    root = tmp_path / "w"
    generate_world(str(root), "tiny", seed=2)
    assert gen_mod._is_current(str(root))
    meta = root / "truth" / "world.json"
    version = gen_mod.GENERATOR_VERSION
    text = meta.read_text()
    assert f'"generator_version": {version}' in text
    meta.write_text(text.replace(f'"generator_version": {version}',
                                 f'"generator_version": {version - 1}'))
    assert not gen_mod._is_current(str(root))


def test_cache_regenerates_a_world_drawn_from_another_config_of_its_preset(tmp_path, capsys):
    """A preset that changed (e.g. the default's activity levels) must not reuse the cached
    world of its old config: same folder name, same generator version, another world."""
    import json

    from pythia.synth import generate as gen_mod
    from pythia.synth.generate import resolve_source
    root = tmp_path / "tiny-seed2"
    generate_world(str(root), "tiny", seed=2)
    assert gen_mod._is_current(str(root), PRESETS["tiny"])
    assert not gen_mod._is_current(str(root), dataclasses.replace(PRESETS["tiny"],
                                                                   activity_levels=64))
    meta_path = root / "truth" / "world.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["activity_levels"] = 8  # as if the preset had 8 levels when it was cached
    meta_path.write_text(json.dumps(meta))
    capsys.readouterr()
    assert resolve_source("synthetic://tiny?seed=2", str(tmp_path)) == str(root)
    again = json.loads(meta_path.read_text())["config"]
    assert again["activity_levels"] == PRESETS["tiny"].activity_levels  # regenerated
    said = capsys.readouterr().out  # and the run's log says why
    assert f"generating synthetic world 'tiny' seed=2 in {root}" in said
    assert "another config of the preset" in said
    assert resolve_source("synthetic://tiny?seed=2", str(tmp_path)) == str(root)
    assert "generating" not in capsys.readouterr().out  # current: reused, silently


# ------------------------------------------------------------------ the conditional posterior

def test_conditional_weights_summed_over_n_are_the_marginal(tiny, rows):
    world = load_world(tiny)
    # early-morning rows keep the Poisson means small enough to sum n exhaustively
    first = rows[(rows["ts"].dt.hour == 0) & (rows["ts"].dt.minute < 20)]
    sample = first.groupby("country").head(3).drop(columns=[N_TODAY]).reset_index(drop=True)
    assert sample["country"].nunique() >= 8
    assert not world.unnormalized_posterior(sample)[1].any()  # no count: no scale
    H = ExposureClock(world.params).exposure(
        (sample["ts"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(),
        pd.Index(world.params.vocab["countries"]).get_indexer(sample["country"]))
    top = float(world.params.base_rate) * world.params.activity_level.max() \
        * world.params.config.power_user_multiplier * H.max()
    n_max = int(poisson.isf(1e-13, top)) + 5  # the tail beyond is < 1e-12
    grid = sample.loc[np.repeat(sample.index, n_max + 1)].reset_index(drop=True)
    grid[N_TODAY] = np.tile(np.arange(n_max + 1), len(sample))
    population = World(tiny, world.params, expected_weights(world.params))
    lucid = np.full(len(grid), "lucid", dtype=object)
    for w_, providers in ((world, None), (world, lucid), (population, None),
                          (population, lucid)):  # the population form has providers too
        w, shift = w_.unnormalized_posterior(grid, providers)
        total = (w * np.exp(shift)[:, None]).reshape(len(sample), n_max + 1, -1).sum(axis=1)
        base = w_.unnormalized_posterior(
            sample, None if providers is None else providers[:len(sample)])[0]
        np.testing.assert_allclose(total, base, rtol=1e-9, atol=0)


def test_population_label_posterior_factors_through_the_label_tables(tiny, rows):
    # World.population() sums a class's users first and applies P(labelled, label | class)
    # after; the same World on the full (P, ..., label) tables must give the same posteriors
    world = load_world(tiny)
    population, full = world.population(), World(tiny, world.params,
                                                 expected_weights(world.params))
    assert population.LC is not None and full.LC is None and world.LC is None
    flag, threshold = _day_flags(rows)
    sample = rows.assign(is_power_user=flag).groupby("country").head(25)
    cty = pd.Index(world.params.vocab["countries"]).get_indexer(sample["country"])
    p = np.arange(len(sample)) % len(world.params.vocab["providers"])  # several providers
    ok = world.params.coverage[p, cty] > 0  # rows whose provider labels the row's country
    sample = sample[ok].reset_index(drop=True)
    providers = np.asarray(world.params.vocab["providers"], dtype=object)[p[ok]]
    assert len(set(providers)) > 1 and sample["country"].nunique() >= 5
    for df, thr in ((sample, None), (sample.drop(columns=[N_TODAY]), None),
                    (sample, threshold)):
        got = population.label_posterior(df, providers, power_threshold=thr)
        want = full.label_posterior(df, providers, power_threshold=thr)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
        realised = world.label_posterior(df, providers, power_threshold=thr)
        assert np.abs(realised - got).max() > 1e-3  # the realised labels are not the tables'


def test_gauge_posteriors_are_the_two_posteriors_in_one_pass(tiny, rows):
    world = load_world(tiny)
    sample = rows.groupby("country").head(25)
    cty = pd.Index(world.params.vocab["countries"]).get_indexer(sample["country"])
    p = np.arange(len(sample)) % len(world.params.vocab["providers"])
    ok = world.params.coverage[p, cty] > 0
    sample = sample[ok].reset_index(drop=True)
    providers = np.asarray(world.params.vocab["providers"], dtype=object)[p[ok]]
    for w in (world, world.population()):
        for df in (sample, sample.drop(columns=[N_TODAY])):  # with and without the count
            truth, label = w.gauge_posteriors(df, providers)
            np.testing.assert_allclose(truth, w.posterior(df, providers), rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(label, w.label_posterior(df, providers), rtol=1e-12,
                                       atol=1e-15)
            assert np.abs(truth - label).max() > 1e-3  # two different posteriors
    providers[0] = None  # every gauge row has its provider: a null one is named
    with pytest.raises(ValueError, match="providers"):
        world.gauge_posteriors(sample, providers)


def _local_day_exposure(world, df: pd.DataFrame) -> np.ndarray:
    """A WRONG H: exposure since LOCAL midnight (what a local-day counter would need)."""
    clock = ExposureClock(world.params)
    cty = pd.Index(world.params.vocab["countries"]).get_indexer(df["country"])
    t = (df["ts"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
    off = 60.0 * geo.local_offset_minutes(t.astype(np.int64), df["country"].to_numpy(object),
                                          df["geo_region"].to_numpy(object),
                                          geo.OffsetTable.from_json(world.params.offsets))
    local_midnight = np.floor((t + off) / DAY) * DAY - off
    since_utc = clock.exposure(t, cty)
    at_mid = clock.exposure(local_midnight, cty)
    day_end = clock.exposure(np.floor(local_midnight / DAY) * DAY + DAY - 1e-6, cty)
    same_day = (np.floor(local_midnight / DAY) == np.floor(t / DAY))[:, None, None]
    return np.where(same_day, since_utc - at_mid, since_utc + day_end - at_mid)


class _FixedExposure:
    def __init__(self, H: np.ndarray):
        self.H = H

    def exposure(self, t: np.ndarray, country: np.ndarray) -> np.ndarray:
        assert len(t) == len(self.H)
        return self.H


def _exposure_of(world, df: pd.DataFrame) -> np.ndarray:
    return ExposureClock(world.params).exposure(
        (df["ts"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(),
        pd.Index(world.params.vocab["countries"]).get_indexer(df["country"]))


def test_conditional_posterior_is_calibrated_per_bin_of_n_and_wrong_exposures_fail(
        tiny, replicates):
    world = load_world(tiny)
    df = replicates
    y, n, day = df["y"].to_numpy(), df[N_TODAY].to_numpy(), df["day"].to_numpy()
    p = world.posterior(df)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    assert _calibration_t(p, y, n, day) < 4.5
    H = _exposure_of(world, df)
    wrong = {"no class dependence": np.broadcast_to(H.mean(axis=2, keepdims=True), H.shape),
             "local day": _local_day_exposure(world, df)}
    for name, bad in wrong.items():
        world._exposure = _FixedExposure(bad)
        assert _calibration_t(world.posterior(df), y, n, day) > 6.0, name
    world._exposure = _FixedExposure(H)
    np.testing.assert_allclose(world.posterior(df), p, rtol=1e-6)  # float seconds agree


def test_exposure_gives_the_generators_counts_per_user_and_day(tiny, replicates):
    """N(before τ) of each user and day is Poisson(a_u H(τ)), independent across users/days."""
    params = load_world(tiny).params
    users = build_users(params)
    n_users = len(users.cls)
    end = dt.date.fromisoformat(params.config.end_date)
    day_start = np.array([(end - dt.timedelta(days=k) - dt.date(1970, 1, 1)).days * DAY
                          for k in range(REPLICATE_DAYS)], dtype=np.float64)
    u = np.tile(np.arange(n_users), REPLICATE_DAYS)
    key = pd.MultiIndex.from_arrays([np.repeat(np.arange(REPLICATE_DAYS), n_users),
                                     np.asarray(users.ids.to_pylist(), dtype=object)[u]])
    clock = ExposureClock(params)
    z = {"right": [], "no class dependence": []}
    for cut_hour in (6, 12, 18):
        H = clock.exposure(np.repeat(day_start, n_users) + cut_hour * 3600, users.country[u])
        seen = replicates[replicates["ts"].dt.hour < cut_hour].groupby(["day", "user_id"]).size()
        N = seen.reindex(key, fill_value=0).to_numpy()
        s = users.power[u].astype(int)
        for name, h in (("right", H), ("no class dependence", H.mean(axis=2, keepdims=True))):
            mean = users.activity[u] * h[np.arange(len(u)), s, users.cls[u] if h.shape[2] > 1
                                         else 0]
            for c in np.unique(users.cls):
                m = users.cls[u] == c
                z[name].append(abs(N[m].sum() - mean[m].sum()) / np.sqrt(mean[m].sum()))
    assert max(z["right"]) < 4.5 and max(z["no class dependence"]) > 6.0, \
        {k: max(v) for k, v in z.items()}


def test_count_helps_most_on_power_users(tiny, rows):
    world = load_world(tiny)
    y, power = rows["y"].to_numpy(), rows["power"].to_numpy()
    cond, marg = world.posterior(rows), world.posterior(rows.drop(columns=[N_TODAY]))
    assert _log_loss(cond[power], y[power]) < _log_loss(marg[power], y[power]) - 0.05
    assert _log_loss(cond, y) < _log_loss(marg, y)


def _latest_labels(root: str, provider: str) -> pd.Series:
    """Each labelled user's latest label (AgeGender index) from ``provider``."""
    labels = pd.read_parquet(f"{root}/labels/provider={provider}")
    latest = labels.sort_values("observed_date").groupby("user_id").tail(1)
    bucket = np.where(latest["age"].notna(), age_to_bucket(latest["age"].fillna(0)),
                      pd.Index(age_bucket_labels()).get_indexer(latest["age_bucket"]))
    n_age = len(age_bucket_labels())
    return pd.Series((latest["gender"] == "M").to_numpy() * n_age + bucket,
                     index=latest["user_id"].to_numpy())


def test_label_posterior_given_the_count_is_calibrated(tiny, replicates):
    world = load_world(tiny)
    label = _latest_labels(tiny, "lucid")
    df = replicates[replicates["user_id"].isin(label.index)].reset_index(drop=True)
    y, n, day = label.loc[df["user_id"]].to_numpy(), df[N_TODAY].to_numpy(), df["day"].to_numpy()
    providers = np.full(len(df), "lucid", dtype=object)
    q = world.label_posterior(df, providers)
    np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-12)
    assert _calibration_t(q, y, n, day) < 4.5
    marginal = world.label_posterior(df.drop(columns=[N_TODAY]), providers)
    assert _log_loss(q, y) < _log_loss(marginal, y) - 0.05
    # the dated (drift) form goes through the conditional posterior too
    dated = world.label_posterior(df.head(50), providers[:50],
                                  dates=np.full(50, world.params.vocab["label_dates"][-1]))
    np.testing.assert_allclose(dated.sum(axis=1), 1.0, atol=1e-12)


def test_counts_are_checked_and_older_worlds_refuse_them(tiny, rows):
    world = load_world(tiny)
    with pytest.raises(ValueError, match=N_TODAY):
        world.posterior(rows.head(3).assign(**{N_TODAY: [0, -1, 2]}))
    with pytest.raises(ValueError, match=N_TODAY):
        world.posterior(rows.head(3).assign(**{N_TODAY: [0, None, 2]}))
    world.RN = None  # what load_world gives for a world written before activity levels
    with pytest.raises(ValueError, match="predates activity levels"):
        world.posterior(rows.head(3))
    assert world.posterior(rows.head(3).drop(columns=[N_TODAY])).shape == (3, 12)


def test_presets_all_have_levels():
    """The demo and scale worlds have enough levels that the posterior does not read a heavy
    user's class off the comb of levels (32 = the continuous lognormal's, docs/new-users.md);
    the test worlds keep 16."""
    levels = {name: cfg.activity_levels for name, cfg in PRESETS.items()}
    assert levels == {"tiny": 16, "default": 32, "skewed": 16, "large": 32}


# ------------------------------------------------------------------ the observed power-user flag

def _day_flags(df: pd.DataFrame, quantile: float = 0.9) -> tuple[np.ndarray, float]:
    """The pipeline's flag: the user's UTC day has more impressions than the quantile of the
    per-user-day totals (like etl.splits.power_user_threshold)."""
    key = [df["user_id"], df["ts"].dt.floor("D")] + ([df["day"]] if "day" in df else [])
    totals = df.groupby(key)["user_id"].transform("size").to_numpy()
    threshold = float(np.quantile(df.groupby(key).size().to_numpy(), quantile))
    return totals > threshold, threshold


def test_flag_weights_split_the_unflagged_weights_exactly(tiny, rows):
    world = load_world(tiny)
    flag, threshold = _day_flags(rows)
    sample = rows.groupby("country").head(20).reset_index(drop=True)
    for df in (sample, sample.drop(columns=[N_TODAY])):
        base, base_shift = world.unnormalized_posterior(df)
        parts = [world.unnormalized_posterior(df.assign(is_power_user=f), None, threshold)
                 for f in (True, False)]
        total = sum(w * np.exp(s - base_shift)[:, None] for w, s in parts)
        np.testing.assert_allclose(total, base, rtol=1e-9, atol=1e-300)
    with pytest.raises(ValueError, match="is_power_user"):
        world.posterior(sample, power_threshold=threshold)


def test_posterior_given_the_flag_is_calibrated_on_both_slices(tiny, replicates):
    world = load_world(tiny)
    df = replicates.assign(is_power_user=_day_flags(replicates)[0])
    flag, threshold = df["is_power_user"].to_numpy(), _day_flags(replicates)[1]
    y, n, day = df["y"].to_numpy(), df[N_TODAY].to_numpy(), df["day"].to_numpy()
    without_n = df.drop(columns=[N_TODAY])
    # bins of n only where the posterior is given n (it is not calibrated within bins of a
    # count it does not see)
    for given, bins in ((df, n), (without_n, np.zeros_like(n))):
        p = world.posterior(given, power_threshold=threshold)
        unflagged = world.posterior(given)
        t = [_calibration_t(p[m], y[m], bins[m], day[m]) for m in (flag, ~flag)]
        # the slice is selected by the day's total, which the row's features alone miss
        t_unflagged = _calibration_t(unflagged[flag], y[flag], bins[flag], day[flag])
        assert max(t) < 4.5 and t_unflagged > 6.0, (N_TODAY in given, t, t_unflagged)
