"""TabNet on top of a logistic regression: the network learns what the LR's logits miss.

With ``offset = "logreg"`` the TabNet task first fits a logistic regression exactly as the
logreg baseline does (``logreg.fit_linear``: the same one-hot columns, the L2 strength chosen
on validation), then trains TabNet with that LR's AgeGender logits added to its output. The
offsets travel as the last columns of TabNet's input matrix (``OffsetNet`` strips them before
the TabNet layers, so the network never attends to them), and the TabNet's final layer starts
at zero, so its first batch scores exactly the LR. What the shipped TabNet lost to the
baseline (session 54: the light activity bins, and the regional make's main effect, which a
one-hot table fits directly) starts where the baseline is.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from pythia.models import notes
from pythia.models.base import labels_of
from pythia.models.logreg import LinearTask, LogRegModel, fit_linear

OFFSETS = ("none", "logreg")


class OffsetNet(torch.nn.Module):
    """``inner`` (pytorch-tabnet's ``TabNet``) on all but the last ``n_offset`` columns; those
    are logits added to its output. Returns ``(logits, M_loss)`` as ``inner`` does."""

    def __init__(self, inner: torch.nn.Module, n_offset: int) -> None:
        super().__init__()
        self.inner, self.n_offset = inner, int(n_offset)

    def forward(self, x: torch.Tensor) -> tuple:
        out, m_loss = self.inner(x[:, :-self.n_offset])
        return out + x[:, -self.n_offset:], m_loss

    @property
    def virtual_batch_size(self) -> int:  # the library sets it on ``network`` before fitting
        return self.inner.virtual_batch_size

    @virtual_batch_size.setter
    def virtual_batch_size(self, value: int) -> None:
        self.inner.virtual_batch_size = value


def wrap_network(clf: Any) -> None:
    """After the library's ``_set_network`` with ``clf.input_dim`` = the TabNet columns:
    ``clf.network`` takes ``n_offset`` more columns, and its final layer starts at zero."""
    inner = clf.network
    with torch.no_grad():
        inner.tabnet.final_mapping.weight.zero_()
    clf.network = OffsetNet(inner, clf.n_offset)


def check_offset(value: Any) -> str:
    if value not in OFFSETS:
        raise ValueError(f"tabnet offset {value!r} is not one of {', '.join(OFFSETS)}: set "
                         f"[models.tabnet] offset in flows/pythia.toml to one of them")
    return str(value)


def fit_offset_lr(model: Any, train: Mapping[str, np.ndarray],
                  valid: Mapping[str, np.ndarray]) -> tuple[LogRegModel, dict]:
    """The logreg baseline's fit of AgeGender on ``model``'s rows, priors and weights."""
    y, yv = labels_of(train)["age_gender"], labels_of(valid)["age_gender"]
    task = LinearTask(y, yv, model.n_classes["age_gender"], model.priors["train"]["age_gender"],
                      model.priors["natural"]["age_gender"], model.validation_weights(yv))
    return fit_linear(train, valid, task, model.encoders, model.train_cfg)


def keep_the_start(clf: Any, Xv: np.ndarray, yv: np.ndarray, val: list[float]) -> dict:
    """The fitted network, or the LR alone (the final layer back at zero) when no epoch beat
    the LR's own validation log-loss (TabNet's metric, ``Xv``'s offset columns); says which."""
    logits = np.asarray(Xv[:, -clf.n_offset:], dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    rows = np.searchsorted(np.asarray(clf.classes_), yv)
    at_start = float(-log_p[np.arange(len(yv)), rows].mean())
    best = min(val) if val else float("inf")
    kept = best >= at_start
    if kept:
        with torch.no_grad():
            clf.network.inner.tabnet.final_mapping.weight.zero_()
    notes.say("tabnet", f"on a logistic regression: AgeGender {at_start:.4f} at the start, "
              + ("no epoch beat it: kept the LR alone" if kept else f"{best:.4f} after"))
    return {"offset_start": {"val_loss_at_start": at_start, "kept_start": bool(kept)},
            "best_val_loss": min(best, at_start)}


def offset_columns(lr: LogRegModel | None, X: Mapping[str, np.ndarray],
                   classes: np.ndarray) -> np.ndarray | None:
    """(n, len(classes)) float32 logits of ``lr`` for the network's classes, or None."""
    if lr is None:
        return None
    return lr.linear_logits(X)[:, np.asarray(classes, dtype=np.int64)].astype(np.float32)


def save_lr(lr: LogRegModel, folder: str) -> dict:
    """Writes the LR's weights next to the TabNet archive; its meta for ``load_lr``."""
    return lr._save_weights(folder)


def load_lr(encoders: Any, folder: str, meta: Mapping[str, Any]) -> LogRegModel:
    lr = LogRegModel(encoders)
    lr._load_weights(folder, meta)
    return lr
