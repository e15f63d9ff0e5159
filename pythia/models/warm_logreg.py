"""A logistic regression fitted on a region's rows from the fitted global one
(``LogRegModel.fit(..., start=global)``): the start's columns, standardisation, C and penalties,
one L-BFGS fit from its weights, the start kept when the fit does not beat it on validation.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from pythia.models import notes
from pythia.models.base import start_record
from pythia.models.design import design_matrix, diag


def fit_logreg_warm(model: Any, train: Mapping, valid: Mapping, task: Any) -> dict:
    """One L-BFGS fit on the region's rows from the start's coefficients, with the start's
    columns, standardisation, C and per-feature penalties (no regularisation path); the
    start's weights are kept when the fit does not lower the natural-weighted validation
    log-loss."""
    start = model.start
    if start.coef is None or start.chosen_c is None:
        raise ValueError("logreg start has no fitted weights or chosen C: fit or load a "
                         "complete logreg model to start from")
    y = task.y
    model.tables = {f: t.copy() for f, t in start.tables.items()}
    model.n_onehot, model.chosen_c = start.n_onehot, float(start.chosen_c)
    model.num_mean, model.num_std = start.num_mean.copy(), start.num_std.copy()
    model.col_scale = None if start.col_scale is None else start.col_scale.copy()
    model.feature_penalty = dict(start.feature_penalty)
    Xv = design_matrix(valid, model.tables, model.n_onehot, model.num_mean, model.num_std,
                       np.float64)
    model.coef, model.intercept = start.coef.copy(), start.intercept.copy()
    at_start = model._valid_loss(Xv, task)
    best, iters = at_start, 0
    classes = np.unique(y)
    max_iter, prior = int(model.hparams["warm_max_iter"]), model.hparams["warm_prior"]
    if prior not in ("zero", "start"):
        raise ValueError(f"logreg warm_prior must be 'zero' or 'start', got {prior!r}")
    if max_iter > 0 and len(classes) >= 2:
        Xt = design_matrix(train, model.tables, model.n_onehot, model.num_mean, model.num_std)
        scale = np.ones(Xt.shape[1]) if model.col_scale is None else model.col_scale
        if model.col_scale is not None:
            Xt = Xt @ diag(scale)
        stop = (float(model.hparams["warm_tol"]), max_iter)
        if prior == "start":
            iters = _fit_toward(model, Xt, y, start.coef / scale[:, None], start.intercept,
                                stop)
            loss = model._valid_loss(Xv, task)
        else:
            # weights of the scaled columns, for the classes the region's rows hold
            W, b = (start.coef / scale[:, None])[:, classes].T, start.intercept[classes]
            if len(classes) == 2:  # sklearn's binary form: one logit, class 1 against 0
                W, b = (W[1] - W[0])[None, :], np.array([b[1] - b[0]])
            warm = type("Warm", (), {"coef_": W, "intercept_": b})()
            step = model._fit_point(Xt, y, Xv, task, model.chosen_c, warm, stop)
            iters, loss = step["n_iter"], step["val_loss"]
        if loss < at_start:
            best = loss
        else:  # keep the start
            model.coef, model.intercept = start.coef.copy(), start.intercept.copy()
    record = start_record(at_start, best, iters if best < at_start else 0, iters,
                          "natural-weighted AgeGender log-loss")
    notes.say("logreg", f"AgeGender {at_start:.4f} at the start (C={model.chosen_c:g}); "
              f"{iters} L-BFGS iteration(s) -> "
              f"{format(best, '.4f') if record['improved'] else 'no gain: kept the start'}")
    return {"epochs": record["epochs_or_iterations"], "best_val_loss": float(best),
            "C": model.chosen_c, "feature_penalty": dict(model.feature_penalty), "start": record}


def _fit_toward(model: Any, Xt: Any, y: np.ndarray, W0: np.ndarray, b0: np.ndarray,
                stop: tuple[float, int]) -> int:
    """L-BFGS on ``mean log-loss + |W - W0|**2 / (2 C n)`` from ``(W0, b0)`` (the start's
    weights of the scaled columns): the start's L2 penalty, centred on the start instead of
    on 0, so that few regional rows move the global weights only as far as they support.
    Sets ``model``'s weights; returns the iterations run."""
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    n, (d, k) = len(y), W0.shape
    Y = np.zeros((n, k))
    Y[np.arange(n), y] = 1.0
    strength = 1.0 / (float(model.chosen_c) * n)

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W, b = theta[:d * k].reshape(d, k), theta[d * k:]
        z = np.asarray(Xt @ W) + b
        z -= z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        P = np.exp(z - lse[:, None])
        diff = W - W0
        loss = float(np.mean(lse - z[np.arange(n), y]) + 0.5 * strength * np.sum(diff ** 2))
        G = (P - Y) / n
        return loss, np.concatenate([(np.asarray(Xt.T @ G) + strength * diff).ravel(),
                                     G.sum(axis=0)])

    with threadpool_limits(1):
        res = minimize(loss_grad, np.concatenate([W0.ravel(), b0]), jac=True,
                       method="L-BFGS-B", options={"maxiter": stop[1], "gtol": stop[0]})
    scale = np.ones(d) if model.col_scale is None else model.col_scale
    model.coef = res.x[:d * k].reshape(d, k) * scale[:, None]
    model.intercept = res.x[d * k:].copy()
    return int(res.nit)
