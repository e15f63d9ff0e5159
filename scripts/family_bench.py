"""Time ``train`` tasks as the flow now runs them, one model family per fresh process.

Each family (a model and config: its 'global' candidate, then its regions) runs as the
``train`` step runs it (``models.train_family``: imports, reading each region's splits,
fitting, writing predictions and model folders) in a child process on a finished run's
TFRecords, so the wall seconds include the task's fixed cost once per family. Prints a JSON
line per family and variant: wall seconds (process start to exit), CPU seconds of the child
(user + system: steadier than wall on a shared machine), and per candidate its region,
start_from, fit seconds, epochs and validation AgeGender log-loss. ``--regional-start`` runs
each family once per value (e.g. ``global scratch``: fine-tuned regions against fresh ones),
interleaved over ``--repeat`` (a fair comparison on a shared machine). Outputs go under
``--out``. ``scripts/train_bench.py`` times one candidate per process (the flow before model
families) on the same runs.

    METAFLOW_DATASTORE_SYSROOT_LOCAL=/tmp/s23/mf python scripts/family_bench.py \
        --run 1796206416196706 --model logreg class_prior --regional-start global scratch
"""
from __future__ import annotations

import pathlib
import sys

# this checkout's pythia, not whichever one the environment installed (editable installs)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import argparse
import json
import os
import resource
import subprocess
import time


def child(args: argparse.Namespace) -> int:
    """Fit one family in this process; print its candidates' summaries as one JSON line."""
    import dataclasses

    from metaflow import Run, namespace

    from pythia import threads
    from pythia.models import train_families, train_family
    from pythia.paths import RunPaths

    threads.configure_task(2)
    namespace(None)
    data = Run(f"DemoFlow/{args.run}")["to_tfrecords"].task.data
    params = data.params
    cfg = dataclasses.replace(params.train, regional_start=args.regional_start[0])
    regions = None if args.regions == ["all"] else args.regions
    families = train_families([args.model[0]], regions, data.tf_manifest, 0, params.seed)
    family = next(f for f in families if f["model"] == args.model[0])
    out = train_family(family, data.tf_manifest, data.split_manifest, cfg, params.etl.age_edges,
                       RunPaths(args.out, "DemoFlow", args.run))
    print("BENCH " + json.dumps([{
        "region": c["region"], "start_from": c["start_from"], "fit_seconds": c["fit_seconds"],
        "epochs": c["epochs"], "val_logloss_age_gender": c["val_logloss"].get("age_gender")}
        for c in out]))
    return 0


def _child_cpu() -> float:
    """User + system CPU seconds of the finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="DemoFlow run id with to_tfrecords done")
    ap.add_argument("--model", nargs="+", default=["logreg"])
    ap.add_argument("--regional-start", nargs="+", default=["global"],
                    choices=["global", "scratch"])
    ap.add_argument("--regions", nargs="+", default=["all"],
                    help="'all' (global + every region with training rows) or a list")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default="/tmp/family_bench")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    for rep in range(args.repeat):
        for model in args.model:
            for start in args.regional_start:
                t0, c0 = time.perf_counter(), _child_cpu()
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", "--run", args.run, "--model", model,
                     "--regional-start", start, "--regions", *args.regions,
                     "--out", os.path.join(args.out, start)],
                    capture_output=True, text=True)
                wall, cpu = time.perf_counter() - t0, _child_cpu() - c0
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
                if proc.returncode or not lines:
                    print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{model} ({start}): child failed (exit {proc.returncode})")
                print(json.dumps({"model": model, "regional_start": start, "rep": rep,
                                  "wall": round(wall, 1), "cpu": round(cpu, 1),
                                  "candidates": json.loads(lines[-1][6:])}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
