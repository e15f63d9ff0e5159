"""The synthetic world's generative model: presets and every parameter table, drawn from a seed.

``build_params(config, seed)`` draws all tables deterministically; the generator samples from
them and the exact posterior reads the very same tables, so the two can never disagree. Every
impression feature depends on the user only through (AgeGender, country, interest z, power flag)
and on time only through the local hour/day-of-week intensity, which is what makes the posterior
exact.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pythia.config import DEFAULT_AGE_EDGES, DEFAULT_REGION_OF_COUNTRY, DEFAULT_UTC_OFFSET_MINUTES
from pythia.features import age_bucket_labels, age_gender_labels
from pythia.synth.catalog import (AD_FORMATS, AD_SIZES_OF_FORMAT, APP_SHARE, BROWSERS_OF_OS,
                                  CATEGORY_OF_INTEREST, COUNTRY_SHARE, COUNTRY_YOUTH,
                                  DEVICE_CATALOG, DEVICE_TYPE_SHARE, DEVICE_TYPES, FORMAT_BASE,
                                  GLOBAL_SITE_SHARE, INTERESTS, INVENTORY_FACTOR,
                                  INVENTORY_TYPES, OS_VERSIONS, SUPPLY_VENDORS)

N_AGE = len(DEFAULT_AGE_EDGES)
N_CLASS = 2 * N_AGE  # AgeGender, gender-major (features.age_gender_labels order)
CLASS_LABELS = age_gender_labels()
AGE_LABELS = age_bucket_labels()
MAX_SYNTH_AGE = 90  # ages in the open 65+ bucket are drawn in [65, MAX_SYNTH_AGE]


@dataclass(frozen=True)
class WorldConfig:
    """Size and shape of a synthetic world (the generative parameters are drawn from the seed)."""

    n_users: int = 60_000  # users in the world, all countries
    days: int = 5  # UTC days of impressions ending at end_date (5 = exactly one window)
    end_date: str = "2026-11-20"  # the newest (test) day; fixed so a world never depends on today
    n_sites: int = 3_000  # sites and apps, Zipf popularity
    n_interests: int = 12  # latent interest topics z (at most len(INTERESTS))
    impressions_per_user_day: float = 7.0  # population mean, power users included
    activity_sigma: float = 1.0  # lognormal spread of per-user activity (the heavy tail)
    power_user_share: float = 0.01  # rate of the latent power-user flag
    power_user_multiplier: float = 30.0  # a power user's activity relative to an ordinary one
    power_user_informative: float = 0.2  # chance a power user's feature follows their demographics
    interest_strength: float = 1.3  # spread of log P(z | AgeGender); higher = more informative
    site_affinity: float = 2.2  # log-boost of a site for users of its primary interest
    device_strength: float = 0.9  # spread of demographic effects on device model choice
    metros_per_country: int = 16
    zips_per_metro: int = 12
    providers: tuple[str, ...] = ("lucid", "datamax", "tapir")  # label providers; >= 3
    label_history_days: int = 14  # label observations fall on these days up to end_date
    extra_observations: float = 0.6  # mean extra observations per labelled user (Poisson)
    bucket_only_share: float = 0.05  # label rows with age_bucket only (age null)
    label_drift: float = 0.015  # daily std of the random walk on each provider's accuracy
    metrics_noise: float = 0.01  # std of the noise on published provider metrics

    def __post_init__(self) -> None:
        if self.n_users < 1 or self.days < 1 or self.n_sites < 10:
            raise ValueError(f"WorldConfig needs n_users>=1, days>=1, n_sites>=10: {self}")
        if not 2 <= self.n_interests <= len(INTERESTS):
            raise ValueError(f"n_interests must be in [2, {len(INTERESTS)}], got "
                             f"{self.n_interests}")
        if len(self.providers) < 3 or len(set(self.providers)) != len(self.providers):
            raise ValueError(f"need >= 3 distinct providers, got {self.providers}")
        if self.label_history_days < 1:
            raise ValueError(f"label_history_days must be >= 1, got {self.label_history_days}")
        dt.date.fromisoformat(self.end_date)

    @property
    def dates(self) -> list[dt.date]:
        end = dt.date.fromisoformat(self.end_date)
        return [end - dt.timedelta(days=k) for k in range(self.days - 1, -1, -1)]

    @property
    def label_dates(self) -> list[dt.date]:
        end = dt.date.fromisoformat(self.end_date)
        return [end - dt.timedelta(days=k) for k in range(self.label_history_days - 1, -1, -1)]

    def to_json(self) -> dict:
        doc = dataclasses.asdict(self)
        doc["providers"] = list(self.providers)
        return doc

    @classmethod
    def from_json(cls, doc: dict) -> "WorldConfig":
        doc = dict(doc)
        doc["providers"] = tuple(doc["providers"])
        return cls(**doc)


PRESETS: dict[str, WorldConfig] = {
    # tests: a few seconds, ~30k impressions, every hour and region present
    "tiny": WorldConfig(n_users=400, n_sites=300, impressions_per_user_day=15.0,
                        metros_per_country=6, zips_per_metro=4, label_history_days=7),
    # the demo: ~2.1M impressions over one 5-day window
    "default": WorldConfig(),
    # scale: ~56M impressions over 7 days, streamed partition by partition
    "large": WorldConfig(n_users=2_000_000, days=7, n_sites=10_000,
                         impressions_per_user_day=4.0, metros_per_country=24),
}


@dataclass
class WorldParams:
    """Every table of the generative model. ``vocab`` holds catalogs, ``arrays`` the numbers."""

    config: WorldConfig
    seed: int
    vocab: dict[str, list] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        # Tables read like attributes (params.p_site); only reached when normal lookup fails.
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    def meta_json(self) -> dict:
        return {"config": self.config.to_json(), "seed": self.seed, "vocab": self.vocab,
                "class_labels": list(CLASS_LABELS), "age_edges": list(DEFAULT_AGE_EDGES)}


def _softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - np.max(logits, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _normalize(p: np.ndarray, axis: int = -1) -> np.ndarray:
    s = p.sum(axis=axis, keepdims=True)
    return np.divide(p, s, out=np.zeros_like(p, dtype=float), where=s > 0)


def build_params(config: WorldConfig, seed: int) -> WorldParams:
    """Draw every parameter table of the world from ``seed`` (deterministic)."""
    # One long function on purpose: the order of the draws from this one ``rng`` IS the world
    # (same seed -> same bytes), so the sections below (marked ``# ----``) share it in sequence.
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    countries = list(DEFAULT_REGION_OF_COUNTRY)
    n_cty, K = len(countries), config.n_interests
    age_pos = (np.arange(N_AGE) - (N_AGE - 1) / 2) / ((N_AGE - 1) / 2)  # -1 (young) .. 1 (old)
    cls_age = np.tile(age_pos, 2)
    cls_gender = np.repeat([-1.0, 1.0], N_AGE)  # F = -1, M = +1
    arrays: dict[str, np.ndarray] = {}

    # ---- demographics per country
    share = np.array([COUNTRY_SHARE[c] for c in countries])
    arrays["country_share"] = share / share.sum()
    base_age = np.log(np.array([.16, .22, .20, .17, .13, .12]))
    prior = np.empty((n_cty, N_CLASS))
    for i, c in enumerate(countries):
        age_logit = base_age - 0.6 * COUNTRY_YOUTH[c] * age_pos + rng.normal(0, 0.1, N_AGE)
        p_male = np.clip(rng.normal(0.5, 0.03), 0.4, 0.6)
        p_age_g = np.stack([_softmax(age_logit + rng.normal(0, 0.1, N_AGE)) for _ in range(2)])
        prior[i] = (np.array([1 - p_male, p_male])[:, None] * p_age_g).ravel()
    arrays["prior"] = prior

    # ---- latent interests: P(z | AgeGender) with a gender axis and a smooth age trend
    g_eff = rng.normal(0, 1, K)
    a_eff = rng.normal(0, 1, K)
    theta_logit = (config.interest_strength * (0.8 * np.outer(cls_gender, g_eff)
                                               + 0.8 * np.outer(cls_age, a_eff))
                   + rng.normal(0, 0.5 * config.interest_strength, (N_CLASS, K)))
    arrays["theta"] = _softmax(theta_logit)

    # ---- time: intensity by local day-of-week and hour, mean 1 over the week
    hours = np.arange(24)
    peak = 21.5 - 5.0 * (age_pos + 1)  # young peak late evening, 65+ late morning
    W = np.empty((N_CLASS, 7, 24))
    weekend = np.array([0, 0, 0, 0, 0.1, 0.3, 0.3])
    for k in range(N_CLASS):
        a_idx = k % N_AGE
        night = -1.2 * np.exp(-0.5 * ((hours - 4.0) / 2.2) ** 2)  # everyone sleeps
        diurnal = 0.8 * np.cos(2 * np.pi * (hours - peak[a_idx] - 0.5 * cls_gender[k]) / 24)
        wk = weekend * (1.0 - 1.5 * (age_pos[a_idx] + 1) / 2)  # young: more weekend traffic
        logw = night[None, :] + diurnal[None, :] + wk[:, None] + rng.normal(0, 0.08, (7, 24))
        W[k] = np.exp(logw)
    W /= W.mean(axis=(1, 2), keepdims=True)
    arrays["W"] = W

    # ---- sites and apps
    S = config.n_sites
    site_interest = rng.integers(0, K, S)
    site_inventory = (rng.random(S) < APP_SHARE).astype(np.int64)
    categories = [CATEGORY_OF_INTEREST[i] for i in INTERESTS[:K]]
    site_category = np.where(rng.random(S) < 0.85, site_interest, rng.integers(0, K, S))
    is_global = rng.random(S) < GLOBAL_SITE_SHARE
    home = rng.choice(n_cty, S, p=arrays["country_share"])
    rank = rng.permutation(S)
    pop = 1.0 / (rank + 1.0) ** 1.05
    aff = np.exp(config.site_affinity * (site_interest[:, None] == np.arange(K)[None, :])
                 + rng.normal(0, 0.6, (S, K)))
    geo = np.where(is_global[:, None], 1.0,
                   np.where(home[:, None] == np.arange(n_cty)[None, :], 3.0, 0.02))
    inv_fac = INVENTORY_FACTOR[site_inventory]  # (S, 4)
    # p_site[country, z, device_type, site]
    p_site = (pop[None, None, None, :] * geo.T[:, None, None, :] * aff.T[None, :, None, :]
              * inv_fac.T[None, None, :, :])
    arrays["p_site"] = _normalize(p_site)
    arrays["site_inventory"] = site_inventory
    arrays["site_category"] = site_category
    arrays["site_interest"] = site_interest
    words = [w for w in INTERESTS[:K]]
    site_names = [f"com.{words[site_interest[s]]}.app{s}" if site_inventory[s]
                  else f"{words[site_interest[s]]}{s}.com" for s in range(S)]

    # ---- devices
    model_names, model_type, model_make, model_os = [], [], [], []
    makes = sorted({m for _, m, _, _ in DEVICE_CATALOG})
    os_names = list(OS_VERSIONS)
    for dtype, make, os_name, models in DEVICE_CATALOG:
        for m in models:
            model_names.append(m)
            model_type.append(DEVICE_TYPES.index(dtype))
            model_make.append(makes.index(make))
            model_os.append(os_names.index(os_name))
    model_type_a = np.array(model_type)
    M = len(model_names)
    n_in_type = np.bincount(model_type_a, minlength=len(DEVICE_TYPES))
    base = np.log(np.array(DEVICE_TYPE_SHARE)[model_type_a] / n_in_type[model_type_a])
    country_make = rng.normal(0, 0.7, (n_cty, len(makes)))
    m_age = rng.normal(0, config.device_strength, M)
    m_gen = rng.normal(0, 0.5 * config.device_strength, M)
    m_noise = rng.normal(0, 0.3 * config.device_strength, (N_CLASS, M))
    logit = (base[None, None, :] + country_make[:, None, np.array(model_make)]
             + (np.outer(cls_age, m_age) + np.outer(cls_gender, m_gen) + m_noise)[None])
    arrays["p_model"] = _softmax(logit)  # (country, class, model)
    arrays["model_type"] = model_type_a
    arrays["model_make"] = np.array(model_make)
    arrays["model_os"] = np.array(model_os)

    osv_os, osv_names = [], []
    for o, vs in OS_VERSIONS.items():
        for v in vs:
            osv_os.append(os_names.index(o))
            osv_names.append(v)
    osv_os_a = np.array(osv_os)
    V = len(osv_names)
    p_osv = np.zeros((len(os_names), N_CLASS, V))
    for o in range(len(os_names)):
        idx = np.flatnonzero(osv_os_a == o)
        r = np.arange(len(idx)) - (len(idx) - 1) / 2
        newness = -0.8 * cls_age + rng.normal(0, 0.2, N_CLASS)
        p_osv[o][:, idx] = _softmax(np.outer(newness, r) + rng.normal(0, 0.3, (1, len(idx))))
    arrays["p_osv"] = p_osv
    arrays["osv_os"] = osv_os_a

    browser_names = sorted({b for bs in BROWSERS_OF_OS.values() for b in bs})
    B = len(browser_names)
    p_browser = np.zeros((len(os_names), N_CLASS, B))
    for o, name in enumerate(os_names):
        allowed = [browser_names.index(b) for b in BROWSERS_OF_OS.get(name, ())]
        if allowed:
            lg = (rng.normal(0, 1.0, (1, len(allowed))) + np.outer(cls_age, rng.normal(0, .5, len(allowed)))
                  + rng.normal(0, 0.3, (N_CLASS, len(allowed))))
            lg[:, 0] += 1.0  # the platform's own browser dominates
            p_browser[o][:, allowed] = _softmax(lg)
    arrays["p_browser"] = p_browser

    # ---- geography: geo_region > metro > zip; metro choice depends on country and age
    mpc, zpm = config.metros_per_country, config.zips_per_metro
    n_metro = n_cty * mpc
    metro_country = np.repeat(np.arange(n_cty), mpc)
    regions_per_country = max(2, mpc // 3)
    metro_region = (metro_country * regions_per_country
                    + rng.integers(0, regions_per_country, n_metro))
    region_names = [f"{countries[i]}-{r + 1:02d}" for i in range(n_cty)
                    for r in range(regions_per_country)]
    metro_names = [f"{countries[metro_country[m]]}-M{m % mpc + 1:03d}" for m in range(n_metro)]
    metro_rank = np.tile(np.arange(mpc), n_cty)
    urban = 1.0 - metro_rank / max(1, mpc - 1)  # big metros are urban
    metro_pop = 1.0 / (metro_rank + 1.0)
    youth = -0.9 * cls_age + rng.normal(0, 0.1, N_CLASS)
    lg = (np.log(metro_pop)[None, :] + np.outer(youth, urban)
          + rng.normal(0, 0.3, (N_CLASS, n_metro)))
    own = metro_country[None, :] == np.arange(n_cty)[:, None]  # (country, metro)
    p_metro = np.where(own[:, None, :], np.exp(lg)[None], 0.0)
    arrays["p_metro"] = _normalize(p_metro)  # (country, class, metro)
    arrays["metro_country"] = metro_country
    arrays["metro_region"] = metro_region
    n_zip = n_metro * zpm
    zip_metro = np.repeat(np.arange(n_metro), zpm)
    p_zip = np.zeros((n_metro, n_zip))
    p_zip[zip_metro, np.arange(n_zip)] = rng.dirichlet(np.ones(zpm), n_metro).ravel()
    arrays["p_zip"] = p_zip
    zip_names = [f"{10000 + 37 * z:05d}" for z in range(n_zip)]

    # ---- ad slot
    fmt_noise = np.exp(rng.normal(0, 0.4, (K, len(AD_FORMATS))))
    arrays["p_format"] = _normalize(FORMAT_BASE[:, None, :] * fmt_noise[None])  # (dtype, z, fmt)
    size_names = [s for f in AD_FORMATS for s in AD_SIZES_OF_FORMAT[f]]
    size_format = np.array([AD_FORMATS.index(f) for f in AD_FORMATS
                            for _ in AD_SIZES_OF_FORMAT[f]])
    p_size = np.zeros((len(AD_FORMATS), len(DEVICE_TYPES), len(size_names)))
    for f in range(len(AD_FORMATS)):
        idx = np.flatnonzero(size_format == f)
        p_size[f][:, idx] = rng.dirichlet(2 * np.ones(len(idx)), len(DEVICE_TYPES))
    arrays["p_size"] = p_size  # (format, dtype, size); independent of demographics
    arrays["p_vendor"] = rng.dirichlet(1.5 * np.ones(len(SUPPLY_VENDORS)), (n_cty, 2))

    # ---- power users: each feature follows demographics with prob lam, else these marginals
    pz = arrays["prior"] @ arrays["theta"]  # P(z | country)
    arrays["m_site"] = np.einsum("ck,ckds->cds", pz, arrays["p_site"])  # (country, dtype, site)
    arrays["m_model"] = np.einsum("cg,cgm->cm", prior, arrays["p_model"])
    arrays["m_metro"] = np.einsum("cg,cgm->cm", prior, arrays["p_metro"])
    arrays["m_osv"] = p_osv.mean(axis=1)
    arrays["m_browser"] = p_browser.mean(axis=1)
    arrays["m_format"] = arrays["p_format"].mean(axis=1)  # (dtype, fmt)
    lam = config.power_user_informative
    arrays["W_power"] = lam * W + (1 - lam) * W.mean(axis=0, keepdims=True)

    # ---- providers: per-country coverage and a confusion matrix per observed date
    P, D = len(config.providers), config.label_history_days
    coverage = rng.uniform(0.45, 0.70, (P, n_cty))
    age_acc = np.empty((P, n_cty))
    gen_acc = np.empty((P, n_cty))
    for i in range(n_cty):
        best = i % P  # a different provider is best in different countries (US -> lucid)
        for p in range(P):
            age_acc[p, i] = rng.uniform(0.76, 0.86) if p == best else rng.uniform(0.52, 0.72)
            gen_acc[p, i] = rng.uniform(0.93, 0.97) if p == best else rng.uniform(0.82, 0.92)
    older_bias = rng.uniform(0.6, 1.6, P)  # >1: errors lean to older buckets
    walk = np.cumsum(rng.normal(0, config.label_drift, (P, n_cty, D)), axis=2)
    age_acc_d = np.clip(age_acc[:, :, None] + walk, 0.3, 0.97)
    gen_acc_d = np.clip(gen_acc[:, :, None] + 0.5 * walk, 0.6, 0.995)
    dist = np.abs(np.arange(N_AGE)[:, None] - np.arange(N_AGE)[None, :])
    spread = np.select([dist == 1, dist == 2], [1.0, 0.15], 0.02)
    direction = np.where(np.arange(N_AGE)[None, :] > np.arange(N_AGE)[:, None], 1.0, 0.0)
    confusion = np.empty((P, n_cty, D, N_CLASS, N_CLASS))
    for p in range(P):
        off = spread * np.where(direction > 0, older_bias[p], 1.0)
        np.fill_diagonal(off, 0.0)
        off = _normalize(off)
        for i in range(n_cty):
            for d in range(D):
                a, g = age_acc_d[p, i, d], gen_acc_d[p, i, d]
                age_m = a * np.eye(N_AGE) + (1 - a) * off
                gen_m = np.array([[g, 1 - g], [1 - g, g]])
                confusion[p, i, d] = np.kron(gen_m, age_m)  # gender-major, like the classes
    arrays["coverage"] = coverage
    arrays["confusion"] = confusion  # (provider, country, label date, true class, label class)

    mean_mult = 1 - config.power_user_share + config.power_user_share * config.power_user_multiplier
    arrays["base_rate"] = np.array(config.impressions_per_user_day / 24.0 / mean_mult)

    vocab = {
        "countries": countries,
        "utc_offset_minutes": [int(DEFAULT_UTC_OFFSET_MINUTES.get(c, 0)) for c in countries],
        "interests": list(INTERESTS[:K]), "categories": categories, "sites": site_names,
        "inventory_types": list(INVENTORY_TYPES), "device_types": list(DEVICE_TYPES),
        "makes": makes, "oses": os_names, "models": model_names, "os_versions": osv_names,
        "browsers": browser_names, "geo_regions": region_names, "metros": metro_names,
        "zips": zip_names, "formats": list(AD_FORMATS), "sizes": size_names,
        "vendors": list(SUPPLY_VENDORS), "providers": list(config.providers),
        "label_dates": [d.isoformat() for d in config.label_dates],
    }
    return WorldParams(config=config, seed=seed, vocab=vocab, arrays=arrays)


def params_from_saved(meta: dict, arrays: dict[str, np.ndarray]) -> WorldParams:
    """Rebuild WorldParams from ``truth/world.json`` + ``truth/world.npz`` content."""
    return WorldParams(config=WorldConfig.from_json(meta["config"]), seed=int(meta["seed"]),
                       vocab=meta["vocab"], arrays=dict(arrays))


def dumps_meta(params: WorldParams, extra: dict | None = None) -> bytes:
    doc = params.meta_json()
    doc.update(extra or {})
    return json.dumps(doc, indent=1, sort_keys=True).encode()
