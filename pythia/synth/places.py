"""Where and when impressions happen: metros and geo_regions, their time zones, local hours.

A world's clock is ``pythia.geo``'s: the offset table compiled for its countries and years
(IANA zones, daylight saving) is stored with the world, and an impression's local time is
``geo.local_offset_minutes(ts, country, geo_region, table)`` -- exactly what the ETL and the
scorer compute. Countries the country set gives real ISO-3166-2 subdivisions may span several
zones: their metros fall into *zone groups* (the distinct zones of the country's regions), and
``hour_segments`` cuts a UTC hour where a group's local hour changes -- at a local hour
boundary (half-hour zones) or at a daylight-saving transition, wherever in the hour it falls.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pythia import geo
from pythia.synth.catalog import N_CLASS
from pythia.synth.tables import CLS_AGE, COUNTRY_SETS, SUBDIVISION_SETS, normalize

if TYPE_CHECKING:
    from pythia.synth.world import WorldConfig

HOUR = 3600


def offset_table(config: WorldConfig) -> dict[str, Any]:
    """The ``pythia.geo`` offset table of the config's countries over the years of its days."""
    years = (config.dates[0].year, config.dates[-1].year)
    return geo.build_offset_table(list(COUNTRY_SETS[config.country_set]), years=years)


def _region_codes(config: WorldConfig, rng: np.random.Generator, table: geo.OffsetTable
                  ) -> tuple[list[list[str]], np.ndarray]:
    """Each country's geo_region codes and each metro's region (index within its country)."""
    countries, mpc = list(COUNTRY_SETS[config.country_set]), config.metros_per_country
    subs = SUBDIVISION_SETS[config.country_set]
    rpc = max(2, mpc // 3)
    codes = [list(c for c, _ in subs[cty]) if cty in subs
             else [f"{cty}-{r + 1:02d}" for r in range(rpc)] for cty in countries]
    for cty, names in zip(countries, codes):
        for code in names:
            if cty not in subs and table.zone_of(cty, code) != table.zone_of(cty):
                raise ValueError(f"synthetic geo_region {code!r} is a real subdivision with its "
                                 f"own time zone; list {cty}'s subdivisions in the country set")
    if not subs:  # the core worlds: one draw for all metros (their tables depend on it)
        return codes, rng.integers(0, rpc, len(countries) * mpc)
    local = []
    for cty, names in zip(countries, codes):
        if cty not in subs:
            local.append(rng.integers(0, rpc, mpc))
            continue
        weight = np.array([w for _, w in subs[cty]])
        if len(names) > mpc:
            raise ValueError(f"{cty} has {len(names)} subdivisions but metros_per_country={mpc}")
        # the biggest metros go one to each subdivision (most populous first), the rest by weight
        local.append(np.concatenate([np.arange(len(names)),
                                     rng.choice(len(names), mpc - len(names),
                                                p=weight / weight.sum())]))
    return codes, np.concatenate(local)


def draw_geography(rng: np.random.Generator, config: WorldConfig, table: geo.OffsetTable
                   ) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """geo_region > metro > zip; the metro depends on country and age (young users: big cities).

    Also each metro's zone group: the index, within its country, of its region's time zone.
    """
    countries = list(COUNTRY_SETS[config.country_set])
    n_cty, mpc, zpm = len(countries), config.metros_per_country, config.zips_per_metro
    n_metro = n_cty * mpc
    metro_country = np.repeat(np.arange(n_cty), mpc)
    codes, local_region = _region_codes(config, rng, table)
    first_region = np.cumsum([0] + [len(c) for c in codes[:-1]])
    metro_region = first_region[metro_country] + local_region
    region_names = [code for names in codes for code in names]
    metro_names = [f"{countries[metro_country[m]]}-M{m % mpc + 1:03d}" for m in range(n_metro)]
    metro_rank = np.tile(np.arange(mpc), n_cty)
    urban = 1.0 - metro_rank / max(1, mpc - 1)  # big metros are urban
    metro_pop = 1.0 / (metro_rank + 1.0)
    gs = config.geo_strength
    youth = -0.9 * gs * CLS_AGE + rng.normal(0, 0.1 * gs, N_CLASS)
    lg = (np.log(metro_pop)[None, :] + np.outer(youth, urban)
          + rng.normal(0, 0.3 * gs, (N_CLASS, n_metro)))
    own = metro_country[None, :] == np.arange(n_cty)[:, None]  # (country, metro)
    p_metro = np.where(own[:, None, :], np.exp(lg)[None], 0.0)
    n_zip = n_metro * zpm
    zip_metro = np.repeat(np.arange(n_metro), zpm)
    p_zip = np.zeros((n_metro, n_zip))
    p_zip[zip_metro, np.arange(n_zip)] = rng.dirichlet(np.ones(zpm), n_metro).ravel()
    zone_group = np.empty(len(region_names), dtype=np.int64)
    for i, (cty, names) in enumerate(zip(countries, codes)):
        zones = [table.zone_of(cty, code) for code in names]
        order = list(dict.fromkeys(zones))
        zone_group[first_region[i]:first_region[i] + len(names)] = [order.index(z)
                                                                    for z in zones]
    arrays = {"p_metro": normalize(p_metro), "metro_country": metro_country,
              "metro_region": metro_region, "p_zip": p_zip,
              "metro_zone_group": zone_group[metro_region]}
    vocab = {"countries": countries, "geo_regions": region_names, "metros": metro_names,
             "zips": [f"{10000 + 37 * z:05d}" for z in range(n_zip)]}
    return arrays, vocab


class ZoneGroups:
    """Every (country, zone group) of a world with a geo_region that names it, and its clock."""

    def __init__(self, vocab: dict[str, list], arrays: dict[str, np.ndarray],
                 table: geo.OffsetTable):
        metro_country, metro_group = arrays["metro_country"], arrays["metro_zone_group"]
        self.n_groups = np.array([metro_group[metro_country == c].max() + 1
                                  for c in range(len(vocab["countries"]))])
        self.first = np.concatenate([[0], np.cumsum(self.n_groups)[:-1]])  # country -> group 0
        self.country = np.repeat(np.arange(len(self.n_groups)), self.n_groups)
        codes = [None] * int(self.n_groups.sum())
        for m in range(len(metro_group)):  # a representative geo_region of every group
            g = self.first[metro_country[m]] + metro_group[m]
            if codes[g] is None:
                codes[g] = vocab["geo_regions"][arrays["metro_region"][m]]
        self.codes = np.array(codes, dtype=object)
        self.country_codes = np.array(vocab["countries"], dtype=object)[self.country]
        self._table = table

    def offsets(self, ts: int) -> np.ndarray:
        """UTC offset (minutes) of every group at epoch second ``ts``."""
        return np.asarray(geo.local_offset_minutes(np.full(len(self.codes), ts),
                                                   self.country_codes, self.codes, self._table),
                          dtype=np.int64)

    def hour_segments(self, t0: int) -> dict[str, np.ndarray]:
        """Cut the UTC hour [t0, t0 + 3600) where each group's local (hour, weekday) changes.

        Returns (groups, J) arrays ``start`` and ``length`` (seconds from t0; padding has length
        0), ``hour`` and ``dow`` (local, as ``features.derive_time_features`` computes them).
        Assumes at most one offset change per group within an hour (true of every IANA zone).
        """
        off0, off1 = self.offsets(t0), self.offsets(t0 + HOUR - 1)
        segs = []
        for g in range(len(off0)):
            pieces = [(0, HOUR, off0[g])]
            if off1[g] != off0[g]:
                lo, hi = t0, t0 + HOUR - 1  # offset is off0 at lo, off1 at hi: bisect
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    lo, hi = (mid, hi) if self._offset_of(g, mid) == off0[g] else (lo, mid)
                pieces = [(0, hi - t0, off0[g]), (hi - t0, HOUR, off1[g])]
            cuts = []
            for a, b, off in pieces:
                boundary = (-(t0 + 60 * int(off))) % HOUR  # next local hour start, from t0
                if a < boundary < b:
                    cuts += [(a, boundary, off), (boundary, b, off)]
                else:
                    cuts.append((a, b, off))
            segs.append(cuts)
        J = max(len(s) for s in segs)
        out = {k: np.zeros((len(segs), J), dtype=np.int64)
               for k in ("start", "length", "hour", "dow")}
        for g, cuts in enumerate(segs):
            for j, (a, b, off) in enumerate(cuts):
                local_minutes = (t0 + a) // 60 + int(off)
                out["start"][g, j], out["length"][g, j] = a, b - a
                out["hour"][g, j] = (local_minutes // 60) % 24
                out["dow"][g, j] = ((local_minutes // 1440) + 3) % 7
        return out

    def _offset_of(self, g: int, ts: int) -> int:
        """UTC offset (minutes) of group ``g`` at epoch second ``ts``."""
        return int(geo.local_offset_minutes(int(ts), str(self.country_codes[g]),
                                            str(self.codes[g]), self._table))

