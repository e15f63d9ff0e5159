"""ETL component tests on one hand-made source whose every count is known in advance.

Source (window 2024-03-06 … 2024-03-10; hours 0-2; tasks [0, 1] and [2]):
  * u1 US, u2 GB, u3 DE (no label), u4 JP (label observed after the window), u5 US: one
    impression each per (date, hour); u5 has 5 impressions at 2024-03-07 hour 0 (power user
    that day with threshold 3: 7 impressions that day);
  * 2024-03-09 hour 1 also holds 4 bad rows (null user, bad device, ts 2 h off, duplicate id);
  * 2024-03-08 hour 2 has an extra column; 2024-03-10 hour 2 is an empty file;
  * partitions of 2024-03-05 and 2024-03-11 exist and must not be read.
"""
import contextlib
import datetime as dt
import io
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pythia import contract
from pythia.config import EtlConfig, Geography
from pythia.etl import hourly, reconcile, sample, session, splits
from pythia.etl.hourly import run_hours
from pythia.features import derive_batch

from conftest import TEST_DATE, WINDOW, SourceBuilder

USERS = {"u1": "US", "u2": "GB", "u3": "DE", "u4": "JP", "u5": "US"}
D6, D7, D8, D9, D10 = WINDOW.dates


def _labels(u, g, a, c, d):
    return {"user_id": u, "gender": g, "age": a, "country": c, "observed_date": d}


def build_source(root: str) -> SourceBuilder:
    src = SourceBuilder(root)
    for day in WINDOW.dates + [D6 - dt.timedelta(days=1), D10 + dt.timedelta(days=1)]:
        for h in (0, 1, 2):
            rows = [sample.impression(f"{day:%m%d}-{h}-{u}-0", u, sample.at(day, h, 10), c)
                    for u, c in USERS.items()]
            schema = None
            if (day, h) == (D7, 0):
                rows += [sample.impression(f"{day:%m%d}-{h}-u5-{k}", "u5",
                                           sample.at(day, h, 20 + k), "US") for k in range(1, 5)]
            if (day, h) == (D9, 1):
                imp = sample.impression
                rows += [imp("bad-user", None, sample.at(day, h, 5)),
                         imp("bad-device", "u1", sample.at(day, h, 5), device_type="fridge"),
                         imp("bad-ts", "u1", sample.at(day, h + 2, 0)),
                         imp(f"{day:%m%d}-{h}-u1-0", "u1", sample.at(day, h, 50))]
            if (day, h) == (D8, 2):
                schema = sample.IMPRESSION_SCHEMA.append(pa.field("extra_col", pa.string()))
                rows = [dict(r, extra_col="x") for r in rows]
            if (day, h) == (D10, 2):
                rows = []
            src.hour(day, h, rows, schema=schema)
    src.labels("acme", [_labels("u2", "M", 40, "GB", dt.date(2024, 3, 1)),
                        _labels("u4", "F", 70, "JP", dt.date(2024, 3, 20)),
                        _labels("u1", "M", 50, "US", dt.date(2024, 3, 1))])
    src.labels("lucid", [_labels("u1", "F", 30, "US", dt.date(2024, 3, 1)),
                         _labels("u5", "M", 20, "US", dt.date(2024, 3, 1))])
    return src


@pytest.fixture(scope="module")
def etl(spark, tmp_path_factory):
    """Labels, two hourly tasks and the final splits of the hand-made source."""
    from pythia import providers

    base = tmp_path_factory.mktemp("etl")
    src = build_source(str(base / "source"))
    labels = providers.prepare_labels(spark, src.root, {"US": "lucid"}, (18, 25, 35, 45, 55, 65),
                                      str(base / "labels"), default_provider="acme")
    a = run_hours(spark, src.root, [0, 1], WINDOW, labels["labels_path"],
                  str(base / "etl" / "a"), str(base / "quarantine"), Geography(), False)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # printed to the step's log, not warnings.warn
        b = run_hours(spark, src.root, [2], WINDOW, labels["labels_path"],
                      str(base / "etl" / "b"), str(base / "quarantine"), Geography(), False)
    assert "extra_col" in log.getvalue()
    cfg = EtlConfig(drop_power_users=True, power_user_threshold=3, resample="balanced",
                    holdout_users=0)
    out = {s: str(base / "splits" / f"split={s}") for s in splits.OUTPUT_SPLITS}
    final = splits.finalize_splits(spark, [a, b], cfg, out)
    return {"base": base, "src": src, "a": a, "b": b, "final": final, "cfg": cfg,
            "labels": labels}


def test_resolve_target_precedence(monkeypatch):
    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    monkeypatch.delenv("PYTHIA_SPARK_MASTER", raising=False)
    monkeypatch.setenv("PYTHIA_TASK_CORES", "1")  # local[N] follows the task's cores
    assert session.resolve_target() == ("local", "local[1]")
    monkeypatch.setenv("PYTHIA_SPARK_MASTER", "spark://m:7077")
    assert session.resolve_target() == ("master", "spark://m:7077")
    monkeypatch.setenv("SPARK_REMOTE", "sc://h:15002")
    assert session.resolve_target() == ("remote", "sc://h:15002")
    assert session.resolve_target(master="local[1]") == ("master", "local[1]")
    assert session.resolve_target(master="x", remote="sc://y") == ("remote", "sc://y")


def test_resample_rates():
    assert splits.resample_rates({0: 10, 1: 5, 2: 0}, "balanced") == {0: 0.5, 1: 1.0}
    assert splits.resample_rates({0: 20, 1: 5}, "sqrt") == {0: 0.5, 1: 1.0}
    assert splits.resample_rates({0: 20, 1: 5}, "natural") == {0: 1.0, 1: 1.0}
    with pytest.raises(ValueError, match="uniform"):
        splits.resample_rates({0: 1}, "uniform")


@pytest.mark.spark
def test_hour_manifest_counts(etl):
    a, b = etl["a"], etl["b"]
    # task a: 10 partitions x 5 users + 4 extra u5 rows + 4 bad rows
    assert a["total"]["rows_in"] == 58 and b["total"]["rows_in"] == 20
    assert a["total"]["quarantined"] == {"null_required": 1, "wrong_type": 0,
                                         "bad_timestamp": 1, "out_of_domain": 1,
                                         "duplicate_impression_id": 1}
    assert a["quarantined_by_reason"] == a["total"]["quarantined"]
    assert a["total"]["unlabelled"] == 10 and b["total"]["unlabelled"] == 4  # u3, no label
    assert a["total"]["written"] == 44 and b["total"]["written"] == 16
    assert a["written_by_split"] == {"train": 28, "validation": 8, "test": 8}
    assert a["extra_columns"] == [] and b["extra_columns"] == ["extra_col"]
    assert a["gaps"] == b["gaps"] == []
    empty = [p for p in b["per_hour"] if p["date"] == "2024-03-10"][0]
    assert (empty["rows_in"], empty["written"], empty["gap"]) == (0, 0, False)
    assert {p["date"] for p in a["per_hour"]} == {d.isoformat() for d in WINDOW.dates}
    assert {p["date"]: p["split"] for p in a["per_hour"]} == {
        "2024-03-06": "train", "2024-03-07": "train", "2024-03-08": "train",
        "2024-03-09": "validation", "2024-03-10": "test"}
    # classes: u1 F_25-34 (1), u2 M_35-44 (8), u4 F_65+ (5), u5 M_18-24 (6)
    assert b["class_counts"]["train"] == {"1": 3, "5": 3, "6": 3, "8": 3}


@pytest.mark.spark
def test_hour_rows_features_and_labels(spark, etl):
    rows = spark.read.parquet(etl["a"]["rows_path"]).toPandas()
    assert set(rows.date) == {d.isoformat() for d in WINDOW.dates}  # 03-05 / 03-11 not read
    assert "u3" not in set(rows.user_id)  # unlabelled rows are counted, not written
    assert set(rows[rows.user_id == "u4"].age_bucket) == {"65+"}  # label observed later
    assert set(rows[rows.user_id == "u1"].label_provider) == {"lucid"}
    dup = rows[rows.impression_id == "0309-1-u1-0"]
    assert len(dup) == 1 and dup.ts.iloc[0].minute == 10  # the earlier copy was kept
    expect = derive_batch({"ts": rows.ts_seconds.to_numpy(), "country": rows.country.to_numpy(),
                           "device_make": rows.device_make.to_numpy(dtype=object)}, Geography())
    for name in ("local_hour", "local_dow", "region", "region_device_make"):
        assert rows[name].tolist() == list(expect[name])
    np.testing.assert_array_equal(rows.hour_sin.to_numpy(), expect["hour_sin"])
    q = spark.read.parquet(etl["a"]["quarantine_path"]).toPandas()
    assert sorted(q.reason) == ["bad_timestamp", "duplicate_impression_id", "null_required",
                                "out_of_domain"]
    assert set(q.date) == {"2024-03-09"} and set(q.hour) == {1}
    # the ids table of every valid row (written + unlabelled), for the dedupe across tasks
    ids = spark.read.parquet(etl["a"]["ids_path"]).toPandas()
    assert list(ids.columns) == list(hourly.IDS_COLUMNS)
    assert len(ids) == 44 + 10 and ids.impression_id.is_unique
    assert (ids.outcome == "unlabelled").sum() == 10
    assert ids[ids.user_id == "u3"].y_age_gender.isna().all()
    assert ids[ids.impression_id == "0309-1-u1-0"].ts.iloc[0].minute == 10  # the task's survivor


@pytest.mark.spark
def test_gaps_stop_the_run_or_are_recorded(spark, tmp_path):
    src = SourceBuilder(str(tmp_path / "src"))
    src.users_every_hour({"u1": "US"}, WINDOW.dates[1:], [5])
    src.labels("acme", [_labels("u1", "F", 30, "US", dt.date(2024, 3, 1))])
    with pytest.raises(ValueError, match="date=2024-03-06/hour=05"):
        run_hours(spark, src.root, [5], WINDOW, str(tmp_path / "none"), str(tmp_path / "o"),
                  str(tmp_path / "q"), Geography(), allow_gaps=False)
    from pythia import providers
    lab = providers.prepare_labels(spark, src.root, {}, (18, 25, 35, 45, 55, 65),
                                   str(tmp_path / "lab"), default_provider="acme")
    man = run_hours(spark, src.root, [5], WINDOW, lab["labels_path"], str(tmp_path / "o"),
                    str(tmp_path / "q"), Geography(), allow_gaps=True)
    assert man["gaps"] == ["date=2024-03-06/hour=05"]
    assert [p["gap"] for p in man["per_hour"]] == [True, False, False, False, False]
    assert man["total"]["written"] == 4


@pytest.mark.spark
def test_power_users_and_resampling_from_global_counts(spark, etl):
    f = etl["final"]
    assert f["power_user_threshold"] == 3.0
    assert f["power_user_rows"] == {"train": 7, "validation": 0, "test": 0}
    # train after dropping u5's 7 rows of 03-07: u5 has 6 rows, the others 9 each
    assert f["class_counts_before"]["train"] == {"1": 9, "5": 9, "6": 6, "8": 9}
    assert f["rates"]["train"] == {"1": 6 / 9, "5": 6 / 9, "6": 1.0, "8": 6 / 9}
    assert f["rates"]["validation"] == {"1": 1.0, "5": 1.0, "6": 1.0, "8": 1.0}
    assert f["resample_rates"] == f["rates"]  # alias read by pythia.pipeline
    assert f["splits"]["train"] == {"path": f["paths"]["train"], "rows": f["rows"]["train"]}
    train = spark.read.parquet(f["paths"]["train"]).toPandas()
    assert not train.is_power_user.any() and set(train.split) == {"train"}
    assert len(train) == f["rows"]["train"] and (train.y_age_gender == 6).sum() == 6
    natural = spark.read.parquet(f["paths"]["test_natural"]).toPandas()
    assert len(natural) == 8 and set(natural.split) == {"test_natural"}
    assert f["natural_priors"]["gender"] == pytest.approx([18 / 40, 22 / 40])
    assert sum(f["natural_priors"]["age_gender"]) == pytest.approx(1.0)
    assert [c for c, _ in etl["a"]["schema"]][:3] == ["impression_id", "user_id", "ts"]
    assert list(train.columns) == [c.name for c in contract.SPLIT.columns]


@pytest.mark.spark
def test_power_users_kept_in_test_natural_and_selection_is_deterministic(spark, etl, tmp_path):
    a, b = etl["a"], etl["b"]
    # threshold 1: every user-day with 2+ labelled rows (all of them) is a power user
    cfg = EtlConfig(drop_power_users=True, power_user_threshold=1, resample="balanced", seed=3,
                    holdout_users=0)
    out1 = {s: str(tmp_path / "r1" / s) for s in splits.OUTPUT_SPLITS}
    f1 = splits.finalize_splits(spark, [a, b], cfg, out1)
    assert f1["rows"]["train"] == 0 and f1["rows"]["test_resampled"] == 0
    natural = spark.read.parquet(f1["paths"]["test_natural"]).toPandas()
    assert len(natural) == 8 and natural.is_power_user.all()
    # same seed twice -> the same rows; the selection is a hash, not a random draw
    cfg = EtlConfig(drop_power_users=True, power_user_threshold=100, resample="balanced", seed=3,
                    holdout_users=0)
    ids = []
    for run in ("r2", "r3"):
        out = {s: str(tmp_path / run / s) for s in splits.OUTPUT_SPLITS}
        f = splits.finalize_splits(spark, [a, b], cfg, out)
        ids.append(sorted(spark.read.parquet(f["paths"]["train"]).toPandas().impression_id))
    assert ids[0] == ids[1]
    assert f["class_counts_before"]["train"] == {"1": 9, "5": 9, "6": 13, "8": 9}
    with pytest.raises(ValueError, match="hour 2"):
        splits.finalize_splits(spark, [a, b, b], cfg, out)


@pytest.mark.spark
def test_reconciliation_identity_holds_exactly(etl):
    df = reconcile.reconcile([etl["a"], etl["b"]], etl["final"])
    reconcile.assert_balanced(df)
    total = df[df.scope == "total"].set_index("split")
    assert total.loc["train", "rows_in"] == 9 * 5 + 4
    assert total.loc["validation", "quarantined"] == 4
    assert total.loc["train", "power_user_dropped"] == 7
    assert total.loc["test_natural", "written"] == 8
    assert total.loc["test_resampled", "rows_in"] == total.loc["test_natural", "rows_in"] == 10
    assert (total.rows_in == total[list(reconcile.TERMS)].sum(axis=1)).all()
    # a count lost anywhere is caught, and the offending row is shown
    tampered = dict(etl["final"], per_hour=[dict(p, written=p["written"] - 1)
                                            if (p["date"], p["hour"], p["split"]) ==
                                            ("2024-03-06", 0, "train") else p
                                            for p in etl["final"]["per_hour"]])
    with pytest.raises(ValueError, match="2024-03-06"):
        reconcile.assert_balanced(reconcile.reconcile([etl["a"], etl["b"]], tampered))


@pytest.mark.spark
def test_held_out_users_rows_before_the_test_day_are_validation_the_others_train(
        spark, etl, tmp_path):
    """The user decides the split before the test day: nothing is dropped, train and
    validation are user-disjoint, and every moved row is reconciled on both sides."""
    from pythia.etl.content_hash import keep_uniform

    a, b = etl["a"], etl["b"]
    base = EtlConfig(resample="natural", power_user_threshold=100, holdout_users=0)
    everyone = splits.finalize_splits(spark, [a, b], base, {
        s: str(tmp_path / "all" / s) for s in splits.OUTPUT_SPLITS})
    read = {s: spark.read.parquet(everyone["paths"][s]).toPandas() for s in splits.OUTPUT_SPLITS}
    users = sorted(set().union(*(set(df.user_id) for df in read.values())))
    # a seed that holds out some of the users and keeps others (the draw is a hash: fixed),
    # with held-out users on a train date and other users on the validation date
    def draw(s):
        return {u for u, x in zip(users, keep_uniform(pa.array(users), s)) if x < 0.5}
    seed = next(s for s in range(50) if read["train"].user_id.isin(draw(s)).any()
                and (~read["validation"].user_id.isin(draw(s))).any())
    held = draw(seed)
    cfg = EtlConfig(resample="natural", power_user_threshold=100, holdout_users=0.5, seed=seed)
    f = splits.finalize_splits(spark, [a, b], cfg, {
        s: str(tmp_path / "held" / s) for s in splits.OUTPUT_SPLITS})
    got = {s: spark.read.parquet(f["paths"][s]).toPandas() for s in splits.OUTPUT_SPLITS}
    train, validation = got["train"], got["validation"]
    before = pd.concat([read["train"], read["validation"]])
    # train: the other users' rows of every train and validation date, unflagged
    assert not set(train.user_id) & held and not train.user_held_out.any()
    assert sorted(train.impression_id) == sorted(
        before[~before.user_id.isin(held)].impression_id)
    assert set(train.date) == set(before.date)  # the validation date's other users train
    # validation: the held-out users' rows of the same dates (user-disjoint), flagged
    assert set(validation.user_id) <= held and validation.user_held_out.all()
    assert sorted(validation.impression_id) == sorted(
        before[before.user_id.isin(held)].impression_id)
    assert len(train) + len(validation) == len(before)  # nothing dropped
    # moved: counted by the split their date gave them
    assert f["user_split_rows"]["train"] == int(read["train"].user_id.isin(held).sum()) > 0
    assert f["user_split_rows"]["validation"] == int(
        (~read["validation"].user_id.isin(held)).sum()) > 0
    for s in ("test_natural", "test_resampled"):  # the test day keeps everyone, flagged
        assert sorted(got[s].impression_id) == sorted(read[s].impression_id)
        assert (got[s].user_held_out == got[s].user_id.isin(held)).all()
    assert got["test_natural"].user_held_out.any()
    # the class counts behind the resample rates are those of the moved splits
    assert sum(f["class_counts_before"]["train"].values()) == len(got["train"])
    assert sum(f["class_counts_before"]["validation"].values()) == len(got["validation"])
    df = reconcile.reconcile([a, b], f)
    reconcile.assert_balanced(df)
    total = df[df.scope == "total"].set_index("split")
    assert total.loc["train", "user_split"] == f["user_split_rows"]["train"]
    assert total.loc["validation", "user_split"] == f["user_split_rows"]["validation"]
    assert total.loc["test_natural", "user_split"] == 0
    for s in ("train", "validation"):  # what a split wrote is what its records say
        assert total.loc[s, "written"] == len(got[s])
    # an hour of a train date has a validation record: its held-out users' rows landed there
    hours = df[(df.scope == "hour") & (df.split == "validation")]
    landed = hours[hours.date.isin(set(read["train"].date))]
    assert landed.rows_in.sum() == f["user_split_rows"]["train"]
    assert (landed.quarantined == 0).all() and (landed.unlabelled == 0).all()
    # and a record that does not add up says so
    tampered = dict(f, per_hour=[dict(p, written=p["written"] + 1)
                                 if p["split"] == "validation" and p["etl_written"] else p
                                 for p in f["per_hour"]])
    with pytest.raises(ValueError, match="do not balance"):
        reconcile.assert_balanced(reconcile.reconcile([a, b], tampered))
    with pytest.raises(ValueError, match="holdout_users must lie in"):
        EtlConfig(holdout_users=1.0)


@pytest.mark.spark
def test_train_keeps_a_power_user_days_rows_at_threshold_over_n(spark, etl, tmp_path):
    from pythia.etl.content_hash import keep_uniform

    a, b = etl["a"], etl["b"]
    out = {k: {s: str(tmp_path / k / s) for s in splits.OUTPUT_SPLITS} for k in ("all", "cap")}
    base = dict(resample="natural", power_user_threshold=3, holdout_users=0, seed=2)
    full = splits.finalize_splits(spark, [a, b], EtlConfig(**base, cap_power_users=False),
                                  out["all"])
    capped = splits.finalize_splits(spark, [a, b], EtlConfig(**base), out["cap"])
    assert full["cap_power_users"] is False and capped["cap_power_users"] is True
    rows = spark.read.parquet(full["paths"]["train"]).toPandas()
    got = spark.read.parquet(capped["paths"]["train"]).toPandas()
    power = rows[rows.is_power_user]
    assert len(power) == 7 and power.groupby(["user_id", "date"]).size().tolist() == [7]
    # a power user-day's row stays when its draw is under threshold / n (3 / 7); others all stay
    draw = keep_uniform(pa.array(power.impression_id.tolist()), 2)
    want = set(rows[~rows.is_power_user].impression_id) | set(power.impression_id[draw < 3 / 7])
    assert set(got.impression_id) == want and 0 < len(want) - (~rows.is_power_user).sum() < 7
    # validation and test keep every row; the reconciliation counts the capped rows
    for s in ("validation", "test_natural"):
        assert capped["rows"][s] == full["rows"][s]
    df = reconcile.reconcile([a, b], capped)
    reconcile.assert_balanced(df)
    assert df[df.scope == "total"].set_index("split").loc["train", "resampled_out"] == 7 - (
        draw < 3 / 7).sum()
