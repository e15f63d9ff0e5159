"""Label rules shared by the Spark and the driver paths of ``providers``: the reject and
status codes of a label row, age bucketing (pandas), and the reconciled outcome counts."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from pythia import contract
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
OUTPUT_COLUMNS = ["user_id", "country", "gender", "age_bucket", "y_gender", "y_age",
                  "y_age_gender", "label_provider", "observed_date"]


def bucket_labels(pdf: pd.DataFrame, age_edges: Sequence[int] = DEFAULT_AGE_EDGES
                  ) -> pd.DataFrame:
    """Add ``y_gender``, ``y_age``, ``y_age_gender``, canonical ``age_bucket`` and ``reject``.

    ``age`` wins over ``age_bucket`` when both are given. ``reject`` is null for usable rows,
    else one of REJECT_REASONS.
    """
    labels = age_bucket_labels(age_edges)
    n_age = len(labels)
    age = pd.to_numeric(pdf["age"], errors="coerce").to_numpy(dtype=float)
    has_age = ~np.isnan(age)
    impossible = has_age & ((age < MIN_VALID_AGE) | (age > MAX_VALID_AGE))
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
    out["age_bucket"] = [labels[i] if good else None for i, good in zip(y_age, ok)]
    return out


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
