"""The population gauge (issue 15): the population posterior's expected user and label tables
(synth/activity.py) against a large draw, its scores streamed on the same rows as the
realised posterior's (evaluate/stream.py) against the in-memory computation, and the gauge
tables built from both (evaluate/gauge.py)."""
from __future__ import annotations

import dataclasses
import io
import itertools
import math

import numpy as np
import pandas as pd
import pytest

from pythia.evaluate.gauge import (GAUGE_SLICES, build_gauge, gauge_by_slice, population_of,
                                   print_gauge_slices, with_ses)
from pythia.evaluate.margins import MIN_USER_GROUPS, user_groups
from pythia.evaluate.stream import score_streaming
from pythia.features import (IS_POWER_USER, LABEL_PROVIDER, TARGETS, TEST_NATURAL,
                              USER_HELD_OUT, marginals_from_joint)
from pythia.synth.activity import expected_weights, latest_label_matrix
from pythia.synth.population import build_labels, build_users, realised_weights
from pythia.synth.world import WorldConfig, build_params
from test_evaluate import EDGES, FakeWorld
from test_evaluate_stream import KEYS, in_memory, tiny  # noqa: F401 (module fixture)


# ---------------------------------------------------------------- the expected tables

def test_expected_label_tables_match_a_large_draw():
    params = build_params(WorldConfig(n_users=60_000, n_sites=100), seed=1)
    users = build_users(params)
    real = realised_weights(params, users, build_labels(params, users))
    exp = expected_weights(params)
    assert {k: v.shape for k, v in exp.items()} == {k: v.shape for k, v in real.items()}
    # the latest label given the true class, per provider, country and class
    a = real["RNL"].sum(axis=(1, 2, 5)).astype(float)  # (P, country, class, label)
    b = exp["RNL"].sum(axis=(1, 2, 5))
    n = a.sum(axis=-1, keepdims=True)
    pa_, pb = a / n, b / b.sum(axis=-1, keepdims=True)
    ok = (pb > 0.02) & (n >= 30)
    z = (pa_ - pb)[ok] / np.sqrt(pb * (1 - pb) / n)[ok]
    assert 0.7 < np.mean(z ** 2) < 1.4, np.mean(z ** 2)  # binomial noise, no bias
    # coverage: labelled users over users, per provider and country
    users_per = real["RN"].sum(axis=(0, 1, 3, 4)).astype(float)  # (country,)
    cov_real = a.sum(axis=(2, 3)) / users_per
    cov_exp = b.sum(axis=(2, 3)) / exp["RN"].sum(axis=(0, 1, 3, 4))
    se = np.sqrt(cov_exp * (1 - cov_exp) / users_per)
    assert np.all(np.abs(cov_real - cov_exp) < 5 * se)
    np.testing.assert_allclose(exp["RP"], exp["RL"].sum(axis=-1))
    # activity-weighted tables agree with the counts on the total (mean activity kept)
    assert real["RP"].sum() == pytest.approx(exp["RP"].sum(), rel=0.05)


def test_latest_label_is_a_mixture_of_the_days_confusions():
    params = build_params(WorldConfig(n_users=2000, n_sites=50), seed=2)
    m = latest_label_matrix(params)
    np.testing.assert_allclose(m.sum(axis=-1), 1.0, atol=1e-12)
    conf = params.confusion
    # each entry lies between the days' smallest and largest
    assert np.all(m >= conf.min(axis=2) - 1e-12) and np.all(m <= conf.max(axis=2) + 1e-12)
    # no extra observations: one day, uniform, so the days' plain mean
    one = dataclasses.replace(params, config=dataclasses.replace(params.config,
                                                                 extra_observations=0.0))
    np.testing.assert_allclose(latest_label_matrix(one), conf.mean(axis=2), atol=1e-12)
    # many: the latest day is almost always the last
    many = dataclasses.replace(params, config=dataclasses.replace(params.config,
                                                                  extra_observations=50.0))
    np.testing.assert_allclose(latest_label_matrix(many), conf[:, :, -1], atol=1e-6)


# ---------------------------------------------------------------- streamed on the same rows

class PopulationWorld(FakeWorld):
    """A fake world with a population form: its q shrunk towards uniform (less sharp)."""

    def population(self) -> FakeWorld:
        k = len(next(iter(self.q.values())))
        return FakeWorld({i: 0.6 * q + 0.4 / k for i, q in self.q.items()}, self._truth)


def test_streamed_population_scores_equal_the_in_memory_ones(tiny):  # noqa: F811
    candidates, manifest, fake = tiny
    world = PopulationWorld(fake.q, fake.truth())
    got = score_streaming(candidates, manifest, EDGES, world, bucket_rows=97).metrics
    # in memory, with the population form as the only posterior: its "bayes_*" figures
    want, _, _ = in_memory(candidates, manifest, world.population())
    for ours, theirs in (("population_log_loss", "bayes_log_loss"),
                         ("population_macro_f1", "bayes_macro_f1")):
        a = got[got["metric"] == ours].drop(columns="metric")
        b = want[want["metric"] == theirs].drop(columns="metric")
        keys = [k for k in KEYS if k != "metric"]
        merged = a.merge(b, on=keys, how="outer", suffixes=("", "_want"), indicator=True)
        assert (merged["_merge"] == "both").all() and len(merged) > 50
        np.testing.assert_allclose(merged["value"], merged["value_want"], rtol=0, atol=1e-9)
    # and the realised gauge is unchanged by it
    plain = score_streaming(candidates, manifest, EDGES, fake, bucket_rows=97).metrics
    assert not plain["metric"].str.startswith("population_").any()
    keep = ~got["metric"].str.startswith("population_")
    pd.testing.assert_frame_equal(got[keep].reset_index(drop=True),
                                  plain.reset_index(drop=True))
    assert population_of(fake) is None and population_of(None) is None


def test_gauge_tables_carry_both_bars(tiny):  # noqa: F811
    candidates, manifest, fake = tiny
    world = PopulationWorld(fake.q, fake.truth())
    metrics = score_streaming(candidates, manifest, EDGES, world).metrics
    g = build_gauge(metrics)
    np.testing.assert_allclose(g["ratio_population"], g["logloss"] / g["population_logloss"])
    between = g["population_logloss"] - g["bayes_logloss"]
    gap = (g["population_logloss"] - g["logloss"]) / between
    np.testing.assert_allclose(g["gap_closed"], gap.where(between > 1e-12))
    assert g["gap_closed"].notna().any() and g["gap_closed"].isna().any()  # undefined: <= 0
    champions = pd.DataFrame({
        "region": ["global", "EU", "NA"], "model": ["mlp", "gbdt", None],
        "candidate_region": ["global", "EU", None], "config_id": pd.array([0, 0, None],
                                                                          dtype="Int64"),
        "blessed": [True, False, False]})
    s = gauge_by_slice(g, champions)
    assert set(s["test_set"]) == set(GAUGE_SLICES)
    assert set(zip(s["eval_region"], s["candidate"])) == {("global", "mlp/global#0"),
                                                         ("EU", "gbdt/EU#0")}
    assert len(s) == 2 * len(GAUGE_SLICES) * 2  # regions x slices x label sources
    row = s[(s["eval_region"] == "EU") & (s["test_set"] == "natural_power_users")
            & (s["label_source"] == "truth")].iloc[0]
    want = g[(g["eval_region"] == "EU") & (g["model"] == "gbdt") & (g["region"] == "EU")
             & (g["test_set"] == "natural_power_users") & (g["label_source"] == "truth")
             & (g["target"] == "gender")].iloc[0]
    assert row["ratio_gender"] == want["ratio"]
    assert row["ratio_population_gender"] == want["ratio_population"]
    out = io.StringIO()
    print_gauge_slices(g, champions, out)
    assert "headline bar" in out.getvalue() and "gbdt/EU#0" in out.getvalue()
    # the in-between gauge off (the default): its all-NaN columns and legend are left out
    assert g["ratio_in_between"].isna().all()
    assert not [c for c in s.columns if c.startswith("ratio_in_between")]
    assert "in-between" not in out.getvalue() and "population posterior" in out.getvalue()
    # a run from before the population gauge: realised ratios only; no world: nothing
    old = gauge_by_slice(g.drop(columns=["population_logloss", "ratio_population"]), champions)
    assert "ratio_age_gender" in old.columns and "ratio_population_age" not in old.columns
    assert gauge_by_slice(None, champions).empty
    out = io.StringIO()
    print_gauge_slices(None, champions, out)
    assert out.getvalue() == ""


# ---------------------------------------------------------------- the ratios' SEs

def _direct_ratio_se(model_loss, ref_loss, users):
    """The delta-method SE of sum(model) / sum(ref), clustered by the rows' user groups,
    computed from the rows."""
    g = user_groups(users)
    r = model_loss.sum() / ref_loss.sum()
    e = np.bincount(g, weights=model_loss - r * ref_loss)
    return float(np.sqrt((e ** 2).sum()) / ref_loss.sum()), len(set(g))


def test_the_gauge_ratios_carry_user_clustered_ses_of_the_rows(tiny):  # noqa: F811
    """``ratio_se`` / ``ratio_population_se`` (provider labels, the natural day's slices, every
    target) equal the SEs computed from the rows, scored in two processes; truth labels and
    the resampled day have none, and a gauge built without the sums has none."""
    candidates, manifest, fake = tiny
    world = PopulationWorld(fake.q, fake.truth())
    scored = score_streaming(candidates, manifest, EDGES, world, bucket_rows=97, workers=2)
    g = build_gauge(scored.metrics, scored.sums.groups)
    nat = pd.read_parquet(manifest["paths"][TEST_NATURAL])
    k, n_age = 2 * len(EDGES), len(EDGES)

    def probs(joint_probs, target):
        return marginals_from_joint(joint_probs, n_age)[target]

    def loss(p, y):
        return -np.log(p[np.arange(len(y)), y])

    masks = {"natural": np.ones(len(nat), bool), "natural_power_users": nat[IS_POWER_USER],
             "natural_no_power_users": ~nat[IS_POWER_USER], "natural_new_users":
             nat[USER_HELD_OUT]}
    checked = 0
    for model, region, mix in (("gbdt", "global", 0.5), ("gbdt", "EU", 0.3)):
        for (test_set, mask), target in itertools.product(masks.items(), TARGETS):
            rows = nat[np.asarray(mask) & ((nat["region"] == "EU") | (region == "global"))
                       & nat[f"y_{target}"].notna()]  # one row has no gender label
            y = rows[f"y_{target}"].to_numpy(np.int64)
            providers = rows[LABEL_PROVIDER].to_numpy()
            real = world.label_posterior(rows, providers)
            m = loss(probs((1 - mix) * real + mix / k, target), y)
            row = g[(g["model"] == model) & (g["region"] == region)
                    & (g["eval_region"] == region) & (g["test_set"] == test_set)
                    & (g["target"] == target) & (g["label_source"] == "provider")]
            assert len(row) == 1
            row = row.iloc[0]
            assert row["ratio"] == pytest.approx(
                m.mean() / loss(probs(real, target), y).mean(), rel=1e-6)
            population = world.population().label_posterior(rows, providers)
            for column, ref in (("ratio_se", real), ("ratio_population_se", population)):
                se, n_groups = _direct_ratio_se(m, loss(probs(ref, target), y),
                                                rows["user_id"])
                if n_groups >= MIN_USER_GROUPS:
                    # the predictions files hold float32 probabilities
                    assert row[column] == pytest.approx(se, rel=1e-5) and se > 0
                    checked += 1
                else:  # too few users for an SE
                    assert math.isnan(row[column])
    assert checked >= 30
    others = g[(g["label_source"] != "provider") | (g["test_set"] == "resampled")]
    assert others[["ratio_se", "ratio_population_se"]].isna().all().all() and len(others)
    # a copy of the realised posterior (up to float32): ratio 1, SE 0
    mlp = g[(g["model"] == "mlp") & (g["test_set"] == "natural") & (g["eval_region"] == "global")
            & (g["target"] == "gender") & (g["label_source"] == "provider")].iloc[0]
    assert mlp["ratio"] == pytest.approx(1.0) and mlp["ratio_se"] < 1e-6
    # the per-slice table and its print: each SE after its ratio
    champions = pd.DataFrame({"region": ["global"], "model": ["gbdt"],
                              "candidate_region": ["global"],
                              "config_id": pd.array([0], dtype="Int64"), "blessed": [True]})
    s = gauge_by_slice(g, champions)
    ratios = [c for c in s.columns if c.startswith("ratio")]
    assert ratios == [f"{m}{se}_{t}" for m in ("ratio", "ratio_population")
                      for t in ("age", "age_gender", "gender") for se in ("", "_se")]
    se_cols = [c for c in ratios if "_se_" in c]
    assert s.loc[s["label_source"] == "provider", se_cols].notna().all().all()
    assert s.loc[s["label_source"] == "truth", se_cols].isna().all().all()
    out = io.StringIO()
    print_gauge_slices(g, champions, out)
    text = out.getvalue()
    assert "± its SE, clustered by user (provider labels)" in text and "_se_" not in text
    shown = with_ses(s)  # each ratio with its SE as text; the ratio alone without one
    nat = s[(s["test_set"] == "natural") & (s["label_source"] == "provider")].index[0]
    r, se = s.loc[nat, "ratio_population_age_gender"], s.loc[nat, "ratio_population_se_age_gender"]
    assert shown.loc[nat, "ratio_population_age_gender"] == f"{r:.4f} ± {se:.4f}"
    assert f"{r:.4f} ± {se:.4f}" in text
    truth = s[(s["test_set"] == "natural") & (s["label_source"] == "truth")].index[0]
    assert shown.loc[truth, "ratio_age"] == f"{s.loc[truth, 'ratio_age']:.4f}"
    assert not [c for c in shown.columns if "_se_" in c]
    assert with_ses(s, 3).loc[nat, "ratio_age"] == (f"{s.loc[nat, 'ratio_age']:.3f} ± "
                                                    f"{s.loc[nat, 'ratio_se_age']:.3f}")
    # real data (no world): no posterior, so no gauge sums kept; the joint target's test
    # parts (the regional-vs-global margins) stay
    real = score_streaming(candidates, manifest, EDGES, None, bucket_rows=97).sums.groups
    assert not [k for k in real if len(k) == 5] and [k for k in real if len(k) == 3]
    assert len([k for k in scored.sums.groups if len(k) == 5 and k[3] == "model"]) > 20
    # without the sums (an older run's gauge): no SE columns in the table
    plain = build_gauge(scored.metrics)
    assert plain["ratio_se"].isna().all()
    assert not [c for c in gauge_by_slice(plain, champions).columns if "_se_" in c]
