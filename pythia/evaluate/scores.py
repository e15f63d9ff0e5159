"""Each candidate's validation score per region it can be scored on, as the champion rule
reads it (``champion_scores``), and which trained models are the baselines. Kept apart from
``champions`` so that the verdicts table (``verdicts``), which the end step and ``pythia
report`` build, does not import the previous-run comparison (and through it the scorer).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from pythia.evaluate.frames import JOINT_TARGET, PROVIDER
from pythia.evaluate.slices import NATURAL, eval_regions_of
from pythia.features import VALIDATION

SCORE_COLUMNS = ["eval_region", "model", "candidate_region", "config_id", "model_dir",
                 "val_logloss", "eligible", "ineligible_reason"]


def baseline_models_of(candidates: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The baseline model names among trained candidates (each training summary carries its
    model's ``is_baseline``), so the flow needs no model import to know them."""
    return tuple(sorted({str(c["model"]) for c in candidates if c.get("is_baseline")}))


def _pick(here: pd.DataFrame, test_set: str, metric: str) -> float:
    """The joint-target, provider-label value of one aggregate metric (NaN when absent)."""
    v = here[(here["test_set"] == test_set) & (here["metric"] == metric)
             & ((here["label_source"] == PROVIDER) | here["label_source"].isna())
             & (here["target"].isna() | (here["target"] == JOINT_TARGET))
             & here["class"].isna()]["value"]
    return float(v.iloc[0]) if len(v) else np.nan


def champion_scores(metrics: pd.DataFrame, idents: Sequence[Mapping],
                    candidates: Sequence[Mapping], present: Sequence[str]) -> pd.DataFrame:
    """Per (candidate, region it can score): validation log-loss and eligibility."""
    rows = []
    for ident, cand in zip(idents, candidates):
        mine = metrics[(metrics["model"] == ident["model"])
                       & (metrics["region"] == ident["region"])
                       & (metrics["config_id"] == ident["config_id"]).fillna(False)]
        for region in eval_regions_of(ident["region"], present):
            here = mine[mine["eval_region"] == region]
            # natural-weighted when the caller gave importance weights (see SplitFrame.weights)
            val_ll = _pick(here, VALIDATION, "log_loss_natural")
            if not np.isfinite(val_ll):
                val_ll = _pick(here, VALIDATION, "log_loss")
            val_cov = _pick(here, VALIDATION, "coverage")
            test_cov = _pick(here, NATURAL, "coverage")
            reason = None
            if not np.isfinite(val_ll) and val_cov == 0 and region == ident["region"]:
                # no validation predictions at all: fall back to the train step's own figure
                val_ll = _pick(here, VALIDATION, "reported_val_logloss")
                val_cov = 1.0 if np.isfinite(val_ll) else val_cov
            if np.isfinite(val_cov) and val_cov < 1:
                reason = f"predictions cover {val_cov:.1%} of the validation rows"
            elif np.isfinite(test_cov) and test_cov < 1:
                reason = f"predictions cover {test_cov:.1%} of the natural test rows"
            elif not np.isfinite(val_ll):
                reason = "no validation log-loss (no labelled validation rows?)"
            rows.append({"eval_region": region, "model": ident["model"],
                         "candidate_region": ident["region"], "config_id": ident["config_id"],
                         "model_dir": cand.get("model_dir"), "val_logloss": val_ll,
                         "eligible": reason is None, "ineligible_reason": reason})
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)
