"""`pythia timings`: the wall time of a run, of each step, and of each train task and its
candidates, read from the Metaflow client's task timestamps (``pythia.runs`` opens the runs).
"""
from __future__ import annotations

import sys
from typing import Any, TextIO

import pandas as pd

from pythia.runs import _open_flow, open_run, run_status


def step_timings(run: Any) -> pd.DataFrame:
    """Per step: task count, wall span (first task start -> last task end), summed task time
    and the longest task, in seconds, read from the run's task timestamps."""
    rows = []
    for step in run:
        tasks = [t for t in step if t.created_at is not None and t.finished_at is not None]
        if not tasks:
            continue
        starts = [t.created_at for t in tasks]
        ends = [t.finished_at for t in tasks]
        durations = [(e - s).total_seconds() for s, e in zip(starts, ends)]
        rows.append({"step": step.id, "tasks": len(tasks),
                     "wall_s": (max(ends) - min(starts)).total_seconds(),
                     "sum_task_s": sum(durations), "max_task_s": max(durations),
                     "start": min(starts)})
    df = pd.DataFrame(rows)
    return df.sort_values("start").drop(columns="start").reset_index(drop=True) if len(df) else df


def task_candidates(task: Any) -> list[dict]:
    """The candidate summaries a ``train`` task stored: ``candidates`` (a model family per
    task), or ``candidate`` (one per task, runs from before families); [] when it has neither."""
    try:
        if "candidates" in task:
            return list(task["candidates"].data or [])
        if "candidate" in task:
            return [task["candidate"].data]
    except Exception:  # noqa: BLE001 - a half-written task must not break the listing
        pass
    return []


def train_timings(run: Any) -> pd.DataFrame:
    """One row per candidate of the run's ``train`` tasks: its model, config, region, what it
    started from, its fit seconds, and the wall seconds of the task that fitted it (a task
    fits one model family: the global candidate, then its regions)."""
    rows = []
    try:
        tasks = list(run["train"])
    except Exception:  # noqa: BLE001 - no train step (yet): nothing to show
        return pd.DataFrame()
    for task in tasks:
        task_s = ((task.finished_at - task.created_at).total_seconds()
                  if task.created_at and task.finished_at else float("nan"))
        for c in task_candidates(task):
            rows.append({"model": c.get("model"), "config_id": c.get("config_id", 0),
                         "region": c.get("region"), "start_from": c.get("start_from") or "-",
                         "fit_s": c.get("fit_seconds"), "task": task.id, "task_s": task_s})
    df = pd.DataFrame(rows)
    return df.sort_values(["model", "config_id", "task"], kind="stable").reset_index(
        drop=True) if len(df) else df


def print_timings(run_id: str | None = None, flow_name: str = "DemoFlow",
                  out: TextIO | None = None) -> int:
    """Print the wall time of a run, of each step, and of each train task and its candidates
    (default: latest successful run)."""
    out = out or sys.stdout  # resolved per call: tests and callers may swap stdout
    flow = _open_flow(flow_name, out)
    if flow is None:
        return 1
    run = open_run(flow_name, run_id) if run_id else flow.latest_successful_run
    if run is None:
        print(f"Run {flow_name}/{run_id} not found." if run_id else
              f"{flow_name} has no successful run yet.", file=out)
        return 1
    table = step_timings(run)
    total = ((run.finished_at - run.created_at).total_seconds()
             if run.finished_at and run.created_at else float("nan"))
    print(f"Run {run.pathspec}  status: {run_status(run)}  wall time: {total:.0f} s", file=out)
    train = train_timings(run)
    with pd.option_context("display.float_format", "{:.1f}".format, "display.width", 200):
        print(table.to_string(index=False), file=out)
        if len(train):
            print("\ntrain tasks and their candidates (a task fits one model family; before "
                  "families, one candidate) — task_s: the task's wall seconds; fit_s: the "
                  "candidate's fit; start_from: the model a region started from", file=out)
            print(train.to_string(index=False), file=out)
    return 0
