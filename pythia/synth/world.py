"""The synthetic world's generative model: presets and every parameter table, drawn from a seed.

``build_params(config, seed)`` draws all tables deterministically (``tables``, ``places``); the
generator samples from them and the exact posterior reads the very same tables, so the two can
never disagree. Every impression feature depends on the user only through (AgeGender, country,
interest z, power flag), and on time only through the intensity at the local hour/day-of-week
of the impression's zone (``pythia.geo``, daylight saving included), which is what makes the
posterior exact.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pythia import geo
from pythia.config import DEFAULT_AGE_EDGES
from pythia.synth import places, tables
from pythia.synth.activity import activity_levels
from pythia.synth.catalog import (AGE_LABELS, AGE_SHARES, CLASS_LABELS, INTERESTS,
                                  INVENTORY_TYPES, MAX_SYNTH_AGE, N_AGE, N_CLASS)
from pythia.synth.tables import COUNTRY_SETS, DEVICE_CATALOGS

# Bumped when the same (config, seed) gives another world, so caches regenerate: 2 = discrete
# activity levels (truth/world.npz gains the per-level user counts the posterior needs);
# 3 = regional make effects (regional_make_strength).
GENERATOR_VERSION = 3

__all__ = ["GENERATOR_VERSION", "AGE_LABELS", "CLASS_LABELS", "MAX_SYNTH_AGE", "N_AGE", "N_CLASS",
           "PRESETS", "WorldConfig", "WorldParams", "build_params", "params_from_saved",
           "dumps_meta"]


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
    # activity takes this many discrete levels: the lognormal cut where its normal z crosses
    # linspace(-2.8, 2.8, levels - 1), each level its bin's exact mean (activity.activity_levels),
    # so the posterior can condition on a user's impressions so far today by summing over levels.
    # Few levels leak class: a heavy user's count sits near a level times the exposure of its
    # class, so the posterior reads the class off the comb of levels, which no real log has
    # (16 levels, default world: 0.054 nats on power users' rows). From 32 on the posterior is
    # that of the continuous lognormal (32, 64, 256 agree); cost grows with the levels.
    activity_levels: int = 16
    power_user_share: float = 0.01  # rate of the latent power-user flag
    power_user_multiplier: float = 30.0  # a power user's activity relative to an ordinary one
    power_user_informative: float = 0.2  # chance a power user's feature follows their demographics
    interest_strength: float = 1.3  # spread of log P(z | AgeGender); higher = more informative
    site_affinity: float = 2.2  # log-boost of a site for users of its primary interest
    device_strength: float = 0.9  # spread of demographic effects on device model choice
    # (region, scale): what a device make says about age and gender differs by model region
    # (tables.regional_make_effects), scale in units of device_strength; none by default
    regional_make_strength: tuple[tuple[str, float], ...] = ()
    software_strength: float = 1.0  # scale of demographic effects on OS version and browser
    time_strength: float = 1.0  # scale of demographic effects on the local hour/weekday profile
    geo_strength: float = 1.0  # scale of demographic effects on the metro
    metros_per_country: int = 16
    zips_per_metro: int = 12
    country_set: str = "core"  # tables.COUNTRY_SETS: 'core' (12 countries) or 'global40'
    device_catalog: str = "core"  # tables.DEVICE_CATALOGS: 'core' or 'longtail' (Zipf, unicode)
    age_shares: tuple[float, ...] = AGE_SHARES  # age bucket shares before each country's tilt
    male_share: float = 0.5  # mean share of men (each country draws around it)
    providers: tuple[str, ...] = ("lucid", "datamax", "tapir")  # label providers; >= 2
    coverage: tuple[float, float] = (0.45, 0.70)  # range of a provider's per-country coverage
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
        if len(self.providers) < 2 or len(set(self.providers)) != len(self.providers):
            raise ValueError(f"need >= 2 distinct providers, got {self.providers}")
        if not 2 <= self.activity_levels <= 64 or self.activity_sigma < 0:
            raise ValueError(f"activity_levels must be in [2, 64] and activity_sigma >= 0, got "
                             f"{self.activity_levels}, {self.activity_sigma}")
        if self.label_history_days < 1:
            raise ValueError(f"label_history_days must be >= 1, got {self.label_history_days}")
        for name, value, choices in (("country_set", self.country_set, COUNTRY_SETS),
                                     ("device_catalog", self.device_catalog, DEVICE_CATALOGS)):
            if value not in choices:
                raise ValueError(f"{name} {value!r} is unknown; choose from {sorted(choices)}")
        if any(not isinstance(r, str) or not float(k) >= 0
               for r, k in self.regional_make_strength):
            raise ValueError("regional_make_strength needs (region, scale >= 0) pairs, got "
                             f"{self.regional_make_strength}")
        if len(self.age_shares) != N_AGE or min(self.age_shares) <= 0:
            raise ValueError(f"age_shares needs {N_AGE} positive shares, got {self.age_shares}")
        if not 0.1 < self.male_share < 0.9:
            raise ValueError(f"male_share must be in (0.1, 0.9), got {self.male_share}")
        if not 0 < self.coverage[0] <= self.coverage[1] <= 1:
            raise ValueError(f"coverage must be a range (lo, hi) in (0, 1], got {self.coverage}")
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
        return {k: _lists(v) for k, v in doc.items()}

    @classmethod
    def from_json(cls, doc: dict) -> "WorldConfig":
        """The config of a saved world; fields it lacks (an older world) take their defaults."""
        return cls(**{k: _tuples(v) for k, v in doc.items()})


DEFAULT_REGIONAL = (("APAC", 0.8), ("LATAM", 0.8), ("EU", 0.4), ("NA", 0.0))


def _lists(v: Any) -> Any:
    return [_lists(x) for x in v] if isinstance(v, (tuple, list)) else v


def _tuples(v: Any) -> Any:
    return tuple(_tuples(x) for x in v) if isinstance(v, (tuple, list)) else v


PRESETS: dict[str, WorldConfig] = {
    # tests: a few seconds, ~30k impressions, every hour and region present
    "tiny": WorldConfig(n_users=400, n_sites=300, impressions_per_user_day=15.0,
                        metros_per_country=6, zips_per_metro=4, label_history_days=7),
    # the demo: ~2.1M impressions over one 5-day window
    # regional make effects: a regional model has something to learn in APAC and LATAM, less
    # in EU, nothing in NA (their size on the test day: README, python -m pythia.synth.regional);
    # 32 activity levels, so its gauge on heavy users is the continuous lognormal's (the tiny
    # and skewed test worlds keep 16: cheaper posteriors, and their tests' expectations)
    "default": WorldConfig(regional_make_strength=DEFAULT_REGIONAL, activity_levels=32),
    # the hard real case, small enough for CI (~210k impressions): 40 countries in every region,
    # several with many zones (real ISO-3166-2 geo_regions); the window spans the US/CA switch
    # to daylight saving (2024-03-10); ~30k users labelled by the chosen provider of two (no
    # 'lucid'); skewed classes (the smallest ~0.5%); a long-tailed, unicode device vocabulary
    # that carries most of the signal, a little in hour and site: a logistic regression on
    # make and model beats the constant prior by ~0.03 log-loss (as on real data)
    "skewed": WorldConfig(n_users=42_000, end_date="2024-03-12", n_sites=1_500, n_interests=8,
                          impressions_per_user_day=1.0, interest_strength=0.5,
                          site_affinity=1.2, device_strength=0.5, software_strength=0.4,
                          time_strength=0.4, geo_strength=0.3, metros_per_country=12,
                          zips_per_metro=6, country_set="global40", device_catalog="longtail",
                          age_shares=(.13, .46, .28, .08, .042, .008), male_share=0.65,
                          providers=("orbis", "quanta"), coverage=(0.55, 0.85)),
    # scale: ~56M impressions over 7 days, streamed partition by partition
    "large": WorldConfig(n_users=2_000_000, days=7, n_sites=10_000,
                         impressions_per_user_day=4.0, metros_per_country=24,
                         regional_make_strength=DEFAULT_REGIONAL, activity_levels=32),
}


@dataclass
class WorldParams:
    """Every table of the generative model. ``vocab`` holds catalogs, ``arrays`` the numbers."""

    config: WorldConfig
    seed: int
    vocab: dict[str, list] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    # pythia.geo offset table (JSON) of the world's clock; None in worlds written before it,
    # whose clock was vocab['utc_offset_minutes'] (fixed offsets, no daylight saving)
    offsets: dict[str, Any] | None = None

    def __getattr__(self, name: str) -> Any:
        # Tables read like attributes (params.p_site); only reached when normal lookup fails.
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    def meta_json(self) -> dict:
        return {"config": self.config.to_json(), "seed": self.seed, "vocab": self.vocab,
                "class_labels": list(CLASS_LABELS), "age_edges": list(DEFAULT_AGE_EDGES),
                "offset_table": self.offsets, "generator_version": GENERATOR_VERSION}


def build_params(config: WorldConfig, seed: int) -> WorldParams:
    """Draw every parameter table of the world from ``seed`` (deterministic).

    The parts are drawn in this order from one generator (the order is the world); the clock
    is ``pythia.geo``'s offset table for the world's countries and years.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    offsets = places.offset_table(config)
    arrays: dict[str, np.ndarray] = {}
    vocab: dict[str, list] = {}

    def add(part: tuple[dict, dict]) -> None:
        arrays.update(part[0])
        vocab.update(part[1])

    arrays.update(tables.draw_demographics(rng, config))
    n_cty = len(arrays["country_share"])
    arrays.update(tables.draw_interests(rng, config))
    arrays.update(tables.draw_time(rng, config))
    add(tables.draw_sites(rng, config, arrays["country_share"]))
    countries = list(COUNTRY_SETS[config.country_set])
    n_makes = len(tables.device_makes(config.device_catalog))
    add(tables.draw_devices(rng, config, n_cty,
                            tables.regional_make_effects(seed, config, countries, n_makes)))
    add(tables.draw_software(rng, config, vocab["oses"]))
    add(places.draw_geography(rng, config, geo.OffsetTable.from_json(offsets)))
    add(tables.draw_ad_slot(rng, config, n_cty))
    arrays.update(tables.power_marginals(arrays, config))
    arrays.update(tables.draw_providers(rng, config, n_cty))
    mean_mult = 1 - config.power_user_share + config.power_user_share * config.power_user_multiplier
    arrays["base_rate"] = np.array(config.impressions_per_user_day / 24.0 / mean_mult)
    arrays["activity_level"] = activity_levels(config)  # (L,) multipliers, mean 1
    vocab.update({"inventory_types": list(INVENTORY_TYPES), "providers": list(config.providers),
                  "label_dates": [d.isoformat() for d in config.label_dates]})
    return WorldParams(config=config, seed=seed, vocab=vocab, arrays=arrays, offsets=offsets)


def params_from_saved(meta: dict, arrays: dict[str, np.ndarray]) -> WorldParams:
    """Rebuild WorldParams from ``truth/world.json`` + ``truth/world.npz`` content."""
    return WorldParams(config=WorldConfig.from_json(meta["config"]), seed=int(meta["seed"]),
                       vocab=meta["vocab"], arrays=dict(arrays),
                       offsets=meta.get("offset_table"))


def dumps_meta(params: WorldParams, extra: dict | None = None) -> bytes:
    doc = params.meta_json()
    doc.update(extra or {})
    return json.dumps(doc, indent=1, sort_keys=True).encode()
