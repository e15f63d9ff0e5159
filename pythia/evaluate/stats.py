"""Sufficient statistics of the evaluation metrics: per slice, sums and counts that batches of
(labels, probabilities) add to, from which every metric of ``metrics.score_predictions`` — and
the natural-weighted log-loss, the exact posterior's scores on the same rows, class shares and
reliability bins — follows exactly. Memory is O(classes^2 + classes x bins) per slice, whatever
the number of rows; ``add`` applies the same row transformations as the in-memory metrics.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from pythia.evaluate.metrics import (N_BINS, bin_index, check_labels, check_probabilities,
                                     clip_probabilities, reliability_table)


def row_log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-row ``-log p_y`` as scikit-learn's ``log_loss(y, clip_probabilities(p))`` averages
    them: probabilities clipped into [eps, 1 - eps] first."""
    picked = clip_probabilities(p[np.arange(len(y)), y])  # the same values: clip is per entry
    eps = np.finfo(picked.dtype).eps
    return -np.log(np.clip(picked, eps, 1 - eps))


class TopLabelBins:
    """Per confidence bin: rows, summed top-label confidence and rows whose top label was right
    (the top-label ECE and the reliability diagram)."""

    def __init__(self, n_bins: int = N_BINS) -> None:
        self.count = np.zeros(n_bins, dtype=np.int64)
        self.conf_sum = np.zeros(n_bins)
        self.correct_sum = np.zeros(n_bins)

    def add(self, y: np.ndarray, p: np.ndarray, pred: np.ndarray | None = None) -> None:
        """Add rows: labels, probabilities and (when already known) their argmax."""
        n_bins = len(self.count)
        pred = p.argmax(axis=1) if pred is None else pred
        conf = p[np.arange(len(p)), pred]  # the row maximum
        correct = (pred == y).astype(np.float64)
        b = bin_index(conf, n_bins)
        self.count += np.bincount(b, minlength=n_bins)
        self.conf_sum += np.bincount(b, weights=conf, minlength=n_bins)
        self.correct_sum += np.bincount(b, weights=correct, minlength=n_bins)

    def merge(self, other: "TopLabelBins") -> None:
        """Add another's bins (other rows)."""
        self.count += other.count
        self.conf_sum += other.conf_sum
        self.correct_sum += other.correct_sum

    def table(self) -> pd.DataFrame:
        """``metrics.reliability_bins``' table."""
        return reliability_table(self.count, self.conf_sum, self.correct_sum)


def _confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def _prf(confusion: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-class precision, recall, F1 (0 where undefined, scikit-learn's zero_division=0)
    and support, from a (true, predicted) confusion matrix."""
    tp = np.diag(confusion).astype(np.float64)
    pred = confusion.sum(axis=0).astype(np.float64)
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(pred > 0, tp / pred, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        denom = support + pred
        f1 = np.where(denom > 0, 2 * tp / denom, 0.0)
    return precision, recall, f1, support


class ReferenceStats:
    """The exact posterior scored on the same labelled rows as a model (the gauge's figures)."""

    def __init__(self, k: int, n_bins: int = N_BINS) -> None:
        self.k = k
        self.log_loss_sum = 0.0
        self.confusion = np.zeros((k, k), dtype=np.int64)
        self.top = TopLabelBins(n_bins)

    def add(self, y: np.ndarray, p: np.ndarray) -> None:
        p = np.asarray(p, dtype=np.float64)
        pred = p.argmax(axis=1)
        self.log_loss_sum += float(row_log_loss(y, p).sum())
        self.confusion += _confusion(y, pred, self.k)
        self.top.add(y, p, pred)

    def merge(self, other: "ReferenceStats") -> None:
        """Add another's sums: the same as adding its rows here, bit for bit (each field is a
        sum of per-batch terms, and ``other`` holds exactly those terms)."""
        self.log_loss_sum += other.log_loss_sum
        self.confusion += other.confusion
        self.top.merge(other.top)

    def scores(self, n: int) -> tuple[float, float]:
        """(log-loss, macro F1 over the classes present in y), as ``metrics.gauge_scores``."""
        _, _, f1, support = _prf(self.confusion)
        return self.log_loss_sum / n, float(f1[support > 0].mean())


# a synthetic world's posteriors besides the realised one (``gauge``): a LabelStats attribute
# and a SliceSums ``<form>_note`` each, and ``<form>_log_loss`` / ``<form>_macro_f1`` metrics
OTHER_FORMS = ("population", "in_between", "region_blind")


class LabelStats:
    """One scorer's probabilities against one label source, on one slice and target."""

    def __init__(self, k: int, ordinal: bool, n_bins: int = N_BINS) -> None:
        self.k, self.ordinal, self.n_bins = k, ordinal, n_bins
        self.n_unlabelled = 0
        self.confusion = np.zeros((k, k), dtype=np.int64)  # (true, argmax) counts
        self.log_loss_sum = 0.0
        self.brier_sum = 0.0
        self.top = TopLabelBins(n_bins)
        self.class_label_sum = np.zeros(k * n_bins)  # classwise ECE: 1[y == k] per (k, bin)
        self.class_prob_sum = np.zeros(k * n_bins)  # and p_k per (k, bin)
        self.mae_sum = 0.0
        self.expected_mae_sum = 0.0
        self.weighted_loss_sum = 0.0  # natural-weighted log-loss, when rows carry weights
        self.weight_sum = 0.0
        self.weighted = False
        self.reference: ReferenceStats | None = None  # the realised posterior on these rows
        self.population: ReferenceStats | None = None  # the population posterior on them
        self.in_between: ReferenceStats | None = None  # the in-between posterior on them
        self.region_blind: ReferenceStats | None = None  # the region-blind population one

    @property
    def n(self) -> int:
        """Labelled rows added."""
        return int(self.confusion.sum())

    def add(self, y_all: np.ndarray, p_raw: np.ndarray, weights: np.ndarray | None = None,
            reference: np.ndarray | ReferenceStats | None = None,
            population: np.ndarray | ReferenceStats | None = None,
            in_between: np.ndarray | ReferenceStats | None = None,
            region_blind: np.ndarray | ReferenceStats | None = None) -> None:
        """Add rows: labels (-1 = unlabelled), the scorer's probabilities as stored, the rows'
        importance weights, the exact (realised), population, in-between and region-blind
        posteriors on the same rows (each optional); a posterior may come already summed
        (``reference_batch``) when several scorers share the rows."""
        valid = y_all >= 0
        self.n_unlabelled += int((~valid).sum())
        if not valid.any():
            return
        k = self.k
        p = check_probabilities(p_raw[valid], k)
        y = check_labels(y_all[valid], k)
        pred = p.argmax(axis=1)
        self.confusion += _confusion(y, pred, k)
        self.log_loss_sum += float(row_log_loss(y, p).sum())
        self.brier_sum += float(((p - np.eye(k)[y]) ** 2).sum())
        self.top.add(y, p, pred)
        b = bin_index(p, self.n_bins) + np.arange(k)[None, :] * self.n_bins
        # 1[y == k] is one in the label's column only: count that column's (class, bin)
        self.class_label_sum += np.bincount(b[np.arange(len(y)), y], minlength=k * self.n_bins)
        self.class_prob_sum += np.bincount(b.ravel(), weights=p.ravel(),
                                           minlength=k * self.n_bins)
        if self.ordinal:
            self.mae_sum += float(np.abs(pred - y).sum())
            dist = np.abs(np.arange(k)[None, :] - y[:, None])
            self.expected_mae_sum += float((p * dist).sum())
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)[valid]
            # as log_loss(..., sample_weight=w) on the stored (not renormalised) probabilities
            self.weighted_loss_sum += float((w * row_log_loss(y, p_raw[valid])).sum())
            self.weight_sum += float(w.sum())
            self.weighted = True
        self.reference = self._add_reference(self.reference, y, valid, reference)
        self.population = self._add_reference(self.population, y, valid, population)
        self.in_between = self._add_reference(self.in_between, y, valid, in_between)
        self.region_blind = self._add_reference(self.region_blind, y, valid, region_blind)

    def merge(self, other: "LabelStats") -> None:
        """Add another's sums (the same scorer, slice, target and source; other rows), as
        adding its rows here would, up to the order of the float additions."""
        self.n_unlabelled += other.n_unlabelled
        self.confusion += other.confusion
        for name in ("log_loss_sum", "brier_sum", "mae_sum", "expected_mae_sum",
                     "weighted_loss_sum", "weight_sum"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.top.merge(other.top)
        self.class_label_sum += other.class_label_sum
        self.class_prob_sum += other.class_prob_sum
        self.weighted = self.weighted or other.weighted
        for name in ("reference",) + OTHER_FORMS:
            mine, theirs = getattr(self, name), getattr(other, name)
            if theirs is not None and mine is None:
                setattr(self, name, theirs)
            elif theirs is not None:
                mine.merge(theirs)

    def _add_reference(self, stats: ReferenceStats | None, y: np.ndarray, valid: np.ndarray,
                       probs: np.ndarray | ReferenceStats | None) -> ReferenceStats | None:
        """``stats`` (created when first needed) with one posterior's rows added."""
        if probs is None:
            return stats
        stats = stats if stats is not None else ReferenceStats(self.k, self.n_bins)
        if isinstance(probs, ReferenceStats):
            stats.merge(probs)
        else:
            stats.add(y, probs[valid])
        return stats

    def reference_batch(self, y_all: np.ndarray, reference: np.ndarray) -> ReferenceStats:
        """The posterior's sums over the labelled rows of one batch, for ``add``."""
        valid = y_all >= 0
        batch = ReferenceStats(self.k, self.n_bins)
        if valid.any():
            batch.add(check_labels(y_all[valid], self.k), reference[valid])
        return batch

    def metric_rows(self, class_names: Sequence[str]) -> pd.DataFrame:
        """The rows of ``metrics.score_predictions`` (metric, class, value), same order; none
        when no labelled row was added."""
        n = self.n
        if n == 0:
            return pd.DataFrame(columns=["metric", "class", "value"])
        precision, recall, f1, support = _prf(self.confusion)
        present = support > 0
        per_class_ece = (np.abs(self.class_label_sum - self.class_prob_sum)
                         .reshape(self.k, self.n_bins).sum(axis=1) / n)
        rows: list[tuple[str, str | None, float]] = [
            ("accuracy", None, float(np.trace(self.confusion)) / n),
            ("log_loss", None, self.log_loss_sum / n),
            ("brier", None, self.brier_sum / n),
            ("ece", None, float(np.abs(self.top.correct_sum - self.top.conf_sum).sum() / n)),
            ("macro_f1", None, float(f1[present].mean())),
            ("weighted_f1", None, float(np.average(f1[present], weights=support[present]))),
            ("classwise_ece", None, float(per_class_ece.mean())),
        ]
        if self.ordinal:
            rows += [("mae_buckets", None, self.mae_sum / n),
                     ("expected_mae_buckets", None, self.expected_mae_sum / n)]
        for name, values in (("precision", precision), ("recall", recall), ("f1", f1),
                             ("support", support), ("classwise_ece", per_class_ece)):
            rows += [(name, class_names[i], float(values[i])) for i in range(self.k)]
        return pd.DataFrame(rows, columns=["metric", "class", "value"]).astype({"value": float})

    def natural_log_loss(self) -> float | None:
        """The importance-weighted log-loss (None when no weighted rows were added)."""
        return self.weighted_loss_sum / self.weight_sum if self.weighted else None


class ShareStats:
    """Predicted class shares of one scorer on one slice and target: summed probabilities and
    argmax counts over every scored row, labelled or not (``metrics.class_distribution``)."""

    def __init__(self, k: int) -> None:
        self.n = 0
        self.prob_sum = np.zeros(k)
        self.argmax_count = np.zeros(k, dtype=np.int64)

    def add(self, p_raw: np.ndarray) -> None:
        p = np.asarray(p_raw, dtype=np.float64)
        self.n += len(p)
        self.prob_sum += p.sum(axis=0)
        self.argmax_count += np.bincount(p.argmax(axis=1), minlength=len(self.prob_sum))

    def merge(self, other: "ShareStats") -> None:
        """Add another's sums (other rows)."""
        self.n += other.n
        self.prob_sum += other.prob_sum
        self.argmax_count += other.argmax_count

    def shares(self) -> dict[str, np.ndarray]:
        return {"mean_probability": self.prob_sum / self.n, "argmax": self.argmax_count / self.n}
