"""join_hours on the driver (``etl.dedupe_local``, ``etl.splits_local``) against Spark.

ETL outputs are built once per source (tasks on the driver): tests/test_dedupe.py's source with
hours_per_task 1, 4 and 24 (duplicates across tasks, a labelled loser that would make a power
user; with 4 also by Spark tasks) and tests/test_etl.py's (a power user, two tasks). ``etl.join_hours`` then runs on them
twice, Spark forced by ``PYTHIA_DRIVER_MAX_ROWS=0`` and the driver by default, under resampling
modes auto/balanced/natural/sqrt, a floor, power users dropped or kept, a quantile or a fixed
threshold, and splits with no rows; every output table (schema, types, nullability, sorted rows)
and the manifests, reconciliation and quarantine summary must be identical. Then Spark's own
xxhash64 with a seed and its exact quantile, and a subprocess that imports no pyspark.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import types

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pythia import buckets, etl, providers_local, source_layout
from pythia.config import EtlConfig, RunParams, hour_groups
from pythia.etl import dedupe_local, splits_local
from pythia.etl.activity import user_impressions_today
from pythia.parquet_footers import footer_rows
from pythia.paths import RunPaths, join

from conftest import WINDOW
from test_etl_local import _random_text, _rows, _schema

AGES = (18, 25, 35, 45, 55, 65)


def _etl(tmp, name: str, source, choice: dict, groups: list[list[int]]) -> list[dict]:
    """The etl_hour tasks of ``source`` on the driver, under ``tmp/name``."""
    labels = providers_local.prepare_labels(source.root, choice, AGES, join(tmp, name, "lab"),
                                            "acme")
    params = RunParams.build({"source": source.root, "models": "gbdt",
                              "data_root": join(tmp, name)})
    paths = RunPaths(join(tmp, name), "Etl", "1")
    with contextlib.redirect_stdout(io.StringIO()):
        return [etl.run_hours(source.root, hours, WINDOW.as_dict(), labels, params, paths)
                for hours in groups]


@pytest.fixture(scope="module")
def sources(spark, tmp_path_factory):
    import test_dedupe
    import test_etl

    tmp = str(tmp_path_factory.mktemp("join_local"))
    dedupe_src = test_dedupe.build_source(join(tmp, "dedupe-src"))
    out = {f"dedupe{h}": _etl(tmp, f"dedupe{h}", dedupe_src, {}, hour_groups(h))
           for h in (1, 4, 24)}
    with pytest.MonkeyPatch.context() as mp:  # the same tasks written by Spark (ts as INT96)
        mp.setattr("pythia.etl.session.spark_session",
                   lambda *a, **k: contextlib.nullcontext(spark))
        mp.setenv(providers_local.DRIVER_MAX_ROWS_ENV, "0")
        out["dedupe4-spark"] = _etl(tmp, "dedupe4-spark", dedupe_src, {}, hour_groups(4))
    etl_src = test_etl.build_source(join(tmp, "etl-src"))
    out["etl"] = _etl(tmp, "etl", etl_src, {"US": "lucid"}, [[0, 1], [2]])
    return tmp, out


def _join(spark, monkeypatch, manifests, cfg: EtlConfig, root: str, engine: str) -> dict:
    started = []

    @contextlib.contextmanager
    def _session(name, *_a, **_k):
        started.append(name)
        yield spark

    monkeypatch.setattr("pythia.etl.session.spark_session", _session)
    for var in ("SPARK_REMOTE", "PYTHIA_SPARK_MASTER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(providers_local.DRIVER_MAX_ROWS_ENV,
                       "0" if engine == "spark" else "1000000")
    paths = RunPaths(root, "Join", engine)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        split, recon, rates, quarantine = etl.join_hours(
            manifests, types.SimpleNamespace(etl=cfg), paths)
    assert started == (["pythia-splits"] if engine == "spark" else [])
    return {"split": split, "recon": recon, "rates": rates, "quarantine": quarantine,
            "log": log.getvalue(), "paths": paths}


def _colliding(values) -> np.ndarray:
    """A hash under which every value of the same length collides."""
    return np.array([len(v or "") for v in values.to_pylist()], np.int64)


def _no_paths(value):
    """A manifest without its paths (they name each engine's own folders)."""
    if isinstance(value, dict):
        return {k: _no_paths(v) for k, v in value.items()
                if not (k == "paths" or k.endswith("path"))}
    return value


def _same_table(want: str, got: str) -> None:
    assert _schema(got) == _schema(want), got
    pd.testing.assert_frame_equal(_rows(got), _rows(want), check_exact=True, obj=got)


def assert_same_join(want: dict, got: dict) -> None:
    assert _no_paths(got["split"]) == _no_paths(want["split"])
    assert got["rates"] == want["rates"]
    assert _no_paths(got["quarantine"]) == _no_paths(want["quarantine"])
    pd.testing.assert_frame_equal(got["recon"], want["recon"], check_exact=True)
    assert got["recon"]["balanced"].all()
    for s, uri in want["split"]["paths"].items():
        _same_table(uri, got["split"]["paths"][s])
    dup_w, dup_g = (r["split"]["duplicates_across_tasks"] for r in (want, got))
    assert (dup_g["path"] is None) == (dup_w["path"] is None)
    for key in ("path", "quarantine_path"):
        if dup_w[key]:
            _same_table(dup_w[key], dup_g[key])
    # the losers' table is written even when it is empty (Spark writes it then too)
    w, g = (r["paths"].etl_duplicates for r in (want, got))
    assert os.path.exists(w) == os.path.exists(g)
    if os.path.exists(w):
        _same_table(w, g)
    lines = [[ln.split("): ", 1)[-1] if ln.startswith("join_hours (") else ln
              for ln in r["log"].splitlines()] for r in (want, got)]  # the engines differ
    assert [ln.replace(str(want["paths"].base), "") for ln in lines[0]] == \
        [ln.replace(str(got["paths"].base), "") for ln in lines[1]]


DROP = {"drop_power_users": True}
CASES = [  # (source, EtlConfig); DROP: power users dropped (the default keeps them)
    ("dedupe1", EtlConfig(**DROP, resample="balanced", power_user_quantile=0.5)),
    ("dedupe4", EtlConfig(**DROP, resample="balanced", power_user_quantile=0.5)),
    ("dedupe4-spark", EtlConfig(**DROP, resample="balanced", power_user_quantile=0.5, seed=5)),
    ("dedupe24", EtlConfig(**DROP, resample="sqrt", power_user_quantile=0.5, seed=7)),
    ("dedupe4", EtlConfig(resample="auto", power_user_quantile=0.9, drop_power_users=False)),
    ("etl", EtlConfig(**DROP, resample="balanced", power_user_threshold=3)),
    ("etl", EtlConfig(**DROP, resample="balanced:0.9", power_user_threshold=3, seed=3)),
    ("etl", EtlConfig(resample="natural", power_user_threshold=3, drop_power_users=False)),
    ("etl", EtlConfig(**DROP, resample="auto", power_user_threshold=1)),  # all resampled empty
    ("etl", EtlConfig(resample="natural", power_user_threshold=3, holdout_users=0.5, seed=1)),
]


@pytest.mark.spark
@pytest.mark.parametrize("case", range(len(CASES)))
def test_driver_and_spark_join_the_same_way(spark, sources, monkeypatch, case):
    name, cfg = CASES[case]
    tmp, built = sources
    root = join(tmp, f"join{case}")
    got = {e: _join(spark, monkeypatch, built[name], cfg, root, e) for e in ("spark", "driver")}
    assert_same_join(got["spark"], got["driver"])
    # streamed in batches of 3 rows and buckets of users of ~4 rows (every other case with
    # id and user hashes that collide): the same outputs, and the counters saw a bucket at a time
    seen = []
    with monkeypatch.context() as mp:
        mp.setattr(dedupe_local, "BATCH_ROWS", 3)
        mp.setattr(splits_local, "BATCH_ROWS", 3)
        mp.setattr(splits_local, "BUCKET_ROWS", 4)
        if case % 2:
            mp.setattr(dedupe_local, "key_hashes", _colliding)
            mp.setattr(buckets, "bucket_of", lambda keys, n: np.zeros(len(keys), np.int64))
        mp.setattr(splits_local, "user_impressions_today",
                   lambda t: seen.append(t.num_rows) or user_impressions_today(t))
        small = _join(spark, mp, built[name], cfg, root + "-small", "driver")
    assert_same_join(got["spark"], small)
    rows = sum(footer_rows(f) for m in built[name] for f in
               source_layout.list_data_files(m["rows_path"]))
    assert len(seen) == -(-rows // 4) and sum(seen) <= rows
    assert max(seen) < rows or case % 2  # colliding user hashes: one bucket holds them all
    n = sum(footer_rows(f) for m in built[name] for k in ("rows_path", "ids_path")
            for f in source_layout.list_data_files(m[k]))
    assert (f"join_hours (Spark: {n} rows > 0 (PYTHIA_DRIVER_MAX_ROWS)): rows per split: "
            in got["spark"]["log"])
    assert (f"join_hours (driver, no JVM: {n} rows <= 1000000): rows per split: "
            in got["driver"]["log"])
    split = got["driver"]["split"]
    if name.startswith("dedupe4"):
        assert split["duplicates_across_tasks"]["rows"] == 6
    if name == "dedupe1":
        assert split["duplicates_across_tasks"]["rows"] == 7
        assert split["power_user_threshold"] == 24.0
    if cfg.holdout_users == 0.5:  # some users held out: both engines split the same rows off
        assert split["user_split_rows"]["train"] > 0 and split["user_split_rows"]["validation"]
    if case == len(CASES) - 2:
        assert split["rows"]["train"] == 0 and split["rows"]["test_natural"] == 8
        assert split["resample"] == "natural"
    if name == "etl" and cfg.drop_power_users and cfg.power_user_threshold == 3:
        assert split["power_user_rows"] == {"train": 7, "validation": 0, "test": 0}


@pytest.mark.spark
def test_keep_uniform_is_sparks_hash_with_a_seed(spark):
    from pyspark.sql import functions as F

    rng = random.Random(11)
    ids = [_random_text(rng) for _ in range(2000)] + [None, "", "a"]
    sdf = spark.createDataFrame([(i,) for i in ids], "impression_id string")
    for seed in (0, 3, 42, -5, 2**31 - 1, 2**31, -(2**31) - 1, 2**40):
        bits = 1 << 53
        want = [r[0] for r in sdf.select((F.pmod(F.xxhash64(F.col("impression_id"),
                                                              F.lit(seed)), F.lit(bits))
                                          .cast("double") / float(bits))).collect()]
        got = splits_local.keep_uniform(pa.array(ids, pa.string()), seed)
        assert got.tolist() == want, seed
    assert (got >= 0).all() and (got < 1).all()


@pytest.mark.spark
def test_spark_quantile_is_approx_quantile_with_no_error(spark):
    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 5, 10, 37, 100, 1001):
        values = rng.integers(1, 30, n)
        sdf = spark.createDataFrame([(int(v),) for v in values], "n long")
        qs = [0.0, 0.01, 0.1, 0.25, 1 / 3, 0.5, 0.9, 0.99, 0.999, 1.0]
        want = sdf.approxQuantile("n", qs, 0.0)
        assert [splits_local.spark_quantile(values, q) for q in qs] == want, n
    assert splits_local.spark_quantile(np.array([], np.int64), 0.5) is None


_NO_JVM = """
import json, sys
from pythia import buckets, etl, providers_local, source_layout
from pythia.config import RunParams
from pythia.paths import RunPaths
args = json.loads(sys.argv[1])
params = RunParams.build({"source": args["root"], "data_root": args["data"],
                          "allow_gaps": True}, model_names=("gbdt",))
paths = RunPaths(args["data"], "T", "1")
ms = [etl.run_hours(args["root"], h, args["window"], args["labels"], params, paths)
      for h in ([0], [1])]
split = etl.join_hours(ms, params, paths)[0]
print(json.dumps({"loaded": sorted(k for k in sys.modules if "spark" in k or "py4j" in k),
                  "rows": split["rows"]}))
"""


def test_join_hours_runs_on_the_driver_without_a_jvm(tmp_path):
    from test_etl_local import _small_source

    src, labels = _small_source(str(tmp_path / "src"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("SPARK_REMOTE", "PYTHIA_SPARK_MASTER", "PYTHIA_DRIVER_MAX_ROWS")}
    arg = json.dumps({"root": src.root, "data": str(tmp_path / "data"), "labels": labels,
                      "window": WINDOW.as_dict()})
    out = subprocess.run([sys.executable, "-c", _NO_JVM, arg], capture_output=True, text=True,
                         env=env, cwd=os.path.dirname(os.path.dirname(__file__)), check=True)
    lines = out.stdout.splitlines()
    # rows/ holds u1's 10 labelled rows, ids/ those and u2's 10 unlabelled
    assert any(line.startswith("join_hours (driver, no JVM: 30 rows, streamed): rows per split")
               for line in lines)
    got = json.loads(lines[-1])
    assert got["loaded"] == []  # pyspark never imported
    assert got["rows"]["test_natural"] == 2 and sum(got["rows"].values()) >= 2


def test_a_damaged_etl_table_on_the_driver_is_one_line_naming_it(tmp_path, monkeypatch):
    from test_etl_local import _small_source

    src, labels = _small_source(str(tmp_path / "src"))
    for var in ("SPARK_REMOTE", "PYTHIA_SPARK_MASTER", providers_local.DRIVER_MAX_ROWS_ENV):
        monkeypatch.delenv(var, raising=False)
    params = RunParams.build({"source": src.root, "data_root": str(tmp_path / "data"),
                              "allow_gaps": True}, model_names=("gbdt",))
    paths = RunPaths(str(tmp_path / "data"), "T", "1")
    with contextlib.redirect_stdout(io.StringIO()):
        ms = [etl.run_hours(src.root, h, WINDOW.as_dict(), labels, params, paths)
              for h in ([0], [1])]
    bad = source_layout.list_data_files(ms[1]["rows_path"])[0]
    data = bytearray(open(bad, "rb").read())
    with open(bad, "wb") as f:
        f.write(bytes(data[: len(data) // 2]))  # cut short: no footer
    with pytest.raises(ValueError) as err, contextlib.redirect_stdout(io.StringIO()):
        etl.join_hours(ms, params, paths)
    text = str(err.value)
    assert "\n" not in text and text.startswith(bad) and "may hold only Parquet files" in text


def test_the_spill_is_a_swept_scratch_folder_removed_on_exit(tmp_path, monkeypatch):
    """Spilled buckets go to a ``pythia.scratch`` folder under $TMPDIR: a killed task's spill
    is swept when the next spill starts, and this one's goes on exit, by an exception too."""
    from test_scratch import is_locked, leave_dead_scratch

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches $TMPDIR
    stale = leave_dead_scratch(str(tmp_path), "pythia-splits-", 100)
    schema = pa.schema([("user_id", pa.string()), ("n", pa.int64())])
    rows = pa.table([[f"u{i}" for i in range(50)], list(range(50))], schema=schema)
    with splits_local._Spill(3, "pythia-splits-") as spill:
        [folder] = os.listdir(tmp_path)  # the dead task's is gone
        assert folder.startswith("pythia-splits-") and is_locked(str(tmp_path / folder))
        spill.add(rows)
        got = [spill.take(k, schema) for k in range(3)]
    assert not os.path.exists(stale[0]) and os.listdir(tmp_path) == []
    assert sorted(n for t in got for n in t["n"].to_pylist()) == list(range(50))
    with pytest.raises(RuntimeError, match="a failed pass"):
        with splits_local._Spill(3, "pythia-splits-") as spill:
            spill.add(rows)
            assert len(os.listdir(tmp_path)) == 1
            raise RuntimeError("a failed pass")
    assert os.listdir(tmp_path) == []
