"""The run's source and window: generate or locate the data, pick the test day, check the
window's hour partitions. The flow's ``start`` step calls :func:`resolve`.
"""
from __future__ import annotations

import datetime as dt

from pythia import contract_read
from pythia.config import RunParams, Window, parse_date
from pythia.paths import default_cache_root

# Metaflow gives runs started by a scheduler a run id with the scheduler's prefix.
SCHEDULER_RUN_PREFIXES = ("airflow-", "argo-", "sfn-")


def is_scheduled_run(run_id: str) -> bool:
    """Whether Metaflow runs this run for a scheduler (Airflow, Argo, Step Functions)."""
    return str(run_id).startswith(SCHEDULER_RUN_PREFIXES)


def newest_complete_date(source: str, not_after: dt.date | None = None) -> dt.date:
    """The newest date under ``source`` whose 24 hour partitions all exist."""
    dates = sorted(contract_read.list_dates(source), reverse=True)
    if not dates:
        raise ValueError(f"no impressions/date=YYYY-MM-DD partitions under {source}")
    for day in dates:
        if not_after is not None and day > not_after:
            continue
        if not contract_read.check_partitions(source, [day], list(range(24)), allow_gaps=True):
            return day
    raise ValueError(f"no date with all 24 hour partitions under {source} "
                     f"(dates present: {[d.isoformat() for d in dates[:10]]}…)")


def resolve(params: RunParams, scheduled: bool = False) -> tuple[str, dict, list[str]]:
    """Generate/locate the source, pick the test day, check the window's hour partitions.

    The test day is ``params.date``; when it is empty, yesterday (UTC) on a scheduled daily
    run, else the newest date of the source with all 24 hour partitions.
    Returns the source path, the window as {'train': [...], 'validation': [...], 'test': [...]}
    and the recorded gaps (missing hour partitions; an error unless ``allow_gaps``).
    """
    from pythia.synth import resolve_source
    source_path = resolve_source(params.source, default_cache_root())
    if params.date == "yesterday" or (scheduled and not params.date):
        test_date = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    elif params.date:
        test_date = parse_date(params.date)
    else:
        test_date = newest_complete_date(source_path)
    window = Window(test_date)
    gaps = contract_read.check_partitions(source_path, window.dates, list(range(24)),
                                     allow_gaps=params.etl.allow_gaps)
    return source_path, window.as_dict(), gaps


def window_of(window: dict) -> Window:
    """The ``Window`` of a window artifact ({'test': ['YYYY-MM-DD'], …})."""
    return Window(parse_date(window["test"][0]))
