"""`pythia seeds`: runs that differ only in their seed, read through the Metaflow client and
pooled (``evaluate.pooled``): regional vs global, the blind twins and the champions' gauge,
each row's margin over the seeds with a t test that holds the fits' noise as well as the users'.

Runs pool only when they read the same data the same way: the same source, world, window,
providers, ETL and training settings, search and model knobs, on the same stack (the code's
digest and the libraries, where both runs recorded them); they may train different
models and regions (a row is pooled over the runs that have it) and must have distinct seeds.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Sequence, TextIO

import pandas as pd

from pythia import stack
from pythia.evaluate import pooled

# RunParams fields that change a run's rows or fits: pooled runs must agree on them
SAME_FIELDS = ("source", "provider_overrides", "etl", "train", "search", "geo",
               "model_hparams")
RVG_KEYS, TWIN_KEYS, GAUGE_KEYS = pooled.RVG_KEYS, pooled.TWIN_KEYS, pooled.GAUGE_KEYS
VERDICT_KEYS = pooled.VERDICT_KEYS
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
    model_verdicts: Any = None
    stack: Any = None  # the start step's ``stack`` (pythia.stack.versions: code and libraries)


# SeedRun's tables, in order
TABLES = ("regional_vs_global", "blind_twins", "gauge", "champions", "model_verdicts")
MAX_POOLED = 10  # the evaluate step pools its run with at most this many - 1 earlier ones


def seed_run_of(run_id: str, artifacts: Any) -> SeedRun:
    """A ``SeedRun`` from an object holding a run's artifacts as attributes (the flow in its
    evaluate step)."""
    return SeedRun(str(run_id), artifacts.params,
                   *[getattr(artifacts, n, None) for n in ("world_fingerprint", "window")],
                   *[getattr(artifacts, n, None) for n in TABLES],
                   stack=getattr(artifacts, "stack", None))


def read_seed_run(run: Any, tables: bool = True, window: Any = None) -> SeedRun:
    """A Metaflow ``Run``'s artifacts that `pythia seeds` pools (``tables=False``: only what
    ``check_poolable`` reads; ``with_tables`` adds the rest; ``window``: the run's window
    artifact when the caller has read it already)."""
    from pythia.runs import _artifact

    params = _artifact(run, "params")
    if params is None:
        raise ValueError(f"run {run.pathspec} has no params artifact (it stopped in start?)")
    view = SeedRun(str(run.id), params, _artifact(run, "world_fingerprint"),
                   _artifact(run, "window") if window is None else window,
                   stack=_artifact(run, "stack"))
    return with_tables(view, run) if tables else view


def with_tables(view: SeedRun, run: Any) -> SeedRun:
    """``view`` with ``run``'s pooled tables read."""
    from pythia.runs import _artifact

    return dataclasses.replace(view, **{n: _artifact(run, n) for n in TABLES})


def poolable_runs(runs: Iterable[Any], anchor: SeedRun, limit: int,
                  out: TextIO | None = None) -> list[SeedRun]:
    """Up to ``limit`` successful runs of ``runs`` (newest first; at most ``LATEST_SCAN``
    looked at) poolable with ``anchor`` and of seeds distinct from it and each other, with
    their tables; each run passed over said on ``out`` (when given)."""
    from pythia.runs import _artifact

    chosen: list[SeedRun] = []
    for i, run in enumerate(runs):
        if len(chosen) >= limit or i >= LATEST_SCAN:
            break
        if str(run.id) == anchor.run_id or not run.successful:
            continue
        window = _artifact(run, "window")
        if window != anchor.window:  # another day's data: cheap to see
            if out:
                print(f"(passed over run {run.id}: another window)", file=out)
            continue
        try:
            view = read_seed_run(run, tables=False, window=window)
            for earlier in [anchor] + [c for c in chosen if c.params.seed == view.params.seed]:
                check_poolable([earlier, view])
        except ValueError as e:  # not poolable, or no params (a run that stopped in start)
            if out:
                print(f"(passed over: {e})", file=out)
            continue
        chosen.append(with_tables(view, run))
    return chosen


def pool_with_earlier(flow_name: str, this: SeedRun) -> dict[str, pd.DataFrame] | None:
    """``pool_runs`` of ``this`` run (``seed_run_of``) and the earlier successful runs of
    ``flow_name`` poolable with it, newest first (at most ``MAX_POOLED`` in all); None when
    there is none (a run whose data no run of another seed read)."""
    from pythia.runs import open_flow

    try:
        flow = open_flow(flow_name)
        earlier = [] if flow is None else poolable_runs(flow.runs(), this, MAX_POOLED - 1)
        return pool_runs([this] + earlier) if earlier else None
    except Exception as e:  # noqa: BLE001 - a report section must not fail the run
        print(f"over seeds: not pooled ({type(e).__name__}: {e}); `pythia seeds` can pool the "
              "runs later")
        return None


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
        moved = stack.shared_differences(runs[0].stack, run.stack, stack.HARDWARE)
        if moved:  # other code or libraries fit otherwise: their spread is not the seeds'
            raise ValueError(f"runs {runs[0].run_id} and {run.run_id} ran on different stacks "
                             f"({', '.join(moved)}): pool runs of the same code and libraries "
                             "(`pythia report RUN` prints a run's stack)")


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
    """``check_poolable``, then the pooled tables: ``model_verdicts`` (each model's best
    candidate - the best baseline, validation), ``regional_vs_global`` (regional - global),
    ``blind_twins`` (sighted - blind) and ``gauge`` (each region's chosen candidate on the
    natural test day and its new users, provider labels: model / realised and / population
    posterior per target)."""
    from pythia.evaluate.gauge import gauge_by_slice

    check_poolable(runs)
    labels = [f"seed {r.params.seed}" for r in runs]
    rvg = {lab: _table(r.regional_vs_global, RVG_KEYS) for lab, r in zip(labels, runs)}
    verdicts = {lab: _table(r.model_verdicts, VERDICT_KEYS).rename(columns={
        "gap": "val_diff", "gap_se": "val_se", "gap_z": "val_z"}) for lab, r in zip(labels, runs)}
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
    ratio_cols = [f"{m}_{t}" for t in pooled.GAUGE_TARGETS
                  for m in ("ratio", "ratio_population")]
    return {
        "model_verdicts": pooled.pool_margins(
            verdicts, VERDICT_KEYS, ("model better", "baseline better"), ("val",)),
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
    newest = flow.latest_successful_run
    if newest is None:
        raise ValueError(f"{flow.id} has no successful run yet")
    anchor = read_seed_run(newest)
    chosen = [anchor] + poolable_runs(flow.runs(), anchor, latest - 1, out)
    if len(chosen) < latest:
        print(f"(found {len(chosen)} poolable runs of the {latest} asked for)", file=out)
    return chosen


def print_seeds(run_ids: Sequence[str] = (), latest: int | None = None,
                flow_name: str = "DemoFlow", out: TextIO | None = None) -> int:
    """Print the pooled tables of the named runs (or the ``latest`` poolable ones).

    Returns a process exit code: 0 when printed, 1 when the flow has no runs here; raises
    ValueError (one line) when the runs cannot be pooled.
    """
    from pythia.runs import _open_flow

    out = out or sys.stdout
    flow = _open_flow(flow_name, out)
    if flow is None:
        return 1
    pooled.print_pooled(pool_runs(select_runs(flow, run_ids, latest, out)), out)
    return 0


def seed_list(values: Iterable[str]) -> list[str]:
    """Run ids from the command line, comma- or space-separated."""
    return [v.strip() for value in values for v in str(value).split(",") if v.strip()]
