"""Jobs of the data side: session, hourly join, splits/resampling/power users, reconciliation.

``session`` builds the SparkSession; ``hourly`` turns impression partitions into labelled,
feature-derived rows (``hourly_local``: the same on the driver, without a JVM, for small
tasks); ``dedupe`` settles duplicates across tasks and ``splits`` writes the four training
splits (``dedupe_local``, ``splits_local``: the same on the driver for small runs);
``reconcile`` proves every input row is accounted for. ``sample`` writes tiny hand-made sources in the contract layout.
The flow's steps call :func:`run_hours` (etl_hour) and :func:`join_hours` (join_hours); a Spark
failure caused by an input file surfaces there as one line naming the file and the fix.
"""
from __future__ import annotations

from typing import Any, Mapping


def run_hours(source_path: str, hours: list[int], window: Mapping[str, list[str]],
              labels_manifest: Mapping[str, Any], params: Any, paths: Any) -> dict:
    """The etl_hour step: validate, quarantine, derive and label these hours of day over the
    window; returns the task's manifest.

    On the driver (``hourly_local``, no JVM) when the task's impressions are small and the run
    is local (``providers_local.use_driver``: footer rows <= ``PYTHIA_DRIVER_MAX_ROWS``), else
    Spark (``hourly``); the choice and why are printed in one line."""
    from pythia import contract_read, input_health, providers_local
    from pythia.contract import IMPRESSIONS
    from pythia.errors import user_input_errors
    from pythia.etl import hourly, hourly_local
    from pythia.etl.session import spark_session
    from pythia.source import window_of
    w = window_of(window)
    args = (source_path, hours, w, labels_manifest["labels_path"], paths.etl_hours(hours),
            paths.quarantine, params.geo, params.etl.allow_gaps)
    with user_input_errors("etl_hour"):
        found = contract_read.list_partition_files(source_path, w.dates, hours)
        files = [f for _, fs in sorted(found.items()) for f in fs]
        manifest = providers_local.on_driver("etl_hour", files, params,
                                             lambda: hourly_local.run_hours(*args))
    if manifest is None:
        with spark_session(f"pythia-etl-{hours[0]:02d}", params, source_path) as spark, \
                user_input_errors("etl_hour"):
            manifest = hourly.run_hours(spark, *args)
    t = manifest["total"]
    bad = {r: n for r, n in t["quarantined"].items() if n}
    # what the quarantine holds (columns, values), read back as either engine wrote it
    manifest["quarantine_summary"] = input_health.summarize(
        manifest["quarantine_path"], IMPRESSIONS) if bad else None
    label = "etl_hour " + ",".join(f"{h:02d}" for h in hours)
    print(f"{providers_local.engine('etl_hour', label)}: "
          f"{t['rows_in']:,} impressions read, "
          f"{sum(bad.values()):,} quarantined"
          + (" (" + ", ".join(f"{r}: {n:,}" for r, n in bad.items()) + ")" if bad else "")
          + f", {t[hourly.UNLABELLED]:,} without a label, {t[hourly.WRITTEN]:,} written to "
          f"{manifest['rows_path']}")
    return manifest


def join_hours(hour_manifests: list[dict], params: Any, paths: Any
               ) -> tuple[dict, Any, dict, dict]:
    """The join_hours step: duplicates across tasks, power users, resampling and the four
    splits; the reconciliation of every input row must balance. Returns (split_manifest,
    reconciliation, resample_rates, quarantine summary). The summary also holds what the
    tasks' quarantine tables hold (``summary``: rows and values per reason and column,
    ``input_health.summarize``) and lists the impression folders that were not read because
    their names do not parse (``partitions``, rows counted from Parquet footers). First,
    ``check_inputs`` stops the step in one line on too many quarantined rows or no label.

    On the driver (``dedupe_local``, ``splits_local``, no JVM) under the rule of
    ``providers_local.use_driver``, counting the footer rows of the tasks' rows/ and ids/
    tables (what it reads), else Spark; one line says which and why. A source file the driver
    cannot convert exactly (``NeedsSpark``, met when the losers' raw rows are read again) sends
    the step to Spark, which rewrites every output."""
    from pythia import providers_local, source_layout
    from pythia.contract import IMPRESSIONS
    from pythia.errors import user_input_errors
    from pythia.etl import dedupe_local, splits_local
    from pythia.etl.reconcile import assert_balanced, reconcile
    from pythia.paths import join
    # the losers' ids live beside the tasks' own outputs; their raw rows join the quarantine
    work, q_uri = paths.etl_duplicates, join(paths.quarantine, IMPRESSIONS.name,
                                             "duplicates_across_tasks")

    def _driver() -> tuple:
        manifests, duplicates = dedupe_local.settle_duplicates(hour_manifests, work, q_uri)
        return manifests, duplicates, splits_local.finalize_splits(
            manifests, params.etl, paths, duplicates=duplicates["path"])

    summary, coverage = check_inputs(hour_manifests, params, paths)  # and its line
    with user_input_errors("join_hours"):
        # the rule's rows: the tasks' rows/ and ids/ tables (Parquet footers), what is read
        files = [f for m in hour_manifests for key in ("rows_path", "ids_path") if m.get(key)
                 for f in source_layout.list_data_files(m[key])]
        done = providers_local.on_driver("join_hours", files, params, _driver)
    if done is None:
        from pythia.etl.dedupe import settle_duplicates
        from pythia.etl.session import spark_session
        from pythia.etl.splits import finalize_splits
        with spark_session("pythia-splits", params) as spark, user_input_errors("join_hours"):
            manifests, duplicates = settle_duplicates(spark, hour_manifests, work, q_uri)
            split_manifest = finalize_splits(spark, manifests, params.etl, paths,
                                             duplicates=duplicates["path"])
    else:
        manifests, duplicates, split_manifest = done
    split_manifest["duplicates_across_tasks"] = duplicates
    reconciliation = reconcile(manifests, split_manifest)
    assert_balanced(reconciliation)
    by_reason: dict[str, int] = {}
    for m in manifests:
        for reason, n in m.get("quarantined_by_reason", {}).items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    quarantine = {"path": paths.quarantine, "by_reason": by_reason, "summary": summary,
                  "rows_in": sum(int(m["total"]["rows_in"]) for m in hour_manifests),
                  **quarantined_partitions(hour_manifests),
                  **coverage}
    print(f"{providers_local.engine('join_hours')}: rows per split: " + ", ".join(
        f"{s} {n:,}" for s, n in split_manifest["rows"].items())
        + f"; every input row reconciled ({duplicates['rows']:,} duplicate(s) across etl "
        f"tasks); quarantine under {paths.quarantine}")
    return split_manifest, reconciliation, split_manifest.get("resample_rates", {}), quarantine


def check_inputs(hour_manifests: list[dict], params: Any, paths: Any) -> tuple[dict, dict]:
    """Before join_hours' work: the window's quarantine in one line (a stop above
    ``max_quarantined``), a warning naming the countries with many impressions and no label,
    and a stop when no valid impression has a label (``pythia.input_health``,
    ``pythia.label_health``). Duplicates across tasks are settled later; they lose nothing.
    Returns the tasks' quarantine summaries merged (``input_health.summarize``) and
    ``{"label_coverage": per country [labelled, unlabelled] impressions
    (``label_health.label_coverage``), "coverage": the warning's text or None}``."""
    from pythia import input_health, label_health
    from pythia.contract import IMPRESSIONS
    from pythia.etl.hourly import OUTCOME, UNLABELLED, WRITTEN
    by_reason: dict[str, int] = {}
    for m in hour_manifests:
        for reason, n in m["total"]["quarantined"].items():
            by_reason[reason] = by_reason.get(reason, 0) + int(n)
    summary = input_health.merge(m.get("quarantine_summary") for m in hour_manifests)
    summary["extra_columns"] = sorted({c for m in hour_manifests
                                       for c in m.get("extra_columns") or []})
    input_health.check_quarantined(
        "join_hours", "impressions", by_reason,
        sum(int(m["total"]["rows_in"]) for m in hour_manifests), summary, IMPRESSIONS,
        getattr(params.etl, "max_quarantined", 1.0), paths.quarantine)
    written = sum(int(m["total"][WRITTEN]) for m in hour_manifests)
    unlabelled = [(int(m["total"][UNLABELLED]), m["ids_path"]) for m in hour_manifests]
    most, ids_path = max(unlabelled, key=lambda u: u[0], default=(0, None))
    coverage = label_health.label_coverage(hour_manifests)
    thin = label_health.coverage_text(coverage)
    if thin:  # countries no model learns from
        print(f"warning: join_hours: {thin}")
    if most:
        label_health.check_labelled("join_hours", written, sum(u for u, _ in unlabelled),
                                    ids_path, hour_manifests[0]["labels_path"], "user_id",
                                    OUTCOME, UNLABELLED)
    return summary, {"label_coverage": coverage, "coverage": thin}


def quarantined_partitions(hour_manifests: list[dict]) -> dict:
    """``{"partitions": [...], "partition_rows": n}``: the impression folders of the run's
    source that do not parse (``source_layout.find_partition_problems``), each printed."""
    import datetime as dt

    from pythia import source_layout
    if not hour_manifests:
        return {"partitions": [], "partition_rows": 0}
    first = hour_manifests[0]
    dates = [dt.date.fromisoformat(d) for d in first["dates"]]
    problems = source_layout.find_partition_problems(first["source"], dates)
    for entry in problems:
        print(source_layout.describe_partition_problem(entry))
    return {"partitions": problems, "partition_rows": sum(e["rows"] for e in problems)}
