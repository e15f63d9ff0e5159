"""Evaluation: metrics, calibration, distributions, the Bayes gauge, champions, the report
card and the `pythia report` / `pythia runs` terminal views.

The flow calls :func:`evaluate_run` then :func:`render_card`; the CLI calls
:func:`print_report` and :func:`print_runs`.
"""
from pythia.evaluate.card import render_card
from pythia.evaluate.champions import candidate_label, select_champions
from pythia.evaluate.metrics import (bucket_mae, class_distribution, classwise_ece,
                                     expected_bucket_mae, multiclass_brier, reliability_bins,
                                     score_predictions, top_label_ece,
                                     total_variation_distance)
from pythia.evaluate.run import build_gauge, build_headline, evaluate_run, write_reports

__all__ = [
    "evaluate_run", "render_card", "select_champions",
    "candidate_label", "score_predictions", "multiclass_brier", "top_label_ece",
    "classwise_ece", "reliability_bins", "bucket_mae", "expected_bucket_mae",
    "total_variation_distance", "class_distribution", "build_gauge", "build_headline",
    "write_reports",
]
