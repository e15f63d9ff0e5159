"""Champion rules: per region, the best validation log-loss wins if it beats the GBDT baseline
and does not regress against the previous run's champion on the same test rows.

Pure: the caller supplies per-candidate validation scores and a function that compares the
winner with the previous champion; nothing here reads files or Metaflow.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import pandas as pd

BASELINE_MODEL = "gbdt"
DEFAULT_TOLERANCE = 0.01  # relative test log-loss increase allowed against the previous champion

CHAMPION_COLUMNS = [
    "region", "champion", "model", "candidate_region", "config_id", "model_dir", "val_logloss",
    "baseline_val_logloss", "previous_logloss", "current_logloss_on_same_rows", "n_same_rows",
    "blessed", "reason",
]

# previous_check(region, winner_row) -> (previous_logloss, current_logloss, n_rows, note)
PreviousCheck = Callable[[str, Mapping], tuple[float | None, float | None, int, str | None]]


def candidate_label(model: str, candidate_region: str, config_id: object) -> str:
    """Human-readable candidate id, e.g. 'mlp/global#0'."""
    return f"{model}/{candidate_region}#{config_id}"


def _is_finite(x: object) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def select_champions(scores: pd.DataFrame, regions: Sequence[str],
                     previous_check: PreviousCheck | None = None,
                     tolerance: float = DEFAULT_TOLERANCE,
                     baseline_model: str = BASELINE_MODEL) -> pd.DataFrame:
    """Pick and bless one champion per region.

    Args:
        scores: one row per (candidate, region it can score) with columns eval_region, model,
            candidate_region, config_id, model_dir, val_logloss (age_gender, on that region's
            validation slice), eligible (bool) and ineligible_reason (str or None).
        regions: regions to decide, e.g. ['EU', 'NA', 'global'].
        previous_check: compares the winner with the previous run's champion of the region on
            the same test rows; None when there is no previous run.
        tolerance: relative log-loss increase over the previous champion still accepted.
        baseline_model: the model name of the baseline every champion must beat.

    Returns:
        The champions DataFrame (CHAMPION_COLUMNS); ``champion`` is None when not blessed.
    """
    need = {"eval_region", "model", "candidate_region", "config_id", "model_dir",
            "val_logloss", "eligible", "ineligible_reason"}
    missing = need - set(scores.columns)
    if missing:
        raise ValueError(f"scores table lacks columns {sorted(missing)}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    out = [_decide_region(scores[scores["eval_region"] == region], region, previous_check,
                          tolerance, baseline_model) for region in regions]
    return pd.DataFrame(out, columns=CHAMPION_COLUMNS)


def _decide_region(pool: pd.DataFrame, region: str, previous_check: PreviousCheck | None,
                   tolerance: float, baseline_model: str) -> dict:
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
    ranked = ok.assign(_not_base=ok["model"] != baseline_model,
                       _is_global=ok["candidate_region"] != region,
                       _cfg=ok["config_id"].astype(str))
    ranked = ranked.sort_values(["val_logloss", "_not_base", "_is_global", "_cfg"])
    best = ranked.iloc[0]
    base = ranked[ranked["model"] == baseline_model]
    name = candidate_label(best["model"], best["candidate_region"], best["config_id"])
    row.update(model=best["model"], candidate_region=best["candidate_region"],
               config_id=best["config_id"], model_dir=best["model_dir"],
               val_logloss=float(best["val_logloss"]))
    notes = []
    if base.empty:
        notes.append(f"{name} has the best validation log-loss ({best['val_logloss']:.4f}); "
                     f"no {baseline_model} baseline was trained for this region, so the "
                     "baseline check was skipped")
    else:
        base_ll = float(base.iloc[0]["val_logloss"])
        row["baseline_val_logloss"] = base_ll
        if best["model"] == baseline_model:
            notes.append(f"the {baseline_model} baseline {name} is the best candidate "
                         f"(validation log-loss {base_ll:.4f}); it wins as the baseline")
        elif float(best["val_logloss"]) < base_ll:
            notes.append(f"{name} has the best validation log-loss ({best['val_logloss']:.4f}) "
                         f"and beats the {baseline_model} baseline ({base_ll:.4f})")
        else:  # unreachable with the ranking above; kept so a rule change cannot bless silently
            row["reason"] = (f"{name} does not beat the {baseline_model} baseline "
                             f"({best['val_logloss']:.4f} >= {base_ll:.4f}); keeping the "
                             "previous champion")
            return row
    if previous_check is not None:
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
    else:
        notes.append("no previous run to compare with")
    row.update(blessed=True, champion=name, reason="; ".join(notes))
    return row
