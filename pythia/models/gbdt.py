"""Gradient boosting: one 12-class AgeGender ``HistGradientBoostingClassifier``, a contender.

Gender and age are the marginals of the AgeGender posterior, so the three targets are
consistent by construction. Categorical ids use HGB's native categorical splits; HGB allows at
most 255 categories per feature, so for this model ONLY each categorical keeps its 253 most
frequent training ids (codes 2..254) and every other id is folded into the OOV id (1); the
missing id stays 0. Early stopping uses our own validation day (``fit(..., X_val, y_val)``,
scikit-learn >= 1.7) rather than HGB's random internal split, which would leak same-day rows.
Prediction walks the trees on binned rows (``predict_binned_proba``), as HGB's own early
stopping does: the same leaves, a quarter less CPU than on float rows. A regional model may
start from the global one (``fit(..., start=)``, ``fit_gbdt_warm``): its trees, then more.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Mapping

import joblib
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from pythia import features, threads
from pythia.config import TrainConfig
from pythia.features import Encoders
from pythia.models.base import Model, labels_of, start_record
from pythia.models.priors import log_probabilities

MODEL_FILE = "hgb.joblib"
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
    """``clf.predict_proba(X)``, exactly, with the trees walked on HGB's binned rows.

    HGB bins a value ``x`` to the first ``i`` with ``x <= threshold[i]`` and stores each
    split both as that bin and as the float threshold, unknown categories and NaN going
    the missing values' way in both; so every row reaches the same leaf, and the leaves are
    summed in the same order (tests/test_model_cost.py compares the two on unknown
    categories and NaNs). Uses HGB's private predictors: the test catches a change.
    """
    X = clf._preprocess_X(X, reset=False)
    binned = np.ascontiguousarray(clf._bin_mapper.transform(X))  # row-major: a row per walk
    missing = clf._bin_mapper.missing_values_bin_idx_
    raw = np.zeros((len(X), clf.n_trees_per_iteration_), dtype=clf._baseline_prediction.dtype,
                   order="F")
    raw += clf._baseline_prediction
    for start in range(0, len(X), PREDICT_BLOCK_ROWS):
        block = binned[start:start + PREDICT_BLOCK_ROWS]
        for trees in clf._predictors:
            for k, tree in enumerate(trees):
                raw[start:start + len(block), k] += tree.predict_binned(block, missing,
                                                                         n_threads)
    return clf._loss.predict_proba(raw)


def expand_classes(p: np.ndarray, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over the classes a classifier saw -> all ``n_classes`` columns (0 elsewhere)."""
    out = np.zeros((len(p), n_classes))
    out[:, np.asarray(classes, dtype=np.int64)] = p
    return out


def known_class_rows(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Mask of validation rows whose class occurs in training (early stopping can score only those)."""
    return np.isin(np.asarray(y), np.asarray(classes))


class GBDTModel(Model):
    """scikit-learn HistGradientBoosting on AgeGender (see the module docstring)."""

    name = "gbdt"
    joint_only = True
    is_baseline = False  # a contender: the trivial baselines are the class prior and logreg
    warm_starts = True  # a regional fit adds trees to the global one's (fit_gbdt_warm)

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return {
            "learning_rate": 0.1,
            "max_iter": 200,  # boosting rounds cap; early stopping picks fewer
            "max_leaf_nodes": 31,
            "min_samples_leaf": 20,
            "l2_regularization": 0.0,
            "n_iter_no_change": 10,  # rounds without validation-loss improvement
            "n_threads": 0,  # OpenMP threads; 0 = auto (see openmp_threads)
            # a fit started from another gbdt (``fit(..., start=)``): at most this many trees
            # added to its trees (early stopping as above; 0 = keep the start). Default world,
            # 4 regions (busy machine): trees kept in 1 of 4, AgeGender mean 2.0938 vs 2.0939
            # with 0; CPU-s 39.7 vs 8.3; scratch 2.1192, 61.3 CPU-s
            "warm_max_iter": 100,
        }

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {
            "learning_rate": ("log", 0.03, 0.3),
            "max_leaf_nodes": [15, 31, 63],
            "min_samples_leaf": [10, 20, 50, 100],
            "l2_regularization": [0.0, 0.1, 1.0],
        }

    def __init__(self, encoders: Encoders, hparams: Mapping[str, Any] | None = None,
                 train_cfg: TrainConfig = TrainConfig()) -> None:
        super().__init__(encoders, hparams, train_cfg)
        self.clf: HistGradientBoostingClassifier | None = None
        self.category_maps: dict[str, np.ndarray] = {}

    def _fit(self, train: Any, valid: Any) -> dict:
        if not isinstance(train, Mapping) or not isinstance(valid, Mapping):
            raise TypeError("the gbdt model trains on numpy dicts (pythia.tfrecords.load_numpy)")
        if self.start is not None:
            return fit_gbdt_warm(self, train, valid)
        self.category_maps = fit_category_maps(train, self.encoders)
        y = labels_of(train)["age_gender"]
        yv = labels_of(valid)["age_gender"]
        keep = known_class_rows(yv, np.unique(y))
        h = self.hparams
        cat_mask = [f.kind == features.CATEGORICAL for f in features.FEATURES]
        self.clf = HistGradientBoostingClassifier(
            learning_rate=h["learning_rate"], max_iter=int(h["max_iter"]),
            max_leaf_nodes=int(h["max_leaf_nodes"]), min_samples_leaf=int(h["min_samples_leaf"]),
            l2_regularization=h["l2_regularization"], categorical_features=cat_mask,
            max_bins=MAX_CATEGORIES, early_stopping=bool(keep.any()), scoring="loss",
            n_iter_no_change=int(h["n_iter_no_change"]), random_state=self.train_cfg.seed)
        Xt = to_matrix(train, self.category_maps)
        with threadpool_limits(openmp_threads(int(h["n_threads"]), len(y)), user_api="openmp"):
            if keep.any():
                Xv = to_matrix({k: np.asarray(v)[keep] for k, v in valid.items()
                                if k in features.FEATURE_NAMES}, self.category_maps)
                self.clf.fit(Xt, y, X_val=Xv, y_val=yv[keep])
            else:
                self.clf.fit(Xt, y)
        tried = int(self.clf.n_iter_)
        if keep.any():
            cut_to_best(self.clf)
        val_loss = getattr(self.clf, "validation_score_", np.array([np.nan]))
        return {"epochs": int(self.clf.n_iter_), "iterations_tried": tried,
                "best_val_loss": float(-np.max(val_loss)) if len(val_loss) else float("nan"),
                "n_valid_unknown_class": int((~keep).sum())}

    def _predict_raw(self, X: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.clf is None:
            raise RuntimeError("gbdt is not fitted")
        n = len(X[features.FEATURE_NAMES[0]])
        threads = openmp_threads(int(self.hparams["n_threads"]), n)
        with threadpool_limits(threads, user_api="openmp"):
            p = predict_binned_proba(self.clf, to_matrix(X, self.category_maps), threads)
        full = expand_classes(p, self.clf.classes_, self.n_classes["age_gender"])
        return {"age_gender": log_probabilities(full)}

    def _save_weights(self, folder: str) -> dict:
        if self.clf is None:
            raise RuntimeError("gbdt is not fitted")
        joblib.dump({"clf": self.clf, "category_maps": self.category_maps},
                    os.path.join(folder, MODEL_FILE))
        return {"model_file": MODEL_FILE, "classes": self.clf.classes_.tolist()}

    def _load_weights(self, folder: str, meta: Mapping[str, Any]) -> None:
        state = joblib.load(os.path.join(folder, MODEL_FILE))
        self.clf = state["clf"]
        self.category_maps = state["category_maps"]


# ------------------------------------------------------------------ from a fitted start

def _kept_bins_classifier(base: Any) -> Any:
    """A ``HistGradientBoostingClassifier`` subclass whose warm fit keeps the start's category
    encoder, bin mapper and classes. scikit-learn's own ``warm_start`` (1.9) refits all three
    on the new rows, so the old trees would read other category codes and bins: on a region
    lacking some category values, the start's 55 trees' validation log-loss went from 2.07 to
    2.15 with no tree added."""

    class KeptBins(base):
        def _preprocess_X(self, X, *, reset):
            if reset:  # fit: the start's category encoder, not one refitted on these rows
                return super()._preprocess_X(X, reset=False), None
            return super()._preprocess_X(X, reset=reset)

        def _bin_data(self, X, sample_weight, is_training_data):
            self._bin_mapper = self._kept_bin_mapper
            binned = self._bin_mapper.transform(X)
            return binned if is_training_data else np.ascontiguousarray(binned)

        def _encode_y(self, y):
            # the start's label encoder and tree count per iteration stay as they are
            return self._label_encoder.transform(y).astype(np.float64, copy=False)

    return KeptBins


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


def fit_gbdt_warm(model: Any, train: Mapping, valid: Mapping) -> dict:
    """The start's trees, then up to ``warm_max_iter`` trees more fitted on the region's
    rows (the start's category codes and bins), early-stopped on the region's validation and
    cut back to the best count (0: the start)."""
    start, h = model.start, model.hparams
    model.category_maps = {f: t.copy() for f, t in start.category_maps.items()}
    y, yv = labels_of(train)["age_gender"], labels_of(valid)["age_gender"]
    classes = np.asarray(start.clf.classes_)
    unseen = sorted(set(np.unique(y).tolist()) - set(classes.tolist()))
    if unseen:
        raise ValueError(f"gbdt start has no trees for AgeGender class(es) {unseen} the "
                         f"region's training rows hold: fit this region from scratch")
    keep = known_class_rows(yv, classes)
    Xv = to_matrix({f: np.asarray(valid[f])[keep] for f in features.FEATURE_NAMES},
                   model.category_maps)
    threads = openmp_threads(int(h["n_threads"]), len(y))
    n0 = int(start.clf.n_iter_)
    with threadpool_limits(threads, user_api="openmp"):
        p = predict_binned_proba(start.clf, Xv, threads)
    yv_idx = np.searchsorted(classes, yv[keep])
    at_start = float(-np.mean(np.log(np.maximum(p[np.arange(len(yv_idx)), yv_idx], 1e-15))))
    clf = _kept_bins_classifier(HistGradientBoostingClassifier)()
    clf.__dict__.update(copy.deepcopy(start.clf.__dict__))
    clf._kept_bin_mapper = start.clf._bin_mapper
    clf.set_params(warm_start=True, max_iter=n0 + int(h["warm_max_iter"]), early_stopping=True,
                   scoring="loss", n_iter_no_change=int(h["n_iter_no_change"]),
                   learning_rate=h["learning_rate"], max_leaf_nodes=int(h["max_leaf_nodes"]),
                   min_samples_leaf=int(h["min_samples_leaf"]),
                   l2_regularization=h["l2_regularization"])
    # early stopping compares the added trees with the start on THIS validation (the start's
    # own scores are the global validation's); the start's training score is not computed
    clf.validation_score_, clf.train_score_ = np.array([-at_start]), np.array([np.nan])
    if int(h["warm_max_iter"]) > 0 and keep.any():
        with threadpool_limits(threads, user_api="openmp"):
            clf.fit(to_matrix(train, model.category_maps), y, X_val=Xv, y_val=yv[keep])
    scores = np.asarray(clf.validation_score_, dtype=np.float64)
    added = int(np.argmax(scores))  # the first best: 0 = the start itself
    plain = HistGradientBoostingClassifier()  # saved models stay plain scikit-learn objects
    plain.__dict__.update({k: v for k, v in clf.__dict__.items() if k != "_kept_bin_mapper"})
    plain.set_params(warm_start=False)
    keep_iterations(plain, n0 + added, added + 1)
    model.clf = plain
    record = start_record(at_start, -scores[added], added, len(scores) - 1,
                          "AgeGender log-loss (gbdt's own early stopping)")
    print(f"gbdt: started from the global model's {n0} iteration(s), validation AgeGender "
          f"log-loss {at_start:.4f}; {len(scores) - 1} iteration(s) tried on {len(y)} rows, "
          f"kept {added} -> {-scores[added]:.4f}")
    return {"epochs": added, "best_val_loss": float(-scores[added]),
            "n_valid_unknown_class": int((~keep).sum()), "start": record}
