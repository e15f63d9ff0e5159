"""Blind twins: what the features a candidate was trained blind to are worth, on the run's rows.

A candidate whose record names ``twin_of`` (the ``mlp_blind`` model: the MLP with
``blind_to`` features it never sees, ``models.mlp_blind``) is set against the candidates of
that sighted model with the same config, paired on the same rows, AgeGender log-loss, sighted
- blind (below 0: the features help), with its SE clustered by user and z, on validation
(natural-weighted), the natural test day and its new users:

- ``same``: the twins trained on the same rows (global and global in every region, a
  region's regional candidates there): what the features add to that fit;
- ``offset vs fine-tune`` (issue #15's choice, by numbers): the sighted *global* candidate
  against the blind *regional* one in each region. With ``blind_to = region_device_make``
  this is a region's make effect learnt as an offset in one global model, against the same
  network blind to it and fine-tuned on the region's rows instead.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd

from pythia.config import GLOBAL_REGION
from pythia.evaluate.margins import (NEW_USERS_TEST_PART, TEST_PART, GroupSums, margin_lookup,
                                     slice_margin_lookup)
from pythia.evaluate.slices import candidate_ident, candidate_key, candidate_label
from pythia.evaluate.tables import margin_text

SAME, OFFSET = "same rows' fit", "offset vs fine-tune"
PARTS = ("val", "test", "new")
COLUMNS = ["region", "comparison", "sighted", "blind", "blind_to"] + [
    f"{p}_{w}" for p in PARTS for w in ("diff", "se", "z")]


def twin_pairs(candidates: Sequence[Mapping[str, Any]], regions: Sequence[str]
               ) -> list[tuple[str, str, tuple, tuple, list]]:
    """(eval region, comparison, sighted key, blind key, blind_to) of every pair the run has."""
    by_key = {candidate_key(candidate_ident(c)): c for c in candidates}
    pairs = []
    for c in candidates:
        twin = c.get("twin_of")
        if not twin:
            continue
        b = candidate_key(candidate_ident(c))
        blind_to = list((c.get("hparams") or {}).get("blind_to") or [])
        same = (str(twin), b[1], b[2])
        if same in by_key:
            where = regions if b[1] == GLOBAL_REGION else [b[1]]
            pairs += [(r, SAME, same, b, blind_to) for r in where]
        offset = (str(twin), GLOBAL_REGION, b[2])
        if b[1] != GLOBAL_REGION and offset in by_key:
            pairs.append((b[1], OFFSET, offset, b, blind_to))
    return pairs


def build_blind_twins(candidates: Sequence[Mapping[str, Any]], regions: Sequence[str],
                      groups: Mapping[tuple, GroupSums]) -> pd.DataFrame:
    """One row per pair of ``twin_pairs``: sighted - blind AgeGender log-loss on the same rows
    (validation ``val_*``, natural test day ``test_*``, its new users ``new_*``), global first,
    then the regions by name; empty (with the columns) when no candidate is a blind twin."""
    margin, on_test = margin_lookup(groups), slice_margin_lookup(groups)
    rows = []
    for region, comparison, s, b, blind_to in twin_pairs(candidates, regions):
        row = {"region": region, "comparison": comparison, "sighted": candidate_label(*s),
               "blind": candidate_label(*b), "blind_to": ", ".join(blind_to)}
        for p, m in (("val", margin(s, b, region)), ("test", on_test(s, b, region, TEST_PART)),
                     ("new", on_test(s, b, region, NEW_USERS_TEST_PART))):
            for w in ("diff", "se", "z"):
                row[f"{p}_{w}"] = getattr(m, w) if m else math.nan
        rows.append(row)
    order = {r: i for i, r in enumerate(sorted(regions, key=lambda r: (r != GLOBAL_REGION, r)))}
    out = pd.DataFrame(rows, columns=COLUMNS)
    if len(out):
        out = out.sort_values(["region", "comparison", "sighted"],
                              key=lambda s: s.map(order) if s.name == "region" else s)
    return out.reset_index(drop=True)


def blind_twins_text(table: Any) -> pd.DataFrame:
    """``build_blind_twins`` for reading: each margin as ``-0.0031 ± 0.0009 (z -3.44)``."""
    t = pd.DataFrame(table)
    cols = ["region", "comparison", "sighted", "blind", "blind_to"]
    if not len(t):
        return pd.DataFrame(columns=cols + [f"{p}_sighted_minus_blind" for p in PARTS])
    for p in PARTS:
        t[f"{p}_sighted_minus_blind"] = [margin_text(d, s, z) for d, s, z in
                                         zip(t[f"{p}_diff"], t[f"{p}_se"], t[f"{p}_z"])]
    return t[cols + [f"{p}_sighted_minus_blind" for p in PARTS]]


def print_blind_twins(table: Any, out: Any) -> None:
    """Print ``blind_twins_text`` of a run's ``blind_twins`` artifact for `pythia report`
    (nothing for a run without blind twins, or from before the table)."""
    if table is None or not len(table):
        return
    print("\nBlind twins (AgeGender log-loss, sighted - blind candidate on the same rows, ± "
          "its SE clustered by user: below 0 the features the blind one never saw help, "
          "beyond noise at z below -2; on validation, the natural test day and its new "
          "users)", file=out)
    print(blind_twins_text(table).to_string(index=False), file=out)
