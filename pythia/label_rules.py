"""Label rules shared by the Spark and the driver paths of ``providers``: the reject and
status codes of a label row, age bucketing (pandas), and the reconciled outcome counts.

An ``age`` is the user's age on its ``observed_date``; third-party labels are often years old,
so ``bucket_labels`` moves it to the run's test day (``as_of``) before bucketing: a 24-year-old
observed three years before is 27, in 25-34. A label given only as an ``age_bucket`` cannot be
moved (its users may have moved up a bucket); those observed a year or more away from the
test day are counted and said (``label_age``).
"""
from __future__ import annotations

import datetime as dt
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from pythia import contract
from pythia.contract import YOB
from pythia.config import DEFAULT_AGE_EDGES, MAX_VALID_AGE, MIN_VALID_AGE
from pythia.features import GENDER_CLASSES, age_bucket_labels, age_to_bucket

# Label rows that pass the contract but cannot become a training label.
IMPOSSIBLE_AGE = "impossible_age"  # outside [MIN_VALID_AGE, MAX_VALID_AGE]
AGE_BELOW_FIRST_EDGE = "age_below_first_edge"  # a plausible age no bucket covers (e.g. 15)
INCOMPLETE_LABEL = "incomplete_label"  # gender or age (and age_bucket) missing
REJECT_REASONS = (IMPOSSIBLE_AGE, AGE_BELOW_FIRST_EDGE, INCOMPLETE_LABEL)
NOT_CHOSEN = "not_chosen_provider"  # usable, but not from the country's chosen provider
SUPERSEDED = "superseded"  # usable and chosen, but the user has a newer chosen label
LABELLED = "labelled"
STALE_BUCKET_SHARE = 0.05  # above it, prepare_labels warns of old bucket-only labels
OUTPUT_COLUMNS = ["user_id", "country", "gender", "age_bucket", "y_gender", "y_age",
                  "y_age_gender", "label_provider", "observed_date"]


AGE_SHIFT, BUCKET_YEARS = "age_shift", "bucket_years"  # bucket_labels' columns on label age
# prepare_labels' column: the provider of a kept label that a chosen label of the same user
# and observed_date contradicts ("" for every other row); the tie rule picked one of them
CONFLICT = "conflict"
CONFLICT_SHARE = 0.01  # above it (of the users), prepare_labels warns of conflicting labels
YEAR_DAYS = 365.2425
MID_YEAR_DAY = 183  # 2 July (1 July in a leap year): a year of birth's birthday, taken mid-year


def years_between(observed: pd.Series, as_of: dt.date) -> np.ndarray:
    """Whole years from each ``observed`` date to ``as_of``, rounded (negative: observed
    after it); zero without a date."""
    days = (pd.Timestamp(as_of) - pd.to_datetime(observed.astype(object))).dt.days
    years = np.floor(days.to_numpy(dtype=float) / YEAR_DAYS + 0.5)
    return np.nan_to_num(years, nan=0.0).astype(np.int32)


def age_of_birth_year(yob: np.ndarray, on: pd.Series) -> np.ndarray:
    """The age on each date ``on`` of a person born in ``yob`` with a mid-year birthday (the
    likelier of the two ages that year: one less before 2 July)."""
    day = on.dt.dayofyear.to_numpy(dtype=float)
    return on.dt.year.to_numpy(dtype=float) - yob - (day < MID_YEAR_DAY)


def bucket_labels(pdf: pd.DataFrame, age_edges: Sequence[int] = DEFAULT_AGE_EDGES,
                  as_of: dt.date | None = None) -> pd.DataFrame:
    """Add ``y_gender``, ``y_age``, ``y_age_gender``, canonical ``age_bucket``, ``reject``,
    and ``age_shift`` / ``bucket_years`` (the years an age was moved; the years a bucket-only
    label lies from ``as_of``).

    ``age`` wins over ``yob`` (year of birth), which wins over ``age_bucket``; with ``as_of``
    (the test day) an age is moved there by the whole years since its ``observed_date``
    (rounded) before bucketing, and a year of birth gives the age on that day (a mid-year
    birthday; without ``as_of``, on the observed date). ``impossible_age`` judges the age as
    given (a year of birth's: on the observed date), ``age_below_first_edge`` the moved one.
    ``reject`` is null for usable rows, else one of REJECT_REASONS.
    """
    labels = age_bucket_labels(age_edges)
    n_age = len(labels)
    given = pd.to_numeric(pdf["age"], errors="coerce").to_numpy(dtype=float, copy=True)
    years = (years_between(pdf["observed_date"], as_of) if as_of is not None
             else np.zeros(len(pdf), dtype=np.int32))
    moved = ~np.isnan(given)  # ages moved by ``years``
    age = given + np.where(moved, years, 0)
    yob = (pd.to_numeric(pdf[YOB], errors="coerce").to_numpy(dtype=float) if YOB in pdf
           else np.full(len(pdf), np.nan))
    use = np.flatnonzero(~moved & ~np.isnan(yob))
    if len(use):  # no age: the year of birth's, as observed (judged) and on the test day
        observed = pd.to_datetime(pdf["observed_date"].iloc[use].astype(object))
        on = observed if as_of is None else pd.Series(pd.Timestamp(as_of), index=observed.index)
        given[use] = age_of_birth_year(yob[use], observed)
        age[use] = age_of_birth_year(yob[use], on)
    has_age = ~np.isnan(given)
    impossible = has_age & ((given < MIN_VALID_AGE) | (given > MAX_VALID_AGE))
    from_age = np.where(has_age, age_to_bucket(np.where(has_age, age, age_edges[0]), age_edges),
                        -1)
    below = has_age & ~impossible & (from_age < 0)
    bucket_index = {b: i for i, b in enumerate(labels)}
    from_bucket = pdf["age_bucket"].map(bucket_index).fillna(-1).to_numpy(dtype=int)
    y_age = np.where(has_age, from_age, from_bucket)
    gender_index = {g: i for i, g in enumerate(GENDER_CLASSES)}
    y_gender = pdf["gender"].map(gender_index).fillna(-1).to_numpy(dtype=int)
    incomplete = (y_gender < 0) | (y_age < 0)
    reject = np.select([impossible, below, incomplete],
                       [IMPOSSIBLE_AGE, AGE_BELOW_FIRST_EDGE, INCOMPLETE_LABEL], default="")
    ok = reject == ""
    out = pdf.copy()
    out["reject"] = pd.Series(reject, index=pdf.index).replace("", None)
    out["y_gender"] = np.where(ok, y_gender, -1).astype("int32")
    out["y_age"] = np.where(ok, y_age, -1).astype("int32")
    out["y_age_gender"] = np.where(ok, y_gender * n_age + y_age, -1).astype("int32")
    # usable rows: the canonical bucket; rejected rows keep the bucket they were given
    out["age_bucket"] = [labels[i] if good else raw
                         for i, good, raw in zip(y_age, ok, pdf["age_bucket"])]
    out[AGE_SHIFT] = np.where(moved, years, 0).astype("int32")
    out[BUCKET_YEARS] = np.where(has_age, 0, years).astype("int32")
    return out


def status_counts(tally: Iterable[tuple]) -> dict[str, int]:
    """Rows per status from ``(status, age_shift, bucket_years[, conflict], rows)`` groups."""
    counts: dict[str, int] = {}
    for status, *_, n in tally:
        counts[status] = counts.get(status, 0) + int(n)
    return counts


def label_age(tally: Iterable[tuple], as_of: dt.date | None) -> dict:
    """How old the kept labels were, from ``(status, age_shift, bucket_years, rows)`` groups:
    labels whose age was moved to ``as_of`` (and by how many years at most), and bucket-only
    labels a year or more from it (not movable)."""
    kept = [(int(a or 0), int(b or 0), int(n)) for s, a, b, *_, n in tally if s == LABELLED]
    return {"as_of": as_of.isoformat() if as_of else None,
            "labels": sum(n for _, _, n in kept),
            "aged": sum(n for a, _, n in kept if a), "max_years": max(
                [abs(a) for a, _, _ in kept] + [abs(b) for _, b, _ in kept], default=0),
            "stale_buckets": sum(n for _, b, n in kept if b)}


def label_age_lines(age: Mapping) -> list[str]:
    """The step's lines on ``label_age``: a note when ages were moved, a warning when over
    ``STALE_BUCKET_SHARE`` of the labels are buckets a year or more old."""
    lines, n = [], age.get("labels") or 0
    if age.get("aged"):
        lines.append(f"note: prepare_labels: {age['aged']:,} of {n:,} labels' ages moved to the "
                     f"test day {age['as_of']} (observed up to {age['max_years']} year(s) "
                     "away from it)")
    if n and age.get("stale_buckets", 0) > STALE_BUCKET_SHARE * n:
        lines.append(f"warning: prepare_labels: {age['stale_buckets']:,} of {n:,} labels "
                     f"({age['stale_buckets'] / n:.0%}) are age buckets observed a year or more "
                     f"from the test day {age['as_of']}: a bucket cannot be moved as an age "
                     "can, so some of these users are in an older bucket now (ask the provider "
                     "for ages, or for fresher labels)")
    return lines


def conflicts(tally: Iterable[tuple]) -> dict[str, int]:
    """Kept labels contradicted by a chosen label of the same user and date, per provider,
    from ``(status, age_shift, bucket_years, conflict, rows)`` groups."""
    found: dict[str, int] = {}
    for status, _, _, provider, n in tally:
        if status == LABELLED and provider:
            found[provider] = found.get(provider, 0) + int(n)
    return dict(sorted(found.items(), key=lambda pn: (-pn[1], pn[0])))


def conflict_lines(found: Mapping[str, int], users: int) -> list[str]:
    """The step's line on conflicting labels: a warning over ``CONFLICT_SHARE`` of the users,
    a note below it, nothing without any."""
    n = sum(found.values())
    if not n:
        return []
    kind = "warning" if n > CONFLICT_SHARE * users else "note"
    whose = ", ".join(f"{p} {k:,}" for p, k in list(found.items())[:3])
    return [f"{kind}: prepare_labels: {n:,} of {users:,} users ({n / max(users, 1):.1%}) have "
            "labels of the same observed_date that disagree (gender or age bucket; from "
            f"{whose}): each keeps one by the tie rule (country, provider, then the lower "
            "age_gender class), not by evidence; ask the provider which label holds"]


def label_lines(manifest: Mapping) -> list[str]:
    """prepare_labels' lines on the kept labels' age and conflicts (``label_age_lines``,
    ``conflict_lines``) from its manifest."""
    return label_age_lines(manifest.get("label_age") or {}) + conflict_lines(
        manifest.get("conflicts") or {}, int((manifest.get("counts") or {}).get("users") or 0))


def label_outcome(counts: Mapping[str, int]) -> dict:
    """The manifest's ``counts`` from rows per status (quarantined rows: per reason code).

    Raises RuntimeError when a status is none of the known ones (a bug: rows never vanish)."""
    rows_in = sum(counts.values())
    outcome = {
        "rows_in": rows_in,
        "quarantined": {r: counts.get(r, 0) for r in contract.REASONS},
        "rejected": {r: counts.get(r, 0) for r in REJECT_REASONS},
        NOT_CHOSEN: counts.get(NOT_CHOSEN, 0), SUPERSEDED: counts.get(SUPERSEDED, 0),
        "users": counts.get(LABELLED, 0),
    }
    accounted = (sum(outcome["quarantined"].values()) + sum(outcome["rejected"].values())
                 + outcome[NOT_CHOSEN] + outcome[SUPERSEDED] + outcome["users"])
    if accounted != rows_in:
        raise RuntimeError(f"label rows do not reconcile: {rows_in} in, {accounted} accounted "
                           f"for ({dict(counts)})")
    return outcome
