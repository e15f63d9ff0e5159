"""Evaluation: metrics, calibration, distributions, the Bayes gauge, champions, the report
card and the `pythia report` / `pythia runs` terminal views.

The flow calls :func:`evaluate_run` then :func:`render_card`; the CLI calls
:func:`print_report` and :func:`print_runs`.
"""
from pythia.evaluate.card import render_card
from pythia.evaluate.champions import candidate_label, choose_bundle_models, select_champions
from pythia.evaluate.gauge import build_gauge
from pythia.evaluate.io import write_reports
from pythia.evaluate.metrics import (bucket_mae, class_distribution, classwise_ece,
                                     expected_bucket_mae, multiclass_brier, reliability_bins,
                                     score_predictions, top_label_ece,
                                     total_variation_distance)
from pythia.evaluate.report import print_report, print_runs, print_timings
from pythia.evaluate.run import evaluate_run
from pythia.evaluate.tables import build_headline

__all__ = [
    "evaluate_run", "render_card", "print_report", "print_runs", "print_timings", "select_champions",
    "choose_bundle_models", "candidate_label", "score_predictions", "multiclass_brier",
    "top_label_ece", "classwise_ece", "reliability_bins", "bucket_mae", "expected_bucket_mae",
    "total_variation_distance", "class_distribution", "build_gauge", "build_headline",
    "write_reports",
]
