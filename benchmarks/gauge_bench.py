"""The three exact gauges of a finished DemoFlow run on synthetic data, next to one of its
models, on the same rows: log-loss per slice (natural test day, without and with power
users, its new users: held out of training, when the run's rows carry ``user_held_out``,
and those without and with power users), target and label source; each model / gauge ratio
with its SE clustered by user (a slice of a few heavy users moves far more than its rows
suggest). No training: the model's figures are its stored test
predictions (``predictions/<model>__<region>__<config>.parquet``).

  * realised   — the world's drawn users and labels (``World``): the exact optimum;
  * in-between — what the run's train and validation rows say about the drawn users
    (``synth.in_between``, docs/in-between-gauge.md): the bar a model could reach;
  * population — the generative tables only (``World.population``): the fair bar on new
    users, of whom the training rows say nothing.

Reads the run through the Metaflow client (its split manifest, provider map and world), so
set METAFLOW_DATASTORE_SYSROOT_LOCAL to the run's datastore. Not a test.

    python benchmarks/gauge_bench.py --run 1796277385509603
    python benchmarks/gauge_bench.py --run RUN --model mlp --region global --observed train

``--predictions LABEL=PATH`` (repeatable) scores other predictions files of the same run's test
rows instead of the stored one, e.g. ``scripts/train_bench.py`` variants
(``<out>/<variant>/mlp-global/predictions.parquet``): one block per file, on the rows every
file covers; ``--gauges realised,population`` skips building the in-between gauge.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pandas as pd

from pythia import features
from pythia.features import (IMPRESSION_ID, IS_POWER_USER, LABEL_COLUMNS, LABEL_PROVIDER,
                             TARGETS, TEST_NATURAL, USER_HELD_OUT, USER_ID)

SLICES = ("natural", "natural_no_power_users", "natural_power_users", "natural_new_users",
          "new_users_no_power", "new_users_power")
GAUGES = ("realised", "in_between", "population")


def row_losses(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """-log p of each row's label (NaN where the row has none)."""
    ok = y >= 0
    out = np.full(len(y), np.nan)
    out[ok] = -np.log(np.clip(probs[np.flatnonzero(ok), y[ok]], 1e-15, 1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="DemoFlow run id")
    ap.add_argument("--world", help="the run's world root (default: the run's source_path)")
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--region", default="global", help="the model's training region")
    ap.add_argument("--config-id", type=int, default=0)
    ap.add_argument("--observed", default="train,validation",
                    help="the splits the in-between gauge's reader saw")
    ap.add_argument("--predictions", action="append", default=[], metavar="LABEL=PATH",
                    help="a predictions parquet to score instead of the stored one; repeatable")
    ap.add_argument("--gauges", default=",".join(GAUGES),
                    help=f"comma-separated subset of {','.join(GAUGES)}")
    args = ap.parse_args(argv)
    gauges = [g.strip() for g in args.gauges.split(",") if g.strip()]
    bad = [g for g in gauges if g not in GAUGES]
    if bad or "realised" not in gauges:
        raise SystemExit(f"--gauges {args.gauges!r}: " + (
            f"{bad[0]!r} is not one of {', '.join(GAUGES)}" if bad else
            "'realised' is required (the ratios' base); e.g. --gauges realised,population"))
    sources = [p.split("=", 1) for p in args.predictions]
    if any(len(s) != 2 or not s[1] for s in sources):
        raise SystemExit(f"--predictions {args.predictions!r}: expected LABEL=PATH, "
                         f"e.g. base=/tmp/bench/base/mlp-global/predictions.parquet")

    from metaflow import Run, namespace

    from pythia.evaluate.margins import row_ratio_se
    from pythia.synth import check_world, load_world
    from pythia.synth.in_between import in_between_world, read_observed

    namespace(None)
    run = Run(f"DemoFlow/{args.run}")
    manifest = run["join_hours"].task.data.split_manifest
    provider_map = run["select_providers"].task.data.provider_map["by_country"]
    start = run["start"].task.data
    if not args.world:  # the run's own world must be the one it read (--world: the user's say)
        check_world(start.source_path, getattr(start, "world_fingerprint", None))
    world = load_world(args.world or start.source_path)
    if start.drop_power_users:
        print("gauge_bench: the run dropped power users from train: the in-between gauge "
              "does not model that truncation (synth.in_between)", file=sys.stderr)
    if float(manifest.get("holdout_users") or 0) > 0 and "in_between" in gauges:
        print("gauge_bench: the run held out users from train (holdout_users > 0): the "
              "in-between gauge takes them for users unseen by chance (synth.in_between)",
              file=sys.stderr)
    test = pd.read_parquet(manifest["paths"][TEST_NATURAL])
    run_dir = os.path.dirname(os.path.dirname(manifest["paths"][TEST_NATURAL].rstrip("/")))
    stored = f"{args.model}/{args.region}#{args.config_id}"
    sources = sources or [[stored, os.path.join(
        run_dir, "predictions", f"{args.model}__{args.region}__{args.config_id}.parquet")]]
    preds = {}
    for name, path in sources:
        pred = pd.read_parquet(path)
        preds[name] = pred[pred["split"] == TEST_NATURAL].set_index(IMPRESSION_ID)
        test = test[test[IMPRESSION_ID].isin(preds[name].index)]
    test = test.reset_index(drop=True)
    models = {}
    for name, pred in preds.items():
        pred = pred.loc[test[IMPRESSION_ID]]
        p = {t: np.stack(pred[f"p_{t}"].to_numpy()) for t in TARGETS}
        models[name] = {"truth": p, "provider": p}

    t0 = time.perf_counter()
    observed = [s.strip() for s in args.observed.split(",") if s.strip()]
    worlds = {"realised": world, "population": world.population}
    if "in_between" in gauges:
        parts = read_observed(manifest, observed)
        between = in_between_world(world, parts, provider_map)
        worlds["in_between"] = lambda: between
    build_s = time.perf_counter() - t0
    n_age = len(features.age_bucket_labels())
    order = [world.class_labels.index(c) for c in features.age_gender_labels()]
    providers = test[LABEL_PROVIDER].to_numpy(dtype=object)
    probs, seconds = {}, {}
    for name in gauges:
        w = world if name == "realised" else worlds[name]()
        t0 = time.perf_counter()
        truth, label = w.gauge_posteriors(test, providers)
        seconds[name] = time.perf_counter() - t0
        probs[name] = {"truth": features.marginals_from_joint(truth[:, order], n_age),
                       "provider": features.marginals_from_joint(label[:, order], n_age)}
    true_class = world.truth().set_index(USER_ID)["age_gender"].loc[test[USER_ID]]
    y_joint = pd.Index(features.age_gender_labels()).get_indexer(true_class)
    y = {"provider": {t: test[c].to_numpy(dtype=np.int64) for t, c in LABEL_COLUMNS.items()},
         "truth": {"age_gender": y_joint, "gender": y_joint // n_age, "age": y_joint % n_age}}
    power = test[IS_POWER_USER].fillna(False).to_numpy(bool)
    held = (test[USER_HELD_OUT].fillna(False).to_numpy(bool) if USER_HELD_OUT in test.columns
            else np.zeros(len(test), bool))  # older runs' rows lack the flag: no new users
    masks = dict(zip(SLICES, (np.ones(len(test), bool), ~power, power, held, held & ~power,
                              held & power)))
    masks = {k: m for k, m in masks.items() if m.any()}  # a slice without rows: no line
    rows_seen = sum(manifest["rows"][s] for s in observed)
    between_note = (f"in-between reader saw {args.observed} ({rows_seen} rows; built in "
                    f"{build_s:.1f} s)" if "in_between" in gauges else "no in-between gauge")
    print(f"run {args.run}: {len(test)} test_natural rows ({int(power.sum())} of power users, "
          f"{int(held.sum())} of new users); "
          f"{between_note}; gauges " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    print("slices: " + "; ".join(f"{k} {int(m.sum()):,} rows of {test[USER_ID][m].nunique():,} "
                                 "users" for k, m in masks.items()))
    bases = [g for g in GAUGES if g in gauges]  # the ratios' gauges (population: new users')
    ratios = " ".join(f"{'model/' + g[:4]:>10}" for g in bases)
    users = test[USER_ID].to_numpy(dtype=object)
    for name, model in models.items():
        print(f"model {name}")
        print(f"{'slice':>22} {'labels':>8} {'target':>10} {'model':>8} "
              + " ".join(f"{g:>10}" for g in gauges) + f" {ratios}  (± SE, clustered by user)")
        for source in ("provider", "truth"):
            for slice_name, m in masks.items():
                for t in ("age_gender", "gender", "age"):
                    loss = {k: row_losses(p[source][t][m], y[source][t][m])
                            for k, p in {"model": model, **probs}.items()}
                    mean = {k: float(np.nanmean(v)) for k, v in loss.items()}
                    print(f"{slice_name:>22} {source:>8} {t:>10} {mean['model']:8.4f} "
                          + " ".join(f"{mean[g]:10.4f}" for g in gauges)
                          + "".join(f" {mean['model'] / mean[g]:10.4f} ± "
                                    f"{row_ratio_se(loss['model'], loss[g], users[m]):.4f}"
                                    for g in bases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
