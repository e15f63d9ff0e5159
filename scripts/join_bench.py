"""Run a finished run's ``join_hours`` again on its own ETL outputs, into a scratch data root,
and compare the result with what the run wrote.

``etl.join_hours`` is called with the run's ``hour_manifests`` and params (the engine rule of
``providers_local.use_driver`` decides, as in the flow: ``PYTHIA_DRIVER_MAX_ROWS=0`` forces
Spark), writing under ``OUT`` (never the run's own folders). Prints the wall seconds, whether
the split manifest equals the run's (paths aside), and per split a content check against the
run's split files: rows, the sums of ``user_impressions_today`` and of the power flag, and
order-free checksums of the impression ids and of (id, counter, class); plus whether the
Parquet schemas are equal. Peak memory: run it under ``/usr/bin/time -v``.

    METAFLOW_USER=dev METAFLOW_DATASTORE_SYSROOT_LOCAL=/work/s29/large/mf \\
        /usr/bin/time -v python scripts/join_bench.py --run 1796301369727975 --out /tmp/rejoin
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pythia import etl, source_layout  # noqa: E402
from pythia.etl.content_hash import key_hashes  # noqa: E402
from pythia.features import (IMPRESSION_ID, IS_POWER_USER, USER_IMPRESSIONS_TODAY,  # noqa: E402
                             Y_AGE_GENDER)
from pythia.parquet_footers import iter_file_batches  # noqa: E402
from pythia.paths import RunPaths  # noqa: E402


def _no_paths(value):
    if isinstance(value, dict):
        return {k: _no_paths(v) for k, v in value.items()
                if not (k == "paths" or k.endswith("path"))}
    return value


def split_digest(uri: str) -> tuple:
    """(rows, sum of counters, power rows, id checksum, row checksum, schema) of a split."""
    rows = counters = power = 0
    ids = mix = np.uint64(0)
    schema = None
    columns = [IMPRESSION_ID, USER_IMPRESSIONS_TODAY, IS_POWER_USER, Y_AGE_GENDER]
    with np.errstate(over="ignore"):
        for path in source_layout.list_data_files(uri):
            parquet = pq.ParquetFile(path)
            schema = schema or parquet.schema_arrow.remove_metadata()
            for batch in iter_file_batches(parquet, 1 << 20, columns):
                h = key_hashes(batch[IMPRESSION_ID]).view(np.uint64)
                n = batch[USER_IMPRESSIONS_TODAY].to_numpy().astype(np.uint64)
                y = batch[Y_AGE_GENDER].fill_null(-1).to_numpy().astype(np.int64)
                ids += h.sum(dtype=np.uint64)
                mix += (h ^ (n << np.uint64(20)) ^ (y.astype(np.uint64) << np.uint64(44))
                        ).sum(dtype=np.uint64)
                rows += batch.num_rows
                counters += int(n.sum())
                power += int(batch[IS_POWER_USER].to_numpy(zero_copy_only=False).sum())
    return rows, counters, power, int(ids), int(mix), str(schema)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a DemoFlow run id whose join_hours finished")
    ap.add_argument("--out", required=True, help="scratch data root for the new outputs")
    args = ap.parse_args(argv)
    from metaflow import Flow, namespace
    namespace(None)
    task = Flow("DemoFlow")[args.run]["join_hours"].task
    paths = RunPaths(args.out, "DemoFlow", args.run)
    t0 = time.perf_counter()
    split, _, _, _ = etl.join_hours(task.data.hour_manifests, task.data.params, paths)
    print(f"join_hours again: {time.perf_counter() - t0:.1f} s wall")
    want = task.data.split_manifest
    same = _no_paths(split) == _no_paths(want)
    print(f"split manifest {'equal to' if same else 'DIFFERENT from'} the run's")
    for name, uri in want["paths"].items():
        a, b = split_digest(uri), split_digest(split["paths"][name])
        verdict = "same" if a == b else "DIFFERENT"
        print(f"{name}: {verdict} ({a[0]:,} rows, counters {a[1]:,}, power {a[2]:,})"
              + ("" if a == b else f" vs ({b[0]:,} rows, counters {b[1]:,}, power {b[2]:,})"))
        same = same and a == b
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
