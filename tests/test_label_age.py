"""Labels observed years before the test day: an age is moved to it, a bucket is said.

Third-party labels are often old; an age is the user's age on its ``observed_date``. Before
(session 63) a 24-year-old observed three years before the window trained as 18-24.
"""
from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from pythia import label_rules, providers
from pythia.config import DEFAULT_AGE_EDGES

from test_providers import _flavoured_labels, _label, _sorted

AS_OF = dt.date(2026, 11, 20)


def _frame(rows):
    return pd.DataFrame([_label(*r) for r in rows])


def test_an_age_moves_to_the_test_day_and_a_bucket_cannot():
    years = lambda n: AS_OF - dt.timedelta(days=round(n * 365.2425))  # noqa: E731
    rows = [("a", "F", 24, "US", years(3)),        # 27 now: 25-34
            ("b", "M", 17, "US", years(1.4)),      # 18 now (17 alone: below the first edge)
            ("c", "F", 30, "US", years(-2)),       # observed two years after: 28 then
            ("d", "M", 12, "US", years(6)),        # 12 as given is impossible, even if 18 now
            ("e", "F", None, "US", years(2), "18-24"),   # a bucket two years old: kept, said
            ("f", "M", 40, "US", years(0.4)),      # within half a year: not moved
            ("g", "F", 64, "US", years(1.6))]      # 66 now: 65+
    out = label_rules.bucket_labels(_frame(rows), DEFAULT_AGE_EDGES, AS_OF).set_index("user_id")
    assert out["age_bucket"].to_dict() == {"a": "25-34", "b": "18-24", "c": "25-34", "d": None,
                                           "e": "18-24", "f": "35-44", "g": "65+"}
    assert out["reject"].to_dict()["d"] == label_rules.IMPOSSIBLE_AGE
    assert out[label_rules.AGE_SHIFT].to_dict() == {"a": 3, "b": 1, "c": -2, "d": 6, "e": 0,
                                                    "f": 0, "g": 2}
    assert out[label_rules.BUCKET_YEARS].to_dict() == {"a": 0, "b": 0, "c": 0, "d": 0, "e": 2,
                                                       "f": 0, "g": 0}
    assert out["age"].tolist()[:3] == [24, 17, 30]  # the given age is kept as given
    plain = label_rules.bucket_labels(_frame(rows), DEFAULT_AGE_EDGES).set_index("user_id")
    assert plain["age_bucket"]["a"] == "18-24" and plain["reject"]["b"] == \
        label_rules.AGE_BELOW_FIRST_EDGE
    assert not plain[label_rules.AGE_SHIFT].any() and not plain[label_rules.BUCKET_YEARS].any()


def test_label_age_counts_the_kept_labels_and_says_them():
    tally = [(label_rules.LABELLED, 0, 0, 60), (label_rules.LABELLED, 3, 0, 25),
             (label_rules.LABELLED, -1, 0, 5), (label_rules.LABELLED, 0, 2, 10),
             (label_rules.SUPERSEDED, 9, 0, 7), ("wrong_type", None, None, 4)]
    age = label_rules.label_age(tally, AS_OF)
    assert age == {"as_of": "2026-11-20", "labels": 100, "aged": 30, "max_years": 3,
                   "stale_buckets": 10}
    assert label_rules.status_counts(tally) == {"labelled": 100, "superseded": 7,
                                                "wrong_type": 4}
    note, warning = label_rules.label_age_lines(age)
    assert note == ("note: prepare_labels: 30 of 100 labels' ages moved to the test day "
                    "2026-11-20 (observed up to 3 year(s) away from it)")
    assert warning.startswith("warning: prepare_labels: 10 of 100 labels (10%) are age buckets "
                              "observed a year or more from the test day 2026-11-20")
    few = dict(age, stale_buckets=5, aged=0)  # 5%: not above the share
    assert label_rules.label_age_lines(few) == []


@pytest.mark.spark
def test_both_engines_move_ages_alike(spark, source, tmp_path):
    from pythia import providers_local
    from pythia.storage import read_frame

    _flavoured_labels(spark, source.root)
    choice, later = {"US": "acme", "GB": "lucid"}, dt.date(2031, 6, 1)
    by_spark = providers.prepare_labels(spark, source.root, choice, DEFAULT_AGE_EDGES,
                                        str(tmp_path / "spark"), "acme", as_of=later)
    by_pandas = providers_local.prepare_labels(source.root, choice, DEFAULT_AGE_EDGES,
                                               str(tmp_path / "pandas"), "acme", as_of=later)
    assert by_pandas["label_age"] == by_spark["label_age"]
    assert by_spark["label_age"]["aged"] > 0 and by_spark["label_age"]["max_years"] >= 7
    assert by_pandas["counts"] == by_spark["counts"]
    assert by_pandas["agreement"] == by_spark["agreement"]
    for key in ("labels_path", "aside_path", "rejected_path"):
        assert _sorted(read_frame(by_pandas[key])) == _sorted(read_frame(by_spark[key])), key
    unmoved = providers_local.prepare_labels(source.root, choice, DEFAULT_AGE_EDGES,
                                             str(tmp_path / "unmoved"), "acme")
    assert unmoved["label_age"]["aged"] == 0
    moved, kept = (read_frame(m["labels_path"]).set_index("user_id")["age_bucket"]
                   for m in (by_pandas, unmoved))
    assert (moved != kept.reindex(moved.index)).any()  # some users are a bucket older
