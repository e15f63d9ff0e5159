"""NumPy forward pass of an exported MLP, rearranged for bid-time latency (NumPy only).

What made it fast was fewer and cheaper array operations, not a faster engine:

* only the AgeGender head is computed: the gender and age outputs are its marginals, so the
  two other heads (training aids) and their wide parts are left out of the forward pass;
* its temperature is folded into the head weights and the Bayes prior ratio into its bias
  (``softmax(z + log r) == softmax(z) * r / norm``); with a temperature per activity bin
  (``models.activity_temp``) the head stays unscaled and each row's logits are multiplied by
  ``1 / T`` of its bin before the prior's ``log r`` is added;
* one request: all embedding tables are pre-multiplied by their slice of the first trunk
  layer's weights and stacked into ONE table, so the first layer is a single gather and a
  weighted row sum (``sum_i E_i[id_i] @ W1_i == (concat_i E_i[id_i]) @ W1``, exact up to float
  rounding), and the softmax runs on Python floats;
* a batch: the first layer stays a matmul over the narrow embeddings (pre-multiplied rows are
  as wide as the layer, and gathering and adding them measured slower than the matmul they
  replace); tables of one width are stacked so one ``take`` gathers them all (the first
  layer's rows are permuted to match), ``take`` rather than fancy indexing (several times
  faster), the wide part gathered as (features, rows, classes) and summed over the first axis
  (summed over the middle axis it cost as much as the trunk's second layer), in chunks of
  ``chunk_rows`` rows.

The export format is the ``numpy_layers`` payload of ``pythia.models.export`` (``MLPModel.
export_numpy()``; see ``check_export``); ``pythia.scoring.runtimes`` stores and loads it.
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Mapping

import numpy as np

from pythia import features
from pythia.features import GENDER_CLASSES, TARGETS, Encoders, marginals_from_joint
# the format lives in export_format; re-exported here, where callers have always found it
from pythia.scoring.export_format import (ACTIVATIONS, ACTIVITY, EXPORT_KEYS,  # noqa: F401
                                          LINKS, WIDE, WIDE_NUMERIC, check_export,
                                          load_export_npz, save_export_npz)

DTYPES = ("float32", "float64")
N_GENDER = len(GENDER_CLASSES)
JOINT = "age_gender"  # gender and age are output as its marginals
# Above this size the pre-multiplied table would cost too much memory: keep the embeddings as
# they are and multiply after the gather (same numbers, one matmul more per call).
MAX_FUSED_TABLE_BYTES = 1 << 30


def joint_head(export: Mapping[str, Any]
               ) -> tuple[np.ndarray, np.ndarray, float, np.ndarray | None]:
    """The AgeGender head (float64) with ``1 / temperature`` folded into its weights and
    ``log(prior_ratio)`` into its bias, that scale (the wide part takes it too), and None.

    With a temperature per activity bin (export entry ``ACTIVITY``) nothing is folded: the
    head as it is, scale 1 and the prior's ``log r`` apart, for ``z * (1 / T_row) + log r``.
    ``check_export`` allows AgeGender only a softmax link, so its probabilities are
    ``softmax(z)``; a zero prior ratio gives a ``-inf`` logit (a class ruled out).
    """
    W, b, _ = export["heads"][JOINT]
    with np.errstate(divide="ignore"):
        shift = np.log(np.asarray(export["prior_ratio"][JOINT], dtype=np.float64))
    W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)
    if ACTIVITY in export:
        return W, b, 1.0, shift
    scale = 1.0 / float(export["temperature"][JOINT])
    return W * scale, b * scale + shift, scale, None


class ActivityScale:
    """Each row's ``1 / T`` from its bin of the normalised activity column (``ACTIVITY``)."""

    def __init__(self, export: Mapping[str, Any]) -> None:
        entry = export[ACTIVITY]
        self.column = list(export["numeric"]).index(entry["feature"])
        self.edges = [float(e) for e in entry["edges"]]
        self.inverse = [1.0 / float(t) for t in entry["temperature"]]
        self._edges, self._inverse = np.asarray(self.edges), np.asarray(self.inverse)
        # per bin, the factor of the head's deep logits (0: the wide part and bias alone)
        self.deep = [float(d) for d in entry["deep"]] if "deep" in entry else None

    def of_rows(self, numeric: np.ndarray, per_bin: Any = None) -> np.ndarray:
        """(n, 1) scales (or ``per_bin`` values) of a (n, n_numeric) batch."""
        bins = np.searchsorted(self._edges, numeric[:, self.column], side="right")
        return np.asarray(self._inverse if per_bin is None else per_bin).take(bins)[:, None]

    def of_one(self, numeric: list[float], per_bin: Any = None) -> float:
        values = self.inverse if per_bin is None else per_bin
        return values[bisect.bisect_right(self.edges, numeric[self.column])]


class FusedMLP:
    """The exported MLP as a few fused NumPy arrays, with a one-request and a batch path.

    * One request (``predict_one``): the embeddings are pre-multiplied by their slice of the
      first trunk layer and stacked, with the numeric rows of that layer and its bias, into ONE
      table; the first layer is then one gather and one vector-matrix product
      (``[1..1, x_num, 1] @ table[rows]``), and the softmax runs on Python floats, which beats
      NumPy calls on arrays this small.
    * A batch (``predict``): one ``np.take`` per group of equally wide embedding tables, a
      concatenate with the numerics, the first layer's matmul (its rows in group order), the
      rest of the trunk and the AgeGender head, in chunks of ``chunk_rows`` rows.

    Args:
        export: an ``export_numpy()`` dict (checked with ``check_export``).
        encoders: the training encoders (vocabulary sizes, age edges).
        dtype: 'float32' or 'float64' for the weights and the arithmetic.
        max_fused_bytes: largest pre-multiplied table; above it ``predict_one`` uses the batch
            path (same numbers, slower).
    """

    # Rows per batch step, measured on the default-shape MLP: 128..512 were slower, 2,048 and
    # 4,096 no faster (a 1,024-row step's first-layer activations are 1 MB in float32).
    chunk_rows = 1024
    # Up to this many rows the first layer sums pre-multiplied rows (as ``predict_one`` does):
    # fewer NumPy calls than a gather per width group (measured faster up to 8 rows, even at 16).
    few_rows = 8

    def __init__(self, export: Mapping[str, Any], encoders: Encoders, dtype: str = "float32",
                 max_fused_bytes: int = MAX_FUSED_TABLE_BYTES) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        check_export(export, encoders)
        self.dtype = dt = np.dtype(dtype)
        f64 = np.float64
        tables = [np.asarray(t, dtype=f64) for _, t in export["embeddings"]]
        dims = [t.shape[1] for t in tables]
        n_cat, n_num = len(tables), len(export["numeric"])
        self.labels = {t: features.class_labels(t, encoders.age_edges) for t in TARGETS}
        self.n_age = len(self.labels["age"])
        head_W, head_b, scale, self._shift = joint_head(export)
        self._activity = ActivityScale(export) if self._shift is not None else None
        self._head_b = head_b.astype(dt)  # kept where a bin's deep part is off
        self._deep = self._activity.deep if self._activity is not None else None
        if self._shift is not None:
            self._shift = self._shift.astype(dt)
        # Every affine map in order; the AgeGender head comes last.
        affine = [(np.asarray(W, f64), np.asarray(b, f64), act) for W, b, act in export["trunk"]]
        affine.append((head_W, head_b, "head"))
        W1, b1, self._act1 = affine[0]
        starts = np.cumsum([0] + dims)
        num_W1 = W1[starts[-1]:starts[-1] + n_num]
        self.n_out = head_W.shape[1]
        self.offsets = np.cumsum([0] + [t.shape[0] for t in tables[:-1]]).astype(np.int64)
        n_rows = int(sum(t.shape[0] for t in tables))

        # Batch path: tables grouped by width (widest first), W1's rows in the same order.
        by_width: dict[int, list[int]] = {}
        for j in sorted(range(n_cat), key=lambda j: -dims[j]):
            by_width.setdefault(dims[j], []).append(j)
        self._groups, rows = [], []
        for js in by_width.values():
            sizes = [tables[j].shape[0] for j in js]
            self._groups.append((np.concatenate([tables[j] for j in js]).astype(dt),
                                 np.array(js, dtype=np.intp),
                                 np.cumsum([0] + sizes[:-1]).astype(np.int64),
                                 dims[js[0]] * len(js)))  # (table, columns, offsets, width)
            rows += [r for j in js for r in range(starts[j], starts[j + 1])]
        self._W1_grouped = np.concatenate([W1[rows], num_W1]).astype(dt)
        self.b1 = b1.astype(dt)
        self.layers = [(W.astype(dt), b.astype(dt), act) for W, b, act in affine[1:]]
        # The wide part of AgeGender, scaled like its head: the features' tables stacked (rows
        # offset like `offsets`) and a numeric matrix.
        self._wide_stacked = self._wide_numeric = None
        if WIDE in export:
            self._wide_stacked = (np.concatenate([np.asarray(t, f64) for _, t
                                                  in export[WIDE][JOINT]]) * scale).astype(dt)
            self._wide_numeric = (np.asarray(export[WIDE_NUMERIC][JOINT], f64) * scale
                                  ).astype(dt)

        # One-request path: pre-multiplied rows, then numeric rows, then the bias row.
        self.premultiplied = (n_rows + n_num + 1) * W1.shape[1] * dt.itemsize <= max_fused_bytes
        if self.premultiplied:
            self._fused = np.concatenate(
                [t @ W1[s:s + d] for t, s, d in zip(tables, starts, dims)]
                + [num_W1, b1[None, :]]).astype(dt)
            self._extra_rows = list(range(n_rows, n_rows + n_num + 1))
            self._offsets_list = self.offsets.tolist()
            self._ones = [1.0] * n_cat

    # ------------------------------------------------------------------ batch path
    def predict(self, ids: np.ndarray, numeric: np.ndarray) -> dict[str, np.ndarray]:
        """Probabilities per target (natural priors) for encoded rows.

        Args:
            ids: (n, n_categorical) vocabulary ids in ``FEATURES`` order, each within its
                vocabulary (``RequestEncoder`` guarantees it; ONNX applies the boundary rules).
            numeric: (n, n_numeric) normalised numerics.

        Returns:
            {target: (n, n_classes) float64}, rows summing to 1; gender and age are the
            marginals of age_gender.
        """
        ids = np.asarray(ids)
        numeric = np.asarray(numeric).astype(self.dtype, copy=False)
        n, step = len(ids), self.chunk_rows
        if n <= step:
            z = self._logits(ids, numeric)
        else:
            z = np.empty((n, self.n_out), dtype=self.dtype)
            for a in range(0, n, step):
                z[a:a + step] = self._logits(ids[a:a + step], numeric[a:a + step])
        # softmax in place (z's rows are finite where a class has mass, -inf where ruled out)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return marginals_from_joint(z.astype(np.float64, copy=False), self.n_age)

    def _logits(self, ids: np.ndarray, numeric: np.ndarray) -> np.ndarray:
        """AgeGender logits (temperature and prior folded in) of one chunk."""
        n = len(ids)
        if n <= self.few_rows and self.premultiplied:  # fewer calls: the one-request table
            h = self._fused.take(ids + self.offsets, axis=0).sum(axis=1)
            h += numeric @ self._fused[self._extra_rows[:-1]]
            h += self._fused[self._extra_rows[-1]]
        else:
            x = np.concatenate([table.take(ids[:, cols] + offsets, axis=0).reshape(n, width)
                                for table, cols, offsets, width in self._groups] + [numeric],
                               axis=1)
            h = x @ self._W1_grouped
            h += self.b1
        z = self._hidden_to_logits(h)
        if self._deep is not None:  # wide-only bins: the head's kernel part times 0
            z -= self._head_b
            z *= self._activity.of_rows(numeric, self._deep).astype(self.dtype, copy=False)
            z += self._head_b
        if self._wide_stacked is not None:
            # (features, n, classes) then a sum over the first axis: contiguous adds
            rows = (ids + self.offsets).T
            z += np.add.reduce(self._wide_stacked.take(rows, axis=0), axis=0)
            z += numeric @ self._wide_numeric
        if self._activity is not None:  # the row's 1 / T, then the prior
            z *= self._activity.of_rows(numeric).astype(self.dtype, copy=False)
            z += self._shift
        return z

    def _hidden_to_logits(self, h: np.ndarray) -> np.ndarray:
        """The layers after the first: activation, then the next affine map (in place)."""
        act = self._act1
        for W, b, next_act in self.layers:
            if act == "relu":
                np.maximum(h, 0, out=h)
            h = h @ W
            h += b
            act = next_act
        return h

    # ------------------------------------------------------------------ one-request path
    def predict_one(self, ids: list[int], numeric: list[float]) -> dict[str, list[float]]:
        """``predict`` for one request, returning Python floats (see the class docstring)."""
        if not self.premultiplied:
            probs = self.predict(np.array([ids], dtype=np.int64),
                                 np.array([numeric], dtype=self.dtype))
            return {t: p[0].tolist() for t, p in probs.items()}
        rows = [i + o for i, o in zip(ids, self._offsets_list)]
        weights = np.array(self._ones + numeric + [1.0], dtype=self.dtype)
        z = self._hidden_to_logits(weights @ self._fused[rows + self._extra_rows])
        if self._deep is not None:
            z = (z - self._head_b) * self._activity.of_one(numeric, self._deep) + self._head_b
        if self._wide_stacked is not None:
            z += self._wide_stacked[rows].sum(axis=0)
            z += weights[len(rows):-1] @ self._wide_numeric
        if self._activity is not None:
            z = z * self._activity.of_one(numeric) + self._shift
        z = z.tolist()
        top = max(z)
        e = [math.exp(v - top) for v in z]
        total = sum(e)
        joint = [v / total for v in e]
        n_age = self.n_age
        return {"gender": [sum(joint[g * n_age:(g + 1) * n_age]) for g in range(N_GENDER)],
                "age": [sum(joint[g * n_age + a] for g in range(N_GENDER)) for a in range(n_age)],
                JOINT: joint}
