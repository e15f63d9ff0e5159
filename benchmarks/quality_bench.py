"""Quality benchmark: each model's log-loss and macro-F1 on the natural test day and on its
non-power-user, power-user and new-user slices (the last when a run's rows carry
``user_held_out``), next to the Bayes posteriors on the same rows — the realised one (the
world's drawn users and labels: the headline bar, ``ratio``), the in-between one (what the
run's train and validation rows say about the drawn users, ``synth.in_between``:
``ratio_btw``; manifest mode with ``--run`` only) and the population one (the generative
tables only: ``ratio_pop``, the fair bar on new users, of whom the training rows say
nothing) — and the logreg baseline.

Two ways to get data:
  * ``--manifest RUN/tfrecords/manifest.json`` — a run's TFRecords (its PROVIDER labels).
    Bayes figures need ``--world ROOT`` (a pythia.synth world) and ``--split-parquet`` (the run's
    ``split=test_natural`` Parquet: raw columns, label provider and power-user flag for the
    posterior and the slices), joined on impression_id; the posteriors are those of the
    provider's label.
  * ``--preset tiny|default`` (default) — generate a synthetic world and build natural (not
    resampled) splits straight from it with pandas, labelled with the TRUE demographics, so the
    posteriors are those of the true class. The power-user flag is the ETL's rule: a user-day
    with more impressions than the 0.99 quantile of user-day totals. No Spark needed.

``--members K`` fits each model K times on the same rows, with training seeds ``--seed`` ..
``--seed + K - 1``: the rows ``model#i`` are the fits, the row ``model`` their ensemble (the
mean of their probabilities; gender and age stay AgeGender's marginals, the mean being
linear). It measures what averaging fits that differ only in their seed gains.

Prints one row per (slice, model, target): logloss, bayes (realised), ratio, bayes_btw,
ratio_btw, bayes_pop, ratio_pop, ratio to the baseline, macro_f1, bayes_f1, fit seconds. Not a
test: it never fails on the numbers. The gauges alone, next to a run's stored predictions
(no training): ``benchmarks/gauge_bench.py``.

    python benchmarks/quality_bench.py --preset tiny
    python benchmarks/quality_bench.py --manifest .pythia/data/DemoFlow/12/tfrecords/manifest.json \
        --run 12 --world .pythia/worlds/default-seed0 \
        --split-parquet .pythia/data/DemoFlow/12/splits/split=test_natural
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, log_loss

from pythia import features
from pythia.config import Geography, TrainConfig
from pythia.features import (AGE_BUCKET, COUNTRY, DATE, GENDER, IMPRESSION_ID, TEST_NATURAL, TRAIN,
                             TS, TS_SECONDS, USER_ID, VALIDATION, Y_AGE, Y_AGE_GENDER, Y_GENDER,
                             Encoders, NumericStats, Vocabulary)
from pythia.models import MODELS
from pythia.models.priors import priors_from_labels

BASELINE = "logreg"  # the trivial baselines are the class prior and logreg (gbdt contends)
SLICES = ("natural", "natural_no_power_users", "natural_power_users", "natural_new_users")
POWER_QUANTILE = 0.99  # the ETL's default power_user_quantile


def _gauges(world, rows: pd.DataFrame, order: list[int], providers=None, between=None
            ) -> dict[str, np.ndarray]:
    """{'realised', 'in_between' (with ``between``, its World), 'population'}: (n, K) joint
    posteriors of the label on ``rows``, columns in the run's AgeGender order; of the
    provider's label when ``providers`` is given, else of the true class."""
    out = {}
    worlds = [("realised", world)] + ([("in_between", between)] if between else [])
    for name, w in worlds + [("population", world.population())]:
        joint = (w.posterior(rows) if providers is None
                 else w.label_posterior(rows, providers))
        out[name] = joint[:, order]
    return out


def slice_masks(power: np.ndarray | None, held: np.ndarray | None, n_test: int
                ) -> dict[str, np.ndarray]:
    """SLICES -> boolean mask over the test rows: the power-user slices with ``power``, the
    new users with ``held`` (the rows' ``user_held_out``)."""
    masks = {"natural": np.ones(n_test, dtype=bool)}
    if power is not None:
        masks.update(natural_no_power_users=~power, natural_power_users=power)
    if held is not None:
        masks["natural_new_users"] = held
    return masks


def world_splits(preset: str, seed: int, cache: str, max_rows: int
                 ) -> tuple[dict, Encoders, np.ndarray, dict[str, np.ndarray]]:
    """Natural train/validation/test splits of a synthetic world, truth-labelled, plus the
    test rows' power-user flags and both posteriors on them (no user is held out)."""
    import pyarrow.dataset as ds

    from pythia.synth import generate_world, is_complete, load_world

    root = os.path.join(cache, f"{preset}-seed{seed}")
    if not is_complete(root):
        print(f"generating world {preset!r} (seed {seed}) into {root} …", file=sys.stderr)
        generate_world(root, preset, seed)
    world = load_world(root)
    imp = ds.dataset(os.path.join(root, "impressions"), format="parquet",
                     partitioning="hive").to_table().to_pandas()
    truth = world.truth()[[USER_ID, GENDER, AGE_BUCKET]]
    imp = imp.merge(truth, on=USER_ID, how="left", validate="many_to_one")
    if imp[GENDER].isna().any():
        raise ValueError(f"{int(imp[GENDER].isna().sum())} impressions have no truth row")
    imp[TS_SECONDS] = pd.to_datetime(imp[TS], utc=True).astype("int64") // 10**9
    derived = features.derive_batch({COUNTRY: imp[COUNTRY].to_numpy(),
                                     TS: imp[TS_SECONDS].to_numpy(),
                                     **{f.of: imp[f.of].to_numpy(dtype=object)
                                        for f in features.REGIONAL_FEATURES}}, Geography())
    for k, v in derived.items():
        imp[k] = v
    # the bidder's counter, over every impression of the world (before any row sampling)
    from pythia.synth.activity import user_impressions_today
    imp[features.USER_IMPRESSIONS_TODAY] = user_impressions_today(imp)
    day_total = imp.groupby([USER_ID, DATE])[IMPRESSION_ID].transform("size")
    totals = imp.groupby([USER_ID, DATE]).size().to_numpy()
    imp[features.IS_POWER_USER] = day_total > np.quantile(totals, POWER_QUANTILE,
                                                          method="inverted_cdf")
    ages = list(features.age_bucket_labels())
    imp[Y_GENDER] = imp[GENDER].map({g: i for i, g in enumerate(features.GENDER_CLASSES)})
    imp[Y_AGE] = imp[AGE_BUCKET].map({a: i for i, a in enumerate(ages)})
    imp[Y_AGE_GENDER] = imp[Y_GENDER] * len(ages) + imp[Y_AGE]
    dates = sorted(imp[DATE].astype(str).unique())
    if len(dates) < 3:
        raise ValueError(f"world has {len(dates)} day(s); need train, validation and test days")
    parts = {TRAIN: imp[imp[DATE].astype(str).isin(dates[:-2])],
             VALIDATION: imp[imp[DATE].astype(str) == dates[-2]],
             TEST_NATURAL: imp[imp[DATE].astype(str) == dates[-1]]}
    parts = {k: (v.sample(max_rows, random_state=seed) if max_rows and len(v) > max_rows else v)
             .reset_index(drop=True) for k, v in parts.items()}
    train = parts[TRAIN]
    vocabs = {}
    for f in features.FEATURES:
        if f.kind == features.CATEGORICAL:
            counts = train[f.name].dropna().astype(str).value_counts().to_dict()
            vocabs[f.name] = Vocabulary.fit(counts, f.min_count, f.max_vocab)
    numeric = {}
    for f in features.NUMERIC_FEATURES:  # statistics of the transformed values, as the ETL's
        t = features.transform_values(features.feature_transform(f), train[f].to_numpy())
        numeric[f] = NumericStats(float(t.mean()), float(t.std()), features.feature_transform(f))
    enc = Encoders(vocabs, numeric)
    out = {}
    for k, df in parts.items():
        cols = {f: df[f].to_numpy(dtype=object) if f in vocabs else df[f].to_numpy()
                for f in features.FEATURE_NAMES}
        arrays = enc.encode_batch(cols)
        for c in features.LABEL_COLUMNS.values():
            arrays[c] = df[c].to_numpy(dtype=np.int64)
        arrays[IMPRESSION_ID] = df[IMPRESSION_ID].to_numpy(dtype=object)
        out[k] = arrays
    order = [world.class_labels.index(c) for c in features.age_gender_labels()]
    test = parts[TEST_NATURAL]
    return (out, enc, test[features.IS_POWER_USER].to_numpy(bool),
            _gauges(world, test, order))


def manifest_splits(path: str, world_root: str | None, split_parquet: str | None,
                    run_split_manifest: dict | None = None, provider_map: dict | None = None
                    ) -> tuple[dict, Encoders, np.ndarray | None, np.ndarray | None,
                               dict[str, np.ndarray]]:
    """A run's splits (provider labels), and with a world and the test Parquet the test
    rows' power-user and held-out flags (None for a run from before the holdout) and the
    posteriors of the provider's label on them; with the run's split manifest and provider
    map also the in-between one (its train and validation rows)."""
    from pythia import storage, tfrecords

    manifest = storage.read_json(path)
    enc = tfrecords.load_encoders(manifest)
    out = {s: tfrecords.load_numpy(manifest, s) for s in (TRAIN, VALIDATION, TEST_NATURAL)}
    if not (world_root and split_parquet):
        return out, enc, None, None, {}
    import pyarrow.dataset as ds

    from pythia.synth import load_world

    world = load_world(world_root)
    raw = ds.dataset(split_parquet, format="parquet").to_table().to_pandas()
    raw = raw.set_index(IMPRESSION_ID).loc[out[TEST_NATURAL][IMPRESSION_ID]].reset_index()
    order = [world.class_labels.index(c) for c in features.age_gender_labels(enc.age_edges)]
    power = raw[features.IS_POWER_USER].fillna(False).to_numpy(bool)
    held = (raw[features.USER_HELD_OUT].fillna(False).to_numpy(bool)
            if features.USER_HELD_OUT in raw.columns else None)
    between = None
    refusal = None
    if run_split_manifest is not None:
        from pythia.evaluate.gauge import in_between_refusal
        refusal = in_between_refusal(run_split_manifest)
        if refusal:  # e.g. held-out users' labels would be impossible under it
            print(f"no in-between gauge: {refusal}", flush=True)
    if run_split_manifest is not None and not refusal:
        from pythia.synth.in_between import in_between_world, read_observed
        between = in_between_world(world, read_observed(run_split_manifest,
                                                        (TRAIN, VALIDATION)), provider_map)
    return out, enc, power, held, _gauges(world, raw, order,
                                    raw[features.LABEL_PROVIDER].to_numpy(dtype=object),
                                    between)


def score(p: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """(log-loss, macro-F1) per target."""
    out = {}
    for t, probs in p.items():
        labels = list(range(probs.shape[1]))
        out[t] = (float(log_loss(y[t], np.clip(probs, 1e-15, 1), labels=labels)),
                  float(f1_score(y[t], probs.argmax(axis=1), labels=labels, average="macro",
                                 zero_division=0)))
    return out


def member_mean(members: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The ensemble of fits: per target, the mean of their probabilities."""
    return {t: np.mean([m[t] for m in members], axis=0) for t in members[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", help="a run's tfrecords manifest.json")
    ap.add_argument("--world", help="synthetic world root (Bayes figures in manifest mode)")
    ap.add_argument("--split-parquet", help="the run's split=test_natural Parquet folder")
    ap.add_argument("--preset", default="tiny", help="synthetic preset when no --manifest")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=os.path.join(".pythia", "worlds"))
    ap.add_argument("--max-rows", type=int, default=200_000, help="per split (world mode)")
    ap.add_argument("--models", default="logreg,gbdt,tabnet,mlp")
    ap.add_argument("--epochs", type=int, default=TrainConfig.max_epochs)
    ap.add_argument("--age-head", default="ordinal")
    ap.add_argument("--members", type=int, default=1,
                    help="fits per model, training seeds --seed, --seed + 1, ...: rows "
                         "model#i, and the row model is their mean (an ensemble)")
    ap.add_argument("--run", help="with --manifest: the DemoFlow run id whose split manifest "
                    "gives the natural priors and validation weights (a run's train and "
                    "validation days are resampled: without it the models are not corrected "
                    "back to the natural class mix and over-predict rare classes)")
    args = ap.parse_args(argv)
    if args.members < 1:
        ap.error(f"--members must be at least 1, got {args.members}")

    split_manifest = provider_map = None
    if args.manifest and args.run:
        from metaflow import Run, namespace
        namespace(None)
        run = Run(f"DemoFlow/{args.run}")
        split_manifest = run["to_tfrecords"].task.data.split_manifest
        provider_map = run["select_providers"].task.data.provider_map["by_country"]
    if args.manifest:
        data, enc, power, held, gauges = manifest_splits(
            args.manifest, args.world, args.split_parquet, split_manifest, provider_map)
        source = f"{args.manifest} (provider labels)"
    else:
        data, enc, power, gauges = world_splits(args.preset, args.seed, args.cache,
                                                args.max_rows)
        held = None
        source = f"synthetic {args.preset} seed {args.seed} (truth labels, natural splits)"
    n_age = len(enc.age_edges)
    n_classes = {t: len(features.class_labels(t, enc.age_edges)) for t in features.TARGETS}
    ytr = {t: data[TRAIN][c] for t, c in features.LABEL_COLUMNS.items()}
    yte = {t: data[TEST_NATURAL][c] for t, c in features.LABEL_COLUMNS.items()}
    train_prior = priors_from_labels(ytr, n_classes)
    # world mode: natural splits, so training and natural priors coincide (the ratio is 1);
    # a run's splits are resampled: its split manifest has both, as the train step uses them
    priors, valid_weights = {"train": train_prior, "natural": train_prior}, None
    if split_manifest is not None:
        from pythia.models.priors import priors_from_split_manifest
        from pythia.models.train import validation_class_weights
        priors = priors_from_split_manifest(split_manifest, enc.age_edges)
        valid_weights = validation_class_weights(split_manifest, len(enc.age_edges))
    elif args.manifest:
        print("quality_bench: no --run: the run's resampled train split is taken as natural "
              "(no prior correction); pass --run RUN_ID for the run's priors")
    cfg = TrainConfig(max_epochs=args.epochs, seed=args.seed, age_head=args.age_head)
    n_test = len(yte["age_gender"])
    print(f"data: {source}; rows train {len(ytr['age_gender'])}, validation "
          f"{len(data[VALIDATION][Y_AGE_GENDER])}, test {n_test}"
          + (f" ({int(power.sum())} of power users)" if power is not None else "")
          + (f" ({int(held.sum())} of new users)" if held is not None else ""))

    probs: dict[str, dict[str, np.ndarray]] = {
        "prior": {t: np.tile(train_prior[t], (n_test, 1)) for t in features.TARGETS}}
    seconds: dict[str, float] = {"prior": 0.0}
    short = {"realised": "rea", "in_between": "btw", "population": "pop"}
    for name, joint in gauges.items():  # realised, in_between, population
        probs[f"bayes_{short[name]}"] = features.marginals_from_joint(joint, n_age)
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        members = []
        for i in range(args.members):
            model = MODELS[name](enc, {}, dataclasses.replace(cfg, seed=args.seed + i))
            if valid_weights is not None:
                model.valid_class_weights = np.asarray(valid_weights, dtype=np.float64)
            t0 = time.perf_counter()
            model.fit(data[TRAIN], data[VALIDATION], priors)
            member = name if args.members == 1 else f"{name}#{i}"
            seconds[member] = time.perf_counter() - t0
            probs[member] = model.predict_proba(data[TEST_NATURAL])
            members.append(probs[member])
        if args.members > 1:
            probs[name] = member_mean(members)
            seconds[name] = sum(seconds[f"{name}#{i}"] for i in range(args.members))

    masks = slice_masks(power, held, n_test)
    print(f"{'slice':>22} {'model':>8} {'target':>10} {'logloss':>8} {'bayes':>8} {'ratio':>6} "
          f"{'bayes_btw':>9} {'ratio_btw':>9} {'bayes_pop':>9} {'ratio_pop':>9} {'vs_' + BASELINE:>9} {'macroF1':>8} "
          f"{'bayesF1':>8} {'fit_s':>7}")
    nan = float("nan")
    for slice_name, mask in masks.items():
        if not mask.any():
            continue
        y = {t: v[mask] for t, v in yte.items()}
        scores = {name: score({t: p[t][mask] for t in features.TARGETS}, y)
                  for name, p in probs.items()}
        for name, sc in scores.items():
            for t in features.TARGETS:
                ll, f1 = sc[t]
                real = scores.get("bayes_rea", {}).get(t, (nan, nan))
                btw = scores.get("bayes_btw", {}).get(t, (nan, nan))
                pop = scores.get("bayes_pop", {}).get(t, (nan, nan))
                base = scores.get(BASELINE, {}).get(t, (nan, nan))
                print(f"{slice_name:>22} {name:>8} {t:>10} {ll:8.4f} {real[0]:8.4f} "
                      f"{ll / real[0]:6.3f} {btw[0]:9.4f} {ll / btw[0]:9.3f} {pop[0]:9.4f} {ll / pop[0]:9.3f} "
                      f"{ll / base[0]:9.3f} {f1:8.4f} {real[1]:8.4f} "
                      f"{seconds.get(name, 0.0):7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
