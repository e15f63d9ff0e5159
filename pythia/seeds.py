"""`pythia seeds`: runs that differ only in their seed, read through the Metaflow client and
pooled (``evaluate.pooled``): regional vs global, the blind twins and the champions' gauge,
each row's margin over the seeds with a t test that holds the fits' noise as well as the users'.

Runs pool only when they read the same data the same way: the same source, world, window,
providers, ETL and training settings, search and model knobs; they may train different
models and regions (a row is pooled over the runs that have it) and must have distinct seeds.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence, TextIO

import numpy as np
import pandas as pd

from pythia.evaluate import pooled

# RunParams fields that change a run's rows or fits: pooled runs must agree on them
SAME_FIELDS = ("source", "provider_overrides", "etl", "train", "search", "geo",
               "model_hparams")
SEED_FIELDS = ("seed",)  # and the seed inside etl and train
RVG_KEYS = ["region", "model", "config_id"]
TWIN_KEYS = ["region", "comparison", "sighted", "blind"]
GAUGE_KEYS = ["eval_region", "test_set"]
GAUGE_TARGETS = ("age_gender", "gender", "age")
LATEST_SCAN = 50  # `--latest K` looks this many runs back at most


@dataclass
class SeedRun:
    """What `pythia seeds` reads of one run (``read_seed_run``; tests build it by hand)."""

    run_id: str
    params: Any  # config.RunParams
    fingerprint: str | None = None
    window: Any = None
    regional_vs_global: Any = None
    blind_twins: Any = None
    gauge: Any = None
    champions: Any = None


def read_seed_run(run: Any) -> SeedRun:
    """A Metaflow ``Run``'s artifacts that `pythia seeds` pools."""
    from pythia.runs import _artifact

    params = _artifact(run, "params")
    if params is None:
        raise ValueError(f"run {run.pathspec} has no params artifact (it stopped in start?)")
    return SeedRun(str(run.id), params, _artifact(run, "world_fingerprint"),
                   _artifact(run, "window"), _artifact(run, "regional_vs_global"),
                   _artifact(run, "blind_twins"), _artifact(run, "gauge"),
                   _artifact(run, "champions"))


def _comparable_view(run: SeedRun) -> dict[str, Any]:
    """The settings two pooled runs must share, with every seed set to 0."""
    p = run.params
    view = {}
    for name in SAME_FIELDS:
        value = getattr(p, name, None)
        if name in ("etl", "train") and dataclasses.is_dataclass(value):
            value = dataclasses.replace(value, seed=0)
        if name == "model_hparams":  # an empty [models.x] section is no knob
            value = {m: dict(h) for m, h in (value or {}).items() if h}
        view[name] = value
    view["world"] = run.fingerprint
    view["window"] = run.window
    return view


def check_poolable(runs: Sequence[SeedRun]) -> None:
    """Raise ValueError (one line naming the runs and the setting) unless ``runs`` are two or
    more runs that differ only in their seed (and the models and regions they train)."""
    if len(runs) < 2:
        raise ValueError(f"pooling needs two runs or more, got {len(runs)}: run the flow again "
                         "with another --seed")
    first = _comparable_view(runs[0])
    seen = {}
    for run in runs:
        if run.params.seed in seen:
            raise ValueError(f"runs {seen[run.params.seed]} and {run.run_id} have the same seed "
                             f"{run.params.seed}: pool runs with distinct --seed values")
        seen[run.params.seed] = run.run_id
        view = _comparable_view(run)
        for name, value in view.items():
            if value != first[name]:
                what = _differs(name, first[name], value)
                raise ValueError(f"runs {runs[0].run_id} and {run.run_id} differ in {what}: pool "
                                 "runs that differ only in --seed (and --models / --regions)")


def _differs(name: str, a: Any, b: Any) -> str:
    """'train.max_epochs (12 vs 20)' for dataclasses, else 'source ('x' vs 'y')'."""
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
        for f in dataclasses.fields(a):
            va, vb = getattr(a, f.name), getattr(b, f.name, None)
            if va != vb:
                return f"{name}.{f.name} ({va!r} vs {vb!r})"
    text_a, text_b = repr(a), repr(b)
    if len(text_a) + len(text_b) > 120:
        return name
    return f"{name} ({text_a} vs {text_b})"


def pool_runs(runs: Sequence[SeedRun]) -> dict[str, pd.DataFrame]:
    """``check_poolable``, then the pooled tables: ``regional_vs_global`` (regional - global),
    ``blind_twins`` (sighted - blind) and ``gauge`` (each region's chosen candidate on the
    natural test day and its new users, provider labels: model / realised and / population
    posterior per target)."""
    from pythia.evaluate.gauge import gauge_by_slice

    check_poolable(runs)
    labels = [f"seed {r.params.seed}" for r in runs]
    rvg = {lab: _table(r.regional_vs_global, RVG_KEYS) for lab, r in zip(labels, runs)}
    twins = {lab: _table(r.blind_twins, TWIN_KEYS) for lab, r in zip(labels, runs)}
    gauges = {}
    for lab, r in zip(labels, runs):
        if r.gauge is None or r.champions is None:
            gauges[lab] = pd.DataFrame(columns=GAUGE_KEYS)
            continue
        g = gauge_by_slice(pd.DataFrame(r.gauge), pd.DataFrame(r.champions))
        if len(g):
            g = g[(g["label_source"] == "provider")
                  & g["test_set"].isin(["natural", "natural_new_users"])]
        gauges[lab] = g
    ratio_cols = [f"{m}_{t}" for t in GAUGE_TARGETS for m in ("ratio", "ratio_population")]
    return {
        "regional_vs_global": pooled.pool_margins(
            rvg, RVG_KEYS, ("regional better", "global better")),
        "blind_twins": pooled.pool_margins(twins, TWIN_KEYS, ("sighted better",
                                                              "blind better")),
        "gauge": pooled.pool_values(gauges, GAUGE_KEYS, ratio_cols),
        "runs": pd.DataFrame({"run": [r.run_id for r in runs], "label": labels}),
    }


def _table(table: Any, keys: Sequence[str]) -> pd.DataFrame:
    if table is None:
        return pd.DataFrame(columns=list(keys))
    return pd.DataFrame(table)


def select_runs(flow: Any, run_ids: Sequence[str], latest: int | None,
                out: TextIO) -> list[SeedRun]:
    """The named runs, or the ``latest`` successful runs poolable with the newest one and of
    distinct seeds, newest first (each run passed over said in a line)."""
    from pythia.runs import open_run

    if run_ids:
        runs = []
        for rid in run_ids:
            run = open_run(flow.id, str(rid))
            if run is None:
                raise ValueError(f"run {flow.id}/{rid} not found: `pythia runs` lists the runs")
            runs.append(read_seed_run(run))
        return runs
    if latest is None or latest < 2:
        raise ValueError(f"--latest must be 2 or more, got {latest}")
    chosen: list[SeedRun] = []
    for i, run in enumerate(flow.runs()):  # newest first
        if len(chosen) == latest or i >= LATEST_SCAN:
            break
        if not run.successful:
            continue
        view = read_seed_run(run)
        try:
            for earlier in chosen[:1] + [c for c in chosen if c.params.seed == view.params.seed]:
                check_poolable([earlier, view])
        except ValueError as e:
            print(f"(passed over: {e})", file=out)
            continue
        chosen.append(view)
    if len(chosen) < latest:
        print(f"(found {len(chosen)} poolable runs of the {latest} asked for in the last "
              f"{LATEST_SCAN} runs)", file=out)
    return chosen


def print_seeds(run_ids: Sequence[str] = (), latest: int | None = None,
                flow_name: str = "DemoFlow", out: TextIO | None = None) -> int:
    """Print the pooled tables of the named runs (or the ``latest`` poolable ones).

    Returns a process exit code: 0 when printed, 1 when there is nothing to pool.
    """
    from pythia.runs import _open_flow

    out = out or sys.stdout
    flow = _open_flow(flow_name, out)
    if flow is None:
        return 1
    tables = pool_runs(select_runs(flow, run_ids, latest, out))
    print_pooled(tables, out)
    return 0


PART_NAMES = {"test": "natural test day", "new": "its new users (held out of training)",
              "val": "validation (natural-weighted)"}


def print_pooled(tables: Mapping[str, pd.DataFrame], out: TextIO) -> None:
    """The pooled tables for reading, one block per part (a table without rows is left
    out); rows whose margin was 0 in every run and part (a regional candidate that kept its
    start every time) are named in one line instead."""
    runs = tables["runs"]
    k = len(runs)
    print(f"Pooled over {k} runs that differ only in their seed: "
          + ", ".join(f"{r} ({lab})" for r, lab in zip(runs["run"], runs["label"])), file=out)
    print(f"Each row: the runs' margins in that order (· where a run has none); their mean ± "
          f"its SE over the runs, and t on runs - 1 degrees of freedom (beyond noise at |t| > "
          f"{pooled.t_critical(max(k - 1, 1)):.2f} with {k} runs, two-sided 5%); in how many "
          "runs the card's own z was beyond ±2.", file=out)
    with pd.option_context("display.width", 250, "display.max_columns", 50,
                           "display.max_colwidth", 80):
        for name, keys, what in (
                ("regional_vs_global", RVG_KEYS, "Regional vs global (AgeGender log-loss, "
                 "regional - global candidate of the same model on the same rows)"),
                ("blind_twins", TWIN_KEYS, "Blind twins (AgeGender log-loss, sighted - blind "
                 "candidate on the same rows)")):
            _print_margins(tables[name], keys, what, out)
        _print_gauge(tables["gauge"], out)


def _print_margins(t: pd.DataFrame, keys: Sequence[str], what: str, out: TextIO) -> None:
    if not len(t):
        return
    flat = pd.Series(True, index=t.index)
    for p in pooled.PARTS:
        flat &= t[f"{p}_each"].map(lambda v: all(x == 0 for x in v))
    text = pooled.pooled_text(t[~flat], keys)
    for p in ("test", "new", "val"):
        print(f"\n{what}, {PART_NAMES[p]}", file=out)
        cols = list(keys) + ["runs", f"{p}_each", f"{p}_pooled", f"{p}_cards"]
        block = text[cols].rename(columns={f"{p}_each": "each run", f"{p}_pooled":
                                           "mean ± se (t, verdict)", f"{p}_cards": "cards"})
        print(block.to_string(index=False), file=out)
    if flat.any():
        print("identical in every run (kept its start each time): " + ", ".join(
            " ".join(str(v) for v in r) for r in t.loc[flat, list(keys)].itertuples(
                index=False)), file=out)
    spread = t.loc[~flat, [f"{p}_sd_over_se" for p in pooled.PARTS]].median()
    print("the runs' spread / one run's SE, median over the rows: " + ", ".join(
        f"{p} {v:.1f}" for p, v in zip(pooled.PARTS, spread) if pd.notna(v)), file=out)


def _print_gauge(g: pd.DataFrame, out: TextIO) -> None:
    if not len(g):
        return
    for t in GAUGE_TARGETS:
        print(f"\nBayes gauge, {t}: each region's chosen candidate, provider labels; model / "
              "realised and model / population posterior; each run, then mean (min-max)",
              file=out)
        rows = []
        for _, r in g.iterrows():
            row = {"eval_region": r["eval_region"], "test_set": r["test_set"]}
            for m, head in (("ratio", "× realised"), ("ratio_population", "× population")):
                c = f"{m}_{t}"
                row[head] = "" if not np.isfinite(r[f"{c}_mean"]) else (
                    f"{pooled.each_text(r[f'{c}_each'], signed=False)} → {r[f'{c}_mean']:.4f} "
                    f"({r[f'{c}_min']:.4f}-{r[f'{c}_max']:.4f})")
            rows.append(row)
        print(pd.DataFrame(rows).to_string(index=False), file=out)


def seed_list(values: Iterable[str]) -> list[str]:
    """Run ids from the command line, comma- or space-separated."""
    return [v for value in values for v in str(value).split(",") if v.strip()]
