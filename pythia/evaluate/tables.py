"""The headline table: per eval region, every scorer's natural-test scores next to its
validation log-loss, Bayes ratio and champion flag (what the card and `pythia report` show);
and, from it, each regional candidate against the global one of its family on the same rows."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from pythia.config import GLOBAL_REGION
from pythia.evaluate.frames import AGE_TARGET, GENDER_TARGET, JOINT_TARGET, PROVIDER
from pythia.evaluate.slices import BAYES_MODEL, NATURAL, candidate_label, unstack_observed
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


# the regional structure's targets, and its SEs of model / region-blind, clustered by user
STRUCTURE_TARGETS = (JOINT_TARGET, GENDER_TARGET, AGE_TARGET)
SE_COLUMNS = [f"ratio_region_blind_se_{t}" for t in STRUCTURE_TARGETS]
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
    cols = ["region", "model", "config_id", "start_from", "warm_fit"] + [
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
    by_key = {(str(c["model"]), str(c["region"]), int(c.get("config_id", 0) or 0)): c
              for c in candidates}
    found = [by_key.get((m, r, int(k)), {}) for m, r, k in
             zip(both["model"], both["eval_region"], both["config_id"])]
    both["start_from"] = [c.get("start_from") for c in found]
    both["warm_fit"] = [warm_fit_text(c) for c in found]
    both = both.rename(columns={"eval_region": "region"})
    return both[cols].sort_values(["region", "model", "config_id"]).reset_index(drop=True)


def warm_fit_text(candidate: Mapping[str, Any]) -> str:
    """What a regional candidate's fit from its start kept, e.g. "kept its start (2 tried);
    scale 1 (fitted 1.028, z -0.49: within noise)" or "kept 1 of 2; scale 0.984"; "" for
    one trained from scratch."""
    warm = candidate.get("warm_start") or {}
    if not warm.get("warm"):
        return ""
    kept, tried = int(warm.get("epochs_or_iterations", 0)), int(warm.get("tried", 0))
    text = f"kept {kept} of {tried}" if kept else f"kept its start ({tried} tried)"
    bins = candidate.get("activity_temperature") or {}
    scale, fitted, z = (bins.get(k) for k in ("start_scale", "fitted_scale", "scale_z"))
    if scale is None:
        return text
    z_text = "no SE" if z is None else f"z {z:.2f}"
    if fitted is None or fitted == scale:  # untested, or shipped beyond noise
        return f"{text}; scale {scale:.3f}" + ("" if fitted is None else f" ({z_text})")
    return f"{text}; scale 1 (fitted {fitted:.3f}, {z_text}: within noise)"


def blessed_champions(champions: pd.DataFrame | None) -> set[tuple[str, str, str, int]]:
    """(eval region, model, candidate region, config id) of each blessed champion."""
    if champions is None or not len(champions):
        return set()
    c = champions[champions["blessed"].astype(bool)].dropna(subset=["model"])
    return set(zip(c["region"], c["model"], c["candidate_region"],
                   c["config_id"].astype("int64")))


def build_regional_structure(gauge: pd.DataFrame | None, champions: pd.DataFrame
                             ) -> pd.DataFrame:
    """Per model region, on its natural test day rows (provider labels): what the synthetic
    world's regional make effects are worth there, and whether each candidate scored there
    (the global ones and the region's own) learnt them (issue #15: regional structure that is
    real, and models that use it).

    ``effect_*`` = region-blind / population posterior log-loss on the candidate's rows: what
    a reader who knows every generative table but what a device make means in this region
    loses (1 where the world puts no regional effect). ``ratio_region_blind_*`` = model /
    region-blind: below 1, the model knows more about the region than any region-blind model
    can (``ratio_region_blind_se_*``: its SE clustered by user, where the gauge has it:
    ``gauge.build_gauge``); ``ratio_population_*`` = model / population, the fair bar.
    Empty without a region-blind gauge (real data, or a world without regional effects)."""
    ident = ["eval_region", "model", "region", "config_id"]
    cols = ["region", "candidate", "trained_on", "champion"] + [
        f"{m}_{t}" for m in ("effect", "ratio_region_blind", "ratio_region_blind_se",
                             "ratio_population") for t in STRUCTURE_TARGETS]
    if (gauge is None or gauge.empty or "ratio_region_blind" not in gauge.columns
            or gauge["ratio_region_blind"].isna().all()):
        return pd.DataFrame(columns=cols)
    g = gauge[(gauge["test_set"] == NATURAL) & (gauge["label_source"] == PROVIDER)
              & (gauge["eval_region"] != GLOBAL_REGION)].dropna(subset=["ratio_region_blind"])
    if g.empty:
        return pd.DataFrame(columns=cols)
    g = g.assign(effect=g["region_blind_logloss"] / g["population_logloss"],
                 config_id=g["config_id"].astype("int64"))
    shown = ("effect", "ratio_region_blind", "ratio_population") + (
        ("ratio_region_blind_se",) if "ratio_region_blind_se" in g.columns else ())
    wide = unstack_observed(
        pd.concat([g[ident + ["target"]].assign(col=f"{m}_" + g["target"], value=g[m])
                   for m in shown]), ident, "col", "value")
    champ = blessed_champions(champions)
    wide["champion"] = [(e, m, r, int(k)) in champ for e, m, r, k in
                        wide[ident].itertuples(index=False)]
    wide["candidate"] = (wide["model"] + "/" + wide["region"] + "#"
                         + wide["config_id"].astype(str))
    wide = wide.rename(columns={"region": "trained_on"}).rename(
        columns={"eval_region": "region"})
    for c in cols:
        if c not in wide.columns:
            wide[c] = np.nan
    return (wide.sort_values(["region", "champion", f"ratio_region_blind_{JOINT_TARGET}"],
                             ascending=[True, False, True])[cols].reset_index(drop=True))


# the regional-vs-global table's paired margins, regional - global on the same rows (AgeGender
# log-loss), by column prefix: validation, the natural test day, its new users
MARGIN_PARTS = ("val", "test", "new")


def margin_text(diff: Any, se: Any, z: Any) -> str:
    """A margin as text, e.g. "-0.0026 ± 0.0008 (z -3.27)"; the difference alone without its
    SE, "" without a difference; "+0.0000 (identical predictions)" for a regional candidate
    that kept its start (no difference on any row)."""
    if pd.isna(diff):
        return ""
    if diff == 0 and se == 0:
        return "+0.0000 (identical predictions)"
    if pd.isna(se) or pd.isna(z):
        return f"{diff:+.4f}"
    return f"{diff:+.4f} ± {se:.4f} (z {z:+.2f})"


def regional_vs_global_text(table: pd.DataFrame, champions: pd.DataFrame | None
                            ) -> pd.DataFrame:
    """``build_regional_vs_global`` + ``margins.regional_margins`` for reading: per region and
    model family, the regional candidate, what it started from and kept (``warm_fit``),
    whether it is the region's blessed champion, and regional - global AgeGender log-loss on
    the same rows, ± its SE clustered by user and z, on validation, the natural test day and
    its new users."""
    cols = ["region", "candidate", "start_from", "warm_fit", "champion"] + [
        f"{p}_regional_minus_global" for p in MARGIN_PARTS]
    if table is None or not len(table):
        return pd.DataFrame(columns=cols)
    t = table.copy()
    t["candidate"] = [candidate_label(m, r, int(k))
                      for m, r, k in zip(t["model"], t["region"], t["config_id"])]
    t["start_from"] = t["start_from"].fillna("-")
    t["warm_fit"] = t["warm_fit"].fillna("") if "warm_fit" in t else ""  # older runs: none
    blessed = blessed_champions(champions)
    t["champion"] = [(r, m, r, int(k)) in blessed
                     for r, m, k in zip(t["region"], t["model"], t["config_id"])]
    nan = pd.Series(np.nan, t.index)
    for p in MARGIN_PARTS:  # before the paired margins, the test difference only (-gain)
        diff = t.get(f"{p}_diff", -t["gain_logloss_age_gender"] if p == "test" else nan)
        t[f"{p}_regional_minus_global"] = [
            margin_text(d, se, z)
            for d, se, z in zip(diff, t.get(f"{p}_se", nan), t.get(f"{p}_z", nan))]
    return t[cols].reset_index(drop=True)


def print_regional_vs_global(table: Any, champions: Any, out: Any) -> None:
    """Print ``regional_vs_global_text`` of a run's regional_vs_global and champions artifacts
    (nothing when the run has no regional candidate), for `pythia report`."""
    if table is None or not len(table):
        return
    text = regional_vs_global_text(pd.DataFrame(table), None if champions is None
                                   else pd.DataFrame(champions))
    print("\nRegional vs global (AgeGender log-loss, regional - global candidate of the same "
          "model on the same rows, ± its SE clustered by user: below 0 the regional one is "
          "better, beyond noise at z below -2; on validation, the natural test day and its "
          "new users)", file=out)
    print(text.to_string(index=False), file=out)
