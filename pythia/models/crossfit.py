"""Out-of-fold calibration of the validation day's predictions (issue 15).

A candidate's temperatures (one per head, AgeGender's per bin of the user's activity, the
wide-only cut) are fitted on the validation rows, and the validation predictions the champion
rule, the regional guard and the card read were scored with those same temperatures: an
in-sample figure. Its optimism is not the same for every candidate: a regional model's scale
is fitted on its region's rows alone, a global model's bins on every region's. Measured on
the default world (seed 0, six repeats of a 2-fold split by user group; docs/new-users.md,
session 47), re-fitting each fold's temperatures on the other fold moved the regional MLPs'
validation margin against the global one by +0.0006 to +0.0021 nats towards the global
model, the size of the regional gains the guard decides on.

So the train step writes each validation row's prediction under temperatures fitted on the
*other* folds of users (``N_FOLDS``, by ``user_group``): what the candidate would score on
users its calibration never saw. The shipped model keeps the temperatures fitted on every
validation row; only the validation predictions file changes. Rows without a user group
(shards written before the column) and runs with too few user groups keep the in-sample
calibration. The folds refit exactly what ``Model._fit_and_calibrate`` fits
(``activity_temp.fit_for``; a warm-started model's start bins times its own scale), and a
regional model's fold starts from its global start's bins of the same fold: the start's bins
fitted on every validation row would carry the fold's own labels into it.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from pythia import features
from pythia.models import activity_temp as at
from pythia.models import priors as pr

N_FOLDS = 5
# fewer distinct user groups among the validation rows than this: no out-of-fold calibration
MIN_GROUPS = 4 * N_FOLDS
GROUPS = features.USER_GROUP


def fold_of(groups: Any) -> np.ndarray:
    """Each row's fold (0..N_FOLDS-1) from its user group; -1 for an unknown group."""
    g = np.asarray(groups, dtype=np.int64)
    return np.where(g >= 0, g % N_FOLDS, -1)


def fold_calibrations(model: Any, raw: Mapping[str, np.ndarray], y: Mapping[str, np.ndarray]
                      ) -> list[tuple[dict, Any]] | None:
    """Per fold, (temperature per head, activity temperature) fitted on the validation rows
    of the other folds, as ``Model._fit_and_calibrate`` fits them (a warm-started model's
    from its start's fold: the start's ``fold_calibration``); None without user groups, with
    fewer than ``MIN_GROUPS`` of them, or for a warm start whose start has no folds."""
    groups = y.get(GROUPS)
    if groups is None:
        return None
    fold = fold_of(groups)
    if len(np.unique(np.asarray(groups)[fold >= 0])) < MIN_GROUPS:
        return None
    # a warm start's bins were fitted on every fold of its validation (a superset of these
    # rows): each fold starts from the start's bins fitted without that fold, or none is honest
    start = getattr(model, "start", None)
    start_folds = None
    if start is not None and start.activity_temperature is not None:
        start_folds = getattr(start, "fold_calibration", None)
        if start_folds is None:
            return None
    out = []
    for f in range(N_FOLDS):
        rows = np.flatnonzero((fold >= 0) & (fold != f))
        r = {k: np.asarray(v)[rows] for k, v in raw.items()}
        yy = {k: np.asarray(v)[rows] for k, v in y.items()}
        temps = dict(model.temperature)
        for t in model.heads:
            temps[t] = pr.fit_temperature(r[t], yy[t], model.link(t))
        shipped = start.activity_temperature if start_folds is not None else None
        try:
            if start_folds is not None:
                start.activity_temperature = start_folds[f][1]
            out.append((temps, at.fit_for(model, r, yy, temps[at.JOINT])))
        finally:
            if start_folds is not None:
                start.activity_temperature = shipped
    return out


def predict_validation(model: Any, X: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``model.predict_proba`` of validation rows, each row under the calibration fitted
    without its fold (``fold_calibrations``, kept by ``fit`` as ``model.fold_calibration``);
    rows without a user group, and models without fold calibrations, as shipped. Each row
    is predicted once (the folds partition the rows)."""
    folds = getattr(model, "fold_calibration", None)
    if folds is None or GROUPS not in X:
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
