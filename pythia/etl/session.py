"""The one place a SparkSession is built: Spark Connect, a configured master, or tuned local mode.

Locally the JVM start dominates the ETL's wall time, so the local session is small and quiet:
as many cores as the task may use (``pythia.threads``), no UI, few shuffle partitions, a small
JIT tuned for short jobs, and a driver heap of an eighth of the memory the task may use
(``local_driver_memory``: its ``@resources`` memory, within the machine's), at least Spark's
1 GB default. A JVM fills whatever heap it may use between full GCs, so the heap, not the
data, sets its resident memory: with a quarter of the machine (6 GB) join_hours' RSS grew 1.3x
for 2x the rows; with 2 GB, 1.85x from 1x to 4x, for the CPU of 1 GB (docs/scaling.md §8).
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from pythia import threads, workers

# Local-mode defaults. Sessions are UTC so that naive timestamps and string parsing never depend
# on the machine's time zone. The local master is local[N], N the cores this task may use
# (affinity, cgroup quota, @resources: threads.spark_local_master()), never local[*]: Spark
# threads beyond the cores a busy machine gives the task only queue for them.
LOCAL_CONF: Mapping[str, str] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "2",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "20000",
    "spark.python.worker.reuse": "true",
    # C1-only JIT + serial GC: ~1 s faster JVM start; steady-state speed matters little for
    # jobs of seconds. Cluster sessions do not get these.
    "spark.driver.extraJavaOptions": "-XX:+UseSerialGC -XX:TieredStopAtLevel=1 "
                                     "-Dlog4j2.level=ERROR",
    "spark.sql.sources.parallelPartitionDiscovery.threshold": "1000",
}
# Applied to every session: results must not depend on the machine or on a cluster's defaults.
# Dates/timestamps are read as written (proleptic Gregorian: pyarrow, Spark 3+, Hive 3), so a
# sentinel like 0001-01-01 is a value to validate, not a read failure; a damaged or vanished
# file stops the step naming it, never drops its rows silently. Nanosecond timestamps need no
# setting: contract_read reads them as bigint through an explicit schema and converts them.
COMMON_CONF: Mapping[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.datetimeRebaseModeInRead": "CORRECTED",
    "spark.sql.parquet.int96RebaseModeInRead": "CORRECTED",
    "spark.sql.files.ignoreCorruptFiles": "false",
    "spark.sql.files.ignoreMissingFiles": "false",
}
# Sessions this process starts (not Spark Connect, whose server has its own settings) read local
# files without Hadoop's client-side checksums: a stale or foreign `.NAME.crc` side file next to
# a rewritten Parquet file must not stop the run (Parquet has its own integrity checks), and the
# ETL's own outputs get no .crc clutter. The Java serializer's stream keeps every object it
# wrote until it resets (by default every 100): writing a cached block to disk (etl_hour's
# DISK_ONLY cache) then kept up to 100 cached batches of ~2 MB each in the heap; reset after
# each one (2.56M rows in a 512 MB heap: 327 -> 38 full GCs; docs/scaling.md section 8).
DRIVER_CONF: Mapping[str, str] = {
    "spark.hadoop.fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem",
    "spark.serializer.objectStreamReset": "1",
}
SPARK_REMOTE_ENV = "SPARK_REMOTE"
SPARK_MASTER_ENV = "PYTHIA_SPARK_MASTER"
DRIVER_MEMORY_ENV = "PYTHIA_SPARK_DRIVER_MEMORY"  # e.g. 6g: the local driver's heap, as set
MIN_DRIVER_MB = 1024
HEAP_SHARE = 8  # the heap is 1/HEAP_SHARE of the task's memory (the JVM's own default: 1/4)


def local_driver_memory() -> str:
    """The local driver JVM's heap (``spark.driver.memory``): ``$PYTHIA_SPARK_DRIVER_MEMORY`` if
    set, else an eighth (``HEAP_SHARE``) of the memory this task may use, at least Spark's 1 GB
    default. That memory is the smaller of the step's ``@resources`` memory
    (``threads.task_memory_mb``, what a remote task's container has) and the machine's
    (physical or cgroup limit; in a foreach task of a local run with N workers, 1/N of it:
    ``threads.memory_share``). Local mode runs the executors inside the driver, so this heap
    holds every task's rows in flight; Spark sizes its execution and storage pools from it and
    spills past them, so the heap, not the data, bounds the JVM's resident memory (≈ the heap
    + 0.35 GB)."""
    if os.environ.get(DRIVER_MEMORY_ENV):
        return os.environ[DRIVER_MEMORY_ENV]
    limit = workers.memory_limit_bytes()
    # a foreach task of a local run shares the machine with the other workers' tasks
    budget = [limit * threads.memory_share()] if limit is not None else []
    if threads.task_memory_mb():
        budget.append(threads.task_memory_mb() * (1 << 20))
    mb = int(min(budget)) // HEAP_SHARE // (1 << 20) if budget else 0
    return f"{max(MIN_DRIVER_MB, mb)}m"


def resolve_target(master: str | None = None, remote: str | None = None) -> tuple[str, str]:
    """('remote', url) or ('master', url) or ('local', 'local[N]'), explicit args first.

    Precedence: ``remote`` arg, ``master`` arg, ``$SPARK_REMOTE``, ``$PYTHIA_SPARK_MASTER``,
    local mode on the task's cores (``threads.spark_local_master()``).
    """
    if remote:
        return "remote", remote
    if master:
        return "master", master
    if os.environ.get(SPARK_REMOTE_ENV):
        return "remote", os.environ[SPARK_REMOTE_ENV]
    if os.environ.get(SPARK_MASTER_ENV):
        return "master", os.environ[SPARK_MASTER_ENV]
    return "local", threads.spark_local_master()


def get_spark(app_name: str, master: str | None = None, remote: str | None = None,
              conf: Mapping[str, str] | None = None) -> Any:
    """A SparkSession: Spark Connect, a given master, or a tuned local session.

    Args:
        app_name: shown in the cluster UI / logs.
        master: e.g. ``spark://host:7077`` or ``local[1]``; default ``$PYTHIA_SPARK_MASTER``.
        remote: a Spark Connect URL ``sc://host:15002``; default ``$SPARK_REMOTE``.
        conf: extra Spark settings, applied last (they win over the defaults here).
    """
    from pyspark.sql import SparkSession

    kind, target = resolve_target(master, remote)
    # Python workers must run the interpreter (and virtualenv) of the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    settings = dict(COMMON_CONF)
    if kind == "remote":
        builder = builder.remote(target)
    else:
        builder = builder.master(target)
        settings.update(DRIVER_CONF)
        if kind == "local" or target.startswith("local"):
            settings.update(LOCAL_CONF)
            settings["spark.driver.memory"] = local_driver_memory()
    settings.update(conf or {})
    if kind != "remote":
        _launch_jvm(app_name, target, settings)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if kind != "remote":
        spark.sparkContext.setLogLevel("ERROR")
    return spark


def _launch_jvm(app_name: str, master: str, settings: Mapping[str, str]) -> None:
    """Start the driver JVM as pyspark would, but with its stderr piped through
    ``quiet.filter_stream`` (the JVM's start-up notices dropped, everything else kept).

    Does nothing when this process already has a JVM (sessions reuse it) or with
    ``PYTHIA_VERBOSE=1`` (pyspark then starts it with stderr inherited). ``gateway.proc`` is
    pyspark's documented handle on the JVM process for reading its output.
    """
    import subprocess

    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway

    from pythia import quiet

    if quiet.verbose():
        return
    with SparkContext._lock:
        if SparkContext._gateway is not None:
            return
        conf = SparkConf(loadDefaults=False).setAll(
            [*settings.items(), ("spark.master", master), ("spark.app.name", app_name)])
        gateway = launch_gateway(conf, popen_kwargs={"stderr": subprocess.PIPE})
        quiet.filter_stream(gateway.proc.stderr)
        SparkContext._gateway = gateway
        SparkContext._jvm = gateway.jvm


@contextmanager
def spark_session(app_name: str, params: Any, *uris: str) -> Iterator[Any]:
    """A session for one step of a run (``params``: its ``RunParams``) that touches its source,
    its data root and ``uris`` (S3A settings when any is on S3 and the connector is present);
    stopped when the block ends, error or not."""
    from pythia.spark_s3 import session_conf_for

    conf = session_conf_for(params.data_root, params.source, *uris)
    spark = get_spark(app_name, master=params.spark_master, conf=conf or None)
    try:
        yield spark
    finally:
        spark.stop()
