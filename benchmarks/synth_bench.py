"""Synthetic world benchmark: generation and posterior throughput, and the Bayes-optimal gauge.

Prints generation rows/s next to pyarrow writing the same rows (a pure-I/O baseline), posterior
rows/s next to a plain NumPy draw of an (n, 12) probability matrix, and — unless ``--no-quality``
— the Bayes-optimal log-loss / accuracy of every target on the test day, against the truth and
against the chosen providers' labels. Timings are measured in this run; nothing here fails on a
slow machine. ``--activity`` instead draws only the test day (in memory) and compares the
posterior marginal over the user's impressions so far today with the one conditioned on it:
time, and log-loss on all rows, without power users, power users only -- for the realised
world's users (the gauge) and for the population form (expected users per group).

    python benchmarks/synth_bench.py [--preset default] [--seed 0] [--rows 1000000]
    python benchmarks/synth_bench.py --activity [--preset default] [--seed 0]
"""
from __future__ import annotations

import argparse
import datetime as dt
import shutil
import tempfile
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pythia.config import parse_overrides
from pythia.features import (AGE_BUCKET, COUNTRY, DATE, GENDER, GENDER_CLASSES, USER_ID,
                             age_bucket_labels, age_to_bucket, marginals_from_joint)
from pythia.features import IS_POWER_USER, USER_IMPRESSIONS_TODAY
from pythia.synth import PRESETS, World, generate_world, load_world
from pythia.synth.activity import expected_weights, user_impressions_today
from pythia.synth.impressions import PartitionSampler
from pythia.synth.population import build_labels, build_users, realised_weights, truth_table
from pythia.synth.world import build_params

N_AGE = len(age_bucket_labels())


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_generation(root: str, preset: str, seed: int, workers: int) -> dict:
    summary, secs = _timed(lambda: generate_world(root, preset, seed, workers=workers))
    rows = summary["impressions"]
    # Baseline: write the very same rows with pyarrow (read back first, not timed).
    dataset = ds.dataset(f"{root}/impressions", partitioning="hive")
    tables = [pq.read_table(f) for f in dataset.files]
    out = tempfile.mkdtemp(prefix="synth-bench-write-")
    try:
        _, write_secs = _timed(lambda: [pq.write_table(t, f"{out}/part-{i:05d}.parquet")
                                        for i, t in enumerate(tables)])
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"generation  {rows:>10,} rows in {secs:6.2f} s = {rows / secs:>10,.0f} rows/s | "
          f"pyarrow write of the same rows {rows / write_secs:>10,.0f} rows/s | "
          f"ratio {secs / write_secs:5.1f}x the write time (workers={workers})")
    return summary


def bench_posterior(root: str, n_rows: int) -> None:
    world = load_world(root)
    df = ds.dataset(f"{root}/impressions", partitioning="hive").head(n_rows).to_pandas()
    if len(df) < n_rows:  # small worlds: repeat rows to reach the requested size
        df = pd.concat([df] * (n_rows // len(df) + 1), ignore_index=True).head(n_rows)
    rng = np.random.default_rng(0)

    def baseline() -> np.ndarray:
        p = rng.random((n_rows, 12))
        return p / p.sum(axis=1, keepdims=True)

    _, base_secs = _timed(baseline)
    _, post_secs = _timed(lambda: world.posterior(df))
    providers = np.asarray(world.params.vocab["providers"], dtype=object)[
        rng.integers(0, len(world.params.vocab["providers"]), n_rows)]
    _, lab_secs = _timed(lambda: world.label_posterior(df, providers))
    print(f"posterior   {n_rows:>10,} rows in {post_secs:6.2f} s = {n_rows / post_secs:>10,.0f} "
          f"rows/s | numpy (n,12) draw {n_rows / base_secs:>12,.0f} rows/s | ratio "
          f"{post_secs / base_secs:6.1f}x")
    print(f"label post. {n_rows:>10,} rows in {lab_secs:6.2f} s = {n_rows / lab_secs:>10,.0f} "
          f"rows/s | ratio {lab_secs / base_secs:6.1f}x the numpy draw")


def chosen_provider_labels(root: str, providers: list[str], override: str) -> pd.DataFrame:
    """Latest label per user from the provider with the best mean published accuracy in the
    user's country (override map wins), as a label-preparation step would produce."""
    metrics = pq.read_table(f"{root}/provider_metrics").to_pandas()
    best = metrics.groupby([COUNTRY, "provider"])["accuracy"].mean().unstack().idxmax(axis=1)
    best.update(pd.Series(parse_overrides(override)))
    frames = []
    for p in providers:
        t = pq.read_table(f"{root}/labels/provider={p}").to_pandas()
        frames.append(t.assign(provider=p))
    labels = pd.concat(frames, ignore_index=True)
    labels = labels[labels["provider"] == labels[COUNTRY].map(best)]
    labels = labels.sort_values("observed_date").groupby(USER_ID).tail(1)
    bucket = np.where(labels["age"].notna(), age_to_bucket(labels["age"].fillna(0)),
                      pd.Index(age_bucket_labels()).get_indexer(labels[AGE_BUCKET]))
    gender = pd.Index(GENDER_CLASSES).get_indexer(labels[GENDER])  # gender-major class index
    return labels.assign(y_label=gender * N_AGE + bucket)


def _scores(p: np.ndarray, y: np.ndarray) -> str:
    parts = []
    m = marginals_from_joint(p, N_AGE)
    for target, yy in (("gender", y // N_AGE), ("age", y % N_AGE), ("age_gender", y)):
        q = np.clip(m[target][np.arange(len(yy)), yy], 1e-15, 1.0)
        parts.append(f"{target} ll={-np.log(q).mean():.4f} acc="
                     f"{(m[target].argmax(axis=1) == yy).mean():.4f}")
    return " | ".join(parts)


def bench_quality(root: str, test_date: str, override: str) -> None:
    world = load_world(root)
    df = ds.dataset(f"{root}/impressions", partitioning="hive").to_table(
        filter=ds.field(DATE) == test_date).to_pandas()
    classes = {c: i for i, c in enumerate(world.class_labels)}
    truth = world.truth().set_index(USER_ID)
    df["y"] = truth.loc[df[USER_ID], "age_gender"].map(classes).to_numpy()
    labels = chosen_provider_labels(root, world.params.vocab["providers"], override)
    lab = df.merge(labels[[USER_ID, "provider", "y_label"]], on=USER_ID)
    prov = lab["provider"].to_numpy()
    print(f"Bayes gauge on test day {test_date}: {len(df):,} impressions, {len(lab):,} labelled "
          f"(providers {labels.groupby(COUNTRY)['provider'].first().to_dict()})")
    print(f"  all impressions   vs truth : {_scores(world.posterior(df), df['y'].to_numpy())}")
    print(f"  country prior     vs truth : "
          f"{_scores(world.country_prior(df[COUNTRY].to_numpy()), df['y'].to_numpy())}")
    print(f"  labelled impr.    vs truth : "
          f"{_scores(world.posterior(lab, providers=prov), lab['y'].to_numpy())}")
    print(f"  labelled impr.   vs labels : "
          f"{_scores(world.label_posterior(lab, prov), lab['y_label'].to_numpy())}")


def _log_losses(p: np.ndarray, y: np.ndarray) -> str:
    m = marginals_from_joint(p, N_AGE)
    parts = []
    for target, yy in (("age_gender", y), ("gender", y // N_AGE), ("age", y % N_AGE)):
        q = np.clip(m[target][np.arange(len(yy)), yy], 1e-15, 1.0)
        parts.append(f"{-np.log(q).mean():.4f}")
    return " / ".join(parts)


def bench_activity(preset: str, seed: int, quantile: float) -> None:
    """The test day of ``preset`` drawn in memory (the same rows generate_world writes), its
    reference counts, and the posterior marginal vs given the count (and the observed
    power-user flag): time, and log-loss per slice."""
    params = build_params(PRESETS[preset], seed)
    users = build_users(params)
    world = World("<in memory>", params, realised_weights(params, users,
                                                          build_labels(params, users)))
    sampler = PartitionSampler(params, users)
    day = dt.date.fromisoformat(params.config.end_date)
    df, gen_secs = _timed(lambda: pa.concat_tables(
        [sampler.sample(day, h) for h in range(24)]).to_pandas())
    counts, count_secs = _timed(lambda: user_impressions_today(df))
    truth = truth_table(params, users).to_pandas().set_index(USER_ID)
    y = truth.loc[df[USER_ID], "age_gender"].map(
        {c: i for i, c in enumerate(world.class_labels)}).to_numpy()
    latent = truth.loc[df[USER_ID], IS_POWER_USER].to_numpy()
    # the pipeline's flag: the user-day's total over the quantile of user-day totals (here of
    # the test day's users; the ETL takes labelled users over the whole window)
    totals = df.groupby(USER_ID)[USER_ID].transform("size").to_numpy()
    threshold = float(np.quantile(df.groupby(USER_ID).size().to_numpy(), quantile))
    counted = df.assign(**{USER_IMPRESSIONS_TODAY: counts})
    flagged = df.assign(**{IS_POWER_USER: totals > threshold})
    both = counted.assign(**{IS_POWER_USER: totals > threshold})
    marg, marg_secs = _timed(lambda: world.posterior(df))
    cond, cond_secs = _timed(lambda: world.posterior(counted))
    flag, flag_secs = _timed(lambda: world.posterior(flagged, power_threshold=threshold))
    flag_n, flag_n_secs = _timed(lambda: world.posterior(both, power_threshold=threshold))
    population = World("<population>", params, expected_weights(params))
    pop_marg, pop_cond = population.posterior(df), population.posterior(counted)
    n = len(df)
    print(f"activity   {preset} seed={seed} test day {day}: {n:,} rows drawn in {gen_secs:.1f} s, "
          f"counted in {count_secs:.2f} s; count median {np.median(counts):.0f}, max "
          f"{counts.max():,}; flag threshold {threshold:.0f} impressions/day (q={quantile})")
    print(f"posterior  {n:,} rows: marginal {marg_secs:.2f} s | given n {cond_secs:.2f} s "
          f"({cond_secs / marg_secs:.1f}x) | given flag {flag_secs:.2f} s | given flag and n "
          f"{flag_n_secs:.2f} s")
    print("log-loss age_gender / gender / age (realised world = the gauge; population = "
          "expected users per group)")
    slices = (("all rows", np.ones(n, bool), False),
              ("flag: not power", totals <= threshold, True),
              ("flag: power", totals > threshold, True),
              ("latent: not power", ~latent, False), ("latent: power", latent, False))
    for name, m, by_flag in slices:
        line = (f"  {name:18s} {int(m.sum()):>8,} rows | marginal {_log_losses(marg[m], y[m])} | "
                f"given n {_log_losses(cond[m], y[m])}")
        if by_flag:
            line += (f" | given flag {_log_losses(flag[m], y[m])} | given flag, n "
                     f"{_log_losses(flag_n[m], y[m])}")
        print(line)
        print(f"  {'':18s} {'':>8s}      | population: marginal "
              f"{_log_losses(pop_marg[m], y[m])} | given n {_log_losses(pop_cond[m], y[m])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows for posterior timing")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--override", default="US=lucid", help="provider override map")
    ap.add_argument("--no-quality", action="store_true", help="skip the Bayes gauge")
    ap.add_argument("--keep", help="generate into this folder and keep it")
    ap.add_argument("--activity", action="store_true",
                    help="only the posterior given impressions so far today, on the test day")
    ap.add_argument("--power-quantile", type=float, default=0.99,
                    help="--activity: quantile of user-day totals above which a user is flagged")
    args = ap.parse_args()
    if args.activity:
        bench_activity(args.preset, args.seed, args.power_quantile)
        return
    root = args.keep or tempfile.mkdtemp(prefix="synth-bench-") + "/world"
    try:
        bench_generation(root, args.preset, args.seed, args.workers)
        bench_posterior(root, args.rows)
        if not args.no_quality:
            bench_quality(root, PRESETS[args.preset].end_date, args.override)
    finally:
        if not args.keep:
            shutil.rmtree(root.rsplit("/", 1)[0], ignore_errors=True)


if __name__ == "__main__":
    main()
