"""etl_hour on the driver (``etl.hourly_local``) against the Spark path (``etl.hourly``).

One source holds every producer flavour of tests/test_producers.py (pandas ns tz-aware and
naive, pyarrow ms, INT96, dictionary/large_string/categorical/binary strings, Hive files, Spark's
partitioned writer with its side files), plus pyarrow µs files with rows of every quarantine
reason, duplicate ids inside the task (a tie settled by the content hash, byte-identical
copies), unlabelled users, extra columns, contract columns stored as numbers or dates, odd
instants (year 1, before 1970 in ns and INT96), several countries and zones across the US
daylight-saving change of 2024-03-10, and a gap. Both engines run on it; every output table
(schema, types and sorted rows) and the manifests must be identical. Then: Spark's own
xxhash64, the step's choice of engine (no JVM on the driver path), the fallbacks, one-line
errors, S3, and a duplicate settled across tasks of different engines.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import random
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pythia import contract, contract_local, etl, providers_local, source_layout
from pythia.config import Geography, RunParams
from pythia.etl import hourly, hourly_local, sample
from pythia.etl.content_hash import spark_xxhash64
from pythia.paths import RunPaths, join
from pythia.storage import read_frame

from conftest import WINDOW, SourceBuilder
from s3_fixtures import moto_s3, s3_env  # noqa: F401  (S3 fixtures, imported where needed)

D6, D7, D8, D9, D10 = WINDOW.dates
HOURS = list(range(9)) + [10]  # test_producers' flavours in 0-7 of D10; hour 8 is a gap
AGES = (18, 25, 35, 45, 55, 65)
PATH_KEYS = ("rows_path", "quarantine_path", "user_day_counts_path", "ids_path")
imp, at = sample.impression, sample.at
US = {"geo_region": "US-NY"}


def _ts(day: dt.date, hour: int, minute: int, micro: int = 0) -> dt.datetime:
    return at(day, hour, minute) + dt.timedelta(microseconds=micro)


def _quarantine_rows(day: dt.date, h: int) -> list[dict]:
    """One row per rule (and precedence between two), plus valid look-alikes; ids end in the
    day of month, but dup-cross, whose earlier copy (2024-03-06) wins across partitions."""
    t = _ts(day, h, 20)
    rows = [
        imp("q-user", None, t), imp("q-blank", "u1", t, site_or_app="  "),
        imp("ok-tab", "u1", t, site_or_app="\t"),  # Spark's trim strips spaces only
        imp("q-ts-null", "u1", None), imp("q-off", "u1", _ts(day, (h + 2) % 24, 0)),
        imp("q-before", "u1", dt.datetime(2024, 3, 1, h, tzinfo=dt.timezone.utc)),
        imp("q-year1", "u1", dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc)),
        imp("q-device", "u1", t, device_type="fridge"), imp("q-country", "u1", t, "usa"),
        imp("q-umlaut", "u1", t, "ÜS"), imp("ok-newline", "u1", t, "US\n"),  # Java's $
        imp("q-format", "u1", t, ad_format="gif"), imp("q-inventory", "u1", t,
                                                       inventory_type="web"),
        imp("q-two", None, t, device_type="fridge"),  # null_required comes first
        imp("q-ts-device", "u1", _ts(day, h, 0) - dt.timedelta(hours=3), device_type="tv"),
        imp("ok-frac", "u3", _ts(day, h, 30, 120_000)), imp("ok-micro", "u3",
                                                           _ts(day, h, 31, 123_457)),
        # duplicates: the earlier ts wins; on a tie of ts/date/hour the content hash decides
        imp("dup-ts", "u1", _ts(day, h, 40)), imp("dup-ts", "u1", _ts(day, h, 39)),
        imp("dup-hash", "u3", _ts(day, h, 41), site_or_app="a.example"),
        imp("dup-hash", "u3", _ts(day, h, 41), site_or_app="b.example"),
        imp("dup-hash", "u3", _ts(day, h, 41), site_or_app="c.example"),
        imp("dup-same", "u4", _ts(day, h, 42)), imp("dup-same", "u4", _ts(day, h, 42)),
        imp("dup-bad", "u1", _ts(day, h, 43)), imp("dup-bad", "u1", _ts(day, h, 43), "xx"),
    ]
    rows = [dict(r, impression_id=f"{r['impression_id']}-{day:%d}") for r in rows]
    return rows + [imp("dup-cross", "u3", _ts(day, h, 45))]


def _odd_files(src: SourceBuilder) -> None:
    """Contract columns stored as other types, instants Spark and Python format alike only
    when converted exactly, missing columns, an empty file, a second file in one hour."""
    schema = pa.schema([(f.name, pa.int64() if f.name == "zip" else pa.int32()
                         if f.name == "os_version" else f.type)
                        for f in contract.IMPRESSION_SCHEMA])
    src.hour(D7, 3, [imp("num-zip", "u1", _ts(D7, 3, 5), zip=2134, os_version=17)],
             schema=schema)
    for name, ts_type, value in (("ts-int.parquet", pa.int64(), 1_709_780_000),
                                 ("ts-date.parquet", pa.date32(), D7)):
        ts_schema = contract.IMPRESSION_SCHEMA.set(2, pa.field("ts", ts_type))
        src.hour(D7, 3, [imp(f"{name}-row", "u1", value)], name=name, schema=ts_schema)
    src.hour(D7, 4, [], name="empty.parquet")
    pq.write_table(pa.table({"impression_id": ["only-id"], "ts": pa.array(
        [_ts(D7, 4, 1)], pa.timestamp("us", tz="UTC")), "extra_one": [1]}),
        join(src.root, "impressions", f"date={D7}", "hour=04", "few-columns.parquet"))
    odd = pd.DataFrame([imp(f"ns-{k}", "u1", _ts(D8, 2, 10)) for k in range(3)])
    odd["ts"] = pd.to_datetime(["1969-12-31 23:59:59.999999999", "1960-01-01 00:00:00.0000005",
                                "2024-03-08 02:10:00.000000999"], utc=True)
    odd.to_parquet(join(src.root, "impressions", f"date={D8}", "hour=02", "ns.parquet"))
    int96 = pa.Table.from_pandas(odd.assign(impression_id=["i96-0", "i96-1", "i96-2"]),
                                 preserve_index=False)
    pq.write_table(int96, join(src.root, "impressions", f"date={D8}", "hour=03", "i96.parquet"),
                   use_deprecated_int96_timestamps=True)
    year1 = pa.Table.from_pylist([imp("y1-96", "u1", dt.datetime(1, 1, 1,
                                                                 tzinfo=dt.timezone.utc))],
                                 schema=contract.IMPRESSION_SCHEMA)
    pq.write_table(year1, join(src.root, "impressions", f"date={D8}", "hour=03",
                               "i96-year1.parquet"), use_deprecated_int96_timestamps=True)


def _countries(day: dt.date, h: int) -> list[dict]:
    """Several countries and zones; around 07:00 (New York) and 10:00 UTC (Los Angeles) on
    2024-03-10 the US clocks change, inside the 300 s tolerance of a partition."""
    rows = [imp(f"{day}-{h}-{u}", u, _ts(day, h, 10), c, **kw) for u, c, kw in (
        ("u1", "US", US), ("u3", "GB", {}), ("u4", "DE", {}), ("u5", "JP", {}),
        ("u6", "AU", {"geo_region": "AU-WA"}), ("u7", "BR", {"geo_region": None}),
        ("u8", "US", {"geo_region": "CA"}))]
    if day == D10 and h in (7, 10):
        rows += [imp(f"dst-{h}-{k}", "u8", _ts(day, h, 0) + dt.timedelta(seconds=s), "US",
                     geo_region=g) for k, (s, g) in enumerate(
                         [(-180, "US-NY"), (180, "US-NY"), (-120, "US-CA"), (120, "US-CA")])]
    return rows


def _labels(src: SourceBuilder) -> None:
    lab = [("u1", "F", 30, "US"), ("u3", "M", 40, "GB"), ("u5", "F", 70, "JP"),
           ("u6", "M", 22, "AU"), ("u8", "F", 50, "US")]  # u2, u4, u7: no label
    src.labels("acme", [{"user_id": u, "gender": g, "age": a, "country": c,
                         "observed_date": dt.date(2024, 3, 1)} for u, g, a, c in lab])


def build_source(spark, root: str) -> SourceBuilder:
    from test_producers import _write_bad_folders, _write_flavours

    src = SourceBuilder(root)
    _write_flavours(spark, root)
    _write_bad_folders(root)
    for day in (D6, D7, D8, D9):
        for h in HOURS:
            if h != 8:
                src.hour(day, h, _countries(day, h) + (_quarantine_rows(day, h)
                                                        if (day, h) in ((D6, 1), (D9, 5))
                                                        else []))
    src.hour(D10, 10, _countries(D10, 10))
    src.hour(D10, 7, _countries(D10, 7), name="countries.parquet")
    src.hour(D6, 2, [imp("dup-file", "u1", _ts(D6, 2, 50))], name="a.parquet")
    src.hour(D6, 2, [imp("dup-file", "u1", _ts(D6, 2, 50), metro="M2")], name="b.parquet")
    _odd_files(src)
    _labels(src)
    return src


def _strip(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in PATH_KEYS}


def _run_both(spark, root: str, out: str, hours, labels_path: str) -> dict:
    got = {}
    for engine in ("spark", "driver"):
        log = io.StringIO()
        args = (root, hours, WINDOW, labels_path, join(out, engine, "etl"),
                join(out, engine, "q"), Geography(), True)
        with contextlib.redirect_stdout(log):
            got[engine] = (hourly.run_hours(spark, *args) if engine == "spark"
                           else hourly_local.run_hours(*args))
        got[engine + "_log"] = log.getvalue()
    return got


@pytest.fixture(scope="module")
def both(spark, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("etl_local"))
    src = build_source(spark, join(base, "source"))
    labels = providers_local.prepare_labels(src.root, {}, AGES, join(base, "labels"), "acme")
    return {**_run_both(spark, src.root, base, HOURS, labels["labels_path"]),
            "labels": labels["labels_path"], "root": src.root, "base": base}


def _schema(uri: str) -> pa.Schema:
    files = source_layout.list_data_files(uri)
    schemas = {pq.read_schema(f).remove_metadata() for f in files}
    assert len(schemas) == 1, uri
    return schemas.pop()


def _rows(uri: str) -> pd.DataFrame:
    return _sorted(read_frame(uri))


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in one order whatever the engine wrote them in (by every column's text)."""
    text = frame.astype(str)
    return frame.iloc[text.sort_values(list(text.columns)).index].reset_index(drop=True)


def assert_same_outputs(want: dict, got: dict) -> None:
    assert _strip(got) == _strip(want)
    for key in PATH_KEYS:
        assert _schema(got[key]) == _schema(want[key]), key
        a, b = _rows(want[key]), _rows(got[key])
        pd.testing.assert_frame_equal(b, a, check_exact=True, obj=key)


@pytest.mark.spark
def test_driver_and_spark_give_the_same_outputs(both):
    assert_same_outputs(both["spark"], both["driver"])
    m = both["driver"]
    quarantined = m["total"]["quarantined"]
    assert all(quarantined[r] for r in contract.REASONS if r != contract.WRONG_TYPE)
    assert m["total"]["unlabelled"] and m["total"]["written"]
    assert m["extra_columns"] == ["extra_one", "segments"]
    assert m["gaps"] == [f"date={d}/hour=08" for d in WINDOW.dates]
    assert set(m["written_by_split"]) == {"train", "validation", "test"}
    notes = [[ln for ln in both[e + "_log"].splitlines() if ln.startswith("note:")]
             for e in ("spark", "driver")]
    assert notes[0] == notes[1] and len(notes[0]) == 2


@pytest.mark.spark
def test_both_engines_quarantine_tables_say_the_same(both):
    """input_health reads the quarantine either engine wrote: same entries, same values."""
    from pythia import input_health
    got = {e: input_health.summarize(both[e]["quarantine_path"], contract.IMPRESSIONS)
           for e in ("spark", "driver")}
    assert got["spark"] == got["driver"]
    by_reason: dict = {}
    for entry in got["driver"]["entries"]:
        by_reason[entry["reason"]] = by_reason.get(entry["reason"], 0) + entry["rows"]
    assert by_reason == {r: n for r, n in both["driver"]["total"]["quarantined"].items() if n}
    assert any(e["values"] for e in got["driver"]["entries"])


@pytest.mark.spark
def test_the_rules_and_tie_breaks_land_where_the_contract_says(both):
    q = read_frame(both["driver"]["quarantine_path"])
    six = q[(q.date == str(D6)) & (q.hour == 1)]
    assert dict(zip(six.impression_id.str.removesuffix("-06"), six.reason)) == {
        "q-user": "null_required", "q-blank": "null_required", "q-ts-null": "null_required",
        "q-off": "bad_timestamp", "q-before": "bad_timestamp", "q-year1": "bad_timestamp",
        "q-device": "out_of_domain", "q-country": "out_of_domain",
        "q-umlaut": "out_of_domain", "q-format": "out_of_domain",
        "q-inventory": "out_of_domain", "q-two": "null_required",
        "q-ts-device": "bad_timestamp", "dup-ts": "duplicate_impression_id",
        "dup-hash": "duplicate_impression_id", "dup-same": "duplicate_impression_id",
        "dup-bad": "out_of_domain"}
    assert q.impression_id.str.startswith("dup-hash").sum() == 4  # 2 losers in each hour
    assert list(q[q.impression_id == "dup-cross"].date) == [str(D9)]
    assert list(q[q.impression_id == "dup-file"].metro) in (["M1"], ["M2"])
    assert set(q[q.impression_id == "q-year1-06"].ts) == {"0001-01-01 00:00:00"}
    assert set(q[q.impression_id == "ns-0"].ts) == {"1970-01-01 00:00:00"}  # div, not floor
    assert set(q[q.impression_id == "ts-int.parquet-row"].ts) == {"1709780000"}
    ids = read_frame(both["driver"]["ids_path"])
    assert ids.impression_id.is_unique and "ok-newline-06" in set(ids.impression_id)
    assert ids[ids.impression_id == "dup-ts-06"].ts.iloc[0].minute == 39


@pytest.mark.spark
@pytest.mark.parametrize("ids_collide", [False, True], ids=["ids-hashed", "ids-collide"])
def test_tiny_batches_give_the_same_outputs(both, monkeypatch, ids_collide):
    """Batches of 3 rows (duplicates and their winners in different batches and files; the
    user-day counts summed as they go) give Spark's outputs; with every id hash colliding,
    the duplicates are still settled on the exact ids."""
    import numpy as np

    monkeypatch.setattr(hourly_local, "ETL_BATCH_ROWS", 3)
    monkeypatch.setattr(hourly_local.UserDayCounts, "COMPACT_ROWS", 5)
    if ids_collide:
        monkeypatch.setattr(hourly_local, "_id_hashes",
                            lambda ids: np.zeros(len(ids), dtype=np.int64))
    out = join(both["base"], "tiny-collide" if ids_collide else "tiny")
    got = hourly_local.run_hours(both["root"], HOURS, WINDOW, both["labels"], join(out, "etl"),
                                 join(out, "q"), Geography(), True)
    assert_same_outputs(both["spark"], got)
    assert pq.ParquetFile(source_layout.list_data_files(got["rows_path"])[0]
                          ).metadata.num_row_groups > 10


def test_the_dataset_writer_appends_row_groups_and_publishes_only_on_close(tmp_path):
    from pythia.etl.io import ArrowDatasetWriter

    uri = str(tmp_path / "out")
    writer = ArrowDatasetWriter(uri)
    writer.write(pa.table({"a": [1, 2]}))
    writer.write(pa.table({"a": pa.array([3], pa.int32())}))  # cast to the first schema
    assert not os.path.exists(uri)
    assert writer.close() == uri and os.path.exists(join(uri, "_SUCCESS"))
    assert read_frame(uri).a.tolist() == [1, 2, 3]
    with pytest.raises(RuntimeError, match="boom"):
        with ArrowDatasetWriter(str(tmp_path / "lost")) as lost:
            lost.write(pa.table({"a": [1]}))
            raise RuntimeError("boom")
    assert not os.path.exists(tmp_path / "lost") and os.listdir(tmp_path) == ["out"]
    with pytest.raises(ValueError, match="nothing written to .*none"):
        ArrowDatasetWriter(str(tmp_path / "none")).close()
    empty = ArrowDatasetWriter(str(tmp_path / "empty"), pa.schema([("n", pa.int64())]))
    assert read_frame(empty.close()).empty


@pytest.mark.spark
def test_a_task_of_gaps_only_gives_the_same_empty_outputs(spark, both):
    got = _run_both(spark, both["root"], join(both["base"], "gaps"), [20], both["labels"])
    assert_same_outputs(got["spark"], got["driver"])
    assert got["driver"]["total"]["rows_in"] == 0 and len(got["driver"]["gaps"]) == 5


def _random_text(rng: random.Random) -> str | None:
    if rng.random() < 0.15:
        return None
    ranges = [(0x20, 0x7e), (0xa0, 0x24f), (0x4e00, 0x4fff), (0x1f300, 0x1f64f), (0, 0x1f)]
    size = rng.choice([0, 1, 3, 7, 8, 31, 32, 33, 64, 100])
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(size))


@pytest.mark.spark
def test_content_hash_is_sparks_xxhash64(spark):
    from pyspark.sql import functions as F

    rng = random.Random(7)
    rows = [tuple(_random_text(rng) for _ in range(4)) for _ in range(3000)]
    rows += [(None,) * 4, ("",) * 4, ("", None, "", None)]
    names = ["a", "b", "c", "d"]
    sdf = spark.createDataFrame(rows, ", ".join(f"{n} string" for n in names))
    want = [r[0] for r in sdf.select(F.xxhash64(*names)).collect()]
    got = spark_xxhash64([pa.array([r[i] for r in rows], pa.string()) for i in range(4)])
    assert got.tolist() == want
    assert spark_xxhash64([pa.array([None], pa.string())]).tolist() == [42]


# ------------------------------------------------------------------------------- the step

def _small_source(root: str) -> tuple[SourceBuilder, dict]:
    src = SourceBuilder(root)
    src.users_every_hour({"u1": "US", "u2": "GB"}, WINDOW.dates, [0, 1])
    src.labels("acme", [{"user_id": "u1", "gender": "F", "age": 30, "country": "US",
                         "observed_date": dt.date(2024, 3, 1)}])
    return src, providers_local.prepare_labels(root, {}, AGES, root + "-labels", "acme")


def _params(root: str, data_root: str) -> RunParams:
    return RunParams.build({"source": root, "data_root": data_root, "allow_gaps": True},
                           model_names=("gbdt",))


_NO_JVM = """
import json, sys
from pythia import etl
from pythia.config import RunParams
from pythia.paths import RunPaths
args = json.loads(sys.argv[1])
params = RunParams.build({"source": args["root"], "data_root": args["data"],
                          "allow_gaps": True}, model_names=("gbdt",))
m = etl.run_hours(args["root"], [0, 1], args["window"], args["labels"], params,
                  RunPaths(args["data"], "T", "1"))
print(json.dumps({"loaded": sorted(k for k in sys.modules if "spark" in k or "py4j" in k),
                  "written": m["total"]["written"]}))
"""


def test_the_step_runs_on_the_driver_without_a_jvm(tmp_path):
    src, labels = _small_source(str(tmp_path / "src"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("SPARK_REMOTE", "PYTHIA_SPARK_MASTER", "PYTHIA_DRIVER_MAX_ROWS")}
    arg = json.dumps({"root": src.root, "data": str(tmp_path / "data"), "labels": labels,
                      "window": WINDOW.as_dict()})
    out = subprocess.run([sys.executable, "-c", _NO_JVM, arg], capture_output=True, text=True,
                         env=env, cwd=os.path.dirname(os.path.dirname(__file__)), check=True)
    lines = out.stdout.splitlines()
    # one line: the engine and why, then what the step did
    assert lines[0].startswith("etl_hour 00,01 (driver, no JVM: 20 rows, streamed): 20 "
                               "impressions read, 0 quarantined, 10 without a label, 10 "
                               "written to ")
    assert json.loads(lines[-1]) == {"loaded": [], "written": 10}  # pyspark never imported


@pytest.mark.spark
def test_spark_is_used_when_forced_on_a_cluster_or_for_types_it_alone_reads(
        spark, tmp_path, monkeypatch, capsys):
    src, labels = _small_source(str(tmp_path / "src"))
    started = []

    @contextlib.contextmanager
    def _session(name, *_a, **_k):
        started.append(name)
        yield spark

    monkeypatch.setattr("pythia.etl.session.spark_session", _session)
    for var in ("SPARK_REMOTE", "PYTHIA_SPARK_MASTER", providers_local.DRIVER_MAX_ROWS_ENV):
        monkeypatch.delenv(var, raising=False)
    params, run = _params(src.root, str(tmp_path / "data")), 0

    def _step():
        nonlocal run
        run += 1
        return etl.run_hours(src.root, [0, 1], WINDOW.as_dict(), labels, params,
                             RunPaths(str(tmp_path / "data"), "T", str(run)))

    driver = _step()
    assert started == [] and "etl_hour 00,01 (driver, no JVM: 20 rows" in capsys.readouterr().out
    monkeypatch.setenv(providers_local.DRIVER_MAX_ROWS_ENV, "0")
    forced = _step()
    assert started == ["pythia-etl-00"]
    assert ("etl_hour 00,01 (Spark: 20 rows > 0 (PYTHIA_DRIVER_MAX_ROWS)): 20 impressions read"
            in capsys.readouterr().out)
    assert_same_outputs(forced, driver)
    monkeypatch.delenv(providers_local.DRIVER_MAX_ROWS_ENV)
    monkeypatch.setenv("PYTHIA_SPARK_MASTER", "local[1]")
    _step()
    assert started[-1] == "pythia-etl-00" and len(started) == 2
    assert "etl_hour 00,01 (Spark (master local[1])): " in capsys.readouterr().out
    monkeypatch.delenv("PYTHIA_SPARK_MASTER")
    schema = contract.IMPRESSION_SCHEMA.set(2, pa.field("ts", pa.string()))
    src.hour(D6, 1, [imp("text-ts", "u1", "2024-03-06 01:30:00")], name="text.parquet",
             schema=schema)
    by_spark = _step()
    assert len(started) == 3 and by_spark["per_hour"][1]["rows_in"] == 3
    assert ("etl_hour 00,01 (Spark (impressions: column ts stored as string is read by Spark "
            "only)): "
            in capsys.readouterr().out)


def test_a_damaged_file_on_the_driver_is_one_line_naming_it(tmp_path):
    src, labels = _small_source(str(tmp_path / "src"))
    bad = join(src.root, "impressions", f"date={D6}", "hour=00", "damaged.parquet")
    t = pa.Table.from_pylist([imp(f"i{k}", "u1", at(D6, 0, 5)) for k in range(2000)],
                             schema=contract.IMPRESSION_SCHEMA)
    pq.write_table(t, bad, compression="none")
    data = bytearray(open(bad, "rb").read())
    data[8:4000] = b"\x07" * (4000 - 8)  # pages damaged, footer intact
    with open(bad, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(ValueError) as err:
        hourly_local.run_hours(src.root, [0], WINDOW, labels["labels_path"],
                               str(tmp_path / "o"), str(tmp_path / "q"), Geography(), True)
    text = str(err.value)
    assert "\n" not in text and f"cannot read {bad}" in text and "Fix:" in text


def test_needs_spark_is_raised_before_anything_is_written(tmp_path):
    src, labels = _small_source(str(tmp_path / "src"))
    schema = contract.IMPRESSION_SCHEMA.set(2, pa.field("ts", pa.string()))
    src.hour(D6, 0, [imp("text-ts", "u1", "2024-03-06 00:30:00")], name="t.parquet",
             schema=schema)
    with pytest.raises(contract_local.NeedsSpark, match="ts stored as string"):
        hourly_local.run_hours(src.root, [0], WINDOW, labels["labels_path"],
                               str(tmp_path / "o"), str(tmp_path / "q"), Geography(), True)
    assert not os.path.exists(tmp_path / "o") and not os.path.exists(tmp_path / "q")
    year_10000 = pa.array([253_402_300_800_000], pa.int64()).cast(pa.timestamp("ms"))
    with pytest.raises(contract_local.NeedsSpark, match="outside years 1..9999"):
        contract_local.micros(year_10000, nanos_div=False)


def test_the_driver_reads_and_writes_s3(tmp_path, s3_env, moto_s3):  # noqa: F811
    base = s3_env["PYTHIA_DATA_ROOT"] + "/etl-local"  # the bucket outlives a test
    root = base + "/source"
    src = SourceBuilder(root)
    src.users_every_hour({"u1": "US", "u2": "GB"}, WINDOW.dates, [3])
    src.labels("acme", [{"user_id": "u2", "gender": "M", "age": 44, "country": "GB",
                         "observed_date": dt.date(2024, 3, 1)}])
    labels = providers_local.prepare_labels(root, {}, AGES, base + "/labels", "acme")
    out = base + "/etl"
    m = hourly_local.run_hours(root, [3], WINDOW, labels["labels_path"], out + "/o",
                               out + "/q", Geography(), False)
    assert m["total"]["written"] == 5 and m["rows_path"] == out + "/o/rows"
    rows = read_frame(m["rows_path"])
    assert set(rows.user_id) == {"u2"} and set(rows.region) == {Geography().region_of("GB")}
    assert len(read_frame(m["ids_path"])) == 10
    assert any(k.endswith("o/rows/_SUCCESS") for k in moto_s3.keys())


@pytest.mark.spark
def test_duplicates_across_tasks_of_both_engines_settle_as_in_one_engine(spark, tmp_path,
                                                                         monkeypatch):
    """hours_per_task 4 with the six tasks alternating driver and Spark: each planted
    duplicate's copies sit in tasks of different engines, and the global pass (Spark, which
    finds the losers' raw rows again by content hash) gives what all-driver tasks give."""
    import test_dedupe
    from pythia.config import DeployConfig, hour_groups

    src = test_dedupe.build_source(str(tmp_path / "src"))
    labels = providers_local.prepare_labels(src.root, {}, AGES, str(tmp_path / "lab"), "acme")
    monkeypatch.setattr("pythia.etl.session.spark_session",
                        lambda *a, **k: contextlib.nullcontext(spark))
    out = {}
    for mode in ("driver", "mixed"):
        params = RunParams.build({"source": src.root, "models": "gbdt",
                                  "resample": "balanced", "hours_per_task": 4,
                                  "data_root": str(tmp_path / mode)},
                                 deploy=DeployConfig(power_user_quantile=0.5))
        paths = RunPaths(str(tmp_path / mode), "Mixed", "1")
        manifests = []
        for k, hours in enumerate(hour_groups(4)):
            monkeypatch.setenv(providers_local.DRIVER_MAX_ROWS_ENV,
                               "0" if mode == "mixed" and k % 2 else "1000000")
            manifests.append(etl.run_hours(src.root, hours, WINDOW.as_dict(), labels, params,
                                           paths))
        split, _, _, quarantine = etl.join_hours(manifests, params, paths)
        q = pd.concat([read_frame(join(paths.quarantine, "impressions", d)) for d in
                       sorted(os.listdir(join(paths.quarantine, "impressions")))
                       if not d.startswith((".", "_"))], ignore_index=True)
        out[mode] = {"split": split, "quarantine": quarantine, "q": _sorted(q),
                     "rows": {s: sorted(read_frame(p).impression_id)
                              for s, p in split["paths"].items()}}
    driver, mixed = out["driver"], out["mixed"]
    assert mixed["split"]["duplicates_across_tasks"]["rows"] == 6
    assert mixed["quarantine"]["by_reason"][contract.DUPLICATE_IMPRESSION_ID] == \
        test_dedupe.N_DUPLICATES
    for key in ("rows", "per_hour", "class_counts_after", "duplicates_across_tasks"):
        want, got = driver["split"][key], mixed["split"][key]
        if key == "duplicates_across_tasks":
            want, got = ({k: v for k, v in d.items() if not k.endswith("path")}
                         for d in (want, got))
        assert got == want, key
    assert mixed["rows"] == driver["rows"]
    pd.testing.assert_frame_equal(mixed["q"], driver["q"])
