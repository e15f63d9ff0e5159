"""Out-of-fold calibration of the validation day's predictions (issue 15).

A candidate's temperatures (one per head, AgeGender's per bin of the user's activity) are
fitted on the validation rows, and the validation predictions the champion rule, the regional
guard and the card read were scored with those same temperatures: an in-sample figure. Its
optimism is not the same for every candidate: a regional model's scale is fitted on its
region's rows alone, a global model's bins on every region's. Measured on the default world
(seed 0, six repeats of a 2-fold split by user group; docs/new-users.md, session 47),
re-fitting each fold's temperatures on the other fold moved the regional MLPs' validation
margin against the global one by +0.0006 to +0.0021 nats towards the global model, the size
of the regional gains the guard decides on.

So the train step writes each validation row's prediction under temperatures fitted on the
*other* folds of users (``N_FOLDS``, by ``user_group``): what the candidate would score on
users its calibration never saw. The shipped model keeps the temperatures fitted on every
validation row; only the validation predictions file changes.

**Per region, for every candidate alike.** A region's validation rows are scored out of fold
when they hold at least ``MIN_REGION_GROUPS`` user groups (``fold_regions``: each fold then
holds the user groups a margin's SE needs), by every candidate that scores them, global or
regional; a smaller region is scored in-sample by all of them, so the candidates a region
compares are always scored the same way. (Decided per candidate instead, a small region
compared its regional candidates in-sample against global ones out of fold; and on a small
first run, 27 user groups in all, folds of five users calibrated so much worse than the full
fit that the class prior led validation and nothing was blessed: session 47.)

**The activity cut stays as shipped.** A fold refits the temperatures (``activity_temp
.fit_for``; a warm-started model's: its start's bins of the same fold times its own scale)
with the shipped model's wide-only bins: the cut is a discrete choice with its own noise test
(``wide_only_z``), and re-choosing it per fold flipped a few heavy users' rows between the
deep and the wide part, which made seed 0's EU margin against logistic regression 67% noisier
(SE 0.0033 -> 0.0055) for no change of the estimate (session 48). Rows without a user group
(shards written before the column) keep the in-sample calibration.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pythia import features
from pythia.models import activity_temp as at
from pythia.models import start_temp

N_FOLDS = 5
# a region's validation rows are scored out of fold from this many user groups: each fold
# holds the groups a margin's standard error needs (``evaluate.margins.MIN_USER_GROUPS``)
MIN_REGION_GROUPS = 20 * N_FOLDS
GROUPS = features.USER_GROUP


def fold_regions(tf_manifest: Mapping, regions: Sequence[str] | None = None) -> tuple[str, ...]:
    """The regions (of ``regions``, default all with validation rows) whose validation rows
    hold at least ``MIN_REGION_GROUPS`` distinct user groups: the rows every candidate
    scores out of fold. Reads the validation split's user groups once."""
    from pythia import tfrecords

    entry = tf_manifest["splits"].get(features.VALIDATION, {})
    with_rows = sorted(r for r, n in entry.get("rows_by_region", {}).items() if int(n) > 0)
    out = []
    for r in with_rows if regions is None else [r for r in with_rows if r in regions]:
        seen: set[int] = set()
        for data in tfrecords.iter_numpy(tf_manifest, features.VALIDATION, [r]):
            if GROUPS in data:
                seen.update(np.unique(data[GROUPS][data[GROUPS] >= 0]).tolist())
        if len(seen) >= MIN_REGION_GROUPS:
            out.append(r)
    return tuple(out)


def candidate_fold_regions(region: str, regions: Sequence[str]) -> tuple[str, ...]:
    """Of the out-of-fold ``regions``, those a candidate of ``region`` scores: all of them for
    the global candidate, its own region for a regional one."""
    from pythia.config import GLOBAL_REGION

    return tuple(regions) if region == GLOBAL_REGION else tuple(
        r for r in regions if r == region)


def fold_of(groups: Any) -> np.ndarray:
    """Each row's fold (0..N_FOLDS-1) from its user group; -1 for an unknown group."""
    g = np.asarray(groups, dtype=np.int64)
    return np.where(g >= 0, g % N_FOLDS, -1)


def fold_calibrations(model: Any, raw: Mapping[str, np.ndarray], y: Mapping[str, np.ndarray]
                      ) -> list[tuple[dict, Any]] | None:
    """Per fold, (temperature per head, activity temperature) fitted on the validation rows
    of the other folds, as ``Model._fit_and_calibrate`` fits them but with the shipped
    wide-only bins (a warm-started model's from its start's fold: the start's
    ``fold_calibration``); None when the model scores no region out of fold
    (``model.fold_regions``, set by the train step) or its rows carry no user groups.

    Raises:
        ValueError: a warm start whose start has bins but no folds (its region's candidates
            would be scored in two ways)."""
    groups = y.get(GROUPS)
    if not getattr(model, "fold_regions", ()) or groups is None:
        return None
    fold = fold_of(groups)
    # a warm start's bins (and temperatures: a kept start's reference) were fitted on every
    # fold of its validation (a superset of these rows): each fold starts from the start's
    # fitted without that fold, or none is honest
    start = getattr(model, "start", None)
    start_folds = None if start is None else getattr(start, "fold_calibration", None)
    if start is not None and start.activity_temperature is not None:
        if start_folds is None:
            raise ValueError("a regional candidate scored out of fold needs its start's "
                             "fold calibrations (fit the start with fold_regions)")
    out = []
    for f in range(N_FOLDS):
        rows = np.flatnonzero((fold >= 0) & (fold != f))
        r = {k: np.asarray(v)[rows] for k, v in raw.items()}
        yy = {k: np.asarray(v)[rows] for k, v in y.items()}
        shipped = ((start.temperature, start.activity_temperature) if start_folds is not None
                   else None)
        try:
            if start_folds is not None:
                start.temperature, start.activity_temperature = start_folds[f]
            temps = {**model.temperature, **start_temp.fit_temperatures(model, r, yy)}
            cut = shipped_cut(model.activity_temperature, yy.get(at.FEATURE))
            out.append((temps, at.fit_for(model, r, yy, temps[at.JOINT], cut=cut)))
        finally:
            if start_folds is not None:
                start.temperature, start.activity_temperature = shipped
    return out


def shipped_cut(shipped: Any, activity: Any) -> int | None:
    """The shipped fit's wide-only cut in the pools ``activity_temp.fit`` makes of these
    rows (the pool holding its first wide-only bin; past the last pool when every bin keeps
    the deep part); None without a cut or without the activity column."""
    if shipped is None or shipped.deep is None or activity is None:
        return None
    off = [b for b, on in enumerate(shipped.deep) if not on]
    if not off:
        return len(shipped.deep)
    bins = at.bin_of(shipped.edges, activity)
    pools = at.pool_bins(np.bincount(bins, minlength=len(shipped.deep)), at.MIN_BIN_ROWS)
    return pools[off[0]]


def predict_validation(model: Any, X: Mapping[str, np.ndarray], region: str
                       ) -> dict[str, np.ndarray]:
    """``model.predict_proba`` of ``region``'s validation rows: out of fold when the model
    scores ``region`` so (``model.fold_regions``), each row under the calibration fitted
    without its fold (``fold_calibrations``, kept by ``fit`` as ``model.fold_calibration``);
    else, and for rows without a user group, as shipped. Each row is predicted once (the
    folds partition the rows)."""
    folds = getattr(model, "fold_calibration", None)
    if folds is None or GROUPS not in X or region not in getattr(model, "fold_regions", ()):
        return model.predict_proba(X)
    fold = fold_of(X[GROUPS])
    shipped = model.temperature, model.activity_temperature
    out: dict[str, np.ndarray] = {}
    try:
        for f in range(-1, N_FOLDS):
            rows = fold == f
            if not rows.any():
                continue
            model.temperature, model.activity_temperature = shipped if f < 0 else folds[f]
            part = model.predict_proba({k: np.asarray(v)[rows] for k, v in X.items()})
            for t, p in part.items():
                out.setdefault(t, np.empty((len(fold), p.shape[1]), p.dtype))[rows] = p
    finally:
        model.temperature, model.activity_temperature = shipped
    return out
