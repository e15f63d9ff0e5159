"""Gradient boosting: one 12-class AgeGender ``HistGradientBoostingClassifier``, a contender.

Gender and age are the marginals of the AgeGender posterior, so the three targets are
consistent by construction. Categorical ids use HGB's native categorical splits; HGB allows at
most 255 categories per feature, so for this model ONLY each categorical keeps its 253 most
frequent training ids (codes 2..254) and every other id is folded into the OOV id (1); the
missing id stays 0. Early stopping uses our own validation day (``fit(..., X_val, y_val)``,
scikit-learn >= 1.7) rather than HGB's random internal split, which would leak same-day rows.
Prediction walks the trees on binned rows (``raw_binned``), as HGB's own early stopping
does: the same leaves, a quarter less CPU than on float rows. A regional model may start from
the global one (``fit(..., start=)``, ``gbdt_warm``): its trees, then more; it adds its own
trees' scores to those the global model computed on the same rows (``serve_as_start``).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import joblib
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from pythia import features
from pythia.config import TrainConfig
from pythia.features import Encoders
from pythia.models.base import Model, labels_of
from pythia.models.gbdt_warm import StartScores, fit_gbdt_warm
from pythia.models.hgb import (MAX_CATEGORIES, cut_to_best, expand_classes, fit_category_maps,
                               known_class_rows, openmp_threads, raw_binned, to_matrix)
from pythia.models.priors import log_probabilities

MODEL_FILE = "hgb.joblib"


class GBDTModel(Model):
    """scikit-learn HistGradientBoosting on AgeGender (see the module docstring)."""

    name = "gbdt"
    joint_only = True
    is_baseline = False  # a contender: the trivial baselines are the class prior and logreg
    warm_starts = True  # a regional fit adds trees to the global one's (fit_gbdt_warm)

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return {
            # 0.1, not 0.2, though 0.2 halves the default run's gbdt task (issue #14; default
            # world, global + 4 warm regions, scripts/train_bench.py --warm, busy: validation
            # AgeGender / fit CPU-s 0.1 1.9621 (91 iterations) / 183, 0.2 1.9746 (38) / 82):
            # on small data gbdt is the champion and 0.2 costs it the lead (tiny world, EU:
            # 1.5109 -> 1.6333, below logreg's 1.5784; session 28, tests/test_flow.py)
            "learning_rate": 0.1,
            "max_iter": 200,  # boosting rounds cap; early stopping picks fewer
            "max_leaf_nodes": 31,
            "min_samples_leaf": 20,
            "l2_regularization": 0.0,
            # rounds without validation-loss improvement before stopping. Default world (busy
            # machine): 5 and 10 keep the same 89 iterations of the global fit, 104 vs 119
            # CPU-s; on the regions' smaller validation days 5 stopped LATAM at 44 iterations
            # (1.8544) where 10 reached 69 (1.8507), hence warm_n_iter_no_change
            "n_iter_no_change": 5,
            "warm_n_iter_no_change": 10,
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
        # the raw scores this model computed, for the fits that start from it
        # (``serve_as_start``), and, fitted from a start, the start's (``gbdt_warm``)
        self.own_scores: StartScores | None = None
        self.start_scores: StartScores | None = None
        self.start_iterations = 0  # iterations of the start's (the first ones of self.clf)

    def serve_as_start(self) -> None:
        """Keep the raw scores this model computes from now on (calibration, predictions) by
        impression id, bounded (``gbdt_warm.StartScores``): a regional fit started from it
        adds its own trees' scores to them instead of walking these trees again."""
        self.own_scores = StartScores()

    def _fit(self, train: Any, valid: Any) -> dict:
        if not isinstance(train, Mapping) or not isinstance(valid, Mapping):
            raise TypeError("the gbdt model trains on numpy dicts (pythia.tfrecords.load_numpy)")
        if self.start is not None:
            return fit_gbdt_warm(self, train, valid)
        self.start_scores, self.start_iterations = None, 0
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
        ids = X.get(features.IMPRESSION_ID)
        known = (self.start_scores.lookup(ids)
                 if self.start_scores is not None and ids is not None else None)
        with threadpool_limits(threads, user_api="openmp"):
            raw = raw_binned(self.clf, to_matrix(X, self.category_maps), threads,
                             self.start_iterations if known is not None else 0, known)
        if self.own_scores is not None and ids is not None:
            self.own_scores.add(ids, raw)
        p = self.clf._loss.predict_proba(raw)
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
