"""Labels given as a year of birth (OpenRTB ``user.yob``), and years of birth in ``age``.

Before (session 64) the contract had no year of birth: a provider's ``yob`` column was an
extra column, ignored, and its rows without an age were incomplete; years written to ``age``
(1985) were impossible ages, said as such without the likely fix.
"""
from __future__ import annotations

import datetime as dt
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pythia import label_rules
from pythia.config import DEFAULT_AGE_EDGES

from test_input_health import _rewrite_with_pandas, _source
from test_label_rejects import _run

AS_OF = dt.date(2026, 11, 20)


def _row(u, yob, age=None, bucket=None, observed=dt.date(2020, 5, 1), gender="F"):
    return {"user_id": u, "gender": gender, "age": age, "yob": yob, "age_bucket": bucket,
            "country": "US", "observed_date": observed}


def test_a_year_of_birth_is_the_age_on_the_test_day():
    frame = pd.DataFrame([
        _row("a", 1990),                       # 36 on 20 Nov 2026 (29 when observed): 35-44
        _row("b", 2008, observed=AS_OF),       # 18 on the test day (after 2 July)
        _row("c", 2013, observed=AS_OF),       # 13: a valid age, below the first edge
        _row("d", 1850),                       # 170 when observed: impossible
        _row("e", 1990, age=20),               # an age wins: 20 observed 6.5 years ago: 27
        _row("f", 1990, bucket="18-24"),       # a year of birth wins over a bucket
        _row("g", None, bucket="45-54"),
        _row("h", 2001, observed=dt.date(2026, 3, 1))])  # 25 on the test day
    frame["age"] = frame["age"].astype(float)  # as pandas reads an int column with nulls
    out = label_rules.bucket_labels(frame, DEFAULT_AGE_EDGES, AS_OF).set_index("user_id")
    assert out["age_bucket"].to_dict() == {"a": "35-44", "b": "18-24", "c": None, "d": None,
                                           "e": "25-34", "f": "35-44", "g": "45-54",
                                           "h": "25-34"}
    assert out["reject"].dropna().to_dict() == {"c": label_rules.AGE_BELOW_FIRST_EDGE,
                                                "d": label_rules.IMPOSSIBLE_AGE}
    assert out[label_rules.AGE_SHIFT].to_dict()["a"] == 0  # not an age moved: computed there
    assert out["age"].isna().tolist() == frame["age"].isna().tolist()  # kept as given
    assert out[label_rules.AGE_SHIFT].to_dict()["e"] == 7
    observed = label_rules.bucket_labels(frame, DEFAULT_AGE_EDGES).set_index("user_id")
    assert observed["age_bucket"]["a"] == "25-34"  # without a test day: 29 when observed
    # before 2 July the likelier age is one less: born 2000, on 5 Jan 2026 mostly 25, on 30
    # June 2024 mostly 23, on 3 July 2025 mostly 25
    born = pd.DataFrame([_row(u, 2000, observed=d) for u, d in [
        ("jan", dt.date(2026, 1, 5)), ("jun", dt.date(2024, 6, 30)),
        ("jul", dt.date(2025, 7, 3))]])
    assert label_rules.age_of_birth_year(born["yob"].to_numpy(dtype=float), pd.to_datetime(
        born["observed_date"])).tolist() == [25, 23, 25]


@pytest.mark.spark
def test_both_engines_read_years_of_birth_alike(spark, source, tmp_path):
    from pythia import providers, providers_local
    from pythia.storage import read_frame

    folder = os.path.join(source.root, "labels", "provider=acme")
    os.makedirs(folder)
    pq.write_table(pa.table({  # pyarrow: yob as int16, no age column at all
        "user_id": ["a", "b", "c", "d"], "gender": ["F", "M", "F", "M"],
        "yob": pa.array([1990, 2013, 1850, None], pa.int16()),
        "country": ["US"] * 4, "observed_date": [dt.date(2026, 11, 1)] * 4}),
        os.path.join(folder, "part-0.parquet"))
    pd.DataFrame({"user_id": ["e", "f"], "gender": ["F", "M"], "age": [None, 40.0],  # pandas
                  "yob": [1970.0, None], "country": ["US", "US"],
                  "observed_date": pd.to_datetime(["2026-11-01"] * 2)}).to_parquet(
        os.path.join(folder, "part-1.parquet"))
    runs = [providers.prepare_labels(spark, source.root, {"US": "acme"}, DEFAULT_AGE_EDGES,
                                     str(tmp_path / "spark"), "acme", as_of=AS_OF),
            providers_local.prepare_labels(source.root, {"US": "acme"}, DEFAULT_AGE_EDGES,
                                           str(tmp_path / "pandas"), "acme", as_of=AS_OF)]
    for manifest in runs:
        labels = read_frame(manifest["labels_path"]).set_index("user_id")["age_bucket"]
        assert labels.to_dict() == {"a": "35-44", "e": "55-64", "f": "35-44"}
        assert manifest["counts"]["rejected"] == {"impossible_age": 1,
                                                  "age_below_first_edge": 1,
                                                  "incomplete_label": 1}
        assert sorted(read_frame(manifest["rejected_path"])["yob"].fillna(0)) == \
            [0, 1850, 2013]
    assert runs[0]["counts"] == runs[1]["counts"]


def test_years_of_birth_in_the_age_column_are_said(tmp_path, capsys):
    root = _source(tmp_path)

    def years(frame):
        frame.loc[frame.index[:12], "age"] = 1985.0
    _rewrite_with_pandas(root, "labels/provider=acme", years)
    _run(root, tmp_path)
    (line,) = [ln for ln in capsys.readouterr().out.splitlines()
               if ln.startswith("warning: prepare_labels: ")]
    assert "impossible_age 12 (ages 1900-2100 12: years of birth? write them to yob; from " \
           "acme 12)" in line
