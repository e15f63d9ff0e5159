"""Tests of pythia.evaluate: metric arithmetic, champion and bundle rules, distributions,
evaluate.run on a tiny world, the card, and `pythia report` / `pythia runs` on real Metaflow
runs."""
from __future__ import annotations

import io
import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import brier_score_loss, f1_score

from pythia import evaluate
from pythia.evaluate import (bucket_mae, choose_bundle_models, class_distribution,
                             classwise_ece, expected_bucket_mae, multiclass_brier, render_card,
                             reliability_bins, rows_to_requests, score_predictions,
                             select_champions, top_label_ece, total_variation_distance)
from pythia.evaluate.io import importance_weights, read_predictions
from pythia.evaluate.metrics import check_probabilities
from pythia.features import (TEST_NATURAL, TEST_RESAMPLED, VALIDATION, Y_AGE_GENDER,
                             age_gender_index)

EDGES = (18, 35, 55)  # 3 age buckets -> 6 AgeGender classes keeps fixtures tiny
N_AGE = len(EDGES)


# ---------------------------------------------------------------- metric arithmetic

def test_brier_by_hand_and_matches_sklearn_binary():
    y = np.array([0, 1])
    p = np.array([[0.8, 0.2], [0.4, 0.6]])
    # (0.2^2 + 0.2^2 + 0.4^2 + 0.4^2) / 2 = (0.08 + 0.32) / 2
    assert multiclass_brier(y, p) == pytest.approx(0.2)
    assert multiclass_brier(y, p) == pytest.approx(2 * brier_score_loss(y, p[:, 1]))


def test_ece_top_label_and_classwise_by_hand():
    y = np.array([0, 1, 0])
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
    # bin 13 (conf .9): acc .5 -> |.5-.9| * 2/3 ; bin 9 (conf .6): acc 1 -> |1-.6| * 1/3
    assert top_label_ece(y, p) == pytest.approx(0.4)
    mean, per_class = classwise_ece(y, p)
    # class 0: bin13 |1-1.8| + bin9 |1-.6| = 1.2 -> /3 ; class 1: bin1 |1-.2| + bin6 |0-.4|
    np.testing.assert_allclose(per_class, [0.4, 0.4])
    assert mean == pytest.approx(0.4)
    bins = reliability_bins(y, p)
    assert bins.loc[13, "count"] == 2 and bins.loc[13, "accuracy"] == pytest.approx(0.5)
    assert bins["count"].sum() == 3


def test_perfectly_calibrated_confident_predictions_have_zero_ece():
    y = np.array([0, 1, 2])
    p = np.eye(3)
    assert top_label_ece(y, p) == 0.0
    assert classwise_ece(y, p)[0] == 0.0


def test_bucket_mae_by_hand():
    y = np.array([0, 2, 1])
    p = np.array([[0.5, 0.4, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    assert bucket_mae(y, p) == pytest.approx((0 + 2 + 1) / 3)
    # expected |k - y|: .4+.2 ; .6*2+.3 ; .1+.7
    assert expected_bucket_mae(y, p) == pytest.approx((0.6 + 1.5 + 0.8) / 3)


def test_score_predictions_hand_values():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    rows = score_predictions(y, p, ["F", "M"]).set_index(["metric", "class"])["value"]
    agg = {m: rows[(m, None)] if (m, None) in rows.index else rows.xs(m).iloc[0]
           for m in ("accuracy", "macro_f1", "log_loss")}
    assert agg["accuracy"] == pytest.approx(0.75)
    # class F: P=1, R=.5, F1=2/3 ; class M: P=2/3, R=1, F1=.8
    assert agg["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert agg["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.7, 0.8])))
    assert rows[("f1", "F")] == pytest.approx(2 / 3)
    assert agg["macro_f1"] == pytest.approx(f1_score(y, p.argmax(1), average="macro"))
    assert rows[("support", "M")] == 2
    assert "mae_buckets" not in rows.index.get_level_values(0)
    ordinal = score_predictions(y, p, ["a", "b"], ordinal=True)
    assert "expected_mae_buckets" in set(ordinal["metric"])


def test_score_predictions_rejects_bad_input():
    p = np.array([[0.5, 0.5]])
    with pytest.raises(ValueError, match="labels outside"):
        score_predictions(np.array([2]), p, ["F", "M"])
    with pytest.raises(ValueError, match="expected 3 classes"):
        score_predictions(np.array([0]), p, ["a", "b", "c"])
    with pytest.raises(ValueError, match="do not sum to 1"):
        check_probabilities(np.array([[0.5, 0.1]]))
    with pytest.raises(ValueError, match="NaN"):
        check_probabilities(np.array([[np.nan, 1.0]]))


def test_tvd_and_class_distribution():
    assert total_variation_distance(np.array([0.5, 0.5]), np.array([0.2, 0.8])) == \
        pytest.approx(0.3)
    assert total_variation_distance(np.array([1, 1]), np.array([2, 2])) == 0.0  # normalised
    with pytest.raises(ValueError, match="equal length"):
        total_variation_distance(np.array([1.0]), np.array([0.5, 0.5]))
    d = class_distribution(p=np.array([[0.9, 0.1], [0.3, 0.7]]))
    np.testing.assert_allclose(d["mean_probability"], [0.6, 0.4])
    np.testing.assert_allclose(d["argmax"], [0.5, 0.5])
    np.testing.assert_allclose(class_distribution(y=np.array([1, 1, 0]), n_classes=3)["labels"],
                               [1 / 3, 2 / 3, 0])
    with pytest.raises(ValueError, match="exactly one"):
        class_distribution()


# ---------------------------------------------------------------- champion rules

def prediction_rows(df: pd.DataFrame, split: str, region: str, joint: np.ndarray
                    ) -> pd.DataFrame:
    """A candidate's predictions file rows for ``df``'s rows, from AgeGender probabilities
    ``joint`` (gender and age as its marginals), as ``write_split_predictions`` writes them."""
    p = joint.reshape(len(df), 2, -1)
    return pd.DataFrame({
        "impression_id": df["impression_id"].to_numpy(), "split": split,
        "region": df["region"].to_numpy(), "scored_by_region": region,
        "p_gender": list(p.sum(axis=2).astype(np.float32)),
        "p_age": list(p.sum(axis=1).astype(np.float32)),
        "p_age_gender": list(joint.astype(np.float32))})


def _scores(rows):
    base = {"model_dir": "/m", "eligible": True, "ineligible_reason": None}
    return pd.DataFrame([dict(base, **r) for r in rows])


def _cand(model, cregion, ll, region="EU", **kw):
    return dict(eval_region=region, model=model, candidate_region=cregion, config_id=0,
                val_logloss=ll, **kw)


BASE = ("gbdt",)  # a baseline name, as the caller passes it (any name works)
PRIOR = "class_prior"  # the constant-prior baseline (the registry's REFERENCE_MODEL)
ALL_BASE = ("gbdt", "logreg", PRIOR)


def test_champion_best_model_beats_baseline():
    s = _scores([_cand("mlp", "EU", 1.0), _cand("gbdt", "EU", 1.2), _cand("mlp", "global", 1.1)])
    out = select_champions(s, ["EU"], z_min=0, baseline_models=BASE).iloc[0]
    assert out["blessed"] and out["champion"] == "mlp/EU#0"
    assert out["baseline_val_logloss"] == 1.2 and out["beats_baselines"]
    assert "beats every baseline (gbdt/EU#0 1.2000)" in out["reason"]
    assert "no previous run" in out["reason"] and out["warning"] is None


def test_champion_must_beat_every_baseline_and_names_them():
    s = _scores([_cand("mlp", "EU", 1.50), _cand("gbdt", "global", 1.70),
                 _cand("logreg", "EU", 1.60), _cand(PRIOR, "EU", 1.90),
                 _cand(PRIOR, "global", 1.95)])
    out = select_champions(s, ["EU"], z_min=0, baseline_models=ALL_BASE,
                           reference_models=(PRIOR,)).iloc[0]
    assert out["blessed"] and out["champion"] == "mlp/EU#0"
    assert (out["baseline_val_logloss"], out["prior_val_logloss"]) == (1.60, 1.90)
    assert out["baselines"] == ("logreg/EU#0 1.6000, gbdt/global#0 1.7000, "
                                "class_prior/EU#0 1.9000")


def test_champion_worse_than_the_prior_is_not_blessed_and_says_so():
    # issue 13: the MLP scored worse than the class frequencies and was still blessed
    s = _scores([_cand("mlp", "global", 1.982, region="global"),
                 _cand("gbdt", "global", 1.984, region="global"),
                 _cand(PRIOR, "global", 1.979, region="global")])
    out = select_champions(s, ["global"], z_min=0, baseline_models=ALL_BASE,
                           reference_models=(PRIOR,)).iloc[0]
    assert not out["blessed"] and out["champion"] is None and not out["beats_baselines"]
    assert out["model"] == PRIOR and out["prior_val_logloss"] == 1.979
    assert "NOTHING BEATS THE CONSTANT PRIOR in global" in out["warning"]
    assert "mlp/global#0 1.9820 >= class_prior/global#0 1.9790" in out["warning"]
    assert "NOT BLESSED" in out["reason"] and "class_prior/global#0 1.9790" in out["reason"]
    assert "exports nothing new" in out["reason"]


def test_champion_baseline_best_is_not_blessed_and_wins_ties():
    s = _scores([_cand("mlp", "EU", 1.3), _cand("gbdt", "global", 1.1),
                 _cand("tabnet", "EU", 1.1), _cand(PRIOR, "EU", 1.5)])
    out = select_champions(s, ["EU"], z_min=0, baseline_models=ALL_BASE,
                           reference_models=(PRIOR,)).iloc[0]
    assert out["model"] == "gbdt" and not out["blessed"] and out["champion"] is None
    assert out["warning"] == ("NO MODEL BEATS THE BASELINES in EU: best model tabnet/EU#0 "
                              "1.1000 vs gbdt/global#0 1.1000")  # a tie goes to the baseline
    # only baselines trained (e.g. --models gbdt): nothing to bless either
    only = select_champions(_scores([_cand("gbdt", "EU", 1.1), _cand(PRIOR, "EU", 1.5)]),
                            ["EU"], z_min=0, baseline_models=ALL_BASE).iloc[0]
    assert not only["blessed"] and only["warning"].startswith("ONLY BASELINES in EU")
    # no baseline scored the region: cannot tell, so not blessed
    none = select_champions(_scores([_cand("mlp", "EU", 1.0)]), ["EU"],
                            z_min=0, baseline_models=BASE).iloc[0]
    assert not none["blessed"] and none["warning"].startswith("NO BASELINE in EU")


def test_champion_regression_blocks_blessing_and_tolerance_allows():
    s = _scores([_cand("mlp", "EU", 1.0), _cand("gbdt", "EU", 1.2)])
    worse = select_champions(s, ["EU"], lambda r, b: (1.00, 1.05, 40, None), tolerance=0.01,
                             z_min=0, baseline_models=BASE)
    row = worse.iloc[0]
    assert not row["blessed"] and row["champion"] is None
    assert "REGRESSION" in row["reason"] and row["model"] == "mlp"
    assert row["previous_logloss"] == 1.0 and row["n_same_rows"] == 40
    assert row["warning"] is None  # the model beat the baselines: a regression is not that
    ok = select_champions(s, ["EU"], lambda r, b: (1.00, 1.005, 40, None), tolerance=0.01,
                          z_min=0, baseline_models=BASE)
    assert ok.iloc[0]["blessed"] and "no regression" in ok.iloc[0]["reason"]
    none = select_champions(s, ["EU"], lambda r, b: (None, None, 0, "no champion for EU"),
                            z_min=0, baseline_models=BASE)
    assert none.iloc[0]["blessed"] and "no champion for EU" in none.iloc[0]["reason"]


def test_champion_ineligible_and_missing_regions():
    s = _scores([_cand("mlp", "EU", 0.5, eligible=False, ineligible_reason="cover 50%"),
                 _cand("gbdt", "EU", 1.2), _cand("tabnet", "EU", float("nan"))])
    out = select_champions(s, ["EU", "NA"], z_min=0, baseline_models=BASE).set_index("region")
    assert out.loc["EU", "model"] == "gbdt"  # the better mlp is not eligible
    assert not out.loc["EU", "blessed"] and "ONLY BASELINES" in out.loc["EU", "warning"]
    assert not out.loc["NA", "blessed"] and "no candidate" in out.loc["NA", "reason"]
    all_bad = select_champions(_scores([_cand("mlp", "EU", 0.5, eligible=False,
                                              ineligible_reason="cover 50%")]), ["EU"],
                               z_min=0, baseline_models=BASE)
    assert "cover 50%" in all_bad.iloc[0]["reason"] and not all_bad.iloc[0]["blessed"]
    with pytest.raises(ValueError, match="lacks columns"):
        select_champions(pd.DataFrame({"model": ["x"]}), ["EU"], z_min=0, baseline_models=BASE)
    with pytest.raises(ValueError, match="baseline_models"):
        select_champions(s, ["EU"], z_min=0, baseline_models=())
    with pytest.raises(ValueError, match="baseline_models"):
        select_champions(s, ["EU"], z_min=0, baseline_models="gbdt")  # a str is not a list of names


def test_champion_any_of_several_baselines():
    s = _scores([_cand("mlp", "EU", 1.0), _cand("gbdt", "EU", 1.2), _cand("lgbm", "EU", 1.1)])
    out = select_champions(s, ["EU"], z_min=0, baseline_models=("gbdt", "lgbm")).iloc[0]
    assert out["champion"] == "mlp/EU#0" and out["baseline_val_logloss"] == 1.1
    assert "lgbm/EU#0 1.1000, gbdt/EU#0 1.2000" in out["reason"]  # best baseline first


# ---------------------------------------------------------------- the bundle's models

def _champ(region, model=None, blessed=False):
    return {"region": region, "model": model, "blessed": blessed,
            "model_dir": f"/run/{model}_{region}" if model else None}


def _trained(model, region, ll):
    return {"model": model, "region": region, "config_id": 0, "model_dir": f"/run/{model}_{region}",
            "val_logloss": {"age_gender": ll}}


NO_PROVENANCE = {"blessed_date": None, "user_split": None, "age_edges": None}


def test_choose_bundle_models_blessed_previous_and_fallback():
    champions = pd.DataFrame([_champ("global", "mlp", blessed=False),
                              _champ("EU", "mlp", blessed=True),
                              _champ("NA", "tabnet", blessed=False),
                              _champ("APAC", None)])
    candidates = [_trained("mlp", "global", 1.0), _trained("gbdt", "global", 1.3),
                  _trained("tabnet", "global", 1.1), _trained("mlp", "EU", 0.9)]
    previous = {"NA": {"region": "NA", "model": "gbdt", "model_dir": "/old/gbdt_NA",
                       "blessed_in": "DemoFlow/7/end/3", "blessed_date": "2026-11-20",
                       "user_split": [0.2, 0], "age_edges": [18, 30]}}
    mine = {"blessed_date": "2026-12-01", "user_split": [0.2, 1], "age_edges": [18, 30]}
    chosen = choose_bundle_models(champions, candidates, previous, "DemoFlow/9", BASE, mine)
    by_region = {c["region"]: c for c in chosen}
    assert by_region["EU"] == {"region": "EU", "model": "mlp", "model_dir": "/run/mlp_EU",
                               "source": "DemoFlow/9", "blessed_in": "DemoFlow/9", **mine}
    # a kept model names the run that blessed it, with that run's split and classes
    assert by_region["NA"] == {"region": "NA", "model": "gbdt", "model_dir": "/old/gbdt_NA",
                               "source": "previous run", "blessed_in": "DemoFlow/7/end/3",
                               "blessed_date": "2026-11-20", "user_split": [0.2, 0],
                               "age_edges": [18, 30]}
    # no blessed global champion and none before: the baseline, though mlp scored better
    assert by_region["global"] == {"region": "global", "model": "gbdt",
                                   "model_dir": "/run/gbdt_global", "source": "fallback",
                                   "blessed_in": None, **mine}
    # neither blessed nor kept from before: the scorer routes APAC to the global model
    assert "APAC" not in by_region and len(chosen) == 3


def test_choose_bundle_models_prefers_blessed_and_previous_global_over_fallback():
    candidates = [_trained("mlp", "global", 1.0), _trained("gbdt", "global", 1.3)]
    blessed = choose_bundle_models(pd.DataFrame([_champ("global", "mlp", blessed=True)]),
                                   candidates, {}, "DemoFlow/9", BASE)
    assert blessed == [{"region": "global", "model": "mlp", "model_dir": "/run/mlp_global",
                        "source": "DemoFlow/9", "blessed_in": "DemoFlow/9", **NO_PROVENANCE}]
    kept = choose_bundle_models(pd.DataFrame([_champ("global", "mlp")]), candidates,
                                {"global": {"model": "tabnet", "model_dir": "/old/t"}},
                                "DemoFlow/9", BASE)
    assert kept == [{"region": "global", "model": "tabnet", "model_dir": "/old/t",
                     "source": "previous run", "blessed_in": None, **NO_PROVENANCE}]
    # no baseline among the global candidates: the best global one by validation log-loss
    other = choose_bundle_models(pd.DataFrame([_champ("global")]),
                                 [_trained("tabnet", "global", 1.2), _trained("mlp", "global", 1.0),
                                  _trained("gbdt", "EU", 0.5)], {}, "DemoFlow/9", BASE)
    assert [(c["model"], c["source"]) for c in other] == [("mlp", "fallback")]


def test_choose_bundle_models_when_a_baseline_wins_global():
    """Unblessed global (a baseline was best): the previous champion, else that baseline."""
    row = dict(_champ("global", "logreg"), candidate_region="global",
               warning="NO MODEL BEATS THE BASELINES in global: ...")
    champions = pd.DataFrame([row, _champ("EU", "gbdt")])
    # by their train-step figures gbdt looks best; the champion rule (natural-weighted) said logreg
    candidates = [_trained("mlp", "global", 1.3), _trained("gbdt", "global", 1.0),
                  _trained("logreg", "global", 1.1), _trained("class_prior", "global", 1.5)]
    base = ("class_prior", "gbdt", "logreg")
    fallback = choose_bundle_models(champions, candidates, {}, "DemoFlow/9", base)
    assert fallback == [{"region": "global", "model": "logreg",
                         "model_dir": "/run/logreg_global", "source": "fallback",
                         "blessed_in": None, **NO_PROVENANCE}]
    previous = {"global": {"model": "mlp", "model_dir": "/old/mlp"},
                "EU": {"model": "mlp", "model_dir": "/old/mlp_EU"}}
    kept = choose_bundle_models(champions, candidates, previous, "DemoFlow/9", base)
    assert [(c["region"], c["model_dir"], c["source"]) for c in kept] == [
        ("global", "/old/mlp", "previous run"), ("EU", "/old/mlp_EU", "previous run")]
    # a train-step val_logloss that is missing does not break the fallback sort
    odd = [dict(_trained("gbdt", "global", 1.0), val_logloss={}), _trained("logreg", "global", 2)]
    assert choose_bundle_models(pd.DataFrame([_champ("global")]), odd, {}, "D/1", base)[0][
        "model"] == "logreg"


def test_choose_bundle_models_without_any_global_candidate_leaves_global_empty():
    # negative case: nothing blessed, no previous run and only regional candidates (the
    # bundle writer then refuses the list: a bundle needs a global model)
    chosen = choose_bundle_models(pd.DataFrame([_champ("global"), _champ("EU", "gbdt")]),
                                  [_trained("gbdt", "EU", 1.0)], {}, "DemoFlow/9", BASE)
    assert chosen == []


# ---------------------------------------------------------------- a tiny world

class FakeWorld:
    """Rows carry their true AgeGender distribution q; provider labels flip 20% at random."""

    FLIP = 0.2

    def __init__(self, q_by_impression: dict[str, np.ndarray], truth: pd.DataFrame):
        self.q = q_by_impression
        self._truth = truth

    def truth(self) -> pd.DataFrame:
        return self._truth

    def posterior(self, df: pd.DataFrame, providers=None) -> np.ndarray:
        assert providers is None or len(providers) == len(df)
        return np.stack([self.q[i] for i in df["impression_id"]])

    def label_posterior(self, df, providers, dates=None) -> np.ndarray:
        assert len(providers) == len(df)
        q = self.posterior(df)
        return (1 - self.FLIP) * q + self.FLIP / q.shape[1]


def _make_world(seed: int = 0, n_users: int = 600, rows_per_split: int = 600):
    rng = np.random.default_rng(seed)
    k = 2 * N_AGE
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(n_users)],
                          "region": rng.choice(["EU", "NA"], n_users)})
    user_q = rng.dirichlet(np.full(k, 0.4), n_users)
    user_ag = np.array([rng.choice(k, p=q) for q in user_q])
    g, a = user_ag // N_AGE, user_ag % N_AGE
    ages = np.array([18, 35, 55])[a] + 3
    truth = pd.DataFrame({"user_id": users["user_id"], "gender": np.array(["F", "M"])[g],
                          "age": ages, "age_bucket": None})
    frames, q_by_imp = {}, {}
    for split in ("validation", "test_natural", "test_resampled"):
        u = rng.integers(0, n_users, rows_per_split)
        flip = rng.random(rows_per_split) < FakeWorld.FLIP
        y_ag = np.where(flip, rng.integers(0, k, rows_per_split), user_ag[u])
        ids = [f"{split}-{i}" for i in range(rows_per_split)]
        q_by_imp.update(zip(ids, user_q[u]))
        yg, ya = y_ag // N_AGE, y_ag % N_AGE
        frames[split] = pd.DataFrame({
            "impression_id": ids, "user_id": users["user_id"].to_numpy()[u],
            "region": users["region"].to_numpy()[u], "country": "DE",
            "is_power_user": rng.random(rows_per_split) < 0.1,
            "y_gender": yg.astype("int32"), "y_age": ya.astype("int32"),
            "y_age_gender": age_gender_index(yg, ya, N_AGE).astype("int32"),
            "label_provider": "acme", "date": "2024-01-05", "split": split})
    # one unlabelled gender row must be counted, not dropped
    frames["test_natural"]["y_gender"] = frames["test_natural"]["y_gender"].astype("Int32")
    frames["test_natural"].loc[0, "y_gender"] = pd.NA
    return frames, FakeWorld(q_by_imp, truth)


def _write_predictions(path, frames, world, mix: float, region: str, drop: int = 0):
    """Predictions = (1 - mix) * label posterior + mix * uniform, for `region`'s rows."""
    rows = []
    for split, df in frames.items():
        if region != "global":
            df = df[df["region"] == region]
        df = df.iloc[drop:]
        joint = (1 - mix) * world.label_posterior(df, df["label_provider"].to_numpy(),
                                                  df["date"].to_numpy()) + mix / (2 * N_AGE)
        rows.append(prediction_rows(df, split, region, joint))
    table = pa.Table.from_pandas(pd.concat(rows, ignore_index=True), preserve_index=False)
    pq.write_table(table, path)
    return str(path)


def _write_splits(root, frames, rates=None):
    """The split rows as the ETL leaves them (a Parquet folder per split), and the manifest."""
    paths = {}
    for split, df in frames.items():
        (root / split).mkdir(parents=True)
        df.to_parquet(root / split / "part-0.parquet", index=False)
        paths[split] = str(root / split)
    return {"paths": paths, "resample_target": "age_gender", "rates": rates or {}}


def _run(candidates, manifest, reports, previous=None, world=None, **kw):
    return evaluate.run(candidates, manifest, None, EDGES, str(reports), previous,
                        baseline_models=BASE, world=world, **kw)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(results, frames, world, reports folder, candidates, split manifest) of one run."""
    tmp = tmp_path_factory.mktemp("evaluate")
    frames, world = _make_world()
    manifest = _write_splits(tmp / "splits", frames)
    specs = [("mlp", "global", 0.0, 0), ("gbdt", "global", 0.5, 0), ("gbdt", "EU", 0.3, 0),
             ("tabnet", "EU", 0.0, 5)]  # tabnet misses 5 EU rows per split
    candidates = [{"model": m, "region": r, "config_id": 0, "model_dir": f"/models/{m}_{r}",
                   "predictions_uri": _write_predictions(tmp / f"{m}_{r}.parquet", frames,
                                                         world, mix, r, drop),
                   "val_logloss": {"age_gender": 9.9}, "fit_seconds": 1.0}
                  for m, r, mix, drop in specs]

    def previous(region, rows):
        if region == "NA":
            return None  # the previous run had no NA champion
        # a previous champion that knew the labels: the new one regresses against it
        y = rows["y_age_gender"].to_numpy()
        p = np.full((len(rows), 2 * N_AGE), 0.02)
        p[np.arange(len(rows)), y] = 1 - 0.02 * (2 * N_AGE - 1)
        return {"age_gender": p}

    previous.pathspec = "DemoFlow/123"
    reports = tmp / "reports"
    results = _run(candidates, manifest, reports, previous, world)
    return results, frames, world, reports, candidates, manifest


def test_evaluate_run_metrics_cover_every_slice(tiny_run):
    results, frames, *_ = tiny_run
    m = results["metrics"]
    assert {"model", "region", "config_id", "eval_region", "target", "test_set",
            "label_source", "metric", "class", "value", "n"} <= set(m.columns)
    assert set(m["test_set"]) == {"validation", "natural", "resampled", "natural_no_power_users",
                                  "natural_power_users"}
    assert set(m["label_source"].dropna()) == {"provider", "truth"}
    glob = m[(m["model"] == "mlp") & (m["region"] == "global")]
    assert set(glob["eval_region"]) == {"global", "EU", "NA"}
    assert set(m[(m["model"] == "gbdt") & (m["region"] == "EU")]["eval_region"]) == {"EU"}
    for metric in ("accuracy", "log_loss", "brier", "ece", "classwise_ece", "macro_f1",
                   "weighted_f1", "precision", "recall", "f1"):
        assert metric in set(m["metric"]), metric
    assert "mae_buckets" in set(m[m["target"] == "age"]["metric"])
    # rows in the no-power-user slice = natural rows minus power users
    nat = frames["test_natural"]
    n_npu = m[(m["model"] == "mlp") & (m["eval_region"] == "global")
              & (m["test_set"] == "natural_no_power_users") & (m["metric"] == "log_loss")
              & (m["target"] == "age_gender") & (m["label_source"] == "provider")]["n"]
    assert n_npu.iloc[0] == (~nat["is_power_user"]).sum()
    # ... and the power-users-only slice holds the rest: the two partition the natural day
    n_of = {t: m[(m["model"] == "mlp") & (m["eval_region"] == "global") & (m["test_set"] == t)
                 & (m["metric"] == "log_loss") & (m["target"] == "age_gender")
                 & (m["label_source"] == "provider")]["n"].iloc[0]
            for t in ("natural", "natural_no_power_users", "natural_power_users")}
    assert n_of["natural_power_users"] == nat["is_power_user"].sum() > 0
    assert n_of["natural"] == n_of["natural_no_power_users"] + n_of["natural_power_users"]
    # the one missing gender label is counted, not dropped
    unl = m[(m["model"] == "mlp") & (m["eval_region"] == "global") & (m["test_set"] == "natural")
            & (m["metric"] == "n_unlabelled") & (m["target"] == "gender")
            & (m["label_source"] == "provider")]["value"]
    assert unl.iloc[0] == 1


def test_evaluate_run_gauge_ratio_is_one_for_the_exact_posterior(tiny_run):
    g = tiny_run[0]["gauge"]
    # mlp and tabnet predict the label posterior itself; tabnet misses rows, and the gauge
    # still compares on the rows it scored
    exact = g[g["model"].isin(["mlp", "tabnet"]) & (g["label_source"] == "provider")]
    assert set(exact["model"]) == {"mlp", "tabnet"}
    np.testing.assert_allclose(exact["ratio"], 1.0, rtol=1e-5)
    worse = g[(g["model"] == "gbdt") & (g["region"] == "global")
              & (g["label_source"] == "provider") & (g["eval_region"] == "global")]
    # Bayes is optimal in expectation: small slices may favour a worse model on one target
    assert worse["ratio"].mean() > 1
    assert (worse[worse["target"] == "age_gender"]["ratio"] > 1).all()
    np.testing.assert_allclose(g["ratio"], g["logloss"] / g["bayes_logloss"])


def test_evaluate_run_distributions_and_tvd(tiny_run):
    results, frames, *_ = tiny_run
    d = results["distributions"]
    labels = d[(d["source"] == "provider_labels") & (d["eval_region"] == "global")
               & (d["test_set"] == "natural") & (d["target"] == "age")]
    expected = np.bincount(frames["test_natural"]["y_age"], minlength=N_AGE) / 600
    np.testing.assert_allclose(labels["share"], expected)
    pred = d[(d["model"] == "gbdt") & (d["region"] == "global") & (d["eval_region"] == "global")
             & (d["test_set"] == "natural") & (d["target"] == "age")]
    mp = pred[pred["source"] == "mean_probability"]
    assert mp["share"].sum() == pytest.approx(1.0, abs=1e-6)
    assert mp["tvd_provider"].iloc[0] == pytest.approx(
        0.5 * np.abs(mp["share"].to_numpy() - expected).sum())
    assert set(pred["source"]) == {"mean_probability", "argmax"}
    assert "truth_labels" in set(d["source"])


def test_evaluate_run_champions(tiny_run):
    results, *_ = tiny_run
    c = results["champions"].set_index("region")
    assert set(c.index) == {"global", "EU", "NA"}
    # tabnet/EU is the exact posterior but misses rows: not eligible
    assert c.loc["NA", "champion"] == "mlp/global#0" and c.loc["NA", "blessed"]
    assert "no champion for NA" in c.loc["NA", "reason"]
    # the previous champion knew the labels: blocked, the previous one stays
    assert not c.loc["EU", "blessed"] and c.loc["EU", "champion"] is None
    assert "REGRESSION" in c.loc["EU", "reason"] and "DemoFlow/123" in c.loc["EU", "reason"]
    assert c.loc["EU", "current_logloss_on_same_rows"] > c.loc["EU", "previous_logloss"]
    assert c.loc["EU", "model"] == "mlp"
    m = results["metrics"]
    cov = m[(m["model"] == "tabnet") & (m["metric"] == "coverage") & (m["test_set"] == "natural")]
    assert (cov["value"] < 1).all()
    h = results["headline"]
    assert {"logloss_age_gender", "macro_f1_gender", "bayes_ratio_age_gender",
            "champion"} <= set(h.columns)
    assert h[(h["eval_region"] == "NA")].iloc[0]["champion"]  # champion listed first


def test_evaluate_run_writes_report_files(tiny_run):
    results, _, _, reports, *_ = tiny_run
    files = results["report_files"]
    assert str(reports / "metrics.parquet") in files
    back = pd.read_parquet(reports / "metrics.parquet")
    assert len(back) == len(results["metrics"])
    doc = json.loads((reports / "metrics.json").read_text())
    assert len(doc["metrics"]) == len(results["metrics"]) and doc["champions"]
    # the regional-vs-global table is a report file too, not only a card table
    back = pd.read_parquet(reports / "regional_vs_global.parquet")
    assert len(back) == len(results["regional_vs_global"]) == len(doc["regional_vs_global"]) > 0
    names = set(results["figures"])
    for kind in ("per_class_f1", "confusion", "reliability", "distribution"):
        for region in ("global", "EU", "NA"):
            assert f"{kind}__{region}" in names
            png = (reports / "figures" / f"{kind}__{region}.png").read_bytes()
            assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_run_rejects_bad_inputs(tiny_run, tmp_path):
    _, _, world, _, candidates, manifest = tiny_run
    with pytest.raises(ValueError, match="no candidates"):
        _run([], manifest, tmp_path, world=world)
    only_validation = dict(manifest, paths={VALIDATION: manifest["paths"][VALIDATION]})
    with pytest.raises(ValueError, match="lacks split"):
        _run(candidates, only_validation, tmp_path, world=world)
    with pytest.raises(ValueError, match="duplicate candidates"):
        _run(candidates[:1] * 2, manifest, tmp_path, world=world)
    # labels coded for other age edges are a bug, not noise
    with pytest.raises(ValueError, match="age edges"):
        evaluate.run(candidates, manifest, None, (18, 40), str(tmp_path), baseline_models=BASE)
    with pytest.raises(TypeError, match="baseline_models"):  # the caller must name it
        evaluate.run(candidates, manifest, None, EDGES, str(tmp_path))


def test_evaluate_run_without_world_has_no_gauge(tiny_run, tmp_path):
    *_, candidates, manifest = tiny_run
    def broken_previous(region, rows):
        raise OSError("bundle unreadable")

    out = evaluate.run(candidates[:2], manifest, str(tmp_path / "no-world"), EDGES,
                       str(tmp_path), broken_previous, "DemoFlow/7", baseline_models=BASE,
                       make_figures=False)
    assert out["gauge"] is None and out["previous_run"] == "DemoFlow/7"
    assert set(out["metrics"]["label_source"].dropna()) == {"provider"}
    glob = out["champions"].set_index("region").loc["global"]
    assert glob["champion"] == "mlp/global#0"  # a broken previous bundle does not block
    assert "DemoFlow/7 could not score" in glob["reason"]


def test_evaluate_run_does_not_bless_a_model_worse_than_the_prior(tiny_run, tmp_path):
    """End to end: the candidates' own flags name the baselines and the constant prior."""
    _, frames, world, _, _, manifest = tiny_run
    candidates = [
        {"model": m, "region": "global", "config_id": 0, "model_dir": f"/models/{m}",
         "predictions_uri": _write_predictions(tmp_path / f"{m}.parquet", frames, world, mix,
                                               "global"),
         "val_logloss": {"age_gender": 9.9}, **flags}
        for m, mix, flags in [("mlp", 0.9, {}),
                              (PRIOR, 0.5, {"is_baseline": True, "is_reference": True})]]
    out = evaluate.run(candidates, manifest, None, EDGES, str(tmp_path / "r"),
                       baseline_models=evaluate.baseline_models_of(candidates),
                       world=world, make_figures=False)
    c = out["champions"].set_index("region")
    assert not c["blessed"].any() and (c["model"] == PRIOR).all()
    assert c.loc["global", "warning"].startswith("NOTHING BEATS THE CONSTANT PRIOR in global")
    assert c.loc["global", "prior_val_logloss"] < c.loc["global", "val_logloss"] + 1e-12
    assert not out["headline"]["champion"].any()


def test_read_predictions_from_a_folder_of_parts(tiny_run, tmp_path):
    table = pq.read_table(tiny_run[4][0]["predictions_uri"])
    (tmp_path / "p").mkdir()
    pq.write_table(table.slice(0, 10), tmp_path / "p" / "part-0.parquet")
    pq.write_table(table.slice(10), tmp_path / "p" / "part-1.parquet")
    assert read_predictions(str(tmp_path / "p")).num_rows == table.num_rows
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no Parquet files"):
        read_predictions(str(tmp_path / "empty"))


# ---------------------------------------------------------------- card

class FakeCard:
    def __init__(self):
        self.components = []

    def append(self, component):
        self.components.append(component)


def test_evaluate_run_sets_each_regional_candidate_beside_its_global_one(tiny_run):
    results = tiny_run[0]
    table, head = results["regional_vs_global"], results["headline"]
    # gbdt has both; tabnet (EU only) and mlp (global only) have no pair
    assert table[["region", "model"]].values.tolist() == [["EU", "gbdt"]]
    eu = head[(head["eval_region"] == "EU") & (head["model"] == "gbdt")].set_index(
        "candidate_region")["logloss_age_gender"]
    row = table.iloc[0]
    assert row["logloss_age_gender_regional"] == eu["EU"]
    assert row["logloss_age_gender_global"] == eu["global"]
    assert row["gain_logloss_age_gender"] == pytest.approx(eu["global"] - eu["EU"])
    # the test day's paired margin on the same rows: its mean is minus that gain, with an SE
    # clustered by user (the card's "is the gain more than noise?")
    assert row["test_diff"] == pytest.approx(-row["gain_logloss_age_gender"], abs=1e-9)
    assert row["test_se"] > 0 and row["test_z"] == pytest.approx(row["test_diff"]
                                                                 / row["test_se"])


def test_render_card_shows_every_figure_and_table(tiny_run):
    from metaflow.cards import Image, Markdown, Table

    results = tiny_run[0]
    card = FakeCard()
    recon = pd.DataFrame({"stage": ["etl"], "rows_in": [10], "rows_used": [9],
                          "rows_quarantined": [1]})
    choice = pd.DataFrame({"country": ["DE"], "provider": ["acme"]})
    render_card(card, results, recon, choice)
    images = [c for c in card.components if isinstance(c, Image)]
    assert len(images) == len(results["figures"])
    assert all(c._error_comp is None for c in images)  # PNG bytes parsed
    tables = [c for c in card.components if isinstance(c, Table)]
    # champions, headline, models against the baselines, regional vs global, gauge per
    # slice, gauge, reconciliation, provider choice
    assert len(tables) == 8
    text = " ".join(c._text for c in card.components if isinstance(c, Markdown))
    marks = [c._text for c in card.components if isinstance(c, Markdown)]
    where = next(i for i, t in enumerate(marks) if t.startswith("## Models against the"))
    assert marks[where - 1].startswith("## Headline")
    # mlp against gbdt (the caller's baseline); tabnet/EU misses rows, so it is not judged
    verdicts = results["model_verdicts"]
    assert set(verdicts["model"]) == {"mlp"} and set(verdicts["baseline"]) <= {
        "gbdt/global#0", "gbdt/EU#0"}
    assert "beat(s) the baselines in no region" not in text
    # a model behind the baselines everywhere: in bold near the top, before the intro
    behind = verdicts.assign(model="tabnet", beats_baselines=False)
    loud = FakeCard()
    render_card(loud, dict(results, model_verdicts=behind), recon, choice)
    marks = [c._text for c in loud.components if isinstance(c, Markdown)]
    assert marks[0].startswith("## WARNING: `tabnet` beat(s) the baselines in no region")
    assert "Data reconciliation" in text and "Region `EU`" in text
    assert "Regional vs global" in text
    assert "baseline (`gbdt`)" in text  # named by the caller, not by the card
    assert "no model beats the baselines" not in text  # every region's model beat gbdt
    for comp in card.components:
        comp.render()
    with pytest.raises(ValueError, match="champions"):
        render_card(FakeCard(), {"headline": None}, None, None)
    assert "Library stack" not in text  # no lines given: no section
    assert "Regional structure" not in text  # no region-blind gauge (a world without effects)
    # with one (tests/test_regional_gauge.py builds it), its table right after regional vs
    # global
    structure = pd.DataFrame({"region": ["APAC"], "candidate": ["mlp/global#0"],
                              "trained_on": ["global"], "champion": [True],
                              "effect_age_gender": [1.02], "ratio_region_blind_age_gender":
                              [0.99], "ratio_population_age_gender": [1.01]})
    card = FakeCard()
    render_card(card, dict(results, regional_structure=structure), recon, choice)
    tables = [c for c in card.components if isinstance(c, Table)]
    assert len(tables) == 9
    marks = [c._text for c in card.components if isinstance(c, Markdown)]
    where = next(i for i, t in enumerate(marks) if t.startswith("## Regional structure"))
    assert marks[where - 1].startswith("## Regional vs global")
    assert "ratio_region_blind_*" in marks[where]


def test_render_card_pools_over_seeds_or_says_it_cannot(tiny_run):
    """The card's "Over seeds": evaluate's results with a ``seed_pool`` (seeds.pool_runs) give
    the section after the regional tables; without one, a run with regional margins gets the
    one-line note instead."""
    from metaflow.cards import Markdown

    from pythia.config import RunParams
    from pythia.seeds import SeedRun, pool_runs
    results = tiny_run[0]
    rvg = results["regional_vs_global"]
    assert len(rvg)  # the tiny world's regional candidates
    card = FakeCard()
    render_card(card, results, None, None)
    marks = [c._text for c in card.components if isinstance(c, Markdown)]
    assert [m for m in marks if "Over seeds" in m] == [
        m for m in marks if m.startswith("_Over seeds: no earlier run of this data")]
    params = [RunParams.build({"seed": s, "models": "mlp"}) for s in (0, 1)]
    pool = pool_runs([SeedRun(str(7 + s), p, "w", "window", rvg) for s, p in enumerate(params)])
    card = FakeCard()
    render_card(card, dict(results, seed_pool=pool), None, None)
    marks = [c._text for c in card.components if isinstance(c, Markdown)]
    where = next(i for i, m in enumerate(marks) if m.startswith("## Over seeds"))
    assert "Pooled over 2 runs that differ only in their seed: 7 (seed 0), 8 (seed 1)" in \
        marks[where]
    assert marks[where + 1].startswith("**Regional vs global (AgeGender log-loss")
    assert where > next(i for i, m in enumerate(marks) if m.startswith("## Regional vs global"))
    assert not any(m.startswith("_Over seeds: no earlier run") for m in marks)


def test_render_card_shows_the_library_stack_and_a_mixed_one_loudly(tiny_run):
    from metaflow.cards import Markdown

    from pythia import stack
    mine = stack.versions()
    other = {**mine, "numpy": "0.0.1"}
    candidates = [{"model": "mlp", "region": "global", "config_id": 0, "stack": mine},
                  {"model": "gbdt", "region": "global", "config_id": 0, "stack": other}]
    card = FakeCard()
    render_card(card, tiny_run[0], None, None, stack.report_lines(mine, candidates))
    text = " ".join(c._text for c in card.components if isinstance(c, Markdown))
    assert "## Library stack" in text
    assert (f"`stack: python {mine['python']}, pythia {mine['pythia']}, "
            f"numpy {mine['numpy']},") in text
    assert (f"**WARNING: THE TRAIN TASKS RAN ON DIFFERENT STACKS: gbdt/global#0 vs "
            f"mlp/global#0: numpy {mine['numpy']} -> 0.0.1") in text


def test_render_card_puts_a_baseline_win_at_the_top_in_red(tiny_run):
    from metaflow.cards import Markdown, ValueBox

    results = dict(tiny_run[0])
    champions = results["champions"].copy()
    lost = "NOTHING BEATS THE CONSTANT PRIOR in global: best model mlp/global#0 1.9820 >= ..."
    champions.loc[champions["region"] == "global", ["blessed", "warning"]] = [False, lost]
    results["champions"] = champions
    card = FakeCard()
    render_card(card, results, None, None)
    box, alarm = card.components[:2]
    assert isinstance(box, ValueBox) and box._theme == "danger" and box._value == "global"
    assert isinstance(alarm, Markdown) and f"**{lost}**" in alarm._text
    for comp in card.components[:2]:
        comp.render()


# ---------------------------------------------------------------- report / runs

FLOW = textwrap.dedent('''
    import pandas as pd
    from metaflow import FlowSpec, Parameter, step

    class TinyReportFlow(FlowSpec):
        fail = Parameter("fail", default=False, type=bool)

        @step
        def start(self):
            self.window = {"train": ["2024-01-01", "2024-01-02", "2024-01-03"],
                           "validation": ["2024-01-04"], "test": ["2024-01-05"]}
            if self.fail:
                raise RuntimeError("boom")
            self.champions = pd.DataFrame({
                "region": ["global", "EU"], "champion": ["mlp/global#0", None],
                "blessed": [True, False], "reason": ["best", "REGRESSION: worse"]})
            self.headline = pd.DataFrame({
                "eval_region": ["global", "global"], "model": ["mlp", "gbdt"],
                "candidate_region": ["global", "global"], "config_id": [0, 0],
                "champion": [True, False], "val_logloss": [1.5, 1.7],
                "logloss_age_gender": [1.61, 1.8], "macro_f1_age_gender": [0.31, 0.2],
                "logloss_gender": [0.52, 0.6], "macro_f1_gender": [0.71, 0.6],
                "logloss_age": [1.21, 1.3], "macro_f1_age": [0.41, 0.3]})
            self.metrics = pd.DataFrame({"metric": ["log_loss"], "value": [1.61]})
            self.next(self.end)

        @step
        def end(self):
            pass

    if __name__ == "__main__":
        TinyReportFlow()
''')


@pytest.fixture
def metaflow_home(tmp_path, monkeypatch):
    """A private local datastore/metadata root, for the Runner and for the in-process client."""
    from metaflow import default_metadata, metadata
    from metaflow.plugins.datastores.local_storage import LocalStorage

    root = tmp_path / "mf"
    (root / ".metaflow").mkdir(parents=True)
    env = {"METAFLOW_USER": "pythia", "METAFLOW_DEFAULT_METADATA": "local",
           "METAFLOW_DEFAULT_DATASTORE": "local", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root),
           "USERNAME": "pythia"}
    monkeypatch.setenv("METAFLOW_USER", "pythia")  # the Runner resolves the user in-process
    monkeypatch.setenv("USERNAME", "pythia")  # metaflow_config.USER was read at import
    monkeypatch.setattr(LocalStorage, "datastore_root", None)
    metadata(f"local@{root}")
    yield root, env
    default_metadata()


def test_report_and_runs_without_runs(metaflow_home):
    out = io.StringIO()
    assert print_runs_(out) == 1
    assert "No runs of TinyReportFlow" in out.getvalue()
    out = io.StringIO()
    assert print_report_(out) == 1


def print_runs_(out, n=10):
    from pythia.runs import print_runs
    return print_runs(n=n, flow_name="TinyReportFlow", out=out)


def print_report_(out, run_id=None):
    from pythia.runs import print_report
    return print_report(run_id=run_id, flow_name="TinyReportFlow", out=out)


class _Artifact:
    def __init__(self, data):
        self.data = data


class _FakeRun:
    """What print_report reads of a Metaflow Run: its end task's artifacts and status."""

    def __init__(self, **artifacts):
        self.end_task = {k: _Artifact(v) for k, v in artifacts.items()}
        self.pathspec, self.successful, self.finished_at = "DemoFlow/42", True, None


LOST = ("NOTHING BEATS THE CONSTANT PRIOR in global: best model mlp/global#0 1.9820 >= "
        "class_prior/global#0 1.9790")


def _lost_champions():
    return pd.DataFrame({"region": ["global", "EU"], "champion": [None, "mlp/EU#0"],
                         "model": ["class_prior", "mlp"], "blessed": [False, True],
                         "reason": ["NOT BLESSED: the best candidate is the class_prior "
                                    "baseline", "mlp/EU#0 beats every baseline"],
                         "warning": [LOST, None]})


def _finished_flow(tmp_path, champions, slots):
    """What the end step's summary reads off a finished flow: its champions and a bundle folder
    whose bundle.json has these ``slots``."""
    import types
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text(json.dumps({"models": slots}))
    return types.SimpleNamespace(window=None, reports_path="/r", bundle_path=str(bundle),
                                 champions=champions)


def test_report_and_summary_say_loudly_that_the_baselines_won(monkeypatch, tmp_path):
    import types

    from pythia import runs

    champions = _lost_champions()
    headline = pd.DataFrame({"eval_region": ["global"], "model": ["mlp"], "val_logloss": [1.98]})
    monkeypatch.setattr(runs, "open_flow", lambda name: object())
    monkeypatch.setattr(runs, "open_run", lambda name, rid: _FakeRun(
        champions=champions, headline=headline, window=None,
        candidates=[{"region": "global", "fold_regions": ["EU"]}, {"region": "EU"}]))
    out = io.StringIO()
    assert runs.print_report("42", out=out) == 0
    text = out.getvalue()
    assert "WARNING: NO MODEL BEATS THE BASELINES in 1 region(s)" in text and LOST in text
    assert "(validation scored out of fold in: EU; in-sample elsewhere" in text
    assert text.index(LOST) < text.index("Champions")  # before the tables, not after
    # the end step's summary: the block, each region's state and where each bundle slot came from
    flow = _finished_flow(tmp_path, champions, {
        "global": {"kind": "logreg", "origin": "fallback"},
        "EU": {"kind": "mlp", "origin": "DemoFlow/42/end/9"}})
    summary = runs.summary_text(flow, "DemoFlow", "42", "flows/demo_flow.py")
    assert summary.splitlines()[1] == "!" * 88 and LOST in summary
    # one line per region: its champion (or why none) and where its bundle slot came from
    assert ("global: not blessed (best candidate: class_prior): NOT BLESSED: the best candidate "
            "is the class_prior baseline; bundle: logreg, FALLBACK: nothing blessed and no "
            "previous champion") in summary
    assert "EU: mlp/EU#0; bundle: mlp, this run" in summary
    assert "Bundle slots" not in summary and summary.count("EU:") == 1
    # negative case: every region beats the baselines (or an old run without the column)
    assert runs.baseline_alarm(champions.assign(warning=None)) == []
    assert runs.baseline_alarm(champions.drop(columns="warning")) == []
    assert "!!!!" not in runs.summary_text(
        types.SimpleNamespace(window=None, reports_path="/r", bundle_path=None,
                              champions=champions.assign(warning=None)),
        "DemoFlow", "42", "flows/demo_flow.py")


@pytest.mark.slow
def test_report_and_runs_against_real_runs(metaflow_home, tmp_path):
    from metaflow import Runner

    root, env = metaflow_home
    flow_file = tmp_path / "tiny_report_flow.py"
    flow_file.write_text(FLOW)
    env = dict(os.environ, **env)
    with Runner(str(flow_file), show_output=False, env=env, cwd=str(tmp_path)).run() as ok:
        assert ok.status == "successful", ok.stderr
        ok_id = ok.run.id
    with Runner(str(flow_file), show_output=False, env=env,
                cwd=str(tmp_path)).run(fail=True) as bad:
        assert bad.status == "failed"
        bad_id = bad.run.id

    out = io.StringIO()
    assert print_report_(out) == 0  # latest successful, not the failed newer one
    text = out.getvalue()
    assert f"TinyReportFlow/{ok_id}" in text and "1.6100" in text and "REGRESSION" in text
    assert "2024-01-01..2024-01-05" in text

    out = io.StringIO()
    assert print_report_(out, run_id=bad_id) == 1
    assert "no headline" in out.getvalue()
    out = io.StringIO()
    assert print_report_(out, run_id="999") == 1
    assert "not found" in out.getvalue()

    out = io.StringIO()
    assert print_runs_(out) == 0
    lines = out.getvalue().splitlines()
    assert lines[1].split()[0] == bad_id and "failed" in lines[1]  # newest first
    ok_lines = [ln for ln in lines if ln.startswith(ok_id)]
    assert len(ok_lines) == 2 and "successful" in ok_lines[0]
    assert "mlp/global#0" in out.getvalue() and "(kept previous)" in out.getvalue()
    assert "0.3100" in out.getvalue() and "0.7100" in out.getvalue()
    with pytest.raises(ValueError, match="n must be"):
        print_runs_(io.StringIO(), n=0)


def test_validation_importance_weights_give_a_natural_log_loss(tiny_run, tmp_path):
    """A resampled validation day: the split manifest's keep-rates weight it back to natural
    priors, and champions use the weighted loss."""
    _, frames, _, _, candidates, _ = tiny_run
    rates = {VALIDATION: {str(c): (0.25 if c < N_AGE else 1.0) for c in range(2 * N_AGE)}}
    manifest = _write_splits(tmp_path / "splits", frames, rates)
    y = frames[VALIDATION][Y_AGE_GENDER].to_numpy()
    w = importance_weights(y, manifest, VALIDATION, N_AGE)
    np.testing.assert_array_equal(w, np.where(y < N_AGE, 4.0, 1.0))
    out = _run(candidates[:2], manifest, tmp_path / "a", make_figures=False)
    m = out["metrics"]
    sel = m[(m["test_set"] == "validation") & (m["model"] == "mlp") & (m["target"] == "age_gender")
            & (m["eval_region"] == "global") & (m["label_source"] == "provider")]
    plain = sel[sel["metric"] == "log_loss"]["value"].iloc[0]
    natural = sel[sel["metric"] == "log_loss_natural"]["value"].iloc[0]
    assert natural != pytest.approx(plain)
    champ = out["champions"].set_index("region").loc["global"]
    val = m[(m["test_set"] == "validation") & (m["model"] == champ["model"])
            & (m["region"] == champ["candidate_region"]) & (m["target"] == "age_gender")
            & (m["eval_region"] == "global") & (m["metric"] == "log_loss_natural")]
    assert champ["val_logloss"] == pytest.approx(val["value"].iloc[0])
    # a split that was not resampled (no rates): the weighted loss is the plain one
    without = _run(candidates[:2], tiny_run[5], tmp_path / "b", make_figures=False)["metrics"]
    sel = without[(without["test_set"] == VALIDATION) & without["class"].isna()
                  & without["metric"].isin(["log_loss", "log_loss_natural"])]
    wide = sel.pivot_table(index=["model", "eval_region", "target", "label_source"],
                           columns="metric", values="value")
    assert len(wide) and np.allclose(wide["log_loss"], wide["log_loss_natural"])


def test_importance_weights_reject_labels_beyond_the_age_edges():
    manifest = {"rates": {VALIDATION: {"0": 0.5}}}
    np.testing.assert_array_equal(  # unlabelled rows are not scored: weight 1
        importance_weights(pd.array([0, 3, None], dtype="Int32"), manifest, VALIDATION, 2),
        [2.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="age edges"):
        importance_weights(np.array([0, 4]), manifest, VALIDATION, 2)


def test_read_split_frames_weights_only_the_validation_day(tiny_run):
    from pythia.evaluate.io import read_split_frames
    _, frames, *_, manifest = tiny_run
    read = read_split_frames(manifest, EDGES)
    assert set(read) == {VALIDATION, TEST_NATURAL, TEST_RESAMPLED}
    assert len(read[TEST_NATURAL]) == len(frames[TEST_NATURAL])
    assert (read[VALIDATION]["importance_weight"] == 1.0).all()  # no rates: not resampled
    assert "importance_weight" not in read[TEST_NATURAL].columns
    with pytest.raises(FileNotFoundError, match="no Parquet data"):
        read_split_frames({"paths": {VALIDATION: "/nonexistent/validation"}}, EDGES)


def test_rows_to_requests_keeps_the_request_columns():
    rows = pd.DataFrame({"impression_id": ["i1", "i2"], "country": ["DE", None],
                         "device_type": ["phone", "tv"], "ts_seconds": [1_700_000_000, 5],
                         "ts": pd.to_datetime([1_700_000_000, 5], unit="s"),
                         "y_age_gender": [3, 1], "region": ["EU", "EU"]})
    requests = rows_to_requests(rows)
    assert requests[0] == {"impression_id": "i1", "country": "DE", "device_type": "phone",
                           "ts": 1_700_000_000}
    assert requests[1]["country"] is None and requests[1]["ts"] == 5  # missing -> None
    with pytest.raises(KeyError):  # split rows always carry ts_seconds
        rows_to_requests(rows.drop(columns="ts_seconds"))


def test_the_package_imports_its_modules_on_first_use():
    """Every flow task imports ``pythia.evaluate``; only evaluate/end may pay for scikit-learn,
    SciPy and matplotlib (about 2 s a task)."""
    import subprocess

    code = ("import sys, json\n"
            "from pythia import etl, evaluate, models, providers, runs, scoring, source, "
            "tfrecords\n"
            "heavy = lambda: sorted({m.split('.')[0] for m in sys.modules} & "
            "{'sklearn', 'scipy', 'matplotlib', 'tensorflow', 'torch', 'pyspark'})\n"
            "before = heavy()\n"
            "evaluate.run, evaluate.render_card\n"
            "print(json.dumps([before, heavy()]))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(Path(__file__).resolve().parent.parent))
    before, after = json.loads(res.stdout.strip().splitlines()[-1])
    assert before == []
    assert {"sklearn", "matplotlib"} <= set(after)
    for name in evaluate.__all__:
        assert getattr(evaluate, name) is not None, name
    assert "run" in dir(evaluate)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        evaluate.nothing_here  # noqa: B018


def test_the_end_summary_says_each_champion_and_its_slot_on_one_short_line(tmp_path):
    """A blessed champion: its validation log-loss, the baselines it beat and the noise rule's
    z, the previous champion's test log-loss on the same rows, and its bundle slot; a slot of a
    region without a champion row still shows. One line each, under ~200 characters."""
    from pythia import run_summary
    row = {"region": "NA", "champion": "mlp/NA#0", "model": "mlp", "blessed": True,
           "val_logloss": 1.95094, "baselines": "logreg/NA#0 2.1424, class_prior/NA#0 2.4638",
           "margin_vs": "mlp/NA#0 vs logreg/NA#0", "margin_z": -5.449, "previous_logloss": 1.9612,
           "current_logloss_on_same_rows": 1.9433, "n_same_rows": 150516,
           "reason": "a long reason " * 20}
    flow = _finished_flow(tmp_path, pd.DataFrame([row]), {
        "NA": {"kind": "mlp", "origin": "DemoFlow/7/end/3"},
        "EU": {"kind": "gbdt", "origin": "previous run"},
        "APAC": {"kind": "mlp", "origin": "previous run", "blessed_in": "DemoFlow/5/end/9",
                 "blessed_date": "2026-11-30"}})
    lines = run_summary.summary_text(flow, "DemoFlow", "7", "flows/demo_flow.py").splitlines()
    na = next(ln for ln in lines if ln.strip().startswith("NA:"))
    assert na == ("        NA: mlp/NA#0 1.9509, beat logreg/NA#0 2.1424, class_prior/NA#0 2.4638 "
                  "(z -5.45 vs logreg/NA#0); test 1.9433 vs the previous champion's 1.9612 on "
                  "150,516 rows; bundle: mlp, this run")
    assert len(na) <= 200  # short: the full reason is in `pythia report` and the card
    assert "        EU: bundle: gbdt, kept from the previous run" in lines
    assert ("      APAC: bundle: mlp, kept from the previous run (blessed in DemoFlow/5, test "
            "day 2026-11-30)") in lines
    assert "a long reason" not in "\n".join(lines)
    # an unreadable bundle: the champions still print, without slots
    flow.bundle_path = str(tmp_path / "missing")
    text = run_summary.summary_text(flow, "DemoFlow", "7", "flows/demo_flow.py")
    assert "NA: mlp/NA#0 1.9509" in text and "bundle: " not in text.split("Champions")[1]
    # validation holds the users held out of training: the header says whose log-loss it is
    assert "Champions (validation AgeGender log-loss) and" in text
    flow.split_manifest = {"holdout_users": 0.1, "seed": 0}
    assert ("Champions (validation AgeGender log-loss, on the 0.1 of the users held out of "
            "training) and") in run_summary.summary_text(flow, "DemoFlow", "7", "f.py")
    # and where it was scored out of fold (models.crossfit: each candidate's fold_regions)
    flow.candidates = [{"region": "global", "fold_regions": ["NA", "EU"]},
                       {"region": "EU", "fold_regions": ["EU"]}, {"region": "APAC"}]
    assert ("log-loss, on the 0.1 of the users held out of training, out of fold in EU, NA) "
            "and") in run_summary.summary_text(flow, "DemoFlow", "7", "f.py")


def _model_dir(tmp_path) -> str:
    """A saved model folder as far as the champion look-ups check it (its meta.json)."""
    folder = tmp_path / "models" / "mlp__APAC__0"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").write_text("{}")
    return str(folder)


def _kept(row: dict, run: str, split=(0.0, 0), edges=None, day=None) -> dict:
    """A champion row of a run from before ``bundle_models`` as ``previous_champions`` keeps
    it: with the run that blessed it, that run's test day, split and age edges."""
    return {**row, "blessed_in": run, "blessed_date": day, "user_split": list(split),
            "age_edges": edges}


def test_previous_champions_leave_out_a_model_folder_that_is_gone(tmp_path, monkeypatch,
                                                                   capsys):
    """`pythia clean` (or a lifecycle rule) removed the previous run's files: its champions
    cannot be kept in the bundle, so their regions route as if there were none."""
    from types import SimpleNamespace

    from pythia import runs
    kept, gone = _model_dir(tmp_path), str(tmp_path / "cleaned" / "mlp__EU__0")
    champions = [{"region": "APAC", "model": "mlp", "model_dir": kept, "blessed": True},
                 {"region": "EU", "model": "mlp", "model_dir": gone, "blessed": True}]
    monkeypatch.setattr(runs, "_earlier_successful_runs",
                        lambda flow, current: iter([SimpleNamespace(pathspec="DemoFlow/1")]))
    monkeypatch.setattr(runs, "_artifact", lambda run, name: (
        champions if name == "champions" else None))
    monkeypatch.setattr(runs, "_other_spec", lambda run: None)
    assert runs.previous_champions("DemoFlow", "2") == {"APAC": _kept(champions[0], "DemoFlow/1")}
    assert f"DemoFlow/1's EU champion is not kept: its model folder {gone} is gone" in \
        capsys.readouterr().out


def test_previous_champions_are_kept_with_their_own_encoders_and_this_runs_classes(
        tmp_path, monkeypatch, capsys):
    """A previous champion scores through its own run's vocabularies and statistics (its
    bundle slot carries them: tests/test_slot_encoders.py), so other encoders keep it (before
    session 64 they did not: on daily data no champion was ever kept). Other age edges are
    other classes, and a bundle has one set: then it is not kept."""
    from types import SimpleNamespace

    from pythia import runs
    champions = [{"region": "APAC", "model": "mlp", "model_dir": _model_dir(tmp_path),
                  "blessed": True}]
    theirs = {"vocabularies": {"country": ["US", "DE"]}, "numeric": {},
              "age_edges": [18, 25, 35, 45, 55, 65]}
    monkeypatch.setattr(runs, "_earlier_successful_runs",
                        lambda flow, current: iter([SimpleNamespace(pathspec="DemoFlow/1")]))
    monkeypatch.setattr(runs, "_artifact", lambda run, name: {
        "champions": champions, "encoders": theirs}.get(name))
    monkeypatch.setattr(runs, "_other_spec", lambda run: None)
    ours = {**theirs, "vocabularies": {"country": ["DE", "US"]}}  # other ids
    want = {"APAC": _kept(champions[0], "DemoFlow/1", edges=theirs["age_edges"])}
    assert runs.previous_champions("DemoFlow", "2", None, ours) == want
    assert runs.previous_champions("DemoFlow", "2", None, dict(theirs)) == want
    assert capsys.readouterr().out == ""
    other_classes = {**theirs, "age_edges": [18, 30, 50]}
    assert runs.previous_champions("DemoFlow", "2", None, other_classes) == {}
    assert ("previous run DemoFlow/1's champions are not kept: they predict the age buckets of "
            "edges [18, 25, 35, 45, 55, 65], this run those of [18, 30, 50]") in \
        capsys.readouterr().out
    assert runs.previous_champions("DemoFlow", "2") == want  # not asked


def test_previous_champions_are_what_the_previous_bundle_served(tmp_path, monkeypatch, capsys):
    """A region that blesses nothing two days running keeps the model last blessed there: the
    previous run's ``bundle_models`` holds its own champions and the ones it kept, each with
    the run that blessed it. Before (session 64) only the previous run's blessed champions
    were kept, so on the second day such a region fell to the global slot. Each kept model is
    judged by its own run's split and classes, not by the previous run's."""
    from types import SimpleNamespace

    from pythia import runs
    edges = [18, 25, 35, 45, 55, 65]
    eu = str(tmp_path / "eu")
    os.makedirs(eu)
    open(os.path.join(eu, "meta.json"), "w").close()
    served = [
        {"region": "EU", "model": "mlp", "model_dir": eu, "source": "DemoFlow/2/end/9",
         "blessed_in": "DemoFlow/2/end/9", "user_split": [0.2, 0], "age_edges": edges},
        {"region": "APAC", "model": "mlp", "model_dir": _model_dir(tmp_path),
         "source": "previous run", "blessed_in": "DemoFlow/1/end/5", "user_split": [0.2, 0],
         "age_edges": edges},
        {"region": "global", "model": "logreg", "model_dir": eu, "source": "fallback",
         "blessed_in": None, "user_split": [0.2, 0], "age_edges": edges}]
    champions = [{"region": "EU", "model": "mlp", "model_dir": eu, "blessed": True},
                 {"region": "APAC", "model": "logreg", "blessed": False}]
    artifacts = {"champions": champions, "bundle_models": served}
    monkeypatch.setattr(runs, "_earlier_successful_runs",
                        lambda flow, current: iter([SimpleNamespace(pathspec="DemoFlow/2")]))
    monkeypatch.setattr(runs, "_artifact", lambda run, name: artifacts.get(name))
    monkeypatch.setattr(runs, "_other_spec", lambda run: None)
    monkeypatch.setattr(runs, "open_run", lambda flow, run_id: None)  # DemoFlow/1: gone
    kept = runs.previous_champions("DemoFlow", "3", (0.2, 0), {"age_edges": edges})
    undated = {"blessed_date": None}  # neither recorded (before session 66) nor readable
    assert kept == {"EU": {**served[0], **undated}, "APAC": {**served[1], **undated}}
    assert capsys.readouterr().out == ("APAC: keeps mlp of DemoFlow/1/end/5 (test day unknown), "
                                       "which DemoFlow/2 kept too (no champion blessed there "
                                       "since)\n")
    # the kept one's own run held out other users: it alone is left out
    served[1] = {**served[1], "user_split": [0.1, 0]}
    assert set(runs.previous_champions("DemoFlow", "3", (0.2, 0))) == {"EU"}
    assert "previous run DemoFlow/1/end/5 skipped: it held out 0.1 of the users" in \
        capsys.readouterr().out
    # and its classes: other edges leave it out, the previous run's own champion stays
    served[1] = {**served[1], "user_split": [0.2, 0], "age_edges": [18, 30]}
    assert set(runs.previous_champions("DemoFlow", "3", (0.2, 0), {"age_edges": edges})) == \
        {"EU"}
    assert "previous run DemoFlow/1/end/5's champions are not kept: they predict the age " \
        "buckets of edges [18, 30]" in capsys.readouterr().out
    # a run from before bundle_models: its blessed champions, with its own split and edges
    del artifacts["bundle_models"]
    artifacts.update(split_manifest={"holdout_users": 0.2, "seed": 0},
                     encoders={"age_edges": edges})
    assert runs.previous_champions("DemoFlow", "3", (0.2, 0), {"age_edges": edges}) == {
        "EU": {**champions[0], "blessed_in": "DemoFlow/2", "blessed_date": None,
               "user_split": [0.2, 0], "age_edges": edges}}


def test_a_kept_model_older_than_max_kept_days_is_not_kept(tmp_path, monkeypatch, capsys):
    """``[evaluate] max_kept_days``: a region that blesses nothing keeps the model last blessed
    there for that many days of data at most (its blessing run's test day to this run's),
    then routes to the global slot. A backfill never keeps a model blessed on a later day. A
    slot recorded before session 66 has no test day: it is read off the run that blessed it,
    and when that run is gone the model's age is unknown and it is kept, said so."""
    from types import SimpleNamespace

    from pythia import runs
    eu, apac = str(tmp_path / "eu"), _model_dir(tmp_path)
    os.makedirs(eu)
    open(os.path.join(eu, "meta.json"), "w").close()
    served = [
        {"region": "EU", "model": "mlp", "model_dir": eu, "source": "DemoFlow/5/end/9",
         "blessed_in": "DemoFlow/5/end/9", "blessed_date": "2026-12-05", "user_split": [0.2, 0],
         "age_edges": None},
        {"region": "APAC", "model": "mlp", "model_dir": apac, "source": "previous run",
         "blessed_in": "DemoFlow/1/end/5", "blessed_date": "2026-11-01",
         "user_split": [0.2, 0], "age_edges": None}]
    windows = {"DemoFlow/1": {"test": ["2026-11-01"]}, "DemoFlow/5": {"test": ["2026-12-05"]}}
    monkeypatch.setattr(runs, "_earlier_successful_runs",
                        lambda flow, current: iter([SimpleNamespace(pathspec="DemoFlow/5")]))
    monkeypatch.setattr(runs, "_artifact", lambda run, name: {
        "bundle_models": served, "window": windows.get(run.pathspec)}.get(name))
    monkeypatch.setattr(runs, "_other_spec", lambda run: None)
    monkeypatch.setattr(runs, "open_run", lambda flow, rid: (
        SimpleNamespace(pathspec=f"{flow}/{rid}") if f"{flow}/{rid}" in windows else None))

    def keep(limit, day="2026-12-06"):
        return runs.previous_champions("DemoFlow", "6", (0.2, 0), None, day, limit)

    assert set(keep(0)) == {"EU", "APAC"}  # no limit
    assert capsys.readouterr().out == (
        "APAC: keeps mlp of DemoFlow/1/end/5 (test day 2026-11-01, 35 day(s) before this "
        "run's), which DemoFlow/5 kept too (no champion blessed there since)\n")
    assert set(keep(35)) == {"EU", "APAC"}  # at most that many days: 35 is kept
    capsys.readouterr()
    assert set(keep(30)) == {"EU"}
    assert capsys.readouterr().out == (
        "APAC: mlp of DemoFlow/1/end/5 is not kept: its test day 2026-11-01 is 35 days before "
        "this run's ([evaluate] max_kept_days 30); the region routes to the global slot\n")
    assert set(keep(30, day=None)) == {"EU", "APAC"}  # this run's day unknown: no age
    capsys.readouterr()
    # a backfill of an earlier day: a model blessed after it may have trained on that day
    assert set(keep(0, day="2026-12-01")) == {"APAC"}
    assert capsys.readouterr().out.startswith(
        "EU: mlp of DemoFlow/5/end/9 is not kept: its test day 2026-12-05 is after this run's "
        "2026-12-01 (a backfill): it may have trained on it; the region routes to the global "
        "slot\n")
    # slots recorded before session 66: each test day is read off the run that blessed it
    served[:] = [{k: v for k, v in row.items() if k != "blessed_date"} for row in served]
    assert keep(30) == {"EU": {**served[0], "blessed_date": "2026-12-05"}}
    assert "its test day 2026-11-01 is 35 days before" in capsys.readouterr().out
    del windows["DemoFlow/1"]  # that run is gone: the age is unknown, and the model kept
    assert keep(30)["APAC"]["blessed_date"] is None
    assert "APAC: keeps mlp of DemoFlow/1/end/5 (test day unknown)" in capsys.readouterr().out


def test_previous_bundle_skips_bundles_of_another_feature_spec(tmp_path, monkeypatch, capsys):
    """After a feature spec change the newest earlier run's bundle and champions cannot score
    this run's features: evaluate compares with the newest bundle of this spec, or with none,
    and the end step keeps no champion of another spec."""
    from types import SimpleNamespace

    from pythia import runs
    from pythia.features import spec_version

    def bundle(name: str, spec: str) -> str:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "bundle.json").write_text(json.dumps({"spec_version": spec}))
        return str(folder)

    found = {"DemoFlow/3": bundle("new", "000000000000"), "DemoFlow/2": None,
             "DemoFlow/1": bundle("old", spec_version())}
    champions = [{"region": "APAC", "model": "mlp", "model_dir": _model_dir(tmp_path),
                  "blessed": True}]
    fake = [SimpleNamespace(pathspec=p) for p in found]
    monkeypatch.setattr(runs, "_earlier_successful_runs", lambda flow, current: iter(fake))
    monkeypatch.setattr(runs, "_artifact", lambda run, name: (
        found[run.pathspec] if name == "bundle_path" else
        champions if name == "champions" else None))
    assert runs.previous_bundle("DemoFlow", "4") == (found["DemoFlow/1"], "DemoFlow/1")
    assert "DemoFlow/3 skipped: its bundle was built for feature spec 000000000000" in \
        capsys.readouterr().out
    assert runs.previous_champions("DemoFlow", "4") == {}  # the newest run's: another spec
    fake.pop(0)
    assert runs.previous_champions("DemoFlow", "4") == {  # DemoFlow/2: no bundle, this spec
        "APAC": _kept(champions[0], "DemoFlow/2")}
    fake[:] = [SimpleNamespace(pathspec="DemoFlow/3")]  # only another spec's bundle left
    assert runs.previous_bundle("DemoFlow", "4") == (None, None)


def test_previous_bundle_skips_runs_that_trained_on_this_runs_new_users(tmp_path, monkeypatch,
                                                                       capsys):
    """A run that holds users out compares its champions with the previous one on those users
    (evaluate.previous): a previous run that trained on them (held out none, fewer or others)
    would win that comparison by memory, so it is skipped."""
    from types import SimpleNamespace

    from pythia import runs
    from pythia.features import spec_version

    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "bundle.json").write_text(json.dumps({"spec_version": spec_version()}))
    split = {"DemoFlow/3": {"seed": 0}, "DemoFlow/2": {"holdout_users": 0.1, "seed": 1},
             "DemoFlow/1": {"holdout_users": 0.2, "seed": 0}}  # 3: from before the holdout
    champions = [{"region": "APAC", "model": "mlp", "model_dir": _model_dir(tmp_path),
                  "blessed": True}]
    fake = [SimpleNamespace(pathspec=p) for p in split]
    monkeypatch.setattr(runs, "_earlier_successful_runs", lambda flow, current: iter(fake))
    monkeypatch.setattr(runs, "_artifact", lambda run, name: {
        "bundle_path": str(folder), "split_manifest": split[run.pathspec],
        "champions": champions}.get(name))
    ours = runs.user_split_of({"holdout_users": 0.1, "seed": 0})
    assert ours == (0.1, 0) and runs.user_split_of({"seed": 3}) == (0.0, 3)
    # 0.2 with the same seed held out every user 0.1 holds out: a fair comparison
    assert runs.previous_bundle("DemoFlow", "4", ours) == (str(folder), "DemoFlow/1")
    out = capsys.readouterr().out
    assert "DemoFlow/3 skipped: it held out 0 of the users (seed 0), this run 0.1" in out
    assert "DemoFlow/2 skipped: it held out 0.1 of the users (seed 1)" in out
    assert runs.previous_champions("DemoFlow", "4", ours) == {}  # the newest: trained on them
    assert runs.previous_champions("DemoFlow", "4", (0.0, 0)) == {
        "APAC": _kept(champions[0], "DemoFlow/3", [0.0, 0])}
    assert runs.previous_bundle("DemoFlow", "4") == (str(folder), "DemoFlow/3")  # no holdout



def test_previous_bundle_of_a_backfill_is_of_no_later_day(tmp_path, monkeypatch, capsys):
    """A backfill (a run of an earlier date after later ones) compares its champions with the
    newest bundle of a day no later than its test day: a later day's models may have trained
    on this run's test day, and would block its champion by memory (the regression rule)."""
    from types import SimpleNamespace

    from pythia import runs
    from pythia.features import spec_version

    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "bundle.json").write_text(json.dumps({"spec_version": spec_version()}))
    days = {"DemoFlow/3": "2026-12-05", "DemoFlow/2": "2026-12-01", "DemoFlow/1": "2026-11-20"}
    fake = [SimpleNamespace(pathspec=p) for p in days]
    monkeypatch.setattr(runs, "_earlier_successful_runs", lambda flow, current: iter(fake))
    monkeypatch.setattr(runs, "_artifact", lambda run, name: {
        "bundle_path": str(folder), "split_manifest": {"holdout_users": 0.2, "seed": 0},
        "window": {"test": [days[run.pathspec]]}}.get(name))
    assert runs.previous_bundle("DemoFlow", "4", (0.2, 0), "2026-12-06") == (
        str(folder), "DemoFlow/3")  # a daily run: the newest
    assert capsys.readouterr().out == ""
    assert runs.previous_bundle("DemoFlow", "4", (0.2, 0), "2026-12-01") == (
        str(folder), "DemoFlow/2")  # the same day is no later
    assert capsys.readouterr().out == (
        "previous run DemoFlow/3 skipped: its test day 2026-12-05 is after this run's "
        "2026-12-01 (a backfill): its models may have trained on this run's test day\n")
    assert runs.previous_bundle("DemoFlow", "4", (0.2, 0), "2026-11-01") == (None, None)
    assert runs.previous_bundle("DemoFlow", "4", (0.2, 0)) == (str(folder), "DemoFlow/3")
