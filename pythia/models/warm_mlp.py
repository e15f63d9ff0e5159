"""The MLP fitted on a region's rows from the fitted global network
(``MLPModel.fit(..., start=global)``): the start's graph and weights, a few epochs, the start
kept when no epoch beats it on validation (``wide.KeepBest`` scores the start first).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pythia.models import notes
from pythia.models.base import start_record


# MLP knobs that shape the graph: a warm fit trains the start's own graph, so they must agree
MLP_GRAPH_KNOBS = ("hidden_units", "embedding_max_dim", "age_head", "wide", "dropout",
                   "wide_scale", "members")


def fit_mlp_warm(model: Any, train: Any, valid: Any) -> dict:
    """The start's graph and weights (its LR start is not refitted), then up to
    ``warm_epochs`` epochs at ``warm_lr`` on the region's rows (the wide part trains
    too with ``warm_wide_train``); ``KeepBest`` scores the start first, so the start is kept
    when no epoch beats it on the region's natural-weighted validation.

    ``warm_lr`` is 1e-3, the global fit's last (joint) phase's rate: at the main
    ``learning_rate`` (1e-2) the first warm epoch was worse than the start in all four regions
    of the default world, so every regional MLP was the global one recalibrated. At 1e-3
    (``scripts/train_bench.py --warm --warm-only``, session 31, run 1796325082345022's global
    MLP; validation AgeGender after the temperature, start kept at 1e-2 -> 1e-3): APAC 1.8359
    -> 1.8328, LATAM 1.7418 -> 1.7342, EU 1.7885 -> 1.7873, NA 1.9278 -> 1.9235; 3e-4 gained
    less, 4 epochs at 1e-3 a little more (LATAM 1.7315, EU 1.7838, NA 1.9216) for twice the
    time.

    Default world, 4 regions (busy 2-core machine), AgeGender mean / CPU-s: wide part fixed
    2.0596 / 34 (no epoch kept), trained 2.0595 / 35 (kept in 3 of 4), 0 epochs 2.0596 / 3.5;
    scratch 2.0647 / 135."""
    import keras

    from pythia.models.mlp_valid import shipped_val_losses
    from pythia.models.unseen import UnseenRows, id_counts
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
    patience = model.patience()
    # ids the region's rows never carry keep the start's rows (``models.unseen``)
    unseen = UnseenRows(id_counts(train, model.encoders), start.keras_model)
    score = unseen.before(model.keras_model, lambda: shipped_val_losses(model, valid))
    keep = KeepBest(score, int(patience), float(h["min_delta"]), kept=lambda: model._scored_valid)
    if epochs > 0:
        model._train_phase(train, float(h.get("warm_lr", h["learning_rate"])),
                           bool(h["warm_wide_train"]),
                           epochs, keep)
        model._kept_valid = keep.best_kept
    else:
        keep.history = [score()]
        model._kept_valid = model._scored_valid
    first, best = keep.history[0], keep.history[keep.best_index]
    record = start_record(first["age_gender"], best["age_gender"], keep.best_index,
                          len(keep.history) - 1, "natural-weighted AgeGender log-loss")
    trail = ", ".join(f"{s['age_gender']:.4f}" for s in keep.history)
    notes.say(model.name, f"AgeGender as shipped by epoch {trail} (0: the start); kept "
                          f"epoch {keep.best_index}")
    return {"epochs": keep.best_index, "best_val_loss": best["age_gender"],
            "best_epoch": keep.best_index, "age_head": model.age_head,
            "val_loss_by_epoch": keep.history, "start": record}
