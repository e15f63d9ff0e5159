"""A producer's whole partition layout, unlike the contract's: said at ``start``, and fixed by
the Spark rewrite docs/data-contract.md gives (``source_layout.SPARK_REPARTITION``, run here
as written).

Three layouts real tables have: Hive's ``dt=YYYY-MM-DD/hr=HH`` keys, one flat folder of files
(date and hour only in ``ts``), and daily partitions without hour folders.
"""
from __future__ import annotations

import os
import shutil

import pyarrow.parquet as pq
import pytest

from pythia import source as run_source
from pythia import source_layout
from pythia.config import Window

from test_input_health import DAY, _params, _source


def _relayout(root: str, kind: str) -> None:
    imp = os.path.join(root, "impressions")
    days = sorted(os.listdir(imp))
    for k, day in enumerate(days):
        folder = os.path.join(imp, day)
        hours = sorted(os.listdir(folder))
        for h in hours:
            files = sorted(os.listdir(os.path.join(folder, h)))
            for i, name in enumerate(files):
                src = os.path.join(folder, h, name)
                if kind == "dthr":
                    os.makedirs(os.path.join(folder, h.replace("hour=", "hr=")), exist_ok=True)
                    os.rename(src, os.path.join(folder, h.replace("hour=", "hr="), name))
                elif kind == "flat":
                    os.rename(src, os.path.join(imp, f"part-{k:02d}-{h[5:]}-{i}.parquet"))
                else:  # daily
                    os.rename(src, os.path.join(folder, f"part-{h[5:]}-{i}.parquet"))
            shutil.rmtree(os.path.join(folder, h))
        if kind == "dthr":
            os.rename(folder, os.path.join(imp, day.replace("date=", "dt=")))
        elif kind == "flat":
            shutil.rmtree(folder)


WANTED = {
    "dthr": r"5 date folder\(s\) are named dt=, not date= \(e\.g\. .*/impressions/dt=\d{4}-"
            r"\d\d-\d\d, holding hr= folders\)",
    "flat": r"120 file\(s\) lie directly in .*/impressions, outside any date folder \(e\.g\. "
            r".*/impressions/part-00-00-0\.parquet\)",
    "daily": r"5 date folder\(s\) hold their files without hour=HH folders \(daily "
             r"partitions, e\.g\. .*/impressions/date=\d{4}-\d\d-\d\d\)",
}
FIX = (r"\. The layout is impressions/date=YYYY-MM-DD/hour=HH/, Parquet files in each hour "
       r"folder: rewrite the table in it, the UTC date and hour of ts as the folders \(with "
       r"Spark: docs/data-contract\.md, Partition folders\)$")


@pytest.mark.parametrize("kind", sorted(WANTED))
def test_a_producers_layout_stops_start_in_one_line_saying_which(tmp_path, kind, capsys,
                                                                  monkeypatch):
    root = _source(tmp_path)
    _relayout(root, kind)

    def no_footer(uri):  # a footer read per file: minutes for a flat table on S3
        raise AssertionError(f"read the footer of {uri}")
    monkeypatch.setattr(source_layout, "footer_rows", no_footer)
    with pytest.raises(ValueError, match=rf"^no hour partition of the window "
                       rf"{Window(DAY).dates[0]}\.\.{DAY} under {root}: {WANTED[kind]}{FIX}"):
        run_source.resolve(_params(root, tmp_path, date=DAY.isoformat()))
    assert capsys.readouterr().out == ""  # not 120 entries first
    # without --date: the newest complete date is looked for, and the same clause said
    first = ("no date with all 24 hour partitions under .*\\(dates present: .*\\)"
             if kind == "daily" else "no impressions/date=YYYY-MM-DD partitions under .*")
    with pytest.raises(ValueError, match=rf"^{first}: {WANTED[kind]}{FIX}"):
        run_source.resolve(_params(root, tmp_path))


def test_a_few_stray_folders_are_not_a_layout(tmp_path, capsys):
    root = _source(tmp_path)
    os.makedirs(os.path.join(root, "impressions", "date=yesterday"))
    problems = source_layout.find_partition_problems(root, Window(DAY).dates)
    assert problems and source_layout.layout_problem(root, problems) is None
    # a flat folder of many files beside a good layout: 20 entries printed, the rest counted
    imp = os.path.join(root, "impressions")
    one = next(os.path.join(d, f) for d, _, fs in os.walk(imp) for f in fs)
    for i in range(30):
        shutil.copy(one, os.path.join(imp, f"stray-{i:02d}.parquet"))
    run_source.resolve(_params(root, tmp_path, date=DAY.isoformat()))
    printed = capsys.readouterr().out.splitlines()
    entries = [ln for ln in printed if ln.startswith("quarantined partition folder ")]
    assert len(entries) == run_source.SHOWN_PROBLEMS
    assert "... and 11 more quarantined partition folder(s) (join_hours records every one)" \
        in printed


@pytest.mark.spark
@pytest.mark.parametrize("kind", sorted(WANTED))
def test_the_documented_spark_rewrite_gives_a_source_the_flow_reads(spark, tmp_path, kind):
    root = _source(tmp_path)
    rows = sum(pq.read_metadata(os.path.join(d, f)).num_rows
               for d, _, fs in os.walk(os.path.join(root, "impressions")) for f in fs)
    _relayout(root, kind)
    out = str(tmp_path / "rewritten")
    zone = spark.conf.get("spark.sql.session.timeZone")
    try:
        exec(source_layout.SPARK_REPARTITION,  # noqa: S102  (the docs' snippet, as written)
             {"spark": spark, "SRC": os.path.join(root, "impressions"), "OUT": out})
    finally:
        spark.conf.set("spark.sql.session.timeZone", zone)
    for table in ("labels", "provider_metrics"):
        shutil.copytree(os.path.join(root, table), os.path.join(out, table))
    source_path, window, gaps = run_source.resolve(_params(out, tmp_path, date=DAY.isoformat()))
    assert source_path == out and window["test"] == [DAY.isoformat()] and gaps == []
    found = run_source.contract_read.list_partition_files(out, Window(DAY).dates, range(24))
    assert sum(pq.read_metadata(f).num_rows for fs in found.values() for f in fs) == rows
