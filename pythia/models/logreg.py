"""Multinomial logistic-regression baseline: one-hot categoricals + standardised numerics.

One 12-class AgeGender model (gender and age are its marginals). Each categorical id gets its
own one-hot column; the missing id and the OOV id always have one, and values seen fewer than
``min_count`` times in training share the OOV column. The L2 strength is chosen on the
validation day: a path over ``c_grid`` (scikit-learn's inverse strength ``C``, strongest
first, each fit warm-started from the previous one) scored by the natural-weighted validation
log-loss — the champion rule's measure — stopping at the first step without improvement.
``C`` weighs every row's loss against the penalty, so the same grid suits 20k and 2M rows: a
value's weight moves away from 0 once it has about ``1 / C`` rows. On large data the path runs
on a sample of ``path_rows`` rows and the chosen ``C`` is refitted on all of them (L-BFGS costs
about 0.15 CPU-s per iteration on 350k rows, and the path needs a few hundred iterations).

Scoring needs NumPy only (the weights are a lookup table per feature); scikit-learn is
imported to fit.
"""
from __future__ import annotations

import os
import time
import warnings
from typing import Any, Mapping, NamedTuple

import numpy as np

from pythia import features
from pythia.config import TrainConfig
from pythia.features import Encoders
from pythia.models import notes
from pythia.models import priors as pr
from pythia.models.base import Model, labels_of
from pythia.models.design import (design_matrix, diag, fit_columns,  # noqa: F401
                                   numeric_block, path_rows)
from pythia.models.warm_logreg import fit_logreg_warm

MODEL_FILE = "logreg.npz"
# Validation steps without improvement after which the regularisation path stops (the
# validation loss is unimodal in C in practice; the large-C end is the slowest to fit).
PATH_PATIENCE = 1
PENALTY_STEPS = 2  # per feature and direction, of the per-feature L2 search (x4 each)


class LinearTask(NamedTuple):
    """One multinomial LR fit: labels, class count, priors and validation row weights.

    ``LogRegModel`` fits the AgeGender task; ``fit_linear`` any other (the MLP's gender and
    age heads, the CORN head's conditional binary tasks) the same way.
    """

    y: np.ndarray  # (n_train,) class ids
    yv: np.ndarray  # (n_valid,) class ids
    n_classes: int
    train_prior: Any  # (n_classes,) class prior of the training rows (and of validation)
    natural_prior: Any  # (n_classes,) natural class prior the validation loss is moved to
    valid_weights: np.ndarray  # (n_valid,) natural weight of each validation row
    label: str = "AgeGender"  # how messages name the target


class LogRegModel(Model):
    """scikit-learn multinomial logistic regression on AgeGender (see the module docstring)."""

    name = "logreg"
    joint_only = True
    is_baseline = True
    warm_starts = True  # a regional fit from the global one: pythia.models.warm_logreg

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return {
            # inverse L2 strengths, walked strongest first
            "c_grid": [0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
            "min_count": 1,  # training rows a value needs for a column of its own
            "max_iter": 300,  # L-BFGS iterations per point of the path
            # L-BFGS gradient tolerance (mean log-loss) on the path: tight, because a larger C
            # moves the gradient of a weight by only about w * (1/C1 - 1/C2) / n_rows
            "tol": 1e-5,
            # Rows the path runs on (a seeded sample, every class kept); the chosen C is then
            # refitted on all rows from the path's coefficients. 0 = every row.
            "path_rows": 50_000,
            # the refit on all rows: more rows per weight, so a looser tolerance suffices
            "refit_tol": 3e-4,
            "refit_max_iter": 100,
            # False: one C for every column (the baseline). True: after the path, a penalty
            # multiplier per categorical feature chosen on validation (``_feature_penalties``)
            "per_feature_l2": False,
            # the per-feature sweep's trial fits: L-BFGS tolerance and rows (a seeded sample
            # of the path's rows, every class kept; 0 = the path's rows). The chosen weights
            # are then refitted at ``tol`` (or ``refit_tol`` on all rows past ``path_rows``).
            # Skewed world, MLP wide start (CPU-s on a shared 2-core machine; validation
            # AgeGender): 1e-5 on the path's rows -> these, global 69 -> 34 s, 2.0013 ->
            # 2.0013; per region 9-28 -> 6-25 s, within 5e-4 (scripts/wide_start_profile.py)
            "sweep_tol": 1e-4,
            "sweep_rows": 20_000,
            # fixed penalty multipliers {feature: m} (e.g. another task's chosen ones): the
            # path then chooses C for columns penalised 1 / (2 C) * m; {} = all 1
            "feature_penalty": {},
            # a fit started from another logreg (``fit(..., start=)``): one L-BFGS fit from
            # its weights at its C, this tolerance and iteration cap (0 = keep the start),
            # its L2 penalty centred on 0 ('zero', as sklearn) or on its weights ('start').
            # Default world, 4 regions from the global fit (busy 2-core machine): 100, 10 or
            # 0 iterations, either prior, all kept the start (no regional fit beat it on
            # validation); CPU-s 10.4 (100) vs 2.2 (10), 18.4 ('start'); scratch 37.7
            "warm_tol": 1e-4,
            "warm_max_iter": 10,
            "warm_prior": "zero",
        }

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {"min_count": [1, 2, 5, 10, 20]}

    def __init__(self, encoders: Encoders, hparams: Mapping[str, Any] | None = None,
                 train_cfg: TrainConfig = TrainConfig()) -> None:
        super().__init__(encoders, hparams, train_cfg)
        self.tables: dict[str, np.ndarray] = {}
        self.n_onehot = 0
        self.num_mean = np.zeros(len(features.NUMERIC_FEATURES))
        self.num_std = np.ones(len(features.NUMERIC_FEATURES))
        self.coef: np.ndarray | None = None  # (n_columns, n_classes): column weights per class
        self.intercept: np.ndarray | None = None  # (n_classes,)
        self.chosen_c: float | None = None
        self.col_scale: np.ndarray | None = None  # per design column; None = all ones
        self.feature_penalty: dict[str, float] = {}

    def _fit(self, train: Any, valid: Any) -> dict:
        if not isinstance(train, Mapping) or not isinstance(valid, Mapping):
            raise TypeError("the logreg model trains on numpy dicts (pythia.tfrecords.load_numpy)")
        y, yv = labels_of(train)["age_gender"], labels_of(valid)["age_gender"]
        k = self.n_classes["age_gender"]
        task = LinearTask(y, yv, k, self.priors["train"]["age_gender"],
                          self.priors["natural"]["age_gender"], self.validation_weights(yv))
        if self.start is not None:  # a regional fit from the global one
            return fit_logreg_warm(self, train, valid, task)
        return self.fit_task(train, valid, task)

    def fit_task(self, train: Mapping[str, np.ndarray], valid: Mapping[str, np.ndarray],
                 task: LinearTask) -> dict:
        """Fit ``task`` on the features of ``train`` with the L2 strength chosen on ``valid``
        (the module docstring's rule); sets the weights, returns the fit summary."""
        grid = sorted(float(c) for c in self.hparams["c_grid"])
        if not grid or grid[0] <= 0:
            raise ValueError(f"logreg c_grid must hold positive values, got {grid}")
        y, yv = task.y, task.yv
        if len(np.unique(y)) < 2:
            raise ValueError(f"logreg needs at least 2 {task.label} classes in the training "
                             f"rows, got {np.unique(y).tolist()}")
        if len(yv) == 0:
            raise ValueError("logreg chooses its L2 strength on validation: no "
                             "validation rows given")
        self.check_features(valid)
        self._fit_encoding(train)
        Xt = design_matrix(train, self.tables, self.n_onehot, self.num_mean, self.num_std)
        # every point of the path scores validation: its design once, in float64
        valid = design_matrix(valid, self.tables, self.n_onehot, self.num_mean, self.num_std,
                              np.float64)
        if self.hparams["feature_penalty"]:
            self._set_feature_penalty(dict(self.hparams["feature_penalty"]), Xt.shape[1])
            Xt = Xt @ diag(self.col_scale)
        sub = path_rows(y, int(self.hparams["path_rows"]), self.train_cfg.seed)
        path = self._regularisation_path(Xt if sub is None else Xt[sub],
                                         y if sub is None else y[sub], valid, task, grid)
        best = min(path, key=lambda step: step["val_loss"])
        self.chosen_c = best["C"]
        if self.hparams["per_feature_l2"]:
            best = self._feature_penalties(Xt if sub is None else Xt[sub],
                                           y if sub is None else y[sub], valid, task, best)
            Xt = Xt @ diag(self.col_scale)
            if sub is None and best["stop"] != (float(self.hparams["tol"]),
                                                int(self.hparams["max_iter"])):
                best = self._fit_point(Xt, y, valid, task, self.chosen_c, best["clf"])
        final = best if sub is None else self._fit_point(
            Xt, y, valid, task, self.chosen_c, best["clf"],
            (float(self.hparams["refit_tol"]), int(self.hparams["refit_max_iter"])))
        self._set_weights(final["clf"], task.n_classes)
        text = ", ".join(f"C={s['C']:g}: {s['val_loss']:.4f}" for s in path)
        rows = f"{len(y)} rows" if sub is None else f"path on {len(sub)} of {len(y)} rows"
        per = "".join(f", {f} x{v:g}" for f, v in self.feature_penalty.items() if v != 1)
        per = f"; penalty per feature{per or ': all x1'}" if self.feature_penalty else ""
        notes.say("logreg", f"{task.label}: C={self.chosen_c:g} chosen on validation ({rows}: "
                            f"{text}{per}); {Xt.shape[1]} columns; {final['val_loss']:.4f}")
        steps = path + ([] if sub is None else [final])
        return {"epochs": int(sum(s["n_iter"] for s in steps)),
                "best_val_loss": float(final["val_loss"]), "C": self.chosen_c,
                "feature_penalty": dict(self.feature_penalty),
                "c_path": [{k: s[k] for k in ("C", "val_loss", "n_iter", "seconds")}
                           for s in path]}

    def _feature_penalties(self, Xt: Any, y: np.ndarray, valid: Any,
                           task: LinearTask, best: dict) -> dict:
        """One coordinate sweep over the categorical features at the chosen C: multiply a
        feature's L2 penalty by 4 or 1/4 (repeatedly, up to ``PENALTY_STEPS`` times) while the
        validation loss falls. A feature's columns scaled by s carry the penalty 1 / s**2.
        The trials fit ``sweep_rows`` of the rows at ``sweep_tol`` (``best`` refitted so,
        first, so that every comparison is between fits of the same kind); the returned
        step's ``stop`` says how it was fitted."""
        stop = (float(self.hparams["sweep_tol"]), int(self.hparams["max_iter"]))
        rows = path_rows(y, int(self.hparams["sweep_rows"]), self.train_cfg.seed + 1)
        if rows is not None:
            Xt, y = Xt[rows], y[rows]
        if rows is not None or stop != (float(self.hparams["tol"]), int(self.hparams["max_iter"])):
            best = self._fit_point(Xt, y, valid, task, self.chosen_c, best["clf"], stop)
        scale = np.ones(Xt.shape[1])
        for name in features.CATEGORICAL_FEATURES:
            cols = np.unique(self.tables[name])
            for factor in (0.5, 2.0):  # penalty x4, then x1/4
                moved = False
                for _ in range(PENALTY_STEPS):
                    trial = scale.copy()
                    trial[cols] *= factor
                    step = self._scaled_point(Xt, y, valid, task, trial, scale, best, stop)
                    if step["val_loss"] >= best["val_loss"]:
                        break
                    scale, best, moved = trial, step, True
                if moved:
                    break
        self.col_scale = scale
        self.feature_penalty = {f: float(1 / scale[self.tables[f][features.OOV_ID]] ** 2)
                                for f in features.CATEGORICAL_FEATURES}
        self._set_weights(best["clf"], task.n_classes)
        return {**best, "stop": stop if rows is None else None}

    def _set_feature_penalty(self, penalty: Mapping[str, float], n_columns: int) -> None:
        self.col_scale = np.ones(n_columns)
        for name, m in penalty.items():
            self.col_scale[np.unique(self.tables[name])] = 1 / np.sqrt(float(m))
        self.feature_penalty = {f: float(penalty.get(f, 1.0))
                                for f in features.CATEGORICAL_FEATURES}

    def _scaled_point(self, Xt: Any, y: np.ndarray, valid: Any,
                      task: LinearTask, scale: np.ndarray, previous: np.ndarray,
                      best: dict, stop: tuple[float, int] | None = None) -> dict:
        """``_fit_point`` at the chosen C on the columns scaled by ``scale``, warm-started
        from ``best`` (fitted with the scale ``previous``): same effective weights."""
        start = best["clf"]
        warm = type("Warm", (), {"coef_": start.coef_ * (previous / scale)[None, :],
                                 "intercept_": start.intercept_})()
        self.col_scale = scale
        return self._fit_point(Xt @ diag(scale), y, valid, task, self.chosen_c, warm, stop)

    def _fit_encoding(self, train: Mapping[str, np.ndarray]) -> None:
        """One-hot columns and the numeric standardisation, from the training rows."""
        self.tables, self.n_onehot = fit_columns(train, self.encoders,
                                                 int(self.hparams["min_count"]))
        num = np.column_stack([np.asarray(train[f], dtype=np.float64)
                               for f in features.NUMERIC_FEATURES])
        num = np.where(np.isfinite(num), num, np.nan)
        with warnings.catch_warnings():  # an all-missing column: mean 0, std 1
            warnings.simplefilter("ignore", RuntimeWarning)
            self.num_mean = np.nan_to_num(np.nanmean(num, axis=0))
            std = np.nan_to_num(np.nanstd(num, axis=0))
        self.num_std = np.where(std > 0, std, 1.0)

    def _regularisation_path(self, Xt: Any, y: np.ndarray, valid: Any,
                             task: LinearTask, grid: list[float]) -> list[dict]:
        """Fit along ``grid`` (each point warm-started from the previous one), each scored on
        validation; stops after ``PATH_PATIENCE`` points without improvement."""
        path: list[dict] = []
        previous = None
        for c in grid:
            path.append(self._fit_point(Xt, y, valid, task, c, previous))
            previous = path[-1]["clf"]
            best = min(s["val_loss"] for s in path)
            if len(path) > PATH_PATIENCE and all(s["val_loss"] > best
                                                 for s in path[-PATH_PATIENCE:]):
                break
        return path

    def _fit_point(self, Xt: Any, y: np.ndarray, valid: Any,
                   task: LinearTask, c: float, start: Any = None,
                   stop: tuple[float, int] | None = None) -> dict:
        """One L-BFGS fit at inverse L2 strength ``c`` (from ``start``'s coefficients when
        given; ``stop`` = (tol, max_iter), default the path's), scored by the natural-weighted
        log-loss of the validation rows."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        t0 = time.perf_counter()
        tol, max_iter = stop or (float(self.hparams["tol"]), int(self.hparams["max_iter"]))
        clf = LogisticRegression(solver="lbfgs", C=c, max_iter=max_iter, tol=tol,
                                 warm_start=start is not None)
        if start is not None:
            clf.coef_, clf.intercept_ = start.coef_.copy(), start.intercept_.copy()
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(Xt, y)
        self._set_weights(clf, task.n_classes)
        return {"C": c, "clf": clf, "n_iter": int(np.max(clf.n_iter_)),
                "val_loss": self._valid_loss(valid, task), "seconds": time.perf_counter() - t0}

    def _valid_loss(self, Xv: Any, task: LinearTask) -> float:
        """Natural-weighted validation log-loss of the current weights on the validation
        design ``Xv`` (float64 ``design_matrix``), the logits moved as ``predict_proba``
        moves them (temperature 1). Bayes / no correction in closed form,
        ``log p_y = z_y + log r_y - logsumexp(z + log r)``, not softmax, renormalisation
        and a pick: equal to 1e-12, and these steps were a sixth of a wide start's time."""
        logits = Xv @ self.coef + self.intercept
        rows, method = np.arange(len(task.yv)), self.train_cfg.prior_correction
        if method == "em":
            p = pr.correct_priors(pr.apply_temperature(logits, 1.0), method, task.train_prior,
                                  task.natural_prior)
            nll = -np.log(np.maximum(p[rows, task.yv], pr.PROB_FLOOR))
        else:
            if method == "bayes":
                with np.errstate(divide="ignore"):  # a class of natural prior 0: p = 0
                    logits = logits + np.log(pr.prior_ratio(task.train_prior,
                                                            task.natural_prior))
            top = logits.max(axis=1, keepdims=True)
            lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
            nll = np.minimum(lse - logits[rows, task.yv], -np.log(pr.PROB_FLOOR))
        weights = task.valid_weights  # the champion rule's natural weighting
        return float(np.sum(nll * weights) / np.sum(weights))

    def _set_weights(self, clf: Any, k: int) -> None:
        """Coefficients of a fitted classifier over all ``k`` classes: a class absent from
        training gets a -inf-like intercept (probability ~0, as for gbdt)."""
        classes = np.asarray(clf.classes_, dtype=np.int64)
        coef = clf.coef_ if len(classes) > 2 else np.vstack([-clf.coef_, clf.coef_]) / 2
        intercept = (clf.intercept_ if len(classes) > 2
                     else np.array([-clf.intercept_[0], clf.intercept_[0]]) / 2)
        self.coef = np.zeros((coef.shape[1], k))
        self.coef[:, classes] = coef.T
        if self.col_scale is not None:  # weights of the scaled columns -> of the 0/1 columns
            self.coef *= self.col_scale[:, None]
        self.intercept = np.full(k, np.log(pr.PROB_FLOOR))
        self.intercept[classes] = intercept

    def linear_logits(self, X: Mapping[str, np.ndarray]) -> np.ndarray:
        """(n, n_classes) logits of the fitted weights (training priors, temperature 1)."""
        if self.coef is None or self.intercept is None:
            raise RuntimeError("logreg is not fitted")
        logits = np.broadcast_to(self.intercept, (len(X[features.FEATURE_NAMES[0]]),
                                                  len(self.intercept))).copy()
        for name in features.CATEGORICAL_FEATURES:
            logits += self.coef[self.tables[name][np.asarray(X[name], dtype=np.int64)]]
        logits += numeric_block(X, self.num_mean, self.num_std) @ self.coef[self.n_onehot:]
        return logits

    def logit_tables(self) -> dict[str, Any]:
        """The fitted logits as lookups: ``{'tables': {feature: (vocabulary size, n_classes)},
        'numeric': (n_numeric, n_classes), 'bias': (n_classes,)}`` such that for finite
        numerics ``logits = bias + sum_f tables[f][id_f] + numeric @ numeric_W`` (rare values
        get their feature's OOV row; the standardisation is folded into ``numeric`` and
        ``bias``) -- how the MLP's wide part starts from this model."""
        if self.coef is None or self.intercept is None:
            raise RuntimeError("logreg is not fitted")
        num_w = self.coef[self.n_onehot:] / self.num_std[:, None]
        return {"tables": {f: self.coef[self.tables[f]] for f in features.CATEGORICAL_FEATURES},
                "numeric": num_w, "bias": self.intercept - self.num_mean @ num_w}

    def _predict_raw(self, X: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"age_gender": self.linear_logits(X)}

    def _save_weights(self, folder: str) -> dict:
        if self.coef is None or self.intercept is None:
            raise RuntimeError("logreg is not fitted")
        scale = {} if self.col_scale is None else {"col_scale": self.col_scale}
        np.savez(os.path.join(folder, MODEL_FILE), coef=self.coef, intercept=self.intercept,
                 num_mean=self.num_mean, num_std=self.num_std, **scale,
                 **{f"table__{f}": t for f, t in self.tables.items()})
        # C and the penalties travel with the weights: a regional fit may start from them
        return {"model_file": MODEL_FILE, "n_onehot": int(self.n_onehot), "C": self.chosen_c,
                "feature_penalty": dict(self.feature_penalty)}

    def _load_weights(self, folder: str, meta: Mapping[str, Any]) -> None:
        with np.load(os.path.join(folder, meta.get("model_file", MODEL_FILE))) as z:
            self.coef, self.intercept = z["coef"], z["intercept"]
            self.num_mean, self.num_std = z["num_mean"], z["num_std"]
            self.tables = {f: z[f"table__{f}"] for f in features.CATEGORICAL_FEATURES}
            self.col_scale = z["col_scale"] if "col_scale" in z else None
        self.n_onehot = int(meta["n_onehot"])
        self.chosen_c = meta.get("C")
        self.feature_penalty = dict(meta.get("feature_penalty", {}))


def fit_linear(train: Mapping[str, np.ndarray], valid: Mapping[str, np.ndarray],
               task: LinearTask, encoders: Encoders, train_cfg: TrainConfig = TrainConfig(),
               hparams: Mapping[str, Any] | None = None) -> tuple[LogRegModel, dict]:
    """Fit ``task`` exactly as the logreg baseline fits AgeGender (same columns, same L2 path
    chosen on validation); returns the fitted model (``logit_tables()``) and its summary.

    Args:
        train, valid: numpy dicts with every feature (the labels are ``task``'s).
        task: labels, class count, priors and validation row weights.
        encoders: the training encoders.
        train_cfg: seed and prior correction (its ``hparams`` are ignored: another model's).
        hparams: logreg knobs over its defaults.
    """
    import dataclasses

    model = LogRegModel(encoders, hparams, dataclasses.replace(train_cfg, hparams={}))
    return model, model.fit_task(train, valid, task)
