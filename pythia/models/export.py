"""What a model hands the scoring bundle: the runtime kinds, and the payload of each.

``Model.export(model_dir)`` returns one payload; the bundle stores it under its runtime kind and
the scorer runs it with that kind's runtime (``pythia.scoring.runtimes``). This module imports
nothing, so the bid-time scorer reads these names without loading any model library.
"""
from __future__ import annotations

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
