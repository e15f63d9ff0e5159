"""evaluate_run: the evaluate step's entry point until the flow calls ``evaluate.run``; it
wires the modules of this package (slices, gauge, champions, tables, figures, io) together.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from pythia.evaluate import figures as figs
from pythia.evaluate import gauge as gauges
from pythia.evaluate.champions import DEFAULT_TOLERANCE, choose_champions
from pythia.evaluate.gauge import build_gauge
from pythia.evaluate.io import AlignedPredictions, read_predictions, write_reports
from pythia.evaluate.slices import (check_candidates, distributions_table, metrics_table,
                                    prepare_data, score_candidate)
from pythia.evaluate.tables import build_headline
from pythia.features import TEST_NATURAL

# transitional: the flow's current caller passes no baseline; evaluate.run takes it explicitly
_TRANSITION_BASELINE = ("gbdt",)

__all__ = ["build_gauge", "build_headline", "evaluate_run", "read_predictions", "write_reports"]


def evaluate_run(candidates: Sequence[Mapping[str, Any]],
                 test_frames: Mapping[str, pd.DataFrame], world: Any,
                 previous: Callable[[str, pd.DataFrame], Mapping[str, np.ndarray] | None] | None,
                 age_edges: Sequence[int], reports_uri: str, *,
                 previous_id: str | None = None, tolerance: float = DEFAULT_TOLERANCE,
                 make_figures: bool = True) -> dict[str, Any]:
    """Evaluate every candidate, pick champions, draw figures and write the report files."""
    if not candidates:
        raise ValueError("no candidates to evaluate: did every train task fail?")
    data = prepare_data(test_frames, age_edges, world.truth() if world is not None else None)
    idents = check_candidates(candidates)
    bayes, gauge_note = gauges.posterior_probs_by_split(world, data)
    metric_parts, dist_parts = [], [data.actual_table]
    for ident, cand in zip(idents, candidates):
        m, d = score_candidate(ident, read_predictions(cand["predictions_uri"]), data, bayes,
                               (cand.get("val_logloss") or {}).get("age_gender"))
        metric_parts += m
        dist_parts += d
    metric_parts += gauges.score_posterior(data, bayes)
    metrics = metrics_table(metric_parts)
    distributions = distributions_table(dist_parts, metrics)
    gauge = build_gauge(metrics)
    aligned = AlignedPredictions(candidates, data)
    prev_name = previous_id or getattr(previous, "pathspec", None) or "previous run"
    champions = choose_champions(metrics, candidates, data, aligned, previous, prev_name,
                                 _TRANSITION_BASELINE, tolerance)
    headline = build_headline(metrics, champions, gauge)
    figures = (figs.draw_figures(champions, metrics, distributions, data, aligned,
                                 bayes.get(TEST_NATURAL)) if make_figures else {})
    results = {"metrics": metrics, "distributions": distributions, "gauge": gauge,
               "champions": champions, "headline": headline, "figures": figures,
               "gauge_note": gauge_note}
    results["report_files"] = write_reports(results, reports_uri)
    return results
