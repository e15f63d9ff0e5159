"""Score a finished DemoFlow run's candidates on users the world never drew before: a fresh
population from the run's synthetic world, scored the way a bidder scores them.

The held-out users of a run (``holdout_users``) are the product's measure of new users, but on
the default world they are a few thousand users of whom a few dozen are heavy (a quarter of the
impressions), so every heavy-user figure is noise-limited (docs/new-users.md, session 34).
A synthetic world can draw as many new users as wanted: the same generative tables (countries,
classes, devices, sites, activity levels, provider labels), another seed. For them the exact
optimum is the **population** posterior (``World.population``: the tables, no drawn users);
nothing a model learnt about the run's users applies to them.

Per candidate (``model/region#config``, default every global candidate of the run) the model
folder is exported as a one-slot bundle (``scoring.export_bundle``) and its rows are scored
by ``Scorer.score_arrays``: the bid-time path, from the raw impression columns and
``user_impressions_today`` (the world's reference count) to the probabilities. The run's own
bundle is scored too (``bundle``: the champions and fallbacks the run exported).

Printed per candidate and slice (all rows; rows of non-power / power user-days, by the run's
threshold on the fresh users' day totals; rows of users with 100+ impressions earlier that
day): AgeGender, gender and age log-loss against the provider labels (the country's provider
of the run, the latest label of each covered fresh user: what the models learnt to predict),
and model / population posterior on the same rows. Not a test; no timings.

``--activity-bins 3,10,30,100`` measures what a temperature per activity bin (bins of
``user_impressions_today``: 0-2, 3-9, 10-29, 30-99, 100+) would give *on top of* the models' own
(since session 36 the models fit one per bin on validation, ``[train] activity_bins``, so
``--fit-on validation`` finds multipliers of 1: a check; ``--fit-on fresh`` is how far a fit on
plenty of fresh users would still move them). For each candidate it
fits, on a second fresh draw (``--fit-stream``), one scale per bin of the AgeGender logits
before the Bayes prior shift (``softmax(s * (log p - log r) + log r)``, ``r`` the model's
prior ratio, so ``T / s`` is the bin's temperature), applies them to the scored users and adds
``<candidate>+bins`` to the table. Fitted on plenty of fresh users, it is an upper bound of
what such a calibration could do. ``--fit-on validation`` fits the scales where a run would:
on its validation split (scored by the same one-slot bundles; resampled like training, so
the fit is under the training priors, ``softmax(s * (log p - log r))``, as the models fit
their temperature).

``--bin-by rate`` bins by the day's *projected* impressions instead of the count so far:
``(user_impressions_today + 1) * 24 / (hours since UTC midnight + 0.5)``, the counter's rate
since it was reset at UTC midnight (``activity_key``). A count of 20 means a light user by
22:00 UTC and a heavy one by 01:00; the count-so-far bins put both in 10-29, where the power
user-days (a fifth of the features informative) and the others (all of them) want different
temperatures. ``--activity-bins`` are then in projected impressions a day (e.g.
10,30,66,200). Measured on session 41's three runs (docs/new-users.md, session 43).

``--by-region`` adds a slice per model region (and its non-power user-days) and the scorer
``region_blind``: the population posterior of the world's tables without their regional make
effects. A global candidate below ``region_blind`` in a region has learnt some of that
region's effects itself (it sees the country); a regional candidate can then gain only the
rest (docs/new-users.md, session 38).

    METAFLOW_DATASTORE_SYSROOT_LOCAL=/tmp/s34/mf1 python benchmarks/fresh_users.py \
        --run 1796379642644146 --users 200000 --hours 0-23
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
import pyarrow as pa

HEAVY = 100  # impressions earlier the same day: the "heavy" slice's floor


def parse_hours(spec: str) -> list[int]:
    """'0-23' or '0,6,12' (UTC hours of the run's test day) -> sorted distinct hours."""
    hours: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            hours.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise SystemExit(f"--hours {spec!r}: expected hours 0..23 as '0-23' or '0,6,12'")
    if not hours or min(hours) < 0 or max(hours) > 23:
        raise SystemExit(f"--hours {spec!r}: expected hours 0..23 as '0-23' or '0,6,12'")
    return sorted(hours)


def fresh_rows(params, n_users: int, stream: int, test_date, hours: list[int],
               provider_of_country: dict[str, str], power_threshold: float | None
               ) -> pd.DataFrame:
    """The impressions of ``n_users`` users drawn afresh from the world's tables (seed
    ``params.seed + stream``) on ``test_date``'s ``hours``, with ``user_impressions_today``,
    the power-user flag of the user-day (its rows over the hours drawn > threshold) and the
    provider label of the row's country's provider (rows of users it does not cover are
    dropped, as the ETL drops unlabelled rows). ``y_age_gender`` is in
    ``features.age_gender_labels()`` order."""
    from pythia import features
    from pythia.synth.activity import user_impressions_today
    from pythia.synth.impressions import PartitionSampler
    from pythia.synth.population import build_labels, build_users
    from pythia.synth.world import CLASS_LABELS

    fresh = dataclasses.replace(params, seed=int(params.seed) + int(stream),
                                config=dataclasses.replace(params.config, n_users=int(n_users)))
    users = build_users(fresh)
    labels = build_labels(fresh, users)
    sampler = PartitionSampler(fresh, users)
    df = pa.concat_tables([sampler.sample(test_date, h) for h in hours]).to_pandas()
    df[features.USER_IMPRESSIONS_TODAY] = user_impressions_today(df)
    index = df[features.USER_ID].str[1:].astype(np.int64).to_numpy()
    countries = df[features.COUNTRY].to_numpy(dtype=object)
    label = np.full(len(df), -1, dtype=np.int64)
    names = np.array([provider_of_country.get(c) for c in countries], dtype=object)
    for name in {n for n in names if n is not None}:
        who, cls = labels.latest[name]
        table = np.full(len(users.cls), -1, dtype=np.int64)
        table[who] = cls
        rows = names == name
        label[rows] = table[index[rows]]
    df["true_class"] = users.cls[index]
    df[features.LABEL_PROVIDER] = names
    df = df[label >= 0].reset_index(drop=True)
    order = pd.Index(features.age_gender_labels()).get_indexer(list(CLASS_LABELS))
    df["y_age_gender"] = order[label[label >= 0]]
    day_total = df.groupby(features.USER_ID)[features.USER_ID].transform("size")
    df[features.IS_POWER_USER] = (day_total > power_threshold if power_threshold is not None
                                  else False)
    return df


def row_losses(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """-log p of each row's label (probabilities clipped at 1e-15)."""
    return -np.log(np.clip(p[np.arange(len(y)), y], 1e-15, 1.0))


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    return float(row_losses(p, y).mean())


def slice_masks(df: pd.DataFrame, regions: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The slices' rows: all, non-power and power user-days, 100+ impressions earlier that
    day, and with ``regions`` (each row's model region) ``<region>`` and ``<region>
    non_power``."""
    from pythia.features import IS_POWER_USER, USER_IMPRESSIONS_TODAY

    power = df[IS_POWER_USER].to_numpy(bool)
    heavy = df[USER_IMPRESSIONS_TODAY].to_numpy() >= HEAVY
    masks = {"all": np.ones(len(df), bool), "non_power": ~power, "power": power,
             f"{HEAVY}+_today": heavy}
    for region in sorted(set(regions)) if regions is not None else ():
        masks[str(region)] = np.asarray(regions) == region
        masks[f"{region} non_power"] = masks[str(region)] & ~power
    return masks


def paired_table(probs: dict[str, dict[str, np.ndarray]],
                 other: dict[str, dict[str, np.ndarray]], df: pd.DataFrame,
                 masks: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per scorer of both runs (not the posteriors) and slice, on the same fresh users: this
    run's AgeGender log-loss minus the other's, × the population posterior's (``diff_x_pop``:
    the difference of their ``age_gender_x_pop``), with its SE clustered by user and z. Paired
    on the same rows, it is far finer than either figure's own SE."""
    from pythia.evaluate.margins import paired_margin

    y = df["y_age_gender"].to_numpy(np.int64)
    users = df["user_id"].to_numpy(dtype=object)
    pop = row_losses(probs["population"]["age_gender"], y)
    rows = []
    for name in [n for n in probs if n in other and n not in ("population", "region_blind")]:
        d = row_losses(probs[name]["age_gender"], y) - row_losses(other[name]["age_gender"], y)
        for slice_name, m in masks.items():
            if not m.any():
                continue
            mg = paired_margin(d[m], np.ones(int(m.sum())), users[m])
            scale = float(pop[m].mean())
            rows.append({"scorer": name, "slice": slice_name, "rows": int(m.sum()),
                         "diff_x_pop": round(mg.diff / scale, 4),
                         "se": round(mg.se / scale, 4), "z": round(mg.z, 2)})
    return pd.DataFrame(rows)


def same_fresh_users(a: pd.DataFrame, b: pd.DataFrame) -> str | None:
    """Why two runs' fresh rows cannot be paired (None: the same rows, users and labels)."""
    for column in ("user_id", "y_age_gender"):
        if len(a) != len(b) or not np.array_equal(a[column].to_numpy(), b[column].to_numpy()):
            return (f"their fresh rows differ in {column!r} ({len(a):,} and {len(b):,} rows): "
                    "another world, or other providers labelling the users")
    return None


def slice_table(probs: dict[str, dict[str, np.ndarray]], df: pd.DataFrame, n_age: int,
                regions: np.ndarray | None = None) -> pd.DataFrame:
    """Per scorer and slice: log-loss per target, and scorer / population on the same rows
    (``probs['population']`` must be there), AgeGender's with its SE clustered by user
    (``age_gender_x_pop_se``). ``regions`` (each row's model region) adds the slices
    ``<region>`` and ``<region> non_power``."""
    from pythia.evaluate.margins import row_ratio_se

    masks = slice_masks(df, regions)
    y_ag = df["y_age_gender"].to_numpy(np.int64)
    y = {"age_gender": y_ag, "gender": y_ag // n_age, "age": y_ag % n_age}
    users_of = df["user_id"].to_numpy(dtype=object)
    losses = {name: row_losses(p["age_gender"], y_ag) for name, p in probs.items()}
    rows = []
    for slice_name, m in masks.items():
        if not m.any():
            continue
        users = df.loc[m, "user_id"].nunique()
        ref = {t: log_loss(probs["population"][t][m], y[t][m]) for t in y}
        for name, p in probs.items():
            rec = {"scorer": name, "slice": slice_name, "rows": int(m.sum()), "users": users}
            for t in y:
                ll = log_loss(p[t][m], y[t][m])
                rec[t] = round(ll, 4)
                rec[f"{t}_x_pop"] = round(ll / ref[t], 4)
                if t == "age_gender":
                    rec["age_gender_x_pop_se"] = round(row_ratio_se(
                        losses[name][m], losses["population"][m], users_of[m]), 4)
            rows.append(rec)
    return pd.DataFrame(rows)


def retemper(p: np.ndarray, log_ratio: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """AgeGender probabilities under the natural priors with each row's logits (before the
    prior shift ``log_ratio``) multiplied by ``scale``: ``softmax(s * (log p - log r) +
    log r)``; a scale of 1 gives ``p`` back."""
    from pythia.models.links import link_probabilities

    with np.errstate(divide="ignore"):
        z = np.log(np.clip(p, 1e-300, 1.0)) - log_ratio
    return link_probabilities(np.asarray(scale, np.float64).reshape(-1, 1) * z + log_ratio,
                              "softmax")


def fit_bin_scales(p: np.ndarray, y: np.ndarray, bins: np.ndarray, n_bins: int,
                   log_ratio: np.ndarray, natural: bool = True) -> np.ndarray:
    """Per bin, the logit scale (``retemper``) with the least log-loss on that bin's rows;
    1 for a bin without rows. ``natural``: ``y`` follows the natural priors (fresh users);
    else the training priors (a resampled split), where the prior shift is left out."""
    from scipy.optimize import minimize_scalar

    scales = np.ones(n_bins)
    back = log_ratio if natural else np.zeros_like(log_ratio)
    if not natural:  # softmax(z / T): the probabilities under the training priors
        ratio = np.exp(log_ratio)
        p = np.divide(p, ratio, out=np.zeros_like(p), where=ratio > 0)
        p /= p.sum(axis=1, keepdims=True)
    for b in range(n_bins):
        m = bins == b
        if m.any():
            pb, yb = p[m], y[m]
            scales[b] = minimize_scalar(
                lambda s: log_loss(retemper(pb, back, np.full(len(yb), s)), yb),
                bounds=(0.02, 5.0), method="bounded", options={"xatol": 1e-4}).x
    return scales


def score_fresh(run_id: str, candidates: str, n_users: int, stream: int, hours: list[int],
                split: str | None = None, with_bundle: bool = True, blind: bool = False
                ) -> tuple[pd.DataFrame, dict[str, dict[str, np.ndarray]], dict[str, str],
                           tuple[pd.DataFrame, dict[str, dict[str, np.ndarray]]] | None]:
    """(the fresh rows, {scorer: {target: (rows, classes)}}, {candidate: model folder},
    (the ``split``'s rows, {candidate: probabilities}) or None) of a run: ``population`` (the
    provider-label posterior of the world's tables), each candidate ``model/region#config``
    (default: every global model folder of the run, baselines included) and ``bundle`` (the
    run's own, when it exported one, unless ``with_bundle`` is False). ``split`` (e.g.
    'validation'): also score the run's rows of that split with each candidate. ``blind``:
    also ``region_blind``, the population posterior of the world's tables without their
    regional make effects (``synth.regional.region_blind``: what a model that does not learn
    them can reach at best)."""
    from metaflow import Run, namespace

    from pythia import features
    from pythia.features import Encoders
    from pythia.scoring.bundle import export_bundle
    from pythia.scoring.scorer import Scorer
    from pythia.synth import check_world, load_world

    namespace(None)
    run = Run(f"DemoFlow/{run_id}")
    start = run["start"].task.data
    # the very world the run read (runs from before the record: None, not checked)
    check_world(start.source_path, getattr(start, "world_fingerprint", None))
    world = load_world(start.source_path)
    if world.params is None:
        raise SystemExit(f"run {run_id}: its source {start.source_path} is not a synthetic "
                         "world with tables")
    manifest = run["join_hours"].task.data.split_manifest
    provider_map = run["select_providers"].task.data.provider_map["by_country"]
    encoders = run["to_tfrecords"].task.data.encoders
    encoders = encoders if isinstance(encoders, Encoders) else Encoders.from_json(encoders)
    geo = start.params.geo
    run_dir = os.path.dirname(os.path.dirname(manifest["paths"]["train"].rstrip("/")))
    wanted = [c.strip() for c in candidates.split(",") if c.strip()]
    if not wanted:
        found = sorted(os.listdir(os.path.join(run_dir, "models")))
        wanted = [f"{m}/global#{c}" for m, r, c in (f.split("__") for f in found
                                                   if f.count("__") == 2) if r == "global"]
    folders = {}
    for c in wanted:
        model, _, rest = c.partition("/")
        region, _, config = rest.partition("#")
        folder = os.path.join(run_dir, "models", f"{model}__{region}__{config or 0}")
        if not model or not region or not os.path.isdir(folder):
            raise SystemExit(f"--candidates {c!r}: no model folder {folder} in run {run_id}")
        folders[c] = (model, folder)

    test_date = dt.date.fromisoformat(start.window["test"][-1])
    df = fresh_rows(world.params, n_users or world.params.config.n_users, stream,
                    test_date, hours, provider_map,
                    manifest.get("power_user_threshold"))
    n_age = len(features.age_bucket_labels())
    print(f"run {run_id}: {df.user_id.nunique():,} fresh labelled users, {len(df):,} rows "
          f"on {test_date} hours {hours[0]}..{hours[-1]} "
          f"({int(df[features.IS_POWER_USER].sum()):,} of power user-days)", flush=True)
    order = [world.class_labels.index(c) for c in features.age_gender_labels()]
    _, label = world.population().gauge_posteriors(
        df, df[features.LABEL_PROVIDER].to_numpy(dtype=object))
    probs = {"population": features.marginals_from_joint(label[:, order], n_age)}
    if blind:
        from pythia.synth.regional import region_blind

        _, label = region_blind(world).population().gauge_posteriors(
            df, df[features.LABEL_PROVIDER].to_numpy(dtype=object))
        probs["region_blind"] = features.marginals_from_joint(label[:, order], n_age)
    requests = pa.Table.from_pandas(df.drop(columns=["y_age_gender", "true_class"]),
                                    preserve_index=False)
    split_rows = pd.read_parquet(manifest["paths"][split]) if split else None
    split_probs = {}
    with tempfile.TemporaryDirectory(prefix="pythia-fresh-") as tmp:
        for c, (model, folder) in folders.items():
            out = os.path.join(tmp, c.replace("/", "_").replace("#", "_"))
            export_bundle([{"region": "global", "model": model, "model_dir": folder}],
                          encoders, geo, f"fresh/{c}", out)
            scorer = Scorer.load(out)
            probs[c] = scorer.score_arrays(requests)
            if split_rows is not None:
                split_probs[c] = scorer.score_arrays(split_rows)
    bundle = run["end"].task.data.bundle_path if with_bundle and "end" in run else None
    if bundle and os.path.isdir(str(bundle)):
        probs["bundle"] = Scorer.load(bundle).score_arrays(requests)
    return (df, probs, {c: folder for c, (_, folder) in folders.items()},
            (split_rows, split_probs) if split else None)


BIN_BY = ("count", "rate")  # what --activity-bins bins (``activity_key``)


def activity_key(df: pd.DataFrame, by: str = "count") -> np.ndarray:
    """Per row, what the activity bins bin: ``count``, ``user_impressions_today``; ``rate``,
    the day's projected impressions ``(count + 1) * 24 / (h + 0.5)`` with ``h`` the hours
    since UTC midnight of ``ts`` (when the counter was reset: ``etl.activity``)."""
    from pythia.features import TS, USER_IMPRESSIONS_TODAY

    count = df[USER_IMPRESSIONS_TODAY].to_numpy(np.float64)
    if by == "count":
        return count
    if by != "rate":
        raise ValueError(f"activity key {by!r}: expected one of {BIN_BY}")
    ts = pd.to_datetime(df[TS], utc=True)
    micros = ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)).to_numpy(
        np.int64)
    hours = (micros % 86_400_000_000) / 3_600_000_000
    return (count + 1.0) * 24.0 / (hours + 0.5)


def add_bin_temperatures(edges: list[int], df: pd.DataFrame,
                         probs: dict[str, dict[str, np.ndarray]], folders: dict[str, str],
                         fit_df: pd.DataFrame, fit_probs: dict[str, dict[str, np.ndarray]],
                         natural: bool, by: str = "count") -> dict[str, list[float]]:
    """Fit each candidate's per-bin scales on ``fit_df`` (scored as ``fit_probs``; its labels
    under the natural priors or not) and add ``<candidate>+bins`` (its scored rows
    re-tempered) to ``probs``; returns the bins' temperature multipliers (``1 / scale``).
    ``by``: what is binned (``activity_key``)."""
    from pythia import features

    n_age = len(features.age_bucket_labels())
    fit_bins = np.digitize(activity_key(fit_df, by), edges)
    bins = np.digitize(activity_key(df, by), edges)
    y = fit_df["y_age_gender"].to_numpy(np.int64)
    multipliers = {}
    for c, folder in folders.items():
        with open(os.path.join(folder, "meta.json"), encoding="utf8") as f:
            ratio = np.asarray(json.load(f)["prior_ratio"]["age_gender"], np.float64)
        with np.errstate(divide="ignore"):
            log_ratio = np.log(ratio)
        scales = fit_bin_scales(fit_probs[c]["age_gender"], y, fit_bins, len(edges) + 1,
                                log_ratio, natural)
        joint = retemper(probs[c]["age_gender"], log_ratio, scales[bins])
        probs[f"{c}+bins"] = features.marginals_from_joint(joint, n_age)
        multipliers[c] = [round(float(1 / s), 3) for s in scales]
    return multipliers


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="DemoFlow run id (its datastore: "
                    "METAFLOW_DATASTORE_SYSROOT_LOCAL)")
    ap.add_argument("--candidates", default="",
                    help="comma-separated model/region#config (default: every global model "
                    "folder of the run, baselines included)")
    ap.add_argument("--users", type=int, default=0,
                    help="fresh users to draw (default: the world's own count)")
    ap.add_argument("--stream", type=int, default=1_000_003,
                    help="added to the world's seed for the fresh users, labels and rows")
    ap.add_argument("--hours", default="0-23", help="UTC hours of the test day, e.g. 0-23")
    ap.add_argument("--json", help="also write the table here (JSON records)")
    ap.add_argument("--activity-bins", default="",
                    help="e.g. 3,10,30,100: also score each candidate with a temperature per "
                    "bin of user_impressions_today, fitted on the --fit-stream draw")
    ap.add_argument("--fit-stream", type=int, default=2_000_017,
                    help="the draw the per-bin temperatures are fitted on")
    ap.add_argument("--fit-on", choices=("fresh", "validation"), default="fresh",
                    help="fit the per-bin temperatures on the --fit-stream draw (an upper "
                    "bound) or on the run's validation split (where a run would)")
    ap.add_argument("--bin-by", choices=BIN_BY, default="count",
                    help="bin user_impressions_today as it is (count) or as the day's "
                    "projected impressions, (count + 1) * 24 / (hours since UTC midnight "
                    "+ 0.5) (rate)")
    ap.add_argument("--versus", metavar="RUN",
                    help="another run on the same world: also score its candidates of the "
                    "same names (and its bundle) on the same fresh users, and print this "
                    "run's minus its, paired, with SEs clustered by user")
    ap.add_argument("--by-region", action="store_true",
                    help="also slice by model region, with the world's region-blind "
                    "population posterior (``region_blind``) as a scorer")
    args = ap.parse_args(argv)
    hours = parse_hours(args.hours)
    try:
        edges = [int(e) for e in args.activity_bins.split(",") if e.strip()]
    except ValueError:
        edges = [0]
    if edges and (min(edges) < 1 or edges != sorted(set(edges))):
        raise SystemExit(f"--activity-bins {args.activity_bins!r}: expected increasing counts "
                         "of impressions >= 1, e.g. 3,10,30,100")
    if args.bin_by != "count" and not edges:
        raise SystemExit(f"--bin-by {args.bin_by} bins nothing without --activity-bins, "
                         "e.g. --activity-bins 10,30,66,200")
    if edges and args.fit_on == "fresh" and args.fit_stream == args.stream:
        raise SystemExit("--fit-stream must differ from --stream: the scales would be fitted "
                         "on the users they are scored on")
    if args.users < 0:
        raise SystemExit(f"--users {args.users}: expected a count of users (0: the world's)")

    from pythia.features import USER_IMPRESSIONS_TODAY, age_bucket_labels

    split = "validation" if edges and args.fit_on == "validation" else None
    df, probs, folders, scored_split = score_fresh(args.run, args.candidates, args.users,
                                                   args.stream, hours, split,
                                                   blind=args.by_region)
    if edges:
        if scored_split is None:
            fit_df, fit_probs, _, _ = score_fresh(args.run, args.candidates, args.users,
                                                  args.fit_stream, hours, with_bundle=False)
        else:
            fit_df, fit_probs = scored_split
        multipliers = add_bin_temperatures(edges, df, probs, folders, fit_df, fit_probs,
                                           natural=scored_split is None, by=args.bin_by)
        bounds = [0] + edges
        names = [f"{a}-{b - 1}" for a, b in zip(bounds, edges)] + [f"{edges[-1]}+"]
        for c, m in multipliers.items():
            where = (f"stream {args.fit_stream}" if scored_split is None
                     else f"the run's {len(scored_split[0]):,} validation rows")
            key = (USER_IMPRESSIONS_TODAY if args.bin_by == "count"
                   else "the day's projected impressions")
            print(f"{c}: temperature x {dict(zip(names, m))} (bins of {key}, fitted on "
                  f"{where})")
    n_age = len(age_bucket_labels())
    regions = None
    if args.by_region:
        from metaflow import Run

        geo = Run(f"DemoFlow/{args.run}")["start"].task.data.params.geo
        regions = np.array([geo.region_of(c) for c in df["country"]], dtype=object)
    table = slice_table(probs, df, n_age, regions)
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(table.to_string(index=False))
    if args.versus:
        df2, probs2, _, _ = score_fresh(args.versus, args.candidates, args.users, args.stream,
                                        hours)
        why = same_fresh_users(df, df2)
        if why:
            raise SystemExit(f"--versus {args.versus}: runs {args.run} and {args.versus} "
                             f"cannot be paired: {why}")
        paired = paired_table(probs, probs2, df, slice_masks(df, regions))
        print(f"\nrun {args.run} minus run {args.versus} on the same fresh users (AgeGender "
              "log-loss / the population posterior's; SE clustered by user)")
        with pd.option_context("display.width", 200, "display.max_rows", 200):
            print(paired.to_string(index=False))
    if args.json:
        with open(args.json, "w", encoding="utf8") as f:
            json.dump(table.to_dict(orient="records"), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
