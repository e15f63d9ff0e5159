"""``user_impressions_today`` in the ETL: both join_hours engines against the reference.

``pythia.synth.activity.user_impressions_today`` defines the count over every kept row of the
window; ``join_hours`` must give it to every split row (sampled or not) on Spark and on the
driver alike. Sources: tests/test_etl_local.py's (pandas / pyarrow / Spark / Hive writers, ts
stored as ns, ms, INT96, int and date, quarantined rows, duplicates) plus ties in ts and a user
across midnight UTC; and the tiny synthetic world.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pythia import etl, providers_local
from pythia.config import EtlConfig, RunParams, hour_groups
from pythia.etl import activity
from pythia.etl.dedupe_local import read_dataset
from pythia.etl.sample import at, impression
from pythia.features import (IMPRESSION_ID, OUTPUT_SPLITS, TEST_RESAMPLED, TS, TS_SECONDS,
                             USER_ID, USER_IMPRESSIONS_TODAY)
from pythia.paths import RunPaths, join
from pythia.synth.activity import user_impressions_today as reference

from conftest import WINDOW

D6, D7, D8, D9, D10 = WINDOW.dates
AGES = (18, 25, 35, 45, 55, 65)
ALL_ROWS = [s for s in OUTPUT_SPLITS if s != TEST_RESAMPLED]  # every kept row, once


def _extra_rows(src) -> None:
    """Ties in ts (u5, broken by impression_id), and u6 on both sides of midnight UTC."""
    t = at(D7, 6, 30)
    src.hour(D7, 6, [impression(i, "u5", t, "JP") for i in ("tie-c", "tie-a", "tie-b")],
             name="ties.parquet")
    src.hour(D8, 23, [impression("late-1", "u6", at(D8, 23, 50), "AU", geo_region="AU-WA"),
                      impression("late-2", "u6", at(D8, 23, 59, 59), "AU", geo_region="AU-WA")])
    src.hour(D9, 0, [impression("early-1", "u6", at(D9, 0, 0), "AU", geo_region="AU-WA")])


@pytest.fixture(scope="module")
def odd_source(spark, tmp_path_factory):
    import test_etl_local

    tmp = str(tmp_path_factory.mktemp("activity"))
    src = test_etl_local.build_source(spark, join(tmp, "src"))
    _extra_rows(src)
    labels = providers_local.prepare_labels(src.root, {}, AGES, join(tmp, "lab"), "acme")
    params = RunParams.build({"source": src.root, "models": "gbdt", "data_root": tmp,
                              "allow_gaps": True})
    paths = RunPaths(tmp, "Etl", "1")
    with contextlib.redirect_stdout(io.StringIO()):  # tasks of 4 hours: duplicates across them
        return tmp, [etl.run_hours(src.root, hours, WINDOW.as_dict(), labels, params, paths)
                     for hours in hour_groups(4)]


def _frame(paths: dict, splits) -> pd.DataFrame:
    return pd.concat([read_dataset([paths[s]]).to_pandas() for s in splits], ignore_index=True)


def _reference(rows: pd.DataFrame) -> pd.Series:
    return pd.Series(reference(rows), index=rows[IMPRESSION_ID].to_numpy())


@pytest.mark.spark
def test_both_engines_count_as_the_reference_on_odd_writers(spark, odd_source, monkeypatch):
    from test_join_local import _join, assert_same_join

    tmp, manifests = odd_source
    # every row in the splits; the odd writers' bad rows are 12% of this source: past the
    # default max_quarantined
    full = EtlConfig(resample="natural", drop_power_users=False, power_user_quantile=0.5,
                     holdout_users=0, cap_power_users=False, max_quarantined=1.0)
    got = {e: _join(spark, monkeypatch, manifests, full, join(tmp, "full"), e)
           for e in ("spark", "driver")}
    assert_same_join(got["spark"], got["driver"])  # schema (int64, not null) and every row
    rows = _frame(got["driver"]["split"]["paths"], ALL_ROWS)
    assert rows[IMPRESSION_ID].is_unique and len(rows) > 100
    want = _reference(rows)
    counts = rows.set_index(IMPRESSION_ID)[USER_IMPRESSIONS_TODAY]
    pd.testing.assert_series_equal(counts, want.rename(USER_IMPRESSIONS_TODAY),
                                   check_names=False, check_index_type=False)
    assert [counts[i] - counts["tie-a"] for i in ("tie-a", "tie-b", "tie-c")] == [0, 1, 2]
    assert counts["late-2"] == counts["late-1"] + 1 and counts["early-1"] == 0
    assert counts.max() > 10  # users with many rows a day: not a table of zeros
    flavours = rows[(rows["date"] == D10.isoformat()) & rows["hour"].between(0, 5)]
    assert flavours["hour"].nunique() == 6  # every writer flavour's hour is counted
    # resampled, power users dropped: every row keeps the count of the whole day
    sampled = EtlConfig(resample="balanced", power_user_quantile=0.5, seed=3,
                        drop_power_users=True, max_quarantined=1.0)  # users held out (0.1): counts unchanged
    for engine in ("spark", "driver"):
        out = _join(spark, monkeypatch, manifests, sampled, join(tmp, "sampled"), engine)
        part = _frame(out["split"]["paths"], OUTPUT_SPLITS)
        assert 0 < len(part) < len(rows) + len(_frame(out["split"]["paths"], [TEST_RESAMPLED]))
        np.testing.assert_array_equal(part[USER_IMPRESSIONS_TODAY].to_numpy(),
                                      want[part[IMPRESSION_ID]].to_numpy())


def test_driver_count_orders_by_microseconds_then_id_and_resets_at_midnight():
    ts = pd.to_datetime(["2024-03-07 23:59:59.000002", "2024-03-07 23:59:59.000001",
                         "2024-03-07 23:59:59.000001", "2024-03-08 00:00:00", "2024-03-07 10:00",
                         "2024-03-07 10:00"], utc=True, format="ISO8601")
    table = pa.table({USER_ID: ["u", "u", "u", "u", "v", None],
                      IMPRESSION_ID: ["a", "z", "b", "c", "ä", "e"],
                      TS: pa.array(ts, pa.timestamp("us", tz="UTC")),
                      TS_SECONDS: pa.array(ts.astype("int64") // 10**9, pa.int64())})
    assert activity.user_impressions_today(table).tolist() == [2, 1, 0, 0, 0, 0]
    frame = table.to_pandas().dropna()
    assert activity.user_impressions_today(table)[:5].tolist() == reference(frame).tolist()
    assert activity.user_impressions_today(table.slice(0, 0)).tolist() == []


@pytest.fixture(scope="module")
def tiny_joined(spark, tmp_path_factory):
    """The tiny world's hourly rows (every kept row) and its splits from both engines."""
    from test_tfrecords_local import join_tiny_both_engines

    tmp = str(tmp_path_factory.mktemp("tiny-activity"))
    # power users sampled AND dropped: the count must be taken before either
    hours, out, src, _ = join_tiny_both_engines(spark, tmp, {"drop_power_users": True})
    kept = read_dataset([m["rows_path"] for m in hours]).to_pandas()
    return kept, out, src


@pytest.mark.spark
def test_tiny_world_counts_are_the_reference_on_every_split_of_both_engines(tiny_joined):
    kept, out, _ = tiny_joined
    assert kept[IMPRESSION_ID].is_unique  # a world has no duplicates to settle
    want = _reference(kept)
    tables = {e: _frame(m["paths"], OUTPUT_SPLITS) for e, m in out.items()}
    for engine, part in tables.items():
        assert len(part) and part[USER_IMPRESSIONS_TODAY].dtype == np.int64
        np.testing.assert_array_equal(part[USER_IMPRESSIONS_TODAY].to_numpy(),
                                      want[part[IMPRESSION_ID]].to_numpy(), err_msg=engine)
    natural = {e: m["rows"]["test_natural"] for e, m in out.items()}
    assert natural["spark"] == natural["driver"] > 0
    assert out["driver"]["drop_power_users"] and want.max() > 10


def test_tiny_world_gauge_reports_three_natural_slices_given_the_count(tiny_joined):
    """The exact posterior on the natural test day: all rows, without power users, power users
    only (rows adding up), conditioned on the split rows' count (it moves the posterior)."""
    from pythia.config import DEFAULT_AGE_EDGES
    from pythia.evaluate import gauge, io as eval_io, slices

    _, out, src = tiny_joined
    world = eval_io.read_world(src)
    frames = eval_io.read_split_frames(out["driver"], DEFAULT_AGE_EDGES)
    assert USER_IMPRESSIONS_TODAY in frames["test_natural"].columns
    data = slices.prepare_data(frames, DEFAULT_AGE_EDGES)
    bayes, note = gauge.posterior_probs_by_split(world, data)
    assert note is None
    m = slices.metrics_table(gauge.score_posterior(data, bayes))
    ll = m[(m["metric"] == "log_loss") & (m["eval_region"] == "global")
           & (m["target"] == "age_gender") & (m["label_source"] == "provider")]
    n = ll.set_index("test_set")["n"]
    natural = [slices.NATURAL, slices.NATURAL_NO_POWER_USERS, slices.NATURAL_POWER_USERS]
    assert set(natural) <= set(n.index)
    power = frames["test_natural"]["is_power_user"]
    assert n[slices.NATURAL_POWER_USERS] == power.sum() > 0
    assert n[slices.NATURAL] == n[slices.NATURAL_NO_POWER_USERS] + n[slices.NATURAL_POWER_USERS]
    # given the count vs not: the same rows, a different (sharper) posterior
    frame = data.frames["test_natural"]
    blind = slices.SplitFrame(**{**frame.__dict__,
                                 "df": frame.df.drop(columns=[USER_IMPRESSIONS_TODAY])})
    with_n = bayes["test_natural"]["provider"]["age_gender"]
    without = gauge.posterior_probs(world, blind, len(DEFAULT_AGE_EDGES))["provider"]["age_gender"]
    assert np.abs(with_n - without).max() > 0.01
