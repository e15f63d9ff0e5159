"""scikit-learn's ``HistGradientBoostingClassifier`` as the gbdt model uses it: compact
category codes (HGB allows at most 255 categories per feature), the float matrix, OpenMP
threads, walking the trees on binned rows (``raw_binned``, exactly HGB's sums) and cutting a
fit to its best iterations. The model is ``gbdt.GBDTModel``; a fit from a start is ``gbdt_warm``.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

from pythia import features, threads
from pythia.features import Encoders

MAX_CATEGORIES = 255  # HGB's limit (max_bins); ids 0 and 1 are reserved
KEPT_VALUE_IDS = MAX_CATEGORIES - features.FIRST_VALUE_ID  # 253 most frequent values
# Below this many training rows HGB's OpenMP parallel regions cost more than they save (and on
# an oversubscribed machine their spin-waiting made a 0.2 s fit take 40 s): use one thread.
SERIAL_BELOW_ROWS = 50_000
# Rows whose binned features (a byte each) the trees walk at a time: they stay in cache
PREDICT_BLOCK_ROWS = 16_384


def openmp_threads(n_threads: int, n_rows: int) -> int:
    """Threads for HGB: ``n_threads`` if > 0, else 1 on small data and every core of the task
    on large; never more than the task's thread budget (``threads.thread_budget``)."""
    wanted = int(n_threads) if n_threads > 0 else (1 if n_rows < SERIAL_BELOW_ROWS else 0)
    budget = threads.thread_budget()
    return min(wanted, budget) if wanted else budget


def fit_category_maps(train: Mapping[str, np.ndarray], encoders: Encoders
                      ) -> dict[str, np.ndarray]:
    """Per categorical feature a lookup ``id -> code`` keeping the 253 most frequent value ids.

    Ties in frequency are broken by the smaller id (the vocabulary's own frequency order).
    """
    maps = {}
    for name in features.CATEGORICAL_FEATURES:
        size = encoders.vocabularies[name].size
        counts = np.bincount(np.asarray(train[name], dtype=np.int64), minlength=size)
        counts[: features.FIRST_VALUE_ID] = 0
        order = np.argsort(-counts, kind="stable")
        kept = order[: KEPT_VALUE_IDS][counts[order[: KEPT_VALUE_IDS]] > 0]
        table = np.full(size, features.OOV_ID, dtype=np.int64)
        table[features.MISSING_ID] = features.MISSING_ID
        table[np.sort(kept)] = np.arange(features.FIRST_VALUE_ID,
                                         features.FIRST_VALUE_ID + len(kept))
        maps[name] = table
    return maps


def to_matrix(X: Mapping[str, np.ndarray], category_maps: Mapping[str, np.ndarray]
              ) -> np.ndarray:
    """(n, n_features) float matrix in ``FEATURES`` order, categoricals as compact codes."""
    cols = []
    for f in features.FEATURES:
        if f.kind == features.CATEGORICAL:
            cols.append(category_maps[f.name][np.asarray(X[f.name], dtype=np.int64)])
        else:
            cols.append(np.asarray(X[f.name], dtype=np.float64))
    return np.column_stack(cols).astype(np.float64)


def predict_binned_proba(clf: HistGradientBoostingClassifier, X: np.ndarray,
                         n_threads: int) -> np.ndarray:
    """``clf.predict_proba(X)``, exactly, with the trees walked on HGB's binned rows
    (``raw_binned``)."""
    return clf._loss.predict_proba(raw_binned(clf, X, n_threads))


def raw_binned(clf: HistGradientBoostingClassifier, X: np.ndarray, n_threads: int,
               first: int = 0, start_raw: np.ndarray | None = None) -> np.ndarray:
    """HGB's raw scores (``clf._raw_predict(X)``) of float rows ``X``, the trees walked on
    binned rows: iterations ``first`` on, added to ``start_raw`` (the raw scores of the
    iterations before ``first``, e.g. a start model's, ``gbdt_warm.StartScores``) or, with
    ``first=0``, to the baseline.

    HGB bins a value ``x`` to the first ``i`` with ``x <= threshold[i]`` and stores each
    split both as that bin and as the float threshold, unknown categories and NaN going
    the missing values' way in both; so every row reaches the same leaf, and the leaves are
    summed in the same order, the start's sum first (tests/test_model_cost.py compares the
    two on unknown categories and NaNs). Uses HGB's private predictors: the test catches a
    change.
    """
    X = clf._preprocess_X(X, reset=False)
    binned = np.ascontiguousarray(clf._bin_mapper.transform(X))  # row-major: a row per walk
    missing = clf._bin_mapper.missing_values_bin_idx_
    shape = (len(X), clf.n_trees_per_iteration_)
    if start_raw is None:
        if first:
            raise ValueError("raw_binned: iterations from first > 0 need the start's raw scores")
        raw = np.zeros(shape, dtype=clf._baseline_prediction.dtype, order="F")
        raw += clf._baseline_prediction
    else:
        if np.shape(start_raw) != shape:
            raise ValueError(f"raw_binned: start scores of shape {np.shape(start_raw)} for "
                             f"{shape} rows x trees per iteration")
        raw = np.array(start_raw, dtype=clf._baseline_prediction.dtype, order="F")
    for start in range(0, len(X), PREDICT_BLOCK_ROWS):
        block = binned[start:start + PREDICT_BLOCK_ROWS]
        for trees in clf._predictors[first:]:
            for k, tree in enumerate(trees):
                raw[start:start + len(block), k] += tree.predict_binned(block, missing,
                                                                         n_threads)
    return raw


def expand_classes(p: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over the classes a classifier saw -> all ``n_classes`` columns (0 elsewhere)."""
    out = np.zeros((len(p), n_classes))
    out[:, np.asarray(classes, dtype=np.int64)] = p
    return out


def known_class_rows(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Mask of validation rows whose class occurs in training (early stopping can score only those)."""
    return np.isin(np.asarray(y), np.asarray(classes))


def cut_to_best(clf: HistGradientBoostingClassifier) -> None:
    """Keep the trees up to the validation's best iteration (at least one), as a warm fit
    does: HGB's early stopping keeps the ``n_iter_no_change`` worse iterations it tried
    after the best, which every prediction would walk (about a tenth of the trees)."""
    best = max(int(np.argmax(clf.validation_score_)), 1)  # index 0: the baseline, no tree
    keep_iterations(clf, best, best + 1)


def keep_iterations(clf: HistGradientBoostingClassifier, iterations: int, scores: int) -> None:
    """Cut a fitted HGB to its first ``iterations`` boosting iterations and the first
    ``scores`` entries of its score histories (a warm fit's history starts at its start)."""
    clf._predictors = clf._predictors[:iterations]
    clf.validation_score_ = np.asarray(clf.validation_score_, dtype=np.float64)[:scores]
    clf.train_score_ = np.asarray(clf.train_score_)[:scores]
    clf.set_params(max_iter=iterations)
