"""Paired margins between candidates: the natural-weighted validation log-loss difference of
two candidates on the same rows with its standard error clustered by user (impressions of one
user are correlated, so rows are not independent), and the champion rule's noise test on it.

Evaluate streams its rows, so the SE comes from sums per user group (a stable hash of the user
id into ``N_USER_GROUPS`` groups): per group, labelled rows, summed weights and summed weighted
log-loss of each scorer. The paired difference is linear in them, so two scorers' sums give the
linearised ratio SE of ``scripts/champion_margins.py`` exactly, clustered by group — the same as
by user while no two users share a group, otherwise a coarser (still valid) clustering.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from pythia import features
from pythia.config import GLOBAL_REGION, DeployConfig
from pythia.evaluate.slices import (NATURAL, NATURAL_NEW_USERS, NATURAL_NO_POWER_USERS,
                                    NATURAL_POWER_USERS, candidate_label)
from pythia.evaluate.stats import row_log_loss

N_USER_GROUPS = features.N_USER_GROUPS  # clusters of the SE (also a TFRecord column's)
# fewer non-empty user groups than this: no SE (a cluster-robust SE from a handful of
# clusters is far too small), so the region is not blessed unless z_min = 0
MIN_USER_GROUPS = 20
DEFAULT_Z_MIN = DeployConfig.z_min  # [evaluate] z_min in flows/pythia.toml

# margin(key_a, key_b, eval_region) -> Margin of a - b, or None when either was not scored
MarginLookup = Callable[[tuple, tuple, str], "Margin | None"]
MARGIN_COLUMNS = ["margin_vs", "margin_diff", "margin_se", "margin_z", "z_min"]
# the validation rows' parts the regional guard compares on (``guard``)
POWER_PART, OTHER_PART = "power_users", "other_users"
# the natural test day's slices as parts (test set -> part): the regional-vs-global table's
# test margins (the whole day, its new users: held out of train) and the gauge's ratio SEs
# (every slice and target: the model's sums and each GAUGE_FORMS posterior's on the same
# rows, keyed (scorer, region, part, "model" or form, target): ``SliceSums.add_gauge_groups``)
TEST_PARTS = {t: f"{t}_test" for t in (NATURAL, NATURAL_NO_POWER_USERS, NATURAL_POWER_USERS,
                                       NATURAL_NEW_USERS)}
TEST_PART, NEW_USERS_TEST_PART = TEST_PARTS[NATURAL], TEST_PARTS[NATURAL_NEW_USERS]
GAUGE_FORMS = ("realised", "population", "region_blind")
# margin(key_a, key_b, eval_region, part) -> Margin of a - b on that part, or None if unscored
SliceMarginLookup = Callable[[tuple, tuple, str, str], "Margin | None"]


def user_groups(users: Sequence | np.ndarray | pd.Series,
                n_groups: int = N_USER_GROUPS) -> np.ndarray:
    """The user group of each row: a hash of the user id as text, the same on every machine
    and in every bucket (missing ids share one group: they may be one user)."""
    keys = pd.Series(users, dtype=object).astype(str).to_numpy(dtype=object)
    return (pd.util.hash_array(keys) % np.uint64(n_groups)).astype(np.int64)


@dataclass(frozen=True)
class Margin:
    """Weighted mean of per-row log-loss differences a - b (negative: a is better), its
    user-clustered SE (NaN with a ``note`` when undefined) and the non-empty user groups."""

    diff: float
    se: float
    n_groups: int
    note: str | None = None

    @property
    def z(self) -> float:
        """diff / SE; NaN when the SE is undefined or zero (identical predictions)."""
        return self.diff / self.se if math.isfinite(self.se) and self.se > 0 else math.nan


def paired_margin(d: np.ndarray, w: np.ndarray, clusters: np.ndarray,
                  min_groups: int = MIN_USER_GROUPS) -> Margin:
    """The in-memory reference: weighted mean of the row differences ``d`` and its
    linearised ratio SE, clustered by ``clusters`` (user ids, or user groups)."""
    d, w = np.asarray(d, dtype=np.float64), np.asarray(w, dtype=np.float64)
    codes, _ = pd.factorize(pd.Series(clusters), use_na_sentinel=False)  # nulls: one cluster
    n = codes.max() + 1 if len(codes) else 0
    return _margin(np.bincount(codes, weights=w * d, minlength=n),
                   np.bincount(codes, weights=w, minlength=n), int(n), min_groups)


def _margin(loss_diff: np.ndarray, weight: np.ndarray, n_groups: int, min_groups: int
            ) -> Margin:
    sw = float(weight.sum())
    if not sw > 0:
        return Margin(math.nan, math.nan, n_groups, "no labelled rows")
    diff = float(loss_diff.sum() / sw)
    r = loss_diff - diff * weight  # per cluster: sum of w * (d - diff)
    if n_groups < min_groups:
        return Margin(diff, math.nan, n_groups, f"only {n_groups} user group(s) with rows, "
                      f"fewer than {min_groups}: no standard error")
    return Margin(diff, float(np.sqrt((r ** 2).sum()) / sw), n_groups)


class GroupSums:
    """One scorer on one slice, per user group: labelled rows, summed weights and summed
    weighted log-loss of the joint target."""

    def __init__(self, n_groups: int = N_USER_GROUPS) -> None:
        self.rows = np.zeros(n_groups, dtype=np.int64)
        self.weight = np.zeros(n_groups)
        self.loss = np.zeros(n_groups)

    def add(self, groups: np.ndarray, y: np.ndarray, p_raw: np.ndarray,
            weights: np.ndarray | None) -> None:
        """Add rows (labels -1 = unlabelled are skipped), with the per-row log-loss of
        ``LabelStats``' natural-weighted log-loss (stored probabilities, clipped)."""
        valid = y >= 0
        if not valid.any():
            return
        g = groups[valid]
        w = (np.ones(int(valid.sum())) if weights is None
             else np.asarray(weights, dtype=np.float64)[valid])
        n = len(self.rows)
        self.rows += np.bincount(g, minlength=n)
        self.weight += np.bincount(g, weights=w, minlength=n)
        self.loss += np.bincount(g, weights=w * row_log_loss(y[valid], p_raw[valid]),
                                 minlength=n)

    def merge(self, other: "GroupSums") -> None:
        """Add another's sums (other rows)."""
        self.rows += other.rows
        self.weight += other.weight
        self.loss += other.loss

    def margin_against(self, other: "GroupSums", min_groups: int = MIN_USER_GROUPS) -> Margin:
        """This scorer minus ``other`` on the same rows (else a Margin with a note)."""
        if not (np.array_equal(self.rows, other.rows)
                and np.allclose(self.weight, other.weight, rtol=1e-9, atol=0)):
            return Margin(math.nan, math.nan, 0, "the two were not scored on the same rows")
        return _margin(self.loss - other.loss, self.weight, int((self.rows > 0).sum()),
                       min_groups)


def ratio_se(model: GroupSums, reference: GroupSums,
             min_groups: int = MIN_USER_GROUPS) -> float:
    """The SE of ``model``'s log-loss over ``reference``'s on the same rows (the gauge's
    ratios), clustered by user group: the delta method for a ratio of sums,
    sqrt(sum_g (m_g - r b_g)^2) / sum_g b_g with r = sum m / sum b (m_g, b_g: a group's
    summed weighted log-loss). NaN when the two were not scored on the same rows, or on
    fewer than ``min_groups`` non-empty groups (too few clusters for an SE)."""
    same = (np.array_equal(model.rows, reference.rows)
            and np.allclose(model.weight, reference.weight, rtol=1e-9, atol=0))
    total = float(reference.loss.sum())
    if not same or not total > 0 or int((model.rows > 0).sum()) < min_groups:
        return math.nan
    r = float(model.loss.sum()) / total
    return float(np.sqrt(((model.loss - r * reference.loss) ** 2).sum()) / total)


def row_ratio_se(model_loss: np.ndarray, ref_loss: np.ndarray, clusters: np.ndarray,
                 min_groups: int = MIN_USER_GROUPS) -> float:
    """The in-memory reference of ``ratio_se``: the per-row log-losses of a model and a
    reference on the same rows (NaN rows, e.g. unlabelled, are left out), clustered by
    ``clusters`` (user ids, or user groups; nulls are one cluster)."""
    model_loss = np.asarray(model_loss, dtype=np.float64)
    ref_loss = np.asarray(ref_loss, dtype=np.float64)
    ok = ~(np.isnan(model_loss) | np.isnan(ref_loss))
    codes, _ = pd.factorize(pd.Series(np.asarray(clusters, dtype=object)[ok]),
                            use_na_sentinel=False)
    n = int(codes.max()) + 1 if len(codes) else 0
    sums = []
    for loss in (model_loss[ok], ref_loss[ok]):
        s = GroupSums(n)
        s.rows += np.bincount(codes, minlength=n)
        s.weight += np.bincount(codes, minlength=n).astype(np.float64)
        s.loss += np.bincount(codes, weights=loss, minlength=n)
        sums.append(s)
    return ratio_se(*sums, min_groups=min_groups)


def margin_lookup(groups: Mapping[tuple, GroupSums]) -> MarginLookup:
    """``margin(key_a, key_b, region)`` over sums keyed (scorer key, eval region)."""
    def margin(a: tuple, b: tuple, region: str) -> Margin | None:
        sa, sb = groups.get((tuple(a), region)), groups.get((tuple(b), region))
        return None if sa is None or sb is None else sa.margin_against(sb)
    return margin


# ---------------------------------------------------------------- the rule

def score_key(r: Mapping) -> tuple:
    """The sums' scorer key of a ``champion_scores`` row: (model, candidate region, config)."""
    return (r["model"], r["candidate_region"], int(r["config_id"]))


def noise_test(ranked: pd.DataFrame, region: str, baseline_models: Sequence[str],
               margin: MarginLookup, z_min: float) -> dict:
    """Does the region's best non-baseline candidate beat each baseline model's best candidate
    by more than ``z_min`` user-clustered SEs? (``ranked``: eligible candidates, best first.)

    The figures are of the closest baseline (largest z; one without an SE counts as closest).
    ``z_min = 0`` is the point-estimate rule: any lower log-loss passes, SE or not.

    Returns {margin_vs, margin_diff, margin_se, margin_z, z_min, passed, note, warning}.
    """
    base = ranked[ranked["model"].isin(baseline_models)].drop_duplicates("model")
    models = ranked[~ranked["model"].isin(baseline_models)]
    out = {c: None for c in MARGIN_COLUMNS} | {"z_min": float(z_min), "passed": False,
                                               "note": None, "warning": None}
    if models.empty or base.empty:
        return out
    best = models.iloc[0]
    worst = None
    for _, b in base.iterrows():
        m = margin(score_key(best), score_key(b), region)
        m = m or Margin(math.nan, math.nan, 0, "no paired sums for these "
                                "candidates (validation rows without user ids?)")
        rank = m.z if math.isfinite(m.z) else math.inf
        if worst is None or rank > worst[0]:
            worst = (rank, b, m)
    _, b, m = worst
    out.update(margin_vs=f"{_label(best)} vs {_label(b)}", margin_diff=m.diff,
               margin_se=m.se, margin_z=m.z)
    if ranked.iloc[0]["model"] in baseline_models:
        return out  # a baseline is best: the baseline rule already said no; figures only
    figures = (f"{_label(best)} - {_label(b)} = {m.diff:+.4f} ± {m.se:.4f} user-clustered SE "
               f"(z {m.z:+.2f}, {m.n_groups} user groups)")
    if z_min == 0:
        out.update(passed=True, note=f"noise test off (z_min 0): {figures}")
    elif math.isfinite(m.z) and m.z < -z_min:
        out.update(passed=True, note=f"beats every baseline by more than {z_min:g} SE: "
                   f"closest {figures}")
    else:
        why = f"; {m.note}" if m.note else ""  # why there is no SE
        out["warning"] = (f"NOT CLEARLY BETTER THAN THE BASELINES in {region} (z_min "
                          f"{z_min:g}): {figures}{why}")
        out["note"] = (f"NOT BLESSED (noise rule, z_min {z_min:g}): {_label(best)} does not "
                       f"beat the {b['model']} baseline {_label(b)} by more than {z_min:g} "
                       f"user-clustered SE: {figures}{why}; the bundle exports nothing new "
                       f"for {region}")
    return out


def _label(r: Mapping) -> str:
    return candidate_label(r["model"], r["candidate_region"], r["config_id"])


def slice_margin_lookup(groups: Mapping[tuple, GroupSums]) -> SliceMarginLookup:
    """``margin(key_a, key_b, region, part)`` over sums keyed (scorer key, region, part)."""
    def margin(a: tuple, b: tuple, region: str, part: str) -> Margin | None:
        sa = groups.get((tuple(a), region, part))
        sb = groups.get((tuple(b), region, part))
        return None if sa is None or sb is None else sa.margin_against(sb)
    return margin


def regional_margins(groups: Mapping[tuple, GroupSums], table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (regional vs global: region, model, config_id) with each regional
    candidate's margin against the global one of its family on the region's rows, on
    validation (natural-weighted), on the natural test day and on its new users (held out of
    train: the bid-time case): ``val_diff`` / ``test_diff`` / ``new_diff`` (regional - global;
    negative: regional better), their user-clustered SEs and z."""
    margin, on_test = margin_lookup(groups), slice_margin_lookup(groups)
    keys = [((m, r, int(c)), (m, GLOBAL_REGION, int(c)), r)
            for r, m, c in zip(table["region"], table["model"], table["config_id"])]
    columns = {}
    for prefix, found in (("val", [margin(*k) for k in keys]),
                          ("test", [on_test(*k, TEST_PART) for k in keys]),
                          ("new", [on_test(*k, NEW_USERS_TEST_PART) for k in keys])):
        for what in ("diff", "se", "z"):
            columns[f"{prefix}_{what}"] = [getattr(x, what) if x else math.nan for x in found]
    return table.assign(**columns)
