"""The draws behind a world's parameter tables, one function per part of the generative model.

``world.build_params`` calls them in a fixed order on one generator: that order IS the world
(same seed -> same bytes), so a function here may add draws only on a branch that the existing
presets never take.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pythia.synth import catalog, longtail
from pythia.synth.catalog import (AD_FORMATS, AD_SIZES_OF_FORMAT, APP_SHARE, BROWSERS_OF_OS,
                                  CATEGORY_OF_INTEREST, DEVICE_TYPES, FORMAT_BASE,
                                  GLOBAL_SITE_SHARE, INTERESTS, INVENTORY_FACTOR, N_AGE,
                                  N_CLASS, OS_VERSIONS, SUPPLY_VENDORS)

if TYPE_CHECKING:
    from pythia.synth.world import WorldConfig

Arrays = dict[str, np.ndarray]

# Country sets: country -> (share of users, youth); and the subdivisions a set names for its
# countries with several zones (the others get synthetic codes 'XX-01', 'XX-02', ...).
COUNTRY_SETS: dict[str, dict[str, tuple[float, float]]] = {
    "core": {c: (catalog.COUNTRY_SHARE[c], catalog.COUNTRY_YOUTH[c])
             for c in catalog.COUNTRY_SHARE},
    "global40": longtail.COUNTRIES,
}
SUBDIVISION_SETS: dict[str, dict[str, tuple[tuple[str, float], ...]]] = {
    "core": {}, "global40": longtail.SUBDIVISIONS}
# Device catalogs: (device type, make, OS, models) entries and the share of each device type.
DEVICE_CATALOGS: dict[str, tuple[tuple, tuple[float, ...]]] = {
    "core": (catalog.DEVICE_CATALOG, catalog.DEVICE_TYPE_SHARE),
    "longtail": (longtail.DEVICE_CATALOG, longtail.DEVICE_TYPE_SHARE),
}

# The long-tail device catalog: Zipf exponents over makes (catalog order) and over models
# within a make, and the spread of a market's taste for a make.
MAKE_ZIPF, MODEL_ZIPF, MARKET_TASTE = 1.2, 2.0, 0.7

AGE_POS = (np.arange(N_AGE) - (N_AGE - 1) / 2) / ((N_AGE - 1) / 2)  # -1 (young) .. 1 (old)
CLS_AGE = np.tile(AGE_POS, 2)
CLS_GENDER = np.repeat([-1.0, 1.0], N_AGE)  # F = -1, M = +1


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - np.max(logits, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def normalize(p: np.ndarray, axis: int = -1) -> np.ndarray:
    s = p.sum(axis=axis, keepdims=True)
    return np.divide(p, s, out=np.zeros_like(p, dtype=float), where=s > 0)


def draw_demographics(rng: np.random.Generator, config: WorldConfig) -> Arrays:
    """Country shares and P(AgeGender | country): the config's age shares tilted by youth."""
    countries = COUNTRY_SETS[config.country_set]
    share = np.array([countries[c][0] for c in countries])
    base_age = np.log(np.array(config.age_shares))
    prior = np.empty((len(countries), N_CLASS))
    m = config.male_share
    for i, c in enumerate(countries):
        age_logit = base_age - 0.6 * countries[c][1] * AGE_POS + rng.normal(0, 0.1, N_AGE)
        p_male = np.clip(rng.normal(m, 0.03), m - 0.1, m + 0.1)
        p_age_g = np.stack([softmax(age_logit + rng.normal(0, 0.1, N_AGE)) for _ in range(2)])
        prior[i] = (np.array([1 - p_male, p_male])[:, None] * p_age_g).ravel()
    return {"country_share": share / share.sum(), "prior": prior}


def draw_interests(rng: np.random.Generator, config: WorldConfig) -> Arrays:
    """Latent interests: P(z | AgeGender) with a gender axis and a smooth age trend."""
    K, s = config.n_interests, config.interest_strength
    g_eff = rng.normal(0, 1, K)
    a_eff = rng.normal(0, 1, K)
    theta_logit = (s * (0.8 * np.outer(CLS_GENDER, g_eff) + 0.8 * np.outer(CLS_AGE, a_eff))
                   + rng.normal(0, 0.5 * s, (N_CLASS, K)))
    return {"theta": softmax(theta_logit)}


def draw_time(rng: np.random.Generator, config: WorldConfig) -> Arrays:
    """Intensity by local day-of-week and hour, mean 1 over the week per class.

    Everyone sleeps (the same night dip for all); ``time_strength`` scales what differs by
    class: the diurnal peak (young late evening, 65+ late morning), weekend traffic, noise.
    """
    hours = np.arange(24)
    ts = config.time_strength
    peak = 21.5 - 5.0 * (AGE_POS + 1)
    W = np.empty((N_CLASS, 7, 24))
    weekend = np.array([0, 0, 0, 0, 0.1, 0.3, 0.3])
    for k in range(N_CLASS):
        a_idx = k % N_AGE
        night = -1.2 * np.exp(-0.5 * ((hours - 4.0) / 2.2) ** 2)
        diurnal = 0.8 * ts * np.cos(2 * np.pi * (hours - peak[a_idx] - 0.5 * CLS_GENDER[k]) / 24)
        wk = weekend * (1.0 - 1.5 * (AGE_POS[a_idx] + 1) / 2) * ts  # young: more weekend traffic
        logw = night[None, :] + diurnal[None, :] + wk[:, None] + rng.normal(0, 0.08 * ts, (7, 24))
        W[k] = np.exp(logw)
    W /= W.mean(axis=(1, 2), keepdims=True)
    return {"W": W}


def draw_sites(rng: np.random.Generator, config: WorldConfig, country_share: np.ndarray
               ) -> tuple[Arrays, dict[str, list]]:
    """Sites and apps: Zipf popularity, a primary interest, home country or global reach."""
    S, K, n_cty = config.n_sites, config.n_interests, len(country_share)
    site_interest = rng.integers(0, K, S)
    site_inventory = (rng.random(S) < APP_SHARE).astype(np.int64)
    site_category = np.where(rng.random(S) < 0.85, site_interest, rng.integers(0, K, S))
    is_global = rng.random(S) < GLOBAL_SITE_SHARE
    home = rng.choice(n_cty, S, p=country_share)
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
    words = list(INTERESTS[:K])
    names = [f"com.{words[site_interest[s]]}.app{s}" if site_inventory[s]
             else f"{words[site_interest[s]]}{s}.com" for s in range(S)]
    arrays = {"p_site": normalize(p_site), "site_inventory": site_inventory,
              "site_category": site_category, "site_interest": site_interest}
    vocab = {"interests": words, "categories": [CATEGORY_OF_INTEREST[i] for i in words],
             "sites": names}
    return arrays, vocab


def _device_index(entries: tuple) -> dict[str, Any]:
    """Model names and each model's device type, make and OS (indices) of a device catalog."""
    out: dict[str, Any] = {"models": [], "type": [], "make": [], "os": [], "make_rank": []}
    makes = sorted({make for _, make, _, _ in entries})
    os_names = list(OS_VERSIONS)
    first_of: dict[tuple[str, str], int] = {}  # (type, make) -> its order within the type
    for dtype, make, os_name, models in entries:
        rank = first_of.setdefault((dtype, make), sum(t == dtype for t, _ in first_of))
        for m in models:
            out["models"].append(m)
            out["type"].append(DEVICE_TYPES.index(dtype))
            out["make"].append(makes.index(make))
            out["os"].append(os_names.index(os_name))
            out["make_rank"].append(rank)
    if len(set(out["models"])) != len(out["models"]):
        raise ValueError("device catalog: model names must be unique")
    out.update({k: np.array(out[k]) for k in ("type", "make", "os", "make_rank")},
               makes=makes, os_names=os_names)
    return out


def device_makes(catalog: str) -> list[str]:
    """The device makes of a catalog, in the order the world's make axes use."""
    return _device_index(DEVICE_CATALOGS[catalog][0])["makes"]


def regional_make_effects(seed: int, config: WorldConfig, countries: list[str], n_makes: int
                          ) -> tuple[np.ndarray, np.ndarray]:
    """What a device make says about age and gender in each model region, beyond what it says
    everywhere: (n_cty, n_makes) age and gender effects, the same for every country of a region.

    ``config.regional_make_strength`` gives each region's scale (in units of
    ``device_strength``; regions it omits get none). Drawn from their own stream
    (``SeedSequence([seed, 2])``), so with every strength 0 the world is the one without them.
    """
    from pythia.geo.countries import region_of

    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    strength = dict(config.regional_make_strength)
    names = sorted({region_of(c) for c in countries})
    draws = {r: (rng.normal(0, 1, n_makes), rng.normal(0, 0.5, n_makes)) for r in names}
    age = np.zeros((len(countries), n_makes))
    gen = np.zeros((len(countries), n_makes))
    for i, c in enumerate(countries):
        scale = strength.get(region_of(c), 0.0) * config.device_strength
        age[i], gen[i] = scale * draws[region_of(c)][0], scale * draws[region_of(c)][1]
    return age, gen


def draw_devices(rng: np.random.Generator, config: WorldConfig, n_cty: int,
                 regional: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> tuple[Arrays, dict[str, list]]:
    """P(device model | country, AgeGender): a type share, country taste by make, demography,
    and the ``regional`` make effects (``regional_make_effects``; None: none).

    The core catalog is uniform within a device type; the long tail is Zipf over makes (in
    catalog order) and over models within a make (a drawn order), with effects by make too.
    """
    entries, type_share = DEVICE_CATALOGS[config.device_catalog]
    d = _device_index(entries)
    model_type, model_make, M = d["type"], d["make"], len(d["models"])
    n_in_type = np.bincount(model_type, minlength=len(DEVICE_TYPES))
    base = np.log(np.array(type_share)[model_type] / n_in_type[model_type])
    country_make = rng.normal(0, 0.7, (n_cty, len(d["makes"])))
    if config.device_catalog != "core":
        base = np.log(np.array(type_share)[model_type]) + _zipf_models(rng, d)
        country_make *= MARKET_TASTE / 0.7  # brands differ a lot between markets
    s = config.device_strength
    m_age = rng.normal(0, s, M)
    m_gen = rng.normal(0, 0.5 * s, M)
    m_noise = rng.normal(0, 0.3 * s, (N_CLASS, M))
    if config.device_catalog != "core":  # a brand's buyers lean one way; its phones share it
        m_age = m_age + rng.normal(0, 0.7 * s, len(d["makes"]))[model_make]
        m_gen = m_gen + rng.normal(0, 0.5 * s, len(d["makes"]))[model_make]
    logit = (base[None, None, :] + country_make[:, None, model_make]
             + (np.outer(CLS_AGE, m_age) + np.outer(CLS_GENDER, m_gen) + m_noise)[None])
    if regional is not None:  # a make means something else here: its buyers lean elsewhere
        r_age, r_gen = regional
        logit = logit + (CLS_AGE[None, :, None] * r_age[:, None, model_make]
                         + CLS_GENDER[None, :, None] * r_gen[:, None, model_make])
    arrays = {"p_model": softmax(logit), "model_type": model_type, "model_make": model_make,
              "model_os": d["os"]}
    vocab = {"device_types": list(DEVICE_TYPES), "makes": d["makes"], "oses": d["os_names"],
             "models": d["models"]}
    return arrays, vocab


def _zipf_models(rng: np.random.Generator, d: dict[str, Any]) -> np.ndarray:
    """log P(model | device type) of a long tail: Zipf over makes, then over models in a make."""
    out = np.empty(len(d["models"]))
    make_w = 1.0 / (d["make_rank"] + 1.0) ** MAKE_ZIPF
    for t in np.unique(d["type"]):
        in_type = d["type"] == t
        makes = np.unique(d["make"][in_type])
        total = sum(make_w[in_type & (d["make"] == mk)][0] for mk in makes)
        for mk in makes:
            idx = np.flatnonzero(in_type & (d["make"] == mk))
            w = 1.0 / (rng.permutation(len(idx)) + 1.0) ** MODEL_ZIPF
            out[idx] = np.log(make_w[idx[0]] / total * w / w.sum())
    return out


def draw_software(rng: np.random.Generator, config: WorldConfig, os_names: list[str]
                  ) -> tuple[Arrays, dict[str, list]]:
    """OS versions (young users lean to newer ones) and browsers per OS, by AgeGender."""
    ss = config.software_strength
    osv_os, osv_names = [], []
    for o, vs in OS_VERSIONS.items():
        for v in vs:
            osv_os.append(os_names.index(o))
            osv_names.append(v)
    osv_os_a = np.array(osv_os)
    p_osv = np.zeros((len(os_names), N_CLASS, len(osv_names)))
    for o in range(len(os_names)):
        idx = np.flatnonzero(osv_os_a == o)
        r = np.arange(len(idx)) - (len(idx) - 1) / 2
        newness = -0.8 * ss * CLS_AGE + rng.normal(0, 0.2 * ss, N_CLASS)
        p_osv[o][:, idx] = softmax(np.outer(newness, r) + rng.normal(0, 0.3, (1, len(idx))))
    browser_names = sorted({b for bs in BROWSERS_OF_OS.values() for b in bs})
    p_browser = np.zeros((len(os_names), N_CLASS, len(browser_names)))
    for o, name in enumerate(os_names):
        allowed = [browser_names.index(b) for b in BROWSERS_OF_OS.get(name, ())]
        if allowed:
            n = len(allowed)
            lg = (rng.normal(0, 1.0, (1, n)) + np.outer(CLS_AGE, rng.normal(0, .5 * ss, n))
                  + rng.normal(0, 0.3 * ss, (N_CLASS, n)))
            lg[:, 0] += 1.0  # the platform's own browser dominates
            p_browser[o][:, allowed] = softmax(lg)
    arrays = {"p_osv": p_osv, "osv_os": osv_os_a, "p_browser": p_browser}
    return arrays, {"os_versions": osv_names, "browsers": browser_names}


def draw_ad_slot(rng: np.random.Generator, config: WorldConfig, n_cty: int
                 ) -> tuple[Arrays, dict[str, list]]:
    """Ad format by device type and interest; size by format and device type; supply vendor."""
    K = config.n_interests
    fmt_noise = np.exp(rng.normal(0, 0.4, (K, len(AD_FORMATS))))
    size_names = [s for f in AD_FORMATS for s in AD_SIZES_OF_FORMAT[f]]
    size_format = np.array([AD_FORMATS.index(f) for f in AD_FORMATS
                            for _ in AD_SIZES_OF_FORMAT[f]])
    p_size = np.zeros((len(AD_FORMATS), len(DEVICE_TYPES), len(size_names)))
    for f in range(len(AD_FORMATS)):
        idx = np.flatnonzero(size_format == f)
        p_size[f][:, idx] = rng.dirichlet(2 * np.ones(len(idx)), len(DEVICE_TYPES))
    arrays = {
        "p_format": normalize(FORMAT_BASE[:, None, :] * fmt_noise[None]),  # (dtype, z, fmt)
        "p_size": p_size,  # (format, dtype, size); independent of demographics
        "p_vendor": rng.dirichlet(1.5 * np.ones(len(SUPPLY_VENDORS)), (n_cty, 2)),
    }
    return arrays, {"formats": list(AD_FORMATS), "sizes": size_names,
                    "vendors": list(SUPPLY_VENDORS)}


def power_marginals(arrays: Arrays, config: WorldConfig) -> Arrays:
    """The marginals a power user's features follow when they ignore the user's demographics."""
    a, lam = arrays, config.power_user_informative
    pz = a["prior"] @ a["theta"]  # P(z | country)
    return {
        "m_site": np.einsum("ck,ckds->cds", pz, a["p_site"]),  # (country, dtype, site)
        "m_model": np.einsum("cg,cgm->cm", a["prior"], a["p_model"]),
        "m_metro": np.einsum("cg,cgm->cm", a["prior"], a["p_metro"]),
        "m_osv": a["p_osv"].mean(axis=1),
        "m_browser": a["p_browser"].mean(axis=1),
        "m_format": a["p_format"].mean(axis=1),  # (dtype, fmt)
        "W_power": lam * a["W"] + (1 - lam) * a["W"].mean(axis=0, keepdims=True),
    }


def draw_providers(rng: np.random.Generator, config: WorldConfig, n_cty: int) -> Arrays:
    """Per-country coverage and a drifting confusion matrix per provider and label date."""
    P, D = len(config.providers), config.label_history_days
    coverage = rng.uniform(*config.coverage, (P, n_cty))
    age_acc = np.empty((P, n_cty))
    gen_acc = np.empty((P, n_cty))
    for i in range(n_cty):
        best = i % P  # a different provider is best in different countries
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
        off = normalize(off)
        for i in range(n_cty):
            for d in range(D):
                a, g = age_acc_d[p, i, d], gen_acc_d[p, i, d]
                age_m = a * np.eye(N_AGE) + (1 - a) * off
                gen_m = np.array([[g, 1 - g], [1 - g, g]])
                confusion[p, i, d] = np.kron(gen_m, age_m)  # gender-major, like the classes
    # (provider, country, label date, true class, label class)
    return {"coverage": coverage, "confusion": confusion}
