"""Labels that meet no impression, said so a user can fix them (``pythia.input_health``
says the quarantine's share and content).

- ``no_labels_error``: prepare_labels kept no label; one line says what became of every row
  (quarantined, rejected, from a provider not chosen for its country).
- ``coverage_text``: countries with many impressions and (almost) no label (join_hours warns,
  ``pythia report`` repeats it): no model trains on their users.
- ``check_labelled``: join_hours found no valid impression with a label (a stop) or under
  ``LOW_LABELLED`` of them (a warning); ``key_diagnosis`` describes both sides' user ids
  (examples, length, characters, a hash's length) and whether they meet once lower-cased,
  upper-cased, trimmed, read as whole numbers (ids stored as floats) or without
  leading zeros. Before (session 62), labels keyed by an upper-cased ``user_id`` or
  with ``gender`` ``female`` stopped three steps later on "the train split has no rows".
"""
from __future__ import annotations

import functools
import re
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pythia import storage
from pythia.contract import AGE, GENDER_NO_CLASS, LABEL_VALUES, YOB, TableSpec
from pythia.features import AGE_BUCKET
from pythia.input_health import (BATCH_ROWS, LOW_LABELLED, InputHealthError, describe,
                                 quoted)
from pythia.label_rules import IMPOSSIBLE_AGE, INCOMPLETE_LABEL, NOT_CHOSEN
from pythia.parquet_footers import iter_file_batches
from pythia.source_layout import list_data_files

KEY_SAMPLE = 10_000  # user ids sampled per side for the key diagnosis
COVERAGE_SHARE = 0.01  # a country of this share of the impressions with no label is said
SHOWN_COUNTRIES = 8
FLOAT_IDS = ("ids stored as floats read as '11.0': pandas turns an integer column with a "
             "missing value into float64; write user_id as text or int64, since a float64 "
             "holds integers exactly only up to 2^53")
# (how both sides' ids are changed, the change, what it says about the producer or None)
KEY_TRANSFORMS = (
    ("lower-cased", pc.utf8_lower, None), ("upper-cased", pc.utf8_upper, None),
    ("trimmed", pc.utf8_trim_whitespace, None),
    ("read as whole numbers ('11.0' as '11')",
     lambda a: _whole_float_texts(a), FLOAT_IDS),
    ("without leading zeros", lambda a: pc.replace_substring_regex(a, r"^0+(\d)", r"\1"),
     "one side wrote its numeric ids zero-padded, or read them as numbers"))


def _whole_float_texts(ids: pa.Array) -> pa.Array:
    """Java's text of a whole double (``'11.0'``, ``'1.2345678E7'``: how Spark reads a float
    id as a string) as the integer's digits; other ids as they are."""
    floats = pc.match_substring_regex(ids, r"^-?\d+\.\d+(E-?\d+)?$")
    value = pc.cast(pc.if_else(floats, ids, "nan"), pa.float64())
    whole = pc.and_(floats, pc.and_(pc.equal(pc.floor(value), value),
                                    pc.less(pc.abs(value), 2.0 ** 63)))
    digits = pc.cast(pc.cast(pc.if_else(whole, value, 0.0), pa.int64()), pa.string())
    return pc.if_else(whole, digits, ids)


def no_labels_error(counts: Mapping[str, Any], summary: Mapping, table: TableSpec,
                    chosen: Mapping[str, str], where: str,
                    label_providers: Iterable[str] = (),
                    rejected_detail: str | None = None) -> InputHealthError:
    """prepare_labels kept no label: what became of the rows, in one line
    (``label_providers``: the source's ``labels/provider=NAME`` folders; ``rejected_detail``:
    ``rejected_text`` of the rejected rows)."""
    parts = []
    quarantined = sum(int(n) for n in counts.get("quarantined", {}).values())
    if quarantined:
        parts.append(f"{quarantined:,} quarantined ({describe(summary, table)}; under {where})")
    rejected = {r: int(n) for r, n in counts.get("rejected", {}).items() if n}
    if rejected:
        parts.append(f"{sum(rejected.values()):,} rejected (" + (rejected_detail or ", ".join(
            f"{r} {n:,}" for r, n in rejected.items())) + ")")
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


YEARS_OF_BIRTH = (1900, 2100)  # an impossible age in this range is a year of birth, said so


def rejected_text(uri: str | None) -> str:
    """The rejected label rows (prepare_labels' ``rejected/``) per reason: what an incomplete
    label lacks, and the providers whose rows they are, e.g. ``incomplete_label 376 (no gender
    376; from datamax 376): a label needs …``."""
    found: dict[str, dict[str, Any]] = {}
    for file in list_data_files(uri) if uri and storage.exists(uri) else []:
        fs, path = storage.filesystem(file)
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            columns = [c for c in ("reject", "provider", *LABEL_VALUES)
                       if c in parquet.schema_arrow.names]
            for b in iter_file_batches(parquet, BATCH_ROWS, columns):
                t = pa.Table.from_batches([b])
                for reason in pc.unique(t["reject"]).to_pylist():
                    _tally_rejected(t.filter(pc.equal(t["reject"], reason)), found.setdefault(
                        reason, {"rows": 0, "no_gender": 0, "no_age": 0, "providers": {},
                                 "no_class": {}, "years": 0}), reason)
    parts = []
    for reason, e in sorted(found.items(), key=lambda kv: -kv[1]["rows"]):
        said = [f"{g} {n:,}" for g, n in sorted(e["no_class"].items(), key=lambda gn: -gn[1])]
        nulls = e["no_gender"] - sum(e["no_class"].values())
        said += [f"null {nulls:,}"] if said and nulls else []
        lacks = ([f"no gender {e['no_gender']:,}" + (f": {', '.join(said)}" if said else "")]
                 if e["no_gender"] else []) + (
            [f"neither age nor age_bucket {e['no_age']:,}"] if e["no_age"] else []) \
            if reason == INCOMPLETE_LABEL else []
        lacks += [f"ages {YEARS_OF_BIRTH[0]}-{YEARS_OF_BIRTH[1]} {e['years']:,}: years of "
                  f"birth? write them to {YOB}"] if e["years"] else []
        whose = sorted(e["providers"].items(), key=lambda pn: (-pn[1], pn[0]))[:3]
        lacks.append("from " + ", ".join(f"{p} {n:,}" for p, n in whose))
        parts.append(f"{reason} {e['rows']:,} ({'; '.join(lacks)})")
    text = ", ".join(parts)
    if INCOMPLETE_LABEL in found:
        text += (": a label needs a gender and an age or an age bucket (age_gender is the "
                 "models' joint target)")
    return text


def _tally_rejected(rows: pa.Table, e: dict[str, Any], reason: str) -> None:
    """Add one batch's rejected rows of ``reason`` to its entry ``e``."""
    e["rows"] += rows.num_rows
    e["no_gender"] += rows["gender"].null_count
    if reason == INCOMPLETE_LABEL:  # U and O: genders of no class
        for g, n in zip(*_counted(rows["gender"])):
            if g in GENDER_NO_CLASS:
                e["no_gender"] += n
                e["no_class"][g] = e["no_class"].get(g, 0) + n
    ages = [pc.is_null(rows[c]) for c in (AGE, YOB, AGE_BUCKET) if c in rows.column_names]
    e["no_age"] += pc.sum(functools.reduce(pc.and_, ages)).as_py() or 0
    if reason == IMPOSSIBLE_AGE:  # a year of birth in the age column
        age = pc.cast(rows[AGE], pa.float64())
        e["years"] += pc.sum(pc.and_(pc.greater_equal(age, YEARS_OF_BIRTH[0]),
                                     pc.less_equal(age, YEARS_OF_BIRTH[1]))).as_py() or 0
    for p, n in zip(*_counted(rows["provider"])):
        e["providers"][p] = e["providers"].get(p, 0) + n


def _counted(column: pa.ChunkedArray) -> tuple[list, list]:
    counts = pc.value_counts(column)
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()


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
    meets, why = [], []
    for name, fn, reason in KEY_TRANSFORMS:
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
                why.extend([reason] if reason else [])
                break
    shown = lambda ids: ", ".join(quoted(i) for i in ids[:2])  # noqa: E731
    text = (f"impressions' user_id e.g. {shown(impression_ids)} ({_shape(impression_ids)}); "
            f"labels' e.g. {shown(label_ids)} ({_shape(label_ids)})")
    if meets:
        text += f"; they meet once both are {' or '.join(meets)}"
    return text + "".join(f": {w}" for w in why)


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


def label_coverage(hour_manifests: Iterable[Mapping]) -> dict[str, list[int]]:
    """The etl tasks' ``label_coverage`` summed: per country, [labelled, unlabelled] valid
    impressions of the window (before duplicates across tasks are settled)."""
    out: dict[str, list[int]] = {}
    for m in hour_manifests:
        for country, (labelled, unlabelled) in (m.get("label_coverage") or {}).items():
            both = out.setdefault(country, [0, 0])
            both[0] += int(labelled)
            both[1] += int(unlabelled)
    return dict(sorted(out.items()))


def coverage_text(coverage: Mapping[str, Sequence[int]]) -> str | None:
    """The countries that hold at least ``COVERAGE_SHARE`` of the window's valid impressions
    but under ``LOW_LABELLED`` of them labelled, in one line; None when there are none, or
    when the whole window is that thin (``check_labelled`` says so)."""
    total = sum(sum(v) for v in coverage.values())
    labelled = sum(v[0] for v in coverage.values())
    if not total or labelled < LOW_LABELLED * total:
        return None
    thin = sorted(((c, int(v[0]), sum(v)) for c, v in coverage.items()
                   if sum(v) >= COVERAGE_SHARE * total and v[0] < LOW_LABELLED * sum(v)),
                  key=lambda t: (-t[2], t[0]))
    if not thin:
        return None
    shown = ", ".join(f"{c} ({n / total:.1%} of them, "
                      + (f"{k / n:.2%} labelled)" if k else "none labelled)")
                      for c, k, n in thin[:SHOWN_COUNTRIES])
    more = f" and {len(thin) - SHOWN_COUNTRIES} more" if len(thin) > SHOWN_COUNTRIES else ""
    share = sum(n for _, _, n in thin) / total
    return (f"{len(thin)} country(ies) hold {share:.1%} of the window's {total:,} valid "
            f"impressions with (almost) no label: {shown}{more}. No model trains on or is "
            "judged by their users, yet the bundle scores them: find a label provider for "
            "them (a label counts when it comes from the provider chosen for its row's "
            "country: the run's provider_choice)")
