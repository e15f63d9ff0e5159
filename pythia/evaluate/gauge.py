"""The exact-Bayes gauge on synthetic data: the generator's posterior scored on every slice,
and each model's log-loss and macro F1 set against it on the rows the model scored.

Three posteriors, on the same rows: the *realised* one (the world's drawn users and labels:
the exact optimum, no model beats it on average, so model / Bayes ratios near 1 are ideal),
the *in-between* one (the generative tables plus what the run's train and validation rows say
about the drawn users, ``synth.in_between``, docs/in-between-gauge.md: ``ratio_in_between``)
and the *population* one (the generative tables only, ``World.population``). The realised one
is the headline bar (``HEADLINE_GAUGE``): it is the only one that is a bound. A model learns
the population posterior plus what the training days' labels reveal about the drawn users, so
it lands between the population and the in-between ones where they differ (power users, whose
few users per group the realised posterior nearly identifies); ``gap_closed`` = (population -
model) / (population - realised) says how far it got. On the new users (``natural_new_users``:
held out of train (validation's users)) the fair bar is the population posterior: the training rows
say nothing about those users, so it is all a reader of those rows can know of them.
Without a world there is no gauge.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, Mapping, TextIO

import numpy as np
import pandas as pd

from pythia.config import GLOBAL_REGION
from pythia.evaluate.metrics import check_probabilities
from pythia.evaluate.stats import OTHER_FORMS
from pythia.evaluate.frames import PROVIDER, TRUTH, SplitFrame
from pythia.evaluate.margins import GAUGE_FORMS, TEST_PARTS, ratio_se
from pythia.evaluate.slices import (BAYES_MODEL, NATURAL, NATURAL_NEW_USERS,
                                    NATURAL_NO_POWER_USERS, NATURAL_POWER_USERS,
                                    SPLIT_OF_TEST_SET, TEST_SETS, Aligned, EvalData,
                                    score_slices, unstack_observed)
from pythia.features import DATE, LABEL_PROVIDER, TRAIN, VALIDATION, marginals_from_joint

log = logging.getLogger(__name__)

Posteriors = dict[str, dict[str, np.ndarray]]  # label source -> {target: (n, K) probabilities}
HEADLINE_GAUGE = "realised"  # the bar of the targets: the exact optimum (see above)
# the SE of each form's ratio, clustered by user (``build_gauge``)
SE_COLUMNS = {"realised": "ratio_se", "population": "ratio_population_se",
              "region_blind": "ratio_region_blind_se"}
GAUGE_SLICES = (NATURAL, NATURAL_NO_POWER_USERS, NATURAL_POWER_USERS, NATURAL_NEW_USERS)


def posterior_probs(world: Any, frame: SplitFrame, n_age: int, label_dates: bool = False
                    ) -> Posteriors:
    """Exact posteriors on a split, marginalised to gender and age.

    Against truth: P(AgeGender | x), conditioned on the row's user being labelled by its
    provider when the world supports it (a labelled test set is that population). Against
    provider labels: P(provider's label | x, provider). ``label_dates`` passes each row's date
    to ``label_posterior``; the synthetic World documents the dateless form as the exact one
    for its realised labels (the dated form is a population average), so it is the default.
    """
    if LABEL_PROVIDER not in frame.df.columns:
        raise ValueError(f"split {frame.split!r} lacks {LABEL_PROVIDER}, needed for the gauge")
    providers = frame.df[LABEL_PROVIDER].to_numpy(dtype=object)
    both = getattr(world, "gauge_posteriors", None)
    if both is not None and not label_dates:  # the synthetic World: the two in one pass
        joint_truth, joint_label = (np.asarray(p) for p in both(frame.df, providers))
    else:
        joint_truth = np.asarray(world.posterior(frame.df, providers=providers)
                                 if "providers" in inspect.signature(world.posterior).parameters
                                 else world.posterior(frame.df))
        dates = frame.df[DATE].to_numpy() if label_dates and DATE in frame.df.columns else None
        joint_label = np.asarray(world.label_posterior(frame.df, providers, dates))
    out = {}
    for source, joint in ((TRUTH, joint_truth), (PROVIDER, joint_label)):
        if joint.shape != (len(frame.df), 2 * n_age):
            raise ValueError(f"world posterior for {source} has shape {joint.shape}, expected "
                             f"({len(frame.df)}, {2 * n_age}): age edges differ from the world's")
        joint = check_probabilities(joint, 2 * n_age, f"bayes {source} posterior")
        out[source] = marginals_from_joint(joint, n_age)
    return out


def population_of(world: Any) -> Any:
    """The population form of a world (its generative tables without the drawn users and
    labels: ``World.population``), or None when the world has none (real data, test fakes)."""
    make = getattr(world, "population", None)
    return make() if callable(make) else None


def region_blind_of(world: Any) -> Any:
    """The population form of a synthetic world whose device tables lack its regional make
    effects (``synth.regional.region_blind``): all a reader who knows every generative table
    but what a make means per region can know. None for a world without such effects (every
    ``regional_make_strength`` 0: it would be the population form) or without tables."""
    params = getattr(world, "params", None)
    strengths = getattr(getattr(params, "config", None), "regional_make_strength", ())
    if not any(float(k) > 0 for _, k in strengths or ()):
        return None
    from pythia.synth.regional import region_blind

    return region_blind(world).population()


def in_between_of(world: Any, split_manifest: Mapping[str, Any]) -> Any:
    """The in-between form of a synthetic world given the run's train and validation rows
    (``synth.in_between``: read in batches), or None (no world with tables, e.g. real data or
    test fakes, or no train split). Countries' providers are read off the rows; the split
    manifest's ``class_names`` name its resample rates' classes. Raises ValueError when the
    run dropped power users (a truncation it does not model) or held out users (it would
    count them as users unseen by chance)."""
    paths = split_manifest.get("paths") or {}
    if getattr(world, "params", None) is None or TRAIN not in paths:
        return None
    refusal = in_between_refusal(split_manifest)
    if refusal:
        raise ValueError(refusal)
    splits = [s for s in (TRAIN, VALIDATION) if s in paths]
    from pythia.synth.in_between import in_between_world, read_observed

    return in_between_world(world, read_observed(split_manifest, splits))


def in_between_refusal(split_manifest: Mapping[str, Any]) -> str | None:
    """Why the in-between gauge cannot describe a run's splits (None: it can)."""
    if split_manifest.get("drop_power_users"):
        return ("the run dropped power users' rows from train: the in-between gauge does not "
                "model that truncation (rerun with drop_power_users off)")
    if float(split_manifest.get("holdout_users") or 0) > 0:
        return ("the run held out users from train (holdout_users > 0): the in-between gauge "
                "takes them for users unseen by chance (rerun with holdout_users 0)")
    return None


def posterior_probs_by_split(world: Any, data: EvalData
                             ) -> tuple[dict[str, Posteriors], str | None]:
    """Exact posteriors of every test split ({} without a world), and a note when the world
    cannot give them (e.g. custom age edges on a world built with others)."""
    if world is None:
        return {}, None
    splits = sorted({SPLIT_OF_TEST_SET[t] for t in TEST_SETS} & set(data.frames))
    try:
        return {s: posterior_probs(world, data.frames[s], len(data.edges)) for s in splits}, None
    except ValueError as exc:
        note = f"Bayes gauge skipped: {exc}"
        log.warning(note)
        return {}, note


def score_posterior(data: EvalData, bayes: dict[str, Posteriors]) -> list[pd.DataFrame]:
    """Metric rows of the exact posterior itself on every slice (model BAYES_MODEL)."""
    ident = {"model": BAYES_MODEL, "region": GLOBAL_REGION, "config_id": pd.NA}
    parts: list[pd.DataFrame] = []
    for test_set in TEST_SETS:
        frame = data.frames.get(SPLIT_OF_TEST_SET[test_set])
        if frame is None or frame.split not in bayes:
            continue
        all_rows = Aligned(np.arange(len(frame.df)), {}, len(frame.df))
        parts += score_slices(ident, frame, test_set, all_rows, bayes[frame.split],
                              data.eval_regions, data.edges, data.actual)[0]
    return parts


def build_gauge(metrics: pd.DataFrame, groups: Mapping[tuple, Any] | None = None
                ) -> pd.DataFrame | None:
    """Model vs exact-posterior log-loss and macro F1, on the rows each model was scored on
    (None without a world): ``ratio`` against the realised posterior (the world's drawn
    users and labels; no model beats it on average) and, when the world has those forms,
    ``ratio_in_between`` against the in-between posterior (what the run's train and
    validation rows say about the drawn users), ``ratio_population`` against the
    population posterior (the generative tables only) and ``ratio_region_blind`` against the
    region-blind one (those tables without the regional make effects: ``region_blind_of``),
    on the same rows. ``ratio_se`` / ``ratio_population_se`` / ``ratio_region_blind_se``: the
    SEs of those ratios clustered by user, from evaluate's per-group sums (``groups``:
    ``SliceSums.groups``) where it keeps them (provider labels, the natural test day's
    slices: ``margins.ratio_se``); NaN elsewhere and without them."""
    names = {"log_loss": "logloss", "macro_f1": "macro_f1", "bayes_log_loss": "bayes_logloss",
             "bayes_macro_f1": "bayes_macro_f1"}
    for form in OTHER_FORMS:  # each streamed form's metrics (``sums._label_rows``)
        names.update({f"{form}_log_loss": f"{form}_logloss",
                      f"{form}_macro_f1": f"{form}_macro_f1"})
    if not (metrics["metric"] == "bayes_log_loss").any():
        return None
    keys = ["model", "region", "config_id", "eval_region", "target", "test_set", "label_source"]
    sel = metrics[metrics["metric"].isin(list(names)) & metrics["class"].isna()
                  & metrics["test_set"].isin(TEST_SETS) & (metrics["model"] != BAYES_MODEL)]
    out = unstack_observed(sel.assign(metric=sel["metric"].map(names)), keys, "metric", "value")
    out = out.dropna(subset=["bayes_logloss"])
    out["ratio"] = out["logloss"] / out["bayes_logloss"]
    for form in OTHER_FORMS:  # a form the world lacks (or a run from before it): NaN
        for c in (f"{form}_logloss", f"{form}_macro_f1"):
            if c not in out.columns:
                out[c] = np.nan
        out[f"ratio_{form}"] = out["logloss"] / out[f"{form}_logloss"]
    for form, se in zip(GAUGE_FORMS, _ratio_ses(out, groups or {})):
        out[SE_COLUMNS[form]] = se
    gap = out["population_logloss"] - out["bayes_logloss"]
    out["gap_closed"] = ((out["population_logloss"] - out["logloss"]) / gap).where(gap > 1e-12)
    cols = keys + ["logloss", "bayes_logloss", "ratio", "ratio_se", "in_between_logloss",
                   "ratio_in_between", "population_logloss", "ratio_population",
                   "ratio_population_se", "gap_closed", "region_blind_logloss",
                   "ratio_region_blind", "ratio_region_blind_se", "macro_f1", "bayes_macro_f1",
                   "population_macro_f1", "in_between_macro_f1", "region_blind_macro_f1"]
    return out[cols].sort_values(keys).reset_index(drop=True)


def _ratio_ses(g: pd.DataFrame, groups: Mapping[tuple, Any]) -> list[np.ndarray]:
    """Per gauge row, the SE of its ratio against each of ``GAUGE_FORMS`` (``ratio_se``)."""
    out = [np.full(len(g), np.nan) for _ in GAUGE_FORMS]
    rows = zip(g["model"], g["region"], g["config_id"], g["eval_region"], g["target"],
               g["test_set"], g["label_source"])
    for i, (model, region, config, eval_region, target, test_set, source) in enumerate(rows):
        if source != PROVIDER or test_set not in TEST_PARTS:
            continue
        part = ((model, region, int(config)), eval_region, TEST_PARTS[test_set])
        mine = groups.get(part + ("model", target))
        for j, form in enumerate(GAUGE_FORMS):
            if mine is not None and part + (form, target) in groups:
                out[j][i] = ratio_se(mine, groups[part + (form, target)])
    return out


def gauge_by_slice(gauge: pd.DataFrame | None, champions: pd.DataFrame) -> pd.DataFrame:
    """Per eval region, its chosen candidate (the champion, else the region's best on
    validation, which the champions row names) on the natural test day and its power-user
    and new-user slices (GAUGE_SLICES; a slice without rows has no row), per label source:
    model / realised-Bayes log-loss per target (``ratio_*``, the headline bar), model /
    in-between-Bayes (``ratio_in_between_*``) and model / population-Bayes
    (``ratio_population_*``: the fair bar on new users), on the same rows; where the gauge
    has them (provider labels), the user-clustered SEs of the first and last, each after
    its ratio (``ratio_se_*``, ``ratio_population_se_*``: ``build_gauge``)."""
    cols = ["eval_region", "candidate", "blessed", "test_set", "label_source"]
    if gauge is None or gauge.empty or champions.empty:
        return pd.DataFrame(columns=cols)
    chosen = champions.dropna(subset=["model"])[
        ["region", "model", "candidate_region", "config_id", "blessed"]].rename(
        columns={"region": "eval_region", "candidate_region": "region"})
    chosen = chosen.assign(config_id=chosen["config_id"].astype("int64"))
    g = gauge[gauge["test_set"].isin(GAUGE_SLICES)]
    g = g.assign(config_id=g["config_id"].astype("int64")).merge(
        chosen, on=["eval_region", "model", "region", "config_id"])
    if g.empty:
        return pd.DataFrame(columns=cols)
    g = g.assign(candidate=g["model"] + "/" + g["region"] + "#" + g["config_id"].astype(str))
    # older runs: ratio only, or no in-between, or no SEs; a run with the in-between gauge
    # off has the column, all NaN: left out, not printed as a block of NaN
    values = [c for c in ("ratio", "ratio_se", "ratio_in_between", "ratio_population",
                          "ratio_population_se")
              if c in g.columns and (c == "ratio" or g[c].notna().any())]
    wide = g.set_index(cols + ["target"])[values].unstack("target")  # NaN kept, no product
    targets = list(dict.fromkeys(t for _, t in wide.columns))
    wide.columns = [f"{m}_{t}" for m, t in wide.columns]
    shown = []
    for m in (v for v in values if not v.endswith("_se")):  # each ratio, then its SE
        for t in targets:
            shown += [c for c in (f"{m}_{t}", f"{m}_se_{t}") if c in wide.columns]
    wide = wide[shown]
    order = {s: i for i, s in enumerate(GAUGE_SLICES)}
    out = wide.reset_index()
    out["_slice"] = out["test_set"].map(order)
    return (out.sort_values(["eval_region", "_slice", "label_source"]).drop(columns="_slice")
            .reset_index(drop=True))


def with_ses(table: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """``table`` for reading: each ratio with an SE column (``<m>_se_<t>`` beside ``<m>_<t>``)
    shown as text, "1.0141 ± 0.0035" (the ratio alone where its SE is missing), and the SE
    columns dropped; other columns as they are."""
    out = table.copy()
    for se in [c for c in table.columns if "_se_" in c]:
        ratio = se.replace("_se_", "_", 1)
        if ratio not in out.columns:
            continue
        out[ratio] = [("" if pd.isna(r) else f"{r:.{digits}f}")
                      + ("" if pd.isna(r) or pd.isna(s) else f" ± {s:.{digits}f}")
                      for r, s in zip(out[ratio], out[se])]
        out = out.drop(columns=se)
    return out


def print_gauge_slices(gauge: Any, champions: Any, out: TextIO) -> None:
    """Print ``gauge_by_slice`` of a run's gauge and champions artifacts (nothing without a
    world), for `pythia report`."""
    if gauge is None or champions is None:
        return
    table = gauge_by_slice(pd.DataFrame(gauge), pd.DataFrame(champions))
    if len(table):
        legend = ["ratio_* = model / realised posterior, the headline bar"]
        if any(c.startswith("ratio_in_between_") for c in table.columns):
            legend.append("ratio_in_between_* = model / in-between posterior (the train and "
                          "validation rows' users)")
        if any(c.startswith("ratio_population_") for c in table.columns):
            legend.append("ratio_population_* = model / population posterior")
            if (table["test_set"] == NATURAL_NEW_USERS).any():
                legend.append(f"on {NATURAL_NEW_USERS} (users held out of training) the fair "
                              "bar is ratio_population_*: the training rows say nothing "
                              "about them")
        if any("_se_" in c for c in table.columns):
            legend.append("± its SE, clustered by user (provider labels)")
        print(f"\nBayes gauge per slice ({'; '.join(legend)}; same rows)", file=out)
        print(with_ses(table).to_string(index=False), file=out)


def print_regional_structure(gauge: Any, champions: Any, out: TextIO) -> None:
    """Print ``tables.build_regional_structure`` of a run's gauge and champions artifacts
    (nothing without a region-blind gauge), for `pythia report`."""
    from pythia.evaluate.tables import SE_COLUMNS, build_regional_structure

    if gauge is None or champions is None:
        return
    table = build_regional_structure(pd.DataFrame(gauge), pd.DataFrame(champions))
    if len(table):
        se = " (± its SE, clustered by user)"
        if table[SE_COLUMNS].isna().all().all():  # a run from before the SEs
            table, se = table.drop(columns=SE_COLUMNS), ""
        print("\nRegional structure (natural test day, provider labels; effect_* = region-blind"
              " / population posterior: what the world's regional make effects are worth; "
              "ratio_region_blind_* = model / region-blind posterior, below 1: the model "
              f"learnt some of them{se}; same rows)", file=out)
        print(with_ses(table).to_string(index=False), file=out)
