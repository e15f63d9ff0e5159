"""A warm-started (regional) model's calibration from its start's (issue 15).

A regional candidate starts from the fitted global one (``[train] regional_start =
"global"``). Its AgeGender keeps the start's per-bin temperatures times one scale fitted on
its region's validation rows (``activity_temp.from_start``): a region's own heavy bins
are a few users'. When the regional fit kept its start (``Model.kept_start``: the MLP's epoch
0, logistic regression's or TabNet's no gain, gbdt's no tree added) the scale -- or, for a
model with one temperature, the refitted temperature (``fit_temperatures``) -- ships only when
it beats the start's on those rows by more than ``START_SCALE_Z`` user-clustered SEs; else the
candidate scores every row as its start. Untested, seed 0's EU MLP was the global network x
1.028 and lost 0.0007 +- 0.0002 to it on the test day (docs/new-users.md, session 58). A
network that moved refits its scale, untested: tested too, the shipped APAC and NA MLPs lost
part of their test-day gain (session 58).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from pythia import features
from pythia.models import priors as pr
from pythia.models.activity_cut import known_groups

JOINT = "age_gender"
GROUPS = features.USER_GROUP  # the validation rows' user groups

# A kept start's scale of its start's bins ships only when it beats 1 by more than this many
# user-clustered SEs on its validation rows (``activity_temp.from_start``; session 58).
START_SCALE_Z = 2.0


def fit_temperatures(model: Any, raw: Mapping[str, np.ndarray], y: Mapping[str, np.ndarray]
                     ) -> dict[str, float]:
    """Per head, the temperature of least validation log-loss (``Model.fit`` and each fold
    of ``crossfit``). A model that kept its start (``kept_start``) keeps its start's
    AgeGender temperature unless the refit beats it on these rows by more than
    ``START_SCALE_Z`` user-clustered SEs (the rows' ``GROUPS``; without them, the refit):
    ``activity_temp.from_start``'s rule, for a model with one temperature (``activity_bins
    = []``)."""
    temps = {t: pr.fit_temperature(raw[t], y[t], model.link(t)) for t in model.heads}
    start = model.start
    groups = known_groups(y.get(GROUPS), len(y[JOINT])) if JOINT in temps else None
    if start is None or groups is None or not getattr(model, "kept_start", False):
        return temps
    z, own = np.asarray(raw[JOINT], np.float64), np.asarray(y[JOINT], np.int64)
    kept, link = float(start.temperature[JOINT]), model.link(JOINT)
    loss = pr.temperature_row_losses
    refit = loss(z, own, temps[JOINT], link) - loss(z, own, kept, link)
    if not beyond_noise(refit, groups)[0]:
        temps[JOINT] = kept
    return temps


def beyond_noise(d: np.ndarray, groups: np.ndarray, z_min: float = START_SCALE_Z
                 ) -> tuple[bool, float | None]:
    """Whether per-row loss differences ``d`` (a refit minus what it would replace) are below
    0 by more than ``z_min`` SEs clustered by ``groups``, and their z (None: no SE)."""
    from pythia.evaluate.margins import paired_margin  # evaluate's noise test (lazy: ~1 s)
    z = paired_margin(d, np.ones(len(d)), groups).z
    z = float(z) if np.isfinite(z) else None
    return z is not None and z < -z_min, z
