"""The per-slice guard on regional candidates (issue 15): on the VALIDATION day, a regional
candidate must not lose to its family's global candidate (same model and config) on the
region's power users, nor on its other users, by more than ``z_min`` user-clustered standard
errors of the paired natural-weighted log-loss difference; and it must be better than the
global one on the other users (the point estimate: ``wins_on_other_users``). A regional model
that wins overall but falls apart on one slice, or wins only through the handful of held-out
power users, is then not chosen for the region; the champions row says why.

Why the second rule: a region's validation power users are a few users (rarely the 20 user
groups an SE needs), yet a natural-weighted log-loss gives them a large share of the rows, so
they could decide between a regional model and the global one alone. On three seeds of the
default world the sign of the other users' margin matched the natural test day's in 22 of 24
regional MLPs and logistic regressions, the overall margin's in 18 (docs/new-users.md, session
47).

The margins come from the streamed per-user-group sums of each part of the validation rows
(``margins.GroupSums``, keyed (scorer, eval region, part)); the test day is never used.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import pandas as pd

from pythia.config import GLOBAL_REGION
from pythia.evaluate.margins import (OTHER_PART, POWER_PART, GroupSums, Margin,
                                     SliceMarginLookup, slice_margin_lookup)
from pythia.evaluate.slices import candidate_label

GUARD_PARTS = (POWER_PART, OTHER_PART)


def loses_by_more_than(m: Margin | None, z_min: float) -> bool:
    """Is a - b worse (positive) by more than ``z_min`` SEs? Without an SE (too few user
    groups) only ``z_min = 0`` judges, on the point estimate; otherwise there is no evidence."""
    if m is None or not math.isfinite(m.diff):
        return False
    if z_min == 0:
        return m.diff > 0
    return math.isfinite(m.se) and m.se > 0 and m.diff > z_min * m.se


def wins_on_other_users(m: Margin | None) -> bool:
    """Is a - b below zero on the other users? Without sums (or rows) there is no judgement:
    True."""
    return m is None or not math.isfinite(m.diff) or m.diff < 0


def _figures(m: Margin) -> str:
    if m.diff == 0 and m.se == 0:  # e.g. a regional fit that kept its global start
        return "+0.0000 (the same predictions on every row)"
    z = f"z {m.z:+.2f}" if math.isfinite(m.z) else "no SE"
    return f"{m.diff:+.4f} ± {m.se:.4f} ({z})"


def guard_regional(scores: pd.DataFrame, margin: SliceMarginLookup, z_min: float,
                   baseline_models: Sequence[str] = ()) -> tuple[pd.DataFrame, dict[str, str]]:
    """Make the regional candidates that fail the guard ineligible for their region.

    Args:
        scores: ``champions.champion_scores``' table (eval_region, model, candidate_region,
            config_id, eligible, ineligible_reason, …).
        margin: the per-part validation margins (``slice_margin_lookup``).
        z_min: SEs a regional candidate may lose by on a part before it is excluded (and,
            whatever ``z_min``, it must win on the other users: ``wins_on_other_users``).
        baseline_models: not guarded (excluding a baseline would only make the baseline rule
            easier to pass).

    Returns:
        (scores with the failing rows ineligible and their reason set, region -> one line
        naming every excluded candidate with its figures).
    """
    if not z_min >= 0:
        raise ValueError(f"z_min must be >= 0, got {z_min}")
    out = scores.copy()
    notes: dict[str, list[str]] = {}
    regional = ((out["candidate_region"] == out["eval_region"])
                & (out["eval_region"] != GLOBAL_REGION) & out["eligible"].astype(bool)
                & ~out["model"].isin(list(baseline_models)))
    for i in out.index[regional]:
        row = out.loc[i]
        region, cfg = str(row["eval_region"]), int(row["config_id"])
        mine, glob = (row["model"], region, cfg), (row["model"], GLOBAL_REGION, cfg)
        found = {part: margin(mine, glob, region, part) for part in GUARD_PARTS}
        lost = [f"{part.replace('_', ' ')} {_figures(m)}" for part, m in found.items()
                if loses_by_more_than(m, z_min)]
        if lost:
            text = (f"{candidate_label(*mine)} loses to {candidate_label(*glob)} on validation "
                    f"{' and '.join(lost)} by more than z_min {z_min:g} SE")
        elif not wins_on_other_users(found[OTHER_PART]):
            text = (f"{candidate_label(*mine)} is not better than {candidate_label(*glob)} on "
                    f"validation other users {_figures(found[OTHER_PART])}; a regional "
                    f"candidate must win there")
        else:
            continue
        out.loc[i, "eligible"] = False
        out.loc[i, "ineligible_reason"] = f"per-slice guard: {text}"
        notes.setdefault(region, []).append(text)
    return out, {r: "per-slice guard excluded " + "; ".join(t) for r, t in notes.items()}


def slice_margin_columns(groups: Mapping[tuple, GroupSums], table: pd.DataFrame
                         ) -> pd.DataFrame:
    """``table`` (regional vs global: region, model, config_id) with the guard's figures:
    per part, the regional - global validation difference and its z (``val_z_power_users``,
    ``val_z_other_users``; positive: the regional candidate is worse there)."""
    margin = slice_margin_lookup(groups)
    out = table.copy()
    for part in GUARD_PARTS:
        found = [margin((m, r, int(c)), (m, GLOBAL_REGION, int(c)), r, part)
                 for r, m, c in zip(table["region"], table["model"], table["config_id"])]
        out[f"val_diff_{part}"] = [x.diff if x else math.nan for x in found]
        out[f"val_z_{part}"] = [x.z if x else math.nan for x in found]
    return out
