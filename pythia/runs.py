"""Past runs through the Metaflow client: the look-ups the flow needs (previous champions and
bundle) and the views `pythia report`, `pythia runs` (`pythia timings`: ``pythia.run_timings``).
Every user's runs are visible, and the process's namespace is never changed: every client
object is opened with ``_namespace_check=False`` (a notebook importing this keeps its own)."""
from __future__ import annotations

import sys
from datetime import date
from typing import Any, Mapping, TextIO

import pandas as pd

from pythia import input_health, stack, storage, what_moved
from pythia.features import spec_version
from pythia.paths import join
# the end step's summary; re-exported here, where the flow and callers have looked for it
from pythia.run_summary import baseline_alarm, fold_regions, summary_text  # noqa: F401
from pythia.run_summary import window_text as _window_text

TARGET_SHORT = (("age_gender", "ag"), ("gender", "g"), ("age", "a"))


def _artifact(run: Any, name: str) -> Any:
    """Artifact ``name`` of a run: its end step's, else the latest step's that has it; None."""
    try:
        end = run.end_task
        if end is not None and name in end:
            return end[name].data
        for step in run:  # most recent step first
            task = step.task
            if task is not None and name in task:
                return task[name].data
    except Exception:  # noqa: BLE001 - a half-written run must not break the listing
        return None
    return None


def _task_failed(task: Any) -> bool:
    # a task that raised stores _task_ok=False (and _exception); a running one has neither
    try:
        return "_task_ok" in task and task["_task_ok"].data is False
    except Exception:  # noqa: BLE001
        return False


def run_status(run: Any) -> str:
    """'successful', 'failed' or 'running' (a failed run never reaches its end step)."""
    if run.successful:
        return "successful"
    try:
        end = run.end_task
        if end is not None and _task_failed(end):
            return "failed"
        for step in run:  # the most recent step tells whether the run stopped on an error
            if any(_task_failed(t) for t in step):
                return "failed"
            break
    except Exception:  # noqa: BLE001
        pass
    return "running"


def open_flow(flow_name: str) -> Any:
    """The Metaflow ``Flow`` across all namespaces, or None when it has no runs here."""
    from metaflow import Flow
    from metaflow.exception import MetaflowNotFound

    try:
        return Flow(flow_name, _namespace_check=False)
    except MetaflowNotFound:
        return None


def open_run(flow_name: str, run_id: str) -> Any:
    """``Run(flow/run_id)`` across all namespaces, or None when it does not exist."""
    from metaflow import Run
    from metaflow.exception import MetaflowNotFound

    try:
        return Run(f"{flow_name}/{run_id}", _namespace_check=False)
    except MetaflowNotFound:
        return None


def _open_flow(flow_name: str, out: TextIO) -> Any:
    from metaflow import get_metadata

    flow = open_flow(flow_name)
    if flow is None:
        print(f"No runs of {flow_name} found (metadata: {get_metadata()}). Run the flow "
              f"first, e.g. `python flows/demo_flow.py run`.", file=out)
    return flow


# ---------------------------------------------------------------- look-ups for the flow

def _earlier_successful_runs(flow_name: str, current_run_id: str | None):
    """Successful runs of ``flow_name`` other than ``current_run_id``, newest first."""
    flow = open_flow(flow_name)
    if flow is None:
        return
    for run in flow.runs():
        if str(run.id) != str(current_run_id) and run.successful:
            yield run


def _other_spec(run: Any) -> str | None:
    """The feature spec of ``run``'s bundle when it is not this code's (its models cannot
    score this run's features; one line says so), else None (same spec, or no bundle)."""
    bundle = _artifact(run, "bundle_path")
    if not bundle or not storage.exists(join(bundle, "bundle.json")):
        return None
    built = storage.read_json(join(bundle, "bundle.json")).get("spec_version")
    if built == spec_version():
        return None
    print(f"previous run {run.pathspec} skipped: its bundle was built for feature spec {built}, "
          f"this code has {spec_version()} (its models cannot score this run's features)")
    return built


def user_split_of(split_manifest: Mapping[str, Any] | None) -> tuple[float, int]:
    """(holdout_users, seed): the users a run held out of training (``etl.holdout``)."""
    m = split_manifest or {}
    return float(m.get("holdout_users") or 0.0), int(m.get("seed") or 0)


def _trained_on_new_users(run: Any, user_split: tuple[float, int] | None,
                          test_day: str | None = None) -> bool:
    """Whether ``run``'s models may have trained on this run's test rows (one line says so):
    on users this run holds out (``user_split``; a run that held out at least the same share
    with the same seed held out every one: the draw is a hash), or in a backfill on its test
    day (``test_day``, this run's, before ``run``'s)."""
    day = test_day_of(run) if test_day else None
    if day and day > test_day:
        print(f"previous run {run.pathspec} skipped: its test day {day} is after this run's "
              f"{test_day} (a backfill): its models may have trained on this run's test day")
        return True
    return _held_out_fewer(run.pathspec, user_split_of(_artifact(run, "split_manifest")),
                           user_split, set())


def _held_out_fewer(pathspec: str, theirs: tuple[float, int],
                    user_split: tuple[float, int] | None, said: set) -> bool:
    """``_trained_on_new_users``' users of the run ``pathspec``; its line once (``said``)."""
    if user_split is None or user_split[0] <= 0:
        return False
    share, seed = float(theirs[0]), int(theirs[1])
    if seed == user_split[1] and share >= user_split[0]:
        return False
    if ("split", pathspec) not in said:
        said.add(("split", pathspec))
        print(f"previous run {pathspec} skipped: it held out {share:g} of the users (seed "
              f"{seed}), this run {user_split[0]:g} (seed {user_split[1]}): its models trained "
              "on users this run keeps for its new-users test")
    return True


def previous_bundle(flow_name: str, current_run_id: str | None,
                    user_split: tuple[float, int] | None = None, test_day: str | None = None
                    ) -> tuple[str | None, str | None]:
    """(bundle path, run pathspec) of the newest earlier successful run with a bundle this
    code can load (this feature spec) whose models did not train on this run's test rows
    (``_trained_on_new_users``), else (None, None) (first run, or only such other runs)."""
    for run in _earlier_successful_runs(flow_name, current_run_id):
        bundle = _artifact(run, "bundle_path")
        if (bundle and storage.exists(join(bundle, "bundle.json")) and _other_spec(run) is None
                and not _trained_on_new_users(run, user_split, test_day)):
            return bundle, run.pathspec
    return None, None


def previous_champions(flow_name: str, current_run_id: str | None,
                       user_split: tuple[float, int] | None = None,
                       encoders: Mapping[str, Any] | None = None, test_day: str | None = None,
                       max_kept_days: int = 0) -> dict[str, dict]:
    """By region, the models the newest earlier successful run's bundle served (blessed or
    kept by it: ``bundle_models``) that this run can keep ({} if none, or of another feature
    spec), each with the run that blessed it (``blessed_in``), its test day (``blessed_date``),
    its held-out users (``user_split``) and age edges. Left out, one line each, a model: whose
    run trained on users this run holds out, whose age edges are not this run's (``encoders``),
    blessed after ``test_day`` (this run's: a backfill) or more than ``max_kept_days`` before
    (``[evaluate]``, 0: no limit), or whose folder is gone."""
    for run in _earlier_successful_runs(flow_name, current_run_id):
        served = _artifact(run, "bundle_models")
        if served is None:  # a run from before session 65: its blessed champions
            champs = _artifact(run, "champions")
            if champs is None:
                continue
            split = list(user_split_of(_artifact(run, "split_manifest")))
            edges = (_artifact(run, "encoders") or {}).get("age_edges")
            served = [{**r, "blessed_in": run.pathspec, "user_split": split, "age_edges": edges}
                      for r in pd.DataFrame(champs).to_dict("records")
                      if r.get("blessed") and r.get("model")]
        if _other_spec(run) is not None:
            return {}
        rows = [{**r, "blessed_date": _blessed_date(r, run)} for r in served
                if r.get("blessed_in")]
        return _keepable(run, rows, user_split,
                         None if encoders is None else encoders.get("age_edges"),
                         test_day, max_kept_days)
    return {}


def test_day_of(run: Any) -> str | None:
    """A run's test day ('YYYY-MM-DD', of its ``window`` artifact); None when it has none."""
    try:
        return str(_artifact(run, "window")["test"][0])
    except (TypeError, KeyError, IndexError):
        return None


def _blessed_date(row: Mapping[str, Any], run: Any) -> str | None:
    """The test day of the run that blessed ``row``'s model: recorded with it (session 66 on),
    else read off that run (``run``, the previous run, or an older one it kept from)."""
    if row.get("blessed_date"):
        return str(row["blessed_date"])
    blessed = str(row["blessed_in"])
    if blessed == run.pathspec or blessed.startswith(run.pathspec + "/"):
        return test_day_of(run)
    try:  # its age is unknown when that run is gone: said in the line that keeps it
        return test_day_of(open_run(*blessed.split("/")[:2]))
    except Exception:  # noqa: BLE001 - a metadata service's error
        return None


def _keepable(run: Any, rows: list[dict], user_split: tuple[float, int] | None,
              age_edges: Any, test_day: str | None = None,
              max_kept_days: int = 0) -> dict[str, dict]:
    """``previous_champions``' rows that this run can keep, by region; a line for each other."""
    from pythia.models.base import META_FILE  # here: models.base loads SciPy
    kept, said = {}, set()
    for r in rows:
        blessed_in, day = r["blessed_in"], r.get("blessed_date")
        age = (date.fromisoformat(test_day) - date.fromisoformat(day)).days \
            if day and test_day else None  # in days of data: a backfill counts its own
        if _held_out_fewer(blessed_in, tuple(r.get("user_split") or (0.0, 0)), user_split,
                           said):
            continue
        if age_edges is not None and r.get("age_edges") != age_edges:
            if ("edges", blessed_in) not in said:
                said.add(("edges", blessed_in))
                print(f"previous run {blessed_in}'s champions are not kept: they predict the "
                      f"age buckets of edges {r.get('age_edges')}, this run those of "
                      f"{age_edges}, and a bundle has one set of classes; regions without a "
                      "blessed champion route to the global slot")
            continue
        if age is not None and (age < 0 or 0 < max_kept_days < age):
            why = (f"after this run's {test_day} (a backfill): it may have trained on it"
                   if age < 0 else f"{age} days before this run's ([evaluate] max_kept_days "
                   f"{max_kept_days})")
            print(f"{r['region']}: {r['model']} of {blessed_in} is not kept: its test day "
                  f"{day} is {why}; the region routes to the global slot")
            continue
        if not storage.exists(join(str(r.get("model_dir")), META_FILE)):
            print(f"{blessed_in}'s {r['region']} champion is not kept: its model folder "
                  f"{r.get('model_dir')} is gone")
            continue
        if blessed_in != run.pathspec and not str(blessed_in).startswith(run.pathspec + "/"):
            when = "unknown" if age is None else f"{day}, {age} day(s) before this run's"
            print(f"{r['region']}: keeps {r['model']} of {blessed_in} (test day {when}), "
                  f"which {run.pathspec} kept too (no champion blessed there since)")
        kept[r["region"]] = r
    return kept


def bundle_path_of_run(run_id: str | None, flow_name: str = "DemoFlow") -> str:
    """The ``bundle_path`` artifact of a run (default: the latest successful one)."""
    if run_id:
        run = open_run(flow_name, run_id)
    else:
        flow = open_flow(flow_name)
        run = flow.latest_successful_run if flow is not None else None
    if run is None:
        what = f"run {flow_name}/{run_id}" if run_id else f"successful {flow_name} run"
        raise ValueError(f"no {what} found; pass --bundle PATH")
    if "bundle_path" not in run.data:
        raise ValueError(f"run {run.pathspec} has no bundle_path artifact (did it finish?)")
    return run.data.bundle_path


def print_report(run_id: str | None = None, flow_name: str = "DemoFlow",
                 out: TextIO | None = None) -> int:
    """Print the stack, the input's quarantine, champions and headline table of a run
    (default: the latest successful run). Exit code 0 when printed, 1 when nothing to show."""
    out = out or sys.stdout  # resolved per call: tests and callers may swap stdout
    flow = _open_flow(flow_name, out)
    if flow is None:
        return 1
    if run_id:
        run = open_run(flow_name, run_id)
        if run is None:
            print(f"Run {flow_name}/{run_id} not found.", file=out)
            return 1
    else:
        run = flow.latest_successful_run
        if run is None:
            print(f"{flow_name} has no successful run yet; `pythia runs` lists all.", file=out)
            return 1
    headline = _artifact(run, "headline")
    print(f"Run {run.pathspec}  status: {run_status(run)}  finished: "
          f"{run.finished_at or '-'}  window: {_window_text(_artifact(run, 'window'))}",
          file=out)
    for line in stack.report_lines(_artifact(run, "stack"), _artifact(run, "candidates"),
                                   stack.git_text(run)) + input_health.report_lines(
            _artifact(run, "quarantine"), _artifact(run, "labels_manifest")):
        print(line, file=out)
    if headline is None:
        print(f"Run {run.pathspec} has no headline (it stopped before evaluation).", file=out)
        return 1
    champions = _artifact(run, "champions")
    for line in baseline_alarm(champions):
        print(line, file=out)
    with pd.option_context("display.width", 200, "display.max_columns", 50,
                           "display.max_colwidth", 120, "display.float_format", "{:.4f}".format):
        if champions is not None:
            print("\nChampions", file=out)
            print(champions[["region", "champion", "blessed", "reason"]].to_string(index=False),
                  file=out)
            folds = fold_regions(_artifact(run, "candidates"))
            print(f"(validation scored out of fold in: {', '.join(folds) or 'no region'}; "
                  "in-sample elsewhere: models/crossfit.py)", file=out)
        print("\nHeadline (natural test day, provider labels)", file=out)
        print(pd.DataFrame(headline).to_string(index=False), file=out)
        from pythia.evaluate import gauge, pooled, tables, twins, verdicts
        verdicts.print_model_verdicts(_artifact(run, "metrics"), _artifact(run, "candidates"),
                                      out, _artifact(run, "model_verdicts"))
        gauge.print_gauge_slices(_artifact(run, "gauge"), champions, out)
        tables.print_regional_vs_global(_artifact(run, "regional_vs_global"), champions, out)
        twins.print_blind_twins(_artifact(run, "blind_twins"), out)
        pooled.print_pooled(_artifact(run, "seed_pool"), out, title="\nOver seeds")
        gauge.print_regional_structure(_artifact(run, "gauge"), champions, out)
    return 0


def summarize_run(run: Any, params: Any = None) -> list[dict]:
    """Per region of a run, its champion and natural-test scores (``params``: if read yet)."""
    params = _artifact(run, "params") if params is None else params
    base = {"run": run.id, "status": run_status(run),
            "started": run.created_at.strftime("%Y-%m-%d %H:%M") if run.created_at else "-",
            "finished": run.finished_at.strftime("%Y-%m-%d %H:%M") if run.finished_at else "-",
            "window": _window_text(_artifact(run, "window")),
            "seed": getattr(params, "seed", "-")}
    headline = _artifact(run, "headline")
    champions = _artifact(run, "champions")
    if headline is None or champions is None:
        return [dict(base, region="-", champion="-")]
    headline = pd.DataFrame(headline)
    rows = []
    for c in pd.DataFrame(champions).itertuples(index=False):
        kept = ("(baselines win)" if isinstance(getattr(c, "warning", None), str)
                else "(kept previous)")
        row = dict(base, region=c.region, champion=c.champion if c.blessed else kept)
        if c.blessed:
            hit = headline[(headline["eval_region"] == c.region) & headline["champion"]]
            if len(hit):
                h = hit.iloc[0]
                for target, short in TARGET_SHORT:
                    row[f"ll_{short}"] = h.get(f"logloss_{target}")
                    row[f"f1_{short}"] = h.get(f"macro_f1_{target}")
        rows.append(row)
    return rows


def print_runs(n: int = 10, flow_name: str = "DemoFlow", out: TextIO | None = None) -> int:
    """Compare the ``n`` most recent runs: status, window, seed and champion per region with its
    natural-test log-loss (ll_) and macro-F1 (f1_) for AgeGender (ag), gender (g), age (a);
    under a run whose settings or stack differ from the next older listed run's, what moved
    (``what_moved.change_notes``). Returns 0 when printed, 1 when there are no runs."""
    out = out or sys.stdout  # resolved per call: tests and callers may swap stdout
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    flow = _open_flow(flow_name, out)
    if flow is None:
        return 1
    rows, stacks = [], []
    for i, run in enumerate(flow):  # newest first
        if i >= n:
            break
        params = _artifact(run, "params")  # read once: the seed column and what moved
        rows += summarize_run(run, params)
        stacks.append((run.id, stack.run_stack(_artifact(run, "stack"),
                                               _artifact(run, "candidates")), params))
    if not rows:
        print(f"{flow_name} has no runs yet.", file=out)
        return 1
    cols = ["run", "status", "started", "finished", "window", "seed", "region", "champion"] + [
        f"{m}_{s}" for _, s in TARGET_SHORT for m in ("ll", "f1")]
    table = pd.DataFrame(rows).reindex(columns=cols)
    for c in cols[8:]:
        table[c] = table[c].map(lambda v: f"{v:.4f}" if pd.notna(v) else "")
    with pd.option_context("display.width", 250, "display.max_columns", 50,
                           "display.max_colwidth", 60):
        lines = table.fillna("").to_string(index=False).splitlines()
    notes = what_moved.change_notes(stacks)  # what moved: settings, code, libraries
    print(lines[0], file=out)
    for k, (line, run_id) in enumerate(zip(lines[1:], table["run"])):  # a note under a run
        print(line, file=out)
        if run_id in notes and (k + 1 == len(table) or table["run"].iloc[k + 1] != run_id):
            print(notes[run_id], file=out)
    return 0
