"""`pythia clean`: free the data root of old runs' files, keeping every file a later step,
run or ``resume`` still reads.

Every run writes its ETL output, splits, TFRecords, models, predictions, reports and bundle
under ``<data root>/<flow>/<run id>/``, and a daily job fills the disk with them. What must stay:

- the ``keep`` newest successful runs (at least 1: the next run compares its champions with
  the newest successful run's bundle, and a region it does not bless keeps that run's model);
- every failed run newer than the newest successful one (what ``resume`` restarts), and every
  run still running, of any age (it may be writing; a run killed without a record looks so);
- every run a kept run was resumed from, and theirs (a resumed run's cloned steps read their
  files in the origin run's folder: Metaflow's ``origin-run-id`` metadata);
- any folder that is not a run of this datastore (another datastore's run, a user's folder).

The rest are removed (with ``yes``; else the plan is only printed). Their Metaflow records stay,
so ``pythia runs`` and ``pythia report`` still show them. A data root on S3 is cleaned the same
way (``pythia.storage``: a run folder is every object under ``<run id>/``); an S3 lifecycle rule
cannot know the rules above (docs/scaling.md §1).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Iterable, TextIO

from pythia import storage
from pythia.disk_full import size_text
from pythia.paths import join


@dataclass
class Entry:
    """One folder under ``<data root>/<flow>``: its run's status, size and what happens."""
    run_id: str
    path: str
    status: str
    bytes: int
    keep: bool
    reason: str


def resumed_from(run: Any) -> str | None:
    """The run ``run`` was resumed from (its start task's ``origin-run-id``), or None."""
    try:
        value = run["start"].task.metadata_dict.get("origin-run-id")
    except Exception:  # noqa: BLE001 - a run without a start task has no origin
        return None
    return None if value in (None, "None", "") else str(value)


def plan(folders: dict[str, str], runs: Iterable[Any], keep: int) -> list[Entry]:
    """What ``clean`` does with each run folder (``folders``: run id -> path), given the flow's
    ``runs`` newest first (Metaflow client ``Run``s: ``runs.run_status`` reads their status,
    ``resumed_from`` their origin); newest folder first."""
    from pythia.runs import run_status
    if keep < 1:
        raise ValueError("--keep must be at least 1: the next run compares with the newest "
                         "successful run's bundle and models")
    runs = list(runs)
    by_id = {str(r.id): r for r in runs}
    status = {str(r.id): run_status(r) for r in runs}
    reasons: dict[str, str] = {}
    successful = [str(r.id) for r in runs if status[str(r.id)] == "successful"]
    for i, run_id in enumerate(successful[:keep]):
        reasons[run_id] = ("the newest successful run: the next run compares with its bundle"
                           if i == 0 else f"one of the {keep} newest successful runs")
    newest_ok = successful[0] if successful else None
    after = True
    for r in runs:  # newest first: the failed runs before the newest successful one
        run_id = str(r.id)
        after = after and run_id != newest_ok
        if status[run_id] == "failed" and after:
            reasons[run_id] = "failed after the newest successful run: `resume` reads it"
        elif status[run_id] == "running":  # of any age: it may still be writing
            reasons[run_id] = "running (or killed without a record): it may still be writing"
    for run_id in list(reasons):  # resume chains: the origin's files are read by the clone
        child, origin = run_id, resumed_from(by_id[run_id])
        while origin is not None and origin not in reasons:
            reasons[origin] = f"run {child}, kept, was resumed from it and reads its files"
            child, origin = origin, (resumed_from(by_id[origin]) if origin in by_id
                                     else None)
    entries = []
    for run_id, path in folders.items():
        if run_id not in by_id:
            entry = Entry(run_id, path, "unknown", storage.tree_bytes(path), True,
                          "no run of this id in this datastore: left alone")
        else:
            entry = Entry(run_id, path, status[run_id], storage.tree_bytes(path),
                          run_id in reasons,
                          reasons.get(run_id, "older than the runs kept"))
        entries.append(entry)
    return sorted(entries, key=lambda e: e.run_id, reverse=True)


def run_folders(data_root: str, flow_name: str) -> dict[str, str]:
    """run id -> folder, for every folder under ``<data_root>/<flow_name>`` (local or S3)."""
    base = join(data_root, flow_name)
    return {name: join(base, name) for name in storage.subfolders(base)
            if not name.startswith(".")}


def run_clean(data_root: str, keep: int, yes: bool, flow_name: str = "DemoFlow",
              out: TextIO | None = None) -> int:
    """``pythia clean``: print the plan (a line per run folder: keep or remove, size, why);
    with ``yes`` remove the folders it marks. Returns 0."""
    from pythia.runs import open_flow
    out = out or sys.stdout
    try:
        folders = run_folders(data_root, flow_name)
    except OSError as exc:  # S3: no credentials, no such bucket, access denied
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"cannot list {join(data_root, flow_name)}: {first}. Fix: check the "
                         "data root and, on S3, the AWS credentials and endpoint "
                         "(AWS_ENDPOINT_URL_S3)") from exc
    flow = open_flow(flow_name)
    entries = plan(folders, flow.runs() if flow is not None else [], keep)
    if not entries:
        print(f"nothing to clean: no run folders under {join(data_root, flow_name)}", file=out)
        return 0
    for e in entries:
        action = "keep" if e.keep else ("remove" if yes else "would remove")
        print(f"{action:<12} {e.run_id} {e.status:<10} {size_text(e.bytes):>9}  {e.reason}",
              file=out)
    gone = [e for e in entries if not e.keep]
    total = size_text(sum(e.bytes for e in gone))
    if not yes:
        print(f"{len(gone)} run folder(s), {total}, would be removed; add --yes to remove "
              "them (their Metaflow records stay: pythia runs / report still show them)",
              file=out)
        return 0
    for e in gone:
        storage.remove_tree(e.path)
    print(f"removed {len(gone)} run folder(s), {total}, under {join(data_root, flow_name)}",
          file=out)
    return 0
