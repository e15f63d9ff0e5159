"""The champion rule's noise test (evaluate/margins.py): paired, user-clustered validation
margins streamed as per-user-group sums equal the in-memory computation, and a champion is
blessed only when it beats every baseline by more than z_min standard errors."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pythia.config import DeployConfig, RunParams, read_deploy_config
from pythia.evaluate.champions import choose_bundle_models, select_champions
from pythia.evaluate.io import importance_weights
from pythia.evaluate.margins import (GroupSums, Margin, margin_lookup, paired_margin,
                                     ratio_se, row_ratio_se, user_groups)
from pythia.evaluate.stats import row_log_loss
from pythia.evaluate.stream import score_streaming
from pythia.features import age_gender_index
from test_evaluate import prediction_rows

EDGES = (18, 35, 55)
N_AGE = len(EDGES)
K = 2 * N_AGE
BASE = ("logreg", "class_prior")


# ---------------------------------------------------------------- streamed == in memory

def _user_rows(seed: int = 0):
    """Validation and test rows as a user's pipeline would leave them: several rows per user,
    three countries in two regions (one user travels between them), skewed classes, a null
    user id, string ids, pandas nullable label columns."""
    rng = np.random.default_rng(seed)
    n_users, frames = 70, {}
    home = rng.choice(["DE", "FR", "US"], n_users, p=[0.5, 0.2, 0.3])
    for split in ("validation", "test_natural", "test_resampled"):
        n = 900
        u = np.minimum(rng.geometric(0.04, n) - 1, n_users - 1)  # a few heavy users
        country = home[u].copy()
        country[u == 0] = rng.choice(["DE", "US"], int((u == 0).sum()))  # u0 travels
        y_ag = rng.choice(K, n, p=[0.4, 0.25, 0.15, 0.1, 0.07, 0.03])
        yg, ya = y_ag // N_AGE, y_ag % N_AGE
        users = pd.Series([f"user-{i:04d}" for i in u], dtype=object)
        users[rng.random(n) < 0.02] = None  # a row the id graph could not resolve
        frames[split] = pd.DataFrame({
            "impression_id": [f"{split[:4]}-{i}" for i in range(n)], "user_id": users,
            "country": country, "region": np.where(country == "US", "NA", "EU"),
            "is_power_user": pd.array(u < 2, dtype="boolean"),
            "y_gender": pd.array(yg, dtype="Int32"), "y_age": pd.array(ya, dtype="Int32"),
            "y_age_gender": pd.array(age_gender_index(yg, ya, N_AGE), dtype="Int32"),
            "label_provider": "acme", "date": "2024-01-05", "split": split})
    return frames


def write_split_parts(root, frames, rates: dict, pandas_fraction: int = 2) -> dict:
    """Each split as two Parquet parts (pandas writes the first 1/``pandas_fraction`` of its
    rows, pyarrow the rest); returns the split manifest with the validation day's ``rates``."""
    paths = {}
    for split, df in frames.items():
        (root / split).mkdir(parents=True)
        cut = len(df) // pandas_fraction
        df.iloc[:cut].to_parquet(root / split / "part-0.parquet", index=False)
        pq.write_table(pa.Table.from_pandas(df.iloc[cut:], preserve_index=False),
                       root / split / "part-1.parquet")
        paths[split] = str(root / split)
    return {"paths": paths, "resample_target": "age_gender", "rates": {"validation": rates}}


def write_candidates(root, frames, candidates, seed: int = 1, rates: dict | None = None,
           pandas_fraction: int = 2, sharpness=None):
    """Splits as two Parquet parts each (pandas writes one, pyarrow the other), and each
    candidate's predictions (regional ones: their region's rows only). A candidate is
    (model, region, sharp, is_baseline); its logits are sharp x one-hot(label) + noise, with
    ``sharpness(sharp, split, df)`` (per row) in place of ``sharp`` when given."""
    rng = np.random.default_rng(seed)
    manifest = write_split_parts(root, frames, rates or {"0": 0.25, "1": 0.5, "5": 1.0},
                                 pandas_fraction)
    out = []
    for model, region, sharp, is_base in candidates:
        rows = []
        for split, df in frames.items():
            if region != "global":
                df = df[df["region"] == region]
            s = sharp if sharpness is None else sharpness(sharp, split, df)
            logits = s * np.eye(K)[df["y_age_gender"].to_numpy(int)] + rng.normal(
                0, 1, (len(df), K))
            joint = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            rows.append(prediction_rows(df, split, region, joint))
        path = root / f"{model}_{region}.parquet"
        pq.write_table(pa.Table.from_pandas(pd.concat(rows, ignore_index=True),
                                            preserve_index=False), path)
        out.append({"model": model, "region": region, "config_id": 0,
                    "predictions_uri": str(path), "is_baseline": is_base,
                    "val_logloss": {"age_gender": 1.0}})
    return manifest, out


def _in_memory(frames, manifest, cand, region):
    """Per validation row of ``region``: weight, user and the candidate's log-loss."""
    df = frames["validation"]
    df = df if region == "global" else df[df["region"] == region]
    p = pq.read_table(cand["predictions_uri"]).to_pandas()
    p = p[p["split"] == "validation"].set_index("impression_id").loc[df["impression_id"]]
    y = df["y_age_gender"].to_numpy(int)
    w = importance_weights(y, manifest, "validation", N_AGE)
    ll = row_log_loss(y, np.stack(p["p_age_gender"].to_numpy()))
    return w, df["user_id"].to_numpy(object), ll


def test_streamed_margins_equal_the_in_memory_computation(tmp_path):
    frames = _user_rows()
    manifest, cands = write_candidates(tmp_path, frames, [
        ("mlp", "global", 2.0, False), ("logreg", "global", 1.0, True),
        ("mlp", "EU", 2.5, False)])
    scored = score_streaming(cands, manifest, EDGES, bucket_rows=250)  # several buckets
    margin = margin_lookup(scored.sums.groups)
    m = scored.metrics
    for a, b, region in [(0, 1, "global"), (0, 1, "EU"), (0, 1, "NA"), (2, 0, "EU")]:
        w, users, ll_a = _in_memory(frames, manifest, cands[a], region)
        _, _, ll_b = _in_memory(frames, manifest, cands[b], region)
        key = lambda c: (c["model"], c["region"], 0)  # noqa: E731
        got = margin(key(cands[a]), key(cands[b]), region)
        # a direct pandas computation, clustered by user group (what the stream can keep)
        d = ll_a - ll_b
        mean = (w * d).sum() / w.sum()
        per_group = pd.Series(w * (d - mean)).groupby(user_groups(users)).sum()
        assert got.diff == pytest.approx(mean, abs=1e-9)
        assert got.se == pytest.approx(np.sqrt((per_group ** 2).sum()) / w.sum(), abs=1e-9)
        ref = paired_margin(d, w, user_groups(users))  # the scripts' function, same clusters
        assert (got.diff, got.se) == pytest.approx((ref.diff, ref.se), abs=1e-9)
        # clustered by user id instead: the same but where two users share a group
        by_user = paired_margin(d, w, users)
        assert by_user.diff == pytest.approx(got.diff, abs=1e-12)
        assert by_user.se == pytest.approx(got.se, rel=0.25)
        # and the mean is the difference of the two natural-weighted validation log-losses
        nat = m[(m["metric"] == "log_loss_natural") & (m["eval_region"] == region)
                & (m["target"] == "age_gender") & (m["test_set"] == "validation")]
        val = {(r.model, r.region): r.value for r in nat.itertuples()}
        assert got.diff == pytest.approx(val[(cands[a]["model"], cands[a]["region"])]
                                         - val[(cands[b]["model"], cands[b]["region"])],
                                         abs=1e-9)
    # a regional candidate has no sums outside its region; different rows are refused
    assert margin(("mlp", "EU", 0), ("logreg", "global", 0), "NA") is None
    eu, glob = scored.sums.groups[(("mlp", "EU", 0), "EU")], scored.sums.groups[
        (("mlp", "global", 0), "global")]
    assert "not scored on the same rows" in eu.margin_against(glob).note


def test_user_groups_are_stable_and_spread():
    ids = pd.Series([f"u{i}" for i in range(5000)])
    g = user_groups(ids)
    np.testing.assert_array_equal(g, user_groups(ids.to_numpy(object)))  # any container
    assert g.min() >= 0 and g.max() < 1024 and len(np.unique(g)) > 900
    # the same id gives the same group whatever its batch; a null is a group of its own
    assert user_groups(["u7", None])[0] == g[7]
    assert user_groups([None])[0] == user_groups([None, "u1"])[0]


# ---------------------------------------------------------------- the rule

def _sums(rows_by_candidate, y, users, w=None):
    """GroupSums per candidate on one region, from per-row probabilities."""
    g = user_groups(users)
    out = {}
    for key, p in rows_by_candidate.items():
        s = GroupSums()
        s.add(g, y, p, w)
        out[(key, "EU")] = s
    return out


def _scores_from(groups):
    """The champion scores table, each candidate's val_logloss from the same sums."""
    rows = [{"eval_region": region, "model": key[0], "candidate_region": key[1],
             "config_id": key[2], "model_dir": f"/m/{key[0]}", "eligible": True,
             "ineligible_reason": None, "val_logloss": s.loss.sum() / s.weight.sum()}
            for (key, region), s in groups.items()]
    return pd.DataFrame(rows)


def _probs(y, sharp, rng, noise=1.0):
    logits = sharp * np.eye(K)[y] + rng.normal(0, noise, (len(y), K))
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def _decide(groups, z_min=2.0):
    return select_champions(_scores_from(groups), ["EU"], baseline_models=BASE,
                            reference_models=("class_prior",), margins=margin_lookup(groups),
                            z_min=z_min).iloc[0]


def test_a_clear_winner_is_blessed_and_the_reason_says_by_how_much():
    rng = np.random.default_rng(0)
    y = rng.choice(K, 3000, p=[0.4, 0.25, 0.15, 0.1, 0.07, 0.03])
    users = [f"u{i // 3}" for i in range(3000)]
    prior = np.tile(np.bincount(y, minlength=K) / len(y), (len(y), 1))
    groups = _sums({("mlp", "global", 0): _probs(y, 1.5, rng),
                    ("logreg", "global", 0): _probs(y, 0.5, rng),
                    ("class_prior", "global", 0): prior}, y, users)
    row = _decide(groups)
    assert row["blessed"] and row["champion"] == "mlp/global#0"
    margin = margin_lookup(groups)
    z = {b: margin(("mlp", "global", 0), (b, "global", 0), "EU").z for b in BASE}
    assert row["margin_vs"] == f"mlp/global#0 vs {max(z, key=z.get)}/global#0"  # closest
    assert row["margin_z"] == max(z.values()) < -2
    closest = groups[((max(z, key=z.get), "global", 0), "EU")]
    assert row["margin_diff"] == pytest.approx(
        (groups[(("mlp", "global", 0), "EU")].loss.sum() - closest.loss.sum()) / 3000,
        abs=1e-12)
    assert "beats every baseline by more than 2 SE" in row["reason"] and row["warning"] is None


def test_a_winner_by_less_than_z_min_standard_errors_is_not_blessed():
    rng = np.random.default_rng(1)
    y = rng.choice(K, 2000, p=[0.4, 0.25, 0.15, 0.1, 0.07, 0.03])
    users = [f"u{i // 4}" for i in range(2000)]
    # two models of the same quality, each with noise of its own: one wins by luck
    one, other = _probs(y, 0.8, rng), _probs(y, 0.8, rng)
    groups = _sums({("mlp", "global", 0): one, ("logreg", "global", 0): other}, y, users)
    if _scores_from(groups).sort_values("val_logloss").iloc[0]["model"] != "mlp":
        groups = _sums({("mlp", "global", 0): other, ("logreg", "global", 0): one}, y, users)
    row = _decide(groups)
    assert not row["blessed"] and row["champion"] is None and row["model"] == "mlp"
    assert -2 < row["margin_z"] < 0
    assert row["reason"].startswith("NOT BLESSED (noise rule, z_min 2)")
    for figure in (f"{row['margin_diff']:+.4f}", f"{row['margin_se']:.4f}",
                   f"z {row['margin_z']:+.2f}"):
        assert figure in row["reason"] and figure in row["warning"]
    assert row["warning"].startswith("NOT CLEARLY BETTER THAN THE BASELINES in EU")
    # the point-estimate rule (z_min 0) blesses the same numbers: the knob is the only change
    assert _decide(groups, z_min=0)["blessed"]
    # not blessed: the slot goes where it goes when a baseline wins (here the global one:
    # no previous champion, so the best global baseline)
    champions = _decide(groups).to_frame().T.assign(region="global")
    chosen = choose_bundle_models(champions, [
        {"model": "mlp", "region": "global", "model_dir": "/m/mlp",
         "val_logloss": {"age_gender": 1.0}},
        {"model": "logreg", "region": "global", "model_dir": "/m/logreg",
         "val_logloss": {"age_gender": 1.1}}], {}, "DemoFlow/1", BASE)
    assert chosen == [{"region": "global", "model": "logreg", "model_dir": "/m/logreg",
                       "source": "fallback", "blessed_in": None, "blessed_date": None,
                       "user_split": None, "age_edges": None}]


def test_standard_errors_are_clustered_by_user():
    rng = np.random.default_rng(2)
    n = 4000
    few = np.repeat(np.arange(40), n // 40)  # 40 users of 100 rows each
    # per-row differences with a per-user effect: a user's rows move together
    d = 0.02 + rng.normal(0, 0.15, 40)[few] + rng.normal(0, 0.3, n)
    w = rng.choice([1.0, 4.0], n)
    clustered = paired_margin(d, w, few)
    distinct = paired_margin(d, w, np.arange(n))
    assert clustered.diff == pytest.approx(distinct.diff)
    assert clustered.se > 2 * distinct.se
    # the rule sees it: the model is better for some users and worse for others; the same
    # predictions are a clear win when every row is a user of its own, noise for 40 users
    y = rng.choice(K, n)
    logits = 0.5 * np.eye(K)[y] + rng.normal(0, 1, (n, K))
    skill = rng.normal(0.15, 0.8, 40)[few]  # the model's extra logit on the right class
    soft = lambda z: np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)  # noqa: E731
    preds = {("mlp", "global", 0): soft(logits + skill[:, None] * np.eye(K)[y]),
             ("logreg", "global", 0): soft(logits)}
    as_40 = _decide(_sums(preds, y, [f"u{i}" for i in few]))
    as_rows = _decide(_sums(preds, y, [f"u{i}" for i in range(n)]))
    assert as_40["margin_diff"] == pytest.approx(as_rows["margin_diff"])
    assert as_40["margin_diff"] < 0
    assert as_40["margin_se"] > 2 * as_rows["margin_se"]
    assert not as_40["blessed"] and as_rows["blessed"]


def test_ties_go_to_the_baseline_and_a_clear_baseline_win_still_wins():
    rng = np.random.default_rng(4)
    y = rng.choice(K, 1500)
    users = [f"u{i}" for i in range(1500)]
    same = _probs(y, 0.7, rng)
    tie = _decide(_sums({("mlp", "global", 0): same, ("logreg", "global", 0): same.copy()},
                        y, users), z_min=0)
    assert not tie["blessed"] and tie["model"] == "logreg"
    assert tie["margin_diff"] == 0 and tie["margin_se"] == 0 and math.isnan(tie["margin_z"])
    lost = _decide(_sums({("mlp", "global", 0): _probs(y, 0.2, rng),
                          ("logreg", "global", 0): _probs(y, 1.5, rng)}, y, users))
    assert not lost["blessed"] and lost["model"] == "logreg" and lost["margin_z"] > 2
    assert lost["warning"].startswith("NO MODEL BEATS THE BASELINES in EU")


def test_too_few_users_for_a_standard_error_is_not_blessed_unless_z_min_is_0():
    rng = np.random.default_rng(5)
    y = rng.choice(K, 1000)
    users = [f"u{i % 5}" for i in range(1000)]  # 5 users: no honest SE
    groups = _sums({("mlp", "global", 0): _probs(y, 2.0, rng),
                    ("logreg", "global", 0): _probs(y, 0.2, rng)}, y, users)
    row = _decide(groups)
    assert not row["blessed"] and math.isnan(row["margin_se"]) and row["margin_diff"] < 0
    assert "only 5 user group(s) with rows, fewer than 20: no standard error" in row["reason"]
    assert _decide(groups, z_min=0)["blessed"]


def test_without_margins_only_z_min_0_decides():
    s = pd.DataFrame([{"eval_region": "EU", "model": m, "candidate_region": "EU",
                       "config_id": 0, "model_dir": "/m", "eligible": True,
                       "ineligible_reason": None, "val_logloss": ll}
                      for m, ll in (("mlp", 1.0), ("logreg", 1.2))])
    with pytest.raises(ValueError, match="z_min"):
        select_champions(s, ["EU"], baseline_models=BASE)
    with pytest.raises(ValueError, match="z_min"):
        select_champions(s, ["EU"], baseline_models=BASE, z_min=-1, margins=lambda *a: None)
    row = select_champions(s, ["EU"], baseline_models=BASE, z_min=0).iloc[0]
    assert row["blessed"] and "noise test off (z_min 0)" in row["reason"]
    # margins that cannot pair the two (e.g. rows without user ids): not blessed, says so
    row = select_champions(s, ["EU"], baseline_models=BASE, z_min=2,
                           margins=lambda *a: None).iloc[0]
    assert not row["blessed"] and "no paired sums" in row["reason"]


def test_margin_z_is_undefined_without_a_standard_error():
    assert math.isnan(Margin(-0.1, math.nan, 3, "few").z)
    assert math.isnan(Margin(0.0, 0.0, 30).z) and Margin(-0.2, 0.1, 30).z == pytest.approx(-2)


# ---------------------------------------------------------------- the knob

def test_z_min_is_an_evaluate_setting_of_the_deploy_config(tmp_path):
    assert DeployConfig().z_min == 2.0 and RunParams.build(
        {"source": "synthetic://tiny"}, model_names=("mlp",)).z_min == 2.0
    deploy = DeployConfig.from_mapping({"evaluate": {"z_min": 0}})
    assert deploy.z_min == 0.0
    assert RunParams.build({"source": "synthetic://tiny"}, deploy, ("mlp",)).z_min == 0.0
    with pytest.raises(ValueError, match="z_min must be >= 0"):
        DeployConfig.from_mapping({"evaluate": {"z_min": -1}})
    with pytest.raises(ValueError, match="unknown section"):
        DeployConfig.from_mapping({"evalute": {"z_min": 1}})
    from flow_fixtures import REPO
    assert read_deploy_config(str(REPO / "flows" / "pythia.toml")).z_min == 2.0


def test_evaluate_run_applies_the_rule_and_shows_the_margins(tmp_path, capsys):
    from pythia import evaluate

    frames = _user_rows(seed=3)
    manifest, cands = write_candidates(tmp_path, frames, [
        ("mlp", "global", 3.0, False), ("logreg", "global", 1.0, True),
        ("mlp", "EU", 3.2, False), ("class_prior", "global", 0.0, True)])
    out = evaluate.run(cands, manifest, None, EDGES, str(tmp_path / "reports"),
                       baseline_models=evaluate.baseline_models_of(cands), make_figures=False,
                       z_min=2.0)
    c = out["champions"].set_index("region")
    assert c.loc["global", "blessed"] and c.loc["global", "margin_z"] < -2
    assert c.loc["global", "margin_vs"].startswith("mlp/global#0 vs ")
    assert (c["z_min"] == 2.0).all()
    assert "beats every baseline by more than 2 SE" in c.loc["global", "reason"]
    assert "(rule: beats every baseline by more than z_min 2 user-clustered SEs" in (
        capsys.readouterr().out)
    # each regional candidate against its family's global one, on the region's rows
    rvg = out["regional_vs_global"].set_index(["region", "model"]).loc[("EU", "mlp")]
    head = out["headline"]
    val = head[(head["eval_region"] == "EU") & (head["model"] == "mlp")].set_index(
        "candidate_region")["val_logloss"]
    assert rvg["val_diff"] == pytest.approx(val["EU"] - val["global"], abs=1e-9)
    assert rvg["val_se"] > 0 and rvg["val_z"] == pytest.approx(rvg["val_diff"] / rvg["val_se"])
    # the report files keep the figures as numbers
    back = pd.read_parquet(tmp_path / "reports" / "champions.parquet")
    assert back["margin_se"].dtype == np.float64 and np.isfinite(back["margin_se"]).all()


def test_the_alarm_header_names_noise_apart_from_a_baseline_win():
    from pythia import runs

    champions = pd.DataFrame({"region": ["EU", "NA", "APAC"], "warning": [
        "NO MODEL BEATS THE BASELINES in EU: best model mlp/EU#0 2.08 vs logreg/EU#0 2.07",
        "NOT CLEARLY BETTER THAN THE BASELINES in NA (z_min 2): ...", None]})
    lines = runs.baseline_alarm(champions)
    assert lines[1].startswith("WARNING: NO MODEL BEATS THE BASELINES in 1 region(s); NO MODEL "
                               "IS CLEARLY BETTER THAN THE BASELINES in 1 region(s). They are NOT")
    noise_only = runs.baseline_alarm(champions.iloc[1:])
    assert noise_only[1].startswith("WARNING: NO MODEL IS CLEARLY BETTER THAN THE BASELINES in 1")
    assert runs.baseline_alarm(champions.iloc[2:]) == []


# ---------------------------------------------------------------- the gauge's ratio SEs

def _group_sums(loss: np.ndarray, groups: np.ndarray, n_groups: int) -> GroupSums:
    s = GroupSums(n_groups)
    s.rows += np.bincount(groups, minlength=n_groups)
    s.weight += np.bincount(groups, minlength=n_groups).astype(float)
    s.loss += np.bincount(groups, weights=loss, minlength=n_groups)
    return s


def _clustered_losses(rng, n_users: int = 300):
    """Per-row log-losses of a model and a posterior whose gap varies by user (a heavy user's
    rows share one): rows are not independent, users are."""
    rows = rng.geometric(0.08, n_users)  # a few heavy users
    user = np.repeat(np.arange(n_users), rows)
    ref = rng.gamma(4.0, 0.5, len(user))
    gap = np.repeat(rng.normal(0.05, 0.15, n_users), rows)  # the user's own gap
    return user, ref * (1 + gap) + rng.normal(0, 0.05, len(user)), ref


def test_the_ratio_se_is_the_spread_of_the_ratio_over_draws_of_users():
    rng = np.random.default_rng(7)
    ratios, ses, row_ses = [], [], []
    for _ in range(300):
        user, model, ref = _clustered_losses(rng)
        ratios.append(model.sum() / ref.sum())
        n = user.max() + 1
        ses.append(ratio_se(_group_sums(model, user, n), _group_sums(ref, user, n)))
        r = model.sum() / ref.sum()  # the same formula with every row its own cluster
        row_ses.append(np.sqrt(((model - r * ref) ** 2).sum()) / ref.sum())
    spread = np.std(ratios, ddof=1)
    assert np.mean(ses) == pytest.approx(spread, rel=0.15)
    assert np.mean(row_ses) < 0.5 * spread  # rows taken as independent: far too small


def test_the_ratio_se_from_rows_is_the_streamed_one_with_a_group_per_user():
    rng = np.random.default_rng(9)
    user, model, ref = _clustered_losses(rng, 80)
    ids = np.array([f"u{u}" for u in user], dtype=object)
    n = user.max() + 1
    want = ratio_se(_group_sums(model, user, n), _group_sums(ref, user, n))
    assert row_ratio_se(model, ref, ids) == pytest.approx(want, rel=1e-12)
    # unlabelled rows (NaN losses) are left out, as the streamed sums skip them
    gap = np.where(np.arange(len(model)) % 7 == 0, np.nan, model)
    keep = ~np.isnan(gap)
    assert row_ratio_se(gap, ref, ids) == pytest.approx(
        row_ratio_se(model[keep], ref[keep], ids[keep]), rel=1e-12)
    assert math.isnan(row_ratio_se(model[:30], ref[:30], ids[:30]))  # a few users: no SE


def test_the_ratio_se_needs_the_same_rows_and_enough_groups():
    rng = np.random.default_rng(8)
    user, model, ref = _clustered_losses(rng, 60)
    a, b = _group_sums(model, user % 40, 40), _group_sums(ref, user % 40, 40)
    assert math.isfinite(ratio_se(a, b)) and ratio_se(a, a) == 0.0
    other = _group_sums(ref[1:], user[1:] % 40, 40)  # one row fewer
    assert math.isnan(ratio_se(a, other))
    few = _group_sums(model, user % 5, 40), _group_sums(ref, user % 5, 40)  # 5 groups only
    assert math.isnan(ratio_se(*few))
    assert math.isfinite(ratio_se(*few, min_groups=5))
