"""Impressions of one UTC hour, sampled from (seed, date, hour) alone by ``PartitionSampler``.

Partitions are independent, so they can be written in any order, in parallel, one at a time.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pythia.contract import IMPRESSION_SCHEMA
from pythia.features import COUNTRY, IMPRESSION_ID, TS, USER_ID, ZIP
from pythia.synth.catalog import DEVICE_TYPES
from pythia.synth.population import EPOCH, Users
from pythia.synth.sampling import Categorical, format_ids, stack_tables, take_strings
from pythia.synth.world import N_CLASS, WorldParams

_CTV = DEVICE_TYPES.index("ctv")


class PartitionSampler:
    """Samples one UTC ``date/hour`` impression partition from (seed, date, hour) alone."""

    def __init__(self, params: WorldParams, users: Users):
        self.params, self.users = params, users
        a = params.arrays
        n_cty, K = len(params.vocab["countries"]), params.config.n_interests
        n_os = len(params.vocab["oses"])
        self._n = {"cty": n_cty, "K": K, "os": n_os}
        self._model = Categorical(stack_tables(a["p_model"], a["m_model"]))
        self._osv = Categorical(stack_tables(a["p_osv"], a["m_osv"]))
        self._site = Categorical(stack_tables(a["p_site"], a["m_site"]))
        self._browser = Categorical(stack_tables(a["p_browser"], a["m_browser"]))
        self._format = Categorical(stack_tables(a["p_format"], a["m_format"]))
        self._size = Categorical(a["p_size"])
        self._vendor = Categorical(a["p_vendor"])
        self._metro = Categorical(stack_tables(a["p_metro"], a["m_metro"]))
        self._zip = Categorical(a["p_zip"])
        self._has_browser = a["p_browser"].sum(axis=(1, 2)) > 0  # per OS
        self._offsets = np.array(params.vocab["utc_offset_minutes"], dtype=np.int64)
        self._user_ids = users.ids
        self._vocab_arrays = {k: pa.array(v, type=pa.string()) for k, v in params.vocab.items()
                              if v and isinstance(v[0], str)}

    def sample(self, date: dt.date, hour: int) -> pa.Table:
        """All impressions whose UTC timestamp falls in [date hour:00, hour+1:00)."""
        p, u_all = self.params, self.users
        rng = np.random.default_rng(np.random.SeedSequence(
            [p.seed, 3, date.toordinal(), hour]))
        # Local time is piecewise constant within the UTC hour: one segment per local hour
        # (two for half-hour offsets such as IN's +05:30).
        t0 = ((date - EPOCH).days * 24 + hour) * 60  # epoch minutes
        local0 = t0 + self._offsets[u_all.country]
        first_len = 60 - local0 % 60
        segments = [(np.zeros_like(first_len), first_len), (first_len, 60 - first_len)]
        user_parts, start_parts, len_parts = [], [], []
        for start, length in segments:
            lm = local0 + start
            lh, ld = (lm // 60) % 24, ((lm // 1440) + 3) % 7
            intensity = np.where(u_all.power, p.W_power[u_all.cls, ld, lh],
                                 p.W[u_all.cls, ld, lh])
            counts = rng.poisson(u_all.activity * intensity * length / 60.0)
            users_here = np.repeat(np.arange(len(counts)), counts)
            user_parts.append(users_here)
            start_parts.append(start[users_here])
            len_parts.append(length[users_here])
        u = np.concatenate(user_parts)
        start = np.concatenate(start_parts)
        length = np.concatenate(len_parts)
        ts_us = ((t0 + start) * 60_000_000
                 + np.floor(rng.random(len(u)) * length * 60_000_000).astype(np.int64))
        order = np.argsort(ts_us, kind="stable")
        u, ts_us = u[order], ts_us[order]
        return self._features(u, ts_us, date, hour, rng)

    def _features(self, u: np.ndarray, ts_us: np.ndarray, date: dt.date, hour: int,
                  rng: np.random.Generator) -> pa.Table:
        p, users, n = self.params, self.users, len(u)
        n_cty, K, n_os = self._n["cty"], self._n["K"], self._n["os"]
        cty, c, z, s = users.country[u], users.cls[u], users.interest[u], users.power[u]
        lam = p.config.power_user_informative

        def marginal() -> np.ndarray:  # per feature: does this power-user row ignore demography
            return s & (rng.random(n) >= lam)

        m = marginal()
        model = self._model.sample(np.where(m, n_cty * N_CLASS + cty, cty * N_CLASS + c), rng)
        dtype, os_ = p.model_type[model], p.model_os[model]
        m = marginal()
        osv = self._osv.sample(np.where(m, n_os * N_CLASS + os_, os_ * N_CLASS + c), rng)
        m = marginal()
        site = self._site.sample(np.where(m, n_cty * K * 4 + cty * 4 + dtype,
                                          (cty * K + z) * 4 + dtype), rng)
        inv = p.site_inventory[site]
        m = marginal()
        browser = self._browser.sample(np.where(m, n_os * N_CLASS + os_, os_ * N_CLASS + c), rng)
        has_browser = (inv == 0) & (dtype != _CTV) & self._has_browser[os_]
        m = marginal()
        fmt = self._format.sample(np.where(m, 4 * K + dtype, dtype * K + z), rng)
        size = self._size.sample(fmt * 4 + dtype, rng)
        vendor = self._vendor.sample(cty * 2 + inv, rng)
        m = marginal()
        metro = self._metro.sample(np.where(m, n_cty * N_CLASS + cty, cty * N_CLASS + c), rng)
        zip_ = self._zip.sample(metro, rng)
        v = p.vocab
        prefix = f"{date:%Y%m%d}{hour:02d}-"
        cols = {
            IMPRESSION_ID: format_ids(prefix, np.arange(n), 8),
            USER_ID: pc.take(self._user_ids, pa.array(u)),
            TS: pa.array(ts_us, type=pa.timestamp("us", tz="UTC")),
            COUNTRY: take_strings(v["countries"], cty),
            "geo_region": take_strings(v["geo_regions"], p.metro_region[metro]),
            "metro": take_strings(v["metros"], metro),
            ZIP: take_strings(v["zips"], zip_),
            "inventory_type": take_strings(v["inventory_types"], inv),
            "site_or_app": take_strings(v["sites"], site),
            "content_category": take_strings(v["categories"], p.site_category[site]),
            "supply_vendor": take_strings(v["vendors"], vendor),
            "ad_format": take_strings(v["formats"], fmt),
            "ad_size": take_strings(v["sizes"], size),
            "device_type": take_strings(v["device_types"], dtype),
            "device_make": take_strings(v["makes"], p.model_make[model]),
            "device_model": take_strings(v["models"], model),
            "os": take_strings(v["oses"], os_),
            "os_version": take_strings(v["os_versions"], osv),
            "browser": take_strings(v["browsers"], browser, valid=has_browser),
        }
        return pa.table(cols, schema=IMPRESSION_SCHEMA)
