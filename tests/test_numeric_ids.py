"""User ids as numbers, the way bid logs and warehouses store them.

The contract's ``user_id`` is text; a producer may store it as int64 (a bid log), as
decimal(38,0) (a warehouse's NUMBER), or as float64 (pandas, once an integer column has a
missing value). Integers of any stored type read as their digits and meet; floats read as
Spark writes a double ('11.0', '1.2345678E7') and meet nothing: ``start`` warns, and
``join_hours`` says which change would make the two sides meet.
"""
from __future__ import annotations

import pyarrow as pa
import pytest

from pythia import column_check, input_health, label_health
from pythia.config import Window
from pythia.paths import RunPaths
from pythia.storage import read_frame

from test_input_health import DAY, _etl, _ids_table, _params, _rewrite_with_pandas, _source
from test_producers import _shared_session as _on

BIG = 10_000_000  # ids from here on are '1.0000001E7' as Spark's text of a double


def _numeric(frame, dtype: str) -> None:
    """'u00012' -> BIG + 12, stored as ``dtype``."""
    frame["user_id"] = (frame["user_id"].str[1:].astype("int64") + BIG).astype(dtype)


@pytest.mark.spark
def test_integer_ids_meet_whatever_integer_type_each_side_stores(spark, tmp_path):
    root = _source(tmp_path)
    _rewrite_with_pandas(root, "impressions", lambda f: _numeric(f, "int64"))

    def warehouse(frame):  # NUMBER(38,0), as a Snowflake unload writes it
        import decimal
        _numeric(frame, "int64")
        frame["user_id"] = frame["user_id"].map(decimal.Decimal)
    _rewrite_with_pandas(root, "labels", warehouse)
    params = _params(root, tmp_path)
    paths = RunPaths(params.data_root, "Health", "1")
    assert column_check.check_required_columns(
        column_check.sampled_files(root, Window(DAY).dates)) == []
    with _on(spark):
        etl, manifests = _etl(root, params, paths)
        split, _, _, _ = etl.join_hours(manifests, params, paths)
    rows = read_frame(split["paths"]["train"])
    assert len(rows) > 0
    assert rows["user_id"].str.fullmatch(r"100000\d\d").all()  # the digits, no '.0'


@pytest.mark.spark
def test_float_ids_are_said_at_start_and_diagnosed_in_join_hours(spark, tmp_path):
    root = _source(tmp_path)
    _rewrite_with_pandas(root, "impressions", lambda f: _numeric(f, "int64"))

    def pandas_with_a_gap(frame):  # one missing id makes pandas' integer column float64
        _numeric(frame, "int64")
        frame["user_id"] = frame["user_id"].astype("float64")
        frame.loc[frame.index[0], "user_id"] = float("nan")
    _rewrite_with_pandas(root, "labels", pandas_with_a_gap)
    warned = column_check.check_required_columns(
        column_check.sampled_files(root, Window(DAY).dates))
    assert len(warned) == 1 and warned[0].startswith(
        "2 of 2 sampled labels files store user_id as double, e.g. ")
    assert warned[0].endswith(": " + label_health.FLOAT_IDS)
    params = _params(root, tmp_path, max_quarantined=1.0)  # the missing ids: null_required
    paths = RunPaths(params.data_root, "Health", "1")
    with _on(spark):
        etl, manifests = _etl(root, params, paths)
        with pytest.raises(input_health.InputHealthError) as err:
            etl.join_hours(manifests, params, paths)
    text = str(err.value)
    assert text.startswith("join_hours: none of the window's ")
    assert "labels' e.g. '1.00000" in text and "E7'" in text  # as Spark writes a double
    assert ("they meet once both are read as whole numbers ('11.0' as '11'): ids stored as "
            "floats read as '11.0'") in text


@pytest.mark.parametrize("labels, bids, meets", [
    (["11.0", "1.2345678E7", "-3.0"], ["11", "12345678", "-3"],
     "read as whole numbers ('11.0' as '11')"),
    (["1.5", "2.5"], ["1", "2"], None),  # not whole: no id of the other side
    (["0000000011", "0000000012"], ["11", "12"], "without leading zeros"),
    (["11", "12"], ["00011", "00012"], "without leading zeros"),
])
def test_key_diagnosis_finds_float_texts_and_zero_padding(tmp_path, labels, bids, meets):
    uri = str(tmp_path / "labels")
    _ids_table(uri + "/part-0.parquet", labels)
    text = label_health.key_diagnosis(bids, uri)
    if meets is None:
        assert "meet" not in text
    else:
        assert f"they meet once both are {meets}" in text


def test_whole_float_texts_leave_other_ids_alone():
    ids = pa.array(["11.0", "1.2345678E7", "u1.0", "1.5", "9.99E20", "0012", None])
    assert label_health._whole_float_texts(ids).to_pylist() == [
        "11", "12345678", "u1.0", "1.5", "9.99E20", "0012", None]
