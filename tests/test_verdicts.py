"""Every model that is not a baseline, against the best baseline per region
(``evaluate.verdicts``): the table, the loud block when a model beats them nowhere, and where
a user sees them (the end step's summary, ``pythia report``)."""
from __future__ import annotations

import io
import types

import numpy as np
import pandas as pd

from pythia.evaluate.verdicts import (VERDICT_COLUMNS, build_model_verdicts, failing_models,
                                      print_model_verdicts, verdict_alarm, verdict_lines)

# (model, candidate region) -> {eval region: validation AgeGender log-loss}
SCORES = {
    ("class_prior", "global"): {"global": 2.50, "EU": 2.52, "NA": 2.49},
    ("logreg", "global"): {"global": 2.19, "EU": 2.21, "NA": 2.17},
    ("logreg", "EU"): {"EU": 2.20},
    ("mlp", "global"): {"global": 2.17, "EU": 2.19, "NA": 2.16},
    ("mlp", "NA"): {"NA": 2.15},
    # TabNet: behind logreg everywhere but in EU, where its regional candidate wins
    ("tabnet", "global"): {"global": 2.21, "EU": 2.24, "NA": 2.20},
    ("tabnet", "EU"): {"EU": 2.18},
}
BASELINE = {"class_prior", "logreg"}


def _metrics(scores: dict, coverage: dict | None = None) -> pd.DataFrame:
    """The long metrics table as ``score_streaming`` writes it: the validation log-loss rows
    the champion rule reads (natural-weighted, provider labels, AgeGender), and coverage."""
    rows = []
    for (model, region), by_eval in scores.items():
        for eval_region, value in by_eval.items():
            base = {"model": model, "region": region, "config_id": 0,
                    "eval_region": eval_region, "test_set": "validation",
                    "label_source": "provider", "class": np.nan, "n": 100}
            rows.append({**base, "metric": "log_loss_natural", "target": "age_gender",
                         "value": value})
            cov = (coverage or {}).get((model, region), 1.0)
            rows.append({**base, "metric": "coverage", "target": np.nan, "value": cov})
    return pd.DataFrame(rows)


def _candidates(scores: dict) -> list[dict]:
    return [{"model": m, "region": r, "config_id": 0, "predictions_uri": f"/p/{m}_{r}",
             "model_dir": f"/m/{m}_{r}", "is_baseline": m in BASELINE,
             "is_reference": m == "class_prior", "fit_seconds": 10.0 if r == "global" else 2.5}
            for m, r in scores]


def test_each_model_against_the_best_baseline_of_each_region():
    table = build_model_verdicts(_metrics(SCORES), _candidates(SCORES))
    assert list(table.columns) == VERDICT_COLUMNS
    assert list(zip(table["model"], table["eval_region"])) == [
        ("mlp", "global"), ("mlp", "EU"), ("mlp", "NA"),
        ("tabnet", "global"), ("tabnet", "EU"), ("tabnet", "NA")]
    row = table.set_index(["model", "eval_region"])
    # a region's best candidate of the model, whether global or regional
    assert row.loc[("mlp", "NA"), "candidate"] == "mlp/NA#0"
    assert row.loc[("tabnet", "EU"), "candidate"] == "tabnet/EU#0"
    # against the region's best baseline candidate (EU: the regional logreg, 2.20 < 2.21)
    assert row.loc[("tabnet", "EU"), "baseline"] == "logreg/EU#0"
    assert row.loc[("tabnet", "EU"), "gap"] == np.float64(2.18) - np.float64(2.20)
    assert row.loc[("tabnet", "global"), "gap"] > 0
    assert list(table["beats_baselines"]) == [True, True, True, False, True, False]
    # TabNet wins somewhere, so no alarm; one line per model says where it loses
    assert failing_models(table) == [] and verdict_alarm(table, _candidates(SCORES)) == []
    lines = verdict_lines(table)
    assert lines[0] == "  mlp: beats the best baseline in 3 of 3 region(s)"
    assert lines[1] == ("  tabnet: beats the best baseline in 1 of 3 region(s) (EU); behind in "
                        "global (+0.0200), NA (+0.0300)")


def test_a_model_behind_the_baselines_everywhere_is_named_loudly_with_its_cost():
    scores = {**SCORES, ("tabnet", "EU"): {"EU": 2.25}}  # its regional fit no longer wins
    candidates = _candidates(scores)
    table = build_model_verdicts(_metrics(scores), candidates)
    assert failing_models(table) == ["tabnet"]
    alarm = verdict_alarm(table, candidates)
    assert alarm[0] == alarm[-1] == "!" * 88
    assert alarm[1].startswith("WARNING: model(s) that beat the baselines in no region")
    assert len(alarm) == 4 and alarm[2].startswith("  tabnet: global 2.2100 against "
                                                    "logreg/global#0 2.1900 (+0.0200), EU")
    assert "its fits took 12 s" in alarm[2]  # 10 s global + 2.5 s EU
    assert "mlp" not in "".join(alarm)
    # the baselines the caller names win over the candidates' flags: with the MLP as the
    # only non-baseline ... and logreg named a contender, logreg is judged too
    judged = build_model_verdicts(_metrics(scores), candidates, ("class_prior",))
    assert set(judged["model"]) == {"logreg", "mlp", "tabnet"}
    assert set(judged["baseline"]) == {"class_prior/global#0"}


def test_a_candidate_that_cannot_be_chosen_is_not_counted():
    # the regional TabNet that wins EU misses validation rows: ineligible, so TabNet is
    # judged by its global candidate there (behind everywhere)
    metrics = _metrics(SCORES, coverage={("tabnet", "EU"): 0.9})
    table = build_model_verdicts(metrics, _candidates(SCORES))
    row = table.set_index(["model", "eval_region"]).loc[("tabnet", "EU")]
    assert row["candidate"] == "tabnet/global#0" and not row["beats_baselines"]
    assert failing_models(table) == ["tabnet"]


def test_no_table_without_metrics_candidates_or_a_baseline():
    for metrics, candidates in ((None, _candidates(SCORES)), (_metrics(SCORES), []),
                                (_metrics(SCORES), None)):
        assert build_model_verdicts(metrics, candidates).empty
    only = {k: v for k, v in SCORES.items() if k[0] not in BASELINE}
    empty = build_model_verdicts(_metrics(only), _candidates(only))
    assert empty.empty and verdict_alarm(empty, None) == [] and verdict_lines(empty) == []
    out = io.StringIO()
    print_model_verdicts(None, None, out)
    assert out.getvalue() == ""


def test_the_end_step_and_pythia_report_show_them(monkeypatch):
    from pythia import run_summary, runs

    scores = {**SCORES, ("tabnet", "EU"): {"EU": 2.25}}
    flow = types.SimpleNamespace(
        window=None, reports_path="/r", bundle_path=None, champions=pd.DataFrame(
            [{"region": "global", "champion": "mlp/global#0", "model": "mlp",
              "blessed": True, "val_logloss": 2.17, "reason": "beats them"}]),
        metrics=_metrics(scores), candidates=_candidates(scores))
    text = run_summary.summary_text(flow, "DemoFlow", "7", "flows/demo_flow.py")
    lines = text.splitlines()
    assert lines[1] == "!" * 88 and lines[3].startswith("  tabnet: global 2.2100")
    at = lines.index("Models against the best baseline (validation AgeGender log-loss; gap = "
                     "model - baseline):")
    assert lines[at + 1] == "  mlp: beats the best baseline in 3 of 3 region(s)"
    assert lines[at + 2].startswith("  tabnet: beats the best baseline in 0 of 3 region(s); "
                                    "behind in global (+0.0200), EU (+0.0400), NA (+0.0300)")
    assert lines[at + 3] == "Inspect:"
    # a run without metrics (or from before the table) prints no section and no block
    bare = types.SimpleNamespace(**{**vars(flow), "metrics": None})
    assert "Models against" not in run_summary.summary_text(bare, "DemoFlow", "7", "f.py")
    # artifacts the table cannot read: said in one line, the summary still prints
    broken = types.SimpleNamespace(**{**vars(flow), "candidates": [
        {"model": "logreg", "is_baseline": True}, {"model": "mlp"}]})
    text = run_summary.summary_text(broken, "DemoFlow", "7", "f.py")
    assert "(no model verdicts: candidate" in text and "Inspect:" in text

    # pythia report: the block before the table, after the headline
    from test_evaluate import _FakeRun
    monkeypatch.setattr(runs, "open_flow", lambda name: object())
    monkeypatch.setattr(runs, "open_run", lambda name, rid: _FakeRun(
        champions=flow.champions, window=None, metrics=flow.metrics,
        candidates=flow.candidates, headline=pd.DataFrame(
            {"eval_region": ["global"], "model": ["mlp"], "val_logloss": [2.17]})))
    out = io.StringIO()
    assert runs.print_report("7", out=out) == 0
    printed = out.getvalue()
    assert (printed.index("Headline") < printed.index("WARNING: model(s) that beat")
            < printed.index("Models against the baselines"))
    assert "tabnet/global#0" in printed and "logreg/EU#0" in printed


def _paired(losses: dict, users: np.ndarray, regions: dict | None = None):
    """Metrics and evaluate's paired sums (``margins.GroupSums`` per candidate and region) of
    per-row probabilities of the true AgeGender class, as ``score_streaming`` builds them:
    the metrics' log-loss is the mean over the same rows the sums hold."""
    from pythia.evaluate.margins import GroupSums, margin_lookup, user_groups

    regions = regions or {"global": np.ones(len(users), bool)}
    y = np.arange(len(users)) % 12
    groups, scores = user_groups(users), {}
    sums = {}
    for (model, region), p_true in losses.items():
        p = np.full((len(y), 12), (1 - p_true)[:, None] / 11)
        p[np.arange(len(y)), y] = p_true
        scores[(model, region)] = {}
        for eval_region, rows in regions.items():
            s = GroupSums()
            s.add(groups[rows], y[rows], p[rows], None)
            sums[((model, region, 0), eval_region)] = s
            scores[(model, region)][eval_region] = float(-np.log(p_true[rows]).mean())
    return _metrics(scores), _candidates(scores), margin_lookup(sums)


def test_a_model_ahead_only_within_noise_does_not_beat_the_baselines():
    """The champion rule's noise test on every gap: a lead smaller than z_min user-clustered
    SEs is 'within noise', as it would not bless a champion; the point estimate alone would
    have counted it a win."""
    from pythia.evaluate.margins import paired_margin, user_groups

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(400), 5)  # 400 users, 5 rows each
    per_user = rng.normal(0, 0.05, 400)[users]  # a user's rows move together
    base = np.clip(0.2 + per_user, 0.02, 0.9)
    lead = rng.normal(0, 0.3, 400)
    lead += 0.01 - lead.mean()  # TabNet: 0.01 nats ahead on average, SE about 0.015
    losses = {("class_prior", "global"): np.full(len(users), 1 / 12),
              ("logreg", "global"): base,
              ("mlp", "global"): np.clip(base * 1.3, 0, 0.95),  # clearly ahead
              # ahead on the point estimate, by far less than its noise
              ("tabnet", "global"): base * np.exp(lead[users]),
              ("gbdt", "global"): base * 0.8}  # clearly behind
    metrics, candidates, margins = _paired(losses, users)
    table = build_model_verdicts(metrics, candidates, margins=margins).set_index("model")
    assert list(table.columns) == [c for c in VERDICT_COLUMNS if c != "model"]
    assert table.loc["mlp", "verdict"] == "ahead" and table.loc["mlp", "gap_z"] < -2
    assert table.loc["gbdt", "verdict"] == "behind" and table.loc["gbdt", "gap_z"] > 2
    tab = table.loc["tabnet"]
    assert tab["gap"] < 0 and -2 <= tab["gap_z"] < 0 and tab["verdict"] == "within noise"
    assert not tab["beats_baselines"] and set(table["z_min"]) == {2.0}
    # the SE is the in-memory reference's: rows' loss differences clustered by user group
    d = -np.log(losses[("tabnet", "global")]) + np.log(base)
    ref = paired_margin(d, np.ones(len(d)), user_groups(users))
    assert np.isclose(tab["gap"], ref.diff) and np.isclose(tab["gap_se"], ref.se)
    assert failing_models(table.reset_index()) == ["gbdt", "tabnet"]
    # the point estimate (no paired sums: a run from before the table) counts it a win
    point = build_model_verdicts(metrics, candidates).set_index("model")
    assert point.loc["tabnet", "beats_baselines"] and point["z_min"].isna().all()
    assert point.loc["tabnet", "verdict"] == "ahead (point estimate)"
    # z_min 0 is the point-estimate rule, with the SEs shown
    off = build_model_verdicts(metrics, candidates, margins=margins, z_min=0).set_index("model")
    assert off.loc["tabnet", "beats_baselines"] and off.loc["tabnet", "gap_se"] > 0
    lines = verdict_lines(table.reset_index())
    assert lines[2].startswith("  tabnet: beats the best baseline by more than 2 SE in 0 of 1 "
                               "region(s); within noise in global (-0.")
    assert ", z -" in lines[2] and lines[0].startswith("  gbdt: ") and "; behind in global" \
        in lines[0]
    alarm = verdict_alarm(table.reset_index(), candidates)
    assert alarm[1].startswith("WARNING: model(s) that beat the baselines by more than 2 SE")
    assert alarm[3].startswith("  tabnet: global ") and ", z -" in alarm[3]


def test_a_region_with_too_few_users_has_no_se_and_no_win():
    users = np.repeat(np.arange(300), 4)
    few = users < 10  # a region of 10 users: fewer user groups than MIN_USER_GROUPS
    base = np.full(len(users), 0.2)
    losses = {("logreg", "global"): base, ("mlp", "global"): base * 1.5}
    metrics, candidates, margins = _paired(
        losses, users, {"global": np.ones(len(users), bool), "EU": few})
    table = build_model_verdicts(metrics, candidates, margins=margins).set_index("eval_region")
    assert table.loc["global", "verdict"] == "ahead"
    assert table.loc["EU", "verdict"] == "no SE" and not table.loc["EU", "beats_baselines"]
    assert np.isnan(table.loc["EU", "gap_z"]) and table.loc["EU", "gap"] < 0
    assert verdict_lines(table.reset_index())[0].endswith(
        "in 1 of 2 region(s) (global); without an SE in EU (-0.4055)")


def test_the_end_step_and_pythia_report_print_evaluates_table(monkeypatch):
    """Evaluate's stored table (with the noise test) is what the end step and ``pythia
    report`` print; only a run from before it is rebuilt from the metrics."""
    from test_evaluate import _FakeRun

    from pythia import run_summary, runs

    users = np.repeat(np.arange(400), 5)
    base = np.full(len(users), 0.2)
    lead = np.random.default_rng(1).normal(0, 0.3, 400)
    lead += 0.01 - lead.mean()
    losses = {("logreg", "global"): base, ("mlp", "global"): base * 1.3,
              ("tabnet", "global"): base * np.exp(lead[users])}
    metrics, candidates, margins = _paired(losses, users)
    stored = build_model_verdicts(metrics, candidates, margins=margins)
    champions = pd.DataFrame([{"region": "global", "champion": "mlp/global#0", "model": "mlp",
                               "blessed": True, "val_logloss": 2.0, "reason": "beats them"}])
    flow = types.SimpleNamespace(window=None, reports_path="/r", bundle_path=None,
                                 champions=champions, metrics=metrics, candidates=candidates,
                                 model_verdicts=stored)
    text = run_summary.summary_text(flow, "DemoFlow", "7", "f.py")
    assert "WARNING: model(s) that beat the baselines by more than 2 SE" in text
    assert "  tabnet: beats the best baseline by more than 2 SE in 0 of 1 region(s); within " \
           "noise in global" in text
    before = types.SimpleNamespace(**{k: v for k, v in vars(flow).items()
                                      if k != "model_verdicts"})
    old = run_summary.summary_text(before, "DemoFlow", "7", "f.py")
    assert "WARNING" not in old and "  tabnet: beats the best baseline in 1 of 1" in old

    monkeypatch.setattr(runs, "open_flow", lambda name: object())
    monkeypatch.setattr(runs, "open_run", lambda name, rid: _FakeRun(
        champions=champions, window=None, metrics=metrics, candidates=candidates,
        model_verdicts=stored, headline=pd.DataFrame({"eval_region": ["global"]})))
    out = io.StringIO()
    assert runs.print_report("7", out=out) == 0
    assert "within noise" in out.getvalue() and "gap_z" in out.getvalue()
