"""Every trained model family against the baselines, region by region.

The champion rule (``champions``) guards the bundle: a region's slot goes to a model only when
it beats every baseline. It says nothing of the families that lose: on a run where the MLP
wins every region, a TabNet behind logistic regression everywhere is visible only by reading
the headline row by row. A model that does not beat the trivial baselines is a failure to
report loudly (issue 13), so this table puts each non-baseline family's best candidate of
each region against the region's best baseline candidate, on the champion rule's measure
(the natural-weighted validation AgeGender log-loss, ``scores.champion_scores``) and with its
noise test: a model beats the baselines only by more than ``z_min`` user-clustered SEs of the
paired difference (``margins``), as a champion must; a smaller lead is 'within noise'.
``verdict_alarm`` names, loudly, a family that beats the baselines in *no* region it scored,
with what its fits cost. The card, the end step and ``pythia report`` show both, from the
evaluate step's ``model_verdicts``; a run from before that artifact has its table rebuilt
from its ``metrics`` and ``candidates`` on point estimates (the paired sums are not stored).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd

from pythia.config import GLOBAL_REGION
from pythia.evaluate.margins import DEFAULT_Z_MIN, Margin, MarginLookup, score_key
from pythia.evaluate.scores import baseline_models_of, champion_scores
from pythia.evaluate.slices import candidate_label, check_candidates

VERDICT_COLUMNS = ["model", "eval_region", "candidate", "val_logloss", "baseline",
                   "baseline_val_logloss", "gap", "gap_se", "gap_z", "z_min", "verdict",
                   "beats_baselines"]
AHEAD, LEVEL, BEHIND, NO_SE = "ahead", "within noise", "behind", "no SE"
_BAR = "!" * 88


def build_model_verdicts(metrics: Any, candidates: Sequence[Mapping[str, Any]] | None,
                         baseline_models: Sequence[str] | None = None,
                         margins: MarginLookup | None = None,
                         z_min: float = DEFAULT_Z_MIN) -> pd.DataFrame:
    """Per non-baseline model and evaluated region: its best eligible candidate there, the
    region's best baseline candidate and ``gap`` = model - baseline validation log-loss.

    With ``margins`` (evaluate's paired sums, ``margins.margin_lookup``) the gap gets its
    user-clustered SE and z, and the champion rule's noise test decides: ``verdict`` is
    'ahead' (z < -z_min), 'behind' (z > z_min), 'within noise' or 'no SE' (too few user
    groups), and ``beats_baselines`` is 'ahead'; ``z_min`` 0 is the point-estimate rule.
    Without them (the end step or ``pythia report`` of a run from before the stored table)
    ``beats_baselines`` is gap < 0, ``z_min`` NaN and the verdict says 'point estimate'.
    ``baseline_models``: the champion rule's (None: the candidates' ``is_baseline``
    flags). Empty without metrics, candidates or baselines."""
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
                         **_noise_test(gap, margins and margins(score_key(best),
                                                                score_key(b), region),
                                       margins is not None, z_min)})
    out = pd.DataFrame(rows, columns=VERDICT_COLUMNS)
    order = {GLOBAL_REGION: ""}  # global first, then the regions by name
    return out.sort_values(["model", "eval_region"], key=lambda s: s.map(
        lambda v: order.get(v, v)) if s.name == "eval_region" else s).reset_index(drop=True)


def _noise_test(gap: float, margin: Margin | None, paired: bool, z_min: float) -> dict:
    """The verdict columns of one gap (``paired``: the run's paired sums were given)."""
    if not paired:
        return {"gap_se": math.nan, "gap_z": math.nan, "z_min": math.nan,
                "verdict": f"{AHEAD if gap < 0 else BEHIND} (point estimate)",
                "beats_baselines": bool(gap < 0)}
    se, z = (margin.se, margin.z) if margin is not None else (math.nan, math.nan)
    if z_min == 0:
        verdict = AHEAD if gap < 0 else BEHIND
    elif not math.isfinite(z):
        verdict = NO_SE
    else:
        verdict = AHEAD if z < -z_min else BEHIND if z > z_min else LEVEL
    return {"gap_se": float(se), "gap_z": float(z), "z_min": float(z_min),
            "verdict": verdict, "beats_baselines": verdict == AHEAD}


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


def _noise_rule(table: pd.DataFrame) -> str:
    """How 'beats' was decided: 'by more than 2 SE' (the noise test) or '' (point estimates;
    z_min 0 or a table from before the test)."""
    z = pd.to_numeric(table["z_min"], errors="coerce") if "z_min" in table else pd.Series()
    z = z.dropna()
    return f" by more than {z.iloc[0]:g} SE" if len(z) and z.iloc[0] > 0 else ""


def _gap_text(r: Any) -> str:
    """'+0.0212' or '+0.0212, z +4.10' (when the gap has an SE)."""
    z = getattr(r, "gap_z", math.nan)
    return f"{r.gap:+.4f}" + (f", z {z:+.2f}" if isinstance(z, float) and math.isfinite(z)
                              else "")


def verdict_alarm(verdicts: pd.DataFrame | None,
                  candidates: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """The loud block naming each model that beats the baselines nowhere, with its gaps and
    fit seconds; [] when every trained model beats them somewhere."""
    failing = failing_models(verdicts) if verdicts is not None else []
    if not failing:
        return []
    table = pd.DataFrame(verdicts)
    rule = _noise_rule(table)
    lines = [_BAR, f"WARNING: model(s) that beat the baselines{rule} in no region they were "
             f"scored on (validation AgeGender log-loss{', user-clustered SEs' if rule else ''})."
             " They cannot be champions on this data:"]
    for model in failing:
        mine = table[table["model"] == model]
        gaps = ", ".join(f"{r.eval_region} {r.val_logloss:.4f} against {r.baseline} "
                         f"{r.baseline_val_logloss:.4f} ({_gap_text(r)})"
                         for r in mine.itertuples())
        lines.append(f"  {model}: {gaps}; its fits took "
                     f"{fit_seconds_of(candidates, model):.0f} s. Leave it out of --models, "
                     "or search its hyperparameters (--search N).")
    return lines + [_BAR]


def verdict_lines(verdicts: pd.DataFrame | None) -> list[str]:
    """One line per model: in how many of its regions it beats the best baseline, and its gap
    (and z) where it does not: within noise, behind, or without an SE."""
    if verdicts is None or not len(verdicts):
        return []
    table = pd.DataFrame(verdicts)
    rule = _noise_rule(table)
    out = []
    for model, mine in table.groupby("model", sort=True):
        won = mine[mine["beats_baselines"].astype(bool)]
        lost = mine[~mine["beats_baselines"].astype(bool)]
        text = f"  {model}: beats the best baseline{rule} in {len(won)} of {len(mine)} region(s)"
        if len(lost) and len(won):
            text += f" ({', '.join(won['eval_region'])})"
        verdict = lost["verdict"].astype(str) if "verdict" in lost else pd.Series(
            BEHIND, index=lost.index)
        for kind, said in ((LEVEL, "within noise"), (NO_SE, "without an SE"),
                           (BEHIND, "behind")):
            these = lost[verdict.str.startswith(kind)]
            if len(these):
                text += f"; {said} in " + ", ".join(
                    f"{r.eval_region} ({_gap_text(r)})" for r in these.itertuples())
        out.append(text)
    return out


def print_model_verdicts(metrics: Any, candidates: Sequence[Mapping[str, Any]] | None,
                         out: Any, stored: Any = None) -> None:
    """``pythia report``'s section: the loud block, if any, then the table (nothing without
    a non-baseline model). ``stored``: the evaluate step's table (with the noise test), else
    it is rebuilt from the metrics on point estimates (a run from before the stored table)."""
    table = (pd.DataFrame(stored) if stored is not None
             else build_model_verdicts(metrics, candidates))
    if not len(table):
        return
    for line in verdict_alarm(table, candidates):
        print(line, file=out)
    print("\nModels against the baselines (validation AgeGender log-loss; gap = model - the "
          "region's best baseline, its user-clustered SE and z)", file=out)
    print(table.to_string(index=False), file=out)
