"""Build a compiled Keras model's training state before ``fit`` traces its train step.

Without a distribution strategy, Keras 3 on TensorFlow creates the optimizer's slots and the
compiled loss's trackers inside the first trace of the train function, and a ``tf.function``
that creates variables on its first trace is traced again without (``tf.function``'s
``_initialize``, then its no-variable-creation trace). The MLP's train step is a large graph
(an embedding, its Adam slots and an update per feature): each trace cost about 2.4 s, twice
per phase. ``Trainer._symbolic_build`` -- what Keras itself runs before tracing under a
strategy -- creates that state from the batch's shapes and dtypes alone, so the step is traced
once: an MLP fit of 600 rows took 6.0 CPU-s instead of 9.8 with the same validation losses to
the last digit (session 66; ``tests/test_mlp_trace.py`` counts the traces).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from pythia.models.base import labels_of


def build_before_fit(model: Any, train: Any) -> bool:
    """Create ``model.keras_model``'s optimizer slots and loss trackers (it is compiled, not
    yet fitted) from the shapes of ``train``: a ``tf.data`` split (its element spec, after
    ``model._select``; nothing is read) or a mapping of arrays (its first row). False when
    this Keras has no ``_symbolic_build`` (then ``fit`` builds them, tracing twice)."""
    build = getattr(model.keras_model, "_symbolic_build", None)
    if build is None:
        return False
    if isinstance(train, tf.data.Dataset):
        batch = model._select(train).element_spec
    else:
        head = {k: np.asarray(v)[:1] for k, v in train.items()}
        batch = (model._inputs(head), labels_of(head))
    build(data_batch=batch)
    return True
