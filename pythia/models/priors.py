"""Class-prior bookkeeping, temperature calibration and prior-shift correction (pure NumPy).

Models are trained on class-resampled days, so their raw posteriors carry the *training*
priors. Before anything leaves a model they are (1) temperature-scaled (fitted on validation,
which is resampled like training) and (2) moved to the *natural* priors, either with the fixed
Bayes ratio ``pi_natural / pi_train`` or, on request, with the EM re-estimation of Saerens,
Latinne & Decaestecker (2002) on the very rows being scored.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy.optimize import minimize_scalar

from pythia.models.links import link_probabilities

PRIOR_KINDS = ("train", "natural")
CORRECTIONS = ("bayes", "em", "none")
# Floors keep logs and ratios finite: a class never seen in training gets a tiny prior, not 0.
PRIOR_FLOOR = 1e-6
PROB_FLOOR = 1e-12
# EM needs enough unlabelled rows for the re-estimated priors to be better than the fixed ratio.
EM_MIN_ROWS = 200


def check_priors(priors: Mapping, n_classes: Mapping[str, int]) -> dict[str, dict[str, list[float]]]:
    """Validate ``{'train': {target: [...]}, 'natural': {target: [...]}}`` and renormalise.

    Args:
        priors: class frequencies of the (resampled) training data and of the natural days.
        n_classes: expected number of classes per target.

    Returns:
        The same structure with float lists summing to 1, for exactly the targets given.

    Raises:
        ValueError: naming the missing kind/target, a wrong length or a negative/zero-sum entry.
    """
    if not isinstance(priors, Mapping):
        raise ValueError(f"priors must be a dict {{'train': ..., 'natural': ...}}, got {type(priors)}")
    out: dict[str, dict[str, list[float]]] = {}
    for kind in PRIOR_KINDS:
        if kind not in priors:
            raise ValueError(f"priors has no {kind!r} entry (keys: {sorted(priors)})")
        out[kind] = {}
        for target, k in n_classes.items():
            if target not in priors[kind]:
                raise ValueError(f"priors[{kind!r}] has no target {target!r}")
            p = np.asarray(priors[kind][target], dtype=np.float64)
            if p.shape != (k,):
                raise ValueError(
                    f"priors[{kind!r}][{target!r}] has {p.size} classes, expected {k}")
            if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
                raise ValueError(f"priors[{kind!r}][{target!r}] must be >= 0 with a positive sum,"
                                 f" got {p.tolist()}")
            out[kind][target] = (p / p.sum()).tolist()
    return out


def priors_from_labels(labels: Mapping[str, np.ndarray], n_classes: Mapping[str, int]
                       ) -> dict[str, list[float]]:
    """Empirical class frequencies per target (``np.bincount``), e.g. of a training split."""
    out = {}
    for target, k in n_classes.items():
        y = np.asarray(labels[target], dtype=np.int64)
        if y.size == 0:
            raise ValueError(f"no labels for target {target!r}: cannot estimate its prior")
        if y.min() < 0 or y.max() >= k:
            raise ValueError(f"labels of {target!r} must lie in [0, {k}), got "
                             f"[{y.min()}, {y.max()}]")
        out[target] = (np.bincount(y, minlength=k) / y.size).tolist()
    return out


def priors_from_split_manifest(split_manifest: Mapping, age_edges: Sequence[int]
                               ) -> dict[str, dict[str, list[float]]]:
    """``{'train', 'natural'}`` priors from the ETL's split manifest (``etl.splits``).

    Natural priors are its ``natural_priors``. Training priors: when the resampling target is
    AgeGender, the realised class counts of the written train split (gender and age are their
    marginals); otherwise the natural joint reweighted by the train keep-rate of each row's
    resampling class (exact in expectation), then marginalised.
    """
    from pythia import features

    try:
        natural = {t: list(map(float, split_manifest["natural_priors"][t]))
                   for t in features.TARGETS}
        target = split_manifest.get("resample_target", "age_gender")
    except KeyError as exc:
        raise ValueError(f"split manifest lacks {exc}: cannot derive class priors") from None
    n_age = len(age_edges)
    k = 2 * n_age
    train_counts = split_manifest.get("class_counts_after", {}).get(features.TRAIN)
    if target == "age_gender" and train_counts:
        joint = np.array([float(train_counts.get(str(c), 0)) for c in range(k)])
    else:
        rates = split_manifest.get("rates", {}).get(features.TRAIN, {})
        cls = {"age_gender": np.arange(k), "gender": np.arange(k) // n_age,
               "age": np.arange(k) % n_age}[target]
        joint = np.asarray(natural["age_gender"]) * np.array(
            [float(rates.get(str(c), 1.0)) for c in cls])
    if joint.sum() <= 0:
        raise ValueError("split manifest has no training rows: cannot derive training priors")
    joint = joint / joint.sum()
    marg = features.marginals_from_joint(joint[None, :], n_age)
    train = {t: marg[t][0].tolist() for t in features.TARGETS}
    return {"train": train, "natural": natural}


def prior_ratio(train: Sequence[float], natural: Sequence[float]) -> np.ndarray:
    """``pi_natural / pi_train`` with the training prior floored (a class absent from training)."""
    train_p = np.maximum(np.asarray(train, dtype=np.float64), PRIOR_FLOOR)
    return np.asarray(natural, dtype=np.float64) / train_p


def normalize_rows(p: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to 1 (all-zero rows, impossible after flooring, become uniform)."""
    p = np.asarray(p, dtype=np.float64)
    s = p.sum(axis=1, keepdims=True)
    return np.where(s > 0, p / np.where(s > 0, s, 1.0), 1.0 / p.shape[1])


def apply_prior_ratio(p: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """Bayes prior correction: ``p_new ∝ p * ratio`` renormalised per row."""
    return normalize_rows(np.asarray(p, dtype=np.float64) * np.asarray(ratio)[None, :])


def apply_temperature(logits: np.ndarray, temperature: float, link: str = "softmax"
                      ) -> np.ndarray:
    """Probabilities of temperature-scaled logits: ``link(logits / T)``.

    For a model that only yields probabilities, pass ``log p`` as the logits (softmax link):
    ``softmax(log p / T)``.
    """
    return link_probabilities(np.asarray(logits, dtype=np.float64) / float(temperature), link)


def log_probabilities(p: np.ndarray) -> np.ndarray:
    """``log p`` floored, to use probabilities as softmax logits."""
    return np.log(np.maximum(np.asarray(p, dtype=np.float64), PROB_FLOOR))


def temperature_row_losses(logits: np.ndarray, y: np.ndarray, temperature: float,
                           link: str = "softmax") -> np.ndarray:
    """Per row, the log-loss of integer label ``y`` under ``apply_temperature(logits, T)``
    (the paired noise tests' differences: ``activity_temp``, ``start_temp``)."""
    y = np.asarray(y, dtype=np.int64)
    p = apply_temperature(logits, temperature, link)[np.arange(len(y)), y]
    return -np.log(np.maximum(p, PROB_FLOOR))


def mean_log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of integer labels ``y`` under row probabilities ``p``."""
    y = np.asarray(y, dtype=np.int64)
    picked = np.asarray(p, dtype=np.float64)[np.arange(len(y)), y]
    return float(-np.mean(np.log(np.maximum(picked, PROB_FLOOR))))


def fit_temperature(logits: np.ndarray, y: np.ndarray, link: str = "softmax",
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The scalar T minimising validation log-loss of ``apply_temperature(logits, T, link)``.

    Searched on log T (bounded, ``scipy.optimize.minimize_scalar``) because the loss is smooth
    and unimodal in log T. With no validation rows T = 1 (no calibration) is returned.
    """
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return 1.0
    if len(logits) != len(y):
        raise ValueError(f"{len(logits)} logit rows but {len(y)} labels")

    def loss(t: float) -> float:
        return mean_log_loss(apply_temperature(logits, t, link), y)

    res = minimize_scalar(lambda lt: loss(np.exp(lt)),
                          bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-4})
    t = float(np.exp(res.x))
    # Never accept a T that does worse than no calibration (flat or degenerate validation).
    return t if loss(t) <= loss(1.0) else 1.0


def em_prior_shift(p_train: np.ndarray, train_prior: Sequence[float],
                   init_prior: Sequence[float] | None = None, max_iter: int = 200,
                   tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray, int]:
    """Saerens, Latinne & Decaestecker (2002): re-estimate test priors from unlabelled rows.

    Alternates ``p_i(y) ∝ p_train_i(y) · pi(y) / pi_train(y)`` (E) and ``pi = mean_i p_i`` (M);
    each step raises the likelihood of the unlabelled rows, which is concave in ``pi``, so the
    fixed point is the maximum-likelihood test prior.

    When to use it: the class priors of the rows being scored differ from the training days'
    in an unknown way (label drift on the test day, a region absent or rare in training). It
    assumes only the priors moved (``p(x|y)`` unchanged), a *calibrated* model (temperature
    scaling first) and enough rows (hundreds at least; estimates from a few rows are noisy —
    callers fall back to the Bayes ratio below ``EM_MIN_ROWS``).

    Args:
        p_train: (n, k) posteriors under the training priors.
        train_prior: (k,) the priors those posteriors carry.
        init_prior: starting estimate (default ``train_prior``); the fixed point does not depend
            on it, a good start only saves iterations.
        max_iter: iteration cap.
        tol: stop when the prior moves less than this (max abs change).

    Returns:
        (adjusted posteriors (n, k), estimated prior (k,), iterations used).
    """
    p = np.maximum(np.asarray(p_train, dtype=np.float64), PROB_FLOOR)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"em_prior_shift needs a non-empty (n, k) array, got shape {p.shape}")
    base = np.maximum(np.asarray(train_prior, dtype=np.float64), PRIOR_FLOOR)
    if base.shape != (p.shape[1],):
        raise ValueError(f"train_prior has {base.size} classes, posteriors have {p.shape[1]}")
    prior = base.copy() if init_prior is None else np.maximum(
        np.asarray(init_prior, dtype=np.float64), PRIOR_FLOOR)
    prior = prior / prior.sum()
    adjusted = normalize_rows(p * (prior / base)[None, :])
    it = 0
    for it in range(1, max_iter + 1):
        new_prior = adjusted.mean(axis=0)
        adjusted = normalize_rows(p * (np.maximum(new_prior, PRIOR_FLOOR) / base)[None, :])
        moved = np.max(np.abs(new_prior - prior))
        prior = new_prior
        if moved < tol:
            break
    return adjusted, prior, it


def correct_priors(p: np.ndarray, method: str, train_prior: Sequence[float],
                   natural_prior: Sequence[float], groups: np.ndarray | None = None,
                   min_rows: int = EM_MIN_ROWS) -> np.ndarray:
    """Move calibrated training-prior posteriors to the scoring-time priors.

    Args:
        p: (n, k) calibrated posteriors under the training priors.
        method: 'bayes' (fixed ratio natural/train), 'em' (Saerens EM per group, starting from
            the natural prior; groups smaller than ``min_rows`` use 'bayes'), or 'none'.
        train_prior, natural_prior: (k,) priors.
        groups: optional (n,) labels (e.g. region); EM runs once per group.
        min_rows: smallest group EM is run on.
    """
    if method not in CORRECTIONS:
        raise ValueError(f"prior_correction must be one of {CORRECTIONS}, got {method!r}")
    p = np.asarray(p, dtype=np.float64)
    if method == "none" or len(p) == 0:
        return normalize_rows(p) if len(p) else p
    ratio = prior_ratio(train_prior, natural_prior)
    out = apply_prior_ratio(p, ratio)
    if method == "bayes":
        return out
    keys = np.zeros(len(p), dtype=np.int8) if groups is None else np.asarray(groups)
    if len(keys) != len(p):
        raise ValueError(f"groups has {len(keys)} entries for {len(p)} rows")
    for g in np.unique(keys):
        rows = np.flatnonzero(keys == g)
        if len(rows) >= min_rows:
            out[rows], _, _ = em_prior_shift(p[rows], train_prior, init_prior=natural_prior)
    return out
