"""The constant-prior baseline ``class_prior``: every row gets the training class frequencies
of AgeGender.

It knows nothing about the impression, so a model that does not beat it has learned nothing
usable (issue 13: a champion worse than the class frequencies was blessed). Like every model it
goes through ``base.Model``: temperature on validation, then the move to natural priors, so its
predictions are the natural class frequencies of its region's rows. Gender and age are the
marginals of the joint. Every run trains it (``train_grid`` adds it as the reference line).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from pythia import features
from pythia.models.base import Model, labels_of

PRIOR_KEY = "class_log_prior"  # where the frequencies are kept in the saved meta ('extra')


class PriorModel(Model):
    """Training class frequencies of AgeGender (additively smoothed), the same for every row."""

    name = "class_prior"
    joint_only = True
    is_baseline = True
    bins_by_activity = False  # a constant stays one: no temperature per activity bin

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        # Pseudo-count added to every class, so a class absent from a small region's training
        # rows keeps a finite probability (its validation rows would otherwise cost log 0).
        return {"smoothing": 0.5}

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {}  # a constant has nothing to search: config 0 only

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.class_log_prior: np.ndarray | None = None

    def _fit(self, train: Any, valid: Any) -> dict:
        if not isinstance(train, Mapping):
            raise TypeError("the prior model counts labels of numpy dicts "
                            "(pythia.tfrecords.load_numpy)")
        smoothing = float(self.hparams["smoothing"])
        if smoothing < 0:
            raise ValueError(f"prior smoothing must be >= 0, got {smoothing}")
        y = labels_of(train)["age_gender"]
        k = self.n_classes["age_gender"]
        if len(y) == 0:
            raise ValueError("the prior model got no training rows")
        counts = np.bincount(y, minlength=k)[:k].astype(np.float64) + smoothing
        if counts.sum() <= 0:
            raise ValueError("no AgeGender label in the training rows and smoothing 0")
        freq = counts / counts.sum()
        self.class_log_prior = np.log(np.maximum(freq, 1e-12))
        return {"epochs": 1, "best_val_loss": float("nan")}

    def _predict_raw(self, X: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.class_log_prior is None:
            raise RuntimeError("the prior model is not fitted")
        n = len(X[features.FEATURE_NAMES[0]])
        return {"age_gender": np.tile(self.class_log_prior, (n, 1))}

    def _save_weights(self, folder: str) -> dict:
        if self.class_log_prior is None:
            raise RuntimeError("the prior model is not fitted")
        return {PRIOR_KEY: self.class_log_prior.tolist()}

    def _load_weights(self, folder: str, meta: Mapping[str, Any]) -> None:
        if PRIOR_KEY not in meta:
            raise ValueError(f"{folder}: saved prior model lacks {PRIOR_KEY!r} in its meta")
        self.class_log_prior = np.asarray(meta[PRIOR_KEY], dtype=np.float64)
