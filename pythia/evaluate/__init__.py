"""Evaluation: every candidate scored on every slice, the Bayes gauge, the champions, the
report figures, tables and card, and the `pythia report` / `pythia runs` terminal views.

The flow's evaluate step calls :func:`run` then :func:`render_card`; its end step calls
:func:`choose_bundle_models`. Modules: ``io`` (inputs and report files), ``stream`` (the
metrics in bounded memory: ``buckets`` on scratch disk, ``stats`` and ``sums`` per slice;
``previous``: the champions against the previous run's bundle, streamed the same way),
``frames`` and ``slices`` (the in-memory reference), ``gauge``, ``champions``, ``tables``,
``figures``, ``card``; ``pipeline`` holds :func:`run`.

The package imports its modules on first use (PEP 562): a task that only names
``pythia.evaluate`` (every step of the flow imports it) does not pay for scikit-learn, SciPy and
matplotlib (about 2 s a task); the evaluate and end steps import what they use.
"""
from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    "run": "pipeline",
    "render_card": "card",
    "DEFAULT_TOLERANCE": "champions", "PreviousScorer": "champions",
    "baseline_models_of": "champions", "candidate_label": "champions",
    "choose_bundle_models": "champions", "choose_champions": "champions",
    "select_champions": "champions",
    "draw_figures": "figures",
    "build_gauge": "gauge",
    "bundle_scorer": "io", "read_world": "io", "rows_to_requests": "io", "write_reports": "io",
    "bucket_mae": "metrics", "class_distribution": "metrics", "classwise_ece": "metrics",
    "expected_bucket_mae": "metrics", "multiclass_brier": "metrics",
    "reliability_bins": "metrics", "score_predictions": "metrics", "top_label_ece": "metrics",
    "total_variation_distance": "metrics",
    "PreviousComparison": "previous",
    "score_streaming": "stream",
    "build_headline": "tables",
}

__all__ = [
    "run", "render_card", "choose_bundle_models", "baseline_models_of", "bundle_scorer",
    "rows_to_requests", "select_champions", "candidate_label",
    "score_predictions", "multiclass_brier", "top_label_ece", "classwise_ece",
    "reliability_bins", "bucket_mae", "expected_bucket_mae", "total_variation_distance",
    "class_distribution", "build_gauge", "build_headline", "write_reports",
]


def __getattr__(name: str) -> Any:
    """Import the module defining ``name`` on first use (then cache the name here)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
