"""The exact Bayes posterior of a generated world: P(AgeGender | one impression's features).

A random impression at time t with features x comes from user u with probability proportional
to u's Poisson intensity at t times P(x | u's latent state). Summing users by latent group
(power flag s, country, AgeGender c, interest z) gives, for every row,

    P(c | x) ∝ Σ_s A_s(x)[c] · Σ_z R[s, country, c, z] · B_s(x)[z]

where R is the realised activity of each group, A_s multiplies the factors that depend on c
(device model, OS version, browser, metro, local hour/day intensity) and B_s those that depend
on z (site, ad format). Local time is ``pythia.geo``'s for the row's country and geo_region,
from the offset table the world was generated with (daylight saving included). Features that
do not depend on the user (zip within metro, ad size, supply vendor) cancel. Power users (s=1)
mix each factor with its population marginal.

Rows carrying ``user_impressions_today`` (n) are also conditioned on it: n is Poisson(a_u H(t))
independently of the row (``activity``), so R becomes a sum over activity levels l of
count[l, s, country, c, z] · a_l^(n+1) H_{s,country,c}(t)^n e^(-a_l H) / n!; with
``power_threshold`` each level's weight also takes the probability of the row's observed
power-user flag (the user-day's total over the threshold).
"""
from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from pythia import geo, storage
from pythia.features import IS_POWER_USER, TS, USER_IMPRESSIONS_TODAY, derive_time_features
from pythia.paths import join
from pythia.synth.activity import (ActivityEvidence, ExposureClock, check_counts,
                                   expected_weights, label_given_class, row_runs,
                                   sum_levels, ts_seconds_of)
from pythia.synth.world import CLASS_LABELS, N_CLASS, WorldParams, params_from_saved

_CTV = "ctv"


def _codes(values: pd.Series | np.ndarray, vocab: list[str], column: str,
           allow_null: bool = False) -> np.ndarray:
    """Index of each value in ``vocab``; -1 for nulls when allowed; unknown values raise."""
    idx = pd.Index(vocab).get_indexer(values)
    if not (idx < 0).any():
        return idx
    ser = pd.Series(np.asarray(values, dtype=object))
    bad = (idx < 0) & ~(ser.isna().to_numpy() & allow_null)
    if bad.any():
        examples = ser[bad].head(3).tolist()
        raise ValueError(f"column {column!r} has {int(bad.sum())} value(s) this world never "
                         f"generates, e.g. {examples}")
    return idx


@dataclass
class _Factors:
    country: np.ndarray  # (n,) country index
    A: tuple[np.ndarray, np.ndarray]  # per power flag s: (n, N_CLASS) class-dependent factors
    B: tuple[np.ndarray, np.ndarray]  # per power flag s: (n, K) interest-dependent factors


class World:
    """A generated world's parameters, realised group weights and truth, with exact posteriors."""

    def __init__(self, root: str, params: WorldParams, weights: dict[str, np.ndarray]):
        self.root = root
        self.params = params
        self.R = weights["R"]
        # per provider; None in a population World (activity.expected_weights)
        self.RP, self.RL = weights.get("RP"), weights.get("RL")
        # per-level user counts (None in worlds written before activity levels)
        self.RN, self.RNL = weights.get("RN"), weights.get("RNL")
        # "LC" (population World): P(labelled, label | class), which RL and RNL factor through
        self.LC = weights.get("LC")
        self._exposure: ExposureClock | None = None
        self._truth: pd.DataFrame | None = None
        v = params.vocab
        self._clock = None if params.offsets is None else geo.OffsetTable.from_json(params.offsets)
        # (os, version string) -> os_version index; -1 where the OS has no such version
        versions = sorted(set(v["os_versions"]))
        self._versions = versions
        self._osv_of = np.full((len(v["oses"]), len(versions)), -1)
        for i, (o, name) in enumerate(zip(params.osv_os, v["os_versions"])):
            self._osv_of[o, versions.index(name)] = i
        # Tables with the class / interest axis last, so one row gather gives a contiguous
        # (n, 12) or (n, K) block (fast elementwise products).
        self._tables = {
            "model": np.ascontiguousarray(params.p_model.transpose(0, 2, 1)),
            "osv": np.ascontiguousarray(params.p_osv.transpose(0, 2, 1)),
            "metro": np.ascontiguousarray(params.p_metro.transpose(0, 2, 1)),
            "browser": np.ascontiguousarray(params.p_browser.transpose(0, 2, 1)),
            "W": np.ascontiguousarray(params.W.reshape(N_CLASS, -1).T),
            "W_power": np.ascontiguousarray(params.W_power.reshape(N_CLASS, -1).T),
            "site": np.ascontiguousarray(params.p_site.transpose(0, 2, 3, 1)),
            "format": np.ascontiguousarray(params.p_format.transpose(0, 2, 1)),
        }

    # ---------------------------------------------------------------- public API

    @property
    def class_labels(self) -> list[str]:
        """The 12 AgeGender labels, in the column order of every posterior."""
        return list(CLASS_LABELS)

    def population(self) -> "World":
        """This world with its drawn users and labels replaced by their expectation
        (``activity.expected_weights``): the population posterior, which knows the generative
        tables but not which users were drawn. It shares this world's truth. Its labels depend
        on a user only through the class (``LC``), so its label posterior sums users per class."""
        weights = {**expected_weights(self.params), "LC": label_given_class(self.params)}
        return World(self.root, self.params, weights)

    def truth(self) -> pd.DataFrame:
        """``truth/users.parquet``: true demographics and latent state of every user."""
        if self._truth is None:
            import pyarrow.parquet as pq
            data = storage.read_bytes(join(self.root, "truth", "users.parquet"))
            self._truth = pq.read_table(io.BytesIO(data)).to_pandas()
        return self._truth

    def posterior(self, df: pd.DataFrame, providers: np.ndarray | None = None,
                  power_threshold: float | None = None) -> np.ndarray:
        """(n, 12) P(AgeGender | features) for each impression row.

        Args:
            df: impression contract columns (country, geo_region, metro, site_or_app,
                device_model, os_version, browser, ad_format and ``ts`` or ``ts_seconds``);
                with ``user_impressions_today`` the posterior is also conditioned on it.
            providers: optional provider name per row; a row with a provider is conditioned on
                its user being labelled by that provider (the population of a labelled test set).
                Null entries use all users.
            power_threshold: with it, each row is also conditioned on its ``is_power_user``
                flag meaning "the user's UTC day has more than this many impressions" (the
                pipeline's observed flag), so slices by that flag have an exact gauge too.
        """
        return self._normalize(self.unnormalized_posterior(df, providers, power_threshold)[0])

    def unnormalized_posterior(self, df: pd.DataFrame, providers: np.ndarray | None = None,
                               power_threshold: float | None = None
                               ) -> tuple[np.ndarray, np.ndarray]:
        """((n, 12) weights, (n,) log scale): P(class, x[, n]) ∝ weights · exp(scale).

        Without ``user_impressions_today`` the scale is 0 and the weights are those of the
        posterior marginal over n; with it, summing weights · exp(scale) over n = 0, 1, ...
        gives those marginal weights (the tests check it).
        """
        codes = self._encode(df)
        n = len(df)
        prov = (np.full(n, -1) if providers is None
                else self._provider_codes(providers, n, allow_null=True))
        out, shift = np.empty((n, N_CLASS)), np.zeros(n)
        evidence = self._evidence(df, codes, power_threshold)
        # The matmuls are tiny (K x 12): multi-threaded BLAS only adds contention here.
        with threadpool_limits(limits=1, user_api="blas"):
            for rows, (p, cty) in row_runs((prov, codes["country"])):
                out[rows], shift[rows] = self._class_weights(codes, rows, evidence, p, cty)
        return out, shift

    def _class_weights(self, codes: dict[str, np.ndarray], rows: np.ndarray,
                       evidence: ActivityEvidence | None, p: int, cty: int
                       ) -> tuple[np.ndarray, np.ndarray | float]:
        """One run's (rows of provider p, -1 for none, and country cty) unnormalised
        posterior weights (r, 12) and log scale."""
        f = self._factors(codes, rows)
        if evidence is None:
            weights = self.R[:, cty] if p < 0 else self.RP[p, :, cty]  # (s, class, z)
            return sum(f.A[s] * (f.B[s] @ weights[s].T) for s in (0, 1)), 0.0
        counts = self.RN[:, :, cty] if p < 0 else self.RNL[p, :, :, cty].sum(axis=-1)
        w, shift = sum_levels(evidence.log_weights(rows), counts, f.B)
        return f.A[0] * w[0] + f.A[1] * w[1], shift

    def label_posterior(self, df: pd.DataFrame, providers: np.ndarray,
                        dates: np.ndarray | None = None, power_threshold: float | None = None
                        ) -> np.ndarray:
        """(n, 12) P(the provider's label of this impression's user | features).

        The label is the provider's latest observation of the user (what label preparation
        keeps). Without ``dates`` this is exact for the realised world: it sums over the
        realised latest label of every user, so it is the gauge to use. With ``dates`` (each
        row's label observed date) it is the population-level form P(c | x, labelled by p)
        times the provider's confusion matrix on that date (its drift): right on average over
        label-noise draws, but not conditioned on the labels this world actually drew. Rows
        with ``user_impressions_today`` are conditioned on it too, and on ``is_power_user``
        with ``power_threshold`` (both forms; see ``posterior``).
        """
        n = len(df)
        prov = self._provider_codes(providers, n, allow_null=False)
        if dates is not None:
            day = self._date_codes(dates, n)
            names = np.asarray(self.params.vocab["providers"], dtype=object)[prov]
            post = self.posterior(df, providers=names, power_threshold=power_threshold)
            cty = _codes(df["country"], self.params.vocab["countries"], "country")
            out = np.empty((n, N_CLASS))
            for rows, (p, c, d) in row_runs((prov, cty, day)):
                out[rows] = post[rows] @ self.params.confusion[p, c, d]
            return out
        return self._normalize(self._truth_and_label(df, prov, power_threshold)[1])

    def gauge_posteriors(self, df: pd.DataFrame, providers: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
        """``(posterior(df, providers), label_posterior(df, providers))`` in one pass: both
        sum the same per-row (class, label) weights, one over labels, the other over classes."""
        prov = self._provider_codes(providers, len(df), allow_null=False)
        return tuple(self._normalize(w) for w in self._truth_and_label(df, prov, None))

    def country_prior(self, countries: np.ndarray) -> np.ndarray:
        """(n, 12) P(AgeGender | country) of a random impression, averaged over a whole week
        of traffic (a baseline: a particular day's mix differs slightly by day-of-week)."""
        cty = _codes(countries, self.params.vocab["countries"], "country")
        # a group's share of impressions is its activity times its mean weekly intensity
        mean_w = np.stack([self.params.W.mean(axis=(1, 2)), self.params.W_power.mean(axis=(1, 2))])
        per = np.einsum("sckz,sk->ck", self.R, mean_w)
        return self._normalize(per[cty])

    # ---------------------------------------------------------------- internals

    def _truth_and_label(self, df: pd.DataFrame, prov: np.ndarray,
                         power_threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Unnormalised (n, 12) P(class, x) and P(label, x) of rows labelled by providers
        ``prov``, each up to one scale per row (normalising drops it)."""
        codes = self._encode(df)
        evidence = self._evidence(df, codes, power_threshold)
        truth, label = np.empty((len(df), N_CLASS)), np.empty((len(df), N_CLASS))
        with threadpool_limits(limits=1, user_api="blas"):
            for rows, (p, cty) in row_runs((prov, codes["country"])):
                w = self._label_weights(codes, rows, evidence, p, cty)
                truth[rows], label[rows] = w.sum(axis=2), w.sum(axis=1)
        return truth, label

    def _label_weights(self, codes: dict[str, np.ndarray], rows: np.ndarray,
                       evidence: ActivityEvidence | None, p: int, cty: int) -> np.ndarray:
        """One run's (rows of provider p and country cty) (r, class, label) weights."""
        if self.LC is not None:  # Σ over a class's users, then P(labelled, label | class)
            w = self._class_weights(codes, rows, evidence, -1, cty)[0]
            return w[:, :, None] * self.LC[p, cty][None]
        f = self._factors(codes, rows)
        if evidence is not None:  # per s: (rows, class, label)
            w, _ = sum_levels(evidence.log_weights(rows), self.RNL[p, :, :, cty], f.B)
            return f.A[0][:, :, None] * w[0] + f.A[1][:, :, None] * w[1]
        K = self.params.config.n_interests
        # RL[p, s, cty]: (class, z, label) -> (z, class*label), one matmul per run
        tables = [self.RL[p, s, cty].transpose(1, 0, 2).reshape(K, -1) for s in (0, 1)]
        return sum(f.A[s][:, :, None] * (f.B[s] @ tables[s]).reshape(len(rows), N_CLASS, N_CLASS)
                   for s in (0, 1))

    def _evidence(self, df: pd.DataFrame, codes: dict[str, np.ndarray],
                  power_threshold: float | None) -> ActivityEvidence | None:
        """What the rows say about their users' activity; None when they say nothing."""
        counted = USER_IMPRESSIONS_TODAY in df.columns
        if not counted and power_threshold is None:
            return None
        if self.RN is None or self._clock is None:
            raise ValueError(f"world {self.root} predates activity levels: regenerate it to "
                             f"condition on {USER_IMPRESSIONS_TODAY!r} or the power-user flag")
        if TS in df.columns:  # microseconds: the exposure up to the very instant of the row
            ts = pd.to_datetime(df[TS], utc=True)
            t = ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)).to_numpy(
                np.int64) / 1e6
        else:
            t = ts_seconds_of(df).astype(np.float64)
        if self._exposure is None:
            self._exposure = ExposureClock(self.params)
        cfg = self.params.config
        ev = ActivityEvidence(rate=float(self.params.base_rate)
                              * self.params.activity_level[:, None]
                              * np.array([1.0, cfg.power_user_multiplier]))
        if counted:
            ev.n = check_counts(df[USER_IMPRESSIONS_TODAY], USER_IMPRESSIONS_TODAY)
            ev.H = self._exposure.exposure(t, codes["country"])
        if power_threshold is not None:
            if IS_POWER_USER not in df.columns or df[IS_POWER_USER].isna().any():
                raise ValueError(f"power_threshold needs a non-null {IS_POWER_USER!r} column")
            ev.power = df[IS_POWER_USER].to_numpy(dtype=bool)
            ev.threshold = float(power_threshold)
            # just before the next UTC midnight: the exposure of the whole day
            day = np.floor(t / 86400)
            ev.H_day = self._exposure.exposure(day * 86400 + 86400 - 1e-6, codes["country"])
            ev.day_key = day.astype(np.int64) * len(self.params.vocab["countries"]) + codes[
                "country"]
        return ev

    def _provider_codes(self, providers, n: int, allow_null: bool) -> np.ndarray:
        if self.RP is None:
            raise ValueError(f"world {self.root} has no per-provider weights (a population "
                             f"World): call it without providers")
        providers = np.asarray(providers, dtype=object)
        if providers.shape != (n,):
            raise ValueError(f"providers must have one entry per row ({n}), got shape "
                             f"{providers.shape}")
        return _codes(providers, self.params.vocab["providers"], "providers",
                      allow_null=allow_null)

    def _date_codes(self, dates, n: int) -> np.ndarray:
        days = pd.to_datetime(pd.Series(np.asarray(dates, dtype=object))).dt.date
        if len(days) != n:
            raise ValueError(f"dates must have one entry per row ({n}), got {len(days)}")
        vocab = [dt.date.fromisoformat(d) for d in self.params.vocab["label_dates"]]
        idx = pd.Index(vocab).get_indexer(days)
        if (idx < 0).any():
            raise ValueError(f"label dates outside this world's label days "
                             f"{vocab[0]}..{vocab[-1]}: e.g. {days[idx < 0].head(3).tolist()}")
        return idx

    def _encode(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """Integer codes of every conditioning column, plus local hour / day-of-week."""
        p, v = self.params, self.params.vocab
        needed = ("country", "geo_region", "metro", "site_or_app", "device_model", "os_version",
                  "browser", "ad_format")
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise ValueError(f"posterior needs impression column(s) {missing}")
        cty = _codes(df["country"], v["countries"], "country")
        model = _codes(df["device_model"], v["models"], "device_model")
        ver = _codes(df["os_version"], self._versions, "os_version")
        os_ = p.model_os[model]
        osv = self._osv_of[os_, ver]
        if (osv < 0).any():
            raise ValueError("column 'os_version' holds versions that do not exist for the "
                             "row's device OS")
        ts = ts_seconds_of(df)
        if self._clock is None:  # a world written before its clock was pythia.geo's
            offsets = np.asarray(v["utc_offset_minutes"], dtype=np.int64)[cty]
        else:
            offsets = geo.local_offset_minutes(ts, df["country"].to_numpy(dtype=object),
                                               df["geo_region"].to_numpy(dtype=object),
                                               self._clock)
        t = derive_time_features(ts, offsets)
        return {
            "country": cty, "model": model, "os": os_, "osv": osv,
            "dtype": p.model_type[model],
            "metro": _codes(df["metro"], v["metros"], "metro"),
            "site": _codes(df["site_or_app"], v["sites"], "site_or_app"),
            "format": _codes(df["ad_format"], v["formats"], "ad_format"),
            "browser": _codes(df["browser"], v["browsers"], "browser", allow_null=True),
            "hour": np.asarray(t["local_hour"], dtype=np.int64),
            "dow": np.asarray(t["local_dow"], dtype=np.int64),
        }

    def _factors(self, codes: dict[str, np.ndarray], rows: np.ndarray) -> _Factors:
        """Likelihood factors of ``rows`` (all of one country), C-contiguous (n, ·) arrays."""
        p, T = self.params, self._tables
        lam = p.config.power_user_informative
        c = {k: a[rows] for k, a in codes.items()}
        cty = c["country"]

        def mix(f: np.ndarray, m: np.ndarray) -> np.ndarray:
            return lam * f + (1 - lam) * m[:, None]

        # class-dependent factors, (n, N_CLASS): informative and power-user versions
        f_model, m_model = T["model"][cty, c["model"]], p.m_model[cty, c["model"]]
        f_osv, m_osv = T["osv"][c["os"], c["osv"]], p.m_osv[c["os"], c["osv"]]
        f_metro, m_metro = T["metro"][cty, c["metro"]], p.m_metro[cty, c["metro"]]
        has_b = c["browser"] >= 0
        b = np.where(has_b, c["browser"], 0)
        f_b = np.where(has_b[:, None], T["browser"][c["os"], b], 1.0)
        m_b = np.where(has_b, p.m_browser[c["os"], b], 1.0)
        when = c["dow"] * 24 + c["hour"]
        A0 = T["W"][when] * f_model * f_osv * f_metro * f_b
        A1 = (T["W_power"][when] * mix(f_model, m_model) * mix(f_osv, m_osv)
              * mix(f_metro, m_metro) * mix(f_b, m_b))
        # interest-dependent factors, (n, K)
        site, dtype = c["site"], c["dtype"]
        f_site, m_site = T["site"][cty, dtype, site], p.m_site[cty, dtype, site]
        f_fmt, m_fmt = T["format"][dtype, c["format"]], p.m_format[dtype, c["format"]]
        B0 = f_site * f_fmt
        B1 = mix(f_site, m_site) * mix(f_fmt, m_fmt)
        return _Factors(country=cty, A=(A0, A1), B=(B0, B1))

    @staticmethod
    def _normalize(p: np.ndarray) -> np.ndarray:
        total = p.sum(axis=1, keepdims=True)
        if not np.all(total > 0):
            bad = np.flatnonzero(~(total[:, 0] > 0))[:3].tolist()
            raise ValueError(f"rows {bad} have zero probability under this world (features "
                             f"inconsistent with each other or with the conditioning providers)")
        return p / total


def load_world(root: str) -> World:
    """Load a generated world (``root`` local or s3://); it must be complete (``_SUCCESS``)."""
    if not storage.exists(join(root, "_SUCCESS")):
        raise FileNotFoundError(f"{root} is not a complete synthetic world (no _SUCCESS marker)")
    meta = storage.read_json(join(root, "truth", "world.json"))
    with np.load(io.BytesIO(storage.read_bytes(join(root, "truth", "world.npz")))) as z:
        arrays = {k: z[k] for k in z.files}
    weights = {k: arrays.pop(k) for k in ("R", "RP", "RL", "RN", "RNL") if k in arrays}
    return World(root, params_from_saved(meta, arrays), weights)
