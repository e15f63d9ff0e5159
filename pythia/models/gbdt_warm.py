"""A gbdt fitted from a start (the family's global gbdt): its trees, then the region's.

``fit_gbdt_warm`` continues the start's boosting on the region's rows with the start's category
codes, bins and classes (``_kept_bins_classifier``), early-stopped on the region's validation.
The regional model's first ``start_iterations`` trees are the start's, so wherever the start
already computed raw scores — its calibration and its predictions of every region's scored
splits, kept by impression id in ``StartScores`` (``GBDTModel.serve_as_start``) — the regional
model adds only its own trees' scores (``gbdt.raw_binned``): the same sums in the same order,
bit for bit. Default world, idle machine, one thread: the gbdt family walked the global
model's 89 iterations again on the regions' validation rows three times (the start's loss,
the warm fit's start, calibration) and on their test days once.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from pythia import features
from pythia.models import notes
from pythia.models.base import labels_of, start_record
from pythia.models.hgb import (keep_iterations, known_class_rows, openmp_threads, raw_binned,
                               to_matrix)
from pythia.models.raw_memo import RawMemo

# Rows whose raw scores a start keeps (float64 per class, plus the id): beyond them a regional
# model walks the start's trees itself. 1M rows x 12 classes: about 170 MB at most; the default
# world's global gbdt computes 703k (162k validation, 541k test days).
START_SCORES_MAX_ROWS = 1_000_000


class StartScores:
    """A start model's raw scores by impression id, as it computes them, up to ``max_rows``
    rows; ``lookup`` answers a whole block of ids or None (``raw_memo.RawMemo``)."""

    def __init__(self, max_rows: int = START_SCORES_MAX_ROWS) -> None:
        self.max_rows = int(max_rows)
        self.rows = 0  # rows kept
        self.skipped = 0  # rows computed over the cap, not kept
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []
        self._memo: RawMemo | None = None

    def add(self, impression_ids: np.ndarray, raw: np.ndarray) -> None:
        """Keep these rows' raw scores (all of them, or none when they would pass the cap)."""
        if self.rows + len(impression_ids) > self.max_rows:
            self.skipped += len(impression_ids)
            return
        self._parts.append((np.asarray(impression_ids).astype(str),
                            np.array(raw, dtype=np.float64)))
        self.rows += len(impression_ids)
        self._memo = None

    def lookup(self, impression_ids: np.ndarray) -> np.ndarray | None:
        """The kept raw scores of these ids, in their order; None unless every id is kept."""
        if not self._parts:
            return None
        if self._memo is None:
            ids = np.concatenate([i for i, _ in self._parts])
            self._memo = RawMemo(ids, {"raw": np.concatenate([r for _, r in self._parts])})
            self._parts = [(self._memo.ids, self._memo.raw["raw"])]
        known = self._memo.lookup(impression_ids)
        return None if known is None else known["raw"]


def _kept_bins_classifier(base: Any) -> Any:
    """A ``HistGradientBoostingClassifier`` subclass whose warm fit keeps the start's category
    encoder, bin mapper and classes. scikit-learn's own ``warm_start`` (1.9) refits all three
    on the new rows, so the old trees would read other category codes and bins: on a region
    lacking some category values, the start's 55 trees' validation log-loss went from 2.07 to
    2.15 with no tree added. The start's raw scores of the validation rows, when known
    (``_val_start_raw``), replace walking its trees on them."""

    class KeptBins(base):
        _val_start_raw: np.ndarray | None = None
        _val_binned: np.ndarray | None = None

        def _preprocess_X(self, X, *, reset):
            if reset:  # fit: the start's category encoder, not one refitted on these rows
                return super()._preprocess_X(X, reset=False), None
            return super()._preprocess_X(X, reset=reset)

        def _bin_data(self, X, sample_weight, is_training_data):
            self._bin_mapper = self._kept_bin_mapper
            binned = self._bin_mapper.transform(X)
            if is_training_data:
                return binned
            self._val_binned = np.ascontiguousarray(binned)
            return self._val_binned

        def _raw_predict(self, X, n_threads=None):
            # the warm fit's first call on its validation rows: the start's scores, known
            if X is self._val_binned and self._val_start_raw is not None:
                return np.array(self._val_start_raw, order="F")
            return super()._raw_predict(X, n_threads)

        def _encode_y(self, y):
            # the start's label encoder and tree count per iteration stay as they are
            return self._label_encoder.transform(y).astype(np.float64, copy=False)

    return KeptBins


def _start_raw(start: Any, valid: Mapping, keep: np.ndarray, Xv: np.ndarray,
               threads: int) -> np.ndarray:
    """The start's raw scores of the kept validation rows: kept ones, else walked."""
    ids = valid.get(features.IMPRESSION_ID)
    known = (start.own_scores.lookup(np.asarray(ids)[keep])
             if start.own_scores is not None and ids is not None else None)
    if known is not None:
        return known
    with threadpool_limits(threads, user_api="openmp"):
        return raw_binned(start.clf, Xv, threads)


def fit_gbdt_warm(model: Any, train: Mapping, valid: Mapping) -> dict:
    """The start's trees, then up to ``warm_max_iter`` trees more fitted on the region's
    rows (the start's category codes and bins), early-stopped on the region's validation and
    cut back to the best count (0: the start). The model keeps the start's ``StartScores``
    for its own calibration and predictions."""
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
    raw0 = _start_raw(start, valid, keep, Xv, threads)
    p = start.clf._loss.predict_proba(raw0)
    yv_idx = np.searchsorted(classes, yv[keep])
    at_start = float(-np.mean(np.log(np.maximum(p[np.arange(len(yv_idx)), yv_idx], 1e-15))))
    clf = _kept_bins_classifier(HistGradientBoostingClassifier)()
    clf.__dict__.update(copy.deepcopy(start.clf.__dict__))
    clf._kept_bin_mapper, clf._val_start_raw = start.clf._bin_mapper, raw0
    clf.set_params(warm_start=True, max_iter=n0 + int(h["warm_max_iter"]), early_stopping=True,
                   scoring="loss", n_iter_no_change=int(h["warm_n_iter_no_change"]),
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
    plain.__dict__.update({k: v for k, v in clf.__dict__.items()
                           if k not in ("_kept_bin_mapper", "_val_start_raw", "_val_binned")})
    plain.set_params(warm_start=False)
    keep_iterations(plain, n0 + added, added + 1)
    model.clf = plain
    model.start_scores, model.start_iterations = start.own_scores, n0
    record = start_record(at_start, -scores[added], added, len(scores) - 1,
                          "AgeGender log-loss (gbdt's own early stopping)")
    notes.say("gbdt", f"AgeGender {at_start:.4f} with the global model's {n0} iteration(s); "
              f"{len(scores) - 1} more tried, kept {added} -> {-scores[added]:.4f}")
    return {"epochs": added, "best_val_loss": float(-scores[added]),
            "n_valid_unknown_class": int((~keep).sum()), "start": record}
