"""TabNet (pytorch-tabnet 4.1) on AgeGender, with gender and age as its marginals.

One ``TabNetClassifier`` on the 12-class AgeGender target rather than
``TabNetMultiTaskClassifier``: the joint carries all the information, its marginals make the
three targets consistent (a multi-task net can say "F" and put most AgeGender mass on "M_*"),
and one head trains faster on 2 CPU cores. Categorical ids are embedded (``cat_idxs`` /
``cat_dims`` from the vocabulary sizes); the reserved missing/OOV ids keep unseen values
inside each table, so TabNet's embedding lookup never goes out of range. Batches are sliced
from whole tensors (``BatchTabNetClassifier``), not collated row by row. A regional model may
start from the global network (``fit(..., start=)``, ``fit_tabnet_warm``).
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import zipfile
from typing import Any, Mapping

import numpy as np
import torch
from pytorch_tabnet.metrics import Metric
from pytorch_tabnet.tab_model import TabNetClassifier
from sklearn.metrics import log_loss
from torch.utils.data import DataLoader, Dataset

from pythia import features, quiet
from pythia.config import TrainConfig
from pythia.features import Encoders
from pythia.models import notes
from pythia.models.base import Model, labels_of, start_record
from pythia.models.priors import log_probabilities
from pythia.models.hgb import expand_classes, known_class_rows, openmp_threads

MODEL_STEM = "tabnet"  # pytorch-tabnet writes <stem>.zip (model_params.json + network.pt)


def to_matrix(X: Mapping[str, np.ndarray]) -> np.ndarray:
    """(n, n_features) float32 matrix in ``FEATURES`` order (ids as exact small floats)."""
    return np.column_stack([np.asarray(X[f], dtype=np.float32)
                            for f in features.FEATURE_NAMES]).astype(np.float32)


def set_torch_threads(n_threads: int, n_rows: int) -> None:
    """Set torch's intra-op threads (``hgb.openmp_threads`` rule: few threads on small data,
    never more than the task's thread budget)."""
    torch.set_num_threads(openmp_threads(int(n_threads), n_rows))


class ValidLogLoss(Metric):
    """Log-loss over every training class, even those absent from the validation rows.

    pytorch-tabnet's own 'logloss' calls scikit-learn without ``labels=`` and fails when a
    small validation slice (a region's day) lacks one of the training classes.
    """

    def __init__(self) -> None:
        # a name of its own: pytorch-tabnet finds metrics by name among Metric subclasses,
        # and 'logloss' would resolve to its built-in class
        self._name = "logloss_all"
        self._maximize = False

    def __call__(self, y_true: np.ndarray, y_score: np.ndarray) -> float:
        p = np.clip(np.asarray(y_score, dtype=np.float64), 1e-15, 1.0)
        return float(log_loss(y_true, p / p.sum(axis=1, keepdims=True),
                              labels=np.arange(p.shape[1])))


class _Batches(Dataset):
    """(x, y) rows served a whole batch at a time: the DataLoader's fetcher calls
    ``__getitems__`` with the sampler's indices, so a batch is one tensor index instead of
    pytorch-tabnet's per-row ``__getitem__`` + ``default_collate`` (a third of a global fit's
    time, busy machine); same rows, same order, same dtypes."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(
            np.ascontiguousarray(y))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple:
        return self.x[index], self.y[index]

    def __getitems__(self, indices: list[int]) -> tuple:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return self.x[idx], self.y[idx]


def _whole_batch(batch: tuple) -> tuple:
    return batch


def _batch_loader(loader: DataLoader, shuffle: bool) -> DataLoader:
    """``loader`` (pytorch-tabnet's, over a ``TorchDataset``) over ``_Batches`` instead: the
    same sampler arguments, so the same random draws and batches."""
    data = loader.dataset
    return DataLoader(_Batches(data.x, data.y), batch_size=loader.batch_size, shuffle=shuffle,
                      drop_last=loader.drop_last, collate_fn=_whole_batch)


class BatchTabNetClassifier(TabNetClassifier):
    """``TabNetClassifier`` whose batches are tensor slices (``_Batches``); fits and predicts
    exactly as the library does (tests/test_model_cost.py compares them)."""

    def _construct_loaders(self, X_train: np.ndarray, y_train: np.ndarray, eval_set: list
                           ) -> tuple:
        train, valid = super()._construct_loaders(X_train, y_train, eval_set)
        if not isinstance(train.sampler, torch.utils.data.RandomSampler):
            return train, valid  # weighted sampling: the library's own loaders
        return _batch_loader(train, True), [_batch_loader(v, False) for v in valid]

    def update_fit_params(self, X_train: np.ndarray, y_train: np.ndarray, eval_set: list,
                          weights: Any) -> None:
        """The library's, but a warm fit (``keep_classes`` set) keeps the network's classes
        when the region's rows hold only some of them."""
        super().update_fit_params(X_train, y_train, eval_set, weights)
        kept = getattr(self, "keep_classes", None)
        if kept is not None:
            self.classes_, self.output_dim = np.asarray(kept), len(kept)
            self.target_mapper = {c: i for i, c in enumerate(self.classes_)}
            self.preds_mapper = {str(i): c for i, c in enumerate(self.classes_)}

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Softmax of the network's outputs, ``batch_size`` rows at a time (as the library)."""
        self.network.eval()
        x = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        out = []
        with torch.no_grad():
            for start in range(0, len(x), self.batch_size):
                logits, _ = self.network(x[start:start + self.batch_size])
                out.append(torch.nn.Softmax(dim=1)(logits).numpy())
        return np.vstack(out) if out else np.zeros((0, len(self.classes_)), np.float32)


class TabNetModel(Model):
    """pytorch-tabnet classifier on AgeGender (see the module docstring)."""

    name = "tabnet"
    joint_only = True
    warm_starts = True  # a regional fit from the global network: pythia.models.warm

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return {
            "n_d": 16, "n_a": 16,  # decision / attention widths
            "n_steps": 3,
            "gamma": 1.3,  # feature re-use relaxation
            "lambda_sparse": 1e-4,
            "learning_rate": 2e-2,
            "cat_emb_max_dim": 8,
            "batch_size": 4096,  # TabNet likes large batches; ghost BN on virtual batches
            "virtual_batch_size": 512,
            # torch threads; 0 = auto (1 below 50k rows, else every core of the task). 1 by
            # default: TabNet's small ops do not pay for a second thread's wake-ups. Idle
            # 2-core VM, default world, global fit of 8 epochs (scripts/train_bench.py):
            # 1 thread 47 s, auto (2) 120 s; a busy box made a 6 s fit take 60 s with 2
            "num_threads": 1,
            # a fit started from another tabnet (``fit(..., start=)``): at most this many
            # epochs at learning_rate, kept only if better than the start (0 = the start).
            # Default world, 4 regions (busy machine), AgeGender mean / CPU-s: 0 epochs
            # 2.1014 / 2; 3: 2.0987 / 41; 6: 2.0979 / 83; scratch 2.1796 / 98
            "warm_epochs": 3,
            # epochs without a validation gain before stopping (None: TrainConfig's: 2; the
            # MLP has 1 too). Default world, global fit (busy machine, scripts/train_bench.py):
            # 1 stops after 4 epochs with the same best epoch (3) and model as 2 does after 5,
            # 45.7 vs 53.6 CPU-s; the regional fits' 3 epochs improve or end either way. Over
            # five training seeds 2 lifts two (mean 2.1840 -> 2.1735) but put TabNet's task
            # on the default run's critical path, +19 s (docs/new-users.md, session 54)
            "patience": 1,
        }

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {
            "n_d": [8, 16, 32],
            "n_steps": [3, 4, 5],
            "gamma": [1.0, 1.3, 1.5],
            "lambda_sparse": ("log", 1e-5, 1e-2),
            "learning_rate": ("log", 5e-3, 5e-2),
        }

    @classmethod
    def tie_hparams(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The attention width follows the decision width (the TabNet paper's n_a = n_d)."""
        return {**config, "n_a": config["n_d"]}

    def __init__(self, encoders: Encoders, hparams: Mapping[str, Any] | None = None,
                 train_cfg: TrainConfig = TrainConfig()) -> None:
        super().__init__(encoders, hparams, train_cfg)
        self.clf: BatchTabNetClassifier | None = None
        self.classes: np.ndarray = np.arange(self.n_classes["age_gender"])

    def _new_classifier(self) -> BatchTabNetClassifier:
        h = self.hparams
        cat_idxs = [i for i, f in enumerate(features.FEATURES) if f.kind == features.CATEGORICAL]
        cat_dims = [self.encoders.vocabularies[f].size for f in features.CATEGORICAL_FEATURES]
        cat_emb = [int(max(1, min(h["cat_emb_max_dim"], round(1.6 * d ** 0.56))))
                   for d in cat_dims]
        return BatchTabNetClassifier(
            n_d=int(h["n_d"]), n_a=int(h["n_a"]), n_steps=int(h["n_steps"]), gamma=h["gamma"],
            lambda_sparse=h["lambda_sparse"], cat_idxs=cat_idxs, cat_dims=cat_dims,
            cat_emb_dim=cat_emb, optimizer_fn=torch.optim.Adam,
            optimizer_params={"lr": float(h["learning_rate"])}, seed=self.train_cfg.seed,
            device_name="cpu", verbose=0)

    def _fit(self, train: Any, valid: Any) -> dict:
        if not isinstance(train, Mapping) or not isinstance(valid, Mapping):
            raise TypeError("the tabnet model trains on numpy dicts (pythia.tfrecords.load_numpy)")
        if self.start is not None:
            return fit_tabnet_warm(self, train, valid)
        y = labels_of(train)["age_gender"]
        set_torch_threads(self.hparams["num_threads"], len(y))
        torch.manual_seed(self.train_cfg.seed)
        yv = labels_of(valid)["age_gender"]
        # pytorch-tabnet refuses validation labels it never saw in training; those rows
        # cannot steer early stopping, so they are left out of eval_set and counted.
        keep = known_class_rows(yv, np.unique(y))
        Xv = to_matrix(valid)[keep]
        self.clf = self._new_classifier()
        h = self.hparams
        with quiet.library_prints():
            self.clf.fit(
                to_matrix(train), y, eval_set=[(Xv, yv[keep])] if keep.any() else None,
                eval_name=["valid"] if keep.any() else None, eval_metric=[ValidLogLoss],
                max_epochs=self.train_cfg.max_epochs, patience=self.patience(),
                batch_size=int(h["batch_size"]), virtual_batch_size=int(h["virtual_batch_size"]),
                num_workers=0, drop_last=False, pin_memory=False, compute_importance=False)
        self.classes = np.asarray(self.clf.classes_, dtype=np.int64)
        hist = self.clf.history.history
        val = [float(v) for v in hist.get("valid_logloss_all", [])]
        return {"epochs": len(hist.get("loss", [])),
                "best_val_loss": min(val) if val else float("nan"),
                "best_epoch": int(self.clf.best_epoch) + 1 if val else None,
                "n_valid_unknown_class": int((~keep).sum())}

    def _predict_raw(self, X: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.clf is None:
            raise RuntimeError("tabnet is not fitted")
        X = to_matrix(X)
        set_torch_threads(self.hparams["num_threads"], len(X))
        p = self.clf.predict_proba(X)
        full = expand_classes(p, self.classes, self.n_classes["age_gender"])
        return {"age_gender": log_probabilities(full)}

    def _save_weights(self, folder: str) -> dict:
        if self.clf is None:
            raise RuntimeError("tabnet is not fitted")
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Successfully saved…"
            self.clf.save_model(os.path.join(folder, MODEL_STEM))
        return {"model_file": MODEL_STEM + ".zip", "classes": self.classes.tolist()}

    def _load_weights(self, folder: str, meta: Mapping[str, Any]) -> None:
        path = os.path.join(folder, meta.get("model_file", MODEL_STEM + ".zip"))
        if not zipfile.is_zipfile(path):
            raise FileNotFoundError(f"no TabNet archive at {path}")
        self.clf = BatchTabNetClassifier(device_name="cpu")
        self.clf.load_model(path)
        self.classes = np.asarray(meta["classes"], dtype=np.int64)


def fit_tabnet_warm(model: Any, train: Mapping, valid: Mapping) -> dict:
    """The start's network, then up to ``warm_epochs`` epochs at ``learning_rate`` on the
    region's rows (TabNet's early stopping, ``Model.patience``), kept only when its best
    epoch beats the start on the region's validation (TabNet's own log-loss)."""
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
        with quiet.library_prints():
            clf.fit(to_matrix(train), y, eval_set=[(Xv, yv[keep])], eval_name=["valid"],
                    eval_metric=[ValidLogLoss], max_epochs=int(h["warm_epochs"]),
                    patience=model.patience(), batch_size=int(h["batch_size"]),
                    virtual_batch_size=int(h["virtual_batch_size"]), num_workers=0,
                    drop_last=False, pin_memory=False, compute_importance=False,
                    warm_start=True)
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
    notes.say("tabnet", f"AgeGender {at_start:.4f} at the start; {tried} epoch(s) tried, kept "
              f"{kept} -> {best:.4f}")
    return {"epochs": kept, "best_val_loss": float(best), "best_epoch": kept,
            "n_valid_unknown_class": int((~keep).sum()), "start": record}
