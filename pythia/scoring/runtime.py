"""NumPy forward pass of an exported MLP, rearranged for bid-time latency (NumPy only).

What made it fast was fewer array operations per request, not a faster engine:

* one request: all embedding tables are pre-multiplied by their slice of the first trunk
  layer's weights and stacked into ONE table, so the first layer is a single gather and a
  weighted row sum (``sum_i E_i[id_i] @ W1_i == (concat_i E_i[id_i]) @ W1``, exact up to float
  rounding); a batch gathers the narrow embeddings from one padded table instead;
* the heads share one matrix; temperatures are folded into the head weights and the Bayes prior
  ratio of softmax heads into their bias (``softmax(z + log r) == softmax(z) * r / norm``);
* the softmax groups are normalised together (segment max / sum with ``reduceat``);
* the optional wide part (a logit row per categorical value and head, and a linear term of the
  numerics) is laid out like the fused heads, temperature and link scale folded in: one gather,
  a sum and a small matmul added to the logits.

The export format is the ``numpy_layers`` payload of ``pythia.models.export`` (``MLPModel.
export_numpy()``; see ``check_export``); ``pythia.scoring.runtimes`` stores and loads it.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from pythia import features
from pythia.features import GENDER_CLASSES, TARGETS, Encoders, marginals_from_joint
# the format lives in export_format; re-exported here, where callers have always found it
from pythia.scoring.export_format import (ACTIVATIONS, EXPORT_KEYS, LINKS,  # noqa: F401
                                          WIDE, WIDE_NUMERIC, check_export, load_export_npz,
                                          save_export_npz)

DTYPES = ("float32", "float64")
N_GENDER = len(GENDER_CLASSES)
JOINT = "age_gender"  # gender and age are output as its marginals
# Above this size the pre-multiplied table would cost too much memory: keep the embeddings as
# they are and multiply after the gather (same numbers, one matmul more per call).
MAX_FUSED_TABLE_BYTES = 1 << 30


# ---------------------------------------------------------------------- fused runtime

class FusedMLP:
    """The exported MLP as a few fused NumPy arrays, with a one-request and a batch path.

    * One request (``predict_one``): the embeddings are pre-multiplied by their slice of the
      first trunk layer and stacked, with the numeric rows of that layer and its bias, into ONE
      table; the first layer is then one gather and one vector-matrix product
      (``[1..1, x_num, 1] @ table[rows]``), and the links run on Python floats, which beats
      NumPy calls on arrays this small.
    * A batch (``predict``): the pre-multiplied rows are 256 floats wide, which makes a large
      gather memory-bound; the batch path instead gathers the narrow embeddings from one
      zero-padded table (one gather, a free reshape) and multiplies by the first layer, in
      cache-sized chunks.

    Args:
        export: an ``export_numpy()`` dict (checked with ``check_export``).
        encoders: the training encoders (vocabulary sizes, age edges).
        dtype: 'float32' or 'float64' for the weights and the arithmetic.
        max_fused_bytes: largest pre-multiplied table; above it ``predict_one`` uses the batch
            path (same numbers, slower).
    """

    chunk_rows = 256  # rows per batch step: keeps the gathered block in cache (measured)

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
        head_W, head_b, self._layout = self._fuse_heads(export)
        self._wide, self._wide_numeric = self._fuse_wide(export, dt)
        # Every affine map in order; the heads, fused into one, come last.
        affine = [(np.asarray(W, f64), np.asarray(b, f64), act) for W, b, act in export["trunk"]]
        affine.append((head_W, head_b, "heads"))
        W1, b1, self._act1 = affine[0]
        starts = np.cumsum([0] + dims)
        num_W1 = W1[starts[-1]:starts[-1] + n_num]
        self.offsets = np.cumsum([0] + [t.shape[0] for t in tables[:-1]]).astype(np.int64)
        n_rows = int(sum(t.shape[0] for t in tables))

        # Batch path: embeddings zero-padded to one width, W1's rows laid out to match.
        width = max(dims)
        self._padded = np.concatenate(
            [np.pad(t, ((0, 0), (0, width - t.shape[1]))) for t in tables]).astype(dt)
        blocks = [np.pad(W1[s:s + d], ((0, width - d), (0, 0))) for s, d in zip(starts, dims)]
        self._W1_padded = np.concatenate(blocks + [num_W1]).astype(dt)
        self.b1 = b1.astype(dt)
        self.layers = [(W.astype(dt), b.astype(dt), act) for W, b, act in affine[1:]]

        # One-request path: pre-multiplied rows, then numeric rows, then the bias row.
        self.premultiplied = (n_rows + n_num + 1) * W1.shape[1] * dt.itemsize <= max_fused_bytes
        if self.premultiplied:
            self._fused = np.concatenate(
                [t @ W1[s:s + d] for t, s, d in zip(tables, starts, dims)]
                + [num_W1, b1[None, :]]).astype(dt)
            self._extra_rows = list(range(n_rows, n_rows + n_num + 1))
            self._offsets_list = self.offsets.tolist()
            self._ones = [1.0] * n_cat

    @staticmethod
    def _fuse_heads(export: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, dict]:
        """One (width, sum of outputs) head matrix: softmax heads first, CORN heads after."""
        soft = [t for t in TARGETS if export["heads"][t][2] == "softmax"]
        corn = [t for t in TARGETS if export["heads"][t][2] == "corn"]
        Ws, bs, slices, scales, col = [], [], {}, {}, 0
        for t in soft + corn:
            W, b, link = export["heads"][t]
            temperature = float(export["temperature"][t])
            ratio = np.asarray(export["prior_ratio"][t], dtype=np.float64)
            if link == "softmax":
                scale = 1.0 / temperature
                with np.errstate(divide="ignore"):
                    shift = np.log(ratio)  # a zero ratio is a class ruled out: -inf logit
            else:
                # sigmoid(x) = 0.5 + 0.5 * tanh(x / 2): tanh never overflows.
                scale, shift = 0.5 / temperature, 0.0
            scales[t] = scale
            Ws.append(np.asarray(W, np.float64) * scale)
            bs.append(np.asarray(b, np.float64) * scale + shift)
            slices[t] = (col, col + Ws[-1].shape[1])
            col += Ws[-1].shape[1]
        n_soft = slices[soft[-1]][1]
        starts = np.array([slices[t][0] for t in soft], dtype=np.intp)
        group_of_col = np.repeat(np.arange(len(soft)), [slices[t][1] - slices[t][0]
                                                         for t in soft])
        ratios = {t: np.asarray(export["prior_ratio"][t], np.float64) for t in corn}
        layout = {"soft": soft, "corn": corn, "slices": slices, "n_soft": n_soft, "scale": scales,
                  "starts": starts, "group_of_col": group_of_col, "corn_ratio": ratios,
                  "corn_ratio_list": {t: r.tolist() for t, r in ratios.items()}}
        return np.concatenate(Ws, axis=1), np.concatenate(bs), layout

    def _fuse_wide(self, export: Mapping[str, Any], dt: np.dtype
                   ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The wide part in the fused head layout, scaled like the heads: one (sum of table
        rows, sum of outputs) table (rows offset like the embeddings) and one numeric matrix."""
        if WIDE not in export:
            return None, None
        order = self._layout["soft"] + self._layout["corn"]
        scale = self._layout["scale"]
        per_head = {t: dict(export[WIDE][t]) for t in order}
        table = np.concatenate([np.concatenate(
            [np.asarray(per_head[t][name], np.float64) * scale[t] for t in order], axis=1)
            for name, _ in export["embeddings"]])
        numeric = np.concatenate([np.asarray(export[WIDE_NUMERIC][t], np.float64) * scale[t]
                                  for t in order], axis=1)
        return table.astype(dt), numeric.astype(dt)

    # ------------------------------------------------------------------ batch path
    def predict(self, ids: np.ndarray, numeric: np.ndarray) -> dict[str, np.ndarray]:
        """Probabilities per target (natural priors) for encoded rows.

        Args:
            ids: (n, n_categorical) vocabulary ids in ``FEATURES`` order.
            numeric: (n, n_numeric) normalised numerics.

        Returns:
            {target: (n, n_classes) float64}, rows summing to 1.
        """
        n = len(ids)
        if n <= self.chunk_rows:
            return self._links(self._logits(ids, numeric))
        z = np.empty((n, self.layers[-1][0].shape[1]), dtype=self.dtype)
        for a in range(0, n, self.chunk_rows):
            z[a:a + self.chunk_rows] = self._logits(ids[a:a + self.chunk_rows],
                                                    numeric[a:a + self.chunk_rows])
        return self._links(z)

    def _logits(self, ids: np.ndarray, numeric: np.ndarray) -> np.ndarray:
        n = len(ids)
        x = np.concatenate([self._padded[ids + self.offsets].reshape(n, -1),
                            numeric.astype(self.dtype, copy=False)], axis=1)
        h = x @ self._W1_padded
        h += self.b1
        z = self._hidden_to_logits(h)
        if self._wide is not None:
            z += self._wide[ids + self.offsets].sum(axis=1)
            z += numeric.astype(self.dtype, copy=False) @ self._wide_numeric
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

    def _links(self, z: np.ndarray) -> dict[str, np.ndarray]:
        lay = self._layout
        out: dict[str, np.ndarray] = {}
        zs = z[:, :lay["n_soft"]]
        starts, group = lay["starts"], lay["group_of_col"]
        e = np.exp(zs - np.maximum.reduceat(zs, starts, axis=1)[:, group])
        e /= np.add.reduceat(e, starts, axis=1)[:, group]
        e = e.astype(np.float64, copy=False)
        for t in lay["soft"]:
            a, b = lay["slices"][t]
            out[t] = e[:, a:b]
        for t in lay["corn"]:
            if t != JOINT:  # only AgeGender reaches the output (its marginals give the rest)
                continue
            a, b = lay["slices"][t]
            # P(y > k) = prod_{j <= k} sigmoid(l_j); class k gets P(y > k-1) - P(y > k).
            survival = np.cumprod(0.5 + 0.5 * np.tanh(z[:, a:b].astype(np.float64)), axis=1)
            n = len(z)
            edges = np.concatenate([np.ones((n, 1)), survival, np.zeros((n, 1))], axis=1)
            p = (edges[:, :-1] - edges[:, 1:]) * lay["corn_ratio"][t]
            total = p.sum(axis=1, keepdims=True)
            dead = total[:, 0] <= 0
            if dead.any():  # every class with mass was ruled out by the prior ratio
                p[dead], total[dead] = 1.0, p.shape[1]
            out[t] = p / total
        return marginals_from_joint(out[JOINT], out[JOINT].shape[1] // N_GENDER)

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
        if self._wide is not None:
            z += self._wide[rows].sum(axis=0)
            z += weights[len(rows):-1] @ self._wide_numeric
        return self._links_one(z.tolist())

    def _links_one(self, z: list[float]) -> dict[str, list[float]]:
        """``_links`` for one row of logits, on Python floats."""
        lay = self._layout
        out: dict[str, list[float]] = {}
        for t in lay["soft"]:
            if t != JOINT:  # the gender and age heads are training aids: not computed here
                continue
            a, b = lay["slices"][t]
            part = z[a:b]
            top = max(part)
            e = [math.exp(v - top) for v in part]
            total = sum(e)
            out[t] = [v / total for v in e]
        for t in lay["corn"]:
            if t != JOINT:
                continue
            a, b = lay["slices"][t]
            survival, s = [1.0], 1.0
            for v in z[a:b]:
                s *= 0.5 + 0.5 * math.tanh(v)
                survival.append(s)
            survival.append(0.0)
            p = [(hi - lo) * r for hi, lo, r in zip(survival, survival[1:],
                                                   lay["corn_ratio_list"][t])]
            total = sum(p)
            out[t] = [v / total for v in p] if total > 0 else [1.0 / len(p)] * len(p)
        joint = out[JOINT]
        n_age = len(joint) // N_GENDER
        return {"gender": [sum(joint[g * n_age:(g + 1) * n_age]) for g in range(N_GENDER)],
                "age": [sum(joint[g * n_age + a] for g in range(N_GENDER)) for a in range(n_age)],
                JOINT: joint}
