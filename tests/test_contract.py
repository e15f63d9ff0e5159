"""Contract tests: partitions/gaps, unreadable files, and each quarantine reason on bad data."""
import datetime as dt
import os

import pyarrow as pa
import pytest

from pythia import contract, contract_read, docs
from pythia.etl import sample

from conftest import TEST_DATE, WINDOW

D = TEST_DATE


def test_doc_is_rendered_from_the_contract():
    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "data-contract.md")).read()
    assert doc.strip() == docs.render_data_contract().strip()
    for reason in contract.REASONS:
        assert f"`{reason}`" in doc


def test_missing_partitions_error_lists_them_and_allow_gaps_records_them(source):
    source.users_every_hour({"u1": "US"}, WINDOW.dates, [0, 1])
    os.remove(os.path.join(source.root, "impressions", "date=2024-03-08", "hour=01",
                           "part-0.parquet"))
    with pytest.raises(ValueError, match=r"date=2024-03-08/hour=01") as err:
        contract_read.check_partitions(source.root, WINDOW.dates, [0, 1, 2], allow_gaps=False)
    assert "date=2024-03-06/hour=02" in str(err.value)  # every gap is listed, not just one
    gaps = contract_read.check_partitions(source.root, WINDOW.dates, [0, 1, 2], allow_gaps=True)
    assert gaps == ["date=2024-03-06/hour=02", "date=2024-03-07/hour=02",
                    "date=2024-03-08/hour=01", "date=2024-03-08/hour=02",
                    "date=2024-03-09/hour=02", "date=2024-03-10/hour=02"]
    assert contract_read.check_partitions(source.root, WINDOW.dates, [0], allow_gaps=False) == []


def test_whole_missing_days_are_said_as_days_with_the_dates_the_source_has(source):
    """A first run on a source shorter than the window: two days, not 48 partitions."""
    source.users_every_hour({"u1": "US"}, WINDOW.dates[2:], range(24))
    with pytest.raises(ValueError) as err:
        contract_read.check_partitions(source.root, WINDOW.dates, range(24), allow_gaps=False)
    d = WINDOW.dates
    assert str(err.value).endswith(
        f"impressions: date={d[0]} (every hour), date={d[1]} (every hour); 2 whole day(s) "
        f"missing: the window {d[0]}..{d[-1]} needs every day (3 train, 1 validation, 1 test), "
        f"and the source has 3 date(s), {d[2]}..{d[-1]} (pass allow_gaps to run anyway)")
    assert contract_read.describe_gaps(["date=x/hour=01", "date=x/hour=02", "date=y/hour=00"],
                                       2) == ("date=x (every hour), date=y/hour=00", ["x"])


def test_list_dates_and_missing_impressions_folder(source):
    source.users_every_hour({"u1": "US"}, [D, D - dt.timedelta(days=2)], [0])
    assert contract_read.list_dates(source.root) == [D - dt.timedelta(days=2), D]
    with pytest.raises(ValueError, match="no impressions/ folder"):
        contract_read.list_dates(source.root + "-nothing")


def test_unreadable_file_error_names_it(source):
    source.users_every_hour({"u1": "US"}, [D], [0])
    bad = os.path.join(source.root, "impressions", "date=2024-03-10", "hour=00", "broken.parquet")
    with open(bad, "wb") as f:
        f.write(b"this is not parquet")
    files = contract_read.list_partition_files(source.root, [D], [0])[(D.isoformat(), 0)]
    with pytest.raises(ValueError, match="broken.parquet"):
        contract_read.inspect_files(files, contract.IMPRESSIONS)


def _reasons(quarantine) -> dict[str, str]:
    return {r.impression_id: r.reason for r in quarantine.collect()}


@pytest.mark.spark
def test_each_impression_quarantine_reason(spark, source):
    imp = sample.impression
    rows = [
        imp("ok", "u1", sample.at(D, 3, 5)),
        imp("no-user", None, sample.at(D, 3, 5)),
        imp("blank-site", "u1", sample.at(D, 3, 5), site_or_app="  "),
        imp("fridge", "u1", sample.at(D, 3, 5), device_type="fridge"),
        imp("lower-country", "u1", sample.at(D, 3, 5), country="us"),
        imp("two-hours-off", "u1", sample.at(D, 5, 0)),
        imp("early-ok", "u1", sample.at(D, 2, 57)),  # 3 min before the hour: tolerated
        imp("early-bad", "u1", sample.at(D, 2, 50)),  # 10 min before: not tolerated
        imp("dup", "u1", sample.at(D, 3, 30)),
        imp("dup", "u1", sample.at(D, 3, 20)),  # the earlier copy is kept
    ]
    source.hour(D, 3, rows)
    files = contract_read.list_partition_files(source.root, WINDOW.dates, [3])
    raw, extras = contract_read.read_table(spark, [f for fs in files.values() for f in fs],
                                           contract.IMPRESSIONS)
    valid, quarantine = contract.validate_impressions(raw, WINDOW.dates, [3])
    assert _reasons(quarantine) == {
        "no-user": "null_required", "blank-site": "null_required", "fridge": "out_of_domain",
        "lower-country": "out_of_domain", "two-hours-off": "bad_timestamp",
        "early-bad": "bad_timestamp", "dup": "duplicate_impression_id"}
    kept = {(r.impression_id, r.ts.minute) for r in valid.collect()}
    assert kept == {("ok", 5), ("early-ok", 57), ("dup", 20)}
    assert set(quarantine.columns) >= {"reason", "reason_column", "date", "hour", "ts"}
    assert dict(quarantine.dtypes)["ts"] == "string"  # original values, as strings


@pytest.mark.spark
def test_window_edges_tolerance_does_not_leak_outside_the_window(spark):
    first = WINDOW.dates[0]
    rows = [("a", "u1", dt.datetime(2024, 3, 5, 23, 58, tzinfo=dt.timezone.utc), first, 0),
            ("b", "u1", dt.datetime(2024, 3, 6, 0, 2, tzinfo=dt.timezone.utc), first, 0),
            ("c", "u1", dt.datetime(2024, 3, 6, 0, 2, tzinfo=dt.timezone.utc), first, 1)]
    sdf = spark.createDataFrame(
        [dict(sample.impression(i, u, ts), date=d.isoformat(), hour=h) for i, u, ts, d, h in rows])
    valid, quarantine = contract.validate_impressions(sdf, WINDOW.dates, [0])
    # a: inside the tolerance of hour 00 but before the window; c: hour 01 was not requested
    assert _reasons(quarantine) == {"a": "bad_timestamp", "c": "bad_timestamp"}
    assert [r.impression_id for r in valid.collect()] == ["b"]


@pytest.mark.spark
def test_malformed_timestamp_and_extra_column_and_missing_optional_column(spark, source,
                                                                          capsys):
    schema = pa.schema([("impression_id", pa.string()), ("user_id", pa.string()),
                        ("ts", pa.string()), ("country", pa.string()),
                        ("inventory_type", pa.string()), ("site_or_app", pa.string()),
                        ("device_type", pa.string()), ("surprise", pa.int64())])
    base = {"country": "US", "inventory_type": "app", "site_or_app": "b", "device_type": "ctv",
            "surprise": 7}
    source.hour(D, 0, [dict(base, impression_id="iso", user_id="u", ts="2024-03-10T00:15:00Z"),
                       dict(base, impression_id="junk", user_id="u", ts="yesterday-ish")],
                schema=schema)
    files = contract_read.list_partition_files(source.root, [D], [0])[(D.isoformat(), 0)]
    raw, extras = contract_read.read_table(spark, files, contract.IMPRESSIONS)
    assert extras == ["surprise"]  # printed to the step's log: Metaflow silences warnings
    assert "ignoring column(s) not in the contract: surprise" in capsys.readouterr().out
    valid, quarantine = contract.validate_impressions(raw, [D], [0])
    assert _reasons(quarantine) == {"junk": "bad_timestamp"}
    (row,) = valid.collect()
    assert row.impression_id == "iso" and row.browser is None and row.ts.minute == 15


@pytest.mark.spark
def test_label_rules_and_wrong_type(spark, source):
    schema = pa.schema([("user_id", pa.string()), ("gender", pa.string()), ("age", pa.string()),
                        ("country", pa.string()), ("observed_date", pa.string())])
    source.labels("acme", [
        {"user_id": "ok", "gender": "F", "age": "33", "country": "US",
         "observed_date": "2024-03-01"},
        {"user_id": "age-text", "gender": "F", "age": "thirty", "country": "US",
         "observed_date": "2024-03-01"},
        {"user_id": "bad-date", "gender": "M", "age": "40", "country": "US",
         "observed_date": "March"},
        {"user_id": "nothing", "gender": None, "age": None, "country": "US",
         "observed_date": "2024-03-01"},
        {"user_id": "gender-x", "gender": "X", "age": "40", "country": "US",
         "observed_date": "2024-03-01"},
        {"user_id": "no-country", "gender": "M", "age": "40", "country": None,
         "observed_date": "2024-03-01"},
    ], schema=schema)
    raw, _ = contract_read.read_table(spark, contract.list_table_files(source.root, "labels"),
                                      contract.LABELS)
    valid, quarantine = contract.validate_labels(raw)
    got = {r.user_id: (r.reason, r.reason_column) for r in quarantine.collect()}
    assert got == {"age-text": ("wrong_type", "age"),
                   "bad-date": ("wrong_type", "observed_date"),
                   "nothing": ("null_required", "gender|age|yob|age_bucket"),
                   "gender-x": ("out_of_domain", "gender"),
                   "no-country": ("null_required", "country")}
    (ok,) = valid.collect()
    assert (ok.user_id, ok.age, ok.provider, ok.observed_date) == (
        "ok", 33, "acme", dt.date(2024, 3, 1))


@pytest.mark.spark
def test_provider_metric_ranges(spark):
    rows = [("acme", "US", "2024-03-01", 0.5, 0.9, 0.8, 10),
            ("acme", "GB", "2024-03-01", 1.5, 0.9, 0.8, 10),
            ("acme", "DE", "2024-03-01", 0.5, float("nan"), 0.8, 10),
            ("acme", "FR", "not a date", 0.5, 0.9, 0.8, 10)]
    sdf = spark.createDataFrame(rows, "provider string, country string, date string, "
                                      "coverage double, accuracy double, consistency double, "
                                      "n_labels long")
    valid, quarantine = contract.validate_provider_metrics(sdf)
    got = {r.country: (r.reason, r.reason_column) for r in quarantine.collect()}
    assert got == {"GB": ("out_of_domain", "coverage"), "DE": ("out_of_domain", "accuracy"),
                   "FR": ("wrong_type", "date")}
    assert [r.country for r in valid.collect()] == ["US"]
