"""One runtime per export kind: how a bundle stores a model's payload and how the scorer runs it.

A model's ``export(model_dir)`` names its runtime kind (``pythia.models.export``); the bundle
records the kind with each region's entry, and ``runtime_of(entry)`` finds the code here. No
model name appears in this module: a new model picks an existing runtime, or adds one here.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Protocol

import numpy as np

from pythia.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, TARGETS, Encoders
from pythia.models.export import EXPORT, MODEL_DIR, NUMPY_LAYERS, RUNTIME, SAVED_MODEL
from pythia.scoring.runtime import FusedMLP, check_export, load_export_npz, save_export_npz


class Predictor(Protocol):
    """What the scorer calls on a region's model: encoded rows in, probabilities out."""

    def predict(self, ids: np.ndarray, numeric: np.ndarray) -> dict[str, np.ndarray]: ...

    def predict_one(self, ids: list[int], numeric: list[float]) -> dict[str, list[float]]: ...


class SavedModelRuntime:
    """A saved ``pythia.models`` model folder, called via ``predict_proba``.

    Slower than the fused MLP (a model call per batch, the model's own libraries loaded) and
    only the Bayes prior correction applies (``em`` needs many rows of the same region).
    """

    def __init__(self, folder: str) -> None:
        from pythia.models import load_model  # imports the model's libraries only for these

        self.model = load_model(folder)

    def predict(self, ids: np.ndarray, numeric: np.ndarray) -> dict[str, np.ndarray]:
        X = {name: ids[:, j] for j, name in enumerate(CATEGORICAL_FEATURES)}
        X.update({name: numeric[:, j] for j, name in enumerate(NUMERIC_FEATURES)})
        probs = self.model.predict_proba(X)
        return {t: np.asarray(probs[t], dtype=np.float64) for t in TARGETS}

    def predict_one(self, ids: list[int], numeric: list[float]) -> dict[str, list[float]]:
        probs = self.predict(np.array([ids], dtype=np.int64),
                             np.array([numeric], dtype=np.float32))
        return {t: p[0].tolist() for t, p in probs.items()}


class _NumpyLayers:
    """``NUMPY_LAYERS``: the export dict as ``weights-<region>.npz``, run by ``FusedMLP``."""

    kind = NUMPY_LAYERS

    @staticmethod
    def check(payload: Mapping[str, Any], encoders: Encoders) -> None:
        check_export(payload[EXPORT], encoders)

    @staticmethod
    def write(payload: Mapping[str, Any], folder: str, region: str) -> dict[str, Any]:
        name = f"weights-{region}.npz"
        save_export_npz(payload[EXPORT], os.path.join(folder, name))
        return {"file": name}

    @staticmethod
    def load(folder: str, entry: Mapping[str, Any], encoders: Encoders, dtype: str) -> Predictor:
        export = load_export_npz(os.path.join(folder, entry["file"]))
        return FusedMLP(export, encoders, dtype=dtype)


class _SavedModel:
    """``SAVED_MODEL``: a copy of the model folder as ``model-<region>/``."""

    kind = SAVED_MODEL

    @staticmethod
    def check(payload: Mapping[str, Any], encoders: Encoders) -> None:
        if not payload.get(MODEL_DIR):
            raise ValueError(f"a {SAVED_MODEL!r} payload needs {MODEL_DIR!r} "
                             f"(has {sorted(payload)})")

    @staticmethod
    def write(payload: Mapping[str, Any], folder: str, region: str) -> dict[str, Any]:
        from pythia import storage

        name = f"model-{region}"
        storage.download_dir(payload[MODEL_DIR], os.path.join(folder, name))
        return {"dir": name, "source": payload[MODEL_DIR]}

    @staticmethod
    def load(folder: str, entry: Mapping[str, Any], encoders: Encoders, dtype: str) -> Predictor:
        return SavedModelRuntime(os.path.join(folder, entry["dir"]))


RUNTIMES = {r.kind: r for r in (_NumpyLayers, _SavedModel)}


def runtime_of(entry: Mapping[str, Any]) -> Any:
    """The runtime of a payload or a ``bundle.json`` model entry (ValueError if unknown)."""
    # Bundles written before entries recorded their runtime: the npz 'file' is the only
    # NUMPY_LAYERS layout, a 'dir' the SAVED_MODEL one.
    kind = entry.get(RUNTIME) or (NUMPY_LAYERS if "file" in entry else
                                  SAVED_MODEL if "dir" in entry else None)
    if kind not in RUNTIMES:
        raise ValueError(f"runtime {kind!r} is not one of {sorted(RUNTIMES)}")
    return RUNTIMES[kind]
