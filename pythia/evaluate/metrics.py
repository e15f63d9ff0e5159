"""Metric functions on (labels, class probabilities): scikit-learn where it has the metric,
vectorised NumPy where it does not (multiclass Brier, ECE, bucket MAE, distribution distance).

Every function takes integer labels ``y`` (n,) in ``[0, K)`` and probabilities ``p`` (n, K).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, log_loss, precision_recall_fscore_support

N_BINS = 15  # calibration bins (equal width on [0, 1]), as in Guo et al. 2017
# Probabilities are stored as float32 lists; rows may sum to 1 +- a few ulps, or carry tiny
# negative noise from arithmetic. Anything beyond this is a bug upstream, not noise.
_PROB_TOLERANCE = 1e-3



def clip_probabilities(p: np.ndarray) -> np.ndarray:
    """Rows of ``p`` clipped into [0, 1]: float round-off (1.0000000000000002) must not make
    scikit-learn's log_loss reject an otherwise valid distribution."""
    return np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)

def check_probabilities(p: np.ndarray, n_classes: int | None = None,
                        what: str = "probabilities") -> np.ndarray:
    """Return ``p`` as float64 rows that sum to one, or raise naming what is wrong.

    Args:
        p: (n, K) class probabilities.
        n_classes: expected K, when known.
        what: name used in error messages (e.g. 'mlp/global p_age').
    """
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D (rows, classes) array, got shape {p.shape}")
    if n_classes is not None and p.shape[1] != n_classes:
        raise ValueError(f"{what}: expected {n_classes} classes, got {p.shape[1]}")
    if len(p) == 0:
        return p
    if not np.isfinite(p).all():
        raise ValueError(f"{what}: {int((~np.isfinite(p)).any(axis=1).sum())} rows hold NaN/inf")
    if (p < -_PROB_TOLERANCE).any():
        raise ValueError(f"{what}: negative probabilities (min {p.min():.4g})")
    p = np.clip(p, 0.0, None)
    sums = p.sum(axis=1, keepdims=True)
    bad = np.abs(sums[:, 0] - 1.0) > _PROB_TOLERANCE
    if bad.any():
        raise ValueError(f"{what}: {int(bad.sum())} rows do not sum to 1 "
                         f"(e.g. {float(sums[bad][0, 0]):.4g})")
    return p / sums


def check_labels(y: np.ndarray, n_classes: int, what: str = "labels") -> np.ndarray:
    """Return ``y`` as int64, raising if any label lies outside ``[0, n_classes)``."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D array, got shape {y.shape}")
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        raise ValueError(f"{what}: {int(bad.sum())} labels outside [0, {n_classes}), "
                         f"e.g. {int(y[bad][0])}")
    return y


def multiclass_brier(y: np.ndarray, p: np.ndarray) -> float:
    """Brier's original multiclass score: mean over rows of sum_k (p_k - onehot_k)^2.

    Ranges over [0, 2]; for two classes it is twice sklearn's binary ``brier_score_loss``.
    """
    onehot = np.eye(p.shape[1])[y]
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def bin_index(values: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Equal-width calibration bins on [0, 1] of ``values``; 1.0 belongs to the last bin."""
    return np.minimum((values * n_bins).astype(np.int64), n_bins - 1)


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = N_BINS) -> pd.DataFrame:
    """Top-label reliability table: per confidence bin, rows, mean confidence and accuracy.

    Returns a DataFrame with one row per bin: bin, lower, upper, count, confidence, accuracy
    (confidence/accuracy NaN for empty bins).
    """
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    b = bin_index(conf, n_bins)
    return reliability_table(np.bincount(b, minlength=n_bins),
                             np.bincount(b, weights=conf, minlength=n_bins),
                             np.bincount(b, weights=correct, minlength=n_bins))


def reliability_table(count: np.ndarray, conf_sum: np.ndarray, correct_sum: np.ndarray
                      ) -> pd.DataFrame:
    """The reliability table of ``reliability_bins`` from per-bin sums (rows, summed top-label
    confidence, rows whose top label was right), e.g. accumulated over record batches."""
    n_bins = len(count)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.asarray(conf_sum, dtype=np.float64) / count
        mean_acc = np.asarray(correct_sum, dtype=np.float64) / count
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame({"bin": np.arange(n_bins), "lower": edges[:-1], "upper": edges[1:],
                         "count": count, "confidence": mean_conf, "accuracy": mean_acc})


def top_label_ece(y: np.ndarray, p: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error of the top label: sum_b (n_b / n) |acc_b - conf_b|."""
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    b = bin_index(conf, n_bins)
    # (n_b / n) * |acc_b - conf_b| == |sum_b correct - sum_b conf| / n
    gap = np.bincount(b, weights=correct, minlength=n_bins) - np.bincount(
        b, weights=conf, minlength=n_bins)
    return float(np.abs(gap).sum() / len(y))


def classwise_ece(y: np.ndarray, p: np.ndarray, n_bins: int = N_BINS
                  ) -> tuple[float, np.ndarray]:
    """Classwise ECE (Kull et al. 2019): per class k, the ECE of p_k against 1[y == k].

    Returns (mean over classes, per-class values).
    """
    n, k = p.shape
    b = bin_index(p, n_bins) + np.arange(k)[None, :] * n_bins  # (n, K) flat bin ids
    onehot = np.eye(k)[y]
    gap = (np.bincount(b.ravel(), weights=onehot.ravel(), minlength=k * n_bins)
           - np.bincount(b.ravel(), weights=p.ravel(), minlength=k * n_bins))
    per_class = np.abs(gap).reshape(k, n_bins).sum(axis=1) / n
    return float(per_class.mean()), per_class


def bucket_mae(y: np.ndarray, p: np.ndarray) -> float:
    """Mean absolute error in ordered buckets of the argmax prediction."""
    return float(np.abs(p.argmax(axis=1) - y).mean())


def expected_bucket_mae(y: np.ndarray, p: np.ndarray) -> float:
    """Mean absolute bucket error expected under the predicted distribution."""
    dist = np.abs(np.arange(p.shape[1])[None, :] - y[:, None])
    return float((p * dist).sum(axis=1).mean())


def total_variation_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Half the L1 distance between two distributions (each normalised to sum to 1)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"distributions must be 1-D of equal length, got {a.shape} and {b.shape}")
    if a.sum() <= 0 or b.sum() <= 0 or (a < 0).any() or (b < 0).any():
        raise ValueError("distributions must be non-negative with a positive total")
    return float(0.5 * np.abs(a / a.sum() - b / b.sum()).sum())


def gauge_scores(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(log-loss, macro F1 over the classes present in y): the two figures of the Bayes gauge."""
    labels = np.arange(p.shape[1])
    _, _, f1, support = precision_recall_fscore_support(
        y, p.argmax(axis=1), labels=labels, zero_division=0)
    return (float(log_loss(y, clip_probabilities(p), labels=labels)),
            float(f1[support > 0].mean()))


def score_predictions(y: np.ndarray, p: np.ndarray, class_names: Sequence[str],
                      ordinal: bool = False, n_bins: int = N_BINS) -> pd.DataFrame:
    """Every metric of one (labels, probabilities) pair as tidy rows (metric, class, value).

    Aggregates have ``class`` None. Macro/weighted F1 average over the classes present in
    ``y`` (so every model scored on the same rows averages over the same classes); per-class
    precision/recall/F1/support cover every class. ``ordinal`` adds bucket MAE (argmax and
    expected). An empty input gives no rows.
    """
    k = len(class_names)
    p = check_probabilities(p, k)
    y = check_labels(y, k)
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels but {len(p)} prediction rows")
    if len(y) == 0:
        return pd.DataFrame(columns=["metric", "class", "value"])
    pred = p.argmax(axis=1)
    labels = np.arange(k)
    # one sklearn pass gives every per-class figure; macro/weighted F1 over the classes present
    # in y are then the plain and support-weighted means (what f1_score(average=…) computes,
    # without re-validating the arrays four times per slice)
    prec, rec, f1, support = precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=0)
    present = support > 0
    rows: list[tuple[str, str | None, float]] = [
        ("accuracy", None, accuracy_score(y, pred)),
        ("log_loss", None, log_loss(y, clip_probabilities(p), labels=labels)),
        ("brier", None, multiclass_brier(y, p)),
        ("ece", None, top_label_ece(y, p, n_bins)),
        ("macro_f1", None, float(f1[present].mean())),
        ("weighted_f1", None, float(np.average(f1[present], weights=support[present]))),
    ]
    cw_mean, cw = classwise_ece(y, p, n_bins)
    rows.append(("classwise_ece", None, cw_mean))
    if ordinal:
        rows += [("mae_buckets", None, bucket_mae(y, p)),
                 ("expected_mae_buckets", None, expected_bucket_mae(y, p))]
    for name, values in (("precision", prec), ("recall", rec), ("f1", f1),
                         ("support", support), ("classwise_ece", cw)):
        rows += [(name, class_names[i], float(values[i])) for i in range(k)]
    return pd.DataFrame(rows, columns=["metric", "class", "value"]).astype({"value": float})


def class_distribution(p: np.ndarray | None = None, y: np.ndarray | None = None,
                       n_classes: int | None = None) -> dict[str, np.ndarray]:
    """Class shares: from probabilities (mean probability and argmax share) or from labels.

    Returns {'mean_probability': …, 'argmax': …} for ``p``, {'labels': …} for ``y``.
    """
    if (p is None) == (y is None):
        raise ValueError("give exactly one of p (probabilities) or y (labels)")
    if p is not None:
        p = np.asarray(p, dtype=np.float64)
        k = p.shape[1]
        if len(p) == 0:
            return {"mean_probability": np.full(k, np.nan), "argmax": np.full(k, np.nan)}
        return {"mean_probability": p.mean(axis=0),
                "argmax": np.bincount(p.argmax(axis=1), minlength=k) / len(p)}
    if n_classes is None:
        raise ValueError("n_classes is required with labels")
    y = check_labels(y, n_classes)
    if len(y) == 0:
        return {"labels": np.full(n_classes, np.nan)}
    return {"labels": np.bincount(y, minlength=n_classes) / len(y)}
