"""The evaluate step as one call: :func:`run` scores, gauges, chooses, draws and writes."""
from __future__ import annotations

import contextlib
from typing import Any, Mapping, Sequence

from pythia.evaluate.champions import (DEFAULT_TOLERANCE, PreviousScorer, choose_champions)
from pythia.evaluate.figures import draw_figures
from pythia.evaluate.gauge import build_gauge, gauge_by_slice
from pythia.evaluate.guard import slice_margin_columns
from pythia.evaluate.io import read_world, write_reports
from pythia.evaluate.margins import (DEFAULT_Z_MIN, margin_lookup, regional_margins,
                                     slice_margin_lookup)
from pythia.evaluate.previous import PreviousComparison
from pythia.evaluate.stream import score_streaming
from pythia.evaluate.tables import (build_headline, build_regional_structure,
                                    build_regional_vs_global)
from pythia.evaluate.twins import build_blind_twins
from pythia.evaluate.verdicts import build_model_verdicts


def run(candidates: Sequence[Mapping[str, Any]], split_manifest: Mapping[str, Any],
        source_path: str | None, age_edges: Sequence[int], reports_uri: str,
        previous: PreviousScorer | None = None, previous_id: str | None = None, *,
        baseline_models: Sequence[str], tolerance: float = DEFAULT_TOLERANCE,
        make_figures: bool = True, world: Any = None, z_min: float = DEFAULT_Z_MIN,
        in_between_gauge: bool = False, world_fingerprint: str | None = None) -> dict[str, Any]:
    """Evaluate every candidate, pick champions, draw figures and write the report files.

    Args:
        candidates: train-step records {model, region, config_id, predictions_uri, model_dir,
            val_logloss: {target: float}, …}.
        split_manifest: the ETL's manifest: ``paths`` of the split Parquet folders, and the
            resampling ``rates`` that weight the validation day back to natural priors.
        source_path: the data source; a synthetic world there adds the truth and the gauge.
        age_edges: the run's age bucket edges.
        reports_uri: folder (local or s3://) for the report tables and ``figures/*.png``.
        previous: ``previous(region, rows) -> {target: (n, K) probabilities}`` (None when
            that run has no champion there) scoring rows with the previous run's champions,
            e.g. ``bundle_scorer(bundle)``; None when there is no previous run.
        previous_id: names the previous run in the champion reasons.
        baseline_models: model names every champion must beat (the model registry's).
        tolerance: relative test log-loss regression against the previous champion allowed.
        make_figures: draw figures (the tables are the same either way).
        world: the synthetic world, instead of the one at ``source_path`` (tests).
        z_min: a region's best model must beat each baseline by more than this many
            user-clustered SEs of the paired validation log-loss difference (0: any margin);
            and a regional candidate may not lose to its global one on the validation day's
            power users or other users by more than that many (``guard``).
        in_between_gauge: on a synthetic world, also the in-between gauge (``ratio_in_between``;
            docs/in-between-gauge.md); off by default: it about doubles the scoring time and
            sits within 0.003 nats of the realised one on the default world.
        world_fingerprint: the start step's ``synth.world_fingerprint`` of ``source_path``:
            the world read here must be that one (a ``resume`` after the cached world was
            regenerated would gauge the run against another world).

    Returns:
        {'metrics', 'distributions', 'gauge' (None without a world), 'gauge_slices'
        (``gauge.gauge_by_slice``; None without a world), 'gauge_note',
        'champions', 'headline', 'regional_vs_global' (each regional candidate against its
        family's global one on the region's rows), 'regional_structure'
        (``tables.build_regional_structure``: empty without a region-blind gauge),
        'model_verdicts' (``verdicts.build_model_verdicts``), 'blind_twins'
        (``twins.build_blind_twins``: empty without a blind twin),
        'figures' ({name: png}), 'report_files', 'previous_run', 'baseline_models'}.
    """
    if not candidates:
        raise ValueError("no candidates to evaluate: did every train task fail?")
    # score: every candidate and the exact posterior on every slice, streamed bucket by bucket
    # into per-slice sums (memory bounded by a bucket, not by the splits)
    world = world if world is not None else read_world(source_path, world_fingerprint)
    scored = score_streaming(candidates, split_manifest, age_edges, world,
                             in_between=in_between_gauge)
    metrics, distributions = scored.metrics, scored.distributions
    gauge = build_gauge(metrics, scored.sums.groups)
    # choose: one champion per region; the comparison with a previous run's champion streams
    # the natural test day and the winner's predictions through scratch buckets
    previous_run = previous_id or getattr(previous, "pathspec", None)
    champions = _choose_champions(metrics, candidates, split_manifest, age_edges, scored.present,
                                  previous, previous_run or "previous run", baseline_models,
                                  tolerance, margin_lookup(scored.sums.groups), z_min,
                                  slice_margin_lookup(scored.sums.groups))
    headline = build_headline(metrics, champions, gauge)
    regional_vs_global = slice_margin_columns(scored.sums.groups, regional_margins(
        scored.sums.groups, build_regional_vs_global(headline, candidates)))
    # draw: from the sums (confusion counts, reliability bins), never from rows
    figures = draw_figures(champions, metrics, distributions, scored.sums) if make_figures else {}
    # write
    # each region's chosen candidate against the posteriors on the natural slices
    gauge_slices = None if gauge is None else gauge_by_slice(gauge, champions)
    results = {"metrics": metrics, "distributions": distributions, "gauge": gauge,
               "gauge_slices": gauge_slices, "gauge_note": scored.gauge_note,
               "champions": champions, "headline": headline,
               "regional_vs_global": regional_vs_global, "figures": figures,
               # what the world's regional effects are worth per region, and who learnt them
               "regional_structure": build_regional_structure(gauge, champions),
               # each non-baseline model against the best baseline, region by region
               # (the champion rule's noise test on each gap: its paired sums and z_min)
               "model_verdicts": build_model_verdicts(metrics, candidates, baseline_models,
                                                      margin_lookup(scored.sums.groups), z_min),
               # each blind twin against its sighted model on the same rows (evaluate.twins)
               "blind_twins": build_blind_twins(
                   candidates, list(dict.fromkeys(headline["eval_region"])) if len(headline)
                   else [], scored.sums.groups),
               "previous_run": previous_run,
               "baseline_models": tuple(baseline_models)}
    results["report_files"] = write_reports(results, reports_uri)
    print(f"evaluate: {len(candidates)} candidate(s); champions: " + ", ".join(
        f"{r['region']}={r['model'] if r.get('blessed') else 'none blessed'}"
        for r in champions.to_dict("records")) + f" (rule: beats every baseline by more than "
        f"z_min {z_min:g} user-clustered SEs on validation); reports in {reports_uri}")
    return results


def _choose_champions(metrics: Any, candidates: Sequence[Mapping[str, Any]],
                      split_manifest: Mapping[str, Any], age_edges: Sequence[int],
                      present: Sequence[str], previous: PreviousScorer | None,
                      previous_name: str, baseline_models: Sequence[str], tolerance: float,
                      margins: Any, z_min: float, slice_margins: Any = None) -> Any:
    """``champions.choose_champions`` with the previous-run check streamed
    (``previous.PreviousComparison``) instead of reading the natural test day whole."""
    with contextlib.ExitStack() as stack:
        check = None if previous is None else stack.enter_context(
            PreviousComparison(candidates, split_manifest, age_edges, previous, previous_name))
        return choose_champions(metrics, candidates, present, check, baseline_models,
                                tolerance, margins=margins, z_min=z_min,
                                slice_margins=slice_margins)
