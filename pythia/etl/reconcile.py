"""Reconciliation: every impression row read is accounted for, per hour and in total.

Identity, per (date, hour) and output split (the test day counts once for ``test_resampled``
and once for ``test_natural``):
``rows_in = quarantined + unlabelled + power_user_dropped + user_split + resampled_out +
written``.

With held-out users (``etl.holdout``) a train or validation date's rows that change split count
as ``user_split`` in the record of the split their date gave them, and again, as that hour's
``rows_in`` of a record of the split they land in (no quarantined or unlabelled rows there: the
hour's record counted those), where they are written, resampled out or dropped as power users.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd

from pythia.contract import REASONS
from pythia.etl.holdout import OTHER_SPLIT
from pythia.features import DATE, HOUR, OUTPUT_SPLITS, OUTPUT_SPLITS_OF, SPLIT

TERMS = ("quarantined", "unlabelled", "power_user_dropped", "user_split", "resampled_out",
         "written")
COLUMNS = (["scope", DATE, HOUR, SPLIT, "rows_in", *TERMS, "etl_written"]
           + [f"q_{r}" for r in REASONS] + ["balanced"])


def reconcile(hour_manifests: Sequence[Mapping], split_manifest: Mapping) -> pd.DataFrame:
    """One row per (date, hour, output split) plus a ``total`` row per split.

    ``balanced`` is True when the identity holds and the ETL's written rows equal what the
    split step dropped + resampled out + wrote.
    """
    by_hour = {(p[DATE], int(p[HOUR]), p[SPLIT]): p for p in split_manifest["per_hour"]}
    seen: set[tuple[str, int]] = set()
    records = []
    for m in hour_manifests:
        for p in m["per_hour"]:
            key = (p[DATE], int(p[HOUR]))
            if key in seen:
                raise ValueError(f"date {key[0]} hour {key[1]} appears in two hour manifests")
            seen.add(key)
            for out in OUTPUT_SPLITS_OF[p[SPLIT]]:  # test counts twice
                s = by_hour.get((p[DATE], int(p[HOUR]), out), {})
                rec = _record(p, out, s, int(p["rows_in"]), int(p["written"]))
                rec.update({f"q_{r}": int(p["quarantined"].get(r, 0)) for r in REASONS})
                rec.update(quarantined=int(sum(p["quarantined"].values())),
                           unlabelled=int(p["unlabelled"]))
                records.append(rec)
            landed = by_hour.get((p[DATE], int(p[HOUR]), OTHER_SPLIT.get(p[SPLIT])))
            if landed:  # the held-out users' (or the other users') rows of this hour
                n = int(landed.get("etl_written", 0))
                rec = _record(p, OTHER_SPLIT[p[SPLIT]], landed, n, n)
                rec.update({f"q_{r}": 0 for r in REASONS})
                records.append(rec)
    unknown = sorted(set(by_hour) - {(d, h, o) for d, h in seen for o in OUTPUT_SPLITS})
    if unknown:
        raise ValueError(f"split manifest counts hours no hour manifest read: {unknown[:5]}")
    df = pd.DataFrame.from_records(records, columns=COLUMNS[:-1])
    if len(df):
        totals = df.groupby(SPLIT, sort=False)[[c for c in COLUMNS[4:-1]]].sum().reset_index()
        totals["scope"], totals[DATE], totals[HOUR] = "total", "*", -1
        df = pd.concat([df, totals[COLUMNS[:-1]]], ignore_index=True)
    df["balanced"] = ((df["rows_in"] == df[list(TERMS)].sum(axis=1))
                      & (df["etl_written"] == df[list(TERMS[2:])].sum(axis=1)))
    return df[COLUMNS]


def _record(p: Mapping, out: str, s: Mapping, rows_in: int, etl_written: int) -> dict:
    """A reconciliation record of hour ``p`` (an hour manifest's entry) and output split
    ``out`` from the split step's counts ``s`` (quarantined and unlabelled 0: the caller's)."""
    return {"scope": "hour", DATE: p[DATE], HOUR: int(p[HOUR]), SPLIT: out, "rows_in": rows_in,
            "quarantined": 0, "unlabelled": 0,
            **{t: int(s.get(t, 0)) for t in TERMS[2:]}, "etl_written": etl_written}


def assert_balanced(df: pd.DataFrame) -> None:
    """Raise ValueError showing every row where the reconciliation identity does not hold."""
    bad = df[~df["balanced"].astype(bool)]
    if len(bad):
        raise ValueError(f"{len(bad)} reconciliation row(s) do not balance "
                         f"(rows_in != {' + '.join(TERMS)}):\n{bad.to_string(index=False)}")
