"""What a model hands the scoring bundle: the runtime kinds, and the payload of each.

``Model.export(model_dir)`` returns one payload; the bundle stores it under its runtime kind and
the scorer runs it with that kind's runtime (``pythia.scoring.runtimes``). A model may save its
``NUMPY_LAYERS`` export with its weights (``save_export``), so that exporting it needs no model
library (``scoring.bundle.saved_export``: the end step without TensorFlow). This module imports nothing at
import time, so the bid-time scorer reads these names without loading any model library.
"""
from __future__ import annotations

import os

# Dense layers as NumPy arrays: embeddings, a ReLU trunk and linear heads with their links,
# temperatures and prior ratios (``MLPModel.export_numpy()``); payload key EXPORT. Scored by the
# fused NumPy forward pass: no model library at score time.
NUMPY_LAYERS = "numpy_layers"
# The saved model folder itself (payload key MODEL_DIR); the scorer loads it with
# ``pythia.models.load_model`` and calls ``predict_proba`` (needs the model's libraries).
SAVED_MODEL = "saved_model"
RUNTIMES = (NUMPY_LAYERS, SAVED_MODEL)

# Payload keys: {RUNTIME: one of RUNTIMES, EXPORT: export dict} or {RUNTIME, MODEL_DIR: folder}.
RUNTIME = "runtime"
EXPORT = "export"
MODEL_DIR = "model_dir"

# Optional NUMPY_LAYERS entry: AgeGender's temperature per bin of a numeric feature's normalised
# value, {"feature", "edges" (k increasing), "temperature" (k + 1)} (``models.activity_temp``)
ACTIVITY_TEMPERATURE = "activity_temperature"

# The NUMPY_LAYERS export saved in a model folder (joblib), and the meta.json "extra" key naming it
EXPORT_FILE = "numpy_layers.joblib"
EXPORT_FILE_KEY = "numpy_export"


def save_export(folder: str, export: dict) -> dict[str, str]:
    """Write a model's ``NUMPY_LAYERS`` export into its (staged) folder; returns the entry
    for its meta.json ``extra``."""
    import joblib

    joblib.dump(export, os.path.join(folder, EXPORT_FILE))
    return {EXPORT_FILE_KEY: EXPORT_FILE}
