"""ETL throughput: Spark ``run_hours``, the driver path ``hourly_local.run_hours`` (the same
outputs without a JVM) and a one-process pandas reference, on the same task.

    python benchmarks/etl_bench.py [--source DIR|synthetic://tiny] [--hours 0,1,2,3] [--no-spark]

Default source: the ``synthetic://tiny`` world when ``pythia.synth`` exists, else a
``pythia.etl.sample`` source. The pandas reference reads the same partitions with pyarrow,
calls ``features.derive_batch``, left-joins the same labels and writes Parquet; it does NOT
validate, quarantine, settle duplicates or write the ids/user-day tables, so it is a lower
bound on the work. Every path gets the run's compiled offset table, as a flow task does (the
start step compiles it once; before session 24 the first timed path also paid its 2 s build).
Prints rows/s of each and the ratios; the Spark step's wall time is the session start plus
``run_hours``; ``--no-spark`` skips Spark (labels are prepared on the driver either way). Not a test: nothing here fails on a slow machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pythia import contract_read, providers  # noqa: E402
from pythia.config import Geography, Window  # noqa: E402
from pythia.features import (COUNTRY, DATE, HOUR, TS, TS_SECONDS, USER_ID,  # noqa: E402
                             REGIONAL_FEATURES, USER_LABEL_COLUMNS, derive_batch)
from pythia.paths import default_cache_root  # noqa: E402


def resolve_source(source: str | None, tmp: str, hours: list[int], users: int) -> str:
    """The benchmark's source folder (generating one when none is given).

    ``sample`` (or no source and no ``pythia.synth``) writes a ``pythia.etl.sample`` source of
    ``users`` users for ``hours``.
    """
    if source and source != "sample" and not source.startswith("synthetic://"):
        return source
    try:
        from pythia.synth.generate import resolve_source as synth_source
    except ImportError:
        synth_source = None
    if synth_source is not None and source != "sample":
        return synth_source(source or "synthetic://tiny", default_cache_root())
    from pythia.etl.sample import write_sample_source

    root = os.path.join(tmp, "sample")
    write_sample_source(root, pd.Timestamp("2024-03-10").date(), hours=hours, n_users=users,
                        impressions_per_user_hour=1.0)
    return root


def pandas_baseline(source: str, window: Window, hours: list[int], labels_path: str,
                    out: str, geo: Geography) -> int:
    """Read the partitions, derive features, left-join labels, write Parquet; returns rows in."""
    found = contract_read.list_partition_files(source, window.dates, hours)
    frames = []
    for (day, hour), files in sorted(found.items()):
        for f in files:
            table = pq.read_table(f)
            ts_us = pc.cast(pc.cast(table[TS], pa.timestamp("us", tz="UTC")), pa.int64())
            df = table.to_pandas()
            df[TS_SECONDS] = ts_us.to_numpy(zero_copy_only=False) // 10**6
            df[DATE], df[HOUR] = day, hour
            frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    derived = derive_batch({TS: df[TS_SECONDS].to_numpy(),
                            COUNTRY: df[COUNTRY].to_numpy(dtype=object),
                            **{f.of: df[f.of].to_numpy(dtype=object)
                               for f in REGIONAL_FEATURES}}, geo)
    for name, values in derived.items():
        df[name] = values
    labels = pq.read_table(labels_path).to_pandas()[[USER_ID, *USER_LABEL_COLUMNS]]
    joined = df.merge(labels, on=USER_ID, how="inner")
    pq.write_table(pa.Table.from_pandas(joined, preserve_index=False),
                   os.path.join(out, "rows.parquet"))
    return len(df)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default=None,
                    help="folder, s3:// prefix, synthetic://PRESET, or 'sample'")
    ap.add_argument("--hours", default="0,1,2,3", help="hours of day of the one ETL task")
    ap.add_argument("--master", default=None, help="Spark master (default: tuned local[2])")
    ap.add_argument("--users", type=int, default=5000, help="users of a 'sample' source")
    ap.add_argument("--no-spark", action="store_true",
                    help="time only the driver path and the pandas reference (no JVM)")
    args = ap.parse_args(argv)
    hours = [int(h) for h in args.hours.split(",")]
    with tempfile.TemporaryDirectory(prefix="etl-bench-") as tmp:
        source = resolve_source(args.source, tmp, hours, args.users)
        window = Window(contract_read.list_dates(source)[-1])
        # As in the flow: the run compiles its offset table once (start step) and every task
        # reads it (Geography(offsets=...)), so each timed path gets a fresh object of it.
        offsets = Geography().compiled().offsets
        labels = _labels(source, tmp)
        t_start = t_spark = man = None
        if not args.no_spark:
            t_start, t_spark, man = _spark_task(args.master, source, hours, window,
                                                labels, tmp, Geography(offsets=offsets))
        from pythia.etl.hourly_local import run_hours as run_hours_local

        t0 = time.perf_counter()
        man_local = run_hours_local(source, hours, window, labels,
                                    os.path.join(tmp, "etl-driver"),
                                    os.path.join(tmp, "q-driver"), Geography(offsets=offsets),
                                    allow_gaps=True)
        t_driver = time.perf_counter() - t0
        if man is not None and {k: v for k, v in man_local.items() if not k.endswith("_path")} \
                != {k: v for k, v in man.items() if not k.endswith("_path")}:
            print("warning: the driver path's manifest differs from Spark's")
        os.makedirs(os.path.join(tmp, "pd"))
        t0 = time.perf_counter()
        n_pd = pandas_baseline(source, window, hours, labels, os.path.join(tmp, "pd"),
                               Geography(offsets=offsets))
        t_pd = time.perf_counter() - t0
    n = man_local["total"]["rows_in"]
    print(f"source {source}; window {window.dates[0]}..{window.dates[-1]}; hours {hours}")
    if t_spark is not None:
        print(f"spark session start          {t_start:8.2f} s")
        print(f"spark run_hours  {n:9d} rows {t_spark:8.2f} s  {n / t_spark:12.0f} rows/s")
    print(f"driver run_hours {n:9d} rows {t_driver:8.2f} s  {n / t_driver:12.0f} rows/s")
    print(f"pandas reference {n_pd:9d} rows {t_pd:8.2f} s  {n_pd / t_pd:12.0f} rows/s")
    if t_spark is not None:
        print(f"ratio spark/pandas rows/s: {(n / t_spark) / (n_pd / t_pd):.2f}")
    print(f"ratio driver/pandas rows/s: {(n / t_driver) / (n_pd / t_pd):.2f} "
          f"(the driver path takes {t_driver / t_pd:.1f}x the reference's time; goal <= 3x)")
    if t_spark is not None:
        print(f"ratio driver/spark rows/s: {t_spark / t_driver:.2f} "
              f"(with the session start: {(t_spark + t_start) / t_driver:.2f})")
    return 0


def _labels(source: str, tmp: str) -> str:
    """The source's labels prepared as the flow does (on the driver), their folder."""
    from pythia import providers_local

    metrics, _ = providers_local.read_provider_metrics(source)
    _, choice, _ = providers.select_providers(
        metrics, {}, sorted(set(metrics[COUNTRY])), providers.list_providers(source))
    out = providers_local.prepare_labels(source, choice, (18, 25, 35, 45, 55, 65),
                                         os.path.join(tmp, "labels"),
                                         providers.best_global_provider(metrics))
    return out["labels_path"]


def _spark_task(master: str | None, source: str, hours: list[int], window: Window,
                labels: str, tmp: str, geo: Geography) -> tuple[float, float, dict]:
    """Spark's session start and ``run_hours`` seconds, and its manifest."""
    from pythia.etl.hourly import run_hours
    from pythia.etl.session import get_spark

    t0 = time.perf_counter()
    spark = get_spark("etl-bench", master=master)
    t_start = time.perf_counter() - t0
    t0 = time.perf_counter()
    man = run_hours(spark, source, hours, window, labels, os.path.join(tmp, "etl"),
                    os.path.join(tmp, "q"), geo, allow_gaps=True)
    t_spark = time.perf_counter() - t0
    spark.stop()
    return t_start, t_spark, man


if __name__ == "__main__":
    raise SystemExit(main())
