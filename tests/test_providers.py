"""Provider selection (pandas) and label preparation (Spark) rules."""
import datetime as dt

import pandas as pd
import pytest

from pythia import providers
from pythia.config import DEFAULT_AGE_EDGES

NOW = dt.date(2024, 3, 10)


def _metrics(rows):
    return pd.DataFrame(rows, columns=["provider", "country", "date", "coverage", "accuracy",
                                       "consistency", "n_labels"])


METRICS = _metrics([
    ("acme", "GB", NOW, 0.8, 0.9, 0.8, 100),  # 0.5*.9 + .3*.8 + .2*.8 = 0.85
    ("lucid", "GB", NOW, 0.9, 0.8, 0.8, 100),  # 0.4 + .24 + .18 = 0.82
    ("acme", "US", NOW, 0.5, 0.6, 0.5, 100),  # .3 + .15 + .1 = 0.55
    ("lucid", "US", NOW, 0.5, 0.7, 0.5, 100),  # .35 + .15 + .1 = 0.60
    # a stale, excellent score must not count: older than the recent window
    ("acme", "US", NOW - dt.timedelta(days=30), 1.0, 1.0, 1.0, 100),
])


def test_best_score_per_country_with_reason():
    table, choice, notes = providers.select_providers(METRICS, {}, ["GB", "US"])
    assert choice == {"GB": "acme", "US": "lucid"}
    assert notes == []
    gb = table[(table.country == "GB") & table.chosen].iloc[0]
    assert gb.reason == "best score 0.85 vs next 0.82 (lucid)"
    assert gb.score == pytest.approx(0.85)
    assert table.loc[(table.country == "GB") & (table.provider == "lucid"), "rank"].item() == 2
    assert table.groupby("country").chosen.sum().tolist() == [1, 1]


def test_override_wins_where_it_applies_and_is_skipped_with_a_warning_elsewhere():
    table, choice, notes = providers.select_providers(METRICS, {"GB": "lucid"}, ["GB", "US"])
    assert choice["GB"] == "lucid" and notes == []
    assert table.loc[(table.country == "GB") & table.chosen, "reason"].item() == "override"
    # a provider this source does not have: skipped, named, the scores decide
    _, choice, notes = providers.select_providers(METRICS, {"US": "nobody"}, ["US"])
    assert choice["US"] == "lucid" and len(notes) == 1
    assert "US=nobody" in notes[0] and "no provider 'nobody'" in notes[0]
    # a country this source does not have: skipped, named, no row invented for it
    table, choice, notes = providers.select_providers(METRICS, {"BR": "lucid"}, ["GB", "US"])
    assert "BR" not in choice and "BR" not in set(table.country)
    assert len(notes) == 1 and "no BR rows" in notes[0]
    # a provider known only from the labels/ folder may be forced
    _, choice, _ = providers.select_providers(METRICS, {"US": "newco"}, ["US"],
                                              known_providers=["newco"])
    assert choice["US"] == "newco"


def test_country_without_metrics_falls_back_to_best_global_provider():
    # global means: acme (0.85 + 0.55) / 2 = 0.70, lucid (0.82 + 0.60) / 2 = 0.71
    table, choice, notes = providers.select_providers(METRICS, {}, ["GB", "JP"])
    assert choice["JP"] == "lucid"
    assert notes and "JP" in notes[0]
    jp = table[table.country == "JP"]
    assert jp.reason.tolist() == ["no metrics for JP: best global provider"]
    with pytest.raises(ValueError, match="no provider metrics at all"):
        providers.select_providers(METRICS.iloc[:0], {}, ["JP"])


def test_metrics_missing_a_column_is_named():
    with pytest.raises(ValueError, match="accuracy"):
        providers.select_providers(METRICS.drop(columns=["accuracy"]), {}, ["US"])


def test_bucket_labels_rules():
    pdf = pd.DataFrame({
        "user_id": list("abcdefg"),
        "gender": ["F", "M", "F", "F", None, "M", "F"],
        "age": [30, None, 150, 15, 40, 65, 44],
        "age_bucket": [None, "55-64", None, None, None, None, "18-24"],
    })
    out = providers.bucket_labels(pdf, DEFAULT_AGE_EDGES).set_index("user_id")
    assert out.loc["a", "age_bucket"] == "25-34" and out.loc["a", "y_age_gender"] == 1
    assert out.loc["b", "y_age"] == 4 and out.loc["b", "y_age_gender"] == 6 + 4
    assert out.loc["c", "reject"] == providers.IMPOSSIBLE_AGE
    assert out.loc["d", "reject"] == providers.AGE_BELOW_FIRST_EDGE
    assert out.loc["e", "reject"] == providers.INCOMPLETE_LABEL
    assert out.loc["f", "age_bucket"] == "65+" and out.loc["f", "y_age_gender"] == 11
    assert out.loc["g", "age_bucket"] == "35-44"  # age wins over a contradicting bucket
    assert out.reject.isna().sum() == 4


def _label(u, g, a, c, d, bucket=None):
    return {"user_id": u, "gender": g, "age": a, "age_bucket": bucket, "country": c,
            "observed_date": d}


@pytest.mark.spark
def test_prepare_labels_rules_and_agreement(spark, source, tmp_path):
    early, late = dt.date(2024, 3, 1), dt.date(2024, 3, 5)
    source.labels("acme", [
        _label("u1", "M", 50, "US", early),  # US is lucid's: aside
        _label("u2", "M", 40, "GB", early),
        _label("u9", "F", 30, "GB", late),  # two countries: the latest observation wins
        _label("u8", "M", 20, "GB", early),  # tie with the US row below: GB < US wins
        _label("u6", "F", None, "GB", early, bucket="55-64"),
        _label("old", "F", 30, "GB", early), _label("old", "F", 36, "GB", late),  # superseded
        _label("bad", "F", 150, "GB", early),
        _label("kid", "F", 15, "GB", early),
        _label("nog", None, 30, "GB", early),
        _label("future", "F", 70, "JP", dt.date(2024, 4, 1)),  # after the window: still used
    ])
    source.labels("lucid", [
        _label("u1", "F", 30, "US", early),
        _label("u2", "F", 40, "GB", early),  # GB is acme's: aside
        _label("u9", "M", 60, "US", early),
        _label("u8", "F", 50, "US", early),
        _label("", "F", 30, "US", early),  # contract violation: quarantined
    ])
    choice = {"US": "lucid", "GB": "acme"}
    man = providers.prepare_labels(spark, source.root, choice, DEFAULT_AGE_EDGES,
                                   str(tmp_path / "labels"), default_provider="acme")
    got = {r.user_id: r for r in spark.read.parquet(man["labels_path"]).collect()}
    assert sorted(got) == ["future", "old", "u1", "u2", "u6", "u8", "u9"]
    assert (got["u1"].label_provider, got["u1"].gender, got["u1"].age_bucket) == (
        "lucid", "F", "25-34")
    assert (got["u9"].country, got["u9"].label_provider, got["u9"].y_age_gender) == (
        "GB", "acme", 1)
    assert got["u8"].country == "GB"
    assert got["old"].age_bucket == "35-44"
    assert got["u6"].y_age_gender == 4
    assert got["future"].label_provider == "acme"  # JP: default provider; date after window
    c = man["counts"]
    assert c["rows_in"] == 16 and c["users"] == 7
    assert c["rejected"] == {"impossible_age": 1, "age_below_first_edge": 1,
                             "incomplete_label": 1}
    assert c["quarantined"]["null_required"] == 1
    assert c["superseded"] == 3  # old@early, u9@US, u8@US
    assert c["not_chosen_provider"] == 2  # acme u1 (US), lucid u2 (GB)
    aside = {(r.provider, r.user_id) for r in spark.read.parquet(man["aside_path"]).collect()}
    assert aside == {("acme", "u1"), ("lucid", "u2")}
    agree = {(a["provider_a"], a["provider_b"], a["country"]): a for a in man["agreement"]}
    assert agree[("acme", "lucid", "US")]["shared_users"] == 1
    assert agree[("acme", "lucid", "US")]["gender_agreement"] == 0.0
    assert agree[("acme", "lucid", "GB")]["age_agreement"] == 1.0
    assert agree[("acme", "lucid", "GB")]["gender_agreement"] == 0.0


@pytest.mark.spark
def test_read_provider_metrics_quarantines_and_scores(spark, source):
    source.metrics([{"provider": "acme", "country": "US", "date": NOW, "coverage": 0.5,
                     "accuracy": 0.6, "consistency": 0.5, "n_labels": 1},
                    {"provider": "acme", "country": "GB", "date": NOW, "coverage": 2.0,
                     "accuracy": 0.6, "consistency": 0.5, "n_labels": 1}])
    pdf, man = providers.read_provider_metrics(spark, source.root)
    assert pdf.country.tolist() == ["US"] and man["quarantined"]["out_of_domain"] == 1
    assert providers.best_global_provider(pdf) == "acme"
