"""The in-between gauge (synth/in_between.py, issue 15): no rows give the population weights,
a two-user two-cell case by hand, more days concentrate each seen user on its true cell, and on
the tiny world population >= in-between >= realised log-loss on every slice."""
from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from pythia.features import AGE_BUCKET, GENDER, LABEL_PROVIDER, USER_ID
from pythia.synth import generate_world, load_world
from pythia.synth.activity import expected_weights, user_impressions_today
from pythia.synth.in_between import (Observed, cell_posteriors, in_between_weights,
                                     in_between_world, read_observed, unseen_given_cell,
                                     user_posteriors)
from pythia.synth.population import build_labels, build_users, realised_weights
from pythia.synth.world import CLASS_LABELS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("in-between") / "tiny")
    generate_world(root, "tiny", seed=0)
    return labelled_world(root)


def labelled_world(root: str):
    """(world, users, labels, labelled rows of every day, country -> provider) of the world at
    ``root``: each country's rows carry the labels of one provider (the first for half the
    countries, the second for the rest), the latest label of each covered user, with the count
    so far today and the ETL's power-user flag."""
    world = load_world(root)
    params = world.params
    users = build_users(params)
    labels = build_labels(params, users)
    imp = ds.dataset(os.path.join(root, "impressions"), format="parquet",
                     partitioning="hive").to_table().to_pandas()
    imp["date"] = imp["date"].astype(str)
    imp["user_impressions_today"] = user_impressions_today(imp)
    per_day = imp.groupby([USER_ID, "date"])["impression_id"].transform("size")
    cut = np.quantile(imp.groupby([USER_ID, "date"]).size(), 0.99, method="inverted_cdf")
    imp["is_power_user"] = per_day > cut
    countries, names = params.vocab["countries"], params.vocab["providers"]
    chosen = {c: names[i % 2] for i, c in enumerate(countries)}
    ids = np.array([f"u{i:08d}" for i in range(len(users.cls))], dtype=object)
    parts = []
    for name in names[:2]:
        u, lab = labels.latest[name]
        mine = [c for c in countries if chosen[c] == name]
        lab_of = pd.Series(np.asarray(CLASS_LABELS)[lab], index=ids[u])
        rows = imp[imp[USER_ID].isin(lab_of.index) & imp["country"].isin(mine)].copy()
        label = lab_of.loc[rows[USER_ID]].str.split("_", n=1)
        rows[GENDER], rows[AGE_BUCKET] = label.str[0].to_numpy(), label.str[1].to_numpy()
        rows[LABEL_PROVIDER] = name
        parts.append(rows)
    return world, users, labels, pd.concat(parts, ignore_index=True), chosen


def _days(rows: pd.DataFrame, n: int) -> pd.DataFrame:
    dates = sorted(rows["date"].unique())
    return rows[rows["date"].isin(dates[:n])]


def test_no_rows_give_the_population_weights(tiny):
    world, *_ = tiny
    want = expected_weights(world.params)
    for observed in ([], [Observed(pd.DataFrame())]):
        got = in_between_weights(world, observed)
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-12, err_msg=k)


def test_two_users_two_cells_by_hand():
    # one level, one power flag, one interest: two cells, classes 0 and 1, prior 0.7 / 0.3
    log_prior = np.log(np.array([0.7, 0.3])).reshape(1, 1, 2, 1)
    # P(labelled by the provider, label | class): rows are classes, columns labels
    lc = np.array([[0.4, 0.1], [0.05, 0.45]])
    keep = np.array([1.0, 0.5])  # per label
    H = np.array([1.0, 2.0])  # per class, activity 1
    rate = np.ones((1, 1))
    heff = keep[:, None, None] * H[None, None, :]  # (label, s, class)
    # user A: one kept row, label 0, class factors 0.2 / 0.6
    post = cell_posteriors(log_prior, np.log(lc[:, [0]].T), np.log([[[0.2, 0.6]]]),
                           np.zeros((1, 1, 1)), np.array([1.0]), rate, heff[[0]])
    a0 = 0.7 * 0.4 * 0.2 * math.exp(-1.0)
    a1 = 0.3 * 0.05 * 0.6 * math.exp(-2.0)
    np.testing.assert_allclose(post.ravel(), [a0 / (a0 + a1), a1 / (a0 + a1)], rtol=1e-12)
    # user B: no row. Unlabelled (0.5), or labelled and none of its rows kept
    unseen = unseen_given_cell(rate, lc, heff).ravel()
    u0 = 0.5 + 0.4 * math.exp(-1.0) + 0.1 * math.exp(-0.5)
    u1 = 0.5 + 0.05 * math.exp(-2.0) + 0.45 * math.exp(-1.0)
    np.testing.assert_allclose(unseen, [u0, u1], rtol=1e-12)
    # no row at all says nothing: the prior comes back
    none = unseen_given_cell(rate, lc, np.zeros_like(heff)).ravel()
    np.testing.assert_allclose(none, [1.0, 1.0])
    # a row impossible under every cell is an error, not a silent NaN
    with pytest.raises(ValueError, match="zero probability"):
        cell_posteriors(log_prior, np.log(lc[:, [0]].T), np.full((1, 1, 2), -np.inf),
                        np.zeros((1, 1, 1)), np.array([1.0]), rate, heff[[0]])


def test_more_days_concentrate_on_the_true_cells(tiny):
    world, users, labels, rows, chosen = tiny
    real = realised_weights(world.params, users, labels)
    names = world.params.vocab["providers"]
    countries = world.params.vocab["countries"]
    mass, dist = [], []
    for n in (1, 3, 5):
        observed = [Observed(_days(rows, n))]
        hits = []
        for ids, post in user_posteriors(world, observed):
            i = np.array([int(x[1:]) for x in ids])
            true = post[np.arange(len(i)), users.level[i], users.power[i].astype(int),
                        users.cls[i], users.interest[i]]
            hits.append(true)
        mass.append(float(np.concatenate(hits).mean()))
        got = in_between_weights(world, observed, chosen)
        # the labelled users of each country's provider, by (level, s, class, z, label)
        d = sum(np.abs(got["RNL"][names.index(p), :, :, countries.index(c)]
                       - real["RNL"][names.index(p), :, :, countries.index(c)]).sum()
                for c, p in chosen.items())
        dist.append(float(d))
        np.testing.assert_allclose(got["RN"].sum(), world.params.config.n_users)
    # the whole cell (level, s, class, interest): ~0.24, 0.48, 0.61 on this world
    assert mass[0] < mass[1] < mass[2] and mass[2] > 0.5, mass
    assert dist[0] > dist[1] > dist[2], dist


def test_gauges_are_ordered_on_every_slice(tiny):
    world, users, labels, rows, chosen = tiny
    dates = sorted(rows["date"].unique())
    test = rows[rows["date"] == dates[-1]].reset_index(drop=True)
    between = in_between_world(world, [Observed(_days(rows, 3)),
                                       Observed(rows[rows["date"] == dates[3]])], chosen)
    providers = test[LABEL_PROVIDER].to_numpy(dtype=object)
    truth = users.cls[np.array([int(x[1:]) for x in test[USER_ID]])]
    label = pd.Index(CLASS_LABELS).get_indexer(test[GENDER] + "_" + test[AGE_BUCKET])
    power = test["is_power_user"].to_numpy()
    loss = {}
    for name, w in (("realised", world), ("between", between), ("population",
                                                                world.population())):
        p_truth, p_label = w.gauge_posteriors(test, providers)
        loss[name] = (-np.log(p_truth[np.arange(len(test)), truth]),
                      -np.log(p_label[np.arange(len(test)), label]))
    for mask in (np.ones(len(test), bool), ~power, power):
        assert mask.sum() > 100
        for k in (0, 1):
            r, b, p = (loss[n][k][mask].mean() for n in ("realised", "between", "population"))
            assert p > b + 0.1 and b >= r - 1e-3, (r, b, p)


def test_bad_rows_name_the_problem(tiny):
    world, _, _, rows, chosen = tiny
    two = rows.copy()
    first = two.index[two[USER_ID] == two[USER_ID].iloc[0]][:1]  # the user has many rows
    two.loc[first, GENDER] = "M" if two.loc[first[0], GENDER] == "F" else "F"
    with pytest.raises(ValueError, match="different labels"):
        in_between_weights(world, [Observed(two)])
    odd = rows.assign(**{AGE_BUCKET: "18-29"})
    with pytest.raises(ValueError, match="labels outside"):
        in_between_weights(world, [Observed(odd)])
    country = rows["country"].iloc[0]
    other = next(p for p in world.params.vocab["providers"] if p != chosen[country])
    with pytest.raises(ValueError, match="provider map"):
        in_between_weights(world, [Observed(rows)], {**chosen, country: other})
    with pytest.raises(ValueError, match="keep-rate"):
        in_between_weights(world, [Observed(rows, keep={"F_18-24": 0.0})])
    with pytest.raises(ValueError, match="lack column"):
        in_between_weights(world, [Observed(rows.drop(columns=[LABEL_PROVIDER]))])


def test_read_observed_takes_the_splits_rows_and_keep_rates(tiny, tmp_path):
    world, _, _, rows, chosen = tiny
    dates = sorted(rows["date"].unique())
    paths = {}
    for split, day in (("train", dates[0]), ("validation", dates[1])):
        paths[split] = str(tmp_path / f"split={split}")
        os.makedirs(paths[split])
        rows[rows["date"] == day].to_parquet(os.path.join(paths[split], "part-0.parquet"))
    names = list(CLASS_LABELS)
    manifest = {"paths": paths, "class_names": names,
                "resample_rates": {"train": {str(i): 0.5 + 0.04 * i for i in range(12)}}}
    parts = read_observed(manifest, ["train", "validation"])
    assert [sum(len(b) for b in p.batches()) for p in parts] == [
        (rows["date"] == d).sum() for d in dates[:2]]
    assert parts[0].keep == {names[i]: 0.5 + 0.04 * i for i in range(12)}
    assert parts[1].keep == {}  # not resampled: every row kept
    # a lower keep-rate says less about the users that left no row: the weights differ
    kept = in_between_weights(world, parts, chosen)
    full = in_between_weights(world, [Observed(p.rows) for p in parts], chosen)
    assert not np.allclose(kept["RN"], full["RN"])
    np.testing.assert_allclose(kept["RN"].sum(), full["RN"].sum())
    # read in small batches (users spread over many): the same weights as the frames whole
    from pythia.synth import in_between
    whole = in_between_weights(world, [Observed(rows[rows["date"] == d], keep=p.keep)
                                       for d, p in zip(dates[:2], parts)], chosen)
    in_between.BATCH_ROWS, saved = 997, in_between.BATCH_ROWS
    try:
        batched = in_between_weights(world, parts, chosen)
    finally:
        in_between.BATCH_ROWS = saved
    for k in whole:
        np.testing.assert_allclose(batched[k], whole[k], rtol=1e-9, atol=1e-12, err_msg=k)
    with pytest.raises(ValueError, match="not in the run's split manifest"):
        read_observed(manifest, ["test"])


def write_day_splits(rows: pd.DataFrame, folder) -> tuple[dict[str, pd.DataFrame], dict]:
    """``labelled_world``'s rows as a run's split Parquet under ``folder`` (with the derived
    region and the label indices): the first three days train, the fourth validation, the
    fifth the natural test day; returns the splits and their manifest."""
    from pythia.config import Geography
    from pythia.features import REGION, derive_batch

    dates = sorted(rows["date"].unique())
    rows = rows.assign(**{REGION: derive_batch({"country": rows["country"].to_numpy(),
                                                "ts": rows["ts"].astype("int64") // 10**9,
                                                "device_make": rows["device_make"].to_numpy()},
                                               Geography())[REGION]})
    y = pd.Index(CLASS_LABELS).get_indexer(rows[GENDER] + "_" + rows[AGE_BUCKET])
    rows = rows.assign(y_age_gender=y, y_gender=y // 6, y_age=y % 6)
    splits = {"train": rows[rows["date"].isin(dates[:3])], "validation":
              rows[rows["date"] == dates[3]], "test_natural": rows[rows["date"] == dates[4]]}
    paths = {}
    for split, df in splits.items():
        os.makedirs(folder / split)
        df.assign(split=split).to_parquet(folder / split / "part-0.parquet", index=False)
        paths[split] = str(folder / split)
    manifest = {"paths": paths, "resample_target": "age_gender", "rates": {},
                "class_names": list(CLASS_LABELS)}
    return splits, manifest


def test_evaluate_streams_the_in_between_gauge_on_every_slice(tiny, tmp_path):
    from pythia.evaluate.gauge import build_gauge, gauge_by_slice, in_between_of
    from pythia.evaluate.stream import score_streaming
    from pythia.config import DEFAULT_AGE_EDGES
    from test_evaluate import prediction_rows

    world, users, _, rows, chosen = tiny
    splits, manifest = write_day_splits(rows, tmp_path)
    test = splits["test_natural"].reset_index(drop=True)
    uniform = np.full((len(test), 12), 1 / 12)
    pred = prediction_rows(test, "test_natural", "global", uniform)
    val = splits["validation"]
    pred = pd.concat([pred, prediction_rows(val, "validation", "global",
                                            np.full((len(val), 12), 1 / 12))])
    pred.to_parquet(tmp_path / "pred.parquet", index=False)
    candidates = [{"model": "flat", "region": "global", "config_id": 0, "model_dir": "/m",
                   "predictions_uri": str(tmp_path / "pred.parquet"),
                   "val_logloss": {"age_gender": math.log(12)}}]
    metrics = score_streaming(candidates, manifest, DEFAULT_AGE_EDGES, world,
                              bucket_rows=1500, workers=1).metrics
    # two processes, each every other bucket, merged: the same figures
    forked = score_streaming(candidates, manifest, DEFAULT_AGE_EDGES, world,
                             bucket_rows=1500, workers=2).metrics
    a, b = (m[m["metric"] == "in_between_log_loss"].sort_values(
        ["model", "test_set", "eval_region", "target", "label_source"]) for m in (metrics, forked))
    assert len(a) > 20
    np.testing.assert_allclose(a["value"].to_numpy(), b["value"].to_numpy(), rtol=1e-9)
    gauge = build_gauge(metrics)
    natural = gauge[(gauge["test_set"] == "natural") & (gauge["eval_region"] == "global")
                    & (gauge["target"] == "age_gender")].set_index("label_source")
    # the streamed figure is the in-between World's own log-loss on the test rows
    between = in_between_world(world, [Observed(splits["train"]),
                                       Observed(splits["validation"])], chosen)
    p_truth, p_label = between.gauge_posteriors(test, test[LABEL_PROVIDER].to_numpy(object))
    truth = users.cls[np.array([int(x[1:]) for x in test[USER_ID]])]
    want = {"provider": -np.log(p_label[np.arange(len(test)), test["y_age_gender"]]).mean(),
            "truth": -np.log(p_truth[np.arange(len(test)), truth]).mean()}
    for source, value in want.items():
        assert natural.loc[source, "in_between_logloss"] == pytest.approx(value, rel=1e-6)
        r = natural.loc[source]
        assert r["bayes_logloss"] <= r["in_between_logloss"] + 1e-3 < r["population_logloss"]
        assert r["ratio_in_between"] == pytest.approx(math.log(12) / value, rel=1e-4)
    champions = pd.DataFrame({"region": ["global"], "model": ["flat"],
                              "candidate_region": ["global"], "config_id": [0],
                              "blessed": [True]})
    table = gauge_by_slice(gauge, champions)
    assert table["ratio_in_between_age_gender"].notna().sum() == 6  # 3 slices x 2 sources
    # no gauge without a world's tables or a train split; a note when power users were dropped
    assert in_between_of(object(), manifest) is None
    assert in_between_of(world, {**manifest, "paths": {"test_natural": "x"}}) is None
    # off (the flow's default, [evaluate] in_between_gauge = false): the other gauges only
    off = score_streaming(candidates, manifest, DEFAULT_AGE_EDGES, world, bucket_rows=1500,
                          workers=1, in_between=False).metrics
    assert not off["metric"].str.startswith("in_between").any()
    assert off["metric"].str.startswith("population").any()
    assert build_gauge(off)["ratio_in_between"].isna().all()
    dropped = score_streaming(candidates, {**manifest, "drop_power_users": True},
                              DEFAULT_AGE_EDGES, world, workers=1)
    assert "in-between gauge skipped" in dropped.sums.in_between_note
    assert not dropped.metrics["metric"].str.startswith("in_between").any()
    assert dropped.metrics["metric"].str.startswith("population").any()


def test_the_in_between_gauge_is_an_evaluate_setting_off_by_default():
    """``[evaluate] in_between_gauge``: off in flows/pythia.toml and by default (it about doubles
    evaluate's scoring), on when set, a one-line error for a value that is not a boolean."""
    from flow_fixtures import REPO
    from pythia.config import DeployConfig, RunParams, read_deploy_config

    assert not read_deploy_config(str(REPO / "flows" / "pythia.toml")).in_between_gauge
    assert not RunParams.build({"source": "synthetic://tiny"}, model_names=("mlp",)
                               ).in_between_gauge
    on = DeployConfig.from_mapping({"evaluate": {"in_between_gauge": True}})
    assert RunParams.build({"source": "synthetic://tiny"}, on, ("mlp",)).in_between_gauge
    with pytest.raises(ValueError, match="in_between_gauge must be true or false, got 'yes'"):
        DeployConfig.from_mapping({"evaluate": {"in_between_gauge": "yes"}})


def test_the_in_between_gauge_says_which_runs_it_cannot_describe():
    """One rule for evaluate and benchmarks/quality_bench.py (which built the gauge for a run
    that held out users, and stopped on their labels: 'zero probability under this world')."""
    from pythia.evaluate.gauge import in_between_refusal

    assert in_between_refusal({"holdout_users": 0, "drop_power_users": False}) is None
    assert in_between_refusal({}) is None
    assert "holdout_users" in in_between_refusal({"holdout_users": 0.1})
    assert "drop_power_users" in in_between_refusal({"drop_power_users": True})
