"""Glue between DemoFlow's steps and the library: one function per step.

Each function takes explicit arguments (the typed ``RunParams`` built once from the flow's
Parameters, manifests from earlier steps, ``RunPaths``) and returns plain data the step stores
as artifacts. The flow file stays thin; everything here runs without Metaflow except where a
function says it reads past runs through the Metaflow client.
"""
from __future__ import annotations

import datetime as dt
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import pandas as pd

from pythia import storage
from pythia.config import (GLOBAL_REGION, EtlConfig, Geography, TrainConfig, Window,
                           hour_groups as _hour_groups, parse_date, parse_list,
                           parse_overrides)
from pythia.paths import RunPaths, default_cache_root, default_data_root, join

MODEL_NAMES = ("mlp", "tabnet", "gbdt")
FAIL_ENV = "PYTHIA_FAIL_HOURS"  # test hook: comma-separated hours whose etl task must fail
PARAM_NAMES = ("source", "date", "models", "regions", "provider_overrides", "seed", "resample",
               "drop_power_users", "power_user_threshold", "allow_gaps", "hours_per_task",
               "spark_master", "data_root", "max_epochs", "age_head", "prior_correction",
               "search")


@dataclass(frozen=True)
class RunParams:
    """The flow's Parameters, parsed and validated once in ``start``."""

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


def resolve_params(flow: Any) -> RunParams:
    """Build ``RunParams`` from the flow's Parameter values, with errors naming the bad one."""
    values = {name: getattr(flow, name) for name in PARAM_NAMES}
    return make_params(**values)


def make_params(source: str = "synthetic://default", date: str = "",
                models: str = "mlp,tabnet,gbdt", regions: str = "all",
                provider_overrides: str = "US=lucid", seed: int = 0,
                resample: str = "balanced", drop_power_users: bool = True,
                power_user_threshold: float = 0.0, allow_gaps: bool = False,
                hours_per_task: int = 4, spark_master: str = "", data_root: str = "",
                max_epochs: int = 8, age_head: str = "ordinal",
                prior_correction: str = "bayes", search: int = 0) -> RunParams:
    """Parse raw parameter values (as the CLI gives them) into ``RunParams``."""
    if not str(source).strip():
        raise ValueError("source is empty: give a folder, an s3:// prefix or synthetic://…")
    if date and date != "yesterday":
        parse_date(date)
    model_list = parse_list(models, MODEL_NAMES, "model")
    region_list = None if regions.strip() in ("", "all") else tuple(
        parse_list(regions, None, "region"))
    if age_head not in ("ordinal", "softmax"):
        raise ValueError(f"age_head must be 'ordinal' or 'softmax', got {age_head!r}")
    if prior_correction not in ("bayes", "em", "none"):
        raise ValueError(f"prior_correction must be bayes|em|none, got {prior_correction!r}")
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
    if search < 0:
        raise ValueError(f"search must be >= 0, got {search}")
    if power_user_threshold < 0:
        raise ValueError(f"power_user_threshold must be >= 0, got {power_user_threshold}")
    etl = EtlConfig(resample=resample, drop_power_users=bool(drop_power_users),
                    power_user_threshold=power_user_threshold or None,
                    allow_gaps=bool(allow_gaps), hours_per_task=int(hours_per_task),
                    seed=int(seed))
    train = TrainConfig(max_epochs=int(max_epochs), seed=int(seed), age_head=age_head,
                        prior_correction=prior_correction)
    return RunParams(source=source.strip(), date=date.strip(), models=tuple(model_list),
                     regions=region_list, provider_overrides=parse_overrides(provider_overrides),
                     seed=int(seed), etl=etl, train=train, spark_master=spark_master or None,
                     data_root=data_root or default_data_root(), search=int(search))


def run_paths(params: RunParams, flow_name: str, run_id: str) -> RunPaths:
    return RunPaths(params.data_root, flow_name, str(run_id))


def hour_groups(params: RunParams) -> list[list[int]]:
    return _hour_groups(params.etl.hours_per_task)


def maybe_inject_failure(hours: list[int]) -> None:
    """Fail on purpose when $PYTHIA_FAIL_HOURS names one of ``hours`` (resume tests)."""
    wanted = {int(h) for h in os.environ.get(FAIL_ENV, "").split(",") if h.strip()}
    hit = wanted.intersection(hours)
    if hit:
        raise RuntimeError(f"injected failure for hour(s) {sorted(hit)} (${FAIL_ENV} is set)")
