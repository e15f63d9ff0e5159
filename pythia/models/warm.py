"""Regional fits started from a fitted global model of the same kind (``fit(..., start=m)``).

Each learner's warm fit keeps the start's encoding (logreg's one-hot columns and
standardisation, gbdt's category codes and bins, the networks' graphs), continues training on
the region's rows for a bounded budget (the model's ``warm_*`` hparams), and keeps the start
itself when no step beats it on the region's validation: a warm model is never worse than its
start there, by construction. ``start_record`` is what the fit summary says about it.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import numpy as np

from pythia import features
from pythia.models.base import labels_of


def start_record(val_loss_at_start: float, best_val_loss: float, kept: int, tried: int,
                 measure: str) -> dict:
    """The fit summary's ``start``: the start's and the kept validation loss on the region,
    whether the regional steps improved on it, how many of them the model keeps
    (``epochs_or_iterations``; 0 = the start) and how many ran (``tried``)."""
    return {"warm": True, "val_loss_at_start": float(val_loss_at_start),
            "best_val_loss": float(best_val_loss),
            "improved": bool(best_val_loss < val_loss_at_start),
            "epochs_or_iterations": int(kept), "tried": int(tried), "measure": measure}


# ------------------------------------------------------------------ logistic regression

def fit_logreg_warm(model: Any, train: Mapping, valid: Mapping) -> dict:
    """One L-BFGS fit on the region's rows from the start's coefficients, with the start's
    columns, standardisation, C and per-feature penalties (no regularisation path); the
    start's weights are kept when the fit does not lower the natural-weighted validation
    log-loss."""
    from pythia.models.design import design_matrix, diag
    from pythia.models.logreg import LinearTask

    start = model.start
    if start.coef is None or start.chosen_c is None:
        raise ValueError("logreg start has no fitted weights or chosen C: fit or load a "
                         "complete logreg model to start from")
    y, yv = labels_of(train)["age_gender"], labels_of(valid)["age_gender"]
    k = model.n_classes["age_gender"]
    task = LinearTask(y, yv, k, model.priors["train"]["age_gender"],
                      model.priors["natural"]["age_gender"], model.validation_weights(yv))
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
    print(f"logreg: started from the global fit (C={model.chosen_c:g}), validation AgeGender "
          f"log-loss {at_start:.4f}; {iters} L-BFGS iteration(s) on {len(y)} rows -> "
          f"{'kept ' + format(best, '.4f') if record['improved'] else 'no gain: kept the start'}")
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


# ------------------------------------------------------------------ gradient boosting

def _kept_bins_classifier(base: Any) -> Any:
    """A ``HistGradientBoostingClassifier`` subclass whose warm fit keeps the start's category
    encoder, bin mapper and classes. scikit-learn's own ``warm_start`` (1.9) refits all three
    on the new rows, so the old trees would read other category codes and bins: on a region
    lacking some category values, the start's 55 trees' validation log-loss went from 2.07 to
    2.15 with no tree added."""

    class KeptBins(base):
        def _preprocess_X(self, X, *, reset):
            if reset:  # fit: the start's category encoder, not one refitted on these rows
                return self._preprocessor.transform(X), None
            return super()._preprocess_X(X, reset=reset)

        def _bin_data(self, X, sample_weight, is_training_data):
            self._bin_mapper = self._kept_bin_mapper
            binned = self._bin_mapper.transform(X)
            return binned if is_training_data else np.ascontiguousarray(binned)

        def _encode_y(self, y):
            # the start's label encoder and tree count per iteration stay as they are
            return self._label_encoder.transform(y).astype(np.float64, copy=False)

    return KeptBins


def fit_gbdt_warm(model: Any, train: Mapping, valid: Mapping) -> dict:
    """The start's trees, then up to ``warm_max_iter`` trees more fitted on the region's
    rows (the start's category codes and bins), early-stopped on the region's validation and
    cut back to the best count (0: the start)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    from pythia.models.gbdt import known_class_rows, openmp_threads, predict_binned_proba, \
        to_matrix

    start, h = model.start, model.hparams
    model.category_maps = {f: t.copy() for f, t in start.category_maps.items()}
    y, yv = labels_of(train)["age_gender"], labels_of(valid)["age_gender"]
    classes = np.asarray(start.clf.classes_)
    unseen = sorted(set(np.unique(y).tolist()) - set(classes.tolist()))
    if unseen:
        raise ValueError(f"gbdt start has no trees for AgeGender class(es) {unseen} the "
                         f"region's training rows hold: fit this region from scratch")
    keep = known_class_rows(yv, classes)
    Xv = to_matrix({f: np.asarray(valid[f])[keep] for f in features.FEATURE_NAMES},
                   model.category_maps)
    threads = openmp_threads(int(h["n_threads"]), len(y))
    n0 = int(start.clf.n_iter_)
    with threadpool_limits(threads, user_api="openmp"):
        p = predict_binned_proba(start.clf, Xv, threads)
    yv_idx = np.searchsorted(classes, yv[keep])
    at_start = float(-np.mean(np.log(np.maximum(p[np.arange(len(yv_idx)), yv_idx], 1e-15))))
    clf = _kept_bins_classifier(HistGradientBoostingClassifier)()
    clf.__dict__.update(copy.deepcopy(start.clf.__dict__))
    clf._kept_bin_mapper = start.clf._bin_mapper
    clf.set_params(warm_start=True, max_iter=n0 + int(h["warm_max_iter"]), early_stopping=True,
                   scoring="loss", n_iter_no_change=int(h["n_iter_no_change"]),
                   learning_rate=h["learning_rate"], max_leaf_nodes=int(h["max_leaf_nodes"]),
                   min_samples_leaf=int(h["min_samples_leaf"]),
                   l2_regularization=h["l2_regularization"])
    # early stopping compares the added trees with the start on THIS validation (the start's
    # own scores are the global validation's); the start's training score is not computed
    clf.validation_score_, clf.train_score_ = np.array([-at_start]), np.array([np.nan])
    if int(h["warm_max_iter"]) > 0 and keep.any():
        with threadpool_limits(threads, user_api="openmp"):
            clf.fit(to_matrix(train, model.category_maps), y, X_val=Xv, y_val=yv[keep])
    scores = np.asarray(clf.validation_score_, dtype=np.float64)
    added = int(np.argmax(scores))  # the first best: 0 = the start itself
    clf._predictors = clf._predictors[:n0 + added]
    plain = HistGradientBoostingClassifier()  # saved models stay plain scikit-learn objects
    plain.__dict__.update({k: v for k, v in clf.__dict__.items() if k != "_kept_bin_mapper"})
    plain.validation_score_, plain.train_score_ = scores[:added + 1], clf.train_score_[:added + 1]
    plain.set_params(warm_start=False, max_iter=n0 + added)
    model.clf = plain
    record = start_record(at_start, -scores[added], added, len(scores) - 1,
                          "AgeGender log-loss (gbdt's own early stopping)")
    print(f"gbdt: started from the global model's {n0} iteration(s), validation AgeGender "
          f"log-loss {at_start:.4f}; {len(scores) - 1} iteration(s) tried on {len(y)} rows, "
          f"kept {added} -> {-scores[added]:.4f}")
    return {"epochs": added, "best_val_loss": float(-scores[added]),
            "n_valid_unknown_class": int((~keep).sum()), "start": record}


# ------------------------------------------------------------------ networks

# MLP knobs that shape the graph: a warm fit trains the start's own graph, so they must agree
MLP_GRAPH_KNOBS = ("hidden_units", "embedding_max_dim", "age_head", "wide", "dropout",
                   "wide_scale")


def fit_mlp_warm(model: Any, train: Any, valid: Any) -> dict:
    """The start's graph and weights (its LR start is not refitted), then up to
    ``warm_epochs`` epochs at ``learning_rate`` on the region's rows (the wide part trains
    only with ``warm_wide_train``); ``KeepBest`` scores the start first, so the start is kept
    when no epoch beats it on the region's natural-weighted validation."""
    import keras

    from pythia.models.wide import KeepBest

    start, h = model.start, model.hparams
    differ = {k: (h[k], start.hparams.get(k)) for k in MLP_GRAPH_KNOBS
              if k in start.hparams and list(np.ravel(h[k])) != list(np.ravel(start.hparams[k]))}
    if differ:
        raise ValueError(f"mlp can start only from an mlp of the same graph; knobs differ "
                         f"(this, start): {differ}")
    keras.utils.set_random_seed(model.train_cfg.seed)
    model.keras_model = keras.models.clone_model(start.keras_model)
    model.keras_model.set_weights(start.keras_model.get_weights())
    epochs = int(h["warm_epochs"])
    patience = model.train_cfg.patience if h["patience"] is None else h["patience"]
    keep = KeepBest(lambda: model.natural_val_losses(valid), int(patience),
                    float(h["min_delta"]), kept=lambda: model._scored_valid)
    if epochs > 0:
        model._train_phase(train, float(h["learning_rate"]), bool(h["warm_wide_train"]),
                           epochs, keep)
        model._kept_valid = keep.best_kept
    else:
        keep.history = [model.natural_val_losses(valid)]
        model._kept_valid = model._scored_valid
    first, best = keep.history[0], keep.history[keep.best_index]
    record = start_record(first["age_gender"], best["age_gender"], keep.best_index,
                          len(keep.history) - 1, "natural-weighted AgeGender log-loss")
    trail = ", ".join(f"{s['age_gender']:.4f}" for s in keep.history)
    print(f"mlp: started from the global model; validation AgeGender log-loss by epoch "
          f"{trail}; kept epoch {keep.best_index}")
    return {"epochs": keep.best_index, "best_val_loss": best["age_gender"],
            "best_epoch": keep.best_index, "age_head": model.age_head,
            "val_loss_by_epoch": keep.history, "start": record}


def fit_tabnet_warm(model: Any, train: Mapping, valid: Mapping) -> dict:
    """The start's network, then up to ``warm_epochs`` epochs at ``learning_rate`` on the
    region's rows (TabNet's early stopping, patience as configured), kept only when its best
    epoch beats the start on the region's validation (TabNet's own log-loss)."""
    import torch

    from pythia.models.gbdt import known_class_rows
    from pythia.models.tabnet import ValidLogLoss, set_torch_threads, to_matrix

    start, h, cfg = model.start, model.hparams, model.train_cfg
    y, yv = labels_of(train)["age_gender"], labels_of(valid)["age_gender"]
    unseen = sorted(set(np.unique(y).tolist()) - set(start.classes.tolist()))
    if unseen:
        raise ValueError(f"tabnet start has no outputs for AgeGender class(es) {unseen} the "
                         f"region's training rows hold: fit this region from scratch")
    set_torch_threads(h["num_threads"], len(y))
    torch.manual_seed(cfg.seed)
    keep = known_class_rows(yv, np.unique(y))
    Xv = to_matrix(valid)[keep]
    yv_idx = np.searchsorted(start.classes, yv[keep])
    at_start = ValidLogLoss()(yv_idx, start.clf.predict_proba(Xv)) if keep.any() else np.nan
    clf, best, kept, tried = start.clf, at_start, 0, 0
    if int(h["warm_epochs"]) > 0 and keep.any():
        clf = copy.deepcopy(start.clf)
        clf.keep_classes = start.classes  # the start's outputs, even for a region's subset
        clf.optimizer_params = {"lr": float(h["learning_rate"])}
        clf.fit(to_matrix(train), y, eval_set=[(Xv, yv[keep])], eval_name=["valid"],
                eval_metric=[ValidLogLoss], max_epochs=int(h["warm_epochs"]),
                patience=cfg.patience, batch_size=int(h["batch_size"]),
                virtual_batch_size=int(h["virtual_batch_size"]), num_workers=0,
                drop_last=False, pin_memory=False, compute_importance=False, warm_start=True)
        clf.keep_classes = None
        val = [float(v) for v in clf.history.history.get("valid_logloss_all", [])]
        tried = len(val)
        if val and min(val) < at_start:
            best, kept = min(val), int(clf.best_epoch) + 1
        else:  # keep the start
            clf = start.clf
    model.clf = copy.deepcopy(clf) if clf is start.clf else clf  # never share the start's
    model.classes = start.classes.copy()
    record = start_record(at_start, best, kept, tried, "AgeGender log-loss (TabNet's own)")
    print(f"tabnet: started from the global model, validation AgeGender log-loss "
          f"{at_start:.4f}; {tried} epoch(s) tried, kept {kept} -> {best:.4f}")
    return {"epochs": kept, "best_val_loss": float(best), "best_epoch": kept,
            "n_valid_unknown_class": int((~keep).sum()), "start": record}
