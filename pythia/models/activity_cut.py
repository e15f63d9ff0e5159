"""The activity cut's noise test (``activity_temp``): in which pools of activity bins an MLP's
deep part has earned its place over its wide part, beyond noise, on validation.

A heavy pool's validation rows are a few users' rows, so a lead of the deep part there is
tested against its user-clustered SE (``evaluate.margins.paired_margin``), at a bar per bin:
``wide_only_z`` in the light bins, ``wide_only_z_heavy`` from ``wide_only_heavy_from``
impressions today up.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pythia.config_parse import check_bins

# The deep part is kept in a heavy pool only when it beats the wide part there by more than
# this many user-clustered SEs of the validation margin (the MLP hparam ``wide_only_z``). One,
# not the champion rule's two: on three seeds of the default world, 2 moved the cut to 10+ on
# two of them, and seed 2's MLP was 0.0016 worse on fresh users than with 1, which cut at
# 30+ on both (docs/new-users.md, session 40). A bin's choice is between two parts of one
# model, not a bet on a new one.
CUT_Z_MIN = 1.0
# ... except in the bins from HEAVY_FROM impressions today up (``wide_only_z_heavy``,
# ``wide_only_heavy_from``): TEMP_Z_MIN's reasons, a few users' rows and unbounded loss on
# over-confidence. A 4x world's seed 0 kept its deep part at 100+ on a lead of z 1.21 and was
# 1.0397 x population on fresh power user-days; at 2 SEs there, 1.0272 (session 53).
CUT_Z_HEAVY, HEAVY_FROM = 2.0, 30


def noise_aware_cut(cut: int, d: np.ndarray, pool_of: np.ndarray, groups: np.ndarray,
                    z_min: float | Mapping[int, float] = CUT_Z_MIN,
                    tested: dict | None = None) -> int:
    """The least-loss ``cut`` moved down pool by pool while the deep part's lead on the rows
    of the pool just below it is within ``z_min`` user-clustered SEs (no SE -- too few user
    groups -- is within noise): the deep part keeps a pool only on evidence, and the first
    pool that gives it stops the descent (one cut). Each pool is tested on its own rows: a
    test on every pool the cut would pass drowned a light pool's clear lead in the heavy
    users' noise (seed 0 of the default world went wide-only from 3+). ``d``: per row, the
    deep part's log-loss minus the wide part's; ``pool_of``: each row's pool; ``groups``:
    each row's user group; ``z_min``: one bar or one per pool; ``tested`` (optional) gets
    each tested pool's z (None: no SE).
    Rows without a group (-1: shards written before the column) leave ``cut`` as it is.

    Why: a heavy pool's validation rows are a few users', and the least loss followed them.
    Session 39's seed 1 kept the deep part at 100+ on validation's say; on fresh users the
    MLP was then worse than logistic regression on power user-days (1.0488 against 1.0301 x
    the population posterior), and its champion margin's SE was 0.050, against 0.002 with
    logistic regression scoring its rows from 30+ (``benchmarks/heavy_routing.py``)."""
    from pythia.evaluate.margins import paired_margin  # evaluate's noise test (lazy: ~1 s)
    groups = known_groups(groups, len(d))
    if groups is None:
        return cut
    c = cut
    while c > 0:
        rows = pool_of == c - 1
        margin = paired_margin(d[rows], np.ones(int(rows.sum())), groups[rows])
        if tested is not None:
            tested[c - 1] = float(margin.z) if np.isfinite(margin.z) else None
        bar = z_min[c - 1] if isinstance(z_min, Mapping) else z_min
        if margin.z < -bar:  # the deep part is better there beyond noise: it stays
            break
        c -= 1
    return c


def known_groups(groups: Any, n: int) -> np.ndarray | None:
    """The rows' user groups, or None when there are none for every row (-1: shards written
    before the column)."""
    if groups is None:
        return None
    groups = np.asarray(groups, np.int64)
    return groups if len(groups) == n and not (groups < 0).any() else None


def wide_only_z(model: Any, counts: Sequence[int]) -> tuple[float, ...]:
    """Per bin of ``counts``, the noise test's bar of ``model``: its hparam ``wide_only_z``
    (else ``CUT_Z_MIN``), ``wide_only_z_heavy`` (else ``CUT_Z_HEAVY``) from
    ``wide_only_heavy_from`` (else ``HEAVY_FROM``) impressions today up."""
    h = getattr(model, "hparams", {})
    light, heavy = float(h.get("wide_only_z", CUT_Z_MIN)), float(
        h.get("wide_only_z_heavy", CUT_Z_HEAVY))
    start = int(h.get("wide_only_heavy_from", HEAVY_FROM))
    return tuple(heavy if low >= start else light for low in (0, *check_bins(counts)))


def pool_bars(z_min: float | Sequence[float], pools: Sequence[int]
              ) -> float | dict[int, float]:
    """``z_min`` per pool (a pool's bar is its lightest bin's), or the one bar as it is."""
    if np.ndim(z_min) == 0:
        return float(z_min)
    bars: dict[int, float] = {}
    for b, pool in enumerate(pools):
        bars.setdefault(int(pool), float(z_min[b]))
    return bars
