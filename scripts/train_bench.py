"""Time ``train`` tasks on a finished run's TFRecords, one fresh process per candidate.

Each candidate runs as the ``train`` step runs it (``models.fit_candidate``: imports, reading
the splits, fitting, writing the scored splits' predictions and the model folder) in a child
process, so the wall seconds include the fixed per-task cost (imports, reads, writes). Prints a
JSON line per candidate: model, region, variant, wall seconds (process start to exit), CPU
seconds of the child (user + system: steadier than wall on a shared machine), fit seconds,
epochs, the validation log-loss per target (after the temperature), the best epoch's
uncalibrated AgeGender validation loss, the temperatures and what the fit said (``notes``:
the MLP's AgeGender loss by epoch). Variants (``--variant name=JSON``) set
model hparams and, under the key ``train``, TrainConfig fields; ``--repeat`` interleaves the
variants (a fair comparison on a shared machine). Outputs go under ``--out``. ``--tfrecords``
reads the manifest under that TFRecord root instead of the run's (e.g. the run's splits
converted again by ``tfrecords.writer_local.convert_splits`` into a folder of one's own: the
same shards, and a manifest that names its source Parquet, which the columnar reader needs).

    METAFLOW_DATASTORE_SYSROOT_LOCAL=/tmp/s20/mf python scripts/train_bench.py \
        --run 1796174078426919 --model mlp --region global EU \
        --variant 'base={}' --variant 'p1={"train": {"patience": 1}}'

``--warm`` compares, per model, each requested region fitted from scratch with the same region
fitted from the model's GLOBAL candidate (``fit(..., start=global)``), in one child process
per model and variant: the global candidate is fitted once (or loaded from
``--start DIR/<model>``, a saved model folder; a fitted one is saved under ``--out``), then
per region the scratch fit and the warm fit. CPU seconds there are the fit's own
(``time.process_time`` around ``fit``, all threads; reading the data is not counted).

    METAFLOW_DATASTORE_SYSROOT_LOCAL=/tmp/s23/mf python scripts/train_bench.py --warm \
        --run 1796206416196706 --model logreg gbdt --region NA EU APAC LATAM
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
    """Fit one candidate in this process; print its summary as one JSON line."""
    import dataclasses

    from metaflow import Run, namespace

    from pythia import threads
    from pythia.models.priors import priors_from_split_manifest
    from pythia.models.train import fit_candidate, validation_class_weights

    threads.configure_task(2)
    namespace(None)
    data = Run(f"DemoFlow/{args.run}")["to_tfrecords"].task.data
    params = data.params
    variant = json.loads(args.spec)
    cfg = dataclasses.replace(params.train, **variant.pop("train", {}))
    edges = params.etl.age_edges
    out = os.path.join(args.out, f"{args.model}-{args.region}")
    tf_manifest = data.tf_manifest
    if args.tfrecords:
        from pythia.tfrecords import read_manifest
        tf_manifest = read_manifest(args.tfrecords)
    s = fit_candidate(args.model, args.region, 0, variant, tf_manifest,
                      priors_from_split_manifest(data.split_manifest, edges),
                      os.path.join(out, "model"), os.path.join(out, "predictions.parquet"), cfg,
                      validation_class_weights(data.split_manifest, len(edges)))
    print("BENCH " + json.dumps({"fit_seconds": s["fit_seconds"], "epochs": s["epochs"],
                                 "val_logloss": s["val_logloss"],
                                 "best_val_loss": s["best_val_loss"],
                                 "temperature": s["temperature"], "notes": s["notes"],
                                 "tensorflow": "tensorflow" in sys.modules}))
    return 0


def warm_child(args: argparse.Namespace) -> int:
    """Fit (or load) the global candidate, then per region a scratch and a warm fit; print a
    BENCH JSON line per fit."""
    import dataclasses

    import numpy as np
    from metaflow import Run, namespace

    from pythia import quiet, threads, tfrecords
    from pythia.models import get_model
    from pythia.models.priors import priors_from_split_manifest
    from pythia.models.train import _training_data, validation_class_weights

    threads.configure_task(2)
    quiet.install()
    namespace(None)
    data = Run(f"DemoFlow/{args.run}")["to_tfrecords"].task.data
    params = data.params
    variant = json.loads(args.spec)
    cfg = dataclasses.replace(params.train, **variant.pop("train", {}))
    edges = params.etl.age_edges
    manifest = data.tf_manifest
    priors = priors_from_split_manifest(data.split_manifest, edges)
    weights = validation_class_weights(data.split_manifest, len(edges))
    cls = get_model(args.model)
    encoders = tfrecords.load_encoders(manifest)

    def fit(region: str, start=None) -> tuple:
        model = cls(encoders, variant, cfg)
        model.valid_class_weights = np.asarray(weights, dtype=np.float64)
        train, valid, _ = _training_data(model, manifest, region)
        c0, t0 = time.process_time(), time.perf_counter()
        summary = model.fit(train, valid, priors, start=start)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        row = {"model": args.model, "region": region, "fit": "warm" if start else "scratch",
               "cpu": round(cpu, 1), "wall": round(wall, 1), "epochs": summary["epochs"],
               "val_logloss": {k: round(v, 5) for k, v in summary["val_logloss"].items()},
               "start": summary.get("start")}
        print("BENCH " + json.dumps(row), flush=True)
        return model

    saved = os.path.join(args.start, args.model) if args.start else ""
    if saved and os.path.exists(saved):
        start = cls.load(saved)
        print("BENCH " + json.dumps({"model": args.model, "region": "global",
                                     "fit": "loaded", "from": saved}), flush=True)
    else:
        start = fit("global")
        start.save(os.path.join(args.out, args.model))
    for region in args.region:
        if not args.warm_only:
            fit(region)
        fit(region, start)
    return 0


def _child_cpu() -> float:
    """User + system CPU seconds of the finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="DemoFlow run id with to_tfrecords done")
    ap.add_argument("--model", nargs="+", default=["mlp"])
    ap.add_argument("--region", nargs="+", default=["global"])
    ap.add_argument("--variant", action="append", default=[],
                    help="name=JSON of hparams (and 'train': TrainConfig fields); repeatable")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", default="/tmp/train_bench")
    ap.add_argument("--tfrecords", default="",
                    help="TFRecord root whose manifest to use instead of the run's")
    ap.add_argument("--warm", action="store_true",
                    help="per region: scratch fit vs warm fit from the global candidate")
    ap.add_argument("--warm-only", action="store_true",
                    help="with --warm: skip the scratch fits (e.g. another warm variant)")
    ap.add_argument("--start", default="",
                    help="with --warm: folder of saved global models, <start>/<model>")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--spec", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child and args.warm:
        args.model = args.model[0]
        return warm_child(args)
    if args.child:
        args.model, args.region = args.model[0], args.region[0]
        return child(args)
    variants = [v.split("=", 1) for v in (args.variant or ["base={}"])]
    bad = [v[0] for v in variants if len(v) != 2]
    if bad:
        raise SystemExit(f"--variant {bad[0]!r}: expected name=JSON, e.g. 'base={{}}'")
    if args.warm:
        return _run_warm(args, variants)
    for rep in range(args.repeat):
        for model in args.model:
            for region in args.region:
                for name, spec in variants:
                    t0, c0 = time.perf_counter(), _child_cpu()
                    proc = subprocess.run(
                        [sys.executable, __file__, "--child", "--run", args.run, "--model",
                         model, "--region", region, "--spec", spec,
                         "--out", os.path.join(args.out, name), "--tfrecords", args.tfrecords],
                        capture_output=True, text=True)
                    wall, cpu = time.perf_counter() - t0, _child_cpu() - c0
                    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
                    if proc.returncode or not lines:
                        print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
                        raise SystemExit(f"{model}/{region} {name}: child failed "
                                         f"(exit {proc.returncode})")
                    row = {"model": model, "region": region, "variant": name, "rep": rep,
                           "wall": round(wall, 1), "cpu": round(cpu, 1),
                           **json.loads(lines[-1][6:])}
                    print(json.dumps(row), flush=True)
    return 0


def _run_warm(args: argparse.Namespace, variants: list) -> int:
    """One ``--warm`` child per model and variant; its BENCH lines re-printed as they come."""
    for model in args.model:
        for name, spec in variants:
            out = os.path.join(args.out, name)
            cmd = [sys.executable, __file__, "--child", "--warm", "--run", args.run,
                   "--model", model, "--region", *args.region, "--spec", spec, "--out", out,
                   "--start", args.start] + (["--warm-only"] if args.warm_only else [])
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            for line in proc.stdout:
                if line.startswith("BENCH "):
                    print(json.dumps({"variant": name, **json.loads(line[6:])}), flush=True)
            if proc.wait():
                raise SystemExit(f"{model} {name}: warm child failed (exit {proc.returncode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
