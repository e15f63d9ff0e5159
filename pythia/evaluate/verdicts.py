"""Every trained model family against the baselines, region by region.

The champion rule (``champions``) guards the bundle: a region's slot goes to a model only when
it beats every baseline. It says nothing of the families that lose: on a run where the MLP
wins every region, a TabNet behind logistic regression everywhere is visible only by reading
the headline row by row. A model that does not beat the trivial baselines is a failure to
report loudly (issue 13), so this table puts each non-baseline family's best candidate of
each region against the region's best baseline candidate, on the champion rule's measure
(the natural-weighted validation AgeGender log-loss, ``scores.champion_scores``), and
``verdict_alarm`` names, loudly, a family that beats the baselines in *no* region it scored,
with what its fits cost. The card, the end step and ``pythia report`` show both; they are
built from the run's ``metrics`` and ``candidates`` artifacts, so an older run has them too.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd

from pythia.config import GLOBAL_REGION
from pythia.evaluate.scores import baseline_models_of, champion_scores
from pythia.evaluate.slices import candidate_label, check_candidates

VERDICT_COLUMNS = ["model", "eval_region", "candidate", "val_logloss", "baseline",
                   "baseline_val_logloss", "gap", "beats_baselines"]
_BAR = "!" * 88


def build_model_verdicts(metrics: Any, candidates: Sequence[Mapping[str, Any]] | None,
                         baseline_models: Sequence[str] | None = None) -> pd.DataFrame:
    """Per non-baseline model and evaluated region: its best eligible candidate there, the
    region's best baseline candidate, ``gap`` = model - baseline validation log-loss and
    ``beats_baselines`` (gap < 0). ``baseline_models``: the champion rule's (None: the
    candidates' ``is_baseline`` flags). Empty without metrics, candidates or baselines."""
    if metrics is None or not candidates:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    metrics = pd.DataFrame(metrics)
    baselines = set(baseline_models_of(candidates) if baseline_models is None
                    else baseline_models)
    if metrics.empty or not baselines:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    present = sorted(set(metrics["eval_region"].dropna()) - {GLOBAL_REGION})
    scores = champion_scores(metrics, check_candidates(candidates), candidates, present)
    scores = scores[scores["eligible"].astype(bool) & scores["val_logloss"].notna()]
    rows = []
    for region, here in scores.groupby("eval_region", sort=False):
        base = here[here["model"].isin(baselines)]
        if base.empty:
            continue
        b = base.loc[base["val_logloss"].idxmin()]
        for model, mine in here[~here["model"].isin(baselines)].groupby("model", sort=True):
            best = mine.loc[mine["val_logloss"].idxmin()]
            gap = float(best["val_logloss"]) - float(b["val_logloss"])
            rows.append({"model": model, "eval_region": region,
                         "candidate": _label(best), "val_logloss":
                         float(best["val_logloss"]), "baseline": _label(b),
                         "baseline_val_logloss": float(b["val_logloss"]), "gap": gap,
                         "beats_baselines": bool(gap < 0)})
    out = pd.DataFrame(rows, columns=VERDICT_COLUMNS)
    order = {GLOBAL_REGION: ""}  # global first, then the regions by name
    return out.sort_values(["model", "eval_region"], key=lambda s: s.map(
        lambda v: order.get(v, v)) if s.name == "eval_region" else s).reset_index(drop=True)


def _label(row: pd.Series) -> str:
    return candidate_label(row["model"], row["candidate_region"], row["config_id"])


def failing_models(verdicts: pd.DataFrame) -> list[str]:
    """The models that beat the baselines in no region they were scored on."""
    if verdicts is None or not len(verdicts):
        return []
    wins = pd.DataFrame(verdicts).groupby("model")["beats_baselines"].any()
    return sorted(wins.index[~wins.astype(bool)])


def fit_seconds_of(candidates: Sequence[Mapping[str, Any]] | None, model: str) -> float:
    """The summed fit seconds of ``model``'s candidates (0 when none recorded them)."""
    total = 0.0
    for c in candidates or []:
        s = c.get("fit_seconds") if c.get("model") == model else None
        if isinstance(s, (int, float)) and math.isfinite(s):
            total += float(s)
    return total


def verdict_alarm(verdicts: pd.DataFrame | None,
                  candidates: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """The loud block naming each model that beats the baselines nowhere, with its gaps and
    fit seconds; [] when every trained model beats them somewhere."""
    failing = failing_models(verdicts) if verdicts is not None else []
    if not failing:
        return []
    table = pd.DataFrame(verdicts)
    lines = [_BAR, "WARNING: model(s) behind the baselines in every region they were scored "
             "on (validation AgeGender log-loss). They cannot be champions on this data:"]
    for model in failing:
        mine = table[table["model"] == model]
        gaps = ", ".join(f"{r.eval_region} {r.val_logloss:.4f} against {r.baseline} "
                         f"{r.baseline_val_logloss:.4f} ({r.gap:+.4f})"
                         for r in mine.itertuples())
        lines.append(f"  {model}: {gaps}; its fits took "
                     f"{fit_seconds_of(candidates, model):.0f} s. Leave it out of --models, "
                     "or search its hyperparameters (--search N).")
    return lines + [_BAR]


def verdict_lines(verdicts: pd.DataFrame | None) -> list[str]:
    """One line per model: in how many of its regions it beats the best baseline, and its gap
    where it does not."""
    if verdicts is None or not len(verdicts):
        return []
    out = []
    for model, mine in pd.DataFrame(verdicts).groupby("model", sort=True):
        won = mine[mine["beats_baselines"].astype(bool)]
        lost = mine[~mine["beats_baselines"].astype(bool)]
        text = f"  {model}: beats the best baseline in {len(won)} of {len(mine)} region(s)"
        if len(lost) and len(won):
            text += f" ({', '.join(won['eval_region'])})"
        if len(lost):
            text += "; behind in " + ", ".join(f"{r.eval_region} ({r.gap:+.4f})"
                                               for r in lost.itertuples())
        out.append(text)
    return out


def print_model_verdicts(metrics: Any, candidates: Sequence[Mapping[str, Any]] | None,
                         out: Any) -> None:
    """``pythia report``'s section: the loud block, if any, then the table (nothing without
    a non-baseline model)."""
    table = build_model_verdicts(metrics, candidates)
    if not len(table):
        return
    for line in verdict_alarm(table, candidates):
        print(line, file=out)
    print("\nModels against the baselines (validation AgeGender log-loss; gap = model - the "
          "region's best baseline)", file=out)
    print(table.to_string(index=False), file=out)
