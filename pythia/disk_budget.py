"""Before a run writes anything: will it fit on the data root's disk?

A run that fills its disk stops with one line (``pythia.disk_full``), but hours into it. The
start step estimates the run's need from the newest earlier successful run that was not
resumed: the bytes its folder holds under the data root, scaled by this run's impression bytes
over that run's (``source_bytes``: the window's impression files, recorded by every start
step). It prints one line, and a loud warning when the estimate exceeds the free space. The
run goes on: the estimate is a guide (other models, other search settings write other sizes).

Metaflow's own local datastore fills too: when it cannot save a step's artifacts it stops with
"Internal error" and no folder named, after the step's code returned (nothing in the step can
catch it). So the start step also prints the datastore's free space and what the same earlier
run stored there (its task metadata and logs, and the artifact blobs it references:
``datastore_bytes``), loudly when that exceeds the free space; on a disk shared with the data
root, the data root's estimate is counted against the same free space.
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


def estimated_need(used: int, source_bytes: int, prev_bytes: int) -> int:
    """The earlier run's folder bytes ``used`` scaled by the impression bytes of this run's
    window over that run's."""
    return int(used * source_bytes / prev_bytes) if prev_bytes else used


def preflight_lines(data_root: str, source_bytes: int,
                    previous: tuple[str, str, int] | None, used: int | None = None
                    ) -> list[str]:
    """What the start step prints about disk space: one line, or a loud block when the
    estimated need exceeds the free space of the data root's disk ([] on S3). ``used``: the
    previous run's folder bytes when the caller has them (else they are counted here)."""
    if storage.is_s3(data_root):
        return []
    free = free_text(data_root)
    if previous is None:
        return [f"disk: the data root {data_root} has {free}; no earlier successful run here "
                "to estimate this run's need from"]
    run_id, folder, prev_bytes = previous
    used = bytes_under(folder) if used is None else used
    need = estimated_need(used, source_bytes, prev_bytes)
    line = (f"the data root {data_root} has {free}; run {run_id} wrote {size_text(used)} "
            f"there for {size_text(prev_bytes)} of impressions, so this run "
            f"({size_text(source_bytes)}) needs about {size_text(need)}")
    if need <= shutil.disk_usage(existing_parent(data_root)).free:
        return [f"disk: {line}"]
    bar = "!" * 88
    return [bar, f"WARNING: THIS RUN MAY NOT FIT ON ITS DISK: {line}. Free space first "
                 "(`pythia clean` removes old runs' files) or run with --data_root on a larger "
                 "disk; it stops with one line if the disk fills", bar]


def datastore_root() -> str | None:
    """The local Metaflow datastore's folder (``<sysroot>/.metaflow``), or None when the
    datastore is not local or not made yet."""
    from metaflow.metaflow_config import DEFAULT_DATASTORE
    if DEFAULT_DATASTORE != "local":
        return None
    from metaflow.plugins.datastores.local_storage import LocalStorage
    root = LocalStorage.get_datastore_root_from_config(lambda *a, **k: None,
                                                       create_on_absent=False)
    return root if root and os.path.isdir(root) else None


def allocated(path: str) -> int:
    """The disk space the file at ``path`` takes (its blocks: a 300-byte metadata file takes
    a whole block), 0 when it is gone."""
    try:
        return os.lstat(path).st_blocks * 512
    except OSError:
        return 0


def datastore_bytes(root: str, flow_name: str, run_id: str) -> int:
    """The disk space run ``run_id`` took in the local datastore at ``root``: its folder (task
    metadata and logs: a default run's 1,381 small files take 5.7 MB of blocks for 0.6 MB of
    bytes) and every artifact blob its tasks reference (content-addressed under
    ``<flow>/data/<sha[:2]>/<sha>``, each counted once: an upper bound, as runs share blobs)."""
    from pythia.runs import open_run
    run = open_run(flow_name, run_id)
    shas = ({a.sha for step in run for task in step for a in task.artifacts}
            if run is not None else set())
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, flow_name,
                                                                      str(run_id)))
             for f in fs]
    files += [os.path.join(root, flow_name, "data", sha[:2], sha) for sha in shas]
    return sum(allocated(f) for f in files)


def datastore_lines(root: str | None, stored: tuple[str, int] | None, reserved: int = 0
                    ) -> list[str]:
    """What the start step prints about the local datastore ``root`` ([] when not local):
    its free space, and ``stored`` = (run id, bytes ``datastore_bytes``) of the earlier run;
    a loud block when those bytes exceed the free space less ``reserved`` (the data root's
    estimate, when both are on one disk)."""
    if root is None:
        return []
    free = free_text(root)
    if stored is None:
        return [f"datastore: Metaflow's datastore {root} has {free}"]
    run_id, need = stored
    line = (f"Metaflow's datastore {root} has {free}; run {run_id} stored "
            f"{size_text(need)} there" + (f" (and the data root's {size_text(reserved)} "
                                          "estimate is on the same disk)" if reserved else ""))
    if need + reserved <= shutil.disk_usage(root).free:
        return [f"datastore: {line}"]
    bar = "!" * 88
    return [bar, f"WARNING: METAFLOW'S DATASTORE MAY FILL: {line}. When it cannot save a "
                 "step's artifacts Metaflow stops with \"Internal error ... No space left on "
                 "device\" and names no folder. Free space there or set "
                 "METAFLOW_DATASTORE_SYSROOT_LOCAL to a folder on a larger disk", bar]


def _same_disk(a: str, b: str) -> bool:
    return os.stat(existing_parent(a)).st_dev == os.stat(existing_parent(b)).st_dev


def check(source_path: str, window: Mapping[str, Any], data_root: str, flow_name: str,
          run_id: str) -> int:
    """The start step's check: print ``preflight_lines`` and ``datastore_lines`` (one ``disk:``
    line when neither is loud); returns this run's ``source_bytes`` (recorded as an artifact,
    for the estimates of later runs)."""
    source_bytes = window_bytes(source_path, window)
    previous = previous_footprint(flow_name, run_id)
    used = bytes_under(previous[1]) if previous is not None else None  # walked once
    lines = preflight_lines(data_root, source_bytes, previous, used)
    root = datastore_root()
    stored = None
    if root is not None and previous is not None:
        try:
            stored = previous[0], datastore_bytes(root, flow_name, previous[0])
        except Exception:  # noqa: BLE001 - the run is in another datastore: no estimate
            stored = None
    reserved = 0
    if previous is not None and not storage.is_s3(data_root) and root is not None \
            and _same_disk(root, data_root):
        reserved = estimated_need(used, source_bytes, previous[2])
    store = datastore_lines(root, stored, reserved)
    if len(lines) == 1 and len(store) == 1:  # nothing loud: one line, as the step log wants
        lines, store = [f"{lines[0]}; {store[0][len('datastore: '):]}"], []
    for line in lines + store:
        print(line)
    return source_bytes
