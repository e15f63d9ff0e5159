"""A temperature per bin of the user's activity today (issue 15): AgeGender's logits are
divided by the temperature of the row's bin of ``user_impressions_today``, not by one.

Why: measured before it was built (docs/new-users.md, session 35), the models are a little
under-confident on light users and far over-confident on heavy ones (the default run's MLP
multipliers, fitted on validation: 0.875, 0.915, 1.018, 1.222, 2.175 from 0-2 to 100+
impressions), and one refitted temperature gains nothing. One temperature per bin, fitted on
the run's validation rows, took that MLP from 1.041 to 1.033 x the population posterior on
users no model saw, and past the class prior on power user-days.

Where: it is fitted on validation beside the head's global temperature (``Model.fit``), for
AgeGender only (gender and age are its marginals), and applied wherever a model's
probabilities are made: ``Model.predict_proba``, the bundle's NumPy scorer
(``scoring.runtime.FusedMLP``) and the ONNX graph (``scoring.onnx_graph``), which read the
export entry ``EXPORT_KEY``.

The bins are decided on the *normalised* column (the model input every one of those paths
has), with edges at half counts (``normalize(c - 0.5)``): a whole count is never near an edge,
so float32 and float64 paths put a row in the same bin. A missing count is normalised to the
mean (``NumericStats.normalize``) and takes that value's bin.

Thin bins share a temperature: from the lightest bin up, bins are pooled until the pool has
``MIN_BIN_ROWS`` validation rows (a thin last pool joins the one before), and one temperature
is fitted per pool. Rows of a heavy bin come from few users (the default run's 1,621
validation rows with 100+ impressions are 18 users'; a region's 104 such rows one or two
users'), and a temperature fitted on one user's rows is that user's, not the bin's: in the
first run built with a 100-row floor and no pooling, LATAM's regional logreg and TabNet
fitted 0.92 and 0.74 on their 104 rows of 100+, at or below their light users' 0.92 and
1.06, where every other region's models fitted 1.6-9.9. A pool whose own fit does not beat
the global temperature on its rows keeps the global one. With the rows' user groups (the
TFRecords' ``user_group``), a pool's own fit *below* the global temperature (sharper) must
beat it by more than ``TEMP_Z_MIN`` user-clustered SEs (session 41).

**The deep part by activity** (a wide & deep model, session 38): the pools from one activity
up may score AgeGender with the model's wide part alone (logistic regression), each at its
own temperature, when that cut beats the whole model at its best on validation (``deep`` per
bin; the raw logits then carry the deep part's own under ``DEEP``). One cut, not a choice per
pool: a heavy pool's rows are a few users', and chosen pool by pool a seed kept the deep part
at 100+ (temperature 14) between two wide-only pools, on noise. On the default world the MLP's
deep part learns heavy users from a few hundred training users' many rows and is worse than
its wide part on heavy users no model saw (docs/new-users.md, session 38).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from pythia import features
from pythia.config import TrainConfig
from pythia.config_parse import check_bins
from pythia.models import priors as pr
from pythia.models import start_temp
from pythia.models.activity_cut import (CUT_Z_HEAVY, CUT_Z_MIN, HEAVY_FROM,  # noqa: F401
                                        known_groups, noise_aware_cut,
                                        pool_bars, wide_only_z)
from pythia.models.export import ACTIVITY_TEMPERATURE
from pythia.models.links import link_probabilities

FEATURE = features.USER_IMPRESSIONS_TODAY
GROUPS = features.USER_GROUP  # the validation rows' user groups (the cut's noise test)
JOINT = "age_gender"
DEEP = "age_gender:deep"  # a wide & deep model's raw logits: AgeGender's deep part alone
# A bin starts at each count: 0-2, 3-9, 10-29, 30-99, 100+ impressions today (the bins the
# session-35 measurement used); () = one temperature, as before.
DEFAULT_BINS = TrainConfig.activity_bins
# Validation rows a pool of bins needs for its own temperature (see the module docstring)
MIN_BIN_ROWS = 500
# With the rows' user groups, a pool's own temperature below the global one (sharper) ships
# only when it beats the global one there by more than TEMP_Z_MIN user-clustered SEs; a
# softer one on any gain, as without groups. Log-loss is unbounded on over-confidence and
# heavy pools' rows are a few users': on the skewed world (session 41) pools of 689 and 914
# validation rows were 25 and 7 users', whose temperatures 0.58 and 0.40 sharpened logistic
# regression on power users to 1.209 x the population posterior on fresh users (the class
# prior: 1.019). Tested both ways at 2 SEs, the default world's logistic regression lost its
# heavy pools' tempering (30+: 3 -> the global 1.24; power users 1.071 on fresh users).
TEMP_Z_MIN = 2.0
# The optional entry of an MLP's ``numpy_layers`` export: {"feature", "edges", "temperature"}.
EXPORT_KEY = ACTIVITY_TEMPERATURE


def normalized_edges(encoders: features.Encoders, counts: Sequence[int]) -> tuple[float, ...]:
    """The bins' edges on the normalised column: ``normalize(c - 0.5)`` per count."""
    stats = encoders.numeric[FEATURE]
    return tuple(float(e) for e in stats.normalize(np.asarray(counts, np.float64) - 0.5))


def bin_of(edges: Sequence[float], x: Any) -> np.ndarray:
    """Per row, its bin: how many edges its normalised value reaches (``x >= edge``)."""
    return np.searchsorted(np.asarray(edges, np.float64), np.asarray(x, np.float64),
                           side="right")


def scaled_probabilities(logits: np.ndarray, temperature: np.ndarray, link: str) -> np.ndarray:
    """``link(logits / T)`` with one T per row."""
    t = np.asarray(temperature, np.float64).reshape(-1, 1)
    return link_probabilities(np.asarray(logits, np.float64) / t, link)


@dataclass(frozen=True)
class ActivityTemperature:
    """The fitted temperatures: bin k holds counts in ``[counts[k-1], counts[k])``."""

    counts: tuple[int, ...]
    edges: tuple[float, ...]  # normalized_edges(counts)
    temperature: tuple[float, ...]  # per bin: len(counts) + 1
    rows: tuple[int, ...]  # validation rows per bin the fit saw
    fitted: tuple[bool, ...]  # False: the global temperature (no gain on the pool's rows)
    pools: tuple[int, ...]  # per bin, its pool (bins of one pool share their temperature)
    # a warm-started model's: its start's temperatures times this scale (``from_start``)
    start_scale: float | None = None
    # per bin, False: AgeGender is the wide part alone there (None: the whole model everywhere)
    deep: tuple[bool, ...] | None = None
    # per bin, the z of the deep part's lead on its pool in the cut's noise test (None: not
    # tested, or too few user groups for an SE; ``noise_aware_cut``)
    lead_z: tuple[float | None, ...] | None = None
    # a kept start's scale as fitted and the z of its gain over 1 (None: not tested;
    # ``from_start``); ``start_scale`` is 1 when the gain is within noise
    fitted_scale: float | None = None
    scale_z: float | None = None

    def per_row(self, x: Any) -> np.ndarray:
        """Each row's temperature, from its normalised activity."""
        return np.asarray(self.temperature, np.float64)[bin_of(self.edges, x)]

    def logits(self, raw: Mapping[str, np.ndarray], x: Any) -> np.ndarray:
        """AgeGender's raw logits with the deep part taken out of the rows of wide-only bins
        (``raw[DEEP]``: the deep part's own logits; needed when some bin is wide-only)."""
        z = np.asarray(raw[JOINT], np.float64)
        if self.deep is None or all(self.deep):
            return z
        off = ~np.asarray(self.deep, bool)[bin_of(self.edges, x)]
        return z - np.where(off[:, None], np.asarray(raw[DEEP], np.float64), 0.0)

    def to_json(self) -> dict[str, list]:
        return {"counts": list(self.counts), "edges": list(self.edges),
                "temperature": list(self.temperature), "rows": list(self.rows),
                "fitted": list(self.fitted), "pools": list(self.pools),
                "start_scale": self.start_scale,
                "deep": None if self.deep is None else list(self.deep),
                "lead_z": None if self.lead_z is None else list(self.lead_z),
                "fitted_scale": self.fitted_scale, "scale_z": self.scale_z}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "ActivityTemperature":
        return cls(tuple(int(c) for c in doc["counts"]), tuple(float(e) for e in doc["edges"]),
                   tuple(float(t) for t in doc["temperature"]),
                   tuple(int(n) for n in doc["rows"]), tuple(bool(f) for f in doc["fitted"]),
                   # saved before the pools (commit 101fb09): a pool per bin
                   tuple(int(g) for g in doc.get("pools", range(len(doc["temperature"])))),
                   _float_or_none(doc.get("start_scale")),
                   None if doc.get("deep") is None else tuple(bool(d) for d in doc["deep"]),
                   None if doc.get("lead_z") is None else tuple(
                       None if z is None else float(z) for z in doc["lead_z"]),
                   _float_or_none(doc.get("fitted_scale")), _float_or_none(doc.get("scale_z")))

    def export(self) -> dict[str, Any]:
        """The ``EXPORT_KEY`` entry: what a scorer needs to put a row in its bin (and, when
        some bin is wide-only, ``deep``: 1.0 or 0.0 per bin, the deep logits' factor)."""
        entry = {"feature": FEATURE, "edges": list(self.edges),
                 "temperature": list(self.temperature)}
        if self.deep is not None and not all(self.deep):
            entry["deep"] = [float(d) for d in self.deep]
        return entry

    def describe(self) -> str:
        """One entry per pool, e.g. '0-2: 1.094, 3-9: 1.145, 10-29: 1.274, 30+: 1.529 (global:
        no gain on its 1,048 rows)'."""
        starts, parts = (0,) + self.counts, []
        for pool in sorted(set(self.pools)):
            ks = [k for k, g in enumerate(self.pools) if g == pool]
            lo, hi = starts[ks[0]], (self.counts[ks[-1]] - 1 if ks[-1] < len(self.counts)
                                     else None)
            name = f"{lo}+" if hi is None else f"{lo}-{hi}"
            rows = sum(self.rows[k] for k in ks)
            wide = self.deep is not None and not self.deep[ks[0]]
            z = self.lead_z[ks[0]] if self.lead_z is not None else None
            notes = (["the wide part alone"] if wide else []) + (
                [] if z is None else [f"the deep part's lead z {z:.2f}"])
            parts.append(f"{name}: {self.temperature[ks[0]]:.3f}" + (
                f" ({'; '.join(notes)})" if notes else "") + (
                "" if self.fitted[ks[0]] else f" (global: no gain on its {rows:,} rows)"))
        return (f"the start's bins x {self.start_scale:.3f}{self._scale_note()}: "
                if self.start_scale is not None else "") + ", ".join(parts)

    def _scale_note(self) -> str:
        """The scale's noise test: ' (z -3.10)' kept, ' (fitted 1.028, z -1.42: within
        noise)' not; '' untested."""
        if self.fitted_scale is None:
            return ""
        z = "no SE" if self.scale_z is None else f"z {self.scale_z:.2f}"
        return (f" ({z})" if self.fitted_scale == self.start_scale
                else f" (fitted {self.fitted_scale:.3f}, {z}: within noise)")


def _float_or_none(x: Any) -> float | None:
    return None if x is None else float(x)


def fit(logits: np.ndarray, y: np.ndarray, activity: Any, encoders: features.Encoders,
        counts: Sequence[int], global_temperature: float, link: str = "softmax",
        min_rows: int | None = None, start: ActivityTemperature | None = None,
        deep: np.ndarray | None = None, groups: np.ndarray | None = None,
        z_min: float | Sequence[float] = CUT_Z_MIN, cut: int | None = None,
        noise_cut: bool = True, test_scale: bool = True) -> ActivityTemperature | None:
    """Per pool of bins of ``activity`` (normalised; ``pool_bins`` with ``min_rows``, default
    ``MIN_BIN_ROWS``), the temperature minimising the pool's validation log-loss of
    ``link(logits / T)``; None without bins, without the activity column, with one pool (that
    is the global temperature's fit) or when no pool gains over the global temperature. With
    ``deep`` (the deep part's own logits of a wide & deep model) the pools from one activity
    up are scored by the wide part alone (``logits - deep``, each at its own temperature),
    the cut that gives the least validation loss (none: no pool is wide-only), moved down
    while the deep part's lead over the wide part on the pool it would leave is within noise
    (``noise_aware_cut`` at ``z_min``, one or one per bin: a pool's is its lightest bin's;
    needs ``groups``, each row's user group, and
    ``noise_cut``); ``cut`` (0: every pool wide-only, a large number: none) replaces that
    choice. With ``groups`` a pool's own temperature below the global one ships only when it
    beats it there by more than ``TEMP_Z_MIN`` user-clustered SEs (else by any margin). With
    ``start`` (the bins of the model a warm-started one started from): ``from_start``, its
    scale noise-tested when ``groups``, ``noise_cut`` and ``test_scale``."""
    counts = check_bins(counts)
    min_rows = MIN_BIN_ROWS if min_rows is None else int(min_rows)
    if not counts or activity is None:
        return None
    edges = normalized_edges(encoders, counts)
    bins = bin_of(edges, activity)
    rows = tuple(int(n) for n in np.bincount(bins, minlength=len(counts) + 1))
    if start is not None and start.counts == counts and start.edges == edges:
        return from_start(start, np.asarray(logits), np.asarray(y, np.int64), bins, rows, link,
                          deep, known_groups(groups, len(bins)) if noise_cut and test_scale
                          else None)
    groups = known_groups(groups, len(bins))
    pools = pool_bins(rows, min_rows)
    if len(set(pools)) < 2:
        return None
    y, logits, glob = np.asarray(y, np.int64), np.asarray(logits), float(global_temperature)
    # per pool, lightest first: (summed loss, temperature, fitted) with the deep part, and
    # (summed loss, temperature) with the wide part alone; per row, the deep part's loss minus
    # the wide part's (the noise test's differences)
    with_deep, wide_only = [], []
    pool_of = np.asarray(pools)[bins]
    d = np.zeros(len(y))
    for pool in sorted(set(pools)):
        mask = pool_of == pool
        yk, z = y[mask], logits[mask]

        def row_loss(z: np.ndarray, temp: float) -> np.ndarray:
            return pr.temperature_row_losses(z, yk, temp, link)
        gk = None if groups is None else groups[mask]
        own = pr.fit_temperature(z, yk, link)
        loss_g, loss_own = row_loss(z, glob), row_loss(z, own)
        best = ((loss_own.sum(), own, True, loss_own) if _gains(loss_own, loss_g, gk,
                                                                   own < glob)
                else (loss_g.sum(), glob, False, loss_g))
        with_deep.append(best[:3])
        if deep is not None:
            z_wide = z - np.asarray(deep)[mask]
            t_wide = pr.fit_temperature(z_wide, yk, link)
            loss_w, loss_wg = row_loss(z_wide, t_wide), row_loss(z_wide, glob)
            if not _gains(loss_w, loss_wg, gk, t_wide < glob):
                t_wide, loss_w = glob, loss_wg
            wide_only.append((loss_w.sum(), t_wide))
            d[mask] = best[3] - loss_w
    # the deep part below one cut, the wide part alone from it up (one choice, not one per
    # pool: a heavy pool's rows are a few users'); no cut when none gains
    n = len(with_deep)
    forced = cut is not None and deep is not None
    cut = n if deep is None else min(max(int(cut), 0), n) if forced else min(
        range(n, -1, -1), key=lambda c: sum(w[0] for w in with_deep[:c]) + sum(
            w[0] for w in wide_only[c:]))
    tested: dict[int, float | None] = {}
    if deep is not None and groups is not None and noise_cut and not forced:
        cut = noise_aware_cut(cut, d, pool_of, groups, pool_bars(z_min, pools), tested)
    chosen = [(t, f, True) for _, t, f in with_deep[:cut]] + [(t, True, False)
                                                               for _, t in wide_only[cut:]]
    temps, fitted, on = zip(*(chosen[g] for g in pools))
    if not any(fitted):  # the global temperature everywhere: nothing to add
        return None
    return ActivityTemperature(counts, edges, tuple(temps), rows, tuple(fitted), pools,
                               deep=None if deep is None else tuple(on),
                               lead_z=tuple(tested.get(g) for g in pools) if tested else None)


def _gains(loss: np.ndarray, loss_base: np.ndarray, groups: np.ndarray | None,
           sharper: bool = True) -> bool:
    """Whether per-row ``loss`` (a pool's own temperature) beats ``loss_base`` (the global
    one): when ``sharper`` and with ``groups``, beyond ``TEMP_Z_MIN`` user-clustered SEs (no
    SE: no); else by any margin."""
    if groups is None or not sharper:
        return bool(loss.sum() < loss_base.sum())
    return start_temp.beyond_noise(loss - loss_base, groups, TEMP_Z_MIN)[0]


def fit_for(model: Any, raw: Mapping[str, np.ndarray], y: Mapping[str, np.ndarray],
            global_temperature: float, noise_test: bool = True, cut: int | None = None
            ) -> ActivityTemperature | None:
    """``fit`` of a model's AgeGender raw logits (``raw[JOINT]``, and ``raw[DEEP]`` when the
    model has a deep part its wide part can do without) on validation rows ``y`` (labels, and
    the activity column when kept): its ``activity_bins``, no bins when it does not bin by
    activity (``bins_by_activity``), and a warm start's start bins (``from_start``). The cut
    takes the noise test when ``y`` has the rows' user groups (``GROUPS``), unless
    ``noise_test`` is False: the least-loss cut; ``cut``: that cut (``fit``). A model that
    kept a start without bins has none either (unless ``noise_test`` is False): its one
    temperature is its start's (``start_temp.fit_temperatures``)."""
    kept, start = getattr(model, "kept_start", False), model.start
    if kept and noise_test and start is not None and start.activity_temperature is None:
        return None
    return fit(raw[JOINT], y[JOINT], y.get(FEATURE) if model.bins_by_activity else None,
               model.encoders, model.train_cfg.activity_bins, global_temperature,
               model.link(JOINT),
               start=start.activity_temperature if start is not None else None,
               deep=raw.get(DEEP), groups=y.get(GROUPS),
               z_min=wide_only_z(model, model.train_cfg.activity_bins), cut=cut,
               noise_cut=noise_test, test_scale=kept)


def from_start(start: ActivityTemperature, logits: np.ndarray, y: np.ndarray,
               bins: np.ndarray, rows: tuple[int, ...], link: str,
               deep: np.ndarray | None = None, groups: np.ndarray | None = None
               ) -> ActivityTemperature:
    """A warm-started (regional) model's bins: its start's per-bin temperatures -- fitted on
    the start's validation, four times the users of a region's -- times one scale fitted on
    its own validation rows, and its start's wide-only bins (``deep``: the warm-started
    model's deep logits, taken out of those bins' rows). A region's own heavy bins are a few
    users': seed 1's regional NA MLP fitted 1.51 for 30+ where its global start had 1.76 and
    2.98, and scored 1.067 x population on fresh NA users; with the start's bins, 1.044
    (docs/new-users.md, session 36).

    With ``groups`` (the rows' user groups; ``fit_for`` gives them for a model that kept its
    start) the scale ships only when it beats 1 on these rows by more than
    ``start_temp.START_SCALE_Z`` user-clustered SEs, in either direction; else 1, the start's
    bins as they are (no SE: 1). The record keeps the fitted scale and its z (``describe``)."""
    gates = start.deep if deep is not None else None
    if gates is not None and not all(gates):
        off = ~np.asarray(gates, bool)[bins]
        logits = logits - np.where(off[:, None], np.asarray(deep), 0.0)
    # T_row = scale * T_start[bin]: the scale is a plain temperature of the start-scaled logits
    scaled = logits / np.asarray(start.temperature, np.float64)[bins][:, None]
    fitted = pr.fit_temperature(scaled, y, link, bounds=(0.25, 4.0))
    scale, z = fitted, None
    if groups is not None:
        gain = (pr.temperature_row_losses(scaled, y, fitted, link)
                - pr.temperature_row_losses(scaled, y, 1.0, link))
        gains, z = start_temp.beyond_noise(gain, groups)
        scale = fitted if gains else 1.0
    return ActivityTemperature(start.counts, start.edges,
                               tuple(scale * t for t in start.temperature), rows, start.fitted,
                               start.pools, scale, gates,
                               fitted_scale=None if groups is None else fitted, scale_z=z)


def pool_bins(rows: Sequence[int], min_rows: int) -> tuple[int, ...]:
    """Per bin, its pool: from the lightest bin up, bins join a pool until it holds
    ``min_rows`` rows; a last pool short of them joins the one before."""
    pools, pool, held = [], 0, 0
    for n in rows:
        pools.append(pool)
        held += n
        if held >= min_rows:
            pool, held = pool + 1, 0
    if held < min_rows and pool > 0 and pools[-1] == pool:  # a thin last pool
        pools = [min(g, pool - 1) for g in pools]
    return tuple(pools)


def to_json(fitted: ActivityTemperature | None) -> dict[str, list] | None:
    """What a model's meta and fit summary record (None: one temperature)."""
    return fitted.to_json() if fitted is not None else None


def from_json(doc: Mapping[str, Any] | None) -> ActivityTemperature | None:
    """``to_json``'s inverse (a model saved before the bins had none)."""
    return ActivityTemperature.from_json(doc) if doc else None


def with_activity(y: dict[str, np.ndarray], data: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Validation labels ``y`` with the rows' normalised activity under ``FEATURE`` (what
    ``fit`` bins by) and their user groups under ``GROUPS`` (its cut's noise test), for the
    columns ``data`` has."""
    if FEATURE in data:
        y[FEATURE] = np.asarray(data[FEATURE], np.float64)
    if GROUPS in data:
        y[GROUPS] = np.asarray(data[GROUPS], np.int64)
    return y
