"""All of the champion choice: per region, the best validation log-loss wins if it beats every
baseline and does not regress against the previous run's champion on the same test rows; and
which model each region's slot of the bid-time bundle gets (blessed champion, else the previous
run's, else the best global baseline).

The baseline rule (issue 13: a model that does not beat the trivial baselines is a failure to
report loudly, not a champion): a region is blessed only when its best candidate is NOT a
baseline, i.e. it beats every baseline that scored the region (the constant class prior, which
every run trains, and logistic regression; gbdt is a contender) on the natural-weighted validation log-loss; ties
go to the baseline. Otherwise the row carries a ``warning`` with the numbers (card, end step,
`pythia report`) and the bundle exports nothing new for the region. The noise rule (issue 15,
``margins``): the best model must also beat each baseline model's best candidate by more than
``z_min`` user-clustered standard errors of the paired validation difference (0 = off).

Baseline and reference names come from the caller or the candidates' own flags (the registry
owns them). Nothing here reads files or Metaflow.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from pythia.config import GLOBAL_REGION
from pythia.evaluate.frames import JOINT_TARGET
from pythia.evaluate.guard import guard_regional
from pythia.evaluate.margins import (DEFAULT_Z_MIN, MARGIN_COLUMNS, MarginLookup,
                                     SliceMarginLookup, noise_test)
from pythia.evaluate.previous import compare_with_previous  # noqa: F401 (its reference)
from pythia.evaluate.scores import (SCORE_COLUMNS, baseline_models_of,  # noqa: F401
                                    champion_scores)
from pythia.evaluate.slices import candidate_label, check_candidates
DEFAULT_TOLERANCE = 0.01  # relative test log-loss increase allowed against the previous champion

CHAMPION_COLUMNS = [
    "region", "champion", "model", "candidate_region", "config_id", "model_dir", "val_logloss",
    "baseline_val_logloss", "prior_val_logloss", "baselines", "beats_baselines", *MARGIN_COLUMNS,
    "previous_logloss", "current_logloss_on_same_rows", "n_same_rows", "blessed", "reason",
    "warning", "guard",
]

# previous_check(region, winner_row) -> (previous_logloss, current_logloss, n_rows, note)
PreviousCheck = Callable[[str, Mapping], tuple[float | None, float | None, int, str | None]]
# previous(region, split rows) -> {target: (n, K) probabilities}, or None without a champion
PreviousScorer = Callable[[str, pd.DataFrame], Mapping[str, np.ndarray] | None]

__all__ = ["CHAMPION_COLUMNS", "DEFAULT_TOLERANCE", "baseline_models_of", "candidate_label",
           "champion_scores", "choose_bundle_models", "choose_champions",
           "compare_with_previous", "reference_models_of", "select_champions"]


def reference_models_of(candidates: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The constant-prior model name(s) among trained candidates (``is_reference``)."""
    return tuple(sorted({str(c["model"]) for c in candidates if c.get("is_reference")}))


def _is_finite(x: object) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------- the run's champions

def choose_champions(metrics: pd.DataFrame, candidates: Sequence[Mapping[str, Any]],
                     present: Sequence[str], previous_check: PreviousCheck | None,
                     baseline_models: Sequence[str], tolerance: float = DEFAULT_TOLERANCE, *,
                     margins: MarginLookup | None = None, z_min: float = DEFAULT_Z_MIN,
                     slice_margins: SliceMarginLookup | None = None) -> pd.DataFrame:
    """Score the candidates from the metrics table and pick one champion per eval region.

    Args:
        metrics: the long metrics table of every candidate.
        candidates: the train-step records (model, region, config_id, model_dir, …).
        present: the regions with rows ('global' is always evaluated besides them).
        previous_check: compares a region's winner with the previous run's champion on the
            same test rows (``previous.PreviousComparison``; ``compare_with_previous`` is its
            in-memory reference); None when there is no previous run.
        baseline_models: model names every champion must beat (the registry's baselines).
        tolerance: relative test log-loss regression against the previous champion allowed.
        margins: paired validation margins (``margins.margin_lookup`` of the streamed sums).
        z_min: the noise rule's threshold in standard errors (0: point estimates only).
        slice_margins: the per-slice validation margins (``margins.slice_margin_lookup``): a
            regional candidate losing to its global one on the power users or the other users
            by more than ``z_min`` SEs is not chosen (``guard``); None: no guard.
    """
    scores = champion_scores(metrics, check_candidates(candidates), candidates, present)
    guarded: dict[str, str] = {}
    if slice_margins is not None:
        scores, guarded = guard_regional(scores, slice_margins, z_min, baseline_models)
    champions = select_champions(scores, [GLOBAL_REGION] + list(present), previous_check,
                                 tolerance, baseline_models=baseline_models,
                                 reference_models=reference_models_of(candidates),
                                 margins=margins, z_min=z_min)
    champions["config_id"] = champions["config_id"].astype("Int64")
    # the guard's one line, also at the end of the reason (what the card and report show)
    champions["guard"] = champions["region"].map(guarded)
    has = champions["guard"].notna()
    champions.loc[has, "reason"] = (champions.loc[has, "reason"].fillna("") + "; "
                                    + champions.loc[has, "guard"])
    return champions


# ---------------------------------------------------------------- rules

def select_champions(scores: pd.DataFrame, regions: Sequence[str],
                     previous_check: PreviousCheck | None = None,
                     tolerance: float = DEFAULT_TOLERANCE, *,
                     baseline_models: Sequence[str],
                     reference_models: Sequence[str] = (), margins: MarginLookup | None = None,
                     z_min: float = DEFAULT_Z_MIN) -> pd.DataFrame:
    """Pick and bless one champion per region.

    Args:
        scores: one row per (candidate, region it can score) with columns eval_region, model,
            candidate_region, config_id, model_dir, val_logloss (age_gender, on that region's
            validation slice), eligible (bool) and ineligible_reason (str or None).
        regions: regions to decide, e.g. ['EU', 'NA', 'global'].
        previous_check: compares the winner with the previous run's champion of the region on
            the same test rows; None when there is no previous run.
        tolerance: relative log-loss increase over the previous champion still accepted.
        baseline_models: model names of the baselines every champion must beat.
        reference_models: the constant-prior baseline(s) among them ("nothing beats the
            prior" is the loudest warning).
        margins: ``margin(key_a, key_b, region)``, the paired validation margins; required
            unless ``z_min`` is 0.
        z_min: the best model must beat each baseline by more than this many SEs.

    Returns:
        The champions DataFrame (CHAMPION_COLUMNS); ``champion`` is None when not blessed;
        ``warning`` is set when the baselines win the region.
    """
    missing = set(SCORE_COLUMNS) - set(scores.columns)
    if missing:
        raise ValueError(f"scores table lacks columns {sorted(missing)}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if isinstance(baseline_models, str) or not baseline_models:
        raise ValueError(f"baseline_models must name at least one model, got {baseline_models!r}")
    if not z_min >= 0 or (z_min > 0 and margins is None):
        raise ValueError(f"z_min must be >= 0 and, above 0, comes with margins; got {z_min}")
    names = (tuple(baseline_models), tuple(reference_models))
    rule = (margins or (lambda a, b, region: None), float(z_min))
    out = [_decide_region(scores[scores["eval_region"] == region], region, previous_check,
                          tolerance, names, rule) for region in regions]
    # the figures stay numbers (NaN when undefined) in Parquet and JSON
    return pd.DataFrame(out, columns=CHAMPION_COLUMNS).astype(
        {c: float for c in MARGIN_COLUMNS if c != "margin_vs"})


def _decide_region(pool: pd.DataFrame, region: str, previous_check: PreviousCheck | None,
                   tolerance: float, names: tuple[tuple[str, ...], tuple[str, ...]],
                   rule: tuple[MarginLookup, float]) -> dict:
    """The champions row of one region (``names`` = (baseline models, reference models),
    ``rule`` = (margins, z_min))."""
    row = {c: None for c in CHAMPION_COLUMNS}
    row.update(region=region, blessed=False, n_same_rows=0)
    if pool.empty:
        row["reason"] = f"no candidate can score region {region}; keeping the previous champion"
        return row
    ok = pool[pool["eligible"].astype(bool) & pool["val_logloss"].map(_is_finite)]
    if ok.empty:
        why = "; ".join(f"{candidate_label(r.model, r.candidate_region, r.config_id)}: "
                        f"{r.ineligible_reason or 'no finite validation log-loss'}"
                        for r in pool.itertuples())
        row["reason"] = f"no eligible candidate ({why}); keeping the previous champion"
        return row
    # ties go to the baseline (simplest model), then to regional models, then lowest config
    is_base = ok["model"].isin(names[0])
    ranked = ok.assign(_not_base=~is_base, _is_global=ok["candidate_region"] != region,
                       _cfg=ok["config_id"].astype(str))
    ranked = ranked.sort_values(["val_logloss", "_not_base", "_is_global", "_cfg"])
    best = ranked.iloc[0]
    row.update(model=best["model"], candidate_region=best["candidate_region"],
               config_id=best["config_id"], model_dir=best["model_dir"],
               val_logloss=float(best["val_logloss"]))
    verdict = _baseline_verdict(ranked, region, *names)
    row.update({k: v for k, v in verdict.items() if k != "note"})
    noise = noise_test(ranked, region, names[0], *rule)
    row.update({c: noise[c] for c in MARGIN_COLUMNS})
    if not verdict["beats_baselines"]:
        row["reason"] = verdict["note"]
        return row
    if not noise["passed"]:
        row.update(reason=noise["note"], warning=noise["warning"])
        return row
    notes = [verdict["note"], noise["note"]]
    if previous_check is None:
        notes.append("no previous run to compare with")
    else:
        prev_ll, cur_ll, n_rows, note = previous_check(region, best.to_dict())
        row.update(previous_logloss=prev_ll, current_logloss_on_same_rows=cur_ll,
                   n_same_rows=int(n_rows or 0))
        if _is_finite(prev_ll) and _is_finite(cur_ll):
            change = cur_ll / prev_ll - 1.0 if prev_ll > 0 else 0.0
            text = (f"test log-loss {cur_ll:.4f} vs previous champion {prev_ll:.4f} on the "
                    f"same {n_rows} rows ({change:+.1%}, tolerance {tolerance:.1%})")
            if note:
                text += f" [{note}]"
            if cur_ll > prev_ll * (1.0 + tolerance):
                row["reason"] = "; ".join(notes + [f"REGRESSION: {text}; keeping the previous "
                                                   "champion"])
                return row
            notes.append(f"no regression: {text}")
        else:
            notes.append(note or "no previous champion for this region")
    row.update(blessed=True, champion=candidate_label(best["model"], best["candidate_region"],
                                                      best["config_id"]),
               reason="; ".join(notes))
    return row


def _label(r: pd.Series) -> str:
    return candidate_label(r["model"], r["candidate_region"], r["config_id"])


def _baseline_verdict(ranked: pd.DataFrame, region: str, baseline_models: Sequence[str],
                      reference_models: Sequence[str]) -> dict:
    """Whether the best of ``ranked`` (eligible candidates, best first, ties to baselines)
    beats every baseline; the figures; and the loud ``warning`` when it does not.

    Returns {beats_baselines, baseline_val_logloss, prior_val_logloss, baselines, note,
    warning}.
    """
    best = ranked.iloc[0]
    base = ranked[ranked["model"].isin(baseline_models)]
    models = ranked[~ranked["model"].isin(baseline_models)]
    prior = base[base["model"].isin(reference_models)]
    # the best candidate of each baseline model, e.g. "class_prior/global#0 1.9790"
    per_model = base.drop_duplicates("model")
    figures = ", ".join(f"{_label(r)} {r['val_logloss']:.4f}" for _, r in per_model.iterrows())
    out = {"baseline_val_logloss": float(base.iloc[0]["val_logloss"]) if len(base) else None,
           "prior_val_logloss": float(prior.iloc[0]["val_logloss"]) if len(prior) else None,
           "baselines": figures or None, "warning": None}
    if base.empty:
        out.update(beats_baselines=False, note=(
            f"no {' or '.join(baseline_models)} baseline scored region {region}: a champion "
            "must beat them, so nothing is blessed; keeping the previous champion"))
        out["warning"] = (f"NO BASELINE in {region}: cannot tell whether "
                          f"{_label(best)} ({best['val_logloss']:.4f}) beats them")
        return out
    if best["model"] not in baseline_models:
        out.update(beats_baselines=True, note=(
            f"{_label(best)} has the best validation log-loss ({best['val_logloss']:.4f}) and "
            f"beats every baseline ({figures})"))
        return out
    out["beats_baselines"] = False
    if models.empty:
        top = "no non-baseline model was trained"
        out["warning"] = (f"ONLY BASELINES in {region}: best {_label(best)} "
                          f"{best['val_logloss']:.4f}; no model to bless")
    else:
        top_row = models.iloc[0]
        top = f"best model {_label(top_row)} {top_row['val_logloss']:.4f}"
        prior_ll = out["prior_val_logloss"]
        if prior_ll is not None and float(top_row["val_logloss"]) >= prior_ll:
            out["warning"] = (f"NOTHING BEATS THE CONSTANT PRIOR in {region}: {top} >= "
                              f"{_label(prior.iloc[0])} {prior_ll:.4f}")
        else:
            out["warning"] = (f"NO MODEL BEATS THE BASELINES in {region}: {top} vs "
                              f"{_label(best)} {best['val_logloss']:.4f}")
    out["note"] = (f"NOT BLESSED: the best candidate is the {best['model']} baseline "
                   f"{_label(best)} (validation log-loss {best['val_logloss']:.4f}); {top}; "
                   f"baselines: {figures}; the bundle exports nothing new for {region}")
    return out


# ---------------------------------------------------------------- the bundle's models

def choose_bundle_models(champions: pd.DataFrame, candidates: Sequence[Mapping[str, Any]],
                         previous_champions: Mapping[str, Mapping[str, Any]], pathspec: str,
                         baseline_models: Sequence[str],
                         provenance: Mapping[str, Any] | None = None) -> list[dict]:
    """The model of each region's slot in the bid-time bundle.

    A region's blessed champion gets the slot; a region whose candidates were not blessed
    (a baseline won it, a regression, no eligible candidate) exports nothing new: it keeps the
    previous run's champion when there is one, otherwise the scorer routes it to the global
    model. The global slot, when neither gives one, falls back to the best global baseline —
    the global row's best candidate when a baseline won it (natural-weighted validation
    log-loss), else the best global baseline candidate by its train-step validation log-loss
    (any global candidate if no baseline was trained) — so a bundle has a model for every
    request; its entry's source is 'fallback'. (With no global candidate at all there is no
    global slot, and the bundle writer refuses the list.)

    Args:
        champions: this run's champions table (CHAMPION_COLUMNS).
        candidates: the train-step records (model, region, model_dir, val_logloss, …).
        previous_champions: region -> the previous run's blessed champion row (model,
            model_dir, …); {} without a previous run.
        pathspec: this run's id, recorded as the source of its own champions.
        baseline_models: model names preferred for the global fallback.
        provenance: this run's ``blessed_date`` (its test day), ``user_split`` and
            ``age_edges``, recorded with its own champions (a kept one carries its run's,
            ``runs.previous_champions``).

    Returns:
        [{region, model, model_dir, source, blessed_in, blessed_date, user_split,
        age_edges}], source being ``pathspec``, 'previous run' or 'fallback'; ``blessed_in``,
        the run that blessed the model (None for a fallback): the end step's
        ``bundle_models`` artifact, which the next run keeps from.
    """
    chosen: list[dict] = []
    rows = champions.to_dict("records")
    mine = {"blessed_date": None, "user_split": None, "age_edges": None, **(provenance or {})}
    for row in rows:
        if row.get("blessed") and row.get("model"):
            chosen.append({"region": row["region"], "model": row["model"],
                           "model_dir": row["model_dir"], "source": pathspec,
                           "blessed_in": pathspec, **mine})
        elif row["region"] in previous_champions:
            prev = previous_champions[row["region"]]
            chosen.append({"region": row["region"], "model": prev["model"],
                           "model_dir": prev["model_dir"], "source": "previous run",
                           **{k: prev.get(k) for k in ("blessed_in", "blessed_date",
                                                       "user_split", "age_edges")}})
    if not any(c["region"] == GLOBAL_REGION for c in chosen):
        fallback = _global_fallback(rows, candidates, baseline_models)
        if fallback is not None:
            chosen.append({"region": GLOBAL_REGION, "model": fallback["model"],
                           "model_dir": fallback["model_dir"], "source": "fallback",
                           "blessed_in": None, **mine})
    return chosen


def _global_fallback(rows: Sequence[Mapping[str, Any]], candidates: Sequence[Mapping[str, Any]],
                     baseline_models: Sequence[str]) -> Mapping[str, Any] | None:
    """The global slot's model when nothing was blessed and nothing kept (see above)."""
    glob = next((r for r in rows if r["region"] == GLOBAL_REGION), None)
    if (glob is not None and glob.get("model") in baseline_models and glob.get("model_dir")
            and glob.get("candidate_region") == GLOBAL_REGION):
        return glob

    def loss(c: Mapping[str, Any]) -> float:
        v = (c.get("val_logloss") or {}).get(JOINT_TARGET)
        return float(v) if _is_finite(v) else math.inf

    pool = sorted((c for c in candidates if c["region"] == GLOBAL_REGION),
                  key=lambda c: (c["model"] not in baseline_models, loss(c)))
    return pool[0] if pool else None
