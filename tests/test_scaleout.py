"""Scale-out path: S3 (a moto server speaking the real protocol), Spark <-> S3, Spark Connect,
Metaflow's code package, and compiling the flow to Airflow / Argo.

Nothing here mocks pythia: storage, Metaflow and Spark talk to real servers on 127.0.0.1.
Metaflow's client is read in a subprocess with the S3 environment, because Metaflow reads its
configuration once per process at import time.
"""
from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from s3_fixtures import (BUCKET, DUMMY_KEY_ID, DUMMY_SECRET, moto_s3, s3_env,  # noqa: F401
                         s3_environment)

from pythia import spark_s3, storage

REPO = Path(__file__).resolve().parent.parent
FLOW = REPO / "flows" / "demo_flow.py"
STEPS = ["start", "select_providers", "prepare_labels", "etl_hour", "join_hours",
         "to_tfrecords", "train", "evaluate", "end"]


def _subprocess_env(env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **env, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}


def _client(env: dict[str, str], code: str, cwd: Path) -> object:
    """Run ``code`` (which sets ``out``) with the Metaflow client in a fresh process; JSON back."""
    script = "import json\nfrom metaflow import namespace\nnamespace(None)\n" + code + \
        "\nprint('@@' + json.dumps(out, default=str))\n"
    proc = subprocess.run([sys.executable, "-c", script], env=_subprocess_env(env), cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("@@")][-1]
    return json.loads(line[2:])


# ------------------------------------------------------------------ pythia.storage on S3

def test_storage_round_trips_on_s3(s3_env, moto_s3, tmp_path):
    root = s3_env["PYTHIA_DATA_ROOT"] + "/storage"
    storage.write_bytes_atomic(root + "/a/blob.bin", b"\x00\x01pythia")
    storage.write_json_atomic(root + "/a/doc.json", {"rows": 3, "ok": True})
    assert storage.read_bytes(root + "/a/blob.bin") == b"\x00\x01pythia"
    assert storage.read_json(root + "/a/doc.json") == {"rows": 3, "ok": True}
    assert storage.exists(root + "/a/doc.json") and not storage.exists(root + "/nope.json")

    with storage.staged_dir(root + "/staged") as d:
        Path(d, "part-0.txt").write_text("zero")
        Path(d, "sub").mkdir()
        Path(d, "sub", "part-1.txt").write_text("one")
    local = tmp_path / "up"
    (local / "x").mkdir(parents=True)
    (local / "x" / "y.txt").write_text("uploaded")
    assert storage.upload_dir(str(local), root + "/up") == [root + "/up/x/y.txt"]

    assert storage.list_files(root) == sorted([
        root + "/a/blob.bin", root + "/a/doc.json", root + "/staged/part-0.txt",
        root + "/staged/sub/part-1.txt", root + "/up/x/y.txt"])
    # what pyarrow wrote is what the S3 API lists (no folder markers, no temp names)
    assert moto_s3.keys("pythia/storage/") == sorted(
        u.split(f"s3://{BUCKET}/", 1)[1] for u in storage.list_files(root))

    down = storage.download_dir(root + "/staged", str(tmp_path / "down"))
    assert Path(down, "sub", "part-1.txt").read_text() == "one"
    with storage.local_copy(root + "/up") as copy:
        assert Path(copy, "x", "y.txt").read_text() == "uploaded"
    assert not Path(copy).exists()  # the temporary copy is cleaned up


def test_storage_on_s3_fails_clearly(s3_env, moto_s3):
    root = s3_env["PYTHIA_DATA_ROOT"] + "/failing"
    with pytest.raises(FileNotFoundError, match="failing/missing.json"):
        storage.read_json(root + "/missing.json")
    # a writer that dies publishes nothing
    with pytest.raises(RuntimeError, match="boom"):
        with storage.staged_dir(root + "/half") as d:
            Path(d, "part-0").write_text("half")
            raise RuntimeError("boom")
    assert moto_s3.keys("pythia/failing/") == []
    assert storage.list_files(root + "/half") == []


# ------------------------------------------------------------------ Metaflow on the S3 datastore

TINY_FLOW = '''
from metaflow import FlowSpec, Parameter, schedule, step


@schedule(daily=True)  # only schedulers read it; a plain `run` must ignore it
class TinyS3Flow(FlowSpec):
    """start -> square (foreach) -> join -> end, on whatever datastore is configured."""

    n = Parameter("n", default=3, type=int)

    @step
    def start(self):
        self.items = list(range(self.n))
        self.next(self.square, foreach="items")

    @step
    def square(self):
        self.sq = self.input ** 2
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.sq for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        print("total", self.total)


if __name__ == "__main__":
    TinyS3Flow()
'''


def test_metaflow_runs_on_moto_s3(s3_env, moto_s3, tmp_path):
    from metaflow import Runner
    flow = tmp_path / "tiny_s3_flow.py"
    flow.write_text(TINY_FLOW)
    with Runner(str(flow), show_output=False, env=s3_env, cwd=str(tmp_path)) as runner:
        result = runner.run(n=4)
        assert result.status == "successful", result.stderr[-3000:]
        run_id = result.run.id
    out = _client(s3_env, f"from metaflow import Run\nr = Run('TinyS3Flow/{run_id}')\n"
                          "out = {'total': r.data.total, 'ok': r.successful, "
                          "'ds': r['end'].task.metadata_dict.get('ds-type')}", tmp_path)
    assert out == {"total": 0 + 1 + 4 + 9, "ok": True, "ds": "s3"}
    keys = moto_s3.keys("metaflow/TinyS3Flow/")
    assert any("/data/" in k for k in keys), keys[:10]  # artifacts (content-addressed)
    assert any(f"/{run_id}/end/" in k for k in keys)  # task metadata/logs of this run
    # the local sysroot only holds the (local) metadata; every artifact blob went to S3
    local = [p for p in Path(s3_env["METAFLOW_DATASTORE_SYSROOT_LOCAL"]).rglob("*")
             if p.is_file()]
    assert any("_meta" in p.parts for p in local)
    assert not [p for p in local if "data" in p.parts], "artifact blobs on local disk"


# ------------------------------------------------------------------ Spark <-> S3 settings

def test_s3a_paths_and_conf(s3_env):
    assert spark_s3.to_s3a("s3://b/k/x.parquet") == "s3a://b/k/x.parquet"
    assert spark_s3.to_s3a("/tmp/x") == "/tmp/x"
    assert spark_s3.from_s3a("s3a://b/k") == "s3://b/k"
    conf = spark_s3.s3a_conf("http://127.0.0.1:9000")
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.endpoint.region"] == "us-east-1"
    assert conf["spark.hadoop.fs.s3a.aws.credentials.provider"] == \
        spark_s3.DEFAULT_CREDENTIALS_PROVIDER
    # credentials are in the environment, but never in Spark's settings
    text = json.dumps(conf)
    assert DUMMY_SECRET not in text and DUMMY_KEY_ID not in text
    assert not any("secret" in k or "access.key" in k for k in conf)
    aws = spark_s3.s3a_conf(None)
    assert "spark.hadoop.fs.s3a.endpoint" not in aws  # AWS itself: SDK picks the endpoint
    assert spark_s3.describe({"spark.hadoop.fs.s3a.secret.key": "x"}).endswith("=***")


def test_s3a_conf_rejects_endpoint_without_scheme():
    with pytest.raises(ValueError, match="127.0.0.1:9000"):
        spark_s3.s3a_conf("127.0.0.1:9000")


def test_find_s3a_jars_needs_both_jars(tmp_path, monkeypatch):
    monkeypatch.delenv(spark_s3.JARS_DIR_ENV, raising=False)
    (tmp_path / "hadoop-aws-3.5.0.jar").write_bytes(b"")
    assert spark_s3.find_s3a_jars(str(tmp_path)) == spark_s3.find_s3a_jars()  # pyspark's own
    (tmp_path / "bundle-2.29.52.jar").write_bytes(b"")
    assert spark_s3.find_s3a_jars(str(tmp_path)) == [str(tmp_path / "hadoop-aws-3.5.0.jar"),
                                                     str(tmp_path / "bundle-2.29.52.jar")]
    assert spark_s3.session_conf_for("/local/only") == {}


def test_hadoop_version_matches_pyspark_jars():
    version = spark_s3.hadoop_version()
    assert version and version[0].isdigit() and version.count(".") == 2


@pytest.fixture(scope="module")
def local_spark(spark):
    """conftest's shared local[1] session (the shape pythia.etl uses). Not stopped here: a
    module's own getOrCreate() would return that same session, and stopping it would stop it
    for every later test module."""
    return spark


@pytest.mark.spark
def test_spark_parquet_round_trip_on_s3_via_staging(s3_env, moto_s3, local_spark):
    """Without the S3A jars a local session still reads/writes S3 by staging (the fallback)."""
    if spark_s3.s3a_available(local_spark):
        pytest.skip("this session has S3A; test_spark_s3a_round_trip covers it")
    uri = s3_env["PYTHIA_DATA_ROOT"] + "/spark/table"
    df = local_spark.createDataFrame([(i, f"u{i}", i % 3) for i in range(50)],
                                     "id long, user string, hour int")
    with spark_s3.spark_writable(local_spark, uri) as target:
        assert not target.startswith("s3")
        df.write.mode("overwrite").partitionBy("hour").parquet(target)
    keys = moto_s3.keys("pythia/spark/table/")
    assert any(k.startswith("pythia/spark/table/hour=2/") and k.endswith(".parquet")
               for k in keys), keys
    assert not any(k.endswith(".crc") for k in keys)
    with spark_s3.spark_readable(local_spark, uri) as src:
        back = local_spark.read.parquet(src).orderBy("id").collect()
    assert [(r.id, r.user, r.hour) for r in back] == [(i, f"u{i}", i % 3) for i in range(50)]
    # pyarrow (pythia.storage) reads what Spark wrote: one format, two engines
    from pythia.storage import read_frame as read_table
    assert len(read_table(uri)) == 50


@pytest.mark.spark
def test_spark_read_path_stages_files_and_folders(s3_env, moto_s3, local_spark):
    """The drop-in for lazy ``spark.read`` calls (etl.io, contract.read_table) on S3."""
    if spark_s3.s3a_available(local_spark):
        pytest.skip("this session has S3A: spark_read_path returns s3a:// paths")
    import pyarrow as pa
    import pyarrow.parquet as pq
    root = s3_env["PYTHIA_DATA_ROOT"] + "/readpath"
    for i in range(2):
        buf = pa.BufferOutputStream()
        pq.write_table(pa.table({"x": [i * 10 + k for k in range(5)]}), buf)
        storage.write_bytes_atomic(f"{root}/t/part-{i}.parquet", buf.getvalue().to_pybytes())
    folder = local_spark.read.parquet(spark_s3.spark_read_path(local_spark, root + "/t"))
    single = local_spark.read.parquet(
        spark_s3.spark_read_path(local_spark, root + "/t/part-1.parquet"))
    assert sorted(r.x for r in folder.collect()) == list(range(5)) + list(range(10, 15))
    assert sorted(r.x for r in single.collect()) == list(range(10, 15))
    assert spark_s3.spark_read_path(local_spark, "/some/local/path") == "/some/local/path"
    with pytest.raises(FileNotFoundError, match="readpath/absent"):
        spark_s3.spark_read_path(local_spark, root + "/absent")


@pytest.mark.spark
def test_spark_writable_publishes_nothing_on_failure(s3_env, moto_s3, local_spark):
    uri = s3_env["PYTHIA_DATA_ROOT"] + "/spark/failed"
    with pytest.raises(RuntimeError, match="killed"):
        with spark_s3.spark_writable(local_spark, uri) as target:
            local_spark.range(5).write.parquet(target)
            raise RuntimeError("killed mid-write")
    assert moto_s3.keys("pythia/spark/failed/") == []


def test_staging_refuses_a_cluster_session():
    """Staging through local disk is wrong on a cluster (executors do not share it)."""
    class _Ctx:
        master = "spark://spark-master:7077"

    class _ClusterSession:  # a stand-in for pyspark's session: only what the check reads
        sparkContext = _Ctx()

    with pytest.raises(RuntimeError, match="no S3A connector"):
        spark_s3._require_local_mode(_ClusterSession(), "s3://b/k")


@pytest.mark.spark
def test_spark_s3a_round_trip(s3_env, moto_s3, tmp_path):
    """Real s3a:// on the moto server; runs where the hadoop-aws + AWS SDK jars are present."""
    conf = spark_s3.s3a_session_conf(s3_env["AWS_ENDPOINT_URL_S3"])
    if conf is None:
        pytest.skip(f"no S3A jars (hadoop-aws-{spark_s3.hadoop_version()} + AWS SDK bundle) "
                    f"in ${spark_s3.JARS_DIR_ENV} or pyspark/jars, and no "
                    f"${spark_s3.PACKAGES_ENV}")
    code = (
        "import json, sys\nfrom pyspark.sql import SparkSession\n"
        "conf = json.loads(sys.argv[1])\n"
        "b = SparkSession.builder.master('local[1]').config('spark.ui.enabled', 'false')\n"
        "for k, v in conf.items(): b = b.config(k, v)\n"
        "s = b.getOrCreate()\n"
        f"s.range(20).write.mode('overwrite').parquet('s3a://{BUCKET}/pythia/s3a/t')\n"
        f"print('@@', s.read.parquet('s3a://{BUCKET}/pythia/s3a/t').count())\n")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(conf)],
                          env=_subprocess_env(s3_env), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "@@ 20" in proc.stdout
    assert any(k.endswith(".parquet") for k in moto_s3.keys("pythia/s3a/t/"))


# ------------------------------------------------------------------ Spark Connect

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Spark Connect server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"Spark Connect server not listening on {port} after {timeout}s")


@pytest.fixture(scope="module")
def connect_url(tmp_path_factory):
    """A Spark Connect server (pyspark's own spark-connect jar) on 127.0.0.1; stopped after."""
    import pyspark
    home = os.path.dirname(pyspark.__file__)
    port = _free_port()
    log = tmp_path_factory.mktemp("connect") / "server.log"
    env = {**os.environ, "SPARK_HOME": home, "PYSPARK_PYTHON": sys.executable,
           "PYTHONPATH": str(REPO)}
    cmd = [os.path.join(home, "bin", "spark-submit"), "--master", "local[1]",
           "--driver-memory", "1g",
           "--conf", "spark.ui.enabled=false",
           "--conf", "spark.sql.shuffle.partitions=2",
           "--conf", "spark.sql.session.timeZone=UTC",
           "--conf", f"spark.connect.grpc.binding.port={port}",
           "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
           "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
           "spark-internal"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        _wait_for_port(port, proc, timeout=180)
        yield f"sc://127.0.0.1:{port}"
    finally:
        # spark-submit execs a JVM in the same (new) process group: stop the group by its id
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


# The client side runs in a subprocess: pyspark refuses a remote session in a process that
# already holds a classic one (other test modules keep theirs open).
CONNECT_ROUND_TRIP = """
import json
import pyarrow as pa, pyarrow.compute as pc
from pythia import spark_s3
from pythia.etl.session import get_spark

def add_ten(batches):
    for b in batches:
        yield pa.RecordBatch.from_arrays(
            [b.column("id"), pc.add(b.column("id"), 10), b.column("user")],
            names=["id", "id_plus_10", "user"])

spark = get_spark("pythia-connect-test")  # SPARK_REMOTE selects Spark Connect
out = {"connect": spark_s3._is_connect(spark)}
df = spark.createDataFrame([(i, "u%d" % (i % 4)) for i in range(30)], "id long, user string")
arrow = df.mapInArrow(add_ten, "id long, id_plus_10 long, user string")
out["counts"] = [[r.user, r["count"]] for r in arrow.groupBy("user").count().orderBy("user")
                 .collect()]
got = arrow.orderBy("id").toPandas()
out["diffs"] = sorted(set((got["id_plus_10"] - got["id"]).tolist()))
try:
    df.select("no_such_column").collect()
    out["bad_column"] = "accepted"
except Exception as exc:
    out["bad_column"] = type(exc).__name__ + ": " + str(exc)[:200]
spark.stop()
print("@@" + json.dumps(out))
"""

# prepare_labels + run_hours of the real ETL on a tiny sample source (hours 0-1).
ETL_RUN = """
import datetime as dt, json, sys
from pythia import providers
from pythia.config import DEFAULT_AGE_EDGES, Geography, Window
from pythia.etl.hourly import run_hours
from pythia.etl.session import get_spark
from pythia.paths import join

source, out_root = sys.argv[1], sys.argv[2]
spark = get_spark("pythia-etl-compare")
labels = providers.prepare_labels(spark, source, {"US": "lucid"}, DEFAULT_AGE_EDGES,
                                  join(out_root, "labels"), "acme")
manifest = run_hours(spark, source, [0, 1], Window(dt.date(2024, 3, 10)),
                     labels["labels_path"], join(out_root, "etl"),
                     join(out_root, "quarantine"), Geography(), False)
spark.stop()
print("@@" + json.dumps({"labels": labels["counts"], "manifest": manifest}, default=str))
"""


def _run_spark_script(code: str, args: list[str], extra_env: dict[str, str]) -> dict:
    env = _subprocess_env(extra_env)
    env.pop("SPARK_REMOTE", None)
    env.pop("PYTHIA_SPARK_MASTER", None)
    env.update(extra_env)
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads([x for x in proc.stdout.splitlines() if x.startswith("@@")][-1][2:])


@pytest.mark.spark
def test_spark_connect_round_trip_with_map_in_arrow(connect_url):
    out = _run_spark_script(CONNECT_ROUND_TRIP, [], {"SPARK_REMOTE": connect_url})
    assert out["connect"] is True
    assert out["counts"] == [["u0", 8], ["u1", 8], ["u2", 7], ["u3", 7]]
    assert out["diffs"] == [10]
    assert "no_such_column" in out["bad_column"] and out["bad_column"] != "accepted"


@pytest.mark.spark
@pytest.mark.slow
def test_etl_through_spark_connect_matches_local_mode(connect_url, tmp_path):
    """The hourly ETL (mapInArrow feature derivation, joins, writes) gives the same rows on a
    Spark Connect server as in local mode."""
    import datetime as dt
    from pythia.etl.sample import write_sample_source
    from pythia.storage import read_frame as read_table
    source = str(tmp_path / "source")
    write_sample_source(source, dt.date(2024, 3, 10), hours=[0, 1], n_users=24)
    local = _run_spark_script(ETL_RUN, [source, str(tmp_path / "local")], {})
    remote = _run_spark_script(ETL_RUN, [source, str(tmp_path / "connect")],
                               {"SPARK_REMOTE": connect_url})
    assert local["labels"] == remote["labels"]
    drop = ("path", "rows_path", "quarantine_path", "user_day_counts_path")

    def _counts(m: dict) -> str:
        return json.dumps({k: v for k, v in m.items() if not k.endswith(drop) and
                           "path" not in k}, sort_keys=True, default=str)
    assert _counts(local["manifest"]) == _counts(remote["manifest"])
    a = read_table(str(tmp_path / "local" / "etl" / "rows"))
    b = read_table(str(tmp_path / "connect" / "etl" / "rows"))
    assert len(a) > 0 and len(a) == len(b)
    cols = sorted(a.columns)
    a = a[cols].sort_values("impression_id").reset_index(drop=True)
    b = b[cols].sort_values("impression_id").reset_index(drop=True)
    import pandas as pd
    pd.testing.assert_frame_equal(a, b, check_dtype=False)


# ------------------------------------------------------------------ remote steps: code package

def test_code_package_ships_the_pythia_package(tmp_path):
    """`flows/pythia` is a symlink; Metaflow's package must contain the library itself."""
    pkg = tmp_path / "package.tgz"
    env = _subprocess_env({"METAFLOW_USER": "pythia",
                           "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path)})
    proc = subprocess.run([sys.executable, str(FLOW), "package", "save", str(pkg)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = set(tarfile.open(pkg).getnames())
    library = {str(p.relative_to(REPO)) for p in (REPO / "pythia").rglob("*.py")}
    assert "demo_flow.py" in names
    assert {"pythia/runs.py", "pythia/storage.py", "pythia/spark_s3.py"} <= names
    assert library <= names, sorted(library - names)
    assert not any(n.startswith(("flows/", "tests/", ".venv")) for n in names)
    # and the package's data (Metaflow packs only .py unless told: code_package.py)
    from pythia import code_package, stack
    data = {name for _, name in code_package.data_files()}
    assert {"pythia/data/geo.json", "pythia/data/log4j2-quiet.properties"} <= data <= names
    # a remote step imports pythia from the unpacked package, with no checkout on its path:
    # it reads the geography, and its code digest is this checkout's (pythia.stack)
    unpacked = tmp_path / "unpacked"
    tarfile.open(pkg).extractall(unpacked, filter="data")
    code = ("import pythia\nfrom pythia import stack\nfrom pythia.geo import countries\n"
            "print(pythia.__file__)\nprint(len(countries.default_region_map()))\n"
            "print(stack.code_version())\n")
    env = {k: v for k, v in _subprocess_env({}).items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=unpacked,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where, regions, digest = proc.stdout.split()
    assert Path(where).resolve().is_relative_to(unpacked.resolve())
    assert int(regions) > 200 and digest == stack.code_version()


@pytest.mark.slow
def test_the_flow_runs_from_its_code_package_alone(tmp_path):
    """What a remote step (Batch, Kubernetes) runs: the flow and the library as Metaflow
    packed them, with no checkout on the path. Here every step runs from the unpacked package
    on this machine; a marker in the unpacked code proves each task imported it."""
    pkg, unpacked = tmp_path / "package.tgz", tmp_path / "unpacked"
    env = {k: v for k, v in _subprocess_env({
        "METAFLOW_USER": "pythia", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path / "mf"),
        "METAFLOW_DEFAULT_DATASTORE": "local", "METAFLOW_DEFAULT_METADATA": "local",
        "PYTHIA_DATA_ROOT": str(tmp_path / "data"), "PYTHIA_CACHE": str(tmp_path / "worlds"),
        "PYTHIA_HOURS_PER_TASK": "12"}).items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(FLOW), "package", "save", str(pkg)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tarfile.open(pkg).extractall(unpacked, filter="data")
    with open(unpacked / "pythia" / "__init__.py", "a") as f:
        f.write("# the unpacked package\n")  # its code digest is no longer the checkout's
    from pythia import stack
    mine = stack.code_version(unpacked / "pythia")
    assert mine not in (None, stack.code_version())
    proc = subprocess.run(
        [sys.executable, "demo_flow.py", "--config", "config", str(FLOW.parent / "pythia.toml"),
         "run", "--source", "synthetic://tiny", "--models", "logreg", "--regions", "global",
         "--max_epochs", "1"], env=env, cwd=unpacked, capture_output=True, text=True,
        timeout=900)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    out = _client(env, "from metaflow import Flow\nrun = Flow('DemoFlow').latest_run\n"
                  "out = {'ok': run.successful, 'start': run.data.stack['pythia'],\n"
                  "       'fits': sorted({c['stack']['pythia'] for c in run.data.candidates}),\n"
                  "       'bundle': run.data.bundle_path}", tmp_path)
    assert out["ok"] and out["start"] == mine and out["fits"] == [mine]
    assert (Path(out["bundle"]) / "bundle.json").exists()


def test_code_package_forwards_pythia_settings_only():
    from pythia.code_package import forwarded_env
    assert forwarded_env({"PYTHIA_DATA_ROOT": "s3://b/p", "PYTHIA_CACHE": "s3://b/w",
                          "HOME": "/root", "AWS_SECRET_ACCESS_KEY": "x", "pythia_x": "1"}) == {
        "PYTHIA_CACHE": "s3://b/w", "PYTHIA_DATA_ROOT": "s3://b/p"}
    assert forwarded_env({}) == {}


def test_a_step_in_a_pod_refuses_its_own_folder_for_the_runs_files():
    from pythia.paths import check_remote_roots
    pod = {"METAFLOW_KUBERNETES_WORKLOAD": "1"}
    for env in ({}, {"PYTHIA_DATA_ROOT": "/tmp/x"}, {"AWS_BATCH_JOB_ID": ""}):  # not remote
        check_remote_roots("", "synthetic://tiny", env)
    with pytest.raises(ValueError, match=r"this step runs on Kubernetes, and the run's files "
                                         r"would go to .*/\.pythia/data, a folder of its own "
                                         r"container: pass --data_root s3://BUCKET/pythia or "
                                         r"export PYTHIA_DATA_ROOT"):
        check_remote_roots("", "s3://b/logs", pod)
    with pytest.raises(ValueError, match="runs on AWS Batch"):
        check_remote_roots("", "s3://b/logs", {"AWS_BATCH_JOB_ID": "job-1"})
    check_remote_roots("s3://b/p", "s3://b/logs", pod)  # --data_root
    check_remote_roots("", "s3://b/logs", dict(pod, PYTHIA_DATA_ROOT="s3://b/p"))
    with pytest.raises(ValueError, match=r"synthetic://tiny would be generated into .*worlds, "
                                         r"a folder of its own container: export PYTHIA_CACHE"):
        check_remote_roots("s3://b/p", "synthetic://tiny", pod)
    check_remote_roots("s3://b/p", "synthetic://tiny", dict(pod, PYTHIA_CACHE="s3://b/w"))


def test_a_later_step_in_a_pod_refuses_a_local_root_it_does_not_have(tmp_path):
    from pythia.paths import check_step_root
    pod, missing = {"AWS_BATCH_JOB_ID": "job-1"}, str(tmp_path / "not-here")
    check_step_root(missing, {})  # not in a pod: nothing to say
    check_step_root("s3://b/p", pod)
    check_step_root(str(tmp_path), pod)  # a folder every step mounts (EFS)
    with pytest.raises(ValueError, match=r"^this step runs on AWS Batch, and the run's files "
                                         r"are under .*/not-here, a folder this container does "
                                         r"not have .*pass --data_root s3://BUCKET/pythia"):
        check_step_root(missing, pod)


def test_the_step_after_start_stops_when_its_pod_lacks_starts_folder(tmp_path):
    """Every step flagged as on AWS Batch (``--with environment``), a hand-written local
    source and a local --data_root that start never creates: select_providers, the first step
    that writes there, stops in one line (before, it wrote into its own container)."""
    import datetime as dt

    from pythia.etl import sample
    source = str(tmp_path / "bidlogs")
    sample.write_sample_source(source, dt.date(2025, 6, 30), n_users=20, seed=1)
    env = _subprocess_env({"METAFLOW_USER": "pythia",
                           "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path / "mf"),
                           "METAFLOW_DEFAULT_DATASTORE": "local",
                           "METAFLOW_DEFAULT_METADATA": "local"})
    root = tmp_path / "launcher-only" / "data"
    proc = subprocess.run(
        [sys.executable, str(FLOW), "run", "--with",
         'environment:vars={"AWS_BATCH_JOB_ID": "job-1"}', "--source", source,
         "--data_root", str(root), "--models", "logreg", "--regions", "global"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "Step select_providers (task-id" in out or "select_providers/" in out
    assert (f"ValueError: this step runs on AWS Batch, and the run's files are under {root}, "
            "a folder this container does not have") in out, out[-3000:]


def test_the_start_step_in_a_pod_says_where_the_runs_files_must_go(tmp_path):
    """The flow's start step, as it would run in a Kubernetes pod with nothing exported."""
    env = {k: v for k, v in _subprocess_env({
        "METAFLOW_USER": "pythia", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path / "mf"),
        "METAFLOW_DEFAULT_DATASTORE": "local", "METAFLOW_DEFAULT_METADATA": "local",
        "METAFLOW_KUBERNETES_WORKLOAD": "1"}).items() if k not in ("PYTHIA_DATA_ROOT",
                                                                  "PYTHIA_CACHE")}
    proc = subprocess.run([sys.executable, str(FLOW), "run", "--source", "s3://b/logs"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert ("ValueError: this step runs on Kubernetes, and the run's files would go to "
            f"{tmp_path}/.pythia/data, a folder of its own container") in proc.stdout + \
        proc.stderr


# ------------------------------------------------------------------ schedulers

def _scheduled_flow(tmp_path: Path) -> Path:
    """DemoFlow with ``@schedule(daily=True)`` (added here unless the flow has it already)."""
    src = FLOW.read_text()
    if "@schedule(" not in src:
        assert "\nclass DemoFlow(FlowSpec):" in src
        src = src.replace("from metaflow import FlowSpec,", "from metaflow import schedule\n"
                          "from metaflow import FlowSpec,", 1)
        src = src.replace("\nclass DemoFlow(FlowSpec):",
                          "\n@schedule(daily=True)\nclass DemoFlow(FlowSpec):", 1)
    d = tmp_path / "flows"
    d.mkdir()
    (d / "demo_flow.py").write_text(src)
    (d / "pythia.toml").write_text((FLOW.parent / "pythia.toml").read_text())  # its Config
    (d / "pythia").symlink_to(REPO / "pythia", target_is_directory=True)
    return d / "demo_flow.py"


@pytest.fixture()
def scheduler_env(s3_env):
    pytest.importorskip("kubernetes", reason="Metaflow's Airflow/Argo compilers import the "
                                             "kubernetes client package")
    return s3_env


def _compile(flow: Path, args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(flow), *args], env=_subprocess_env(env),
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


def test_flow_compiles_to_airflow(scheduler_env, moto_s3, tmp_path):
    flow = _scheduled_flow(tmp_path)
    dag = tmp_path / "dag.py"
    _compile(flow, ["airflow", "create", str(dag)], scheduler_env, tmp_path)
    text = dag.read_text()
    tree = ast.parse(text)  # valid Python
    config = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                  and getattr(n.targets[0], "id", "") == "CONFIG")
    assert set(config["states"]) == set(STEPS)
    assert config["dag_instantiation_params"]["schedule_interval"] == "@daily"
    assert [p["name"] for p in config["metaflow_params"]] and all(
        "default" in p for p in config["metaflow_params"])
    # the code package was uploaded to the S3 datastore, and no credential went into the DAG
    assert any("/data/" in k for k in moto_s3.keys("metaflow/DemoFlow/"))
    assert DUMMY_SECRET not in text and DUMMY_KEY_ID not in text


def test_flow_compiles_to_argo_json(scheduler_env, moto_s3, tmp_path):
    flow = _scheduled_flow(tmp_path)
    proc = _compile(flow, ["argo-workflows", "create", "--only-json"], scheduler_env, tmp_path)
    doc = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert doc["kind"] == "WorkflowTemplate"
    templates = {t["name"] for t in doc["spec"]["templates"]}
    assert {s.replace("_", "-") for s in STEPS} <= templates
    cron = json.loads(doc["metadata"]["annotations"]["metaflow/cron"])
    assert cron["schedule"]  # @schedule(daily=True) reached the deployment
    assert DUMMY_SECRET not in proc.stdout and DUMMY_KEY_ID not in proc.stdout
    # every step's pod gets the deploying shell's PYTHIA_* (code_package.forward_pythia_env):
    # without them each step wrote its files into its own container
    pods = {t["name"]: {e["name"]: e.get("value") for e in t["container"].get("env", [])}
            for t in doc["spec"]["templates"] if "container" in t}
    steps = {s.replace("_", "-") for s in STEPS}
    assert steps <= set(pods)
    for name in steps:
        assert pods[name].get("PYTHIA_DATA_ROOT") == scheduler_env["PYTHIA_DATA_ROOT"], name


def test_airflow_refuses_a_local_datastore(tmp_path):
    """The compilers need a shared datastore; on the local one they stop with a clear error."""
    pytest.importorskip("kubernetes")
    env = {"METAFLOW_USER": "pythia", "METAFLOW_DEFAULT_DATASTORE": "local",
           "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(FLOW), "airflow", "create",
                           str(tmp_path / "dag.py")], env=_subprocess_env(env), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "datastore" in (proc.stdout + proc.stderr).lower()
    assert not (tmp_path / "dag.py").exists()


# ------------------------------------------------------------------ the whole flow on S3

LEAK_SCAN = """
import pickle
from metaflow import Run
run = Run('DemoFlow/%s')
needles = [%r, %r]
leaks, n = [], 0
for step in run:
    for task in step:
        for art in task:
            n += 1
            blob = pickle.dumps(art.data) + str(art.data).encode()
            leaks += ["%%s.%%s" %% (task.pathspec, art.id) for s in needles if s.encode() in blob]
        logs = (task.stdout or "") + (task.stderr or "")
        leaks += ["%%s logs" %% task.pathspec for s in needles if s in logs]
d = run.data
out = {"ok": run.successful, "artifacts": n, "leaks": leaks, "run_root": d.run_root,
       "bundle": d.bundle_path, "reports": d.reports_path,
       "splits": {k: v["path"] for k, v in d.split_manifest["splits"].items()},
       "models": [c["model_dir"] for c in d.candidates]}
"""


def _probe_spark_s3_writes(spark, uri: str) -> str | None:
    """None if pythia's Spark writer can publish to ``uri`` on S3, else the reason it cannot."""
    from pythia.etl.io import write_parquet_atomic
    try:
        write_parquet_atomic(spark.range(3), uri)
    except Exception as exc:  # the JVM's error for a missing S3A connector
        lines = str(exc).splitlines()
        cause = next((x for x in lines if "s3a" in x or "FileSystem" in x), lines[0])
        return f"{type(exc).__name__}: {cause.strip()[:300]}"
    return None


@pytest.mark.slow
@pytest.mark.spark
def test_flow_runs_on_s3(s3_env, moto_s3, local_spark, tmp_path):
    """DemoFlow on the moto S3 datastore with an s3:// data root, read back via the client."""
    reason = _probe_spark_s3_writes(local_spark, s3_env["PYTHIA_DATA_ROOT"] + "/probe")
    if reason:
        pytest.skip("pythia.etl.io cannot write Parquet to S3 from Spark here (no S3A jars and "
                    f"no staging fallback in the ETL's I/O): {reason}")
    from metaflow import Runner
    env = {**s3_env, "PYTHIA_CACHE": str(tmp_path / "worlds"), "PYTHIA_HOURS_PER_TASK": "12",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    with Runner(str(FLOW), show_output=False, env=env, cwd=str(tmp_path)) as runner:
        result = runner.run(source="synthetic://tiny", models="gbdt", regions="global",
                            max_epochs=1)
        assert result.status == "successful", result.stderr[-4000:]
        run_id = result.run.id
    out = _client(env, LEAK_SCAN % (run_id, DUMMY_SECRET, DUMMY_KEY_ID), tmp_path)
    assert out["ok"] and out["artifacts"] > 20
    assert out["leaks"] == []
    base = f"s3://{BUCKET}/pythia/DemoFlow/{run_id}"
    assert out["run_root"] == base
    for path in [out["bundle"], out["reports"], *out["splits"].values(), *out["models"]]:
        assert path.startswith(base + "/"), path
    keys = moto_s3.keys(f"pythia/DemoFlow/{run_id}/")
    for part in ("labels/", "etl/", "splits/", "tfrecords/", "models/", "predictions/",
                 "bundle/"):
        assert any(k.startswith(f"pythia/DemoFlow/{run_id}/{part}") for k in keys), part
    # no object in the bucket (artifacts, logs, data) holds a credential
    client = moto_s3.client()
    for key in moto_s3.keys():
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert DUMMY_SECRET.encode() not in body and DUMMY_KEY_ID.encode() not in body, key
    assert not (tmp_path / ".pythia" / "data").exists()  # nothing run-scoped on local disk
