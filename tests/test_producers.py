"""Inputs as real producers write them: pandas, pyarrow, Spark (with its side files), Hive.

One source holds every producer flavour in its own hour of the test day, plus partition folders
whose names do not parse and labels with fractional ages; ``run`` pushes it through the steps'
own entry points (``providers.run`` and ``etl.run_hours``) once, and each test checks one
flavour's counts. Smaller tests check the one-line errors (not Parquet, damaged file, unreadable
column type) and the date listing of ``start``.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import io
import os
import warnings

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pythia import contract, contract_read, errors, etl, providers, source_layout, storage
from pythia import source as run_source
from pythia.config import RunParams
from pythia.etl import sample
from pythia.paths import RunPaths, join
from pythia.storage import read_frame

from conftest import TEST_DATE, WINDOW
from s3_fixtures import moto_s3, s3_env  # noqa: F401  (S3 fixtures, imported where needed)

D = TEST_DATE
USERS = {"u1": "US", "u2": "US"}
# hour of the test day -> producer flavour written there (each hour: 2 valid rows per user,
# one of them at a nanosecond fraction, and one row two hours off its partition)
FLAVOURS = {0: "pandas ns tz-aware", 1: "pandas ns naive", 2: "pyarrow ms", 3: "INT96",
            4: "dictionary/large_string/categorical/binary", 5: "Hive 000000_0 + hour=5",
            6: "Spark partitionBy", 7: "Spark partitionBy"}
ROWS_PER_HOUR, BAD_PER_HOUR = 4, 1


def _rows(hour: int) -> list[dict]:
    at = sample.at(D, hour, 10)
    rows = [sample.impression(f"{hour:02d}-{u}-{k}", u, at + dt.timedelta(minutes=k,
                                                                       microseconds=7), c)
            for u, c in USERS.items() for k in (0, 1)]
    rows.append(sample.impression(f"{hour:02d}-late", "u1", sample.at(D, (hour + 2) % 24, 0)))
    return rows


def _frame(hour: int) -> pd.DataFrame:
    df = pd.DataFrame(_rows(hour))
    # a nanosecond fraction pandas keeps and Spark's microseconds cannot: it is truncated
    df.loc[0, "ts"] = df.loc[0, "ts"] + pd.Timedelta(nanoseconds=123)
    return df


def _partition(root: str, hour: int | str, name: str = "part-0.parquet",
               day: str = D.isoformat()) -> str:
    folder = join(root, "impressions", f"date={day}", f"hour={hour}")
    os.makedirs(folder, exist_ok=True)
    return join(folder, name)


def _arrow(df: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(df, preserve_index=False)


def _write_flavours(spark, root: str) -> None:
    df = _frame(0)
    df.to_parquet(_partition(root, "00"))  # pandas' default: ns, tz-aware
    with open(_partition(root, "00", ".part-0.parquet.crc"), "wb") as f:
        f.write(b"crc\x00stale")  # Hadoop's checksum of an older file by that name
    df = _frame(1)
    df["ts"] = df["ts"].dt.tz_convert("UTC").dt.tz_localize(None)
    df.to_parquet(_partition(root, "01"))  # ns without a time zone
    t = _arrow(_frame(2))
    pq.write_table(t.set_column(t.schema.get_field_index("ts"), "ts",
                                t["ts"].cast(pa.timestamp("ms", tz="UTC"), safe=False)),
                   _partition(root, "02"))
    pq.write_table(_arrow(_frame(3)), _partition(root, "03"),
                   use_deprecated_int96_timestamps=True)
    _write_encodings(root)
    _write_hive(root)
    _write_spark(spark, root)


def _write_encodings(root: str) -> None:
    """hour 04: pyarrow dictionary strings, large_string, a pandas categorical, binary strings
    (old Impala), an all-None column, pandas' index and a column not in the contract."""
    df = _frame(4)
    df["device_make"] = pd.Categorical(["Ünicode™", "acme", "acme", "acme", "acme"])
    df["browser"] = None  # all-None object column: Arrow type null
    df["segments"] = [[1, 2]] * len(df)  # extra, nested: ignored
    df = df.iloc[::-1]  # a non-range index: pandas writes it as __index_level_0__
    t = pa.Table.from_pandas(df)
    t = t.set_column(t.schema.get_field_index("country"), "country",
                     t["country"].dictionary_encode())
    t = t.set_column(t.schema.get_field_index("user_id"), "user_id",
                     t["user_id"].cast(pa.large_string()))
    t = t.set_column(t.schema.get_field_index("site_or_app"), "site_or_app",
                     t["site_or_app"].cast(pa.binary()))
    pq.write_table(t, _partition(root, "04"))


def _write_hive(root: str) -> None:
    """hour 5 as Hive writes it (unpadded hour, files without extension), split over the
    ``hour=5`` and ``hour=05`` folders."""
    t = _arrow(_frame(5))
    pq.write_table(t.slice(0, 2), _partition(root, 5, "000000_0"))
    pq.write_table(t.slice(2), _partition(root, "05", "000001_0"))


def _write_spark(spark, root: str) -> None:
    """hours 6 and 7 by Spark's own partitioned writer, plus the side files of other
    committers: Databricks ``_started_*``/``_committed_*``, a crashed job's ``_temporary/``."""
    rows = [dict(r, date=D.isoformat(), hour=h) for h in (6, 7) for r in _rows(h)]
    sdf = spark.createDataFrame(pd.DataFrame(rows).astype({"hour": "int32"}))
    sdf.write.mode("append").partitionBy("date", "hour").parquet(join(root, "impressions"))
    folder = os.path.dirname(_partition(root, 6, "x"))
    for name, data in (("_started_123", b"{}"), ("_committed_123", b'{"added": []}'),
                       (".hidden-temp", b"junk"), ("_temporary/0/task/part-9.parquet", b"junk")):
        os.makedirs(os.path.dirname(join(folder, name)), exist_ok=True)
        with open(join(folder, name), "wb") as f:
            f.write(data)


def _write_bad_folders(root: str) -> None:
    """Partition folders whose names do not parse; each holds one valid 1-row file."""
    one = pa.Table.from_pylist([sample.impression("stray", "u1", sample.at(D, 1))],
                               schema=contract.IMPRESSION_SCHEMA)
    for hour, day in (("24", D.isoformat()), ("ab", D.isoformat()),
                      ("__HIVE_DEFAULT_PARTITION__", D.isoformat()), ("01", "2024-02-30"),
                      ("03", "yesterday")):
        pq.write_table(one, _partition(root, hour, day=day))
    pq.write_table(one, join(root, "impressions", f"date={D.isoformat()}", "loose.parquet"))


def _write_labels(root: str) -> None:
    """acme's labels as pandas writes them (observed_date as datetime64[ns], age a float):
    u1 35.0 (an integral float: accepted), u2 40; fractional ages as double and as text."""
    base = {"gender": "F", "country": "US", "observed_date": pd.Timestamp("2024-03-01")}
    folder = join(root, "labels", "provider=acme")
    os.makedirs(folder)
    pd.DataFrame([dict(base, user_id="u1", age=35.0), dict(base, user_id="u2", age=40.0),
                  dict(base, user_id="frac-double", age=34.7)]).to_parquet(
        join(folder, "part-0.parquet"))
    pd.DataFrame([dict(base, user_id="frac-text", age="34.7"),
                  dict(base, user_id="whole-text", age=" 41.0 ")]).to_parquet(
        join(folder, "part-1.parquet"))
    dec = pa.table({"user_id": ["frac-decimal", "whole-decimal"], "gender": ["M", "M"],
                    "age": pa.array([decimal.Decimal("50.5"), decimal.Decimal("50.0")],
                                    pa.decimal128(4, 1)),
                    "country": ["US", "US"], "observed_date": [D, D]})
    pq.write_table(dec, join(folder, "part-2.parquet"))


@contextlib.contextmanager
def _shared_session(spark):
    """Run the steps' entry points on the test session (they would stop their own)."""
    @contextlib.contextmanager
    def _session(*_args, **_kwargs):
        yield spark
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("pythia.etl.session.spark_session", _session)
        yield


def _params(root: str, data_root: str) -> RunParams:
    # rows of every odd kind, a large share of this small source: past the default stop
    return RunParams.build({"source": root, "data_root": data_root, "allow_gaps": True,
                            "provider_overrides": "", "max_quarantined": 1.0},
                           model_names=("gbdt",))


@pytest.fixture(scope="module")
def run(spark, tmp_path_factory):
    """The producer-flavoured source through prepare_labels and one etl_hour task."""
    base = tmp_path_factory.mktemp("producers")
    root = str(base / "source")
    _write_flavours(spark, root)
    _write_bad_folders(root)
    _write_labels(root)
    params, paths = _params(root, str(base / "data")), RunPaths(str(base / "data"), "T", "1")
    log = io.StringIO()
    with _shared_session(spark), contextlib.redirect_stdout(log), warnings.catch_warnings():
        warnings.simplefilter("error")  # everything the user must see goes to the log
        labels = providers.run(root, {"by_country": {"US": "acme"}, "default": "acme"},
                               params, paths)
        manifest = etl.run_hours(root, sorted(FLAVOURS) + [8], WINDOW.as_dict(), labels,
                                 params, paths)
        partitions = etl.quarantined_partitions([manifest])
    return {"root": root, "labels": labels, "manifest": manifest, "log": log.getvalue(),
            "partitions": partitions, "paths": paths}


def _hour(manifest: dict, hour: int) -> dict:
    return next(p for p in manifest["per_hour"] if (p["date"], p["hour"]) == (D.isoformat(),
                                                                             hour))


@pytest.mark.spark
@pytest.mark.parametrize("hour", sorted(FLAVOURS))
def test_each_producer_flavour_is_read_in_full(run, hour):
    p = _hour(run["manifest"], hour)
    assert (p["rows_in"], p["written"], p["unlabelled"]) == (
        ROWS_PER_HOUR + BAD_PER_HOUR, ROWS_PER_HOUR, 0), FLAVOURS[hour]
    # the row two hours off is caught, so every flavour's instants were read as UTC
    assert p["quarantined"] == dict.fromkeys(contract.REASONS, 0) | {"bad_timestamp": 1}


@pytest.mark.spark
def test_timestamps_and_values_survive_every_flavour(run):
    rows = read_frame(run["manifest"]["rows_path"])
    assert len(rows) == ROWS_PER_HOUR * len(FLAVOURS)
    for hour in FLAVOURS:
        ts = rows[rows["hour"] == hour]["ts"]  # Spark writes INT96: naive, in UTC
        got = sorted(ts.dt.tz_convert("UTC") if ts.dt.tz else ts.dt.tz_localize("UTC"))
        want = sorted(pd.Timestamp(r["ts"]) for r in _rows(hour)[:ROWS_PER_HOUR])
        if hour == 2:  # stored in milliseconds
            want = [w.floor("ms") for w in want]
        assert got == want, FLAVOURS[hour]  # the pandas ns fraction (+123 ns) is truncated
    four = rows[rows["hour"] == 4]
    assert sorted(four["device_make"]) == ["acme", "acme", "acme", "Ünicode™"]
    assert set(four["site_or_app"]) == {"news.example"} and four["browser"].isna().all()


@pytest.mark.spark
def test_log_names_extras_and_naive_timestamps_but_not_pandas_index(run):
    log = run["log"]
    assert "note: impressions: ignoring column(s) not in the contract: segments" in log
    # pandas' naive ns, pyarrow's INT96 and Spark's two (Spark writes INT96 by default)
    assert "note: impressions: ts has no time zone in 4 file(s)" in log
    assert "note: labels: observed_date has no time zone in 2 file(s)" in log
    assert "__index_level_0__" not in log
    assert run["manifest"]["extra_columns"] == ["segments"]


@pytest.mark.spark
def test_a_re_read_can_stay_quiet(spark, run, capsys):
    files = contract_read.list_partition_files(run["root"], [D], [4])[(D.isoformat(), 4)]
    _, extras = contract_read.read_table(spark, files, contract.IMPRESSIONS, report=False)
    assert extras == ["segments"] and capsys.readouterr().out == ""


@pytest.mark.spark
def test_bad_partition_folders_are_counted_quarantine_entries(run):
    got = {(os.path.relpath(e["folder"], join(run["root"], "impressions")), e["problem"],
            e["files"], e["rows"]) for e in run["partitions"]["partitions"]}
    assert got == {
        ("date=2024-02-30", "date '2024-02-30' does not exist (day is out of range for month)",
         1, 1),
        ("date=yesterday", "date 'yesterday' is not YYYY-MM-DD", 1, 1),
        ("date=2024-03-10", "files outside an hour=HH folder", 1, 1),
        ("date=2024-03-10/hour=24", "hour 24 is outside 00..23", 1, 1),
        ("date=2024-03-10/hour=ab", "hour 'ab' is not a number 00..23", 1, 1),
        ("date=2024-03-10/hour=__HIVE_DEFAULT_PARTITION__",
         "null hour (Hive's default partition)", 1, 1)}
    assert run["partitions"]["partition_rows"] == 6
    # none of their rows entered the run (hour 8 has no folder: a recorded gap)
    assert run["manifest"]["total"]["rows_in"] == (ROWS_PER_HOUR + BAD_PER_HOUR) * len(FLAVOURS)
    assert "date=2024-03-10/hour=08" in run["manifest"]["gaps"]


@pytest.mark.spark
def test_fractional_ages_are_wrong_type_never_truncated(run):
    counts = run["labels"]["counts"]
    assert counts["quarantined"]["wrong_type"] == 3  # 34.7 double, "34.7" text, 50.5 decimal
    assert counts["users"] == 4  # u1 (35.0), u2, whole-text (" 41.0 "), whole-decimal (50.0)
    q = read_frame(run["labels"]["quarantine_path"])
    assert dict(zip(q["user_id"], q["age"])) == {"frac-double": "34.7", "frac-text": "34.7",
                                                 "frac-decimal": "50.5"}
    assert set(q["reason_column"]) == {"age"}
    labels = read_frame(run["labels"]["labels_path"]).set_index("user_id")
    assert labels.loc["u1", "age_bucket"] == "35-44" and labels.loc["u2", "age_bucket"] == "35-44"
    assert str(labels.loc["u1", "observed_date"])[:10] == "2024-03-01"  # from datetime64[ns]


@pytest.mark.spark
def test_every_int_column_rejects_fractions(spark):
    sdf = spark.createDataFrame(
        [("acme", "US", "2024-03-01", 0.5, 0.5, 0.5, 10.0), ("acme", "GB", "2024-03-01", 0.5,
                                                             0.5, 0.5, 10.5)],
        "provider string, country string, date string, coverage double, accuracy double, "
        "consistency double, n_labels double")
    valid, quarantine = contract.validate_provider_metrics(sdf)
    assert [(r.country, r.n_labels) for r in valid.collect()] == [("US", 10)]
    assert [(r.country, r.reason, r.reason_column) for r in quarantine.collect()] == [
        ("GB", "wrong_type", "n_labels")]


@pytest.mark.spark
def test_provider_folder_names_are_read_as_written(spark, tmp_path):
    """Spark reports file paths URI-encoded; the provider comes back as the folder says."""
    root = str(tmp_path / "source")
    for name in ("acme data", "b+c%d", "Ünicode"):
        sample.write_labels(root, name, [{"user_id": f"u-{name}", "gender": "F", "age": 30,
                                          "country": "US", "observed_date": D}])
    raw, _ = contract_read.read_table(spark, contract.list_table_files(root, "labels"),
                                      contract.LABELS)
    assert sorted(r.provider for r in raw.collect()) == ["acme data", "b+c%d", "Ünicode"]


@pytest.mark.spark
def test_side_files_bad_folders_and_partition_values_on_s3(spark, s3_env, moto_s3):  # noqa: F811
    """Listing goes through the same rules on S3 as on local disk, and a file staged to local
    disk (no S3A connector) keeps its partition values."""
    root = s3_env["PYTHIA_DATA_ROOT"] + "/source"
    padded = sample.write_impressions(root, D, 3, [sample.impression("a", "u", sample.at(D, 3))],
                                      name="000000_0")  # Hive: no extension
    unpadded = padded.replace("hour=03", "hour=3")
    storage.write_bytes_atomic(unpadded, storage.read_bytes(padded))
    folder = unpadded.rsplit("/", 1)[0]
    for side in ("_SUCCESS", ".000000_0.crc", "_committed_1", "_temporary/0/part-0.parquet"):
        storage.write_bytes_atomic(f"{folder}/{side}", b"junk")
    storage.write_bytes_atomic(folder.replace("hour=3", "hour=24") + "/f.parquet",
                               storage.read_bytes(padded))
    found = contract_read.list_partition_files(root, [D], [3])[(D.isoformat(), 3)]
    assert sorted(found) == sorted([padded, unpadded])
    raw, _ = contract_read.read_table(spark, found, contract.IMPRESSIONS)
    assert sorted((r.date, r.hour) for r in raw.collect()) == [(D.isoformat(), 3)] * 2
    (entry,) = source_layout.find_partition_problems(root, [D])
    assert (entry["folder"], entry["problem"], entry["rows"]) == (
        f"{root}/impressions/date={D.isoformat()}/hour=24", "hour 24 is outside 00..23", 1)


@pytest.mark.spark
def test_every_documented_stored_type_reads(spark, tmp_path):
    """Each Arrow type docs/data-contract.md lists, in the labels table (one file each)."""
    root = str(tmp_path / "source")
    ages = {"int8": pa.int8(), "int16": pa.int16(), "int64": pa.int64(), "uint8": pa.uint8(),
            "uint16": pa.uint16(), "uint32": pa.uint32(), "uint64": pa.uint64(),
            "float": pa.float32(), "decimal": pa.decimal128(5, 2)}
    ids = {"int8": pa.string_view(), "int16": pa.large_binary(), "int64": pa.binary_view(),
           "uint8": pa.large_string()}
    dates = {"int8": (pa.date64(), dt.date(2024, 3, 1)), "int16": (pa.date32(), dt.date(1, 1, 1)),
             "int64": (pa.timestamp("us", tz="UTC"), dt.datetime(2024, 3, 1, 23, 59,
                                                                tzinfo=dt.timezone.utc)),
             "uint8": (pa.string(), "2024-03-01")}
    for k, (name, age_type) in enumerate(ages.items()):
        age = decimal.Decimal("41.00") if name == "decimal" else 41
        date_type, date = dates.get(name, (pa.date32(), dt.date(2024, 3, 1)))
        pq.write_table(pa.table({
            "user_id": pa.array([f"u-{name}"], ids.get(name, pa.string())),
            "gender": ["F"], "age": pa.array([age], age_type), "country": ["US"],
            "observed_date": pa.array([date], date_type)}),
            _labels_file(root, f"part-{k}.parquet"))
    raw, _ = contract_read.read_table(spark, contract.list_table_files(root, "labels"),
                                      contract.LABELS)
    valid, quarantine = contract.validate_labels(raw)
    assert quarantine.count() == 0
    got = {r.user_id: (r.age, r.observed_date) for r in valid.collect()}
    assert got == {f"u-{n}": (41, dt.date(1, 1, 1) if n == "int16" else dt.date(2024, 3, 1))
                   for n in ages}


def _labels_file(root: str, name: str) -> str:
    folder = join(root, "labels", "provider=acme")
    os.makedirs(folder, exist_ok=True)
    return join(folder, name)


# ------------------------------------------------------------------------------- errors

def _one_partition_source(tmp_path) -> str:
    root = str(tmp_path / "source")
    sample.write_impressions(root, D, 0, [sample.impression("a", "u1", sample.at(D, 0, 5))])
    return root


def _read_hour0(spark, root: str):
    files = contract_read.list_partition_files(root, [D], [0])[(D.isoformat(), 0)]
    with errors.user_input_errors("etl_hour"):
        raw, _ = contract_read.read_table(spark, files, contract.IMPRESSIONS)
        return raw.collect()


@pytest.mark.parametrize("content", [b"impression_id,user_id\na,u1\n", b""])
def test_a_file_that_is_not_parquet_is_named_with_the_fix(tmp_path, content):
    root = _one_partition_source(tmp_path)
    bad = _partition(root, "00", "export.csv")
    with open(bad, "wb") as f:
        f.write(content)
    files = contract_read.list_partition_files(root, [D], [0])[(D.isoformat(), 0)]
    with pytest.raises(ValueError) as err:
        contract_read.inspect_files(files, contract.IMPRESSIONS)
    text = str(err.value)
    assert "\n" not in text and bad in text
    assert "remove it or move it out of the source" in text


@pytest.mark.spark
def test_a_damaged_parquet_file_is_one_line_not_a_jvm_trace(spark, tmp_path):
    root = _one_partition_source(tmp_path)
    bad = _partition(root, "00", "damaged.parquet")
    t = pa.Table.from_pylist([sample.impression(f"i{k}", f"u{k}", sample.at(D, 0, 5))
                              for k in range(2000)], schema=contract.IMPRESSION_SCHEMA)
    pq.write_table(t, bad, compression="none")
    data = bytearray(open(bad, "rb").read())
    data[8:4000] = b"\x07" * (4000 - 8)  # pages damaged, footer intact
    with open(bad, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(ValueError) as err:
        _read_hour0(spark, root)
    text = str(err.value)
    assert "\n" not in text and f"cannot read {bad}" in text and "Fix:" in text
    assert errors.is_spark_error(err.value.__cause__)


@pytest.mark.spark
def test_spark_type_mismatch_names_file_and_column(spark, tmp_path):
    """What Spark says when it meets pandas' ns timestamps unprepared, made one line."""
    root = _one_partition_source(tmp_path)
    path = _partition(root, "00", "ns.parquet")
    pd.DataFrame({"ts": [pd.Timestamp("2024-03-10 00:05", tz="UTC")]}).to_parquet(path)
    with pytest.raises(ValueError) as err:
        with errors.user_input_errors("etl_hour"):
            spark.read.schema("ts timestamp").parquet(path).collect()
    text = str(err.value)
    assert "\n" not in text and f"cannot read {path}, column ts" in text
    assert "PARQUET_COLUMN_DATA_TYPE_MISMATCH" in text and "Fix: rewrite the column" in text


@pytest.mark.spark
def test_a_stale_checksum_file_is_named_where_hadoop_still_checks_it(spark, tmp_path):
    """Sessions pythia starts skip Hadoop's client-side checksums; elsewhere (a cluster's own
    settings) a stale .crc fails the read, and the error names the .crc to remove."""
    path = _partition(str(tmp_path / "source"), "00")
    pq.write_table(pa.table({"x": list(range(1000))}), path)
    with open(_partition(str(tmp_path / "source"), "00", ".part-0.parquet.crc"), "wb") as f:
        f.write(b"crc\x00\x00\x00\x02\x00" + b"\x00" * 64)  # 512-byte chunks, wrong sums
    jvm = spark.sparkContext._jvm
    fs = jvm.org.apache.hadoop.fs.LocalFileSystem()  # what a default Hadoop setup reads with
    fs.initialize(jvm.java.net.URI("file:///"), jvm.org.apache.hadoop.conf.Configuration())
    with pytest.raises(ValueError) as err:
        with errors.user_input_errors("etl_hour"):
            fs.open(jvm.org.apache.hadoop.fs.Path(path)).read()
    text = str(err.value)
    assert "\n" not in text and f"cannot read {path}" in text
    assert f"remove that .crc file" in text and f"/.part-0.parquet.crc" in text


def test_errors_that_are_not_spark_errors_pass_through():
    with pytest.raises(KeyError):
        with errors.user_input_errors("etl_hour"):
            raise KeyError("x")


def test_a_contract_column_of_an_unreadable_type_is_named(tmp_path):
    root = _one_partition_source(tmp_path)
    path = _partition(root, "00", "nested.parquet")
    pq.write_table(pa.table({"impression_id": ["b"], "device_model": [["a1", "a2"]]}), path)
    files = contract_read.list_partition_files(root, [D], [0])[(D.isoformat(), 0)]
    with pytest.raises(ValueError) as err:
        contract_read.inspect_files(files, contract.IMPRESSIONS)
    text = str(err.value)
    assert "\n" not in text and path in text and "column 'device_model'" in text
    assert "fix: write it as string" in text


# ------------------------------------------------------------------------------- start

def _bad_date_folders(root: str) -> None:
    one = pa.Table.from_pylist([sample.impression("stray", "u1", sample.at(D, 1))],
                               schema=contract.IMPRESSION_SCHEMA)
    for name in ("date=2024-02-30", "date=yesterday"):
        pq.write_table(one, _partition(root, "00", day=name[len("date="):]))


def test_start_lists_dates_past_folders_that_do_not_parse(source, capsys):
    source.users_every_hour({"u1": "US"}, [D], list(range(24)))
    _bad_date_folders(source.root)
    assert contract_read.list_dates(source.root) == [D]
    assert run_source.newest_complete_date(source.root) == D
    params = RunParams.build({"source": source.root, "allow_gaps": True}, model_names=("gbdt",))
    _, window, gaps = run_source.resolve(params)
    assert window["test"] == [D.isoformat()] and len(gaps) == 4 * 24
    log = capsys.readouterr().out
    assert (f"quarantined partition folder {join(source.root, 'impressions', 'date=2024-02-30')}"
            ": date '2024-02-30' does not exist (day is out of range for month) (1 file(s), "
            "1 row(s) not read)") in log
    assert "date=yesterday: date 'yesterday' is not YYYY-MM-DD" in log
    assert "96 missing impression partition(s), run anyway (allow_gaps)" in log


def test_start_errors_name_the_folders_that_do_not_parse(source):
    _bad_date_folders(source.root)
    with pytest.raises(ValueError, match=r"no impressions/date=YYYY-MM-DD partitions under .*"
                                         r"\(folders that are not dates: date=2024-02-30: "
                                         r"date '2024-02-30' does not exist"):
        run_source.newest_complete_date(source.root)
    # a window whose hour 23 was written as hour=24: the gap error names the folder
    source.users_every_hour({"u1": "US"}, WINDOW.dates, list(range(23)))
    sample.write_impressions(source.root, D, 24, [])
    params = RunParams.build({"source": source.root, "date": D.isoformat()},
                             model_names=("gbdt",))
    with pytest.raises(ValueError, match=r"date=2024-03-10/hour=23.*partition folders that do "
                                         r"not parse: .*date=2024-03-10/hour=24"):
        run_source.resolve(params)
