"""Typed, frozen configuration: run parameters, deploy-time settings, the window, geography.

Config flows one way. Run-time choices are the flow's Metaflow ``Parameter``s, declared from
``PARAMETERS`` below (one default each); deploy-time settings (geography, model
hyperparameters, ``@resources``) come from the flow's TOML ``Config`` (``flows/pythia.toml``).
``RunParams.build`` parses both once, in ``start``; library functions take explicit arguments.
"""
from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from pythia import geo
from pythia.config_parse import (ParamSpec, check_bins, config_flag,  # noqa: F401 (re-export)
                                 hours_per_task_default, non_negative, parse_date, parse_list,
                                 parse_overrides)
from pythia.geo.geography import Geography  # noqa: F401  (config objects live here)
from pythia.paths import default_data_root

# Default age bucket edges (years). A bucket is [edge_i, edge_{i+1}); the last one is open.
DEFAULT_AGE_EDGES: tuple[int, ...] = (18, 25, 35, 45, 55, 65)
# Ages outside [MIN_VALID_AGE, MAX_VALID_AGE] are impossible and rejected (counted, not dropped).
MIN_VALID_AGE = 13
MAX_VALID_AGE = 110

OTHER_REGION = geo.OTHER_REGION  # countries no map knows; scored by the global model
GLOBAL_REGION = "global"

TRAIN_DAYS = 3  # oldest days of the window
VALIDATION_DAYS = 1
TEST_DAYS = 1  # the most recent day == `date`
WINDOW_DAYS = TRAIN_DAYS + VALIDATION_DAYS + TEST_DAYS

# Class resampling (etl.splits); ``auto`` picks balanced/sqrt/natural from the train counts.
RESAMPLE_MODES = ("auto", "balanced", "natural", "sqrt")


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


@dataclass(frozen=True)
class EtlConfig:
    """Rules of the data side (ETL, resampling, power users)."""

    age_edges: tuple[int, ...] = DEFAULT_AGE_EDGES
    resample: str = "auto"  # a RESAMPLE_MODES entry, optionally ":FLOOR" -> min_keep_rate
    min_keep_rate: float = 0.0  # no class keep-rate below this (0: no floor)
    resample_target: str = "age_gender"  # the label whose classes are balanced
    drop_power_users: bool = False  # remove power users from train/validation (see README)
    # train keeps a power user-day's rows with probability threshold / n (etl.splits)
    cap_power_users: bool = True
    # share of users (a hash of user_id and seed) kept out of train (validation's users): the
    # natural test day's "new users" slice measures models on users they never saw (etl.holdout).
    # 0.2, not 0.1 (session 51): at 0.1 a few heavy held-out users carried most of the champion
    # margin's SE (default world, seed 0: z -1.58, nothing blessed; 0.2: z -6.47), and the
    # global MLP scored the same on fresh users on three seeds (docs/new-users.md)
    holdout_users: float = 0.2
    power_user_threshold: float | None = None  # impressions/user/day; None -> quantile below
    power_user_quantile: float = 0.99  # of per-user-day impression counts (labelled users)
    allow_gaps: bool = False  # missing hour partitions stop the run unless True
    # more than this share of the window's impressions, or of the label rows, quarantined
    # (duplicates and impressions without a user_id aside) stops the run naming the columns
    # and values (pythia.input_health)
    max_quarantined: float = 0.1
    hours_per_task: int = 4  # hours of day per etl task (24 tasks when 1)
    seed: int = 0

    def __post_init__(self) -> None:
        mode, sep, floor = str(self.resample).partition(":")
        if mode not in RESAMPLE_MODES:
            raise ValueError(f"resample must be one of {RESAMPLE_MODES} (optionally :FLOOR, "
                             f"e.g. balanced:0.2), got {self.resample!r}")
        if sep:  # "balanced:0.2": a frozen dataclass parses its own shorthand once
            try:
                object.__setattr__(self, "min_keep_rate", float(floor))
            except ValueError:
                raise ValueError(f"resample {self.resample!r}: the keep-rate floor after ':' "
                                 "must be a number in [0, 1]") from None
            object.__setattr__(self, "resample", mode)
        if not 0.0 <= self.min_keep_rate <= 1.0:
            raise ValueError(f"min_keep_rate must lie in [0, 1], got {self.min_keep_rate}")
        if not 0.0 <= self.max_quarantined <= 1.0:
            raise ValueError(f"max_quarantined must lie in [0, 1] (a share of the rows; 1 = "
                             f"never stop), got {self.max_quarantined}")
        if not 0.0 <= self.holdout_users < 1.0:
            raise ValueError(f"holdout_users must lie in [0, 1) (a share of users kept out of "
                             f"train, validation's users; 0 = none), got {self.holdout_users}")
        if list(self.age_edges) != sorted(set(self.age_edges)) or len(self.age_edges) < 2:
            raise ValueError(f"age_edges must be strictly increasing, got {self.age_edges}")
        if not 1 <= self.hours_per_task <= 24 or 24 % self.hours_per_task:
            raise ValueError(f"hours_per_task must divide 24, got {self.hours_per_task}")

    def with_(self, **kw) -> "EtlConfig":
        return replace(self, **kw)


def hour_groups(hours_per_task: int) -> list[list[int]]:
    """Split the 24 hours of the day into consecutive groups of ``hours_per_task``."""
    return [list(range(h, h + hours_per_task)) for h in range(0, 24, hours_per_task)]


REGIONAL_STARTS = ("global", "scratch")


@dataclass(frozen=True)
class TrainConfig:
    """Training knobs shared by all models; model-specific knobs live in each model module."""

    max_epochs: int = 12
    batch_size: int = 4096  # the MLP's mini-batch; its learning_rate default is set for it
    patience: int = 2  # early stopping on validation loss
    seed: int = 0
    age_head: str = "ordinal"  # ordinal (CORN) | softmax, for the MLP
    prior_correction: str = "bayes"  # bayes (p * pi_nat / pi_train) | em (Saerens 2002) | none
    # numpy-trained models (TabNet, gbdt, logreg, prior) read at most this many rows per split
    # (train, validation), class-stratified and seeded (tfrecords.sample); 0 = every row. The
    # default world's splits (368k train rows with the default holdout) fit: only larger
    # worlds are sampled.
    max_train_rows: int = 500_000
    # where a regional candidate starts: 'global' = from its family's fitted global model when
    # the model can (Model.warm_starts); 'scratch' = fresh, like the global one
    regional_start: str = "global"
    # AgeGender's temperature per bin of user_impressions_today (models.activity_temp): a bin
    # starts at each count; () = one temperature
    activity_bins: tuple[int, ...] = (3, 10, 30, 100)
    hparams: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.regional_start not in REGIONAL_STARTS:
            raise ValueError(f"[train] regional_start must be one of {'|'.join(REGIONAL_STARTS)}"
                             f" (flows/pythia.toml), got {self.regional_start!r}")


TINY_TRAIN = TrainConfig(max_epochs=3, batch_size=256, patience=1)


# ---------------------------------------------------------------- run-time parameters

PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("source", "synthetic://default",
              "Data root in the contract layout (local folder or s3:// prefix), or "
              "synthetic://tiny|default|skewed|large[?seed=N] for a generated world."),
    ParamSpec("date", "",
              "Test day YYYY-MM-DD (the window is date-4 … date), or 'yesterday' (UTC). Empty: "
              "yesterday on a scheduled (Airflow/Argo) run, else the newest date of the source "
              "with all 24 hour partitions."),
    ParamSpec("models", "default",
              "Models to train: 'default' (pythia.models.DEFAULT_MODELS), 'all' (every model "
              "of the registry) or a comma-separated list, which may name 'default' "
              "('default,<model>'); the class prior is always added."),
    ParamSpec("regions", "all", "'all' (global + every region in the data) or a list."),
    ParamSpec("provider_overrides", "US=lucid",
              "COUNTRY=provider pairs that win over the provider scores where that country "
              "and provider exist in the source (a warning names the ones that do not)."),
    ParamSpec("seed", 0, "Seed for resampling and training."),
    ParamSpec("resample", "auto", "Class resampling: auto | balanced | natural | sqrt, with an "
              "optional keep-rate floor (balanced:0.2). auto: balanced where it keeps half the "
              "train rows or 1M rows, else sqrt by the same rule, else natural."),
    ParamSpec("drop_power_users", False, "Remove power users from train/validation (off: "
              "the models see user_impressions_today and learn power users too)."),
    ParamSpec("cap_power_users", True,
              "Train keeps a power user-day's rows with probability threshold / its "
              "impressions (about as many as the busiest other user-day), so a few heavy users "
              "do not dominate the fit; validation and test keep every row."),
    ParamSpec("holdout_users", 0.2,
              "Share of users (by a hash of user_id and seed) kept out of train: validation is "
              "their rows of every date before the test day, train the others'; their test-day "
              "rows are the natural_new_users slice (users the models never saw). 0 = none."),
    ParamSpec("power_user_threshold", 0.0,
              "Impressions per user per day above which a user is a power user; 0 = derive "
              "from the data (99th percentile)."),
    ParamSpec("allow_gaps", False, "Run even if hour partitions are missing (recorded)."),
    ParamSpec("max_quarantined", 0.1,
              "Share of the window's impressions, or of the label rows, that may be "
              "quarantined (duplicates and impressions without a user_id aside) before the "
              "run stops naming the columns and values to fix; 1 = never stop."),
    ParamSpec("hours_per_task", hours_per_task_default(),
              "Hours of day per etl_hour task (1 = 24 tasks; a divisor of 24). Locally a few "
              "hours per task saves JVM starts; on a cluster use 1. "
              "Default: $PYTHIA_HOURS_PER_TASK, else 4."),
    ParamSpec("spark_master", "",
              "Spark master URL (empty: $PYTHIA_SPARK_MASTER, else $SPARK_REMOTE for Spark "
              "Connect, else local mode)."),
    ParamSpec("data_root", "",
              "Where run-scoped files go (local folder or s3:// prefix). Empty: "
              "$PYTHIA_DATA_ROOT, else ./.pythia/data."),
    ParamSpec("max_epochs", 12, "Training epochs cap."),
    ParamSpec("age_head", "ordinal", "MLP age head: ordinal | softmax."),
    ParamSpec("prior_correction", "bayes", "bayes | em | none (test-time priors)."),
    ParamSpec("search", 0,
              "Hyperparameter exploration: N random configs per (model, region); 0 = off."),
)
PARAM_SPECS: Mapping[str, ParamSpec] = {p.name: p for p in PARAMETERS}
AGE_HEADS = ("ordinal", "softmax")
PRIOR_CORRECTIONS = ("bayes", "em", "none")


def param_kwargs(name: str) -> dict[str, Any]:
    """``Parameter(name, **param_kwargs(name))``: the flow declares each parameter from here."""
    return PARAM_SPECS[name].kwargs()


# ---------------------------------------------------------------- deploy-time settings
# The flow's TOML Config (flows/pythia.toml) is parsed into this. Every section is optional;
# an absent key keeps the library default.

@dataclass(frozen=True)
class DeployConfig:
    """Deploy-time settings: geography, ETL rules, training knobs, model hyperparameters."""

    geo: Geography = field(default_factory=Geography)
    age_edges: tuple[int, ...] = DEFAULT_AGE_EDGES
    power_user_quantile: float = 0.99
    batch_size: int = TrainConfig.batch_size
    patience: int = 2
    max_train_rows: int = TrainConfig.max_train_rows
    regional_start: str = TrainConfig.regional_start
    activity_bins: tuple[int, ...] = TrainConfig.activity_bins
    model_hparams: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    z_min: float = 2.0  # [evaluate]: champions beat each baseline by > z_min clustered SEs
    in_between_gauge: bool = False  # [evaluate]: also the in-between gauge (synthetic worlds)
    max_kept_days: int = 0  # [evaluate]: keep a previous champion this many days (0: no limit)

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any] | None) -> "DeployConfig":
        """Build from the parsed TOML (a plain mapping); errors name the bad key."""
        doc = dict(doc or {})
        sections = ("geography", "etl", "train", "evaluate", "models", "resources")
        if set(doc) - set(sections):
            raise ValueError(f"config: unknown section(s) {sorted(set(doc) - set(sections))}; "
                             f"expected {', '.join(sections)}")
        geo_doc = dict(doc.get("geography") or {})
        geography = Geography.from_config(geo_doc.get("regions") or {},
                                          bool(geo_doc.get("replace_regions", False)))
        etl = dict(doc.get("etl") or {})
        train = dict(doc.get("train") or {})
        models = {str(k): dict(v) for k, v in (doc.get("models") or {}).items()}
        ev = dict(doc.get("evaluate") or {})
        return cls(geo=geography,
                   age_edges=tuple(int(e) for e in etl.get("age_edges", DEFAULT_AGE_EDGES)),
                   power_user_quantile=float(etl.get("power_user_quantile", 0.99)),
                   batch_size=int(train.get("batch_size", cls.batch_size)),
                   patience=int(train.get("patience", 2)),
                   max_train_rows=non_negative(train, "max_train_rows", cls.max_train_rows),
                   regional_start=str(train.get("regional_start", TrainConfig.regional_start)),
                   activity_bins=check_bins(train.get("activity_bins", cls.activity_bins)),
                   model_hparams=models, z_min=non_negative(ev, "z_min", cls.z_min, float),
                   in_between_gauge=config_flag(ev, "in_between_gauge"),
                   max_kept_days=non_negative(ev, "max_kept_days", cls.max_kept_days))


def read_deploy_config(path: str) -> DeployConfig:
    """Parse a TOML file into a ``DeployConfig`` (one-line error naming the file)."""
    try:
        with open(path, "rb") as f:
            return DeployConfig.from_mapping(tomllib.load(f))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read config {path}: {exc}") from exc


# ---------------------------------------------------------------- the parsed run

@dataclass(frozen=True)
class RunParams:
    """The flow's Parameters and deploy-time Config, parsed and validated once in ``start``."""

    source: str
    date: str
    models: tuple[str, ...]
    regions: tuple[str, ...] | None  # None = every region present in the data
    provider_overrides: Mapping[str, str]
    seed: int
    etl: EtlConfig
    train: TrainConfig
    spark_master: str | None
    data_root: str
    search: int
    geo: Geography = field(default_factory=Geography)
    model_hparams: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    z_min: float = DeployConfig.z_min  # the champion rule's noise test (evaluate)
    in_between_gauge: bool = False  # evaluate scores the in-between gauge too
    max_kept_days: int = DeployConfig.max_kept_days  # end: a kept champion's age limit

    @classmethod
    def build(cls, values: Mapping[str, Any] | None = None,
              deploy: DeployConfig | None = None,
              model_names: tuple[str, ...] | None = None,
              default_models: tuple[str, ...] | None = None) -> "RunParams":
        """Parse raw parameter values (as the CLI gives them; absent ones take their single
        default from ``PARAMETERS``) and the deploy config, with errors naming the bad one.
        ``model_names`` is the registry ('all'), ``default_models`` what 'default' trains
        (``pythia.models.MODEL_NAMES``, ``DEFAULT_MODELS``: this module imports no model;
        without ``default_models``, 'default' is every name of ``model_names``)."""
        unknown = set(values or {}) - set(PARAM_SPECS)
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)}")
        v = {p.name: p.default for p in PARAMETERS}
        v.update(values or {})
        deploy = deploy or DeployConfig()
        if not str(v["source"]).strip():
            raise ValueError("source is empty: give a folder, an s3:// prefix or synthetic://…")
        if v["date"] and v["date"] != "yesterday":
            parse_date(v["date"])
        models = []
        for chosen in parse_list(str(v["models"]), None, "model"):  # e.g. 'default,gbdt'
            names = model_names if chosen == "all" else (default_models or model_names) \
                if chosen == "default" else parse_list(chosen, model_names, "model")
            if not names:
                raise ValueError(f"models={chosen!r} needs the model registry's names "
                                 f"(RunParams.build(model_names=, default_models=))")
            models += [m for m in names if m not in models]
        regions = None if str(v["regions"]).strip() in ("", "all") else tuple(
            parse_list(v["regions"], None, "region"))
        _check_choice("age_head", v["age_head"], AGE_HEADS)
        _check_choice("prior_correction", v["prior_correction"], PRIOR_CORRECTIONS)
        for name, low in (("max_epochs", 1), ("search", 0), ("power_user_threshold", 0)):
            if v[name] < low:
                raise ValueError(f"{name} must be >= {low}, got {v[name]}")
        etl = EtlConfig(age_edges=deploy.age_edges, resample=v["resample"],
                        drop_power_users=bool(v["drop_power_users"]),
                        holdout_users=float(v["holdout_users"]),
                        cap_power_users=bool(v["cap_power_users"]),
                        power_user_threshold=v["power_user_threshold"] or None,
                        power_user_quantile=deploy.power_user_quantile,
                        allow_gaps=bool(v["allow_gaps"]), hours_per_task=int(v["hours_per_task"]),
                        max_quarantined=float(v["max_quarantined"]),
                        seed=int(v["seed"]))
        train = TrainConfig(max_epochs=int(v["max_epochs"]), batch_size=deploy.batch_size,
                            patience=deploy.patience, seed=int(v["seed"]),
                            max_train_rows=deploy.max_train_rows,
                            regional_start=deploy.regional_start,
                            activity_bins=deploy.activity_bins,
                            age_head=v["age_head"], prior_correction=v["prior_correction"])
        return cls(source=str(v["source"]).strip(), date=str(v["date"]).strip(),
                   models=tuple(models), regions=regions,
                   provider_overrides=parse_overrides(v["provider_overrides"]),
                   seed=int(v["seed"]), etl=etl, train=train,
                   spark_master=v["spark_master"] or None,
                   data_root=v["data_root"] or default_data_root(), search=int(v["search"]),
                   geo=deploy.geo, model_hparams=deploy.model_hparams, z_min=deploy.z_min,
                   in_between_gauge=deploy.in_between_gauge,
                   max_kept_days=deploy.max_kept_days)

    @property
    def hour_groups(self) -> list[list[int]]:
        return hour_groups(self.etl.hours_per_task)

    def compiled(self) -> "RunParams":
        """These params with the geography's local-time table built in: ``start`` stores this,
        so every task and the bundle use one table whatever tzdata their machine has."""
        return replace(self, geo=self.geo.compiled())


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {'|'.join(allowed)}, got {value!r}")
