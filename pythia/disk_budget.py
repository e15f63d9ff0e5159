"""Before a run writes anything: will it fit on the data root's disk?

A run that fills its disk stops with one line (``pythia.disk_full``), but hours into it. The
start step estimates the run's need from the newest earlier successful run that was not
resumed: the bytes its folder holds under the data root, scaled by this run's impression bytes
over that run's (``source_bytes``: the window's impression files, recorded by every start
step). It prints one line, and a loud warning when the estimate exceeds the free space. The
run goes on: the estimate is a guide (other models, other search settings write other sizes).
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Mapping

from pythia import storage
from pythia.disk_full import bytes_under, existing_parent, free_text, size_text

LOOK_BACK = 5  # earlier successful runs tried for an estimate, newest first


def window_bytes(source_path: str, window: Mapping[str, Any]) -> int:
    """The bytes of the impression files of every hour of the run's window."""
    from pythia.contract_read import list_partition_files
    from pythia.source import window_of
    found = list_partition_files(source_path, window_of(window).dates, range(24))
    files = [f for fs in found.values() for f in fs]
    if not files:
        return 0
    fs, _ = storage.filesystem(files[0])
    infos = fs.get_file_info([storage.filesystem(f)[1] for f in files])
    return sum(max(i.size or 0, 0) for i in infos)


def previous_footprint(flow_name: str, current_run_id: str | None
                       ) -> tuple[str, str, int] | None:
    """(run id, run folder, its ``source_bytes``) of the newest earlier successful run, not
    resumed (a resumed run's files are split with its origin's), whose folder is still local
    on disk; None when no run of the last ``LOOK_BACK`` successful ones qualifies."""
    from pythia.clean import resumed_from
    from pythia.runs import open_flow
    flow = open_flow(flow_name)
    tried = 0
    for run in flow.runs() if flow is not None else ():
        if str(run.id) == str(current_run_id) or not run.successful:
            continue
        tried += 1
        if tried > LOOK_BACK:
            break
        try:
            start = run["start"].task
            folder, sb = start["run_root"].data, start["source_bytes"].data
        except Exception:  # noqa: BLE001 - a run from before the record has no estimate
            continue
        if (resumed_from(run) is None and sb and not storage.is_s3(folder)
                and os.path.isdir(folder)):
            return str(run.id), folder, int(sb)
    return None


def preflight_lines(data_root: str, source_bytes: int,
                    previous: tuple[str, str, int] | None) -> list[str]:
    """What the start step prints about disk space: one line, or a loud block when the
    estimated need exceeds the free space of the data root's disk ([] on S3)."""
    if storage.is_s3(data_root):
        return []
    free = free_text(data_root)
    if previous is None:
        return [f"disk: the data root {data_root} has {free}; no earlier successful run here "
                "to estimate this run's need from"]
    run_id, folder, prev_bytes = previous
    used = bytes_under(folder)
    need = int(used * source_bytes / prev_bytes) if prev_bytes else used
    line = (f"the data root {data_root} has {free}; run {run_id} wrote {size_text(used)} "
            f"there for {size_text(prev_bytes)} of impressions, so this run "
            f"({size_text(source_bytes)}) needs about {size_text(need)}")
    if need <= shutil.disk_usage(existing_parent(data_root)).free:
        return [f"disk: {line}"]
    bar = "!" * 88
    return [bar, f"WARNING: THIS RUN MAY NOT FIT ON ITS DISK: {line}. Free space first "
                 "(`pythia clean` removes old runs' files) or run with --data_root on a larger "
                 "disk; it stops with one line if the disk fills", bar]


def check(source_path: str, window: Mapping[str, Any], data_root: str, flow_name: str,
          run_id: str) -> int:
    """The start step's check: print ``preflight_lines``; returns this run's ``source_bytes``
    (recorded as an artifact, for the estimates of later runs)."""
    source_bytes = window_bytes(source_path, window)
    for line in preflight_lines(data_root, source_bytes,
                                previous_footprint(flow_name, run_id)):
        print(line)
    return source_bytes
