"""A full disk inside a step, turned into one line a user can act on.

Without this, a full disk stops a step with whatever the writer says: pyarrow's ``OSError:
[Errno 28] Error writing bytes to file`` (no file named), TensorFlow's or Python's bare
``[Errno 28] No space left on device``, or Spark's ``[TASK_WRITE_FAILED] Task failed while
writing rows to file:…`` with the cause hundreds of lines up in a JVM trace. ``full_disk_errors``
wraps a step's work: on a failure whose chain says the disk (or a quota) is full, it removes the
task's own partial output (a retried or resumed task writes it again from scratch, and a
half-written folder only holds the space the user must free) and re-raises one line naming the
folder, the free space left there, what was removed and the fix, with the original attached as
``__cause__``. Any other failure passes through unchanged.
"""
from __future__ import annotations

import errno
import glob
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping, Sequence

from pythia import storage
from pythia.errors import file_in_text, is_spark_error
from pythia.paths import RunPaths, join
from pythia.scratch import tree_bytes

_NAMED_FULL = re.compile(r"(/[^\s:()\[\]]+) \((?:No space left on device|Disk quota exceeded)\)")

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# what the writers say when they do not raise an OSError with its errno set: Spark/Hadoop
# (java.io.IOException), pyarrow's wrapped status ("[errno 28]"), a quota
_MARKERS = ("No space left on device", "Disk quota exceeded", "[errno 28]", "[Errno 28]",
            "[errno 122]", "[Errno 122]")
FREE_HERE = ("free space on that disk (`pythia clean` removes old runs' files and keeps this "
             "run's: `resume` reads its finished steps)")
SPARK_SCRATCH_HINT = ("Spark's scratch folder (spark.local.dir, /tmp by default): set "
                      "SPARK_LOCAL_DIRS to a folder on a disk with room")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` or anything in its cause/context chain says a disk or quota is full (an
    OSError's errno, or the text Spark, Hadoop and pyarrow put in their messages)."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
            return True
        text = str(e)
        if any(m in text for m in _MARKERS):
            return True
    return False


def _from_spark(exc: BaseException) -> bool:
    """Whether the chain holds a Spark/Py4J error (or its text: the JVM's classes)."""
    return any(is_spark_error(e) or "org.apache." in str(e) or "java.io." in str(e)
               for e in _chain(exc))


def failing_path(exc: BaseException) -> str | None:
    """The file the failed write named: an OSError's ``filename``, else a ``file:`` path in a
    Spark error's text (as the user writes it); None when nothing names one."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.filename:
            return os.fsdecode(e.filename)
    for e in _chain(exc):  # java.io.FileNotFoundException: /tmp/blockmgr-…/x (No space left…)
        named = _NAMED_FULL.search(str(e))
        if named:
            return named.group(1)
    for e in _chain(exc):
        found = file_in_text(str(e))
        if found and not storage.is_s3(found):
            return found
    return None


def existing_parent(path: str) -> str:
    """``path``, or its nearest existing parent (a folder not made yet)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def free_text(path: str) -> str:
    """'12.3 MB free of 1.0 GB' for the disk holding ``path`` (its nearest existing folder)."""
    usage = shutil.disk_usage(existing_parent(path))
    return f"{size_text(usage.free)} free of {size_text(usage.total)}"


def size_text(n: float) -> str:
    """``n`` bytes as '812 B', '3.9 KB', '1.5 MB' or '2.0 GB' (GB and up stay in GB)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def bytes_under(path: str) -> int:
    """The bytes of the file at ``path``, or of the files under the folder (0 when gone)."""
    if os.path.isfile(path) or os.path.islink(path):
        return os.lstat(path).st_size
    return tree_bytes(path)


def staged(path: str) -> list[str]:
    """The hidden staging siblings of ``path`` a writer killed mid-way may leave (``.tmp-<hex>-
    <name>``: ``storage.staged_dir`` and ``write_bytes_atomic``'s names)."""
    parent, name = os.path.split(os.path.abspath(path))
    return sorted(glob.glob(os.path.join(glob.escape(parent), f".tmp-*-{glob.escape(name)}")))


def remove_partial(paths: Iterable[str]) -> tuple[list[str], int]:
    """Remove the local files and folders among ``paths`` that exist, and their staging
    siblings; returns (the removed ones, their bytes). S3 prefixes are left: no local disk
    holds them."""
    removed, freed = [], 0
    for p in [q for p in paths if not storage.is_s3(p) for q in [p, *staged(p)]]:
        if not os.path.lexists(p):
            continue
        freed += bytes_under(p)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            os.remove(p)
        removed.append(p)
    return removed, freed


def _under(path: str, folder: str) -> bool:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def scratch_folders() -> list[str]:
    """Where Spark and Python write scratch files: ``SPARK_LOCAL_DIRS`` (comma-separated, as
    Spark reads it), else the temp folder (Spark's ``spark.local.dir`` default is /tmp)."""
    dirs = [d for d in os.environ.get("SPARK_LOCAL_DIRS", "").split(",") if d.strip()]
    return dirs or [tempfile.gettempdir()]


def _removed_text(removed: list[str], freed: int) -> str:
    """'1.5 MB under /data/DemoFlow/1: models/a, predictions/a.parquet' (one path: itself)."""
    if len(removed) == 1:
        return f"{size_text(freed)}: {removed[0]}"
    base = os.path.commonpath([os.path.abspath(p) for p in removed])
    rel = [os.path.relpath(os.path.abspath(p), base) for p in removed]
    return f"{size_text(freed)} under {base}: {', '.join(rel)}"


def message(step: str, exc: BaseException, data_root: str, removed: list[str], freed: int,
            resume: str, root_name: str = "the data root",
            move: str = "start a new run with --data_root on a larger disk") -> str:
    """The one line: where the disk is full, its free space now, what was removed, the fix.
    ``root_name`` names ``data_root`` (the folder the step writes under) and ``move`` is the
    fix that puts it on another disk."""
    path = failing_path(exc)
    local_root = not storage.is_s3(data_root)
    if path is not None and local_root and _under(path, data_root):
        where = f"{path} ({free_text(path)} now)"
        fix = f"{FREE_HERE} or {move}"
    elif path is not None:  # a local path outside the data root: a scratch folder
        where = f"{path} ({free_text(path)} now)"
        fix = (SPARK_SCRATCH_HINT if "blockmgr-" in path or "spark-" in path else
               "free space on that disk or set TMPDIR to a folder on a disk with room")
    elif not _from_spark(exc):  # pyarrow names no file: the step writes under the data root
        where = f"{root_name} {data_root}" + (f" ({free_text(data_root)} now)"
                                               if local_root else "")
        fix = f"{FREE_HERE} or {move}"
    else:  # Spark often names no file: the disks it may have filled, with their free space
        disks = [f"{root_name} {data_root} ({free_text(data_root)})"] if local_root else []
        disks += [f"the scratch folder {d} ({free_text(d)})" for d in scratch_folders()]
        where = "one of " + ", ".join(disks) if len(disks) > 1 else disks[0]
        fix = ("free space on the full one (`pythia clean` removes old runs' files and keeps "
               f"this run's: `resume` reads its finished steps), or {SPARK_SCRATCH_HINT}")
    gone = (f"removed this task's partial output ({_removed_text(removed, freed)})" if removed
            else "no partial output to remove")
    return (f"{step}: no space left on the disk writing to {where}; {gone}. "
            f"Fix: {fix}, then {resume}")


def cli_message(exc: BaseException, outputs: Sequence[str]) -> str:
    """A command's one line on a full disk: where (the file the error names, else the command's
    output folders, else standard output), the free space there, and the fix. The commands
    publish a file only once it is complete (synth and ingest stage the whole output), so
    there is nothing half-written to remove."""
    path = failing_path(exc)
    local = [o for o in outputs if not storage.is_s3(o)]
    places = [path] if path else local
    where = (", ".join(f"{p} ({free_text(p)} now)" for p in places) if places
             else "standard output (redirected to a full disk?)")
    return (f"no space left on the disk writing to {where}; files are published only when "
            "complete. Fix: free space there, or write to a folder on a larger disk")


def task_outputs(step: str, paths: RunPaths, hours: Sequence[int] = (),
                 family: Mapping[str, Any] | None = None) -> list[str]:
    """The files and folders under the run's data root that only this step's task writes (for
    ``etl_hour`` the task's ``hours``, for ``train`` its ``family``: model, config_id,
    regions): what a full disk makes the task remove. ``start`` writes the world cache."""
    q = paths.quarantine
    if step == "etl_hour":
        own = paths.etl_hours(list(hours))
        return [own, join(q, "impressions", own.rsplit("/", 1)[-1])]
    if step == "train":
        f = family or {}
        return [p for r in f.get("regions", ()) for p in (
            paths.model(f["model"], r, f["config_id"]),
            paths.predictions(f["model"], r, f["config_id"]))]
    return {"select_providers": [join(q, "provider_metrics")],
            "prepare_labels": [paths.labels, join(q, "labels")],
            "join_hours": [paths.splits, paths.etl_duplicates,
                           join(q, "impressions", "duplicates_across_tasks")],
            "to_tfrecords": [paths.tfrecords], "evaluate": [paths.reports],
            "end": [paths.bundle]}.get(step, [])


@contextmanager
def full_disk_errors(step: str, data_root: str, partial: Iterable[str] = (),
                     resume: str | None = None, **names: str) -> Iterator[None]:
    """Re-raise a full disk inside the block as one ``OSError(ENOSPC)`` line (cause kept),
    after removing ``partial``: the files and folders only this task writes. ``resume`` is the
    command the fix proposes (default ``python flows/demo_flow.py resume <step>``); ``names``:
    ``message``'s ``root_name`` and ``move``."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        removed, freed = remove_partial(list(partial))
        text = message(step, exc, data_root, removed, freed,
                       resume or f"`python flows/demo_flow.py resume {step}`", **names)
        raise OSError(errno.ENOSPC, text) from exc
