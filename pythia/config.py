"""Typed, frozen configuration: the window, label buckets, geography and model grid.

Config flows one way: the flow turns its Metaflow ``Parameter``s into these objects and passes
them explicitly to library functions; nothing in ``pythia`` reads a flow parameter or a global.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from typing import Mapping

# Default age bucket edges (years). A bucket is [edge_i, edge_{i+1}); the last one is open.
DEFAULT_AGE_EDGES: tuple[int, ...] = (18, 25, 35, 45, 55, 65)
# Ages outside [MIN_VALID_AGE, MAX_VALID_AGE] are impossible and rejected (counted, not dropped).
MIN_VALID_AGE = 13
MAX_VALID_AGE = 110

# Country -> model region. Countries absent here fall into OTHER_REGION and are scored by the
# global model. Users with other geographies pass their own map to the flow (`region_map`).
DEFAULT_REGION_OF_COUNTRY: Mapping[str, str] = {
    "US": "NA", "CA": "NA", "MX": "NA",
    "GB": "EU", "DE": "EU", "FR": "EU", "ES": "EU",
    "JP": "APAC", "AU": "APAC", "IN": "APAC",
    "BR": "LATAM", "AR": "LATAM",
}
OTHER_REGION = "OTHER"
GLOBAL_REGION = "global"

# Fixed UTC offsets (minutes) used to derive local hour/day-of-week. Daylight saving time is
# deliberately ignored: a constant one-hour shift for part of the year is learnable noise, and
# a fixed table keeps the bid-time scorer free of tz databases. Unknown countries use UTC.
DEFAULT_UTC_OFFSET_MINUTES: Mapping[str, int] = {
    "US": -300, "CA": -300, "MX": -360,
    "GB": 0, "DE": 60, "FR": 60, "ES": 60,
    "JP": 540, "AU": 600, "IN": 330,
    "BR": -180, "AR": -180,
}

TRAIN_DAYS = 3  # oldest days of the window
VALIDATION_DAYS = 1
TEST_DAYS = 1  # the most recent day == `date`
WINDOW_DAYS = TRAIN_DAYS + VALIDATION_DAYS + TEST_DAYS

RESAMPLE_MODES = ("balanced", "natural", "sqrt")


@dataclass(frozen=True)
class Window:
    """The 5-day look-back ending at ``test_date``: 3 train days, 1 validation, 1 test."""

    test_date: dt.date

    @property
    def dates(self) -> list[dt.date]:
        return [self.test_date - dt.timedelta(days=k) for k in range(WINDOW_DAYS - 1, -1, -1)]

    @property
    def train_dates(self) -> list[dt.date]:
        return self.dates[:TRAIN_DAYS]

    @property
    def validation_dates(self) -> list[dt.date]:
        return self.dates[TRAIN_DAYS:TRAIN_DAYS + VALIDATION_DAYS]

    @property
    def test_dates(self) -> list[dt.date]:
        return self.dates[TRAIN_DAYS + VALIDATION_DAYS:]

    def split_of(self, day: dt.date) -> str | None:
        """Return 'train' / 'validation' / 'test' for a date inside the window, else None."""
        if day in self.train_dates:
            return "train"
        if day in self.validation_dates:
            return "validation"
        if day in self.test_dates:
            return "test"
        return None

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "train": [d.isoformat() for d in self.train_dates],
            "validation": [d.isoformat() for d in self.validation_dates],
            "test": [d.isoformat() for d in self.test_dates],
        }


def parse_date(text: str) -> dt.date:
    """Parse YYYY-MM-DD, raising a ValueError that names the bad value."""
    try:
        return dt.date.fromisoformat(text.strip())
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"date must be YYYY-MM-DD, got {text!r}") from exc


def parse_overrides(text: str) -> dict[str, str]:
    """Parse 'US=lucid,GB=acme' into {'US': 'lucid', 'GB': 'acme'}; '' means no override."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        if "=" not in part:
            raise ValueError(f"provider override {part!r} is not COUNTRY=provider")
        country, provider = (s.strip() for s in part.split("=", 1))
        if len(country) != 2 or not country.isalpha() or not provider:
            raise ValueError(f"provider override {part!r} is not COUNTRY=provider")
        out[country.upper()] = provider
    return out


def parse_list(text: str, allowed: tuple[str, ...] | None = None, what: str = "value") -> list[str]:
    """Parse a comma-separated list, checking members against ``allowed`` when given."""
    items = [p.strip() for p in (text or "").split(",") if p.strip()]
    if not items:
        raise ValueError(f"empty list of {what}s")
    if allowed is not None:
        bad = [i for i in items if i not in allowed]
        if bad:
            raise ValueError(f"unknown {what}(s) {bad}; choose from {list(allowed)}")
    return list(dict.fromkeys(items))


@dataclass(frozen=True)
class Geography:
    """Country -> model region and UTC offset tables (configuration, not code)."""

    region_of_country: Mapping[str, str] = field(
        default_factory=lambda: dict(DEFAULT_REGION_OF_COUNTRY))
    utc_offset_minutes: Mapping[str, int] = field(
        default_factory=lambda: dict(DEFAULT_UTC_OFFSET_MINUTES))

    @property
    def regions(self) -> list[str]:
        return sorted(set(self.region_of_country.values()))

    def region_of(self, country: str | None) -> str:
        return self.region_of_country.get(country or "", OTHER_REGION)


@dataclass(frozen=True)
class EtlConfig:
    """Rules of the data side (ETL, resampling, power users)."""

    age_edges: tuple[int, ...] = DEFAULT_AGE_EDGES
    resample: str = "balanced"  # balanced | natural | sqrt; rates from global split counts
    resample_target: str = "age_gender"  # the label whose classes are balanced
    drop_power_users: bool = True  # remove power users from train/validation
    power_user_threshold: float | None = None  # impressions/user/day; None -> quantile below
    power_user_quantile: float = 0.99  # of per-user-day impression counts (labelled users)
    allow_gaps: bool = False  # missing hour partitions stop the run unless True
    hours_per_task: int = 1  # hours of day per etl task (24 tasks when 1)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resample not in RESAMPLE_MODES:
            raise ValueError(f"resample must be one of {RESAMPLE_MODES}, got {self.resample!r}")
        if list(self.age_edges) != sorted(set(self.age_edges)) or len(self.age_edges) < 2:
            raise ValueError(f"age_edges must be strictly increasing, got {self.age_edges}")
        if not 1 <= self.hours_per_task <= 24 or 24 % self.hours_per_task:
            raise ValueError(f"hours_per_task must divide 24, got {self.hours_per_task}")

    def with_(self, **kw) -> "EtlConfig":
        return replace(self, **kw)


def hour_groups(hours_per_task: int) -> list[list[int]]:
    """Split the 24 hours of the day into consecutive groups of ``hours_per_task``."""
    return [list(range(h, h + hours_per_task)) for h in range(0, 24, hours_per_task)]


@dataclass(frozen=True)
class TrainConfig:
    """Training knobs shared by all models; model-specific knobs live in each model module."""

    max_epochs: int = 8
    batch_size: int = 1024
    patience: int = 2  # early stopping on validation loss
    seed: int = 0
    age_head: str = "ordinal"  # ordinal (CORN) | softmax, for the MLP
    prior_correction: str = "bayes"  # bayes (p * pi_nat / pi_train) | em (Saerens 2002) | none
    hparams: Mapping[str, object] = field(default_factory=dict)


TINY_TRAIN = TrainConfig(max_epochs=3, batch_size=256, patience=1)
