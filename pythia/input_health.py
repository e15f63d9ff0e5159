"""What a first run on a user's own data needs to hear: what the quarantine holds (columns,
values, share of the input), and whether the impressions and the labels share a user id.

Three first runs on a copy of the tiny world, each changed the way a real producer differs
(session 62): ``device_type`` written ``phone`` ran to the end on the 37% of the rows left,
nothing blessed, and no line said why; labels with ``gender`` ``female``/``male``, and labels
keyed by an upper-cased ``user_id``, both stopped in ``to_tfrecords`` on "the train split has
no rows". Now:

- ``summarize`` reads a quarantine table as both engines write it (every contract column as
  its raw string, plus ``reason`` and ``reason_column``): rows per (reason, column) and the
  most frequent values that broke it; ``merge`` adds the etl tasks' summaries.
- ``check_quarantined`` prints one line naming them whenever rows were quarantined, and stops
  the step in one line when they are more than ``max_quarantined`` of the input (duplicates
  aside: a copy of those is kept).
- ``report_lines``: what ``pythia report`` and the end step say of a finished run's input.

Labels that meet no impression: ``pythia.label_health``.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pythia import storage
from pythia.contract import (BAD_TIMESTAMP, COUNTRY_PATTERN, DUPLICATE_IMPRESSION_ID,
                             IMPRESSIONS, LABELS, NULL_REQUIRED, OUT_OF_DOMAIN, REASON,
                             REASON_COLUMN, TS_TOLERANCE_SECONDS, WRONG_TYPE, TableSpec)
from pythia.features import DATE, HOUR, TS, USER_ID
from pythia.label_rules import label_lines
from pythia.parquet_footers import iter_file_batches
from pythia.source_layout import list_data_files

BATCH_ROWS = 65_536
SHOWN_ENTRIES = 4  # (reason, column) entries in the one line
SHOWN_VALUES = 3  # values per entry
VALUE_CHARS = 40
KEEP_VALUES = 20  # values per entry kept in the summary (the artifact)
MAX_TRACKED = 10_000  # distinct values tracked per entry before the rarest are let go
LOW_LABELLED = 0.01  # below this share of labelled impressions, a warning says so
WARN_SHARE = 0.01  # above this share quarantined, the step's line starts with "warning:"
NO_VALUES = (NULL_REQUIRED, DUPLICATE_IMPRESSION_ID)  # nothing to show, or ids only
NOT_LOST = (DUPLICATE_IMPRESSION_ID,)  # a copy of the row is kept
# quarantined entries not held against max_quarantined, per table: an impression without a
# user id (no device id: limited ad tracking, no consent) can never meet a label, and real bid
# logs hold many; they are said, and counted, like every other entry
SET_ASIDE = {"impressions": ((NULL_REQUIRED, USER_ID),)}




class InputHealthError(ValueError):
    """The input cannot give a sound run: the one-line message names the cause and the fix."""


# ------------------------------------------------------------------ the quarantine's content

def summarize(uri: str | None, table: TableSpec) -> dict:
    """``{"rows", "entries": [{"reason", "column", "rows", "values": [[value, n], ...],
    "values_exact"}]}`` of the quarantine Parquet under ``uri`` (local or S3), entries by rows,
    most first. ``values`` are the most frequent raw values of the entry's column (none for
    ``null_required`` and duplicates); ``values_exact`` is False when the entry had more than
    ``MAX_TRACKED`` distinct values, whose rarest were let go (then the counts are lower
    bounds)."""
    acc: dict[tuple[str, str], dict] = {}
    files = list_data_files(uri) if uri and storage.exists(uri) else []
    columns = [c.name for c in table.columns + table.partition_columns]
    for file in files:
        fs, path = storage.filesystem(file)
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            names = set(parquet.schema_arrow.names)
            if REASON not in names or REASON_COLUMN not in names:
                continue
            wanted = [REASON, REASON_COLUMN] + [c for c in columns if c in names]
            for batch in iter_file_batches(parquet, BATCH_ROWS, wanted):
                _add(acc, pa.Table.from_batches([batch]))
    return _finish(acc.values())


def _add(acc: dict, t: pa.Table) -> None:
    groups = t.group_by([REASON, REASON_COLUMN]).aggregate([(REASON, "count")])
    for g in groups.to_pylist():
        reason, column = g[REASON], g[REASON_COLUMN] or ""
        entry = acc.setdefault((reason, column), {"reason": reason, "column": column, "rows": 0,
                                                  "values": Counter(), "values_exact": True})
        entry["rows"] += int(g[f"{REASON}_count"])
        if reason in NO_VALUES or column not in t.column_names:
            continue
        mask = pc.and_(pc.equal(t[REASON], reason), pc.equal(t[REASON_COLUMN], column))
        if reason == BAD_TIMESTAMP and column == TS and {DATE, HOUR} <= set(t.column_names):
            entry.setdefault("offsets", Counter()).update(_hours_off(t.filter(mask)))
        values = t.filter(mask)[column]
        if not pa.types.is_string(values.type):
            values = values.cast(pa.string())
        for item in pc.value_counts(values).to_pylist():
            entry["values"][item["values"]] += int(item["counts"])
        if len(entry["values"]) > MAX_TRACKED:
            keep = max(KEEP_VALUES, MAX_TRACKED // 10)
            entry["values"] = Counter(dict(entry["values"].most_common(keep)))
            entry["values_exact"] = False


def _hours_off(t: pa.Table) -> dict[int, int]:
    """Rows per whole hours between each parseable ``ts`` and the start of its date/hour
    folder (0: inside its hour): a constant shift is a time zone, not bad rows."""
    import pandas as pd
    ts = pd.to_datetime(t[TS].to_pandas(), errors="coerce", utc=True, format="ISO8601")
    start = pd.to_datetime(t[DATE].to_pandas(), errors="coerce", utc=True, format="%Y-%m-%d")
    start = start + pd.to_timedelta(pd.to_numeric(t[HOUR].to_pandas(), errors="coerce"),
                                    unit="h")
    off = ((ts - start).dt.total_seconds() // 3600).dropna()
    return {int(k): int(n) for k, n in off.value_counts().items()}


def _finish(entries: Iterable[dict]) -> dict:
    out = []
    for e in entries:
        values = e["values"] if isinstance(e["values"], Counter) else Counter(
            {v: n for v, n in e["values"]})
        top = sorted(values.items(), key=lambda vn: (-vn[1], str(vn[0])))[:KEEP_VALUES]
        shifts = {}
        if e.get("offsets"):  # JSON-able: hour offset (as text) -> rows
            offsets = Counter({int(k): int(n) for k, n in dict(e["offsets"]).items()})
            shifts = {"offsets": {str(k): n for k, n in offsets.most_common(KEEP_VALUES)}}
        out.append({**{k: v for k, v in e.items() if k != "offsets"}, **shifts,
                    "values": [[v, n] for v, n in top]})
    out.sort(key=lambda e: (-e["rows"], e["reason"], e["column"]))
    return {"rows": sum(e["rows"] for e in out), "entries": out}


def merge(summaries: Iterable[Mapping | None]) -> dict:
    """One summary of several (the etl tasks'): rows and values added per entry."""
    acc: dict[tuple[str, str], dict] = {}
    for s in summaries:
        for e in (s or {}).get("entries", []):
            m = acc.setdefault((e["reason"], e["column"]), {
                "reason": e["reason"], "column": e["column"], "rows": 0, "values": Counter(),
                "values_exact": True})
            m["rows"] += int(e["rows"])
            m["values_exact"] = m["values_exact"] and bool(e.get("values_exact", True))
            for v, n in e["values"]:
                m["values"][v] += int(n)
            if e.get("offsets"):
                m.setdefault("offsets", Counter()).update(
                    {int(k): int(n) for k, n in e["offsets"].items()})
    return _finish(acc.values())


def quoted(value: Any) -> str:
    """A raw value as the one-line messages show it: quoted, cut at VALUE_CHARS, or null."""
    if value is None:
        return "null"
    text = str(value)
    return repr(text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS - 1] + "…")


def _hint(entry: Mapping, table: TableSpec, extras: Iterable[str] = ()) -> str:
    """What the column expects, and a case fix when the shown values need only that
    (``extras``: the source's columns the contract does not know: a renamed one?)."""
    try:
        spec = table.column(entry["column"])
    except KeyError:
        return ""
    shown = [str(v) for v, _ in entry["values"][:SHOWN_VALUES] if v is not None]
    if entry["reason"] == WRONG_TYPE:
        return f"not of type {spec.type}"
    if entry["reason"] == NULL_REQUIRED:
        extras = sorted(extras)
        return "required: null or empty" + (
            f", or absent: the source has {', '.join(extras[:5])}, which the contract does "
            f"not know: a renamed {entry['column']}?" if extras else "")
    if entry["reason"] != OUT_OF_DOMAIN:
        if spec.type == "timestamp":
            epoch = shown and all(re.fullmatch(r"-?\d+(\.\d+)?", v.strip()) for v in shown)
            return (f"must be a UTC instant within {TS_TOLERANCE_SECONDS} s of its date/hour "
                    "folder and inside the window" + _shift(entry) + (
                        "; epoch numbers are not read (seconds? milliseconds?): write a "
                        "Parquet timestamp" if epoch else ""))
        return ""
    if spec.allowed:  # a value that is an allowed one but for case, spaces or a full word
        codes = _codes(entry["column"])  # or a code of OpenRTB's for one
        fixes = [f"{quoted(v)} -> {quoted(c)}?" for v in shown
                 for c in [next((c for c in (v.strip(), v.strip().lower(), v.strip().upper(),
                                             v.strip()[:1].upper(), codes.get(v.strip()))
                                 if c in spec.allowed), v)]
                 if c != v]
        coded = (f"; {CODES_OF[entry['column']]} codes?" if any(v.strip() in codes
                                                               for v in shown) else "")
        return ("allowed: " + ", ".join(spec.allowed)
                + (f" ({', '.join(fixes)})" if fixes else "") + coded)
    if spec.pattern:  # a country's alpha-2 code, for its code in another case, alpha-3 or name
        fixes = [f"{quoted(v)} -> {quoted(c)}?" for v in shown if spec.pattern == COUNTRY_PATTERN
                 for c in [_alpha_2(v)] if c and c != v]
        return f"must match {spec.pattern}" + (f" ({', '.join(fixes)})" if fixes else "")
    if spec.min_value is not None or spec.max_value is not None:
        return f"allowed [{spec.min_value:g}, {spec.max_value:g}]"
    return ""


# contract columns a producer may write as OpenRTB/AdCOM codes: the codes' name
CODES_OF = {"device_type": "OpenRTB device.devicetype"}


def _codes(column: str) -> dict[str, str]:
    """{code as text: contract value} of the column's OpenRTB codes ({} for other columns)."""
    if column not in CODES_OF:
        return {}
    from pythia.scoring.openrtb.columns import DEVICE_TYPE_OF_CODE
    return {str(code): value for code, value in DEVICE_TYPE_OF_CODE}


def _shift(entry: Mapping) -> str:
    """'; 97% lie 2 h after their hour folder: …' when one whole-hour shift holds half of the
    entry's rows or more (a time zone), else ''."""
    offsets = {int(k): int(n) for k, n in (entry.get("offsets") or {}).items() if int(k)}
    if not offsets or not entry.get("rows"):
        return ""
    hours, n = max(offsets.items(), key=lambda kn: (kn[1], -abs(kn[0])))
    if n < entry["rows"] / 2 or abs(hours) > 26:
        return ""
    side = "after" if hours > 0 else "before"
    return (f"; {n / entry['rows']:.0%} lie {abs(hours)} h {side} their hour folder: local "
            "time written as UTC, or folders in local time?")


def _alpha_2(value: str) -> str | None:
    """The ISO-3166 alpha-2 code ``value`` names (any case: alpha-2, alpha-3, number or
    name, pycountry's ``lookup``), else None."""
    import pycountry
    try:
        return pycountry.countries.lookup(value.strip()).alpha_2
    except LookupError:
        return None


def entry_text(entry: Mapping, table: TableSpec, extras: Iterable[str] = ()) -> str:
    """``out_of_domain device_type 17,864 ('phone' 17,864; allowed: mobile, …)``."""
    values = ", ".join(f"{quoted(v)} {n:,}" for v, n in entry["values"][:SHOWN_VALUES])
    if len(entry["values"]) > SHOWN_VALUES:
        values += ", …"
    detail = "; ".join(x for x in (values, _hint(entry, table, extras)) if x)
    column = entry["column"] or "(row)"
    return f"{entry['reason']} {column} {entry['rows']:,}" + (f" ({detail})" if detail else "")


def describe(summary: Mapping, table: TableSpec) -> str:
    """The summary's first entries, each with its values and what the column expects (and,
    for a required column, the ``extra_columns`` the summary lists)."""
    entries = list(summary.get("entries", []))
    extras = summary.get("extra_columns") or ()
    text = "; ".join(entry_text(e, table, extras) for e in entries[:SHOWN_ENTRIES])
    if len(entries) > SHOWN_ENTRIES:
        text += f"; {len(entries) - SHOWN_ENTRIES} more (reason, column) pair(s)"
    return text


def lost_rows(by_reason: Mapping[str, int], summary: Mapping | None = None,
              table: TableSpec | None = None) -> int:
    """Quarantined rows held against ``max_quarantined``: not the duplicates (a copy is kept),
    nor the ``SET_ASIDE`` entries of ``table`` found in ``summary``."""
    aside = SET_ASIDE.get(table.name, ()) if table is not None else ()
    n = sum(int(k) for r, k in by_reason.items() if r not in NOT_LOST) - sum(
        int(e["rows"]) for e in (summary or {}).get("entries", [])
        if (e["reason"], e["column"]) in aside)
    return max(n, 0)


def _aside_text(table: TableSpec) -> str:
    return ("duplicates and rows without a user_id aside" if SET_ASIDE.get(table.name)
            else "duplicates aside")


def check_quarantined(step: str, what: str, by_reason: Mapping[str, int], rows_in: int,
                      summary: Mapping, table: TableSpec, limit: float, where: str) -> float:
    """Print one line when rows of ``what`` were quarantined; raise ``InputHealthError`` when
    the lost ones (``lost_rows``) are more than ``limit`` of ``rows_in``. Returns the share."""
    quarantined = sum(int(n) for n in by_reason.values())
    if not quarantined:
        return 0.0
    lost = lost_rows(by_reason, summary, table)
    share = lost / rows_in if rows_in else 0.0
    text = (f"{step}: {quarantined:,} of {rows_in:,} {what} quarantined ({share:.1%} lost, "
            f"{_aside_text(table)}): {describe(summary, table) or 'see the quarantine'}; "
            f"rows under {where}")
    if share > limit:
        higher = min(1.0, math.ceil(share * 20) / 20) if lost < rows_in else None
        go_on = (f", or rerun with --max_quarantined {higher:g} to go on with the rest"
                 if higher is not None else ": no row is left to use")
        error = InputHealthError(
            f"{text}. That is more than max_quarantined {limit:g} of the {what}: fix the "
            f"producer or the values (docs/data-contract.md){go_on}")
        error.go_on = higher  # the limit that goes on (pythia.quarantine_limit)
        raise error
    print(("warning: " if share > WARN_SHARE else "") + text)
    return share


# codes in wide use that ISO-3166-1 reserves for another name (the UK's and the EU's usage)
NOT_ISO = {"UK": "GB", "EL": "GR"}


def unknown_countries(codes: Iterable[Any]) -> str | None:
    """A warning for the country codes (of the train rows' vocabulary) that no ISO-3166-1
    map knows (``UK``, ``EL``, ``XX``): valid by the contract's pattern, yet their rows fall in
    region OTHER (scored by the global model) with local time in UTC. None when all are known."""
    from pythia.geo.countries import known_countries
    unknown = sorted({str(c) for c in codes if c} - known_countries())
    if not unknown:
        return None
    fixes = [f"{quoted(c)} -> {quoted(NOT_ISO[c])}?" for c in unknown if c in NOT_ISO]
    shown = ", ".join(quoted(c) for c in unknown[:8]) + (", …" if len(unknown) > 8 else "")
    return (f"{len(unknown)} country code(s) of the train rows are no ISO-3166-1 "
            f"code: {shown}" + (f" ({', '.join(fixes)})" if fixes else "") + "; their rows "
            "are region OTHER, scored by the global model, with local time in UTC: fix the "
            "producer's codes")


def country_line(encoders: Mapping[str, Any]) -> str | None:
    """The to_tfrecords step's warning (``unknown_countries``) for the country vocabulary of
    its encoders (the ``encoders`` artifact, as JSON), else None."""
    codes = ((encoders or {}).get("vocabularies") or {}).get("country") or []
    unknown = unknown_countries(codes)
    return f"warning: to_tfrecords: {unknown}" if unknown else None


# ------------------------------------------------------------------ a finished run's input

def quarantined_text(quarantine: Mapping | None) -> str:
    """'17,864 of 28,451 impressions (62.8% lost)' / 'none' for a run's join_hours
    ``quarantine`` artifact; '-' when the run has none (it stopped before join_hours)."""
    if not quarantine:
        return "-"
    by_reason = quarantine.get("by_reason") or {}
    n, rows_in = sum(int(v) for v in by_reason.values()), quarantine.get("rows_in")
    if not n:
        return "none"
    if not rows_in:  # a run from before rows_in was recorded
        return f"{n:,} impressions"
    lost = lost_rows(by_reason, quarantine.get("summary"), IMPRESSIONS)
    return f"{n:,} of {int(rows_in):,} impressions ({lost / rows_in:.1%} lost)"


def rejected_rows(counts: Mapping) -> int | None:
    """The label rows rejected when over ``WARN_SHARE`` of prepare_labels' rows, else None."""
    rejected = sum(int(v) for v in (counts.get("rejected") or {}).values())
    rows_in = int(counts.get("rows_in") or 0)
    return rejected if rows_in and rejected > WARN_SHARE * rows_in else None


def rejected_line(counts: Mapping, text: str | None) -> str | None:
    """'376 of 1,097 label rows rejected (34.3%): <text>' when ``rejected_rows`` says so."""
    n, rows_in = rejected_rows(counts), int(counts.get("rows_in") or 0)
    return (f"{n:,} of {rows_in:,} label rows rejected ({n / rows_in:.1%}): {text}"
            if n is not None and text else None)


def report_lines(quarantine: Mapping | None, labels_manifest: Mapping | None) -> list[str]:
    """What ``pythia report`` and the end step say of a run's input: one 'input:' line per
    table with quarantined rows (the share lost, duplicates aside, and the entries), the
    rejected label rows, old bucket-only labels and conflicting labels when prepare_labels
    warned of them, the countries with impressions and no label, and the folders not read; [] for a
    clean input (or a run from before the record)."""
    lines = []
    counts = (labels_manifest or {}).get("counts") or {}
    for what, by_reason, rows_in, summary, table in (
            ("label rows", counts.get("quarantined"), counts.get("rows_in"),
             (labels_manifest or {}).get("quarantine_summary"), LABELS),
            ("impressions", (quarantine or {}).get("by_reason"),
             (quarantine or {}).get("rows_in"), (quarantine or {}).get("summary"), IMPRESSIONS)):
        n = sum(int(v) for v in (by_reason or {}).values())
        if not n:
            continue
        share = (f" ({lost_rows(by_reason, summary, table) / rows_in:.1%} lost, "
                 f"{_aside_text(table)})" if rows_in else "")
        of = f" of {int(rows_in):,}" if rows_in else ""
        detail = describe(summary or {}, table) or ", ".join(
            f"{r} {int(k):,}" for r, k in by_reason.items() if k)
        lines.append(f"input: {n:,}{of} {what} quarantined{share}: {detail}")
    rejected = rejected_line(counts, (labels_manifest or {}).get("rejected_text"))
    if rejected:
        lines.append(f"input: {rejected}")
    said = label_lines(labels_manifest or {})
    lines += [f"input: {line.removeprefix('warning: prepare_labels: ')}" for line in said
              if line.startswith("warning:")]  # old bucket-only labels, conflicting labels
    if (quarantine or {}).get("coverage"):  # countries no model learns (label_health)
        lines.append(f"input: {quarantine['coverage']}")
    folders = (quarantine or {}).get("partitions") or []
    if folders:
        lines.append(f"input: {len(folders)} impression folder(s) not read (names that do not "
                     f"parse; {int(quarantine.get('partition_rows') or 0):,} rows): "
                     + ", ".join(str(p.get("folder")) for p in folders[:3])
                     + (", …" if len(folders) > 3 else ""))
    return lines
