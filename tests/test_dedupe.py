"""Duplicates across the whole window (etl.dedupe) and resampling that keeps the data (etl.splits).

The component test runs ``etl.run_hours`` for every hour group and ``etl.join_hours`` with
``hours_per_task`` 1, 4 and 24 on one source whose duplicates sit in hours of different groups
(and within one partition), and requires the same counts, rows and quarantine each time.
"""
import contextlib
import datetime as dt
import os

import pytest

from pythia import etl
from pythia.config import DeployConfig, EtlConfig, RunParams, hour_groups
from pythia.contract import DUPLICATE_IMPRESSION_ID
from pythia.etl import dedupe, sample, splits
from pythia.features import OUTPUT_SPLITS
from pythia.paths import RunPaths

from conftest import WINDOW, SourceBuilder

D6, D7, D8, D9, D10 = WINDOW.dates
USERS = {"u1": "US", "u2": "GB", "u3": "DE", "u4": "JP", "u5": "US"}  # u3 has no label
imp, at = sample.impression, sample.at


def _t(day, hour, minute, second=0):
    return at(day, hour, minute, second)


# (date, hour) -> extra rows; every id below but "dup-bad" has copies that a single task reading
# everything would quarantine as duplicate_impression_id. With hours_per_task=4 the groups are
# 00-03, 04-07, 08-11, 12-15, 16-19, 20-23.
PLANTED = {
    # same ts, adjacent hours of different groups: the earlier hour (3) wins the tie
    (D7, 3): [imp("dup-tie", "u1", _t(D7, 4, 2))],
    (D7, 4): [imp("dup-tie", "u1", _t(D7, 4, 2))],
    # the later partition holds the earlier ts (both inside the 300 s tolerance): hour 6 wins
    (D8, 5): [imp("dup-early", "u2", _t(D8, 6, 3))],
    (D8, 6): [imp("dup-early", "u2", _t(D8, 6, 1))],
    # an unlabelled loser leaves `unlabelled`
    (D6, 10): [imp("dup-unl", "u3", _t(D6, 10, 20))],
    (D6, 20): [imp("dup-unl", "u3", _t(D6, 20, 20))],
    # an unlabelled winner (validation day) over a labelled loser on the test day; the loser
    # makes u4's 2024-03-10 a power user (25 > 24) unless it is taken out of the counts
    (D9, 1): [imp("dup-mixed", "u3", _t(D9, 1, 30))],
    (D10, 13): [imp("dup-mixed", "u4", _t(D10, 13, 30), "JP")],
    # three copies: two in one partition (within a task) and the winner on an earlier day
    (D7, 8): [imp("dup-three", "u5", _t(D7, 8, 10)), imp("dup-three", "u5", _t(D7, 8, 40))],
    (D6, 15): [imp("dup-three", "u5", _t(D6, 15, 5))],
    # across splits: the train copy wins, the validation copy loses
    (D6, 2): [imp("dup-split", "u1", _t(D6, 2, 10))],
    (D9, 22): [imp("dup-split", "u1", _t(D9, 22, 10))],
    # the losers are byte-identical copies in one partition (one quarantined row per copy)
    (D8, 0): [imp("dup-exact", "u2", _t(D8, 0, 30), "GB")],
    (D8, 23): [imp("dup-exact", "u2", _t(D8, 23, 30), "GB")] * 2,
    # not a duplicate: the other copy breaks the contract and is quarantined for that
    (D9, 2): [imp("dup-bad", "u1", _t(D9, 2, 15))],
    (D9, 9): [imp("dup-bad", "u1", _t(D9, 9, 15), device_type="fridge"),
              imp("no-user", None, _t(D9, 9, 16))],
}
N_DUPLICATES = 9  # copies beyond the first: tie 1, early 1, unl 1, mixed 1, three 2, split 1, exact 2


def _label(u, g, a, c):
    return {"user_id": u, "gender": g, "age": a, "country": c,
            "observed_date": dt.date(2024, 3, 1)}


def build_source(root: str) -> SourceBuilder:
    src = SourceBuilder(root)
    for day in WINDOW.dates:
        for h in range(24):
            rows = [imp(f"{day:%m%d}-{h:02d}-{u}", u, at(day, h, 10), c)
                    for u, c in USERS.items()]
            src.hour(day, h, rows + PLANTED.get((day, h), []))
    src.labels("acme", [_label("u1", "F", 30, "US"), _label("u2", "M", 40, "GB"),
                        _label("u4", "F", 70, "JP"), _label("u5", "M", 20, "US")])
    return src


def _sorted(df, by):
    return df.sort_values(by).reset_index(drop=True)


def _read_quarantine(spark, root):
    """Every impression quarantine table of a run (one folder per task, plus the global pass)."""
    import pandas as pd

    return pd.concat([spark.read.parquet(os.path.join(root, d)).toPandas()
                      for d in sorted(os.listdir(root)) if not d.startswith((".", "_"))],
                     ignore_index=True)


@contextlib.contextmanager
def _shared_session(spark):
    yield spark  # the test session, not stopped after each step as the flow's are


def _run(spark, src, labels, root, hours_per_task):
    params = RunParams.build(
        {"source": src.root, "models": "gbdt", "resample": "balanced",
         "hours_per_task": hours_per_task, "data_root": root},
        deploy=DeployConfig(power_user_quantile=0.5))
    paths = RunPaths(root, "DedupeTest", f"h{hours_per_task}")
    manifests = [etl.run_hours(src.root, hours, WINDOW.as_dict(), labels, params, paths)
                 for hours in hour_groups(hours_per_task)]
    split_manifest, recon, rates, quarantine = etl.join_hours(manifests, params, paths)
    q = _read_quarantine(spark, os.path.join(paths.quarantine, "impressions"))
    ids = {s: sorted(spark.read.parquet(split_manifest["paths"][s]).toPandas().impression_id)
           for s in OUTPUT_SPLITS}
    return {"split": split_manifest, "recon": recon, "rates": rates, "quarantine": quarantine,
            "q": q, "ids": ids}


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory):
    """The same source through hours_per_task 1 (24 tasks), 4 (6 tasks) and 24 (one task)."""
    from pythia import providers
    from pythia.etl import session

    base = tmp_path_factory.mktemp("dedupe")
    src = build_source(str(base / "source"))
    labels = providers.prepare_labels(spark, src.root, {}, (18, 25, 35, 45, 55, 65),
                                      str(base / "labels"), default_provider="acme")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(session, "spark_session", lambda *a, **k: _shared_session(spark))
        return {hpt: _run(spark, src, labels, str(base / "runs"), hpt) for hpt in (1, 4, 24)}


@pytest.mark.slow
@pytest.mark.spark
def test_counts_rows_and_quarantine_do_not_depend_on_hours_per_task(runs):
    one = runs[24]
    assert one["split"]["duplicates_across_tasks"]["rows"] == 0  # a single task: nothing to settle
    assert runs[1]["split"]["duplicates_across_tasks"]["rows"] == 7
    assert runs[4]["split"]["duplicates_across_tasks"]["rows"] == 6  # 05/06 share a task
    assert one["quarantine"]["by_reason"] == {
        "null_required": 1, "wrong_type": 0, "bad_timestamp": 0, "out_of_domain": 1,
        DUPLICATE_IMPRESSION_ID: N_DUPLICATES}
    keys = ["rows", "class_counts_before", "class_counts_after", "rates", "power_user_threshold",
            "power_user_rows", "per_hour", "resample"]
    assert one["recon"]["balanced"].all()
    for hpt in (1, 4):
        run = runs[hpt]
        assert run["quarantine"]["by_reason"] == one["quarantine"]["by_reason"], hpt
        assert run["ids"] == one["ids"], hpt
        for key in keys:
            assert run["split"][key] == one["split"][key], (hpt, key)
        for target, p in one["split"]["natural_priors"].items():
            assert run["split"]["natural_priors"][target] == pytest.approx(p), (hpt, target)
        assert _sorted(run["recon"], ["scope", "date", "hour", "split"]).equals(
            _sorted(one["recon"], ["scope", "date", "hour", "split"])), hpt
        assert run["recon"]["balanced"].all()
        q1 = _sorted(one["q"], ["reason", "date", "hour", "impression_id", "ts"])
        q = _sorted(run["q"], ["reason", "date", "hour", "impression_id", "ts"])[list(q1.columns)]
        assert q.equals(q1), hpt  # the same rows with the same raw values


@pytest.mark.spark
def test_the_within_task_rule_picks_the_winner(runs):
    run = runs[1]
    recon = run["recon"]
    # dup-bad's other copy broke the contract: quarantined for that, and no duplicate
    assert list(run["q"][run["q"].impression_id == "dup-bad"].reason) == ["out_of_domain"]
    hour = recon[(recon.date == "2024-03-09") & (recon.hour == 2)].iloc[0]
    assert (hour.etl_written, hour.quarantined) == (5, 0)
    dup = run["q"][run["q"].reason == DUPLICATE_IMPRESSION_ID]
    lost = sorted(zip(dup.impression_id, dup.date, dup.hour))
    assert lost == sorted([
        ("dup-tie", "2024-03-07", 4), ("dup-early", "2024-03-08", 5),
        ("dup-unl", "2024-03-06", 20), ("dup-mixed", "2024-03-10", 13),
        ("dup-three", "2024-03-07", 8), ("dup-three", "2024-03-07", 8),
        ("dup-split", "2024-03-09", 22), ("dup-exact", "2024-03-08", 23),
        ("dup-exact", "2024-03-08", 23)])
    assert set(dup.reason_column) == {"impression_id"}
    # the losers left the counts of their own hour: written (labelled) or unlabelled
    hour = recon[(recon.date == "2024-03-06") & (recon.hour == 20)].iloc[0]
    assert (hour.q_duplicate_impression_id, hour.unlabelled) == (1, 1)  # u3's own row stays
    hour = recon[(recon.date == "2024-03-10") & (recon.hour == 13)]
    assert set(hour.split) == {"test_resampled", "test_natural"}
    assert (hour.q_duplicate_impression_id == 1).all() and (hour.etl_written == 4).all()
    # u4's test day stays at 24 labelled impressions: not a power user, so kept in test_resampled
    assert run["split"]["power_user_threshold"] == 24.0
    assert run["split"]["power_user_rows"]["test"] == 0


def test_apply_duplicates_moves_counts_and_rejects_impossible_ones():
    reasons = {r: 0 for r in ("null_required", "wrong_type", "bad_timestamp", "out_of_domain",
                              DUPLICATE_IMPRESSION_ID)}
    per_hour = [{"date": "2024-03-06", "hour": 5, "split": "train", "gap": False,
                 "rows_in": 6, "quarantined": dict(reasons), "unlabelled": 2, "written": 4}]
    man = {"hours": [5], "per_hour": per_hour, "class_counts": {"train": {"1": 3, "6": 1}}}
    out = dedupe.apply_duplicates([man], [["2024-03-06", 5, "train", "written", 6, 1],
                                          ["2024-03-06", 5, "train", "unlabelled", None, 2]])
    p = out[0]["per_hour"][0]
    assert (p["written"], p["unlabelled"], p["quarantined"][DUPLICATE_IMPRESSION_ID]) == (3, 0, 3)
    assert out[0]["class_counts"]["train"] == {"1": 3}  # class 6 gone, as if never written
    assert out[0]["total"]["written"] == 3 and out[0]["written_by_split"]["train"] == 3
    assert out[0]["quarantined_by_reason"][DUPLICATE_IMPRESSION_ID] == 3
    assert man["per_hour"][0]["written"] == 4  # the input is not modified
    with pytest.raises(ValueError, match="2024-03-06 hour 5"):
        dedupe.apply_duplicates([man], [["2024-03-06", 5, "train", "written", 1, 5]])
    with pytest.raises(ValueError, match="no hour manifest"):
        dedupe.apply_duplicates([man], [["2024-03-07", 5, "train", "written", 1, 1]])


# ------------------------------------------------------------------------------- resampling

DEFAULT_WORLD_SHARES = [0.0775, 0.1075, 0.0989, 0.0781, 0.067, 0.0588, 0.0712, 0.1152, 0.1048,
                        0.0752, 0.0859, 0.06]  # synthetic://default, activity-weighted labels


def _skewed(n=20_800, smallest=0.004):
    """12 classes, the smallest ``smallest`` of ``n`` rows, the rest geometric (ratio 0.8)."""
    rest = [0.8 ** k for k in range(11)]
    counts = {0: round(n * smallest)}
    counts.update({k + 1: round(n * (1 - smallest) * w / sum(rest)) for k, w in enumerate(rest)})
    return counts


def test_auto_keeps_balanced_where_it_is_cheap_and_the_data_where_it_is_not():
    default = {c: round(1_100_000 * s) for c, s in enumerate(DEFAULT_WORLD_SHARES)}
    mode, why = splits.choose_resample(default, "auto")
    assert mode == "balanced" and why["kept_fraction"]["balanced"] > 0.7
    small_default = {c: round(9_000 * s) for c, s in enumerate(DEFAULT_WORLD_SHARES)}
    assert splits.choose_resample(small_default, "auto")[0] == "balanced"  # not by size
    skewed = _skewed()
    mode, why = splits.choose_resample(skewed, "auto")
    assert mode == "natural"
    assert why["kept_fraction"]["balanced"] < 0.1 and why["smallest_class_rows"] == 83
    # the same skew with a lot of data: balanced still keeps > 1M rows
    assert splits.choose_resample(_skewed(n=40_000_000), "auto")[0] == "balanced"
    # moderate skew: sqrt keeps half, balanced does not
    moderate = {0: 500, 1: 1000, 2: 2000, 3: 3000}
    mode, why = splits.choose_resample(moderate, "auto")
    assert mode == "sqrt" and why["kept_fraction"]["balanced"] < 0.5
    # an explicit mode is kept whatever the numbers
    assert splits.choose_resample(skewed, "balanced")[0] == "balanced"
    assert splits.choose_resample({}, "auto")[0] == "natural"


def test_keep_rate_floor():
    rates = splits.resample_rates({0: 10, 1: 1000}, "balanced", min_keep_rate=0.25)
    assert rates == {0: 1.0, 1: 0.25}
    assert splits.resample_rates({0: 10, 1: 1000}, "balanced") == {0: 1.0, 1: 0.01}
    assert splits.kept_fraction({0: 10, 1: 1000}, rates) == pytest.approx(260 / 1010)
    with pytest.raises(ValueError, match="auto"):
        splits.resample_rates({0: 1}, "auto")  # decided by choose_resample first


def test_resample_setting_parses_a_floor():
    assert EtlConfig().resample == "auto" and EtlConfig().min_keep_rate == 0.0
    cfg = EtlConfig(resample="balanced:0.2")
    assert (cfg.resample, cfg.min_keep_rate) == ("balanced", 0.2)
    assert cfg.with_(seed=1).min_keep_rate == 0.2
    assert RunParams.build({"models": "gbdt"}).etl.resample == "auto"  # the flow's default
    for bad, match in (("balanced:x", "floor"), ("balanced:1.5", "min_keep_rate"),
                       ("upsample:0.1", "resample")):
        with pytest.raises(ValueError, match=match):
            EtlConfig(resample=bad)


@pytest.mark.spark
def test_auto_on_a_skewed_label_set_writes_the_mode_rates_and_exact_priors(spark, tmp_path,
                                                                           capsys):
    """finalize_splits records the applied mode and its evidence; models.priors reads them."""
    from pythia import providers
    from pythia.etl.hourly import run_hours
    from pythia.config import Geography
    from pythia.models import priors

    # a day: u1 (F_25-34) 9 impressions, u2 (M_35-44) 1; balanced would keep 20% of the train
    # rows, sqrt 40%: auto keeps them all
    src = SourceBuilder(str(tmp_path / "src"))
    per_day = {(0, "u1"): 3, (0, "u2"): 1, (1, "u1"): 6}
    for day in WINDOW.dates:
        for h in range(2):
            src.hour(day, h, [imp(f"{day:%m%d}-{h}-{u}-{k}", u, at(day, h, 10 + k), USERS[u])
                              for (hh, u), n in per_day.items() if hh == h for k in range(n)])
    src.labels("acme", [_label("u1", "F", 30, "US"), _label("u2", "M", 40, "GB")])
    lab = providers.prepare_labels(spark, src.root, {}, (18, 25, 35, 45, 55, 65),
                                   str(tmp_path / "lab"), default_provider="acme")
    man = run_hours(spark, src.root, [0, 1], WINDOW, lab["labels_path"], str(tmp_path / "o"),
                    str(tmp_path / "q"), Geography(), False)
    out = {s: str(tmp_path / "splits" / s) for s in OUTPUT_SPLITS}
    f = splits.finalize_splits(spark, [man], EtlConfig(
        drop_power_users=True, power_user_threshold=100, holdout_users=0), out)
    assert (f["resample"], f["resample_requested"], f["min_keep_rate"]) == ("natural", "auto", 0)
    assert f["resample_choice"]["kept_fraction"] == pytest.approx(
        {"balanced": 6 / 30, "sqrt": 12 / 30, "natural": 1.0})
    assert f["rates"]["train"] == {"1": 1.0, "8": 1.0} and f["rows"]["train"] == 30
    line = capsys.readouterr().out
    assert "resample: natural (auto, on 30 train rows, smallest class 3" in line
    assert "train 30/30" in line
    p = priors.priors_from_split_manifest(f, (18, 25, 35, 45, 55, 65))
    assert p["train"]["age_gender"][1] == pytest.approx(27 / 30)
    for target, natural in p["natural"].items():  # natural resampling: nothing to correct
        assert p["train"][target] == pytest.approx(natural)
    # a floor: balanced, but no class below 0.5; the priors follow the realised counts
    f = splits.finalize_splits(spark, [man], EtlConfig(
        drop_power_users=True, power_user_threshold=100, resample="balanced:0.5",
        holdout_users=0), out)
    assert f["rates"]["train"] == {"1": 0.5, "8": 1.0} and f["resample"] == "balanced"
    assert f["resample_choice"]["requested"] == "balanced"
    after = f["class_counts_after"]["train"]
    p = priors.priors_from_split_manifest(f, (18, 25, 35, 45, 55, 65))
    assert p["train"]["age_gender"][1] == pytest.approx(after["1"] / (after["1"] + after["8"]))
    assert "keep-rates floored at 0.5" in capsys.readouterr().out
