"""Column names as a warehouse writes them: matched case-blind, in both engines.

A Snowflake unload writes ``USER_ID``, ``TS``, ``COUNTRY``; Spark SQL and Hive match such names
case-blind, and so does the contract read (``contract_read.match_columns``). Each test writes
the same rows under the contract's names and under other cases, with pyarrow and with pandas,
and checks that the Spark reader and the driver reader give what the contract's names give.
"""
from __future__ import annotations

import contextlib
import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pythia import contract, contract_local, contract_read
from pythia.contract import IMPRESSIONS, LABELS
from pythia.etl import impressions_local, sample

from conftest import TEST_DATE

D = TEST_DATE


def _impressions() -> pa.Table:
    rows = [sample.impression(f"i{k}", f"u{k % 3}", sample.at(D, 4, k), "US" if k % 2 else "DE",
                              device_type="mobile" if k % 4 else "Tablet")  # one bad value
            for k in range(8)]
    return pa.Table.from_pylist(rows, schema=contract.IMPRESSION_SCHEMA)


def _write(table: pa.Table, root, name: str, rename=None, writer: str = "pyarrow") -> str:
    folder = root / "impressions" / f"date={D}" / "hour=04"
    folder.mkdir(parents=True, exist_ok=True)
    path = str(folder / name)
    if rename:
        table = table.rename_columns([rename(c) for c in table.column_names])
    if writer == "pandas":
        table.to_pandas().to_parquet(path)
    else:
        pq.write_table(table, path)
    return path


def _spark_rows(spark, files, table) -> list[tuple]:
    raw, extras = contract_read.read_table(spark, files, table, report=False)
    return sorted(tuple(r) for r in raw.collect()), extras


def _mixed(name: str) -> str:
    return "".join(ch.upper() if i % 2 else ch for i, ch in enumerate(name))  # uSeR_Id


@pytest.mark.spark
def test_upper_and_mixed_case_names_read_as_the_contracts_in_both_engines(spark, tmp_path):
    table = _impressions()
    lower = _write(table, tmp_path / "a", "part-0.parquet")
    upper = _write(table, tmp_path / "b", "part-0.parquet", str.upper)
    mixed = _write(table, tmp_path / "c", "part-0.parquet", _mixed, writer="pandas")
    want, _ = _spark_rows(spark, [lower], IMPRESSIONS)
    assert len(want) == 8 and want[0][0] == "i0"  # the typed impression_id
    driver_want, _ = impressions_local.read_impressions([lower], report=False)
    for path in (upper, mixed):
        got, extras = _spark_rows(spark, [path], IMPRESSIONS)
        assert got == want and extras == [], path
        driver, extras = impressions_local.read_impressions([path], report=False)
        assert driver.equals(driver_want) and extras == [], path
    # Spark reads by the file's own names, so a session set case-sensitive reads them too
    spark.conf.set("spark.sql.caseSensitive", "true")
    try:
        assert _spark_rows(spark, [upper], IMPRESSIONS)[0] == want
    finally:
        spark.conf.unset("spark.sql.caseSensitive")
    # files of several spellings in one read: grouped apart, one frame
    both, _ = _spark_rows(spark, [lower, upper], IMPRESSIONS)
    assert both == sorted(want + want)


def test_the_log_names_the_columns_read_case_blind_and_the_extras_stay_extras(tmp_path):
    table = _impressions().append_column("Segment", pa.array(["x"] * 8))
    upper = _write(table, tmp_path, "part-0.parquet",
                   lambda c: c if c == "Segment" else c.upper())
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        _, extras = impressions_local.read_impressions([upper])
    assert extras == ["Segment"]
    lines = log.getvalue().splitlines()
    assert "note: impressions: ignoring column(s) not in the contract: Segment" in lines
    cased = next(line for line in lines if "but for case" in line)
    assert cased.startswith("note: impressions: column(s) named as the contract's but for "
                            "case, read case-blind as Spark SQL does: AD_FORMAT, AD_SIZE, ")
    assert cased.endswith(", TS, USER_ID, ZIP (1 file(s))")
    assert "Segment" not in cased and "SEGMENT" not in cased
    lower = _write(_impressions(), tmp_path / "more", "part-1.parquet")
    mixed = _write(_impressions(), tmp_path / "mixed", "part-2.parquet",
                   lambda c: "Ts" if c == "ts" else c.upper())
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        impressions_local.read_impressions([upper, lower, mixed])
    cased = next(line for line in log.getvalue().splitlines() if "but for case" in line)
    assert cased.endswith(", USER_ID, ZIP (2 file(s)); TS, Ts (1 file(s))"), cased


def test_labels_in_upper_case_give_the_same_labels_on_the_driver(tmp_path):
    rows = [{"user_id": "u1", "gender": "F", "age": 30, "age_bucket": None, "country": "US",
             "observed_date": D}]
    frames = {}
    for name, rename in (("lower", None), ("upper", str.upper)):
        folder = tmp_path / name / "labels" / "provider=acme"
        folder.mkdir(parents=True)
        t = pa.Table.from_pylist(rows, schema=contract.LABEL_SCHEMA)
        if rename:
            t = t.rename_columns([rename(c) for c in t.column_names])
        pq.write_table(t, str(folder / "part-0.parquet"))
        frames[name], extras = contract_local.read_table(
            contract.list_table_files(str(tmp_path / name), "labels"), LABELS, report=False)
        assert extras == []
    pd.testing.assert_frame_equal(frames["upper"], frames["lower"])
    assert frames["upper"].loc[0, "user_id"] == "u1" and frames["upper"].loc[0, "age"] == 30


@pytest.mark.parametrize("second", ["USER_ID", "User_Id"])
def test_two_columns_naming_one_contract_column_stop_in_one_line_naming_the_file(tmp_path,
                                                                                second):
    table = _impressions()
    table = table.append_column(second, table["user_id"])
    path = _write(table, tmp_path, "part-0.parquet")
    message = (rf"^{path}: columns 'user_id', '{second}' all name the contract column "
               r"user_id \(names match case-blind, as in Spark SQL and Hive\); fix: drop or "
               r"rename all but one in the producer, or move the file out of the source$")
    with pytest.raises(ValueError, match=message):
        contract_read.inspect_files([path], IMPRESSIONS)
    with pytest.raises(ValueError, match=message):
        impressions_local.read_impressions([path])


def test_match_columns_prefers_nothing_and_ignores_other_tables_names():
    got = contract_read.match_columns(["ID", "User_ID", "ts", "Provider", "COVERAGE"],
                                      IMPRESSIONS, "f")
    assert got == {"User_ID": "user_id", "ts": "ts"}
