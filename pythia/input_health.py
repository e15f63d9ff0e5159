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
- ``no_labels_error`` (prepare_labels found no usable label) and ``check_labelled``
  (join_hours: no valid impression has a label) say why, with what the two sides' user ids
  look like and whether they match once lower-cased, upper-cased or trimmed.
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
from pythia.config import EtlConfig
from pythia.contract import (COUNTRY_PATTERN, DUPLICATE_IMPRESSION_ID, NULL_REQUIRED,
                             OUT_OF_DOMAIN, REASON, REASON_COLUMN, TS_TOLERANCE_SECONDS,
                             WRONG_TYPE, TableSpec)
from pythia.label_rules import NOT_CHOSEN
from pythia.parquet_footers import iter_file_batches
from pythia.source_layout import list_data_files

BATCH_ROWS = 65_536
SHOWN_ENTRIES = 4  # (reason, column) entries in the one line
SHOWN_VALUES = 3  # values per entry
VALUE_CHARS = 40
KEEP_VALUES = 20  # values per entry kept in the summary (the artifact)
MAX_TRACKED = 10_000  # distinct values tracked per entry before the rarest are let go
KEY_SAMPLE = 10_000  # user ids sampled per side for the key diagnosis
LOW_LABELLED = 0.01  # below this share of labelled impressions, a warning says so
WARN_SHARE = 0.01  # above this share quarantined, the step's line starts with "warning:"
NO_VALUES = (NULL_REQUIRED, DUPLICATE_IMPRESSION_ID)  # nothing to show, or ids only
NOT_LOST = (DUPLICATE_IMPRESSION_ID,)  # a copy of the row is kept
KEY_TRANSFORMS = (("lower-cased", pc.utf8_lower), ("upper-cased", pc.utf8_upper),
                  ("trimmed", pc.utf8_trim_whitespace))


# docs/data-contract.md (pythia.docs renders it from here)
RULES = (
    "The window's quarantined impressions (in `join_hours`, before its work) and the label rows "
    "(in `prepare_labels`) are said in one line per step: rows per reason and column, the most "
    "frequent values, what the column expects, and a likely fix where a value is an allowed "
    "one but for its case, spaces or a full word (`'Mobile' -> 'mobile'?`, `'female' -> "
    "'F'?`), or names a country another way (`'usa' -> 'US'?`, `'Germany' -> 'DE'?`). The "
    "run's `quarantine` artifact (`summary`) and the labels manifest (`quarantine_summary`) "
    f"keep the {KEEP_VALUES} most frequent values per reason and column.",
    f"When more than `max_quarantined` (a run Parameter, default {EtlConfig.max_quarantined:g}) "
    "of the impressions, or of "
    "the label rows, are quarantined (duplicates aside: a copy of those is kept), the step "
    "stops with that line, the share and the fix: repair the producer, or rerun with "
    "`--max_quarantined` at the share named to go on with the rest (1 never stops).",
    "A run whose labels give no usable label stops in `prepare_labels` saying what became of "
    "every row (quarantined, rejected, from a provider not chosen for the row's country). A run "
    "where no valid impression has a label stops in `join_hours` describing both sides' "
    "`user_id`s (examples, length, characters, a hash's length) and whether they meet once "
    f"lower-cased, upper-cased or trimmed; under {LOW_LABELLED:.0%} labelled, the same line is "
    "a warning.",
)


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
        values = t.filter(mask)[column]
        if not pa.types.is_string(values.type):
            values = values.cast(pa.string())
        for item in pc.value_counts(values).to_pylist():
            entry["values"][item["values"]] += int(item["counts"])
        if len(entry["values"]) > MAX_TRACKED:
            keep = max(KEEP_VALUES, MAX_TRACKED // 10)
            entry["values"] = Counter(dict(entry["values"].most_common(keep)))
            entry["values_exact"] = False


def _finish(entries: Iterable[dict]) -> dict:
    out = []
    for e in entries:
        values = e["values"] if isinstance(e["values"], Counter) else Counter(
            {v: n for v, n in e["values"]})
        top = sorted(values.items(), key=lambda vn: (-vn[1], str(vn[0])))[:KEEP_VALUES]
        out.append({**e, "values": [[v, n] for v, n in top]})
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
    return _finish(acc.values())


def _show(value: Any) -> str:
    if value is None:
        return "null"
    text = str(value)
    return repr(text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS - 1] + "…")


def _hint(entry: Mapping, table: TableSpec) -> str:
    """What the column expects, and a case fix when the shown values need only that."""
    try:
        spec = table.column(entry["column"])
    except KeyError:
        return ""
    shown = [str(v) for v, _ in entry["values"][:SHOWN_VALUES] if v is not None]
    if entry["reason"] == WRONG_TYPE:
        return f"not of type {spec.type}"
    if entry["reason"] == NULL_REQUIRED:
        return "required: null or empty"
    if entry["reason"] != OUT_OF_DOMAIN:
        if spec.type == "timestamp":
            epoch = shown and all(re.fullmatch(r"-?\d+(\.\d+)?", v.strip()) for v in shown)
            return (f"must be a UTC instant within {TS_TOLERANCE_SECONDS} s of its date/hour "
                    "folder and inside the window" + (
                        "; epoch numbers are not read (seconds? milliseconds?): write a "
                        "Parquet timestamp" if epoch else ""))
        return ""
    if spec.allowed:  # a value that is an allowed one but for case, spaces or a full word
        fixes = [f"{_show(v)} -> {_show(c)}?" for v in shown
                 for c in [next((c for c in (v.strip(), v.strip().lower(), v.strip().upper(),
                                             v.strip()[:1].upper()) if c in spec.allowed), v)]
                 if c != v]
        return "allowed: " + ", ".join(spec.allowed) + (f" ({', '.join(fixes)})" if fixes else "")
    if spec.pattern:  # a country's alpha-2 code, for its code in another case, alpha-3 or name
        fixes = [f"{_show(v)} -> {_show(c)}?" for v in shown if spec.pattern == COUNTRY_PATTERN
                 for c in [_alpha_2(v)] if c and c != v]
        return f"must match {spec.pattern}" + (f" ({', '.join(fixes)})" if fixes else "")
    if spec.min_value is not None or spec.max_value is not None:
        return f"allowed [{spec.min_value:g}, {spec.max_value:g}]"
    return ""


def _alpha_2(value: str) -> str | None:
    """The ISO-3166 alpha-2 code ``value`` names (any case: alpha-2, alpha-3, number or
    name, pycountry's ``lookup``), else None."""
    import pycountry
    try:
        return pycountry.countries.lookup(value.strip()).alpha_2
    except LookupError:
        return None


def entry_text(entry: Mapping, table: TableSpec) -> str:
    """``out_of_domain device_type 17,864 ('phone' 17,864; allowed: mobile, …)``."""
    values = ", ".join(f"{_show(v)} {n:,}" for v, n in entry["values"][:SHOWN_VALUES])
    if len(entry["values"]) > SHOWN_VALUES:
        values += ", …"
    detail = "; ".join(x for x in (values, _hint(entry, table)) if x)
    column = entry["column"] or "(row)"
    return f"{entry['reason']} {column} {entry['rows']:,}" + (f" ({detail})" if detail else "")


def describe(summary: Mapping, table: TableSpec) -> str:
    """The summary's first entries, each with its values and what the column expects."""
    entries = list(summary.get("entries", []))
    text = "; ".join(entry_text(e, table) for e in entries[:SHOWN_ENTRIES])
    if len(entries) > SHOWN_ENTRIES:
        text += f"; {len(entries) - SHOWN_ENTRIES} more (reason, column) pair(s)"
    return text


def lost_rows(by_reason: Mapping[str, int]) -> int:
    """Quarantined rows of which no copy is kept (duplicates aside)."""
    return sum(int(n) for r, n in by_reason.items() if r not in NOT_LOST)


def check_quarantined(step: str, what: str, by_reason: Mapping[str, int], rows_in: int,
                      summary: Mapping, table: TableSpec, limit: float, where: str) -> float:
    """Print one line when rows of ``what`` were quarantined; raise ``InputHealthError`` when
    the lost ones (duplicates aside) are more than ``limit`` of ``rows_in``. Returns the share."""
    quarantined = sum(int(n) for n in by_reason.values())
    if not quarantined:
        return 0.0
    lost = lost_rows(by_reason)
    share = lost / rows_in if rows_in else 0.0
    text = (f"{step}: {quarantined:,} of {rows_in:,} {what} quarantined ({share:.1%} lost, "
            f"duplicates aside): {describe(summary, table) or 'see the quarantine'}; "
            f"rows under {where}")
    if share > limit:
        go_on = (f", or rerun with --max_quarantined {min(1.0, math.ceil(share * 20) / 20):g} "
                 "to go on with the rest" if lost < rows_in else ": no row is left to use")
        raise InputHealthError(
            f"{text}. That is more than max_quarantined {limit:g} of the {what}: fix the "
            f"producer or the values (docs/data-contract.md){go_on}")
    print(("warning: " if share > WARN_SHARE else "") + text)
    return share


# ------------------------------------------------------------------ no labels, no join

def no_labels_error(counts: Mapping[str, Any], summary: Mapping, table: TableSpec,
                    chosen: Mapping[str, str], where: str,
                    label_providers: Iterable[str] = ()) -> InputHealthError:
    """prepare_labels kept no label: what became of the rows, in one line
    (``label_providers``: the source's ``labels/provider=NAME`` folders)."""
    parts = []
    quarantined = sum(int(n) for n in counts.get("quarantined", {}).values())
    if quarantined:
        parts.append(f"{quarantined:,} quarantined ({describe(summary, table)}; under {where})")
    rejected = {r: int(n) for r, n in counts.get("rejected", {}).items() if n}
    if rejected:
        parts.append(f"{sum(rejected.values()):,} rejected ("
                     + ", ".join(f"{r} {n:,}" for r, n in rejected.items()) + ")")
    aside = int(counts.get(NOT_CHOSEN, 0))
    if aside:
        picks = ", ".join(f"{c}={p}" for c, p in sorted(chosen.items())[:6])
        held = ", ".join(label_providers) or "?"
        parts.append(f"{aside:,} from a provider not chosen for the row's country (chosen: "
                     f"{picks or 'none'}; labels from: {held}; the provider=NAME folders must "
                     "match the metrics' provider names)")
    rows_in = int(counts.get("rows_in", 0))
    detail = "; ".join(parts) if parts else "the labels folder holds no row"
    return InputHealthError(f"prepare_labels: no usable label in {rows_in:,} label rows: "
                            f"{detail}. Fix the labels (docs/data-contract.md) and rerun")


def _sample_ids(uri: str, column: str, where: Mapping[str, str] | None = None,
                limit: int = KEY_SAMPLE) -> list[str]:
    """Up to ``limit`` distinct non-null values of ``column`` under ``uri``, in file order."""
    seen: dict[str, None] = {}
    for file in list_data_files(uri) if storage.exists(uri) else []:
        fs, path = storage.filesystem(file)
        with fs.open_input_file(path) as f:
            cols = [column, *(where or {})]
            for batch in iter_file_batches(pq.ParquetFile(f), BATCH_ROWS, cols):
                t = pa.Table.from_batches([batch])
                for k, v in (where or {}).items():
                    t = t.filter(pc.equal(t[k], v))
                for value in pc.unique(t[column].drop_null()).to_pylist():
                    seen.setdefault(str(value))
                    if len(seen) >= limit:
                        return list(seen)
    return list(seen)


def _shape(ids: list[str]) -> str:
    """'9 characters: digits, upper-case letters' (length range, character classes)."""
    if not ids:
        return "none seen"
    lengths = sorted({len(i) for i in ids})
    size = (f"{lengths[0]}" if len(lengths) == 1 else f"{lengths[0]}-{lengths[-1]}")
    text = "".join(ids[:1000])
    if all(re.fullmatch(r"[0-9a-fA-F]+", i) for i in ids[:1000]) and len(lengths) == 1 \
            and lengths[0] in (32, 40, 64):
        algo = {32: "an MD5", 40: "a SHA-1", 64: "a SHA-256"}[lengths[0]]
        return f"{size} hex characters: {algo} hash?"
    kinds = [name for name, pattern in (("digits", r"[0-9]"), ("lower-case letters", r"[a-z]"),
                                        ("upper-case letters", r"[A-Z]"),
                                        ("other characters", r"[^0-9a-zA-Z]"))
             if re.search(pattern, text)]
    if re.search(r"^\s|\s$", "\n".join(ids[:1000]), re.M):
        kinds.append("leading/trailing spaces")
    return f"{size} characters: {', '.join(kinds)}"


def key_diagnosis(impression_ids: list[str], labels_uri: str) -> str:
    """How the impressions' user ids (a sample) and the labels' compare: their shapes, and
    which transform (lower-case, upper-case, trim) would make them meet."""
    label_ids = _sample_ids(labels_uri, "user_id")
    sample = pa.array(impression_ids, pa.string())
    meets = []
    for name, fn in KEY_TRANSFORMS:
        wanted = pc.unique(fn(sample))
        for file in list_data_files(labels_uri) if storage.exists(labels_uri) else []:
            fs, path = storage.filesystem(file)
            with fs.open_input_file(path) as f:
                hits = sum(pc.sum(pc.is_in(fn(b.column(0).cast(pa.string())),
                                           value_set=wanted)).as_py() or 0
                           for b in iter_file_batches(pq.ParquetFile(f), BATCH_ROWS,
                                                      ["user_id"]))
            if hits:
                meets.append(name)
                break
    shown = lambda ids: ", ".join(_show(i) for i in ids[:2])  # noqa: E731
    text = (f"impressions' user_id e.g. {shown(impression_ids)} ({_shape(impression_ids)}); "
            f"labels' e.g. {shown(label_ids)} ({_shape(label_ids)})")
    if meets:
        text += f"; they meet once both are {' or '.join(meets)}"
    return text


def check_labelled(step: str, written: int, unlabelled: int, ids_uri: str,
                   labels_uri: str, id_column: str, outcome_column: str,
                   unlabelled_value: str) -> None:
    """No valid impression has a label: raise, saying what the two sides' ids look like.
    Under ``LOW_LABELLED`` of them: the same, as a warning."""
    valid = written + unlabelled
    if not valid or written / valid >= LOW_LABELLED:
        return
    ids = _sample_ids(ids_uri, id_column, {outcome_column: unlabelled_value})
    why = key_diagnosis(ids, labels_uri)
    if written == 0:
        raise InputHealthError(
            f"{step}: none of the window's {valid:,} valid impressions has a label: "
            f"{why}. Fix: key the labels by the bid logs' user_id (docs/data-contract.md)")
    print(f"warning: {step}: only {written:,} of the window's {valid:,} valid impressions "
          f"({written / valid:.2%}) have a label: {why}")


# ------------------------------------------------------------------ a finished run's input

def report_lines(quarantine: Mapping | None, labels_manifest: Mapping | None) -> list[str]:
    """What ``pythia report`` and the end step say of a run's input: one 'input:' line per
    table with quarantined rows (the share lost, duplicates aside, and the entries), and the
    impression folders not read; [] for a clean input (or a run from before the record)."""
    from pythia.contract import IMPRESSIONS, LABELS
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
        share = f" ({lost_rows(by_reason) / rows_in:.1%} lost)" if rows_in else ""
        of = f" of {int(rows_in):,}" if rows_in else ""
        detail = describe(summary or {}, table) or ", ".join(
            f"{r} {int(k):,}" for r, k in by_reason.items() if k)
        lines.append(f"input: {n:,}{of} {what} quarantined{share}: {detail}")
    folders = (quarantine or {}).get("partitions") or []
    if folders:
        lines.append(f"input: {len(folders)} impression folder(s) not read (names that do not "
                     f"parse; {int(quarantine.get('partition_rows') or 0):,} rows): "
                     + ", ".join(str(p.get("folder")) for p in folders[:3])
                     + (", …" if len(folders) > 3 else ""))
    return lines
