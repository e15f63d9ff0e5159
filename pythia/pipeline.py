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


# ---------------------------------------------------------------- start

def _newest_complete_date(source: str, not_after: dt.date | None = None) -> dt.date:
    from pythia import contract
    dates = sorted(contract.list_dates(source), reverse=True)
    if not dates:
        raise ValueError(f"no impressions/date=YYYY-MM-DD partitions under {source}")
    for day in dates:
        if not_after is not None and day > not_after:
            continue
        if not contract.check_partitions(source, [day], list(range(24)), allow_gaps=True):
            return day
    raise ValueError(f"no date with all 24 hour partitions under {source} "
                     f"(dates present: {[d.isoformat() for d in dates[:10]]}…)")


SCHEDULER_RUN_PREFIXES = ("airflow-", "argo-", "sfn-")


def is_scheduled_run(run_id: str) -> bool:
    """Whether Metaflow is running this run for a scheduler (Airflow, Argo, Step Functions):
    their run ids carry the scheduler's prefix."""
    return str(run_id).startswith(SCHEDULER_RUN_PREFIXES)


def resolve_source_and_window(params: RunParams, scheduled: bool = False
                              ) -> tuple[str, dict, list[str]]:
    """Generate/locate the source, pick the test day, check the window's hour partitions.

    The test day is ``params.date``; when it is empty, yesterday (UTC) on a scheduled daily
    run, else the newest date of the source with all 24 hour partitions.
    Returns the source path, the window as {'train': [...], 'validation': [...], 'test': [...]}
    and the recorded gaps (missing hour partitions; an error unless ``allow_gaps``).
    """
    from pythia import contract
    from pythia.synth import resolve_source
    source_path = resolve_source(params.source, default_cache_root())
    if params.date == "yesterday" or (scheduled and not params.date):
        test_date = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    elif params.date:
        test_date = parse_date(params.date)
    else:
        test_date = _newest_complete_date(source_path)
    window = Window(test_date)
    gaps = contract.check_partitions(source_path, window.dates, list(range(24)),
                                     allow_gaps=params.etl.allow_gaps)
    return source_path, window.as_dict(), gaps


def window_of(window: Mapping[str, list[str]]) -> Window:
    return Window(parse_date(window["test"][0]))


def _spark(params: RunParams, app: str, *uris: str):
    """A Spark session for one step; S3A settings when the run touches S3 and the jars exist."""
    from pythia.etl.session import get_spark
    from pythia.spark_s3 import session_conf_for
    return get_spark(app, master=params.spark_master,
                     conf=session_conf_for(params.data_root, params.source, *uris) or None)


# ---------------------------------------------------------------- providers and labels

def read_table(uri: str) -> pd.DataFrame:
    """Read a (hive-partitioned) Parquet folder or file, local or S3, into pandas."""
    import pyarrow.dataset as ds
    fs, path = storage.filesystem(uri)
    try:
        return ds.dataset(path, filesystem=fs, format="parquet",
                          partitioning="hive").to_table().to_pandas()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no Parquet data at {uri}") from exc


def select_providers(source_path: str, params: RunParams, paths: RunPaths
                     ) -> tuple[pd.DataFrame, dict, list[str]]:
    """Score every (provider, country) and choose one provider per country.

    Returns the ``provider_choice`` table, ``{'by_country': {country: provider}, 'default':
    best global provider, 'metrics': read/quarantine counts}`` and the warnings.
    """
    from pythia import providers
    spark = _spark(params, "pythia-providers")
    try:
        metrics, read_manifest = providers.read_provider_metrics(
            spark, source_path, join(paths.quarantine, "provider_metrics"))
    finally:
        spark.stop()
    known = providers.list_providers(source_path)
    countries = sorted(set(params.geo.region_of_country) | set(metrics["country"].dropna()))
    choice, mapping, warns = providers.select_providers(
        metrics, dict(params.provider_overrides), countries, known_providers=known)
    for w in warns:
        print(f"warning: {w}")
    default = providers.best_global_provider(metrics)
    return choice, {"by_country": mapping, "default": default, "metrics": read_manifest}, \
        list(warns)


def prepare_labels(source_path: str, provider_map: Mapping[str, Any], params: RunParams,
                   paths: RunPaths) -> dict:
    from pythia import providers
    spark = _spark(params, "pythia-labels")
    try:
        return providers.prepare_labels(spark, source_path, dict(provider_map["by_country"]),
                                        params.etl.age_edges, paths.labels,
                                        provider_map["default"],
                                        quarantine_dir=join(paths.quarantine, "labels"))
    finally:
        spark.stop()


# ---------------------------------------------------------------- ETL

def run_etl_hours(source_path: str, hours: list[int], window: Mapping[str, list[str]],
                  labels_manifest: dict, params: RunParams, paths: RunPaths) -> dict:
    from pythia.etl.hourly import run_hours
    spark = _spark(params, f"pythia-etl-{hours[0]:02d}")
    try:
        return run_hours(spark, source_path, hours, window_of(window), labels_manifest["labels_path"],
                         paths.etl_hours(hours), paths.quarantine, params.geo,
                         params.etl.allow_gaps)
    finally:
        spark.stop()


def finalize_splits(hour_manifests: list[dict], params: RunParams, paths: RunPaths
                    ) -> tuple[dict, pd.DataFrame, dict, dict]:
    """Power users, resampling and the four splits; the reconciliation must balance."""
    from pythia.etl.reconcile import assert_balanced, reconcile
    from pythia.etl.splits import finalize_splits as _finalize
    spark = _spark(params, "pythia-splits")
    try:
        split_manifest = _finalize(spark, hour_manifests, params.etl, paths)
    finally:
        spark.stop()
    reconciliation = reconcile(hour_manifests, split_manifest)
    assert_balanced(reconciliation)
    quarantine = {
        "path": paths.quarantine,
        "by_reason": _sum_dicts(m.get("quarantined_by_reason", {}) for m in hour_manifests),
    }
    return split_manifest, reconciliation, split_manifest.get("resample_rates", {}), quarantine


def _sum_dicts(dicts) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


# ---------------------------------------------------------------- TFRecords and training

def to_tfrecords(split_manifest: dict, params: RunParams, paths: RunPaths) -> tuple[dict, dict]:
    """Convert the four splits to TFRecord shards; returns (manifest, encoders as JSON)."""
    from pythia.tfrecords import convert_splits
    spark = _spark(params, "pythia-tfrecords")
    try:
        manifest, encoders = convert_splits(spark, dict(split_manifest["paths"]),
                                            paths.tfrecords, age_edges=params.etl.age_edges)
    finally:
        spark.stop()
    return manifest, encoders.to_json()


def train_grid(params: RunParams, tf_manifest: dict) -> list[dict]:
    """The flat foreach list of (model, region, config) candidates.

    Regions: 'global' plus each region with training rows (or the requested ones, which
    must exist in the data). With ``search`` > 0 each (model, region) gets that many sampled
    configurations (config 0 = defaults).
    """
    from pythia.models.search import sample_configs
    present = sorted(r for r, n in tf_manifest["splits"]["train"]["rows_by_region"].items()
                     if n > 0)
    if params.regions is None:
        regions = [GLOBAL_REGION] + present
    else:
        missing = [r for r in params.regions if r != GLOBAL_REGION and r not in present]
        if missing:
            raise ValueError(f"requested region(s) {missing} have no training rows; "
                             f"regions in the data: {present}")
        regions = list(params.regions)
    grid = []
    for model in params.models:
        configs = (sample_configs(model, params.search, params.seed) if params.search
                   else [{}])
        for region in regions:
            for config_id, hparams in enumerate(configs):
                grid.append({"model": model, "region": region, "config_id": config_id,
                             "hparams": hparams})
    return grid


def train_candidate(item: dict, tf_manifest: dict, split_manifest: dict, params: RunParams,
                    paths: RunPaths) -> dict:
    from pythia.models import train_candidate as _train
    from pythia.models.priors import priors_from_split_manifest
    model, region, cid = item["model"], item["region"], item["config_id"]
    # Resampling keeps class c at a global rate r_c, so pi_natural/pi_train is proportional to
    # 1/r_c in every region: the global priors give each regional model the exact correction.
    priors = priors_from_split_manifest(split_manifest, params.etl.age_edges)
    return _train(model, region, cid, item["hparams"], tf_manifest, priors,
                  paths.model(model, region, cid), paths.predictions(model, region, cid),
                  params.train)


# ---------------------------------------------------------------- evaluation

EVAL_SPLITS = ("validation", "test_natural", "test_resampled")
REQUEST_COLUMNS = ("impression_id", "country", "geo_region", "metro", "zip", "inventory_type",
                   "site_or_app", "content_category", "supply_vendor", "ad_format", "ad_size",
                   "device_type", "device_make", "device_model", "os", "os_version", "browser")


def rows_to_requests(rows: pd.DataFrame) -> list[dict]:
    """Split-Parquet rows as bid-time requests (contract columns, ts in epoch seconds)."""
    cols = [c for c in REQUEST_COLUMNS if c in rows.columns]
    frame = rows[cols].astype(object).where(rows[cols].notna(), None)
    frame["ts"] = rows["ts_seconds"].astype("int64").to_numpy()
    return frame.to_dict("records")


def previous_champion_scorer(flow_name: str, current_run_id: str | None = None):
    """A ``previous(region, rows)`` callable scoring rows with the last successful run's bundle.

    Returns (callable, pathspec) or (None, None) when there is no earlier successful run with
    a bundle (first run, or a fresh datastore).
    """
    try:
        from metaflow import Flow, namespace
        namespace(None)
        runs = Flow(flow_name).runs()
    except Exception:  # no flow yet in this datastore
        return None, None
    for run in runs:
        if str(run.id) == str(current_run_id) or not run.successful:
            continue
        try:
            bundle = run.data.bundle_path
        except (AttributeError, KeyError):
            continue
        if not bundle or not storage.exists(join(bundle, "bundle.json")):
            continue
        from pythia.scoring import Scorer
        scorer = Scorer.load(bundle)

        def previous(region: str, rows: pd.DataFrame, _scorer=scorer) -> dict:
            return _scorer.score_arrays(rows_to_requests(rows))
        return previous, run.pathspec
    return None, None


def importance_weights(y_age_gender, split_manifest: dict, split: str, n_age: int):
    """1 / keep-rate of each row's resampling class: weights that turn a resampled split's
    averages into natural-distribution averages (Horvitz-Thompson)."""
    import numpy as np

    from pythia.etl.splits import target_class
    rates = split_manifest.get("rates", {}).get(split, {})
    target = split_manifest.get("resample_target", "age_gender")
    by_class = np.array([float(rates.get(str(target_class(c, target, n_age)), 1.0))
                         for c in range(2 * n_age)])
    weight = np.divide(1.0, by_class, out=np.zeros_like(by_class), where=by_class > 0)
    return weight[np.asarray(y_age_gender, dtype=np.int64)]


def evaluate(candidates: list[dict], split_manifest: dict, source_path: str,
             params: RunParams, paths: RunPaths, flow_name: str) -> dict:
    """Every metric, the Bayes gauge (synthetic sources), distributions and champions."""
    from pythia.evaluate import evaluate_run
    frames = {name: read_table(split_manifest["paths"][name]) for name in EVAL_SPLITS}
    frames["validation"]["importance_weight"] = importance_weights(
        frames["validation"]["y_age_gender"].to_numpy(), split_manifest, "validation",
        len(params.etl.age_edges))
    world = None
    if storage.exists(join(source_path, "truth")):  # synthetic worlds carry their truth
        from pythia.synth import load_world
        world = load_world(source_path)
    previous, previous_id = previous_champion_scorer(flow_name, paths.run_id)
    results = evaluate_run(candidates, frames, world, previous, params.etl.age_edges,
                           paths.reports, previous_id=previous_id)
    results["previous_run"] = previous_id
    return results


def render_card(card: Any, results: dict, reconciliation: pd.DataFrame,
                provider_choice: pd.DataFrame) -> None:
    from pythia.evaluate import render_card as _render
    _render(card, results, reconciliation, provider_choice)


# ---------------------------------------------------------------- export

def _previous_champions(flow_name: str, current_run_id: str) -> dict[str, dict]:
    try:
        from metaflow import Flow, namespace
        namespace(None)
        for run in Flow(flow_name).runs():
            if str(run.id) == str(current_run_id) or not run.successful:
                continue
            champs = run.data.champions
            return {r["region"]: r for r in champs.to_dict("records")
                    if r.get("blessed") and r.get("model")}
    except Exception:
        pass
    return {}


def export_bundle(champions: pd.DataFrame, candidates: list[dict], tf_manifest: dict,
                  params: RunParams, paths: RunPaths, pathspec: str, flow_name: str) -> str:
    """Write the bid-time bundle of the blessed champions; returns its path.

    A region whose candidates were not blessed keeps the previous run's champion when there
    is one; otherwise the scorer routes that region to the global model. The global slot
    falls back to the gradient-boosting baseline if nothing else qualifies, so a bundle always
    has a model for every request.
    """
    from pythia.features import Encoders
    from pythia.scoring import export_bundle as _export
    from pythia.tfrecords import load_encoders
    chosen: list[dict] = []
    previous = _previous_champions(flow_name, paths.run_id)
    for row in champions.to_dict("records"):
        if row.get("blessed") and row.get("model"):
            chosen.append({"region": row["region"], "model": row["model"],
                           "model_dir": row["model_dir"], "source": pathspec})
        elif row["region"] in previous:
            prev = previous[row["region"]]
            chosen.append({"region": row["region"], "model": prev["model"],
                           "model_dir": prev["model_dir"], "source": "previous run"})
    if not any(c["region"] == GLOBAL_REGION for c in chosen):
        base = [c for c in candidates if c["region"] == GLOBAL_REGION]
        base.sort(key=lambda c: (c["model"] != "gbdt", c["val_logloss"]["age_gender"]))
        if base:
            chosen.append({"region": GLOBAL_REGION, "model": base[0]["model"],
                           "model_dir": base[0]["model_dir"], "source": "fallback"})
    encoders: Encoders = load_encoders(tf_manifest)
    return _export(chosen, encoders, params.geo, pathspec, paths.bundle)


def summary_text(flow: Any, flow_name: str, run_id: str) -> str:
    lines = [f"DemoFlow run {run_id} finished.",
             f"  window: {flow.window}",
             f"  run files: {flow.reports_path.rsplit('/reports', 1)[0]}",
             f"  reports: {flow.reports_path}",
             f"  bid-time bundle: {flow.bundle_path}",
             "Champions:"]
    for row in flow.champions.to_dict("records"):
        lines.append(f"  {row['region']:>8}: {row.get('model')} — {row.get('reason')}")
    lines += ["Inspect:",
              f"  python flows/demo_flow.py card view evaluate --run-id {run_id}   (the report card)",
              f"  pythia report {run_id}",
              "  pythia runs",
              f"  python -c \"from metaflow import Run; print(Run('{flow_name}/{run_id}')"
              ".data.metrics)\"",
              f"  pythia score --bundle {flow.bundle_path} < requests.jsonl"]
    return "\n".join(lines)
