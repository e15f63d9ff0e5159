"""The "demo_nn" Keras MLP: an embedding per categorical feature, a Dense+ReLU trunk, three heads.

Heads: gender (softmax), age bucket (ordinal CORN — Shi et al. 2021 — or softmax, chosen by
``age_head``) and AgeGender (softmax). The network outputs logits; probabilities are computed
in NumPy by the same functions the bid-time scorer uses on ``export_numpy()``. No BatchNorm and
no ``Lambda`` layers, so the native ``.keras`` file reloads anywhere.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

from pythia import features
from pythia.config import TrainConfig
from pythia.features import Encoders
from pythia.models import export as ex
from pythia.models.base import TF_DATASET, Model, labels_of, normalize_age_head
from pythia.models.links import corn_probabilities  # noqa: F401  (re-exported for callers)

KERAS_FILE = "model.keras"


# ------------------------------------------------------------------ CORN (ordinal) head

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


def embedding_dim(vocab_size: int, max_dim: int = 16) -> int:
    """Rule-of-thumb embedding width, ``min(max_dim, round(1.6 * size**0.56))``, at least 1."""
    return int(max(1, min(max_dim, round(1.6 * vocab_size ** 0.56))))


# ------------------------------------------------------------------ the model

class MLPModel(Model):
    """Keras MLP with embeddings and three heads (the original ``demo_nn``)."""

    name = "mlp"
    joint_only = False
    input_format = TF_DATASET  # streams TFRecords: the training split need not fit in memory

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return {
            "hidden_units": [256, 128],  # trunk widths
            "dropout": 0.1,  # after each trunk layer
            "learning_rate": 1e-3,  # Adam
            "embedding_max_dim": 16,
            "age_head": None,  # None -> TrainConfig.age_head; 'corn'/'ordinal' | 'softmax'
        }

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {
            "hidden_units": [[64], [128, 64], [256, 128], [512, 256]],
            "dropout": [0.0, 0.1, 0.2, 0.3],
            "learning_rate": ("log", 3e-4, 3e-3),
            "embedding_max_dim": [8, 16, 24],
            "age_head": ["corn", "softmax"],  # ordinal vs plain: decided by validation numbers
        }

    def __init__(self, encoders: Encoders, hparams: Mapping[str, Any] | None = None,
                 train_cfg: TrainConfig = TrainConfig()) -> None:
        super().__init__(encoders, hparams, train_cfg)
        self.age_head = normalize_age_head(self.hparams["age_head"] or self.train_cfg.age_head)
        self.hparams["age_head"] = self.age_head
        self.keras_model: keras.Model | None = None

    # -------------------------------------------------------------- graph
    def build(self) -> keras.Model:
        """The functional Keras graph: dict of feature inputs -> dict of head logits."""
        inputs, parts = {}, []
        for name in features.CATEGORICAL_FEATURES:
            size = self.encoders.vocabularies[name].size
            inputs[name] = keras.Input(shape=(), dtype="int64", name=name)
            parts.append(keras.layers.Embedding(
                size, embedding_dim(size, self.hparams["embedding_max_dim"]),
                name=f"emb_{name}")(inputs[name]))
        for name in features.NUMERIC_FEATURES:
            inputs[name] = keras.Input(shape=(), dtype="float32", name=name)
            parts.append(keras.layers.Reshape((1,), name=f"col_{name}")(inputs[name]))
        x = keras.layers.Concatenate(name="concat")(parts)
        for i, units in enumerate(self.hparams["hidden_units"]):
            x = keras.layers.Dense(int(units), activation="relu", name=f"trunk_{i}")(x)
            if self.hparams["dropout"]:
                x = keras.layers.Dropout(float(self.hparams["dropout"]), name=f"dropout_{i}")(x)
        n_age = self.n_age
        age_units = n_age - 1 if self.age_head == "corn" else n_age
        outputs = {
            "gender": keras.layers.Dense(self.n_classes["gender"], name="gender")(x),
            "age": keras.layers.Dense(age_units, name="age")(x),
            "age_gender": keras.layers.Dense(self.n_classes["age_gender"], name="age_gender")(x),
        }
        return keras.Model(inputs=inputs, outputs=outputs, name="demo_nn")

    def _losses(self) -> dict:
        ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        age = CornLoss(self.n_age) if self.age_head == "corn" else \
            keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return {"gender": ce, "age": age, "age_gender": ce}

    # -------------------------------------------------------------- data
    @staticmethod
    def _inputs(X: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {n: np.asarray(X[n], dtype=np.int64) for n in features.CATEGORICAL_FEATURES}
        out.update({n: np.asarray(X[n], dtype=np.float32) for n in features.NUMERIC_FEATURES})
        return out

    @staticmethod
    def _select(ds: tf.data.Dataset) -> tf.data.Dataset:
        """Keep exactly the model's inputs and heads (datasets may carry ids and extras)."""
        names, targets = features.FEATURE_NAMES, features.TARGETS
        return ds.map(lambda f, y: ({k: f[k] for k in names}, {t: y[t] for t in targets}))

    # -------------------------------------------------------------- fit / predict
    def _fit(self, train: Any, valid: Any) -> dict:
        cfg = self.train_cfg
        keras.utils.set_random_seed(cfg.seed)
        self.keras_model = self.build()
        self.keras_model.compile(
            optimizer=keras.optimizers.Adam(float(self.hparams["learning_rate"])),
            loss=self._losses())
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience,
                                             restore_best_weights=True)
        if isinstance(train, tf.data.Dataset):
            val = self._select(valid) if isinstance(valid, tf.data.Dataset) else (
                self._inputs(valid), labels_of(valid))
            hist = self.keras_model.fit(self._select(train), validation_data=val,
                                        epochs=cfg.max_epochs, callbacks=[stop], verbose=0,
                                        shuffle=False)  # the dataset shuffles itself
        else:
            if isinstance(valid, tf.data.Dataset):
                raise TypeError("numpy train data needs numpy valid data for the MLP")
            hist = self.keras_model.fit(
                self._inputs(train), labels_of(train), batch_size=cfg.batch_size,
                epochs=cfg.max_epochs, validation_data=(self._inputs(valid), labels_of(valid)),
                callbacks=[stop], shuffle=True, verbose=0)
        val_loss = [float(v) for v in hist.history["val_loss"]]
        return {"epochs": len(val_loss), "best_val_loss": min(val_loss),
                "best_epoch": int(np.argmin(val_loss)) + 1, "age_head": self.age_head}

    def link(self, head: str) -> str:
        return self.age_head if head == "age" else "softmax"

    def _predict_raw(self, X: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.keras_model is None:
            raise RuntimeError("MLP is not fitted")
        logits = self.keras_model.predict(self._inputs(X), batch_size=8192, verbose=0)
        return {t: np.asarray(logits[t], dtype=np.float64) for t in features.TARGETS}

    def _raw_and_labels(self, valid: Any):
        if not isinstance(valid, tf.data.Dataset):
            return super()._raw_and_labels(valid)
        logit_parts: dict[str, list] = {t: [] for t in features.TARGETS}
        label_parts: dict[str, list] = {t: [] for t in features.TARGETS}
        for x, y in self._select(valid):
            out = self.keras_model(x, training=False)
            for t in features.TARGETS:
                logit_parts[t].append(np.asarray(out[t]))
                label_parts[t].append(np.asarray(y[t]))
        widths = {"gender": 2, "age": self.n_age - (self.age_head == "corn"),
                  "age_gender": 2 * self.n_age}
        logits = {t: (np.concatenate(v).astype(np.float64) if v else np.zeros((0, widths[t])))
                  for t, v in logit_parts.items()}
        labels = {t: (np.concatenate(v).astype(np.int64) if v else np.zeros(0, np.int64))
                  for t, v in label_parts.items()}
        return logits, labels

    # -------------------------------------------------------------- persistence / export
    def _save_weights(self, folder: str) -> dict:
        if self.keras_model is None:
            raise RuntimeError("MLP is not fitted")
        self.keras_model.save(os.path.join(folder, KERAS_FILE))
        return {"age_head": self.age_head, "keras_file": KERAS_FILE}

    def _load_weights(self, folder: str, meta: Mapping[str, Any]) -> None:
        self.age_head = meta.get("age_head", self.age_head)
        self.keras_model = keras.saving.load_model(
            os.path.join(folder, KERAS_FILE), compile=False,
            custom_objects={"CornLoss": CornLoss})

    @classmethod
    def export(cls, model_dir: str) -> dict[str, Any]:
        """The ``NUMPY_LAYERS`` payload: the bid-time scorer runs it with NumPy alone."""
        return {ex.RUNTIME: ex.NUMPY_LAYERS, ex.EXPORT: cls.load(model_dir).export_numpy()}

    def export_numpy(self) -> dict:
        """Everything the bid-time scorer needs for a pure-NumPy forward pass.

        Forward pass: concatenate ``embeddings[i][1][id]`` in order, then the ``numeric``
        values in order; apply each trunk layer ``relu(x @ W + b)``; per head
        ``z = (x @ W + b) / temperature[t]`` turned into probabilities by 'softmax' or 'corn'
        (``links.corn_probabilities``); then ``p ∝ p * prior_ratio[t]`` (renormalised).
        """
        if self.keras_model is None or self.priors is None:
            raise RuntimeError("MLP is not fitted")
        m = self.keras_model
        trunk = []
        for i in range(len(self.hparams["hidden_units"])):
            W, b = m.get_layer(f"trunk_{i}").get_weights()
            trunk.append((W, b, "relu"))

        def head(name: str, activation: str) -> tuple:
            W, b = m.get_layer(name).get_weights()
            return (W, b, activation)

        return {
            "kind": self.name,
            "embeddings": [(n, m.get_layer(f"emb_{n}").get_weights()[0])
                           for n in features.CATEGORICAL_FEATURES],
            "numeric": list(features.NUMERIC_FEATURES),
            "trunk": trunk,
            "heads": {"gender": head("gender", "softmax"), "age": head("age", self.age_head),
                      "age_gender": head("age_gender", "softmax")},
            "temperature": {t: float(v) for t, v in self.temperature.items()},
            "prior_ratio": {t: np.asarray(r, dtype=np.float64)
                            for t, r in self.prior_ratio.items()},
        }
