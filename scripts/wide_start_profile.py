"""Where the MLP's train task spends its time, and what its LR start scores, on a run's data.

Reads a finished (or running) DemoFlow run's TFRecords through the Metaflow client, fits one
model on one region exactly as the ``train`` step does (``models.fit_candidate``'s model and
data, without writing predictions), and prints the wall seconds of the parts:

* the logistic-regression fits of the wide start (``LogRegModel._regularisation_path``, the
  per-feature L2 sweep ``_feature_penalties``, the refits on all rows), per task label;
* the MLP's epochs (fit minus the wide start);
* the validation log-loss of the LR start and of the fitted model (natural-weighted AgeGender).

``--hparams '{"wide_per_feature_l2": false}'`` (JSON) tries other MLP knobs; ``--lr-hparams``
others of the LR start. Timings on a shared machine are relative only.

    METAFLOW_DATASTORE_SYSROOT_LOCAL=... python scripts/wide_start_profile.py --region MEA
"""
from __future__ import annotations

import pathlib
import sys

# this checkout's pythia, not whichever one the environment installed (editable installs)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import argparse
import collections
import contextlib
import json
import time

from pythia.config import TrainConfig


@contextlib.contextmanager
def timed_methods(cls: type, names: list[str], totals: dict) -> None:
    """Accumulate wall seconds and calls of ``cls.<name>`` (outermost calls only) in totals."""
    originals = {n: getattr(cls, n) for n in names}
    depth = collections.Counter()

    def wrap(name, fn):
        def inner(self, *a, **k):
            label = getattr(a[3] if len(a) > 3 else None, "label", "")
            depth[name] += 1
            t0 = time.perf_counter()
            try:
                return fn(self, *a, **k)
            finally:
                depth[name] -= 1
                if depth[name] == 0:
                    key = (name, label)
                    totals[key][0] += time.perf_counter() - t0
                    totals[key][1] += 1
        return inner

    for n, fn in originals.items():
        setattr(cls, n, wrap(n, fn))
    try:
        yield
    finally:
        for n, fn in originals.items():
            setattr(cls, n, fn)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="DemoFlow run id (default: latest with to_tfrecords done)")
    ap.add_argument("--region", default="global")
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--hparams", default="{}", help="model hparams as JSON")
    ap.add_argument("--lr-hparams", default="{}", help="wide-start LR hparams as JSON (mlp)")
    ap.add_argument("--max-epochs", type=int, default=None)
    args = ap.parse_args(argv)

    from metaflow import Flow, Run, namespace
    namespace(None)
    run = Run(f"DemoFlow/{args.run}") if args.run else next(
        r for r in Flow("DemoFlow") if "to_tfrecords" in [s.id for s in r])
    data = run["to_tfrecords"].task.data
    tf_manifest, split_manifest, params = data.tf_manifest, data.split_manifest, data.params

    from pythia import quiet, tfrecords
    quiet.import_tensorflow()
    from pythia.models import get_model, logreg, wide
    from pythia.models.priors import priors_from_split_manifest
    from pythia.models.train import _training_data, validation_class_weights

    import dataclasses
    cfg: TrainConfig = params.train
    if args.max_epochs is not None:
        cfg = dataclasses.replace(cfg, max_epochs=args.max_epochs)
    edges = params.etl.age_edges
    priors = priors_from_split_manifest(split_manifest, edges)
    model = get_model(args.model)(tfrecords.load_encoders(tf_manifest), json.loads(args.hparams),
                                  cfg)
    import numpy as np
    model.valid_class_weights = np.asarray(validation_class_weights(split_manifest, len(edges)))
    lr_extra = json.loads(args.lr_hparams)
    if lr_extra:  # the MLP passes only per_feature_l2 to the LR start: add the others
        original = wide.fit_linear

        def fit_linear(train, valid, task, encoders, train_cfg=TrainConfig(), hparams=None):
            return original(train, valid, task, encoders, train_cfg,
                            {**(hparams or {}), **lr_extra})
        wide.fit_linear = fit_linear
    t0 = time.perf_counter()
    train, valid, _ = _training_data(model, tf_manifest, args.region)
    t_load = time.perf_counter() - t0
    totals: dict = collections.defaultdict(lambda: [0.0, 0])
    starts = {}
    original_start = wide.fit_wide_start

    def fit_wide_start(*a, **k):
        t, c = time.perf_counter(), time.process_time()
        out = original_start(*a, **k)
        starts["seconds"], starts["cpu"] = time.perf_counter() - t, time.process_time() - c
        return out
    from pythia.models import mlp
    mlp.fit_wide_start = fit_wide_start
    names = ["_regularisation_path", "_feature_penalties", "_fit_point"]
    with timed_methods(logreg.LogRegModel, names, totals):
        t1, c1 = time.perf_counter(), time.process_time()
        summary = model.fit(train, valid, priors)
        t_fit, c_fit = time.perf_counter() - t1, time.process_time() - c1
    print(f"run {run.pathspec}, {args.model}/{args.region}, hparams {args.hparams}, "
          f"lr {args.lr_hparams}")
    print(f"load {t_load:.1f}s; fit {t_fit:.1f}s wall, {c_fit:.1f}s CPU; wide start "
          f"{starts.get('seconds', 0):.1f}s wall, {starts.get('cpu', 0):.1f}s CPU; rest (epochs, "
          f"temperature) {t_fit - starts.get('seconds', 0):.1f}s wall")
    for (name, label), (sec, calls) in sorted(totals.items(), key=lambda kv: -kv[1][0]):
        if name != "_fit_point":
            print(f"  {name:22} {label:10} {sec:7.1f}s")
    fits = sum(c for (n, _), (s, c) in totals.items() if n == "_fit_point")
    fit_s = sum(s for (n, _), (s, c) in totals.items() if n == "_fit_point")
    print(f"  L-BFGS fits: {fits} calls, {fit_s:.1f}s")
    ws = summary.get("wide_start") or {}
    if ws:
        print(f"LR start validation AgeGender {ws['lr_val_loss']['age_gender']:.4f}; "
              f"best {ws['best_val_loss']['age_gender']:.4f} (epoch {ws['best_epoch']}); "
              f"penalties {ws.get('feature_penalty')}")
    print(f"summary best_val_loss {summary.get('best_val_loss')}; epochs {summary['epochs']}; "
          f"val_logloss (after temperature) {summary['val_logloss']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
