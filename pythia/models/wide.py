"""The MLP's wide part (Cheng et al. 2016) and its start from logistic regression.

``WideLogits`` adds to each head's logits a row per categorical value (one table per feature
and head, summed over the features) and a linear term of the numerics. ``fit_wide_start`` fits
multinomial logistic regressions exactly as the logreg baseline does (``logreg.fit_linear``:
same one-hot columns, L2 strength chosen on validation by the natural-weighted log-loss) and
returns them as the wide part's starting weights: AgeGender from the baseline's own task, gender
from its own LR, the age head from its own LR (softmax) or, for CORN, one binary LR per
conditional task ``y > k`` among ``y >= k`` (which is what a CORN logit is); or, with
``aid_l2_rows`` (the MLP's ``aid_start='prior'``), gender and age at their training priors
(``prior_start``): they are training aids, the answers are AgeGender's marginals. ``KeepBest``
keeps the start when no epoch beats it on validation by more than ``min_delta``.
"""
from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

from pythia import features
from pythia.config import TrainConfig
from pythia.features import Encoders
from pythia.models.base import labels_of
from pythia.models.logreg import LinearTask, fit_linear


@keras.saving.register_keras_serializable(package="pythia")
class ColumnL2(keras.regularizers.Regularizer):
    """``sum_j l2[j] * sum_i w[i, j]**2``: an L2 strength per output column (per head logit)."""

    def __init__(self, l2: list[float]) -> None:
        self.l2 = [float(v) for v in l2]

    def __call__(self, w):
        return keras.ops.sum(keras.ops.square(w) * np.asarray(self.l2, dtype="float32"))

    def get_config(self) -> dict:
        return {"l2": self.l2}


@keras.saving.register_keras_serializable(package="pythia")
class WideLogits(keras.layers.Layer):
    """Per head: a logit row per categorical value summed over features, plus ``numeric @ W``.

    One (sum of vocabulary sizes, sum of head logits) table: feature ``i``'s value ``v`` is row
    ``offsets[i] + v``; the columns are the heads' logits side by side (``units`` each), so one
    gather and one sum serve every head. The logits are ``scale * weights``: Adam moves each
    weight by about the learning rate per step, so ``scale`` sets how fast the wide part moves
    against the deep one. ``l2`` (per logit column, on the scaled weights) is the penalty;
    zero-initialised unless ``set_start`` is called.

    Inputs: a list of the categorical id tensors (``sizes`` order), then the numeric tensors.
    """

    def __init__(self, sizes: list[int], units: list[int], n_numeric: int,
                 l2: list[float] | None = None, scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sizes, self.units = [int(s) for s in sizes], [int(u) for u in units]
        self.n_numeric, self.scale = int(n_numeric), float(scale)
        self.l2 = [float(v) for v in l2] if l2 is not None else [0.0] * sum(self.units)
        self.offsets = np.cumsum([0] + self.sizes[:-1]).astype("int64")

    def build(self, input_shape: Any) -> None:
        scaled = [v * self.scale ** 2 for v in self.l2]
        reg = ColumnL2(scaled) if any(v > 0 for v in scaled) else None
        self.table = self.add_weight(shape=(sum(self.sizes), sum(self.units)),
                                     initializer="zeros", name="table", regularizer=reg)
        self.numeric = self.add_weight(shape=(self.n_numeric, sum(self.units)),
                                       initializer="zeros", name="numeric", regularizer=reg)

    def call(self, inputs: list) -> list:
        ids, num = inputs[:len(self.sizes)], inputs[len(self.sizes):]
        rows = keras.ops.stack([keras.ops.cast(i, "int64") for i in ids], axis=1) + self.offsets
        z = keras.ops.sum(keras.ops.take(self.table, rows, axis=0), axis=1)
        if num:
            x = keras.ops.stack([keras.ops.cast(v, self.table.dtype) for v in num], axis=1)
            z = z + keras.ops.matmul(x, self.numeric)
        return keras.ops.split(z * self.scale, np.cumsum(self.units)[:-1].tolist(), axis=1)

    def compute_output_shape(self, input_shape: Any) -> list:
        return [(input_shape[0][0], u) for u in self.units]

    def get_config(self) -> dict:
        return {**super().get_config(), "sizes": self.sizes, "units": self.units,
                "n_numeric": self.n_numeric, "l2": self.l2, "scale": self.scale}

    def set_start(self, per_head: list[Mapping[str, Any]], names: list[str]) -> None:
        """Set the weights from per-head ``{'tables': {feature: (size, units)}, 'numeric':
        (n_numeric, units)}`` (in ``units`` order) so that the layer's logits equal them."""
        table = np.concatenate([np.concatenate([h["tables"][n] for n in names])
                                for h in per_head], axis=1) / self.scale
        numeric = np.concatenate([h["numeric"] for h in per_head], axis=1) / self.scale
        self.set_weights([table.astype("float32"), numeric.astype("float32")])

    def export(self, names: list[str], heads: list[str]) -> tuple[dict, dict]:
        """``({head: [(feature, (size, units)), ...]}, {head: (n_numeric, units)})``: the
        export's ``wide`` and ``wide_numeric`` entries (the logits' weights, scale applied)."""
        table = np.asarray(self.table.numpy(), dtype=np.float64) * self.scale
        numeric = np.asarray(self.numeric.numpy(), dtype=np.float64) * self.scale
        cols = np.cumsum([0] + self.units)
        tables = {h: [(n, table[o:o + s, cols[j]:cols[j + 1]])
                      for n, o, s in zip(names, self.offsets, self.sizes)]
                  for j, h in enumerate(heads)}
        return tables, {h: numeric[:, cols[j]:cols[j + 1]] for j, h in enumerate(heads)}


class KeepBest(keras.callbacks.Callback):
    """Early stopping on ``score()['age_gender']``, scored once before the first epoch too:
    stops after ``patience`` epochs without an improvement of more than ``min_delta`` and
    restores the best weights (the starting ones when no epoch beat them; a smaller gain still
    counts as best). ``history[e]`` = the scores after epoch e. ``kept()``, when given, is
    called at each new best and its value kept as ``best_kept`` (e.g. the validation logits
    the score was computed from: those of the restored weights)."""

    def __init__(self, score: Any, patience: int, min_delta: float = 0.0,
                 kept: Any = None) -> None:
        super().__init__()
        self.score, self.patience = score, int(patience)
        self.min_delta = float(min_delta)
        self.kept, self.best_kept = kept, None
        self.history: list[dict[str, float]] = []
        self.best_index, self.best_weights = 0, None
        self.gain_index = 0  # the last epoch that improved on the best by more than min_delta
        self.phase_start = 0
        self.phase_ends: list[int] = []  # history index at the end of each training phase

    def on_train_begin(self, logs: Any = None) -> None:
        if not self.history:  # a later phase continues from the restored best weights
            self._record()
        self.phase_start = len(self.history) - 1

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self._record()
        since = len(self.history) - 1 - max(self.gain_index, self.phase_start)
        if since >= max(self.patience, 1):
            self.model.stop_training = True

    def on_train_end(self, logs: Any = None) -> None:
        self.model.set_weights(self.best_weights)

    def _record(self) -> None:
        self.history.append(self.score())
        best, now = self.history[self.best_index]["age_gender"], self.history[-1]["age_gender"]
        if self.best_weights is None or now < best - self.min_delta:
            self.gain_index = len(self.history) - 1
        if self.best_weights is None or now < best:
            self.best_index, self.best_weights = len(self.history) - 1, self.model.get_weights()
            self.best_kept = self.kept() if self.kept is not None else None


def numpy_of(data: Any) -> dict[str, np.ndarray]:
    """A numpy split (features + ``y_*`` labels) from a numpy dict or a ``(features, labels)``
    tf.data.Dataset (read once)."""
    if isinstance(data, Mapping):
        return data
    parts: dict[str, list] = {}
    for x, y in data.as_numpy_iterator():
        for k, v in x.items():
            parts.setdefault(k, []).append(v)
        for t, v in y.items():
            parts.setdefault(features.LABEL_COLUMNS[t], []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def count_rows(data: Any) -> int:
    """Rows of a numpy split, or of a ``(features, labels)`` tf.data.Dataset (one pass)."""
    if isinstance(data, tf.data.Dataset):
        return int(data.reduce(np.int64(0), lambda n, batch: n + tf.cast(
            tf.shape(batch[1]["age_gender"])[0], tf.int64)))
    return len(labels_of(data)["age_gender"])


def embedding_dim(vocab_size: int, max_dim: int = 16) -> int:
    """Rule-of-thumb embedding width, ``min(max_dim, round(1.6 * size**0.56))``, at least 1."""
    return int(max(1, min(max_dim, round(1.6 * vocab_size ** 0.56))))


def fit_wide_start(train: Mapping[str, np.ndarray], valid: Mapping[str, np.ndarray],
                   encoders: Encoders, priors: Mapping, valid_weights: np.ndarray,
                   age_head: str, train_cfg: TrainConfig = TrainConfig(),
                   lr_hparams: Mapping[str, Any] | None = None,
                   aid_l2_rows: float | None = None) -> dict[str, dict]:
    """Per head, the fitted LR as ``{'tables', 'numeric', 'bias', 'l2_rows', 'C'}``.

    ``aid_l2_rows`` given: only AgeGender is fitted; the aid heads (gender, age: training
    aids, their answers are AgeGender's marginals) start at zero weights with their training
    priors' logits as biases (``prior_start``) and that penalty per logit column.

    ``tables`` / ``numeric`` / ``bias`` as ``LogRegModel.logit_tables`` (for CORN: one column
    per conditional task); ``l2_rows`` per logit column is the LR's own penalty in the MLP's
    units (sklearn minimises ``C * sum(loss) + |w|**2 / 2``, i.e. per row ``mean(loss) +
    |w|**2 / (2 C n)``), so that training the wide part alone would stay at the LR.
    """
    def task(y: np.ndarray, yv: np.ndarray, k: int, head: str, weights: np.ndarray,
             label: str) -> LinearTask:
        return LinearTask(y, yv, k, priors["train"][head], priors["natural"][head], weights,
                          label)

    y, yv = ({t: np.asarray(d[c], dtype=np.int64) for t, c in features.LABEL_COLUMNS.items()}
             for d in (train, valid))
    n_age = len(encoders.age_edges)
    out = {"age_gender": _fit_one(train, valid, task(y["age_gender"], yv["age_gender"],
                                                     2 * n_age, "age_gender", valid_weights,
                                                     "AgeGender"), encoders, train_cfg,
                                  lr_hparams)}
    # the other heads reuse AgeGender's penalty per feature (when it chose them): its search is
    # the costly part, and the features' noise levels are the same for every head
    if aid_l2_rows is not None:
        corn = age_head != "softmax"
        out["gender"] = prior_start(encoders, priors["train"]["gender"], False, aid_l2_rows)
        out["age"] = prior_start(encoders, priors["train"]["age"], corn, aid_l2_rows)
        return out
    chosen = out["age_gender"].get("feature_penalty") or {}
    lr_hparams = {**(lr_hparams or {}), "per_feature_l2": False, "feature_penalty": chosen}
    out["gender"] = _fit_one(train, valid, task(y["gender"], yv["gender"], 2, "gender",
                                                valid_weights, "gender"),
                             encoders, train_cfg, lr_hparams)
    if age_head == "softmax":
        out["age"] = _fit_one(train, valid, task(y["age"], yv["age"], n_age, "age",
                                                 valid_weights, "age"),
                              encoders, train_cfg, lr_hparams)
    else:
        out["age"] = _fit_corn(train, valid, y["age"], yv["age"], n_age, priors,
                               valid_weights, encoders, train_cfg, lr_hparams)
    return out


def _fit_one(train: Mapping, valid: Mapping, task: LinearTask, encoders: Encoders,
             train_cfg: TrainConfig, lr_hparams: Mapping | None) -> dict:
    model, summary = fit_linear(train, valid, task, encoders, train_cfg, lr_hparams)
    start = model.logit_tables()
    c = float(summary["C"])
    # A binary LR's logit w is stored as two softmax columns -w/2, +w/2: the same penalty
    # |w|**2 / (2 C) on them takes twice the strength per column.
    per_column = (1.0 if task.n_classes == 2 else 0.5) / c
    return {**start, "l2_rows": [per_column] * task.n_classes, "C": [c],
            "val_loss": [float(summary["best_val_loss"])],
            "feature_penalty": summary.get("feature_penalty", {})}


def _fit_corn(train: Mapping, valid: Mapping, y: np.ndarray, yv: np.ndarray, n_age: int,
              priors: Mapping, valid_weights: np.ndarray, encoders: Encoders,
              train_cfg: TrainConfig, lr_hparams: Mapping | None) -> dict:
    """The CORN head's K-1 logits, each a binary LR ``y > k`` on the rows with ``y >= k``
    (a task with one class left starts at zero with the log-odds of its training prior)."""
    def sub(d: Mapping, mask: np.ndarray) -> dict:
        return {f: np.asarray(d[f])[mask] for f in features.FEATURE_NAMES}

    pt, pn = (np.asarray(priors[p]["age"], dtype=np.float64) for p in ("train", "natural"))
    cols = []
    for k in range(n_age - 1):
        m, mv = y >= k, yv >= k
        yk, yvk = (y[m] > k).astype(np.int64), (yv[mv] > k).astype(np.int64)
        prior_t = [pt[k], pt[k + 1:].sum()]
        prior_n = [pn[k], pn[k + 1:].sum()]
        if len(np.unique(yk)) < 2 or len(yvk) == 0:
            cols.append(_constant_logit(encoders, np.log(max(prior_t[1], 1e-12)
                                                          / max(prior_t[0], 1e-12))))
            continue
        task = LinearTask(yk, yvk, 2, prior_t, prior_n, valid_weights[mv], f"age > {k}")
        fit = _fit_one(sub(train, m), sub(valid, mv), task, encoders, train_cfg, lr_hparams)
        # binary weights are stored as (-w/2, +w/2): the logit of "y > k" is their difference
        cols.append({"tables": {f: t[:, 1:] - t[:, :1] for f, t in fit["tables"].items()},
                     "numeric": fit["numeric"][:, 1:] - fit["numeric"][:, :1],
                     "bias": fit["bias"][1:] - fit["bias"][:1],
                     "l2_rows": [fit["l2_rows"][0] / 2],  # back to |w|**2 / (2 C)
                     "C": fit["C"], "val_loss": fit["val_loss"]})
    return {"tables": {f: np.concatenate([c["tables"][f] for c in cols], axis=1)
                       for f in features.CATEGORICAL_FEATURES},
            "numeric": np.concatenate([c["numeric"] for c in cols], axis=1),
            "bias": np.concatenate([c["bias"] for c in cols]),
            "l2_rows": [v for c in cols for v in c["l2_rows"]],
            "C": [v for c in cols for v in c["C"]],
            "val_loss": [v for c in cols for v in c["val_loss"]]}


def _constant_logit(encoders: Encoders, logit: float) -> dict:
    return {"tables": {f: np.zeros((encoders.vocabularies[f].size, 1))
                       for f in features.CATEGORICAL_FEATURES},
            "numeric": np.zeros((len(features.NUMERIC_FEATURES), 1)),
            "bias": np.array([logit]), "l2_rows": [0.0], "C": [], "val_loss": []}


def prior_start(encoders: Encoders, train_prior: Any, corn: bool, l2_rows: float) -> dict:
    """A head that starts at its training prior: zero tables and numeric weights, biases the
    prior's log-probabilities (softmax) or, for CORN, the log-odds of each task ``y > k``
    among ``y >= k``."""
    p = np.maximum(np.asarray(train_prior, dtype=np.float64), 1e-12)
    if corn:
        bias = np.array([np.log(max(p[k + 1:].sum(), 1e-12) / p[k]) for k in range(len(p) - 1)])
    else:
        bias = np.log(p / p.sum())
    units = len(bias)
    return {"tables": {f: np.zeros((encoders.vocabularies[f].size, units))
                       for f in features.CATEGORICAL_FEATURES},
            "numeric": np.zeros((len(features.NUMERIC_FEATURES), units)),
            "bias": bias, "l2_rows": [float(l2_rows)] * units, "C": [], "val_loss": []}
