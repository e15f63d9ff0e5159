"""The ``train`` step's unit: one model family — a (model, config) pair — per task.

A task fits the family's 'global' candidate first, then each region in the same process, so the
fixed cost of a task (imports, start-up) is paid once per family instead of once per region
(issue #14), and a region can start from the fitted global model of its own kind instead of from
scratch (issues #14, #15): when ``TrainConfig.regional_start`` is 'global', the model class
``warm_starts`` and the family has a global candidate.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from pythia.config import GLOBAL_REGION, TrainConfig
from pythia.models import crossfit
from pythia.models.train import (CandidatePaths, FittedCandidate, fit_candidate_model,
                                 print_candidate, train_grid, validation_class_weights)


def train_families(models: Sequence[str], regions_requested: Sequence[str] | None,
                   tf_manifest: Mapping, search: int, seed: int,
                   model_hparams: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict]:
    """The flow's foreach list: the candidates of ``train_grid`` grouped by (model, config).

    Same arguments and rules as ``train_grid`` (the class prior added; a region holding all the
    global rows dropped; requested regions checked).

    Returns:
        ``[{'model', 'config_id', 'hparams', 'regions'}, ...]``, the costliest model first
        (``TYPICAL_TASK_SECONDS``; ties in the grid's model order), then config; ``regions``
        lists 'global' first (when trained), then the regions in grid order. A local run
        starts foreach tasks in list order, a few at a time: longest first keeps the longest
        task from starting late and running alone at the end (default world, two at a time:
        gbdt, the longest, started third and the step took 346 s; the same task times
        started longest first would end at about 274 s).
    """
    from pythia.models import TYPICAL_TASK_SECONDS

    families: dict[tuple[str, int], dict[str, Any]] = {}
    for item in train_grid(models, regions_requested, tf_manifest, search, seed, model_hparams):
        family = families.setdefault((item["model"], item["config_id"]), {
            "model": item["model"], "config_id": item["config_id"],
            "hparams": item["hparams"], "regions": []})
        family["regions"].append(item["region"])
    for family in families.values():
        # the regions start from the global model, so it is fitted first (a stable sort)
        family["regions"].sort(key=lambda region: region != GLOBAL_REGION)
    return sorted(families.values(),
                  key=lambda family: -TYPICAL_TASK_SECONDS.get(family["model"], 0.0))


def starts_from_global(model_class: type, regions: Sequence[str], train_cfg: TrainConfig
                       ) -> bool:
    """Whether the family's regional candidates start from its global one: the config asks for
    it, the model can (``warm_starts``) and the family has a global candidate."""
    return (train_cfg.regional_start == "global" and bool(model_class.warm_starts)
            and GLOBAL_REGION in regions)


def train_family(family: Mapping[str, Any], tf_manifest: Mapping, split_manifest: Mapping,
                 train_cfg: TrainConfig, age_edges: Sequence[int], paths: CandidatePaths,
                 fold_regions: Sequence[str] | None = None) -> list[dict]:
    """The ``train`` step: fit a family's candidates in order, global first, each into the run's
    paths, with the run's class priors; print one line per candidate.

    Args:
        family: one ``train_families`` entry (model, config_id, hparams, regions).
        tf_manifest: the TFRecord manifest (``pythia.tfrecords``).
        split_manifest: the ETL's split manifest (natural priors, resampling rates / counts).
        train_cfg: epochs, batch size, patience, seed, age head, prior correction,
            regional_start.
        age_edges: the run's age bucket edges.
        paths: gives the model folder and predictions file of each candidate (``RunPaths``).
        fold_regions: the run's regions whose validation rows every candidate scores out of
            fold, decided once for the run (the flow's ``to_tfrecords`` step); None: read
            from ``tf_manifest`` here (``crossfit.fold_regions``).

    Returns:
        The candidates' ``fit_candidate`` summaries in ``family['regions']`` order, each with
        ``start_from`` (the global candidate's id, or None).
    """
    from pythia.models import get_model
    from pythia.models.priors import priors_from_split_manifest

    name, config_id, regions = family["model"], family["config_id"], list(family["regions"])
    # Resampling keeps class c at a global rate r_c, so pi_natural/pi_train is proportional to
    # 1/r_c in every region: the global priors give each regional model the exact correction.
    priors = priors_from_split_manifest(split_manifest, age_edges)
    weights = validation_class_weights(split_manifest, len(age_edges))
    warm = starts_from_global(get_model(name), regions, train_cfg)
    # one rule for every candidate of the run: a region is scored out of fold or in-sample
    folds = crossfit.fold_regions(tf_manifest) if fold_regions is None else tuple(fold_regions)
    start: FittedCandidate | None = None
    summaries = []
    for region in regions:
        fitted = fit_candidate_model(name, region, config_id, family["hparams"], tf_manifest,
                                     priors, paths.model(name, region, config_id),
                                     paths.predictions(name, region, config_id), train_cfg,
                                     weights, start if region != GLOBAL_REGION else None,
                                     serves_as_start=warm and region == GLOBAL_REGION,
                                     fold_regions=folds)
        if warm and region == GLOBAL_REGION:
            start = fitted  # kept for the regions; the other fitted models are dropped at once
        print_candidate(fitted.summary)
        summaries.append(fitted.summary)
    return summaries


def train_candidate(item: Mapping[str, Any], tf_manifest: Mapping, split_manifest: Mapping,
                    train_cfg: TrainConfig, age_edges: Sequence[int], paths: CandidatePaths
                    ) -> dict:
    """Fit one ``train_grid`` item (model, region, config_id, hparams) alone, from scratch, as
    ``train_family`` fits a family of that one region: the same priors, paths and line."""
    family = {"model": item["model"], "config_id": item["config_id"],
              "hparams": item["hparams"], "regions": [item["region"]]}
    return train_family(family, tf_manifest, split_manifest, train_cfg, age_edges, paths)[0]
