"""A regional MLP's wide part refitted on the region's rows, with the start network's AgeGender
logits as a fixed offset (the MLP hparam ``warm_residual``; ``warm_mlp`` calls it first).

The warm epochs move the wide part at ``warm_lr`` (1e-3): Adam moves a weight by about that
per step, a region's rows give a few dozen steps, so a device make that means something else in
the region (the synthetic world's regional make effect: 0.05 nats of gender in APAC and
LATAM) is out of reach, and a region's MLP ends within 0.0002 of the global one. A logistic
regression on the same rows learns it (the regional logistic regression's gender on fresh APAC
users: 1.020 × population, the MLPs' 1.023). This fits that regression *on top of* the
network: for AgeGender, ``z + X Δ + δ`` with ``z`` the start's logits (fixed), ``X`` the wide
part's own inputs (one column per categorical id, and the numerics) and an L2 penalty
``l2_rows / n · |Δ|² / 2`` chosen on the region's validation rows from ``GRID`` (strongest
first; none when no strength beats the start by ``min_delta``). Convex, so no seed luck; then
``Δ`` is added to the wide part's AgeGender table and ``δ`` to the head's bias: the graph, the
export and every scorer stay as they are. The gender and age heads are training aids (the
answers are AgeGender's marginals) and are left as they are.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from pythia import features

GRID = (1000.0, 100.0, 10.0)  # l2_rows tried (a prior worth that many rows), strongest first
MAX_ITER = 200  # L-BFGS iterations per strength


def design(X: Mapping[str, np.ndarray], sizes: list[int]) -> Any:
    """The wide part's inputs as a sparse matrix: a one-hot block per categorical feature
    (``sizes``: vocabulary sizes, ``CATEGORICAL_FEATURES`` order), then the numerics."""
    from scipy import sparse

    names = features.CATEGORICAL_FEATURES
    offsets = np.cumsum([0] + sizes[:-1])
    n = len(np.asarray(X[names[0]]))
    cols = np.stack([np.asarray(X[f], dtype=np.int64) + o for f, o in zip(names, offsets)],
                    axis=1)
    onehot = sparse.csr_matrix((np.ones(cols.size), cols.ravel(),
                                np.arange(0, cols.size + 1, len(names))),
                               shape=(n, int(sum(sizes))))
    num = np.stack([np.asarray(X[f], dtype=np.float64) for f in features.NUMERIC_FEATURES],
                   axis=1)
    return sparse.hstack([onehot, sparse.csr_matrix(num)], format="csr")


def cross_entropy(z: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float:
    """Mean (``w``-weighted) softmax cross-entropy of logits ``z`` against classes ``y``."""
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    ce = lse - z[np.arange(len(y)), y]
    return float(np.average(ce, weights=w))


def fit_offset(X: Any, y: np.ndarray, z: np.ndarray, l2_rows: float,
               start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(Δ (d, K), δ (K)) minimising ``mean CE(z + X Δ + δ) + l2_rows / n · |Δ|² / 2`` by
    L-BFGS (from ``start``, the flattened (Δ, δ) of a stronger penalty, else zero)."""
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    n, d, k = len(y), X.shape[1], z.shape[1]
    Y = np.zeros((n, k))
    Y[np.arange(n), y] = 1.0
    strength = float(l2_rows) / n

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W, b = theta[:d * k].reshape(d, k), theta[d * k:]
        s = z + np.asarray(X @ W) + b
        s -= s.max(axis=1, keepdims=True)
        lse = np.log(np.exp(s).sum(axis=1))
        P = np.exp(s - lse[:, None])
        loss = float(np.mean(lse - s[np.arange(n), y]) + 0.5 * strength * np.sum(W ** 2))
        G = (P - Y) / n
        return loss, np.concatenate([(np.asarray(X.T @ G) + strength * W).ravel(),
                                     G.sum(axis=0)])

    x0 = np.zeros(d * k + k) if start is None else start
    with threadpool_limits(1):
        res = minimize(loss_grad, x0, jac=True, method="L-BFGS-B",
                       options={"maxiter": MAX_ITER, "gtol": 1e-6})
    return res.x[:d * k].reshape(d, k), res.x[d * k:].copy()


def refit_wide(model: Any, train: Any, valid: Any) -> dict:
    """Fit ``Δ, δ`` on the region's rows (bounded like the MLP's LR start: ``max_train_rows``)
    and add them to ``model.keras_model`` (a copy of the start's network). Returns the record:
    the natural-weighted validation AgeGender log-loss (temperature 1) before and after, and
    the ``l2_rows`` chosen (None: kept as it was)."""
    from pythia.models.base import labels_of
    from pythia.models.mlp_valid import sample_dataset

    cfg, names = model.train_cfg, list(features.CATEGORICAL_FEATURES)
    sizes = [model.encoders.vocabularies[f].size for f in names]
    (tr, _), (va, _) = (sample_dataset(train, cfg.max_train_rows, cfg.seed, "train"),
                        sample_dataset(valid, cfg.max_train_rows, cfg.seed, "validation"))
    y, yv = labels_of(tr)["age_gender"], labels_of(va)["age_gender"]
    z, zv = (model._predict_raw(d)["age_gender"].astype(np.float64) for d in (tr, va))
    X, Xv = design(tr, sizes), design(va, sizes)
    # the validation loss on the natural scale: the prior shift, and the rows' natural weights
    shift = np.log(np.asarray(model.prior_ratio["age_gender"], dtype=np.float64))
    wv = model.validation_weights(yv)
    before = cross_entropy(zv + shift, yv, wv)
    best, theta, tried = (before, None, None), None, []
    for l2_rows in GRID:
        W, b = fit_offset(X, y, z, l2_rows, theta)
        theta = np.concatenate([W.ravel(), b])
        loss = cross_entropy(zv + np.asarray(Xv @ W) + b + shift, yv, wv)
        tried.append({"l2_rows": l2_rows, "val_loss": loss})
        if loss < best[0] - float(model.hparams["min_delta"]):
            best = (loss, (W, b), l2_rows)
    record = {"val_loss_before": before, "val_loss_after": best[0], "l2_rows": best[2],
              "tried": tried, "rows": int(len(y))}
    if best[1] is not None:
        _add_to_wide(model.keras_model, *best[1], n_onehot=int(sum(sizes)))
    return record


def _add_to_wide(net: Any, W: np.ndarray, b: np.ndarray, n_onehot: int) -> None:
    """Add ``W`` (one-hot rows, then numeric rows) to the wide part's AgeGender columns (the
    last ``K`` of its table: heads in ``head_units`` order) and ``b`` to the head's bias."""
    wide = net.get_layer("wide")
    table, numeric = (np.asarray(v, dtype=np.float64) for v in wide.get_weights())
    k = W.shape[1]
    table[:, -k:] += W[:n_onehot] / wide.scale
    numeric[:, -k:] += W[n_onehot:] / wide.scale
    wide.set_weights([table.astype(np.float32), numeric.astype(np.float32)])
    head = net.get_layer("age_gender")
    kernel, bias = head.get_weights()
    head.set_weights([kernel, (bias + b).astype(bias.dtype)])
