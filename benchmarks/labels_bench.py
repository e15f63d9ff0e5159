"""Spark ``prepare_labels`` on millions of label rows, against Spark's read-and-write of the same
rows measured in the same run.

Writes labels as pyarrow writes them (one folder per provider, several files each): ``--users``
users, each labelled by every provider on ``--dates`` of ten dates, ages and buckets mixed, a
few labels of one day sent twice with the other gender (conflicts), a few rejects (no gender,
impossible ages, a year of birth instead of an age). Then, in turns, ``--repeats`` times (the
first round is cold: the JVM compiles as it goes):

* ``floor``: ``spark.read.parquet`` of the files, written back as Parquet (the I/O a step
  cannot avoid);
* ``prepare_labels``: the step's Spark path (``providers.prepare_labels``), every output
  written;
* ``driver`` (``--driver``): the same step on the driver (``providers_local``).

Prints wall seconds per round and each path's median over the floor's, and each path's
manifest counts (the two engines must agree). To weigh two versions of the step, run it in a
worktree of each, in turns (ABAB): on this machine the same code's median moved by a third
between runs minutes apart (session 65), more than the change it was written to weigh. Usage::

    python benchmarks/labels_bench.py                    # 375k users: 2.25M label rows
    python benchmarks/labels_bench.py --users 1500000    # 9M rows
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pythia import providers  # noqa: E402
from pythia.config import DEFAULT_AGE_EDGES  # noqa: E402
from pythia.etl.sample import LABEL_SCHEMA  # noqa: E402

AS_OF = dt.date(2026, 11, 20)
COUNTRIES = np.array(["US", "GB", "DE", "JP", "FR", "BR"], dtype=object)


def write_labels(root: str, users: int, providers_n: int, dates: int, files: int,
                 seed: int = 0) -> int:
    """The bench's label files under ``root/labels/provider=p<k>/``; returns the row count."""
    rng = np.random.default_rng(seed)
    user_ids = np.array([f"u{i:08d}" for i in range(users)], dtype=object)
    country = COUNTRIES[rng.integers(0, len(COUNTRIES), users)]
    true_age = rng.integers(13, 80, users)
    true_gender = np.where(rng.random(users) < 0.5, "F", "M").astype(object)
    days = np.array([AS_OF - dt.timedelta(days=d) for d in range(10)], dtype=object)
    rows = 0
    for p in range(providers_n):
        n = users * dates
        who = np.repeat(np.arange(users), dates)
        gender = true_gender[who].copy()
        flip = rng.random(n) < 0.1 + 0.05 * p  # providers disagree with the truth
        gender[flip] = np.where(gender[flip] == "F", "M", "F")
        age = (true_age[who] + rng.integers(-3, 4, n)).astype(float)
        gender[rng.random(n) < 0.01] = "U"                       # no gender: rejected
        age[rng.random(n) < 0.002] = 1985.0                      # a year of birth as an age
        bucket = np.full(n, None, dtype=object)
        only_bucket = rng.random(n) < 0.1
        bucket[only_bucket] = "25-34"
        age[only_bucket] = np.nan
        observed = days[rng.integers(0, 10, n)]
        twice = rng.random(n) < 0.01  # the same label again, same day, other gender
        extra = {"gender": np.where(gender[twice] == "F", "M", "F").astype(object)}
        table = pa.table({
            "user_id": np.concatenate([user_ids[who], user_ids[who][twice]]),
            "gender": np.concatenate([gender, extra["gender"]]),
            "age": pa.array(np.concatenate([age, age[twice]]), pa.float64(),
                            from_pandas=True).cast(pa.int32()),
            "age_bucket": np.concatenate([bucket, bucket[twice]]),
            "country": np.concatenate([country[who], country[who][twice]]),
            "observed_date": pa.array(np.concatenate([observed, observed[twice]]), pa.date32()),
        })
        table = table.select([c for c in LABEL_SCHEMA.names if c in table.column_names])
        folder = os.path.join(root, "labels", f"provider=p{p}")
        os.makedirs(folder)
        step = -(-table.num_rows // files)
        for k in range(files):
            pq.write_table(table.slice(k * step, step), os.path.join(folder, f"part-{k}.parquet"))
        rows += table.num_rows
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=375_000)
    parser.add_argument("--providers", type=int, default=3)
    parser.add_argument("--dates", type=int, default=2, help="labels per user and provider")
    parser.add_argument("--files", type=int, default=4, help="files per provider")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--shuffle-partitions", type=int, default=8)
    parser.add_argument("--driver", action="store_true", help="also time the driver path")
    args = parser.parse_args(argv)
    from pythia.etl.session import get_spark

    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "source")
        t0 = time.perf_counter()
        rows = write_labels(source, args.users, args.providers, args.dates, args.files)
        print(f"{rows:,} label rows of {args.users:,} users and {args.providers} providers "
              f"written in {time.perf_counter() - t0:.1f} s; {args.master}, "
              f"{args.shuffle_partitions} shuffle partitions")
        spark = get_spark("labels-bench", master=args.master, conf={
            "spark.sql.shuffle.partitions": str(args.shuffle_partitions)})
        choice = {"US": "p0", "GB": "p1"}
        paths = {
            "floor": lambda out: spark.read.parquet(os.path.join(source, "labels")).write
            .parquet(out),
            "prepare_labels": lambda out: providers.prepare_labels(
                spark, source, choice, DEFAULT_AGE_EDGES, out, "p0", as_of=AS_OF)}
        if args.driver:
            from pythia import providers_local
            paths["driver"] = lambda out: providers_local.prepare_labels(
                source, choice, DEFAULT_AGE_EDGES, out, "p0", as_of=AS_OF)
        walls: dict = {name: [] for name in paths}
        manifests = {}
        try:
            for _ in range(args.repeats):
                for name, run in paths.items():
                    out = os.path.join(tmp, "out")
                    t0 = time.perf_counter()
                    manifests[name] = run(out)
                    walls[name].append(time.perf_counter() - t0)
                    shutil.rmtree(out)
        finally:
            spark.stop()
    for name, manifest in manifests.items():
        if isinstance(manifest, dict):
            counts = manifest["counts"]
            print(f"{name}: {counts['users']:,} users labelled, rejected "
                  f"{ {k: v for k, v in counts['rejected'].items() if v} }, superseded "
                  f"{counts['superseded']:,}; conflicts {manifest['conflicts']}")
    floor = float(np.median(walls["floor"]))
    print(f"\n{'path':<16} {'wall s per round':<28} median / floor")
    for name, w in walls.items():
        print(f"{name:<16} {', '.join(f'{s:.1f}' for s in w):<28} "
              f"{np.median(w) / floor:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
