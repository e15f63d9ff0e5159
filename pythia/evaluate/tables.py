"""The headline table: per eval region, every scorer's natural-test scores next to its
validation log-loss, Bayes ratio and champion flag (what the card and `pythia report` show);
and, from it, each regional candidate against the global one of its family on the same rows."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from pythia.config import GLOBAL_REGION
from pythia.evaluate.frames import JOINT_TARGET, PROVIDER
from pythia.evaluate.slices import BAYES_MODEL, NATURAL, unstack_observed
from pythia.features import TARGETS, VALIDATION


def _pivot_metric(metrics: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    sel = metrics[(metrics["metric"] == metric) & metrics["class"].isna()]
    return sel[keys + ["value", "n"]]


def build_headline(metrics: pd.DataFrame, champions: pd.DataFrame,
                   gauge: pd.DataFrame | None) -> pd.DataFrame:
    """Per eval region: every scorer's log-loss and macro F1 per target on the natural test
    day (provider labels), its validation log-loss, the Bayes ratio and the champion flag."""
    ident = ["eval_region", "model", "region", "config_id"]
    nat = metrics[(metrics["test_set"] == NATURAL) & (metrics["label_source"] == PROVIDER)
                  & metrics["class"].isna() & metrics["metric"].isin(["log_loss", "macro_f1"])]
    if nat.empty:
        return pd.DataFrame(columns=ident)
    nat = nat.assign(col=np.where(nat["metric"] == "log_loss", "logloss_", "macro_f1_")
                     + nat["target"].astype(str))
    head = unstack_observed(nat, ident, "col", "value")
    n = nat[nat["target"] == JOINT_TARGET].groupby(ident, dropna=False)["n"].max()
    head = head.merge(n.rename("n").reset_index(), on=ident, how="left")
    val_rows = metrics[(metrics["test_set"] == VALIDATION)
                       & (metrics["label_source"] == PROVIDER)
                       & (metrics["target"] == JOINT_TARGET)]
    # the champion criterion: natural-weighted validation log-loss when available
    val_metric = ("log_loss_natural" if (val_rows["metric"] == "log_loss_natural").any()
                  else "log_loss")
    val = _pivot_metric(val_rows, ident, val_metric)
    head = head.merge(val.drop(columns="n").rename(columns={"value": "val_logloss"}),
                      on=ident, how="left")
    if gauge is not None and not gauge.empty:
        g = gauge[(gauge["test_set"] == NATURAL) & (gauge["label_source"] == PROVIDER)]
        g = unstack_observed(g.assign(col="bayes_ratio_" + g["target"]), ident, "col", "ratio")
        head = head.merge(g, on=ident, how="left")
    champ = champions[champions["blessed"].astype(bool)][
        ["region", "model", "candidate_region", "config_id"]].rename(
        columns={"region": "eval_region", "candidate_region": "region"})
    champ = champ.assign(champion=True, config_id=champ["config_id"].astype("Int64"))
    head = head.merge(champ, on=ident, how="left")
    head["champion"] = head["champion"].astype("boolean").fillna(False).astype(bool)
    head = head.rename(columns={"region": "candidate_region"})
    # joint target first, then the marginals
    targets = [JOINT_TARGET] + [t for t in TARGETS if t != JOINT_TARGET]
    ordered = ["eval_region", "model", "candidate_region", "config_id", "champion",
               "val_logloss"] + [f"{m}_{t}" for t in targets for m in ("logloss", "macro_f1")]
    ordered += sorted(c for c in head.columns if c.startswith("bayes_ratio_")) + ["n"]
    for c in ordered:
        if c not in head.columns:
            head[c] = np.nan
    head = head[ordered]
    head["_bayes"] = head["model"] == BAYES_MODEL
    head = head.sort_values(["eval_region", "champion", "_bayes", "val_logloss"],
                            ascending=[True, False, True, True], na_position="last")
    return head.drop(columns="_bayes").reset_index(drop=True)


# what the regional-vs-global table compares, per candidate (headline columns)
COMPARED = ("val_logloss", "logloss_age_gender", "macro_f1_age_gender")


def build_regional_vs_global(headline: pd.DataFrame,
                             candidates: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Per region and model family (model, config): the regional candidate next to the global
    one of the same family on the same rows — the region's validation and natural test day —
    and what the regional one started from (issue #15: does a regional model earn its place?).

    ``gain_logloss_age_gender`` = global - regional natural-test AgeGender log-loss (positive:
    the regional candidate is better). Families without both candidates have no row.
    ``margins.regional_margins`` adds the paired validation difference with its SE and z.
    """
    ident = ["eval_region", "model", "config_id"]
    cols = ["region", "model", "config_id", "start_from"] + [
        f"{c}_{who}" for c in COMPARED for who in ("regional", "global")] + [
        "gain_logloss_age_gender", "n"]
    if headline.empty:
        return pd.DataFrame(columns=cols)
    rows = headline[(headline["eval_region"] != GLOBAL_REGION)
                    & (headline["model"] != BAYES_MODEL)]
    regional = rows[rows["candidate_region"] == rows["eval_region"]]
    global_ = rows[rows["candidate_region"] == GLOBAL_REGION]
    both = regional[ident + list(COMPARED) + ["n"]].merge(
        global_[ident + list(COMPARED)], on=ident, suffixes=("_regional", "_global"))
    both["gain_logloss_age_gender"] = (both["logloss_age_gender_global"]
                                       - both["logloss_age_gender_regional"])
    started = {(str(c["model"]), str(c["region"]), int(c.get("config_id", 0) or 0)):
               c.get("start_from") for c in candidates}
    both["start_from"] = [started.get((m, r, int(k))) for m, r, k in
                          zip(both["model"], both["eval_region"], both["config_id"])]
    both = both.rename(columns={"eval_region": "region"})
    return both[cols].sort_values(["region", "model", "config_id"]).reset_index(drop=True)
