"""to_tfrecords on the driver (``tfrecords.writer_local``) against the Spark path (``writer``).

Both engines convert the same split Parquets: hand-made ones (nulls, "", NaN and ±inf, values
unseen in train, unicode ids, an empty split, a one-row split, an empty region), written by
Spark (several part files) and by pyarrow (small row groups), and the tiny world's splits as
join_hours writes them with Spark and on the driver. The Spark path names shards after the rank
of their Parquet row group, which the driver reproduces, so the comparison is exact on every
level: encoders.json and feature_spec.json, the manifests (paths aside), each shard's bytes
(sha256) and the parsed records per split. Then the step's choice of engine, a subprocess that
imports no pyspark/py4j, S3, and one-line errors.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pythia import providers_local, storage, tfrecords
from pythia.tfrecords import layout, permute, reader, writer_local

from s3_fixtures import moto_s3, s3_env  # noqa: F401  (S3 fixtures, imported where needed)
from test_tfrecords import NUMS, by_id, reference, split_frame, with_edge_values

SPLITS = layout.SPLITS


def edge_frames() -> dict[str, pd.DataFrame]:
    """train with nulls, "", NaN and ±inf; validation with values unseen in train; a one-row
    split; an empty split (APAC only in train: an empty region elsewhere)."""
    train = split_frame(300, 1, regions=("NA", "EU", "APAC"))
    train.loc[0:9, "site_or_app"] = None
    train.loc[10:14, "device_model"] = ""
    train.loc[15, NUMS[0]] = np.nan
    train.loc[16, NUMS[0]] = np.inf
    train.loc[17, NUMS[1]] = -np.inf
    return {"train": train, "validation": with_edge_values(split_frame(120, 2)),
            "test_resampled": split_frame(1, 3), "test_natural": split_frame(5, 4).iloc[:0]}


def write_inputs(spark, frames: dict[str, pd.DataFrame], root: str, how: str) -> dict:
    paths = {}
    for name, df in frames.items():
        paths[name] = os.path.join(root, name)
        if how == "spark":
            # an empty pandas frame has no types to infer: one row, then none of it
            sdf = spark.createDataFrame(df if len(df) else split_frame(1, 9)).repartition(3)
            (sdf if len(df) else sdf.limit(0)).write.parquet(paths[name])
        else:
            os.makedirs(paths[name])
            table = pa.Table.from_pandas(df, preserve_index=False)
            # the first rows in the second file: shard order is not row order
            pq.write_table(table.slice(7), os.path.join(paths[name], "part-0.parquet"),
                           row_group_size=64)
            pq.write_table(table.slice(0, 7), os.path.join(paths[name], "part-1.parquet"))
    return paths


def _session(spark, started: list):
    @contextlib.contextmanager
    def session(name, *_a, **_k):
        started.append(name)
        yield spark
    return session


def both(spark, split_paths: dict, root: str, **kw) -> dict:
    """Spark's and the driver's conversion of the same splits, under ``root``."""
    out = {}
    for engine in ("spark", "driver"):
        dest = os.path.join(root, f"tfr-{engine}")
        if engine == "spark":
            out[engine] = tfrecords.convert_splits(spark, split_paths, dest, **kw)
        else:
            out[engine] = writer_local.convert_splits(split_paths, dest, **kw)
    return out


def assert_same(runs: dict, frames: dict[str, pd.DataFrame] | None = None) -> None:
    (m_s, enc_s), (m_d, enc_d) = runs["spark"], runs["driver"]
    assert enc_d.to_json() == enc_s.to_json()
    for key in ("encoders", "feature_spec"):
        assert storage.read_json(m_d[key]) == storage.read_json(m_s[key])
    as_text = json.dumps(m_s, sort_keys=True).replace(m_s["root"], "ROOT")
    assert json.dumps(m_d, sort_keys=True).replace(m_d["root"], "ROOT") == as_text
    assert layout.read_manifest(m_d["root"]) == m_d
    for split in SPLITS:
        got = {e: reader.load_numpy(runs[e][0], split, verify=True) for e in runs}
        assert got["driver"].keys() == got["spark"].keys()
        for k in got["spark"]:
            np.testing.assert_array_equal(got["driver"][k], got["spark"][k], err_msg=k)
        if frames is not None and len(frames[split]):
            want = by_id(reference(frames[split], enc_d))
            assert by_id(got["driver"]) == want


@pytest.mark.spark
@pytest.mark.parametrize("how,compression,shuffle", [
    ("spark", None, None), ("arrow", None, None), ("arrow", "GZIP", None), ("spark", None, 7)])
def test_both_engines_write_the_same_files(spark, tmp_path, how, compression, shuffle):
    frames = edge_frames()
    split_paths = write_inputs(spark, frames, str(tmp_path / "in"), how)
    runs = both(spark, split_paths, str(tmp_path), shard_rows=40, compression=compression,
                shuffle_seed=shuffle)
    assert_same(runs, frames)
    assert runs["spark"][0]["shuffle"] == (shuffle and {"seed": shuffle,
                                                        "rule": permute.SHUFFLE_RULE})
    m = runs["driver"][0]
    assert [m["splits"][s]["rows"] for s in SPLITS] == [len(frames[s]) for s in SPLITS]
    empty = dict(m["splits"]["test_natural"])
    source = empty.pop("source")  # the Parquet the (no) shards came from, checked by readers
    assert empty == {"rows": 0, "shards": [], "rows_by_region": {"APAC": 0, "EU": 0, "NA": 0}}
    assert source["uri"] == split_paths["test_natural"] and source["files"]
    assert sum(sum(f["row_groups"]) for f in m["splits"]["train"]["source"]["files"]) == 300
    assert m["splits"]["validation"]["rows_by_region"]["APAC"] == 0
    stats = runs["driver"][1].numeric  # ±inf and NaN left out of the statistics
    finite = frames["train"][NUMS[0]].to_numpy(np.float64)
    finite = finite[np.isfinite(finite)]
    assert stats[NUMS[0]].mean == pytest.approx(finite.mean(), rel=1e-12)
    assert stats[NUMS[0]].std == pytest.approx(finite.std(), rel=1e-12)


def test_driver_rewrite_removes_stale_shards_and_fails_on_bad_input(tmp_path):
    frames = edge_frames()
    split_paths = write_inputs(None, frames, str(tmp_path / "in"), "arrow")
    out = str(tmp_path / "tfr")
    first, enc = writer_local.convert_splits(split_paths, out, shard_rows=10)
    stale = os.path.join(out, "split=train", "region=NA", "part-00099-0000.tfrecord")
    leftover = os.path.join(out, "split=train", "region=NA", ".tmp-dead-part-00000-0000.tfrecord")
    for f in (stale, leftover):
        open(f, "wb").close()
    again, _ = writer_local.convert_splits(split_paths, out, shard_rows=10)
    assert again == first and not os.path.exists(stale) and not os.path.exists(leftover)

    bad = dict(split_paths, train=str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="no Parquet files under .*nothing"):
        writer_local.convert_splits(bad, out)
    pq.write_table(pa.Table.from_pandas(frames["train"].drop(columns=["browser"]),
                                        preserve_index=False),
                   os.path.join(split_paths["validation"], "part-2.parquet"))
    with pytest.raises(ValueError, match=r"part-2.parquet lacks column\(s\) \['browser'\]"):
        writer_local.convert_splits(split_paths, out)
    # a split from before a derived feature existed (a resumed old run): the fix is named
    pq.write_table(pa.Table.from_pandas(frames["train"].drop(columns=["region_device_make"]),
                                        preserve_index=False),
                   os.path.join(split_paths["validation"], "part-2.parquet"))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['region_device_make'\] needed "
                                         r"for TFRecords; .* run the ETL again"):
        writer_local.convert_splits(split_paths, out)
    empty_train = dict(split_paths, train=split_paths["test_natural"])
    with pytest.raises(ValueError, match="the train split has no rows"):
        writer_local.convert_splits(dict(empty_train, validation=split_paths["train"]), out)
    frames["validation"].loc[3, "y_age"] = None
    split_paths = write_inputs(None, {"validation": frames["validation"]},
                               str(tmp_path / "in2"), "arrow")
    with pytest.raises(ValueError, match="y_age is null in 1 row"):
        writer_local.write_split_files(split_paths["validation"], enc, out,
                                       "validation")


def _params(**kw):
    return types.SimpleNamespace(etl=types.SimpleNamespace(age_edges=(18, 25, 35, 45, 55, 65)),
                                 spark_master=None, seed=3, **kw)


@pytest.mark.spark
def test_the_step_picks_its_engine_and_says_why(spark, tmp_path, monkeypatch):
    split_paths = write_inputs(None, edge_frames(), str(tmp_path / "in"), "arrow")
    n = sum(len(f) for f in edge_frames().values())
    started: list = []
    monkeypatch.setattr("pythia.etl.session.spark_session", _session(spark, started))
    for var in ("SPARK_REMOTE", "PYTHIA_SPARK_MASTER", providers_local.DRIVER_MAX_ROWS_ENV):
        monkeypatch.delenv(var, raising=False)
    results = {}
    for case, env in (("driver", {}), ("limit", {providers_local.DRIVER_MAX_ROWS_ENV: "0"}),
                      ("cluster", {"SPARK_REMOTE": "sc://nowhere:15002"})):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        log = io.StringIO()
        paths = types.SimpleNamespace(tfrecords=str(tmp_path / case))
        with contextlib.redirect_stdout(log):
            results[case] = tfrecords.convert({"paths": split_paths}, _params(), paths)
        for k in env:
            monkeypatch.delenv(k)
        lines = log.getvalue().splitlines()
        assert len(lines) == 1  # the engine and what the step did: one line
        results[case + "-log"] = lines[0]
    assert started == ["pythia-tfrecords", "pythia-tfrecords"]
    assert results["driver-log"].startswith(
        f"to_tfrecords (driver, no JVM: {n} rows, streamed): ")
    assert results["limit-log"].startswith(
        f"to_tfrecords (Spark: {n} rows > 0 (PYTHIA_DRIVER_MAX_ROWS)): ")
    assert results["cluster-log"].startswith("to_tfrecords (Spark (remote sc://nowhere:15002)): ")
    assert all(results[f"{c}-log"].endswith("rows: train 300, validation 120, test_resampled 1, "
                                            "test_natural 0") for c in ("driver", "limit"))
    for case in ("limit", "cluster"):
        assert results[case][1] == results["driver"][1]  # encoders as JSON
        same = json.dumps(results[case][0]).replace(str(tmp_path / case), "ROOT")
        assert json.dumps(results["driver"][0]).replace(str(tmp_path / "driver"), "ROOT") == same
    assert results["driver"][0]["shuffle"]["seed"] == 3  # the run's seed, recorded


_NO_JVM = """
import json, sys, types
from pythia import tfrecords
args = json.loads(sys.argv[1])
params = types.SimpleNamespace(etl=types.SimpleNamespace(age_edges=(18, 25, 35, 45, 55, 65)),
                               spark_master=None, seed=0)
m, enc = tfrecords.convert({"paths": args["splits"]}, params,
                           types.SimpleNamespace(tfrecords=args["out"]))
print(json.dumps({"loaded": sorted(k for k in sys.modules if "spark" in k or "py4j" in k),
                  "rows": m["splits"]["train"]["rows"]}))
"""


def test_the_step_runs_on_the_driver_without_a_jvm(tmp_path):
    frames = edge_frames()
    split_paths = write_inputs(None, frames, str(tmp_path / "in"), "arrow")
    env = {k: v for k, v in os.environ.items()
           if k not in ("SPARK_REMOTE", "PYTHIA_SPARK_MASTER", "PYTHIA_DRIVER_MAX_ROWS")}
    arg = json.dumps({"splits": split_paths, "out": str(tmp_path / "tfr")})
    out = subprocess.run([sys.executable, "-c", _NO_JVM, arg], capture_output=True, text=True,
                         env=env, cwd=os.path.dirname(os.path.dirname(__file__)), check=True)
    lines = out.stdout.splitlines()
    assert lines[0].startswith("to_tfrecords (driver, no JVM: ") and \
        lines[0].endswith("rows: train 300, validation 120, test_resampled 1, test_natural 0")
    assert json.loads(lines[-1]) == {"loaded": [], "rows": 300}  # pyspark never imported


def test_the_driver_writes_to_s3(tmp_path, s3_env, moto_s3):  # noqa: F811
    frames = edge_frames()
    split_paths = write_inputs(None, frames, str(tmp_path / "in"), "arrow")
    local, enc_local = writer_local.convert_splits(split_paths, str(tmp_path / "tfr"),
                                                   shard_rows=40)
    root = s3_env["PYTHIA_DATA_ROOT"] + "/tfr-local"
    remote, enc_remote = writer_local.convert_splits(split_paths, root, shard_rows=40)
    assert enc_remote.to_json() == enc_local.to_json()
    assert (json.dumps(remote).replace(root, "ROOT")
            == json.dumps(local).replace(str(tmp_path / "tfr"), "ROOT"))
    keys = moto_s3.keys()
    assert any(k.endswith("tfr-local/manifest.json") for k in keys)
    assert not any(".tmp-" in k for k in keys)
    got = reader.load_numpy(remote, "validation", verify=True)
    assert by_id(got) == by_id(reference(frames["validation"], enc_remote))


# ---------------------------------------------------------------- the tiny world

def join_tiny_both_engines(spark, tmp: str, overrides: dict | None = None
                           ) -> tuple[list[dict], dict, str, list]:
    """The tiny world's hourly ETL (once), then join_hours with Spark (``spark``: this test
    session) and on the driver: (hourly manifests, {engine: split manifest}, source folder,
    the Spark sessions started)."""
    from pythia import etl, models, providers, source
    from pythia.config import RunParams
    from pythia.paths import RunPaths

    params = RunParams.build({"source": "synthetic://tiny", "data_root": tmp, **(overrides or {})},
                             model_names=models.MODEL_NAMES).compiled()
    mp = pytest.MonkeyPatch()
    started: list = []
    mp.setattr("pythia.etl.session.spark_session", _session(spark, started))
    for var in ("SPARK_REMOTE", "PYTHIA_SPARK_MASTER", providers_local.DRIVER_MAX_ROWS_ENV):
        mp.delenv(var, raising=False)
    out = {}
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            paths = RunPaths(tmp, "Tiny", "1")
            src, window, _ = source.resolve(params, scheduled=False)
            _, provider_map, _ = providers.choose(src, params, paths)
            labels = providers.run(src, provider_map, params, paths)
            hours = [etl.run_hours(src, h, window, labels, params, paths)
                     for h in params.hour_groups]
            for engine, limit in (("spark", "0"), ("driver", "4000000")):
                mp.setenv(providers_local.DRIVER_MAX_ROWS_ENV, limit)
                out[engine] = etl.join_hours(hours, params, RunPaths(tmp, "Tiny", engine))[0]
    finally:
        mp.undo()
    return hours, out, src, started


@pytest.fixture(scope="module")
def tiny_splits(spark, tmp_path_factory):
    """The tiny world's splits as join_hours writes them with Spark and on the driver."""
    tmp = str(tmp_path_factory.mktemp("tiny"))
    _, out, _, started = join_tiny_both_engines(spark, tmp)
    assert started == ["pythia-splits"]
    return tmp, out


@pytest.mark.spark
@pytest.mark.parametrize("join_engine", ["spark", "driver"])
def test_tiny_world_splits_convert_the_same_on_both_engines(spark, tiny_splits, join_engine):
    tmp, split_manifests = tiny_splits
    split_paths = dict(split_manifests[join_engine]["paths"])
    runs = both(spark, split_paths, os.path.join(tmp, f"from-{join_engine}"))
    assert_same(runs)
    m = runs["driver"][0]
    assert m["splits"]["train"]["rows"] > 0
    assert sum(len(s["shards"]) for s in m["splits"].values()) > len(SPLITS)


@pytest.mark.parametrize("kind", ["float32", "float64", "wide", "few"])
def test_numeric_moments_are_exact_whatever_the_partitioning(kind):
    """Both engines' statistics rest on ``layout.moments``: exact sums (checked against
    rationals), so any split into batches and any merge order give the same bits."""
    from fractions import Fraction

    rng = np.random.default_rng(7)
    x = {"float32": rng.normal(size=5000).astype(np.float32).astype(np.float64),
         "float64": rng.normal(size=5000) * 1e3,
         "wide": rng.normal(size=5000) * 10.0 ** rng.integers(-40, 40, 5000),
         "few": np.sin(rng.integers(0, 24, 5000) * np.pi / 12) * 1e-3}[kind]
    x[:3] = [np.nan, np.inf, -np.inf]
    finite = [Fraction(v) for v in x[3:].tolist()]
    whole = layout.moments(pa.array(x))
    assert whole[0] == len(finite)
    assert sum(map(Fraction, whole[1])) == sum(finite)
    assert sum(map(Fraction, whole[2])) == sum(v * v for v in finite)
    cuts = sorted(rng.choice(len(x), 6, replace=False))
    parts = [layout.moments(pa.array(p)) for p in np.split(rng.permutation(x), cuts)]
    merged = layout.NO_MOMENTS
    for p in parts[::-1]:
        merged = layout.merge_moments(merged, p)
    assert layout.numeric_stats("x", merged) == layout.numeric_stats("x", whole)
    mean = sum(finite) / len(finite)
    assert layout.numeric_stats("x", whole).mean == float(mean)
