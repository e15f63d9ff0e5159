"""The training stage: the grid of candidates and fitting one of them.

``train_grid`` lists the (model, region, config) candidates (``family.train_families`` groups
them into the (model, config) families the flow fans out over); ``fit_candidate`` trains one:
it reads the region's TFRecords (via ``pythia.tfrecords``), fits with early stopping (numpy
models on a bounded, class-stratified sample of each split: ``tfrecords.sample``), optionally
starting from a fitted model of its family, predicts the three scored splits under natural
priors chunk by chunk into ONE Parquet (``predictions``), saves the model folder, and returns a
small JSON-able summary for the ``evaluate`` step.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Protocol, Sequence

import numpy as np

from pythia import stack
from pythia.config import GLOBAL_REGION, TrainConfig
from pythia.features import TEST_NATURAL, TEST_RESAMPLED, TRAIN, VALIDATION
from pythia.models import crossfit, notes
from pythia.models.base import TF_DATASET, Model
from pythia.models.predictions import write_split_predictions

SCORED_SPLITS = (VALIDATION, TEST_NATURAL, TEST_RESAMPLED)


class CandidatePaths(Protocol):
    """Where a candidate's files go (``pythia.paths.RunPaths`` is one)."""

    def model(self, model: str, region: str, config_id: int = 0) -> str: ...

    def predictions(self, model: str, region: str, config_id: int = 0) -> str: ...


def split_rows(manifest: Mapping, split: str, region: str) -> int:
    """Rows of ``split`` for ``region`` ('global' = all regions) according to the manifest."""
    try:
        entry = manifest["splits"][split]
    except KeyError:
        raise ValueError(f"the TFRecord manifest has no split {split!r} "
                         f"(has: {sorted(manifest.get('splits', {}))})") from None
    if region == GLOBAL_REGION:
        return int(entry.get("rows", 0))
    return int(entry.get("rows_by_region", {}).get(region, 0))


def split_regions(manifest: Mapping, split: str) -> list[str]:
    """Regions with rows in ``split``, sorted."""
    by_region = manifest["splits"].get(split, {}).get("rows_by_region", {})
    return sorted(r for r, n in by_region.items() if int(n) > 0)


def _finite(x: Any) -> Any:
    """JSON-safe float (NaN -> None)."""
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x


def check_model_hparams(model_hparams: Mapping[str, Mapping[str, Any]]) -> None:
    """The deploy config's ``[models.<name>]`` sections name registered models and their
    knobs; the error names the section, the bad keys and the knobs there are."""
    from pythia.models import MODEL_NAMES, get_model

    for model, knobs in model_hparams.items():
        if model not in MODEL_NAMES:
            raise ValueError(f"config [models.{model}]: no model {model!r}; the models are "
                             f"{list(MODEL_NAMES)}")
        if not knobs:  # an empty section: nothing to check, no model module to import
            continue
        allowed = get_model(model).default_hparams()
        unknown = sorted(set(knobs) - set(allowed))
        if unknown:
            raise ValueError(f"config [models.{model}]: unknown knob(s) {unknown}; {model}'s "
                             f"knobs are {sorted(allowed)} (default_hparams() in "
                             f"pythia/models/{model}.py)")
        check = getattr(get_model(model), "check_knobs", None)  # a model's own values
        if check is not None:
            try:
                check(knobs)
            except ValueError as e:
                raise ValueError(f"config [models.{model}]: {e}") from None


def train_grid(models: Sequence[str], regions_requested: Sequence[str] | None,
               tf_manifest: Mapping, search: int, seed: int,
               model_hparams: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict]:
    """The flat foreach list of (model, region, config) candidates.

    The constant prior (``REFERENCE_MODEL``) is always in the grid, added last when
    ``models`` omit it: it is the line every champion must beat. A region whose training rows
    are all the training rows (e.g. every row in one region, or ``OTHER`` holding them all)
    is not trained apart from 'global' when 'global' is trained: its candidates would be the
    global ones again; evaluation scores the region with the global candidates instead.

    Args:
        models: registered model names, in the order the grid lists them.
        regions_requested: None for 'global' plus every region with training rows; else the
            regions to train ('global' and/or regions, each of which must have training rows).
        tf_manifest: the TFRecord manifest (rows per split and region).
        search: sampled configs per (model, region) beyond the defaults (0 = defaults only).
        seed: the search seed (``search.sample_configs``).
        model_hparams: per model, the deploy config's ``[models.<name>]`` knobs: every
            config of that model starts from them (a searched knob overrides its value); a
            blind twin (``BLIND_TWINS``) starts from its sighted model's, then its own, and
            draws the sighted model's searched configs.

    Returns:
        ``[{'model', 'region', 'config_id', 'hparams'}, ...]``: model-major, then region,
        then config (config 0 = the model's defaults and the config's knobs).

    Raises:
        ValueError: an unknown model, a ``[models.<name>]`` knob the model does not have,
            or a requested region without training rows.
    """
    from pythia.models import BLIND_TWINS, MODEL_NAMES, REFERENCE_MODEL
    from pythia.models.search import sample_configs

    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {list(MODEL_NAMES)}")
    models = list(models)
    if REFERENCE_MODEL not in models:
        print(f"train_grid: adding the {REFERENCE_MODEL!r} baseline (the constant class prior) "
              f"to the models {models}: every champion must beat it")
        models.append(REFERENCE_MODEL)
    given = {str(m): dict(h) for m, h in (model_hparams or {}).items()}
    check_model_hparams(given)
    regions = _distinct_regions(_grid_regions(regions_requested, tf_manifest), tf_manifest)
    grid = []
    for model in models:
        twin = BLIND_TWINS.get(model)  # a blind twin: its sighted model's knobs and configs
        base = {**given.get(twin, {}), **given.get(model, {})} if twin else given.get(model, {})
        configs = [{**base, **c}
                   for c in (sample_configs(twin or model, search, seed) if search else [{}])]
        for region in regions:
            for config_id, hparams in enumerate(configs):
                grid.append({"model": model, "region": region, "config_id": config_id,
                             "hparams": hparams})
    return grid


def _grid_regions(regions_requested: Sequence[str] | None, tf_manifest: Mapping) -> list[str]:
    """'global' plus every region with training rows, or the requested ones (checked)."""
    present = split_regions(tf_manifest, TRAIN)
    if regions_requested is None:
        return [GLOBAL_REGION] + present
    missing = [r for r in regions_requested if r != GLOBAL_REGION and r not in present]
    if missing:
        raise ValueError(f"requested region(s) {missing} have no training rows; "
                         f"regions in the data: {present}")
    return list(regions_requested)


def _distinct_regions(regions: list[str], tf_manifest: Mapping) -> list[str]:
    """``regions`` without those whose training rows are exactly the global ones, when
    'global' is among them (regions partition the rows, so equal counts mean equal rows)."""
    if GLOBAL_REGION not in regions:
        return regions
    n_global = split_rows(tf_manifest, TRAIN, GLOBAL_REGION)
    kept = []
    for region in regions:
        if region != GLOBAL_REGION and split_rows(tf_manifest, TRAIN, region) == n_global:
            print(f"train_grid: region {region!r} holds all {n_global} training rows, the same "
                  f"rows as {GLOBAL_REGION!r}: not trained twice; the {GLOBAL_REGION} "
                  f"candidates score it")
            continue
        kept.append(region)
    return kept


def print_candidate(summary: Mapping[str, Any]) -> None:
    """The task's line for one fitted candidate: epochs, rows, where it started, validation,
    and what the fit said about itself (its ``notes``: the epochs' log-loss, a C path)."""
    start = (f"started from {summary['start_from']}" if summary.get("start_from")
             else "from scratch")
    print(f"train {summary['model']}/{summary['region']} (config {summary['config_id']}): "
          f"{summary['epochs']} epoch(s) on {summary['n_train']:,} rows, {start}, "
          f"{summary['fit_seconds']:.1f} s; validation log-loss "
          + ", ".join(f"{t} {v:.4f}" if v is not None else f"{t} n/a"
                      for t, v in summary["val_logloss"].items())
          + "".join(f" | {text}" for text in summary.get("notes") or ()))


def validation_class_weights(split_manifest: Mapping, n_age: int) -> list[float]:
    """Per AgeGender class, 1 / the validation day's keep-rate of its resampling class (1 when
    the day was not resampled): the weights evaluation gives validation rows, so that a model
    choosing knobs on validation measures what the champion rule measures."""
    rates = split_manifest.get("rates", {}).get(VALIDATION, {})
    target = split_manifest.get("resample_target", "age_gender")
    classes = np.arange(2 * n_age)
    of_target = {"age_gender": classes, "gender": classes // n_age, "age": classes % n_age}
    if target not in of_target:
        raise ValueError(f"split manifest resample_target {target!r} is not one of "
                         f"{sorted(of_target)}")
    rate = np.array([float(rates.get(str(c), 1.0)) for c in of_target[target]])
    return np.divide(1.0, rate, out=np.zeros_like(rate), where=rate > 0).tolist()


class FittedCandidate(NamedTuple):
    """A fitted candidate kept in the task: its summary and the model itself (which a
    regional candidate of the same family can start from)."""

    summary: dict
    model: Model


def candidate_name(summary: Mapping[str, Any]) -> str:
    """A candidate's id as the report writes it, e.g. 'mlp/global#0'."""
    return f"{summary['model']}/{summary['region']}#{int(summary.get('config_id', 0) or 0)}"


def fit_candidate(model_name: str, region: str, config_id: int, hparams: Mapping[str, Any],
                  tf_manifest: Mapping, priors: Mapping, model_dir: str, predictions_uri: str,
                  train_cfg: TrainConfig = TrainConfig(),
                  valid_class_weights: Sequence[float] | None = None,
                  start: FittedCandidate | None = None) -> dict:
    """Fit one candidate, write its predictions and model, return its summary (the summary of
    ``fit_candidate_model``, which also returns the model)."""
    return fit_candidate_model(model_name, region, config_id, hparams, tf_manifest, priors,
                               model_dir, predictions_uri, train_cfg, valid_class_weights,
                               start).summary


def fit_candidate_model(model_name: str, region: str, config_id: int,
                        hparams: Mapping[str, Any], tf_manifest: Mapping, priors: Mapping,
                        model_dir: str, predictions_uri: str,
                        train_cfg: TrainConfig = TrainConfig(),
                        valid_class_weights: Sequence[float] | None = None,
                        start: FittedCandidate | None = None, serves_as_start: bool = False,
                        fold_regions: Sequence[str] = ()) -> FittedCandidate:
    # ~70 lines of which 30 are the docstring: load, fit, predict, save read best in one place.
    """Fit one candidate, write its predictions and model; return its summary and the model.

    Args:
        model_name: a registered model (``pythia.models.MODEL_NAMES``).
        region: a model region, or 'global' (trained and scored on every region).
        config_id: index of ``hparams`` in the search (recorded only).
        hparams: model knobs overriding its defaults (``search.sample_configs``).
        tf_manifest: the TFRecord manifest (``pythia.tfrecords``).
        priors: ``{'train': {target: [...]}, 'natural': {target: [...]}}``.
        model_dir: folder (local or s3://) the model is saved to.
        predictions_uri: the Parquet file the predictions go to.
        train_cfg: epochs, batch size, patience, seed, age head, prior correction, and
            max_train_rows (the numpy models' sample cap per split).
        valid_class_weights: per AgeGender class, the natural weight of a validation row
            (``validation_class_weights``); None: the priors' ratio.
        start: a fitted candidate of the same model class and encoders to start from (the
            family's global one, ``Model.fit(..., start=)``); None: from scratch.
        serves_as_start: the fitted model will be the ``start`` of others
            (``Model.serve_as_start``: gbdt keeps its raw scores for them).
        fold_regions: the run's regions whose validation rows every candidate scores out of
            fold (``crossfit.fold_regions``); () = all in-sample.

    Returns:
        ``FittedCandidate``: the model, and a JSON-able summary dict: model, is_baseline (the
        class's answer, so that choosing champions needs no model import), is_reference (the
        constant-prior line), region, config_id,
        hparams, model_dir, predictions_uri, n_train (rows available), n_valid (rows
        used), fit_seconds, epochs, best_val_loss, val_logloss (per target), age_head,
        temperature, prior_correction, n_predicted (per split), fold_regions (the regions
        whose validation rows it scored out of fold), training_sample (per split:
        rule, max_rows, seed, rows_available, rows_used; ``tfrecords.sample``),
        temperature_sample (the MLP's: the validation rows its temperature was fitted on,
        ``models.mlp_valid``; else None), start_from (``start``'s id, e.g. 'mlp/global#0',
        or None).

    Raises:
        ValueError: the region has no training (or no validation) rows; ``start`` of a model
            that cannot start from one (``Model.fit``).
    """
    from pythia import quiet, tfrecords
    # TensorFlow only for a tf.data model (or a manifest the columnar reader cannot read):
    # its first import in the task, whichever it is, without its start-up lines
    quiet.install()
    from pythia.models import REFERENCE_MODEL, get_model

    cls = get_model(model_name)
    n_train = split_rows(tf_manifest, TRAIN, region)
    if n_train == 0:
        raise ValueError(f"region {region!r} has no training rows in the TFRecord manifest "
                         f"(regions with rows: {split_regions(tf_manifest, TRAIN)})")
    n_valid = split_rows(tf_manifest, VALIDATION, region)
    if n_valid == 0:
        raise ValueError(f"region {region!r} has no validation rows: early stopping and "
                         f"calibration need them")
    model = cls(tfrecords.load_encoders(tf_manifest), hparams, train_cfg)
    if valid_class_weights is not None:
        model.valid_class_weights = np.asarray(valid_class_weights, dtype=np.float64)
    if serves_as_start:
        model.serve_as_start()
    model.fold_regions = crossfit.candidate_fold_regions(region, fold_regions)
    train, valid, sample = _training_data(model, tf_manifest, region)
    notes.take(model_name)  # nothing left over from an earlier fit
    summary = model.fit(train, valid, priors, start=start.model if start else None)
    if model.activity_temperature is not None:  # models.activity_temp
        notes.say(model_name, f"AgeGender temperature by impressions today: "
                              f"{model.activity_temperature.describe()}")
    said = notes.take(model_name)
    del train, valid
    n_predicted = write_split_predictions(model, tf_manifest, region, SCORED_SPLITS,
                                          predictions_uri)
    model.forget_validation()
    model.save(model_dir)

    record = {
        "model": model_name,
        "is_baseline": bool(cls.is_baseline),
        "is_reference": model_name == REFERENCE_MODEL,
        "region": region,
        "config_id": int(config_id),
        "hparams": {k: _finite(v) for k, v in model.hparams.items()},
        "model_dir": model_dir,
        "predictions_uri": predictions_uri,
        "n_train": int(n_train),
        "n_valid": int(summary.get("n_valid", n_valid)),
        "fit_seconds": float(summary["seconds"]),
        "epochs": int(summary["epochs"]),
        "best_val_loss": _finite(summary.get("best_val_loss")),
        "val_logloss": {t: _finite(v) for t, v in summary["val_logloss"].items()},
        "age_head": getattr(model, "age_head", "marginal"),
        "temperature": {t: float(v) for t, v in summary["temperature"].items()},
        # AgeGender's per bin of user_impressions_today, or None (models.activity_temp)
        "activity_temperature": summary.get("activity_temperature"),
        "prior_correction": train_cfg.prior_correction,
        "n_predicted": n_predicted,
        # the regions whose validation rows it scored out of fold (models.crossfit)
        "fold_regions": list(model.fold_regions),
        "wide_start": summary.get("wide_start"),  # the MLP's LR start and whether it improved
        "training_sample": sample,
        # the MLP: the validation rows its temperature was fitted on (models.mlp_valid)
        "temperature_sample": summary.get("temperature_sample"),
        "start_from": candidate_name(start.summary) if start else None,
        # a blind twin's sighted model (models.mlp_blind), paired in evaluate.twins
        "twin_of": getattr(cls, "sighted", None),
        # the start's and the kept validation loss on the region, steps kept / tried
        "warm_start": summary.get("start"),
        "notes": said,  # what the fit said about itself (models.notes), on the train line
        "stack": stack.versions(),  # the libraries that fitted it (pythia.stack)
    }
    return FittedCandidate(record, model)


def _regions_filter(region: str) -> list[str] | None:
    """The ``regions`` argument of the TFRecord readers: None reads every region."""
    return None if region == GLOBAL_REGION else [region]


def _in_memory(tf_manifest: Mapping, region: str, cfg: TrainConfig) -> bool:
    """Whether a tf.data model (the MLP) gets its splits as numpy arrays read once: when both
    are within ``max_train_rows`` (not 0), the rows the numpy models hold and the MLP's LR
    start reads whole anyway. Streamed, every epoch re-read and re-parsed every record (about
    a core's worth of tf.data threads beside the fit); over the cap it still streams."""
    return 0 < max(split_rows(tf_manifest, s, region) for s in (TRAIN, VALIDATION)
                   ) <= cfg.max_train_rows


def _training_data(model: Model, tf_manifest: Mapping, region: str
                   ) -> tuple[Any, Any, dict[str, dict]]:
    """Train and validation data of ``region`` in the model's ``input_format``, and per split
    the record of the rows it holds (numpy models: a bounded sample, ``tfrecords.sample``)."""
    from pythia import tfrecords

    regions, cfg = _regions_filter(region), model.train_cfg
    if model.input_format == TF_DATASET and not _in_memory(tf_manifest, region, cfg):
        # train with the ids only over the cap: the MLP's LR start then draws a bounded
        # sample by them; within it every row is kept and parsing the ids would only slow
        # every epoch. Validation always: its keys carry the user groups of the activity
        # cut's noise test (and, over the cap, the temperature sample's ids)
        ids = 0 < cfg.max_train_rows < split_rows(tf_manifest, TRAIN, region)
        train = tfrecords.make_dataset(tf_manifest, TRAIN, regions, batch_size=cfg.batch_size,
                                       shuffle=True, seed=cfg.seed, with_ids=ids)
        valid = tfrecords.make_dataset(tf_manifest, VALIDATION, regions,
                                       batch_size=max(cfg.batch_size, 4096), with_ids=True)
        streamed = {s: {"split": s, "rule": "all rows, streamed (tf.data)",
                        "rows_available": split_rows(tf_manifest, s, region),
                        "rows_used": split_rows(tf_manifest, s, region)}
                    for s in (TRAIN, VALIDATION)}
        return train, valid, streamed
    train, t_rec = tfrecords.load_sample(tf_manifest, TRAIN, regions, cfg.max_train_rows,
                                         cfg.seed)
    valid, v_rec = tfrecords.load_sample(tf_manifest, VALIDATION, regions,
                                         cfg.max_train_rows, cfg.seed)
    return train, valid, {TRAIN: t_rec, VALIDATION: v_rec}
