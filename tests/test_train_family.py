"""The ``train`` step's unit, a model family: the (model, config) families of a run; one family
fitted global first, its regions started from the global model when the model can; and what
reads families back: `pythia timings` per task and candidate, the report's regional-vs-global
table."""
from __future__ import annotations

import dataclasses

import pytest

import pythia.models
from pythia.config import TrainConfig
from pythia.models.prior import PriorModel
from pythia.paths import RunPaths
from test_models import EDGES, FAST, fake_tfrecords  # noqa: F401  (fixture)

NATURAL = {"age_gender": [0.3, 0.1, 0.1, 0.2, 0.2, 0.1], "gender": [0.5, 0.5],
           "age": [0.5, 0.3, 0.2]}
SPLIT_MANIFEST = {"natural_priors": NATURAL, "resample_target": "age_gender",
                  "class_counts_after": {"train": {str(c): 10 for c in range(6)}}}


class WarmPrior(PriorModel):
    """A test-only model that can start from a fitted one: it records what it started from."""

    warm_starts = True
    fits: list = []  # (fitted model, the model it started from) in fit order

    def _fit(self, train, valid):
        WarmPrior.fits.append((self, self.start))
        return super()._fit(train, valid)


@pytest.fixture()
def warm_prior(monkeypatch):
    """``class_prior`` resolves to WarmPrior (the learners warm-start only with helper A's
    models); returns the list of its fits."""
    real = pythia.models.get_model
    monkeypatch.setattr(pythia.models, "get_model",
                        lambda name: WarmPrior if name == "class_prior" else real(name))
    WarmPrior.fits = []
    return WarmPrior.fits


def _train(family, manifest, tmp_path, cfg=FAST, fold_regions=None):
    from pythia.models import train_family
    return train_family(family, manifest, SPLIT_MANIFEST, cfg, EDGES,
                        RunPaths(str(tmp_path), "DemoFlow", "7"), fold_regions)


def family(regions, model="class_prior"):
    return {"model": model, "config_id": 0, "hparams": {}, "regions": regions}


def test_families_group_the_grid_global_first(fake_tfrecords, capsys):
    from pythia.models import REFERENCE_MODEL, train_families

    fams = train_families(["mlp", "gbdt"], None, fake_tfrecords, search=0, seed=0)
    assert [(f["model"], f["config_id"], f["regions"]) for f in fams] == [
        ("gbdt", 0, ["global", "EU", "NA"]), ("mlp", 0, ["global", "EU", "NA"]),
        (REFERENCE_MODEL, 0, ["global", "EU", "NA"])]  # the class prior is still added
    assert "adding the 'class_prior' baseline" in capsys.readouterr().out
    # global is fitted first whatever order the run asked for; configs are families of their own
    searched = train_families(["tabnet", REFERENCE_MODEL], ["NA", "global"], fake_tfrecords,
                              search=2, seed=3)
    assert [(f["model"], f["config_id"], f["regions"]) for f in searched] == [
        ("tabnet", 0, ["global", "NA"]), ("tabnet", 1, ["global", "NA"]),
        ("tabnet", 2, ["global", "NA"]), (REFERENCE_MODEL, 0, ["global", "NA"])]
    assert searched[1]["hparams"] and searched[0]["hparams"] == {}
    assert [f["regions"] for f in train_families(["gbdt"], ["EU"], fake_tfrecords, 0, 0)] == [
        ["EU"], ["EU"]]
    with pytest.raises(ValueError, match=r"requested region\(s\) \['LATAM'\]"):
        train_families(["gbdt"], ["global", "LATAM"], fake_tfrecords, search=0, seed=0)


def test_families_start_with_the_costliest_model_whatever_order_the_run_asks(fake_tfrecords):
    from pythia.models import MODEL_NAMES, TYPICAL_TASK_SECONDS, train_families

    # every registered model has a measured cost, so none silently sorts last
    assert set(TYPICAL_TASK_SECONDS) == set(MODEL_NAMES)
    by_cost = sorted(MODEL_NAMES, key=lambda m: -TYPICAL_TASK_SECONDS[m])
    for asked in (list(MODEL_NAMES), list(reversed(MODEL_NAMES))):
        fams = train_families(asked, ["global"], fake_tfrecords, search=0, seed=0)
        assert [f["model"] for f in fams] == by_cost
    # configs of one model stay together, in config order, after costlier models
    searched = train_families(["logreg", "gbdt"], ["global"], fake_tfrecords, search=1, seed=0)
    assert [(f["model"], f["config_id"]) for f in searched] == [
        ("gbdt", 0), ("gbdt", 1), ("logreg", 0), ("logreg", 1), ("class_prior", 0)]


def test_families_drop_a_region_with_the_global_rows(capsys):
    from pythia.models import train_families

    one = {"splits": {s: {"rows": 500, "rows_by_region": {"OTHER": 500, "EU": 0}}
                      for s in ("train", "validation")}}
    assert [f["regions"] for f in train_families(["logreg"], None, one, 0, 0)] == [
        ["global"], ["global"]]
    assert "region 'OTHER' holds all 500 training rows" in capsys.readouterr().out
    two = {"splits": {"train": {"rows": 500, "rows_by_region": {"OTHER": 499, "EU": 1}}}}
    assert train_families(["logreg"], None, two, 0, 0)[0]["regions"] == ["global", "EU", "OTHER"]


def test_a_family_trains_global_then_its_regions_from_the_global_model(
        fake_tfrecords, warm_prior, tmp_path, capsys):
    out = _train(family(["global", "EU", "NA"]), fake_tfrecords, tmp_path)
    assert [(c["region"], c["start_from"]) for c in out] == [
        ("global", None), ("EU", "class_prior/global#0"), ("NA", "class_prior/global#0")]
    # the regions started from the global model fitted in this process, the global one fresh
    global_model = warm_prior[0][0]
    assert [start for _, start in warm_prior] == [None, global_model, global_model]
    assert global_model.class_log_prior is not None
    assert [c["n_train"] for c in out] == [500, 200, 300]
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("train ")]
    assert len(lines) == 3 and "from scratch" in lines[0]
    assert all("started from class_prior/global#0" in ln for ln in lines[1:])
    paths = RunPaths(str(tmp_path), "DemoFlow", "7")
    assert [c["model_dir"] for c in out] == [paths.model("class_prior", r, 0)
                                             for r in ("global", "EU", "NA")]


def test_scratch_or_no_global_or_a_cold_model_start_fresh(
        fake_tfrecords, warm_prior, tmp_path, monkeypatch):
    scratch = dataclasses.replace(FAST, regional_start="scratch")
    out = _train(family(["global", "EU"]), fake_tfrecords, tmp_path, scratch)
    assert [c["start_from"] for c in out] == [None, None]
    assert [start for _, start in warm_prior] == [None, None]
    warm_prior.clear()
    out = _train(family(["EU", "NA"]), fake_tfrecords, tmp_path)  # a family without global
    assert [c["start_from"] for c in out] == [None, None]
    assert [start for _, start in warm_prior] == [None, None]
    monkeypatch.setattr(WarmPrior, "warm_starts", False)  # a model that cannot warm-start
    out = _train(family(["global", "EU"]), fake_tfrecords, tmp_path)
    assert [c["start_from"] for c in out] == [None, None]


def test_a_real_learner_family_records_each_regions_warm_start(fake_tfrecords, tmp_path):
    """logreg (a learner that warm-starts): the regions start from the global fit and their
    summaries carry the start's record (validation loss at the start, steps kept/tried)."""
    out = _train(family(["global", "EU"], model="logreg"), fake_tfrecords, tmp_path)
    assert [c["start_from"] for c in out] == [None, "logreg/global#0"]
    assert out[0]["warm_start"] is None
    warm = out[1]["warm_start"]
    assert warm["warm"] is True and warm["tried"] >= warm["epochs_or_iterations"] >= 0
    assert warm["best_val_loss"] <= warm["val_loss_at_start"]


def test_a_family_reads_the_runs_fold_regions_once_and_each_candidate_scores_its_own(
        fake_tfrecords, warm_prior, tmp_path, monkeypatch):
    """One out-of-fold rule for the run (``crossfit.fold_regions``, read once per family):
    the global candidate scores every fold region out of fold, a regional one its own region
    when it is one; each summary records it."""
    from pythia.models import crossfit

    calls = []
    monkeypatch.setattr(crossfit, "fold_regions",
                        lambda manifest: calls.append(manifest) or ("NA",))
    out = _train(family(["global", "EU", "NA"]), fake_tfrecords, tmp_path)
    assert [(c["region"], c["fold_regions"]) for c in out] == [
        ("global", ["NA"]), ("EU", []), ("NA", ["NA"])]
    assert [model.fold_regions for model, _ in warm_prior] == [("NA",), (), ("NA",)]
    assert calls == [fake_tfrecords]


def test_a_family_given_the_runs_fold_regions_does_not_read_them_again(
        fake_tfrecords, warm_prior, tmp_path, monkeypatch):
    """The flow decides the fold regions once (``to_tfrecords``) and hands them to every
    train task: a family given them uses them and reads no validation user groups."""
    from pythia.models import crossfit

    def read(manifest):
        raise AssertionError("fold regions read again")

    monkeypatch.setattr(crossfit, "fold_regions", read)
    out = _train(family(["global", "NA"]), fake_tfrecords, tmp_path, fold_regions=["NA"])
    assert [(c["region"], c["fold_regions"]) for c in out] == [("global", ["NA"]),
                                                                ("NA", ["NA"])]


def test_a_model_saved_with_a_training_knob_this_code_lacks_still_loads(fake_tfrecords,
                                                                         tmp_path):
    """A folder written by newer code (one more TrainConfig field) loads: training knobs do
    not change how a saved model scores."""
    import json
    import os

    from pythia.models.base import META_FILE
    from pythia.models.prior import PriorModel as Prior

    out = _train(family(["global"]), fake_tfrecords, tmp_path)
    folder = out[0]["model_dir"]
    with open(os.path.join(folder, META_FILE), encoding="utf8") as f:
        meta = json.load(f)
    meta["train_cfg"]["a_knob_from_the_future"] = 3
    with open(os.path.join(folder, META_FILE), "w", encoding="utf8") as f:
        json.dump(meta, f)
    loaded = Prior.load(folder)  # TypeError before: TrainConfig(**meta['train_cfg'])
    assert loaded.train_cfg.max_epochs == FAST.max_epochs
    assert not hasattr(loaded.train_cfg, "a_knob_from_the_future")


def test_train_candidate_fits_one_grid_item_alone(fake_tfrecords, warm_prior, tmp_path):
    from pythia.models import train_candidate

    paths = RunPaths(str(tmp_path), "DemoFlow", "7")
    item = {"model": "class_prior", "region": "EU", "config_id": 0, "hparams": {}}
    res = train_candidate(item, fake_tfrecords, SPLIT_MANIFEST, FAST, EDGES, paths)
    assert (res["region"], res["start_from"]) == ("EU", None)
    assert res["model_dir"] == paths.model("class_prior", "EU", 0)


def test_regional_start_is_validated():
    assert TrainConfig().regional_start == "global"
    with pytest.raises(ValueError, match=r"regional_start must be one of global\|scratch"):
        TrainConfig(regional_start="warm")


class _Task:
    """A stand-in for a Metaflow train task: its id, times and artifacts."""

    def __init__(self, task_id, seconds, **artifacts):
        import datetime as dt
        self.id, self.artifacts = task_id, artifacts
        self.created_at = dt.datetime(2026, 1, 1, 12, 0, 0)
        self.finished_at = self.created_at + dt.timedelta(seconds=seconds)

    def __contains__(self, name):
        return name in self.artifacts

    def __getitem__(self, name):
        return type("Artifact", (), {"data": self.artifacts[name]})()


def _cand(model, region, fit_s, start_from=None):
    return {"model": model, "region": region, "config_id": 0, "fit_seconds": fit_s,
            "start_from": start_from}


def test_train_timings_read_families_and_runs_from_before_them():
    from pythia.run_timings import task_candidates, train_timings

    family = _Task("7", 30.0, candidates=[_cand("mlp", "global", 20.0),
                                          _cand("mlp", "EU", 4.0, "mlp/global#0")])
    old = _Task("8", 6.0, candidate=_cand("gbdt", "NA", 3.0))  # artifact before families
    table = train_timings({"train": [old, family]})
    assert table[["model", "region", "start_from", "fit_s", "task_s"]].values.tolist() == [
        ["gbdt", "NA", "-", 3.0, 6.0], ["mlp", "global", "-", 20.0, 30.0],
        ["mlp", "EU", "mlp/global#0", 4.0, 30.0]]
    assert task_candidates(_Task("9", 1.0)) == []  # a task that stored neither
    assert train_timings({}).empty  # a run without a train step yet


def test_regional_vs_global_pairs_a_family_on_the_same_rows():
    import pandas as pd

    from pythia.evaluate.tables import build_regional_vs_global

    def row(eval_region, model, cand_region, config_id, val, test):
        return {"eval_region": eval_region, "model": model, "candidate_region": cand_region,
                "config_id": config_id, "val_logloss": val, "logloss_age_gender": test,
                "macro_f1_age_gender": 0.5, "n": 100.0}

    headline = pd.DataFrame([
        row("EU", "mlp", "global", 0, 1.9, 2.0), row("EU", "mlp", "EU", 0, 1.7, 1.8),
        row("EU", "gbdt", "global", 0, 1.9, 2.1),  # no regional gbdt: no row
        row("EU", "bayes", "global", pd.NA, None, 1.5),
        row("global", "mlp", "global", 0, 1.9, 2.0)]).astype({"config_id": "Int64"})
    cands = [_cand("mlp", "global", 1.0), {
        **_cand("mlp", "EU", 1.0, "mlp/global#0"),
        "warm_start": {"warm": True, "epochs_or_iterations": 0, "tried": 2},
        "activity_temperature": {"start_scale": 1.0, "fitted_scale": 1.03, "scale_z": -0.5}}]
    out = build_regional_vs_global(headline, cands)
    assert out[["region", "model", "start_from", "warm_fit"]].values.tolist() == [
        ["EU", "mlp", "mlp/global#0",
         "kept its start (2 tried); scale 1 (fitted 1.030, z -0.50: within noise)"]]
    assert out.loc[0, "logloss_age_gender_global"] == 2.0
    assert out.loc[0, "gain_logloss_age_gender"] == pytest.approx(0.2)
    assert out.loc[0, "val_logloss_regional"] == 1.7
    assert build_regional_vs_global(headline.iloc[0:0], cands).empty


def test_report_prints_regional_minus_global_with_its_noise():
    """`pythia report`'s "Regional vs global": per regional candidate, regional - global on
    validation, the natural test day and its new users, ± SE (z); the champion flag; a run
    from before the paired margins shows the test difference alone; nothing without rows."""
    import io

    import pandas as pd

    from pythia.evaluate.tables import print_regional_vs_global, regional_vs_global_text

    table = pd.DataFrame([
        {"region": "APAC", "model": "mlp", "config_id": 0, "start_from": "mlp/global#0",
         "gain_logloss_age_gender": 0.0026, "val_diff": -0.0024, "val_se": 0.0019,
         "val_z": -1.2632, "test_diff": -0.0026, "test_se": 0.0008, "test_z": -3.25,
         "new_diff": 0.0003, "new_se": float("nan"), "new_z": float("nan")},
        {"region": "EU", "model": "class_prior", "config_id": 0, "start_from": None,
         "gain_logloss_age_gender": -0.01, "val_diff": 0.01, "val_se": 0.02, "val_z": 0.5,
         "test_diff": 0.01, "test_se": 0.004, "test_z": 2.5, "new_diff": None,
         "new_se": None, "new_z": None}])
    champions = pd.DataFrame([
        {"region": "APAC", "model": "mlp", "candidate_region": "APAC", "config_id": 0,
         "blessed": True},
        {"region": "EU", "model": "class_prior", "candidate_region": "EU", "config_id": 0,
         "blessed": False}])
    text = regional_vs_global_text(table, champions).set_index("candidate")
    apac = text.loc["mlp/APAC#0"]
    assert apac["champion"] and apac["start_from"] == "mlp/global#0"
    assert apac["val_regional_minus_global"] == "-0.0024 ± 0.0019 (z -1.26)"
    assert apac["test_regional_minus_global"] == "-0.0026 ± 0.0008 (z -3.25)"
    assert apac["new_regional_minus_global"] == "+0.0003"  # no SE: the difference alone
    assert apac["warm_fit"] == ""  # a run from before the column
    kept = regional_vs_global_text(table.assign(val_diff=0.0, val_se=0.0, val_z=float("nan"),
                                                warm_fit="kept its start (2 tried)"),
                                   champions).set_index("candidate").loc["mlp/APAC#0"]
    assert kept["val_regional_minus_global"] == "+0.0000 (identical predictions)"
    assert kept["warm_fit"] == "kept its start (2 tried)"
    eu = text.loc["class_prior/EU#0"]
    assert not eu["champion"] and eu["start_from"] == "-"  # not blessed; trained from scratch
    assert eu["new_regional_minus_global"] == ""
    # a run from before the margins: the test difference is -gain, nothing else
    old = regional_vs_global_text(table[["region", "model", "config_id", "start_from",
                                         "gain_logloss_age_gender"]], None)
    assert old["test_regional_minus_global"].tolist() == ["-0.0026", "+0.0100"]
    assert (old["val_regional_minus_global"] == "").all() and not old["champion"].any()
    out = io.StringIO()
    print_regional_vs_global(table, champions, out)
    printed = out.getvalue()
    assert printed.startswith("\nRegional vs global (AgeGender log-loss, regional - global")
    assert "-0.0026 ± 0.0008 (z -3.25)" in printed and "class_prior/EU#0" in printed
    out = io.StringIO()
    print_regional_vs_global(table.iloc[0:0], champions, out)
    print_regional_vs_global(None, champions, out)
    assert out.getvalue() == ""


def test_warm_fit_says_what_a_regional_fit_kept_and_its_scale():
    from pythia.evaluate.tables import warm_fit_text

    def cand(kept, tried, bins):
        return {"warm_start": {"warm": True, "epochs_or_iterations": kept, "tried": tried},
                "activity_temperature": bins}
    assert warm_fit_text({"start_from": None}) == ""  # trained from scratch
    assert warm_fit_text(cand(0, 2, {"start_scale": 1.0, "fitted_scale": 1.028,
                                     "scale_z": -0.49})) == (
        "kept its start (2 tried); scale 1 (fitted 1.028, z -0.49: within noise)")
    assert warm_fit_text(cand(0, 10, {"start_scale": 0.966, "fitted_scale": 0.966,
                                      "scale_z": -2.31})) == (
        "kept its start (10 tried); scale 0.966 (z -2.31)")
    assert warm_fit_text(cand(0, 2, {"start_scale": 1.0, "fitted_scale": 1.5,
                                     "scale_z": None})) == (
        "kept its start (2 tried); scale 1 (fitted 1.500, no SE: within noise)")
    assert warm_fit_text(cand(1, 2, {"start_scale": 0.984})) == "kept 1 of 2; scale 0.984"
    assert warm_fit_text(cand(3, 3, None)) == "kept 3 of 3"  # no bins


def test_each_candidate_says_what_its_fit_did_on_its_one_train_line(
        fake_tfrecords, tmp_path, capsys, monkeypatch):
    """One line per candidate: the fit's own note (the C path; the warm start's gain) ends the
    candidate's train line instead of a line of its own, and lands in its summary; a note of a
    model nested in another one's fit (the MLP's logistic start) is not on the outer line."""
    from pythia.models import notes
    monkeypatch.delenv("PYTHIA_VERBOSE", raising=False)
    out = _train(family(["global", "EU"], "logreg"), fake_tfrecords, tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(ln.startswith("train logreg/") for ln in lines)
    assert " | AgeGender: C=" in lines[0] and "chosen on validation" in lines[0]
    assert out[0]["notes"][0].startswith("AgeGender: C=")
    assert " | AgeGender " in lines[1] and "at the start (C=" in lines[1]
    assert lines[1].endswith(out[1]["notes"][0])
    notes.say("logreg", "inner")
    notes.say("mlp", "outer")
    assert notes.take("mlp") == ["outer"] and notes.take("logreg") == []
    monkeypatch.setenv("PYTHIA_VERBOSE", "1")  # verbose: said at once as well
    notes.say("mlp", "now")
    assert capsys.readouterr().out == "mlp: now\n" and notes.take("mlp") == ["now"]
