"""The run's source and window: generate or locate the data, pick the test day, check the
window's hour partitions. The flow's ``start`` step calls :func:`resolve`.
"""
from __future__ import annotations

import datetime as dt

from pythia import contract_read, source_layout
from pythia.config import RunParams, Window, parse_date
from pythia.paths import default_cache_root

# Metaflow gives runs started by a scheduler a run id with the scheduler's prefix.
SCHEDULER_RUN_PREFIXES = ("airflow-", "argo-", "sfn-")
SHOWN_PROBLEMS = 20  # partition folders start prints one line each (a flat table has 1000s)


def is_scheduled_run(run_id: str) -> bool:
    """Whether Metaflow runs this run for a scheduler (Airflow, Argo, Step Functions)."""
    return str(run_id).startswith(SCHEDULER_RUN_PREFIXES)


def _unparsed_dates_note(source: str, dates: list[dt.date] | None = None) -> str:
    """': <the layout's problem>' when the folders show a producer's own layout (looked for
    in ``dates`` too), else ' (folders that are not dates: date=yesterday: …; …)' for date
    folders that do not parse, else ''."""
    problems = source_layout.find_partition_problems(source, dates or [], count_rows=False)
    layout = source_layout.layout_problem(source, problems)
    if layout:
        return f": {layout}"
    bad = [f"{e['folder'].rstrip('/').rsplit('/', 1)[-1]}: {e['problem']}" for e in problems]
    return f" (folders that are not dates: {_first(bad, '; ', '; and')})" if bad else ""


def _first(items: list[str], sep: str = ", ", tail: str = " and", shown: int = 5) -> str:
    """The first ``shown`` items joined by ``sep``, then '<tail> N more'."""
    more = f"{tail} {len(items) - shown} more" if len(items) > shown else ""
    return sep.join(items[:shown]) + more


def newest_complete_date(source: str, not_after: dt.date | None = None) -> dt.date:
    """The newest date under ``source`` whose 24 hour partitions all exist."""
    dates = sorted(contract_read.list_dates(source), reverse=True)
    if not dates:
        raise ValueError(f"no impressions/date=YYYY-MM-DD partitions under {source}"
                         f"{_unparsed_dates_note(source)}")
    for day in dates:
        if not_after is not None and day > not_after:
            continue
        if not contract_read.check_partitions(source, [day], list(range(24)), allow_gaps=True):
            return day
    raise ValueError(f"no date with all 24 hour partitions under {source} "
                     f"(dates present: {[d.isoformat() for d in dates[:10]]}…)"
                     f"{_unparsed_dates_note(source, dates[:10])}")


def world_fingerprint(source_path: str) -> str | None:
    """``synth.world_fingerprint`` of a resolved source: which synthetic world a run read
    (None for real data)."""
    from pythia.synth import world_fingerprint as fingerprint
    return fingerprint(source_path)


def resolve(params: RunParams, scheduled: bool = False) -> tuple[str, dict, list[str]]:
    """Generate/locate the source, pick the test day, check the window's hour partitions.

    The test day is ``params.date``; when it is empty, yesterday (UTC) on a scheduled daily
    run, else the newest date of the source with all 24 hour partitions.
    Returns the source path, the window as {'train': [...], 'validation': [...], 'test': [...]}
    and the recorded gaps (missing hour partitions; an error unless ``allow_gaps``). Partition
    folders that do not parse are printed as quarantine entries (``join_hours`` records them);
    a gap error names those of the window too, since a misnamed folder is a likely cause.
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
    found = contract_read.list_partition_files(source_path, window.dates, range(24))
    if not any(found.values()):  # the producer's own layout? said before a footer is read
        layout = source_layout.layout_problem(source_path, source_layout.find_partition_problems(
            source_path, window.dates, count_rows=False))
        if layout:
            raise ValueError(f"no hour partition of the window {window.dates[0]}.."
                             f"{window.dates[-1]} under {source_path}: {layout}")
    problems = source_layout.find_partition_problems(source_path, window.dates)
    for entry in problems[:SHOWN_PROBLEMS]:
        print(source_layout.describe_partition_problem(entry))
    if len(problems) > SHOWN_PROBLEMS:
        print(f"... and {len(problems) - SHOWN_PROBLEMS} more quarantined partition folder(s) "
              "(join_hours records every one)")
    try:
        gaps = contract_read.check_partitions(source_path, window.dates, list(range(24)),
                                              allow_gaps=params.etl.allow_gaps, found=found)
    except ValueError as exc:
        if not problems:
            raise
        raise ValueError(f"{exc}; partition folders that do not parse: "
                         f"{_first([e['folder'] for e in problems])}") from None
    if gaps:
        print(f"note: {len(gaps)} missing impression partition(s), run anyway (allow_gaps): "
              f"{contract_read.describe_gaps(gaps, 24)[0]}")
    from pythia import column_check  # a renamed required column: said now, not after the ETL
    for warning in column_check.check_required_columns(
            column_check.sampled_files(source_path, window.dates, found)):
        print(f"warning: {warning}")
    return source_path, window.as_dict(), gaps


def window_of(window: dict) -> Window:
    """The ``Window`` of a window artifact ({'test': ['YYYY-MM-DD'], …})."""
    return Window(parse_date(window["test"][0]))
