"""The CORN loss of the MLP's ordinal age head (Keras; the probabilities are
``links.corn_probabilities``)."""
from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="pythia")
class CornLoss(keras.losses.Loss):
    """CORN loss (Shi, Cao & Raschka 2021) for integer labels and K-1 conditional logits.

    Task k (k = 0..K-2) is the binary question "y > k" asked only of rows with y >= k (the
    conditional training subsets); per row the loss is the sum of its tasks' binary
    cross-entropies. Keras then averages rows (the paper divides by the total subset size
    instead — a constant-order rescaling that keeps sample weights working per row).
    """

    def __init__(self, num_classes: int, name: str = "corn_loss", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if num_classes < 2:
            raise ValueError(f"CORN needs at least 2 classes, got {num_classes}")
        self.num_classes = int(num_classes)

    def call(self, y_true, y_pred):
        y = keras.ops.cast(keras.ops.reshape(y_true, (-1, 1)), "int32")
        tasks = keras.ops.arange(self.num_classes - 1, dtype="int32")[None, :]
        in_subset = keras.ops.cast(y >= tasks, y_pred.dtype)
        target = keras.ops.cast(y > tasks, y_pred.dtype)
        # log-sigmoid form of the binary cross-entropy: stable for large |logits|
        bce = -(target * keras.ops.log_sigmoid(y_pred)
                + (1.0 - target) * keras.ops.log_sigmoid(-y_pred))
        return keras.ops.sum(in_subset * bce, axis=1)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes}
