"""Verdicts over seeds: one run's paired tables pooled with the same tables of runs that differ
only in their seed (issue #15: "lose nowhere by more than noise").

A run's margin (regional - global, sighted - blind) has an SE over that run's users, for one
pair of fits. Two runs that differ only in the seed differ by more: the fits' training luck
and the seed's held-out users move the margin too (session 59: sighted - blind on EU was
+0.0001, -0.0040 and -0.0022 on three seeds, each with an SE of about 0.0008). Pooled over K
seeds, a row's K margins give their mean, their spread (which holds every source of noise at
once) and a t test of the mean on K - 1 degrees of freedom: the verdict a single card cannot
give. ``sd_over_se`` says how much wider the seeds' spread is than a single run's SE.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence, TextIO

import numpy as np
import pandas as pd

PARTS = ("val", "test", "new")
# the row keys of the pooled tables: regional vs global, blind twins, the champions' gauge
RVG_KEYS = ["region", "model", "config_id"]
TWIN_KEYS = ["region", "comparison", "sighted", "blind"]
VERDICT_KEYS = ["model", "eval_region"]
GAUGE_KEYS = ["eval_region", "test_set"]
GAUGE_TARGETS = ("age_gender", "gender", "age")
LEVEL = "within noise"
LEVEL_ALPHA = 0.05  # two-sided: the mean is beyond noise when |t| > t(1 - alpha/2, K - 1)
SINGLE_Z = 2.0  # a single run's margin beyond its own SE, as its card reads it


def t_critical(df: int, alpha: float = LEVEL_ALPHA) -> float:
    """The two-sided critical |t| on ``df`` degrees of freedom (12.71 at 1, 4.30 at 2)."""
    from scipy.stats import t

    return float(t.ppf(1 - alpha / 2, df))


def _rows_by_key(tables: Mapping[str, Any], keys: Sequence[str]):
    """Per row key found in any run's table (each checked: it has the key columns and names
    no row twice): the key's values with ``runs`` (how many runs have it), and its rows
    indexed by run label."""
    frames = []
    for label, table in tables.items():
        t = pd.DataFrame(table)
        missing = [c for c in keys if c not in t.columns]
        if missing:
            raise ValueError(f"run {label}'s table has no column(s) {missing}")
        if t.duplicated(list(keys)).any():
            dup = t.loc[t.duplicated(list(keys)), list(keys)].iloc[0]
            raise ValueError(f"run {label}'s table names the row "
                             f"{[v.item() if hasattr(v, 'item') else v for v in dup]} twice")
        if len(t):
            frames.append(t.assign(_run=label))
    if not frames:
        return
    for key, g in pd.concat(frames, ignore_index=True).groupby(list(keys), sort=False,
                                                                dropna=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row["runs"] = int(g["_run"].nunique())
        yield row, g.set_index("_run")


def pool_margins(tables: Mapping[str, Any], keys: Sequence[str],
                 sides: tuple[str, str] = ("below 0", "above 0"),
                 parts: Sequence[str] = PARTS) -> pd.DataFrame:
    """Per row key, each part's margins over the runs pooled.

    Args:
        tables: run label -> that run's table (``keys`` columns and ``{part}_diff`` /
            ``{part}_z`` for ``parts``), in the order the runs are listed.
        keys: the columns that name a row (the same row in every run).
        sides: the verdict when the mean is beyond noise below 0, and above 0.
        parts: the parts of the tables' margins (``PARTS``: validation, the natural test day,
            its new users).

    Returns:
        One row per key found in any run: ``runs`` (how many runs have the row), and per part
        ``{p}_each`` (the runs' margins in order, NaN where a run has none), ``{p}_mean``,
        ``{p}_sd`` (over runs), ``{p}_se`` (sd / sqrt k), ``{p}_t``, ``{p}_verdict``
        (``sides`` or "within noise"; "one run" below two runs), ``{p}_single`` (in how many
        runs the card's own z was beyond -2 and +2) and ``{p}_sd_over_se`` (the spread over
        the runs' mean single-run SE; NaN without SEs).
    """
    labels = list(tables)
    cols = list(keys) + ["runs"] + [f"{p}_{w}" for p in parts for w in (
        "each", "mean", "sd", "se", "t", "verdict", "single", "sd_over_se")]
    rows = []
    for row, by_run in _rows_by_key(tables, keys):
        for p in parts:
            diff = by_run.get(f"{p}_diff", pd.Series(dtype=float)).reindex(labels)
            z = by_run.get(f"{p}_z", pd.Series(dtype=float)).reindex(labels)
            se1 = by_run.get(f"{p}_se", pd.Series(dtype=float)).reindex(labels)
            row.update(_pooled(p, diff.to_numpy(float), z.to_numpy(float),
                               se1.to_numpy(float), sides))
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def _pooled(p: str, diff: np.ndarray, z: np.ndarray, se1: np.ndarray,
            sides: tuple[str, str]) -> dict:
    ok = np.isfinite(diff)
    k = int(ok.sum())
    out = {f"{p}_each": tuple(float(d) for d in diff), f"{p}_mean": math.nan,
           f"{p}_sd": math.nan, f"{p}_se": math.nan, f"{p}_t": math.nan,
           f"{p}_verdict": "no margin" if not k else "one run",
           f"{p}_single": "", f"{p}_sd_over_se": math.nan}
    if not k:
        return out
    d = diff[ok]
    out[f"{p}_mean"] = float(d.mean())
    zs = z[ok & np.isfinite(z)]
    out[f"{p}_single"] = (f"{int((zs < -SINGLE_Z).sum())} below, "
                          f"{int((zs > SINGLE_Z).sum())} above of {k}")
    if k < 2:
        return out
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(k)
    out[f"{p}_sd"], out[f"{p}_se"] = sd, se
    if se == 0:  # every run gave the same margin: beyond noise unless it is 0
        t = 0.0 if d.mean() == 0 else math.copysign(math.inf, d.mean())
    else:
        t = float(d.mean()) / se
    out[f"{p}_t"] = t
    crit = t_critical(k - 1)
    out[f"{p}_verdict"] = sides[0] if t < -crit else sides[1] if t > crit else LEVEL
    single = se1[ok & np.isfinite(se1)]
    if len(single) and single.mean() > 0:
        out[f"{p}_sd_over_se"] = sd / float(single.mean())
    return out


def pool_values(tables: Mapping[str, Any], keys: Sequence[str],
                columns: Sequence[str]) -> pd.DataFrame:
    """Per row key, each of ``columns`` over the runs: ``{c}_each`` (in run order, NaN where
    a run has none), ``{c}_mean``, ``{c}_sd``, ``{c}_min``, ``{c}_max``; ``runs``."""
    labels = list(tables)
    cols = list(keys) + ["runs"] + [f"{c}_{w}" for c in columns
                                     for w in ("each", "mean", "sd", "min", "max")]
    rows = []
    for row, by_run in _rows_by_key(tables, keys):
        for c in columns:
            v = by_run[c].reindex(labels).to_numpy(float) if c in by_run else np.full(
                len(labels), math.nan)
            f = v[np.isfinite(v)]
            row[f"{c}_each"] = tuple(float(x) for x in v)
            row[f"{c}_mean"] = float(f.mean()) if len(f) else math.nan
            row[f"{c}_sd"] = float(f.std(ddof=1)) if len(f) > 1 else math.nan
            row[f"{c}_min"] = float(f.min()) if len(f) else math.nan
            row[f"{c}_max"] = float(f.max()) if len(f) else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def each_text(values: Sequence[float], digits: int = 4, signed: bool = True) -> str:
    """The runs' values side by side, "-0.0018 / -0.0050 / ·" (· where a run has none)."""
    fmt = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    return " / ".join("·" if not math.isfinite(v) else fmt.format(v) for v in values)


def pooled_text(table: pd.DataFrame, keys: Sequence[str],
                parts: Sequence[str] = PARTS) -> pd.DataFrame:
    """``pool_margins`` for reading: per part the runs' margins, then "mean ± se (t, verdict)"
    and how many single runs' cards called it."""
    out = table[list(keys) + ["runs"]].copy()
    for p in parts:
        out[f"{p}_each"] = [each_text(v) for v in table[f"{p}_each"]]
        out[f"{p}_pooled"] = [
            "" if not math.isfinite(m) else f"{m:+.4f}" if not math.isfinite(s)
            else f"{m:+.4f} ± {s:.4f} (t {t:+.2f}, {v})"
            for m, s, t, v in zip(table[f"{p}_mean"], table[f"{p}_se"], table[f"{p}_t"],
                                  table[f"{p}_verdict"])]
        out[f"{p}_cards"] = table[f"{p}_single"]
    return out


PART_NAMES = {"test": "natural test day", "new": "its new users (held out of training)",
              "val": "validation (natural-weighted)"}
MARGIN_TABLES = (  # name, row keys, title, parts
    ("model_verdicts", VERDICT_KEYS, "Models against the baselines (validation AgeGender "
     "log-loss, natural-weighted: the model's best candidate in the region - the best "
     "baseline's, the champion rule's measure)", ("val",)),
    ("regional_vs_global", RVG_KEYS, "Regional vs global (AgeGender log-loss, regional - "
     "global candidate of the same model on the same rows)", PARTS),
    ("blind_twins", TWIN_KEYS, "Blind twins (AgeGender log-loss, sighted - blind candidate "
     "on the same rows)", PARTS))


def header_lines(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    """Which runs were pooled, and how to read a row."""
    runs = tables["runs"]
    k = len(runs)
    return [f"Pooled over {k} runs that differ only in their seed: " + ", ".join(
                f"{r} ({lab})" for r, lab in zip(runs["run"], runs["label"])),
            f"Each row: the runs' margins in that order (· where a run has none); their mean "
            f"± its SE over the runs, and t on runs - 1 degrees of freedom (beyond noise at "
            f"|t| > {t_critical(max(k - 1, 1)):.2f} with {k} runs, two-sided 5%); in how "
            "many runs the card's own z was beyond ±2."]


def sections(tables: Mapping[str, pd.DataFrame]) -> list[tuple[str, pd.DataFrame, list[str]]]:
    """The pooled tables for reading as (title, table, notes under it): per margin table one
    block per part; rows whose margin was 0 in every run and part (a regional candidate that
    kept its start every time) named in a note instead; the gauge per target. A pooled table
    without rows gives no section."""
    out = []
    for name, keys, what, parts in MARGIN_TABLES:
        t = tables.get(name)
        if t is None or not len(t):
            continue
        flat = pd.Series(True, index=t.index)
        for p in parts:
            flat &= t[f"{p}_each"].map(lambda v: all(x == 0 for x in v))
        text = pooled_text(t[~flat], keys, parts)
        notes = []
        if name == "model_verdicts":  # as loud as a single run's card is
            behind = t[t["val_verdict"] == "baseline better"]
            for model, g in behind.groupby("model", sort=False):
                notes.append(f"WARNING: over {len(tables['runs'])} seeds, `{model}` is behind "
                             f"the baselines beyond noise in {', '.join(g['eval_region'])}")
        if flat.any():
            notes.append("identical in every run (kept its start each time): " + ", ".join(
                " ".join(str(v) for v in r) for r in t.loc[flat, list(keys)].itertuples(
                    index=False)))
        spread = t.loc[~flat, [f"{p}_sd_over_se" for p in parts]].median()
        if spread.notna().any():
            notes.append("the runs' spread / one run's SE, median over the rows: " + ", ".join(
                f"{p} {v:.1f}" for p, v in zip(parts, spread) if pd.notna(v)))
        shown = [p for p in ("test", "new", "val") if p in parts]
        for i, p in enumerate(shown):
            block = text[list(keys) + ["runs", f"{p}_each", f"{p}_pooled", f"{p}_cards"]]
            block = block.rename(columns={f"{p}_each": "each run", f"{p}_pooled":
                                          "mean ± se (t, verdict)", f"{p}_cards": "cards"})
            out.append((what if len(shown) == 1 else f"{what}, {PART_NAMES[p]}", block,
                        notes if i == len(shown) - 1 else []))
    g = tables.get("gauge")
    for t in GAUGE_TARGETS if g is not None and len(g) else ():
        rows = []
        for _, r in g.iterrows():
            row = {"eval_region": r["eval_region"], "test_set": r["test_set"]}
            for m, head in (("ratio", "× realised"), ("ratio_population", "× population")):
                c = f"{m}_{t}"
                row[head] = "" if not np.isfinite(r[f"{c}_mean"]) else (
                    f"{each_text(r[f'{c}_each'], signed=False)} → {r[f'{c}_mean']:.4f} "
                    f"({r[f'{c}_min']:.4f}-{r[f'{c}_max']:.4f})")
            rows.append(row)
        out.append((f"Bayes gauge, {t}: each region's chosen candidate, provider labels; "
                    "model / realised and model / population posterior; each run, then mean "
                    "(min-max)", pd.DataFrame(rows), []))
    return out


def print_pooled(tables: Mapping[str, pd.DataFrame] | None, out: TextIO,
                 title: str | None = None) -> None:
    """``title`` (if any), ``header_lines`` and ``sections`` as text (nothing for None: a
    run's ``seed_pool`` when it pooled with no other run, or from before the artifact)."""
    if tables is None:
        return
    if title:
        print(title, file=out)
    for line in header_lines(tables):
        print(line, file=out)
    with pd.option_context("display.width", 250, "display.max_columns", 50,
                           "display.max_colwidth", 80):
        for heading, table, notes in sections(tables):
            print(f"\n{heading}", file=out)
            print(table.to_string(index=False), file=out)
            for note in notes:
                print(note, file=out)
