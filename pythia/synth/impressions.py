"""Impressions of one UTC hour, sampled from (seed, date, hour) alone by ``PartitionSampler``.

Partitions are independent, so they can be written in any order, in parallel, one at a time.
A user's impressions form a Poisson process per zone group of their country: the rate is their
activity, times the share of their metro choice in that group's zones, times their class's
intensity at the group's local hour and weekday (``places``: ``pythia.geo``'s clock). Each
impression's metro is then drawn within its group, so its geo_region names the zone whose
local time drove it -- the same local time the posterior, the ETL and the scorer derive.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pythia.contract import IMPRESSION_SCHEMA
from pythia.features import COUNTRY, IMPRESSION_ID, TS, USER_ID, ZIP
from pythia import geo
from pythia.synth.activity import metro_choice_by_group
from pythia.synth.catalog import DEVICE_TYPES
from pythia.synth.places import HOUR, ZoneGroups
from pythia.synth.population import EPOCH, Users
from pythia.synth.sampling import Categorical, format_ids, stack_tables, take_strings
from pythia.synth.tables import normalize
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
        self._zip = Categorical(a["p_zip"])
        self._has_browser = a["p_browser"].sum(axis=(1, 2)) > 0  # per OS
        self._user_ids = users.ids
        self._vocab_arrays = {k: pa.array(v, type=pa.string()) for k, v in params.vocab.items()
                              if v and isinstance(v[0], str)}
        self._groups = ZoneGroups(params.vocab, a, geo.OffsetTable.from_json(params.offsets))
        self._init_metros(users)

    def _init_metros(self, users: Users) -> None:
        """Per (user, zone group of their country): the rate share and a metro table per group."""
        groups = self._groups
        by_group = metro_choice_by_group(self.params, groups)  # (s, cty, class, G, metro)
        self._metro_in_group = Categorical(normalize(by_group))
        share = by_group.sum(axis=-1)  # (s, country, class, G)
        n_g = groups.n_groups[users.country]
        self._pair_user = np.repeat(np.arange(len(users.cls)), n_g)
        local = np.arange(len(self._pair_user)) - np.repeat(np.cumsum(n_g) - n_g, n_g)
        u = self._pair_user
        self._pair_local = local
        self._pair_group = groups.first[users.country[u]] + local
        self._pair_rate = users.activity[u] * share[users.power[u].astype(int), users.country[u],
                                                    users.cls[u], local]
        self._G = by_group.shape[3]

    def sample(self, date: dt.date, hour: int) -> pa.Table:
        """All impressions whose UTC timestamp falls in [date hour:00, hour+1:00)."""
        p, u_all = self.params, self.users
        rng = np.random.default_rng(np.random.SeedSequence(
            [p.seed, 3, date.toordinal(), hour]))
        t0 = ((date - EPOCH).days * 24 + hour) * HOUR  # epoch seconds
        seg = self._groups.hour_segments(t0)
        g, pu = self._pair_group, self._pair_user
        power, cls = u_all.power[pu], u_all.cls[pu]
        pair_parts, start_parts, len_parts = [], [], []
        for j in range(seg["start"].shape[1]):
            lh, ld, length = seg["hour"][g, j], seg["dow"][g, j], seg["length"][g, j]
            intensity = np.where(power, p.W_power[cls, ld, lh], p.W[cls, ld, lh])
            counts = rng.poisson(self._pair_rate * intensity * length / HOUR)
            pairs_here = np.repeat(np.arange(len(counts)), counts)
            pair_parts.append(pairs_here)
            start_parts.append(seg["start"][g[pairs_here], j])
            len_parts.append(length[pairs_here])
        pair = np.concatenate(pair_parts)
        length = np.concatenate(len_parts)
        ts_us = ((t0 + np.concatenate(start_parts)) * 1_000_000
                 + np.floor(rng.random(len(pair)) * length * 1_000_000).astype(np.int64))
        order = np.argsort(ts_us, kind="stable")
        pair, ts_us = pair[order], ts_us[order]
        u = pu[pair]
        n_cty, mpc = self._n["cty"], p.config.metros_per_country
        cty = u_all.country[u]
        key = ((u_all.power[u].astype(int) * n_cty + cty) * N_CLASS + u_all.cls[u]) * self._G
        metro = cty * mpc + self._metro_in_group.sample(key + self._pair_local[pair], rng)
        return self._features(u, metro, ts_us, date, hour, rng)

    def _features(self, u: np.ndarray, metro: np.ndarray, ts_us: np.ndarray, date: dt.date,
                  hour: int, rng: np.random.Generator) -> pa.Table:
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
