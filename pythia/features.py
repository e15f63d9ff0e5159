"""The ONE feature spec: every model input, how it is derived, encoded and labelled.

The Spark ETL, the TFRecord schema, the model input layers and the bid-time scorer all loop
over ``FEATURES`` and call the functions here; none of them re-implements a feature. Derivations
are plain NumPy arithmetic so the same code runs on a Spark Arrow batch and on one request.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from pythia.config import DEFAULT_AGE_EDGES, Geography

CATEGORICAL = "categorical"
NUMERIC = "numeric"

MISSING_ID = 0  # reserved id: value absent / null / unusable
OOV_ID = 1  # reserved id: value not in the training vocabulary
FIRST_VALUE_ID = 2


# ---------------------------------------------------------------- names (the one source)
# Every other module names these columns and splits through the constants below.
DERIVED = "derived"  # Feature.source of a feature computed from ts + country, not read
# Feature.source of a feature the ETL counts over the user's impressions (``etl.activity``) and
# a bidder sends under the feature's own name (its frequency counter).
ACTIVITY = "activity"
REGIONAL = "regional"  # Feature.source: column ``of``'s value in the row's region (APAC|Apple)
LOG1P = "log1p"  # Feature.transform: log(1 + x) before the z-score; x < 0 counts as missing
# Contract columns the pipeline refers to by name.
IMPRESSION_ID = "impression_id"
USER_ID = "user_id"
TS = "ts"
COUNTRY = "country"
GEO_REGION = "geo_region"  # ISO-3166-2 subdivision (or a provider's own code)
ZIP = "zip"  # carried by bid requests and the contract, not a model feature
# Columns the ETL adds to every split row (beside FEATURES' derived ones and the labels).
DATE = "date"  # partition date YYYY-MM-DD
HOUR = "hour"  # partition hour 0..23 (UTC)
TS_SECONDS = "ts_seconds"
REGION = "region"  # model region of the row's country
IS_POWER_USER = "is_power_user"
# A TFRecord key column (not a feature): the row's user as one of N_USER_GROUPS groups (a fixed
# hash of user_id, ``buckets.bucket_of``), the clusters of a validation margin's user-clustered
# SE (``evaluate.margins``; the MLP's activity cut, ``models.activity_temp``). Shards written
# before it read -1 (no group).
USER_GROUP = "user_group"
N_USER_GROUPS = 1024  # enough that users rarely share one on small days
# Impressions of the row's user earlier the same UTC day (a bidder's frequency counter);
# defined by pythia.synth.activity.user_impressions_today.
USER_IMPRESSIONS_TODAY = "user_impressions_today"
# True on the test-day rows of a user held out of train (validation's users) (``etl.holdout``): the
# natural test day's "new users" slice, users the models never saw.
USER_HELD_OUT = "user_held_out"
LABEL_PROVIDER = "label_provider"
GENDER = "gender"  # label value as text
AGE_BUCKET = "age_bucket"  # label value as text
SPLIT = "split"

# Splits. The ETL splits the window by date into train / validation / test days; the test day
# is written twice (resampled like train, and natural), so four output splits.
TRAIN = "train"
VALIDATION = "validation"
TEST = "test"
TEST_RESAMPLED = "test_resampled"
TEST_NATURAL = "test_natural"
ETL_SPLITS = (TRAIN, VALIDATION, TEST)
OUTPUT_SPLITS = (TRAIN, VALIDATION, TEST_RESAMPLED, TEST_NATURAL)
ETL_SPLIT_OF = {TRAIN: TRAIN, VALIDATION: VALIDATION, TEST_RESAMPLED: TEST, TEST_NATURAL: TEST}
# The inverse: the output splits each ETL split is written as (test -> both test splits).
OUTPUT_SPLITS_OF = {s: tuple(o for o in OUTPUT_SPLITS if ETL_SPLIT_OF[o] == s) for s in ETL_SPLITS}


@dataclass(frozen=True)
class Feature:
    """One model input. ``source`` is the contract column it comes from, or 'derived'."""

    name: str
    kind: str
    source: str
    min_count: int = 5  # training-day occurrences needed to get an own id (else OOV)
    max_vocab: int = 20_000  # most frequent values kept
    transform: str | None = None  # numeric only: applied before the z-score (LOG1P)
    of: str | None = None  # REGIONAL only: the contract column paired with the region


# Order matters: it is the column order of the model inputs and of the exported bundle.
FEATURES: tuple[Feature, ...] = (
    Feature("country", CATEGORICAL, COUNTRY, min_count=1),
    Feature(GEO_REGION, CATEGORICAL, GEO_REGION),
    Feature("metro", CATEGORICAL, "metro"),
    Feature("inventory_type", CATEGORICAL, "inventory_type", min_count=1),
    Feature("site_or_app", CATEGORICAL, "site_or_app"),
    Feature("content_category", CATEGORICAL, "content_category"),
    Feature("supply_vendor", CATEGORICAL, "supply_vendor"),
    Feature("ad_format", CATEGORICAL, "ad_format"),
    Feature("ad_size", CATEGORICAL, "ad_size"),
    Feature("device_type", CATEGORICAL, "device_type"),
    Feature("device_make", CATEGORICAL, "device_make"),
    Feature("device_model", CATEGORICAL, "device_model"),
    Feature("os", CATEGORICAL, "os"),
    Feature("os_version", CATEGORICAL, "os_version"),
    Feature("browser", CATEGORICAL, "browser"),
    Feature("region_device_make", CATEGORICAL, REGIONAL, of="device_make"),  # make per market
    Feature("local_hour", CATEGORICAL, DERIVED, min_count=1),
    Feature("local_dow", CATEGORICAL, DERIVED, min_count=1),
    Feature("hour_sin", NUMERIC, DERIVED),
    Feature("hour_cos", NUMERIC, DERIVED),
    # log1p: counts are skewed (power users reach hundreds a day) and the posterior's evidence
    # grows like n log(rate), so equal steps in log(1 + n) carry similar information.
    Feature(USER_IMPRESSIONS_TODAY, NUMERIC, ACTIVITY, transform=LOG1P),
)
FEATURE_NAMES = tuple(f.name for f in FEATURES)
CATEGORICAL_FEATURES = tuple(f.name for f in FEATURES if f.kind == CATEGORICAL)
NUMERIC_FEATURES = tuple(f.name for f in FEATURES if f.kind == NUMERIC)
DERIVED_FEATURES = tuple(f.name for f in FEATURES if f.source == DERIVED)
REGIONAL_FEATURES = tuple(f for f in FEATURES if f.source == REGIONAL)
SOURCE_COLUMNS = tuple(f.source for f in FEATURES
                       if f.source not in (DERIVED, ACTIVITY, REGIONAL))  # contract columns read
ACTIVITY_FEATURES = tuple(f.name for f in FEATURES if f.source == ACTIVITY)
RAW_INPUT_COLUMNS = SOURCE_COLUMNS + (TS,)
# The keys of a bid-time request (``scoring``): the id, every contract column a feature reads,
# zip, and the activity counters; ``TS`` travels too, as epoch seconds
# (``scoring.boundary.clean_ts``).
REQUEST_COLUMNS = (IMPRESSION_ID,) + SOURCE_COLUMNS + (ZIP,) + ACTIVITY_FEATURES
# What ``derive_batch`` returns: the derived and regional features and the row's model region.
DERIVED_COLUMNS = DERIVED_FEATURES + tuple(f.name for f in REGIONAL_FEATURES) + (REGION,)

# Targets. AgeGender classes are ordered gender-major: F_18-24 … F_65+, M_18-24 … M_65+.
GENDER_CLASSES = ("F", "M")
TARGETS = ("gender", "age", "age_gender")
LABEL_COLUMNS = {"gender": "y_gender", "age": "y_age", "age_gender": "y_age_gender"}
Y_GENDER, Y_AGE, Y_AGE_GENDER = (LABEL_COLUMNS[t] for t in TARGETS)
# One label per user (``providers.prepare_labels`` writes them), joined onto its impressions.
USER_LABEL_COLUMNS = (LABEL_PROVIDER, GENDER, AGE_BUCKET) + tuple(LABEL_COLUMNS.values())

# Columns carried next to the features through ETL and TFRecords (ids for joins, slicing).
KEY_COLUMNS = (IMPRESSION_ID, USER_ID, REGION, DATE, IS_POWER_USER)

# ---------------------------------------------------------------- column types
# Named in the contract's type vocabulary (``contract.ColumnSpec.type``; these names are also
# Arrow aliases, ``pa.type_for_alias``). Not pyarrow objects: importing pyarrow here would add
# ~0.3 s to the start of the bid-time scorer, which imports this module and nothing of Arrow.
STRING, INT32, INT64, FLOAT32, BOOL = "string", "int32", "int64", "float32", "bool"
KIND_TYPES = {CATEGORICAL: STRING, NUMERIC: FLOAT32}  # how a derived feature is stored
LABEL_TYPE = INT32
# The columns the ETL appends to the contract's impression columns in every split row, in
# output order; ``contract.SPLIT`` (and so the ETL's written schema) is built from this.
SPLIT_COLUMN_TYPES: dict[str, str] = {
    DATE: STRING, HOUR: INT32, TS_SECONDS: INT64,
    **{f.name: KIND_TYPES[f.kind] for f in FEATURES if f.source == DERIVED},
    **{f.name: KIND_TYPES[f.kind] for f in REGIONAL_FEATURES},
    REGION: STRING, IS_POWER_USER: BOOL, USER_IMPRESSIONS_TODAY: INT64, USER_HELD_OUT: BOOL,
    LABEL_PROVIDER: STRING, GENDER: STRING,
    AGE_BUCKET: STRING,
    **{c: LABEL_TYPE for c in LABEL_COLUMNS.values()},
    SPLIT: STRING,
}


def age_bucket_labels(edges: Sequence[int] = DEFAULT_AGE_EDGES) -> tuple[str, ...]:
    """'18-24', '25-34', …, '65+' for edges (18, 25, 35, 45, 55, 65)."""
    labels = [f"{lo}-{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:])]
    return tuple(labels + [f"{edges[-1]}+"])


def age_gender_labels(edges: Sequence[int] = DEFAULT_AGE_EDGES) -> tuple[str, ...]:
    return tuple(f"{g}_{a}" for g in GENDER_CLASSES for a in age_bucket_labels(edges))


def class_labels(target: str, edges: Sequence[int] = DEFAULT_AGE_EDGES) -> tuple[str, ...]:
    if target == "gender":
        return GENDER_CLASSES
    if target == "age":
        return age_bucket_labels(edges)
    if target == "age_gender":
        return age_gender_labels(edges)
    raise ValueError(f"unknown target {target!r}; choose from {TARGETS}")


def age_to_bucket(age: np.ndarray, edges: Sequence[int] = DEFAULT_AGE_EDGES) -> np.ndarray:
    """Bucket index per age in years; -1 below the first edge (caller decides what that means)."""
    return np.searchsorted(np.asarray(edges), np.asarray(age, dtype=float), side="right") - 1


def age_gender_index(gender_idx: np.ndarray, age_idx: np.ndarray, n_age: int) -> np.ndarray:
    return np.asarray(gender_idx) * n_age + np.asarray(age_idx)


def split_age_gender(ag_idx: np.ndarray, n_age: int) -> tuple[np.ndarray, np.ndarray]:
    ag_idx = np.asarray(ag_idx)
    return ag_idx // n_age, ag_idx % n_age


def marginals_from_joint(p_joint: np.ndarray, n_age: int) -> dict[str, np.ndarray]:
    """Gender and age probabilities implied by AgeGender probabilities (n, 2*n_age)."""
    p = np.asarray(p_joint).reshape(len(p_joint), len(GENDER_CLASSES), n_age)
    return {"gender": p.sum(axis=2), "age": p.sum(axis=1), "age_gender": np.asarray(p_joint)}


# ---------------------------------------------------------------- derivations (scalar or array)

_HOUR_ANGLE = 2.0 * np.pi / 24.0
# sin / cos of each local hour: an array's hours are looked up here, not recomputed per row
# (the same float64 values: np.sin of the same angles).
_HOUR_SIN = np.sin(np.arange(24) * _HOUR_ANGLE)
_HOUR_COS = np.cos(np.arange(24) * _HOUR_ANGLE)


def derive_time_features(ts_seconds: Any, utc_offset_minutes: Any) -> dict[str, Any]:
    """Local hour, day of week (0=Monday) and the hour on the unit circle.

    Works on Python scalars and on NumPy arrays alike: the ETL calls it on an Arrow batch,
    the scorer on one request. Integer arrays take integer arithmetic on the local epoch
    seconds and a 24-entry table for sin/cos (equal to the general formula below).
    """
    if type(utc_offset_minutes) is not int and (isinstance(ts_seconds, np.ndarray)
                                                or isinstance(utc_offset_minutes, np.ndarray)):
        ts, offset = np.asarray(ts_seconds), np.asarray(utc_offset_minutes)
        if ts.dtype.kind == "i" and offset.dtype.kind == "i":
            # floor((floor(ts / 60) + offset) / 60) == floor((ts + 60 offset) / 3600), etc.
            kind = np.result_type(ts, offset)  # the general formula's integer dtype
            days, seconds = np.divmod(ts.astype(np.int64) + offset.astype(np.int64) * 60,
                                      86_400)
            hour = seconds // 3600
            return {"local_hour": hour.astype(kind, copy=False),
                    "local_dow": ((days + 3) % 7).astype(kind, copy=False),
                    "hour_sin": _HOUR_SIN[hour], "hour_cos": _HOUR_COS[hour]}
    local_minutes = ts_seconds // 60 + utc_offset_minutes
    hour = (local_minutes // 60) % 24
    # 1970-01-01 was a Thursday (dow 3)
    dow = ((local_minutes // 1440) + 3) % 7
    angle = hour * _HOUR_ANGLE
    return {"local_hour": hour, "local_dow": dow, "hour_sin": np.sin(angle),
            "hour_cos": np.cos(angle)}


def derive_batch(columns: Mapping[str, np.ndarray], geo: Geography) -> dict[str, np.ndarray]:
    """Derived features for a batch given raw contract columns ('ts' in epoch seconds, 'country',
    each ``Feature.of`` and, if present, 'geo_region': the zone in countries with several).

    Returns ``DERIVED_COLUMNS``: categorical features as strings, numeric ones as float32, and
    each row's model ``region``. Local time follows the IANA zone with daylight saving time at
    each row's instant (``Geography.offset_minutes``, the same lookup as the bid-time scorer).
    """
    country = np.asarray(columns[COUNTRY], dtype=object)
    ts = np.asarray(columns[TS], dtype=np.int64)
    geo_region = columns.get(GEO_REGION)
    if geo_region is not None:
        geo_region = np.asarray(geo_region, dtype=object)
    offsets = np.asarray(geo.offset_minutes(ts, country, geo_region), dtype=np.int64)
    out = derive_time_features(ts, offsets)
    derived = {f.name: (out[f.name].astype(str).astype(object) if f.kind == CATEGORICAL
                        else out[f.name].astype(KIND_TYPES[f.kind]))  # as stored
               for f in FEATURES if f.source == DERIVED}
    derived[REGION] = np.array([geo.region_of(c) for c in country], dtype=object)
    for f in REGIONAL_FEATURES:
        derived[f.name] = regional_values(derived[REGION], np.asarray(columns[f.of], object))
    return derived


def regional_values(region: Iterable, values: Iterable) -> np.ndarray:
    """A REGIONAL feature's values: ``region|value`` ('APAC|Apple'); None where the value is
    missing (null or empty). The scorers look the same strings up (``scoring.boundary``)."""
    return np.array([f"{r}|{v}" if isinstance(v, str) and v else None
                     for r, v in zip(region, values)], dtype=object)


# ---------------------------------------------------------------- encoders

@dataclass
class Vocabulary:
    """Categorical value -> integer id; 0 = missing, 1 = out of vocabulary, values from 2."""

    values: list[str]

    def __post_init__(self) -> None:
        self._index = {v: i + FIRST_VALUE_ID for i, v in enumerate(self.values)}

    @property
    def size(self) -> int:
        """Number of ids, reserved ones included (the embedding table's row count)."""
        return len(self.values) + FIRST_VALUE_ID

    @classmethod
    def fit(cls, counts: Mapping[str, int], min_count: int, max_vocab: int) -> "Vocabulary":
        kept = [(v, c) for v, c in counts.items() if v is not None and v != "" and c >= min_count]
        kept.sort(key=lambda vc: (-vc[1], vc[0]))
        return cls([v for v, _ in kept[:max_vocab]])

    def encode_one(self, value: Any) -> int:
        if value is None or value == "":
            return MISSING_ID
        if not isinstance(value, str):
            value = str(value)
        return self._index.get(value, OOV_ID)

    def encode(self, values: Iterable[Any]) -> np.ndarray:
        get = self._index.get
        return np.fromiter(
            (MISSING_ID if (v is None or v == "" or v != v) else get(v if isinstance(v, str)
                                                                       else str(v), OOV_ID)
             for v in values), dtype=np.int64)


def transform_values(transform: str | None, x: Any) -> np.ndarray:
    """``Feature.transform`` of raw numeric values as float64 (None: unchanged); LOG1P maps a
    negative value to NaN (missing), as no count is negative."""
    x = np.asarray(x, dtype=np.float64)
    if transform is None:
        return x
    if transform == LOG1P:
        with np.errstate(invalid="ignore"):
            return np.log1p(np.where(x >= 0, x, np.nan))
    raise ValueError(f"unknown numeric transform {transform!r}; choose from ({LOG1P!r}, None)")


def feature_transform(name: str) -> str | None:
    """The ``transform`` of numeric feature ``name``."""
    return next(f.transform for f in FEATURES if f.name == name)


@dataclass(frozen=True)
class NumericStats:
    """Mean and std of the transformed training values, and the transform itself."""

    mean: float
    std: float
    transform: str | None = None  # Feature.transform, applied before the z-score

    def normalize(self, x: Any) -> Any:
        """(transform(x) - mean) / std; missing / non-finite inputs become 0 (the mean)."""
        t = transform_values(self.transform, x)
        z = (t - self.mean) / (self.std if self.std > 0 else 1.0)
        return np.where(np.isfinite(z), z, 0.0).astype(np.float32)


@dataclass
class Encoders:
    """Everything needed to turn raw feature values into model inputs; travels with the model."""

    vocabularies: dict[str, Vocabulary]
    numeric: dict[str, NumericStats]
    age_edges: tuple[int, ...] = DEFAULT_AGE_EDGES

    def encode_batch(self, columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Model inputs of a batch of feature columns; an absent column is missing in every
        row (categorical id ``MISSING_ID``, numeric the training mean: 0)."""
        out: dict[str, np.ndarray] = {}
        n = len(next(iter(columns.values())))
        for f in FEATURES:
            col = columns.get(f.name)
            if f.kind == CATEGORICAL:
                out[f.name] = (self.vocabularies[f.name].encode(col) if col is not None
                               else np.zeros(n, dtype=np.int64))
            else:
                out[f.name] = self.numeric[f.name].normalize(col if col is not None
                                                             else np.full(n, np.nan))
        return out

    def to_json(self) -> dict:
        return {
            "spec_version": spec_version(),
            "age_edges": list(self.age_edges),
            "vocabularies": {k: v.values for k, v in self.vocabularies.items()},
            "numeric": {k: asdict(v) for k, v in self.numeric.items()},
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "Encoders":
        if doc.get("spec_version") != spec_version():
            raise ValueError(
                f"encoders were built for feature spec {doc.get('spec_version')}, this code has "
                f"{spec_version()}: retrain, or load with the matching pythia version")
        return cls(
            vocabularies={k: Vocabulary(list(v)) for k, v in doc["vocabularies"].items()},
            numeric={k: NumericStats(**v) for k, v in doc["numeric"].items()},
            age_edges=tuple(doc["age_edges"]),
        )


def spec_document() -> dict:
    """The feature spec as JSON-able data (written next to TFRecord shards and in bundles)."""
    return {
        "features": [asdict(f) for f in FEATURES],
        "targets": list(TARGETS),
        "label_columns": LABEL_COLUMNS,
        "key_columns": list(KEY_COLUMNS),
        "reserved_ids": {"missing": MISSING_ID, "oov": OOV_ID},
    }


def spec_version() -> str:
    """A short hash of the feature spec; models and bundles record it and check it on load."""
    blob = json.dumps(spec_document(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
