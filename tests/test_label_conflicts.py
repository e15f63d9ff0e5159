"""A provider's labels of one user and date that disagree, counted and said.

Before (session 63) prepare_labels kept one of them by the tie rule (the lower age_gender
class) without a word: a provider sending two labels per user and day looked clean.
"""
from __future__ import annotations

import datetime as dt
import os

import pandas as pd
import pytest

from pythia import input_health, label_rules, providers
from pythia.config import DEFAULT_AGE_EDGES

from test_input_health import _source
from test_label_rejects import _run

DAY, LATER = dt.date(2024, 3, 1), dt.date(2024, 3, 5)


def _label(u, g, a, c="US", d=DAY):
    return {"user_id": u, "gender": g, "age": a, "age_bucket": None, "country": c,
            "observed_date": d}


@pytest.mark.spark
def test_both_engines_count_same_day_labels_that_disagree(spark, source, tmp_path):
    from pythia import providers_local

    source.labels("acme", [
        _label("split", "F", 30), _label("split", "M", 30),      # same day, genders differ
        _label("older", "F", 30, d=DAY), _label("older", "F", 50, d=LATER),  # a newer one
        _label("twice", "M", 40), _label("twice", "M", 41),      # same bucket: no conflict
        _label("ages", "F", 20), _label("ages", "F", 60),        # same day, buckets differ
        _label("gb", "F", 30, "GB"), _label("gb", "M", 70, "GB"),  # GB is lucid's: aside
        _label("two", "M", 30),                                  # US: acme's
    ])
    source.labels("lucid", [_label("two", "F", 30, "GB")])     # GB: lucid's, and GB < US
    choice = {"US": "acme", "GB": "lucid"}
    by_spark = providers.prepare_labels(spark, source.root, choice, DEFAULT_AGE_EDGES,
                                        str(tmp_path / "spark"), "acme")
    by_pandas = providers_local.prepare_labels(source.root, choice, DEFAULT_AGE_EDGES,
                                               str(tmp_path / "pandas"), "acme")
    # split and ages (acme); two: lucid's GB label and acme's US one, both chosen, same day
    assert by_spark["conflicts"] == by_pandas["conflicts"] == {"acme": 2, "lucid": 1}
    assert by_spark["counts"] == by_pandas["counts"]


def test_conflicts_are_a_note_or_a_warning_by_their_share():
    tally = [(label_rules.LABELLED, 0, 0, "", 190), (label_rules.LABELLED, 0, 0, "acme", 8),
             (label_rules.LABELLED, 0, 0, "lucid", 2), (label_rules.SUPERSEDED, 0, 0, "", 10),
             ("wrong_type", None, None, None, 3)]
    found = label_rules.conflicts(tally)
    assert found == {"acme": 8, "lucid": 2}
    (line,) = label_rules.conflict_lines(found, 200)
    assert line == ("warning: prepare_labels: 10 of 200 users (5.0%) have labels of the same "
                    "observed_date that disagree (gender or age bucket; from acme 8, lucid 2): "
                    "each keeps one by the tie rule (country, provider, then the lower "
                    "age_gender class), not by evidence; ask the provider which label holds")
    (note,) = label_rules.conflict_lines({"acme": 2}, 200)
    assert note.startswith("note: prepare_labels: 2 of 200 users (1.0%) have labels")
    assert label_rules.conflict_lines({}, 200) == []
    manifest = {"counts": {"users": 200, "rows_in": 200}, "conflicts": found}
    assert input_health.report_lines(None, manifest) == [
        "input: " + line.removeprefix("warning: prepare_labels: ")]


def test_a_provider_sending_each_label_twice_with_flipped_genders_is_said(tmp_path, capsys):
    root = _source(tmp_path)

    folder = os.path.join(root, "labels", "provider=acme")
    for name in [n for n in os.listdir(folder) if n.endswith(".parquet")]:
        frame = pd.read_parquet(os.path.join(folder, name))
        twin = frame.head(10).assign(gender=frame["gender"].head(10).map({"F": "M", "M": "F"}))
        pd.concat([frame, twin]).to_parquet(os.path.join(folder, name))  # pandas, index kept
    manifest = _run(root, tmp_path)
    n, users = manifest["conflicts"].get("acme", 0), manifest["counts"]["users"]
    assert set(manifest["conflicts"]) == {"acme"} and 0 < n <= 10 * len(os.listdir(folder))
    out = capsys.readouterr().out
    assert (f"prepare_labels: {n:,} of {users:,} users ({n / users:.1%}) have labels of the "
            "same observed_date that disagree (gender or age bucket; from acme") in out
