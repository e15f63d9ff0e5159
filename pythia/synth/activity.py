"""User activity: the world's discrete activity levels, the exposure a user accumulates since
UTC midnight, and the reference count of a user's impressions so far today.

A user's impressions are a Poisson process (``impressions``), so the number N of the same
user's impressions earlier that UTC day is, given the user, independent of the impression at t
and Poisson(a_u · H(t)) with H the intensity integrated from UTC midnight to t. Activity takes
one of a few levels, so the posterior can sum over levels instead of users (``posterior``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.special import gammaln, ndtr, pdtrc, xlogy

from pythia import geo
from pythia.features import IMPRESSION_ID, TS, TS_SECONDS, USER_ID
from pythia.synth.catalog import N_CLASS
from pythia.synth.places import HOUR, ZoneGroups

if TYPE_CHECKING:
    from pythia.synth.world import WorldConfig, WorldParams

DAY = 24 * HOUR
LEVEL_Z_SPAN = 2.8  # level edges cut the standard normal behind the lognormal evenly in [-2.8, 2.8]


def activity_levels(config: WorldConfig) -> np.ndarray:
    """(L,) activity multipliers (mean 1 under the lognormal): E[lognormal | its level's bin].

    The lognormal(-σ²/2, σ) of ``activity_sigma`` is cut where its normal z crosses
    ``linspace(-2.8, 2.8, L - 1)``; each level is the bin's exact conditional mean, so the
    population mean activity is that of the continuous lognormal.
    """
    L, sigma = config.activity_levels, config.activity_sigma
    if sigma == 0:
        return np.ones(L)
    edges = np.concatenate([[-np.inf], _z_edges(L), [np.inf]])
    mass = np.diff(ndtr(edges))
    return np.diff(ndtr(edges - sigma)) / mass


def activity_level_shares(config: WorldConfig) -> np.ndarray:
    """(L,) probability of each activity level (1 at one level when activity_sigma is 0)."""
    if config.activity_sigma == 0:
        return np.eye(config.activity_levels)[0]
    edges = np.concatenate([[-np.inf], _z_edges(config.activity_levels), [np.inf]])
    return np.diff(ndtr(edges))


def expected_weights(params: WorldParams) -> dict[str, np.ndarray]:
    """R, RN and the per-provider RP, RL, RNL (``population.realised_weights``' shapes)
    expected over the draw of the users and of the providers' labels.

    A World built on them gives the population posterior: what a model that knows the
    generative tables but not which users the world happened to draw can know. The realised
    form is sharper where groups hold few users (power users, single activity levels).
    """
    cfg = params.config
    power = np.array([1 - cfg.power_user_share, cfg.power_user_share])
    users = (cfg.n_users * power[:, None, None, None] * params.country_share[None, :, None, None]
             * params.prior[None, :, :, None] * params.theta[None, None])  # (s, cty, c, z)
    RN = activity_level_shares(cfg)[:, None, None, None, None] * users[None]
    rate = (float(params.base_rate) * params.activity_level[:, None]
            * np.array([1.0, cfg.power_user_multiplier]))  # (L, s)
    R = np.einsum("ls,lsckz->sckz", rate, RN)
    # provider p labels a user of country i with probability coverage[p, i], and its label is
    # the latest observation's: (P, country, class, label) over the draw of observation days
    covered = label_given_class(params)
    RL = covered[:, None, :, :, None, :] * R[None, ..., None]  # (P, s, cty, c, z, label)
    RNL = covered[:, None, None, :, :, None, :] * RN[None, ..., None]
    return {"R": R, "RN": RN, "RP": RL.sum(axis=-1), "RL": RL, "RNL": RNL}


def label_given_class(params: WorldParams) -> np.ndarray:
    """(P, country, true class, label) P(provider p labels a user, with that label | class).

    Provider p covers a user of country i with probability coverage[p, i], and its label is the
    latest observation's (``latest_label_matrix``). In the expected tables a user's label depends
    on the user only through its class, so RL and RNL are this times R and RN.
    """
    return params.coverage[:, :, None, None] * latest_label_matrix(params)


def latest_label_matrix(params: WorldParams) -> np.ndarray:
    """(P, country, true class, label) P(a labelled user's latest label | true class).

    ``population.build_labels`` gives a labelled user min(1 + Poisson(extra_observations), D)
    distinct observation days, uniform among the D label days, each labelled through that
    day's confusion matrix; the latest day wins. With k days the latest is day d (0-based)
    with probability C(d, k-1) / C(D, k).
    """
    from scipy.special import comb
    from scipy.stats import poisson

    confusion = params.confusion  # (P, country, day, class, label)
    D = confusion.shape[2]
    k = np.arange(1, D + 1)
    p_k = poisson.pmf(k - 1, params.config.extra_observations)
    p_k[-1] = 1.0 - p_k[:-1].sum()  # min(., D): the tail lands on D days
    d = np.arange(D)
    p_latest = (p_k[:, None] * comb(d[None, :], k[:, None] - 1)
                / comb(D, k)[:, None]).sum(axis=0)  # (D,)
    return np.einsum("d,pidcl->picl", p_latest, confusion)


def activity_level_of(draws: np.ndarray, config: WorldConfig) -> np.ndarray:
    """Level index of lognormal(-σ²/2, σ) draws: the bin their normal z falls in."""
    sigma = config.activity_sigma
    if sigma == 0:
        return np.zeros(len(draws), dtype=np.int64)
    z = (np.log(draws) + 0.5 * sigma ** 2) / sigma
    return np.searchsorted(_z_edges(config.activity_levels), z).astype(np.int64)


def _z_edges(n_levels: int) -> np.ndarray:
    return np.linspace(-LEVEL_Z_SPAN, LEVEL_Z_SPAN, n_levels - 1)


def metro_choice_by_group(params: WorldParams, groups: ZoneGroups) -> np.ndarray:
    """(s, country, class, zone group, metro in country): the metro choice within each group.

    Summed over metros it is the share of a user's activity in each zone group; power users
    (s=1) mix their class's choice with the country's marginal.
    """
    a, lam = params.arrays, params.config.power_user_informative
    n_cty, mpc = len(params.vocab["countries"]), params.config.metros_per_country
    own = a["p_metro"].reshape(n_cty, N_CLASS, n_cty, mpc)[np.arange(n_cty), :, np.arange(n_cty)]
    marg = a["m_metro"].reshape(n_cty, n_cty, mpc)[np.arange(n_cty), np.arange(n_cty)]
    f = np.stack([own, lam * own + (1 - lam) * marg[:, None, :]])
    G = int(groups.n_groups.max())
    in_group = (a["metro_zone_group"].reshape(n_cty, mpc)[:, None, :]
                == np.arange(G)[None, :, None])  # (country, group, metro)
    return f[:, :, :, None, :] * in_group[None, :, None]


class ExposureClock:
    """H[s, country, class](t): a group's expected impressions from UTC midnight to t per unit
    activity -- Σ_g share[s, country, class, g] ∫ W_s[class, local dow_g, local hour_g] dt/HOUR,
    with the very segments (``ZoneGroups.hour_segments``) the generator samples from."""

    def __init__(self, params: WorldParams):
        self.params = params
        self._groups = ZoneGroups(params.vocab, params.arrays,
                                  geo.OffsetTable.from_json(params.offsets))
        self._share = metro_choice_by_group(params, self._groups).sum(axis=-1)  # (s, cty, c, G)
        self._W = np.stack([params.W, params.W_power])  # (s, class, dow, hour)
        self._days: dict[int, tuple[np.ndarray, list]] = {}

    def _day(self, day: int) -> tuple[np.ndarray, list]:
        """(cumulative exposure at each UTC hour start (25, groups, s, class), per-hour
        (start, length, intensity (groups, J, s, class)) segments) of UTC day ``day``."""
        if day not in self._days:
            hours, full = [], []
            for h in range(24):
                seg = self._groups.hour_segments(day * DAY + h * HOUR)
                w = self._W[:, :, seg["dow"], seg["hour"]].transpose(2, 3, 0, 1)  # (G, J, s, c)
                hours.append((seg["start"], seg["length"], w))
                full.append((seg["length"][:, :, None, None] * w).sum(axis=1) / HOUR)
            cum = np.concatenate([np.zeros((1,) + full[0].shape), np.cumsum(full, axis=0)])
            self._days[day] = (cum, hours)
        return self._days[day]

    def exposure(self, t: np.ndarray, country: np.ndarray) -> np.ndarray:
        """(n, 2, N_CLASS) H at epoch seconds ``t`` (float) of rows of country ``country``."""
        t = np.asarray(t, dtype=np.float64)
        out = np.zeros((len(t), 2, N_CLASS))
        day = np.floor(t / DAY).astype(np.int64)
        hour = np.floor((t - day * DAY) / HOUR).astype(np.int64)
        groups = self._groups
        for d in np.unique(day):
            cum, hours = self._day(int(d))
            for h in np.unique(hour[day == d]):
                start, length, w = hours[h]
                in_hour = np.flatnonzero((day == d) & (hour == h))
                for c in np.unique(country[in_hour]):
                    rows = in_hour[country[in_hour] == c]
                    g = slice(groups.first[c], groups.first[c] + groups.n_groups[c])
                    elapsed = t[rows] - (d * DAY + h * HOUR)
                    overlap = np.clip(elapsed[:, None, None] - start[None, g], 0,
                                      length[None, g])  # (rows, G_c, J)
                    per_group = cum[h, g][None] + np.einsum("rgj,gjsk->rgsk", overlap,
                                                            w[g]) / HOUR
                    share = self._share[:, c, :, :groups.n_groups[c]]  # (s, class, G_c)
                    out[rows] = np.einsum("rgsk,skg->rsk", per_group, share)
        return out


BLOCK_ELEMENTS = 1 << 22  # rows x levels x classes (x labels) per block: bounded memory


@dataclass
class ActivityEvidence:
    """What rows tell about their users' activity, for the posterior's sum over levels.

    Either or both of: ``n`` (impressions of the user earlier that UTC day, with ``H`` the
    exposure since UTC midnight) and ``power`` (whether the user's whole UTC day has more than
    ``threshold`` impressions -- the pipeline's observed power-user flag, with ``H_day`` the
    exposure of the whole day).
    """

    rate: np.ndarray  # (L, 2) activity a of each level and power flag
    n: np.ndarray | None = None  # (r,)
    H: np.ndarray | None = None  # (r, 2, N_CLASS)
    power: np.ndarray | None = None  # (r,) bool
    threshold: float = 0.0
    H_day: np.ndarray | None = None  # (r, 2, N_CLASS)
    day_key: np.ndarray | None = None  # (r,) UTC day x country: rows sharing H_day

    def log_weights(self, rows: np.ndarray) -> np.ndarray:
        """(r, s, L, class) log of a · P(evidence | a, s, class) per row and activity level."""
        a = self.rate.T[None, :, :, None]  # (1, s, L, 1)
        r = len(rows)
        if self.n is None:
            log_w = np.broadcast_to(np.log(a), (r, 2, len(self.rate), N_CLASS)).copy()
            n_eff, mu = np.zeros(r), a * self.H_day[rows][:, :, None, :]
        else:
            nn = self.n[rows][:, None, None, None].astype(np.float64)
            Hs = self.H[rows][:, :, None, :]
            # a^(n+1) H^n e^(-aH) / n!: Poisson(n | aH) times the rate a of the row itself
            log_w = xlogy(nn + 1, a) + xlogy(nn, Hs) - a * Hs - gammaln(nn + 1)
            n_eff = self.n[rows].astype(np.float64)
            if self.power is not None:
                mu = a * np.maximum(self.H_day[rows] - self.H[rows], 0.0)[:, :, None, :]
        if self.power is not None:
            # the day has more than `threshold` impressions iff the others (after the row's
            # n earlier ones and itself) number at least `need`; they are Poisson(mu)
            need = np.floor(self.threshold) - n_eff
            if self.n is None:  # mu is one per (UTC day, country): evaluate each once
                _, first, inverse = np.unique(self.day_key[rows], return_index=True,
                                              return_inverse=True)
                flat = mu.reshape(r, -1)[first]
                p_more = _p_at_least(need[first], flat)[inverse.ravel()].reshape(mu.shape)
            else:
                p_more = _p_at_least(need, mu.reshape(r, -1)).reshape(mu.shape)
            p = np.where(self.power[rows][:, None, None, None], p_more, 1.0 - p_more)
            with np.errstate(divide="ignore"):
                log_w = log_w + np.log(p)
        return log_w


def _p_at_least(need: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """P(Poisson(mu) >= need) for (r,) needs and (r, m) means (need <= 0: certain)."""
    need = np.broadcast_to(need[:, None], mu.shape)
    return np.where(need <= 0, 1.0, pdtrc(np.maximum(need - 1, 0), mu))


def sum_levels(log_w: np.ndarray, counts: np.ndarray, B: tuple[np.ndarray, np.ndarray]
               ) -> tuple[list[np.ndarray], np.ndarray]:
    """Σ_z B_s[z] Σ_levels count · exp(log_w) per row, class and s, up to exp(shift).

    Args:
        log_w: (r, s, L, class) from ``ActivityEvidence.log_weights``.
        counts: (L, 2, N_CLASS, K, *extra) users per level, power flag, class, interest (and
            e.g. provider label).
        B: per power flag, (r, K) interest-dependent factors.

    Returns:
        Per power flag (r, N_CLASS, *extra) weights, and the (r,) log scale ``shift`` they are
        relative to (true weight = weight · exp(shift); the shift keeps big n finite).
    """
    r, L, K = log_w.shape[0], log_w.shape[2], counts.shape[3]
    extra = counts.shape[4:]
    shift = log_w.reshape(r, -1).max(axis=1)
    E = np.exp(log_w - shift[:, None, None, None])
    tables = [np.moveaxis(counts[:, s], 2, 0).reshape(K, -1).astype(np.float64) for s in (0, 1)]
    out = [np.empty((r, N_CLASS) + extra) for _ in (0, 1)]
    step = max(1, BLOCK_ELEMENTS // (L * N_CLASS * int(np.prod(extra, dtype=np.int64))))
    for lo in range(0, r, step):
        hi = min(r, lo + step)
        for s in (0, 1):
            t = (B[s][lo:hi] @ tables[s]).reshape((hi - lo, L, N_CLASS) + extra)
            e = E[lo:hi, s].reshape((hi - lo, L, N_CLASS) + (1,) * len(extra))
            out[s][lo:hi] = (e * t).sum(axis=1)
    return out, shift


def ts_seconds_of(df: pd.DataFrame) -> np.ndarray:
    """Epoch seconds from ``ts_seconds`` (int) or ``ts`` (timestamp, any unit / tz-aware)."""
    if TS_SECONDS in df.columns:
        return df[TS_SECONDS].to_numpy(dtype=np.int64)
    if TS not in df.columns:
        raise ValueError(f"posterior needs a {TS!r} (timestamp) or {TS_SECONDS!r} (int64) column")
    ts = pd.to_datetime(df[TS], utc=True)
    return ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


CHUNK_ROWS = 1 << 15  # rows per vectorised block: small enough to reuse memory, big enough for BLAS


def row_runs(keys: tuple[np.ndarray, ...], size: int = CHUNK_ROWS):
    """Yield (row indices, key values) for blocks of rows sharing every key, at most ``size``."""
    if not len(keys[0]):
        return
    order = np.lexsort(keys[::-1])
    sorted_keys = [k[order] for k in keys]
    change = np.zeros(len(order), dtype=bool)
    change[0] = True
    for k in sorted_keys:
        change[1:] |= k[1:] != k[:-1]
    starts = np.flatnonzero(change)
    bounds = np.append(starts, len(order))
    for a, b in zip(bounds[:-1], bounds[1:]):
        for lo in range(a, b, size):
            yield order[lo:min(b, lo + size)], tuple(int(k[a]) for k in sorted_keys)


def user_impressions_today(df: pd.DataFrame) -> np.ndarray:
    """Per row: how many impressions of the same user came earlier the same UTC day.

    The reference definition of ``features.USER_IMPRESSIONS_TODAY``, which the ETL must
    implement: per (user_id, UTC date of ts), the number of that user's rows ordered strictly
    before the row by (ts, impression_id). Rows to give: every impression of the day(s) that
    is kept as a valid, distinct impression (after quarantine and duplicate settling), before
    any split sampling or filtering (e.g. of power users). A synthetic world's impressions are
    all valid and distinct (the generator never corrupts or duplicates rows; contract tests
    inject such rows themselves), so for a world it counts exactly the Poisson process the
    posterior conditions on. A copy of an impression would count twice, so duplicate
    impression ids raise, as do null keys.

    Args:
        df: rows with ``user_id``, ``ts`` (timestamp) and ``impression_id``.

    Returns:
        (n,) int64 counts aligned with ``df``'s rows.
    """
    missing = [c for c in (USER_ID, TS, IMPRESSION_ID) if c not in df.columns]
    if missing:
        raise ValueError(f"user_impressions_today needs column(s) {missing}")
    for col in (USER_ID, TS, IMPRESSION_ID):
        if df[col].isna().any():
            raise ValueError(f"column {col!r} has {int(df[col].isna().sum())} null(s): drop or "
                             f"quarantine those rows before counting")
    if df[IMPRESSION_ID].duplicated().any():
        dup = df.loc[df[IMPRESSION_ID].duplicated(), IMPRESSION_ID].head(3).tolist()
        raise ValueError(f"column {IMPRESSION_ID!r} repeats ids, e.g. {dup}: settle duplicates "
                         f"first (each impression counts once)")
    ts = pd.to_datetime(df[TS], utc=True)
    keys = pd.DataFrame({"u": df[USER_ID].to_numpy(), "d": ts.dt.floor("D").to_numpy(),
                         "t": ts.to_numpy(), "i": df[IMPRESSION_ID].to_numpy()})
    order = keys.sort_values(["u", "d", "t", "i"], kind="stable").index
    counts = keys.loc[order].groupby(["u", "d"], sort=False).cumcount().to_numpy()
    out = np.empty(len(df), dtype=np.int64)
    out[keys.index.get_indexer(order)] = counts
    return out


def check_counts(values: pd.Series | np.ndarray, column: str) -> np.ndarray:
    """The count column as int64; nulls, negatives and fractions raise."""
    ser = pd.Series(np.asarray(values))
    numeric = pd.to_numeric(ser, errors="coerce")
    bad = numeric.isna() | (numeric < 0) | (numeric % 1 != 0)
    if bad.any():
        raise ValueError(f"column {column!r} needs whole counts >= 0, got e.g. "
                         f"{ser[bad].head(3).tolist()}")
    return numeric.to_numpy(dtype=np.int64)


__all__ = ["activity_levels", "activity_level_shares", "activity_level_of", "expected_weights",
           "latest_label_matrix",
           "metro_choice_by_group", "ExposureClock", "ActivityEvidence", "sum_levels",
           "user_impressions_today", "check_counts"]
