"""The "demo_nn" Keras MLP, wide & deep: embeddings, a Dense+ReLU trunk, three heads, plus a wide
part (``pythia.models.wide``) added to every head's logits.

Heads: gender (softmax), age bucket (ordinal CORN — Shi et al. 2021 — or softmax: ``age_head``)
and AgeGender (softmax); gender and age are output as AgeGender's marginals (``Model._expand``).
Logits out; probabilities in NumPy by the functions the bid-time scorer uses on
``export_numpy()``. No BatchNorm, no ``Lambda`` layers: the ``.keras`` file reloads anywhere.

The rule (``wide_start='logreg'``, the default): AgeGender's wide part starts as the logreg
baseline's fit (the aid heads, gender and age, at their priors: ``aid_start``), the heads' last
Dense kernels start at zero with the LRs' intercepts as biases, so the untrained network's
AgeGender IS logistic regression; by default (``wide_per_feature_l2``) those LRs carry an L2
penalty per categorical feature chosen on validation (``logreg.per_feature_l2``). Then the
residual phase (``wide_train='frozen'``, the default): the wide part stays fixed at the LRs and
only the deep part trains, adding what they miss (interactions); then joint epochs at
``finetune_lr``, at most ``finetune_epochs`` (None: ``max_epochs``) (``'joint'``: everything
trains from the start). The natural-weighted AgeGender validation log-loss (the champion rule's
measure) is computed before the first epoch and after each; a phase stops after ``patience``
(joint: ``finetune_patience``) epochs without a gain above ``min_delta``; the best weights are
kept -- the LR start when no epoch beats it (``wide_start.improved`` in the fit summary, and
printed). Validation AgeGender, skewed world (74k rows): LR start 2.0132; residual, fine-tuned,
joint, smaller trunks within 1e-4 of it; per-feature L2 2.0013. Default world (488k rows):
residual 1.8802, + 2 joint epochs at 1e-3 1.8539 (docs/mlp-power-users.md); unseen: ``unseen``.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

from pythia import features
from pythia.config import TrainConfig
from pythia.features import Encoders
from pythia.models import export as ex, keras_state, members, notes
from pythia.models.activity_temp import EXPORT_KEY
from pythia.models.base import TF_DATASET, Model, labels_of, normalize_age_head
from pythia.models.corn_loss import CornLoss  # noqa: F401 (re-exported)
from pythia.models.links import corn_probabilities, link_probabilities  # noqa: F401 (re-export)
from pythia.models.mlp_valid import (ValidationSample, forward_in_batches, sample_dataset,
                                     shipped_val_losses, validation_losses)
from pythia.models.unseen import UnseenRows, id_counts
from pythia.models.warm_mlp import fit_mlp_warm
from pythia.models.wide import (ColumnL2, KeepBest, WideLogits,  # noqa: F401 (re-exported)
                                 count_rows, embedding_dim, fit_wide_start)

KERAS_FILE = "model.keras"
KNOB_CHOICES = {"aid_start": ("logreg", "prior"), "wide_start": ("logreg", "zero"),
                "wide_train": ("frozen", "joint")}  # the string knobs' allowed values


# ------------------------------------------------------------------ the model

class MLPModel(Model):
    """Keras MLP with embeddings and three heads (the original ``demo_nn``)."""

    name = "mlp"
    warm_starts = True  # pythia.models.warm_mlp
    input_format = TF_DATASET  # streams TFRecords: the training split need not fit in memory

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return {
            "hidden_units": [256, 128],  # trunk widths
            "dropout": 0.1, "embedding_max_dim": 16,  # dropout after each trunk layer
            "learning_rate": 1e-2,  # Adam, at TrainConfig.batch_size 4096 (pythia.toml)
            "age_head": None,  # None -> TrainConfig.age_head; 'corn'/'ordinal' | 'softmax'
            # a wide part; bins it scores alone: the deep part's lead < z SEs (activity_temp),
            "wide": True, "wide_only_bins": True, "wide_only_z": 1.0,  # from heavy_from up:
            "wide_only_z_heavy": 2.0, "wide_only_heavy_from": 30,  # z_heavy SEs
            "members": 1,  # fits of different seeds, averaged as one wider network (members)
            # 'logreg': the wide part starts as the LR fits (the module docstring's rule);
            # 'zero': zero-initialised, trained with the deep part only
            "wide_start": "logreg",
            "wide_scale": 1.0,  # the wide logits are scale * weights: scale x Adam's step
            # 'frozen': the residual phase (wide part fixed at its start, deep part trains), then
            # `finetune_epochs` joint ones at `finetune_lr`; 'joint': all trains from epoch 1
            "wide_train": "frozen",
            # the LR start with an L2 penalty per categorical feature chosen on validation
            # (logreg's ``per_feature_l2``) instead of the baseline's one C
            "wide_per_feature_l2": True,
            # aid heads' wide part: 'prior' = zero at their training priors (AgeGender's LR
            "aid_start": "prior",  # only: 6 LR fits fewer), 'logreg' = their own LR fits
            # a phase stops after `patience` epochs (None: TrainConfig's) not lowering validation
            # AgeGender by > min_delta. 1, not 2, since the joint phase follows (train_bench,
            # default world, seeds 0/1): 1.8348/1.8323 vs 1.8352/1.8341, an epoch fewer
            "min_delta": 5e-4, "patience": 1,
            # joint epochs: until `finetune_patience` ones gain nothing, at most finetune_epochs
            # (None: max_epochs); a cap of 2 and patience 1 stopped a 2x world's fit 0.08 short
            "finetune_epochs": None, "finetune_lr": 1e-3, "finetune_patience": 2,
            # L2 on the deep part's kernels and embeddings: loss + (l2_rows / n_train) *
            # sum(w**2), a prior worth l2_rows training rows (the wide part keeps its LRs')
            "l2_rows": 1.0, "warm_epochs": 2, "warm_wide_train": True, "warm_lr": 1e-3,  # warm_mlp
        }

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {
            "hidden_units": [[64], [128, 64], [256, 128], [512, 256]],
            "dropout": [0.0, 0.1, 0.2, 0.3],
            "learning_rate": ("log", 3e-3, 3e-2),
            "embedding_max_dim": [8, 16, 24],
            "age_head": ["corn", "softmax"],  # ordinal vs plain: decided by validation numbers
        }

    def __init__(self, encoders: Encoders, hparams: Mapping[str, Any] | None = None,
                 train_cfg: TrainConfig = TrainConfig()) -> None:
        super().__init__(encoders, hparams, train_cfg)
        self.age_head = normalize_age_head(self.hparams["age_head"] or self.train_cfg.age_head)
        self.hparams["age_head"] = self.age_head
        self.keras_model: keras.Model | None = None
        self._valid_sampler: ValidationSample | None = None  # this fit's (mlp_valid)
        self._start_sample: dict | None = None  # the LR start's rows, per split

    # -------------------------------------------------------------- graph
    def build(self, n_train: int = 0, start: Mapping[str, Mapping] | None = None,
              width: int = 1) -> keras.Model:
        """The functional Keras graph: dict of feature inputs -> dict of head logits.

        Deep kernels and embeddings get the L2 penalty ``l2_rows / n_train``. With ``start``
        (``fit_wide_start``'s per-head LRs) the wide part and the heads' biases start as those
        LRs and the heads' kernels at zero: the untrained network is the LRs. ``width``: every
        embedding and trunk layer that many times as wide (``members.merge``'s network).
        """
        l2 = float(self.hparams["l2_rows"] or 0.0) / max(int(n_train), 1)
        reg = (lambda: keras.regularizers.L2(l2)) if l2 > 0 else (lambda: None)
        inputs, parts = {}, []
        for name in features.CATEGORICAL_FEATURES:
            size = self.encoders.vocabularies[name].size
            inputs[name] = keras.Input(shape=(), dtype="int64", name=name)
            parts.append(keras.layers.Embedding(
                size, width * embedding_dim(size, self.hparams["embedding_max_dim"]),
                embeddings_regularizer=reg(), name=f"emb_{name}")(inputs[name]))
        for name in features.NUMERIC_FEATURES:
            inputs[name] = keras.Input(shape=(), dtype="float32", name=name)
            parts.append(keras.layers.Reshape((1,), name=f"col_{name}")(inputs[name]))
        x = keras.layers.Concatenate(name="concat")(parts)
        for i, units in enumerate(self.hparams["hidden_units"]):
            x = keras.layers.Dense(width * int(units), activation="relu",
                                   kernel_regularizer=reg(), name=f"trunk_{i}")(x)
            if self.hparams["dropout"]:
                x = keras.layers.Dropout(float(self.hparams["dropout"]), name=f"dropout_{i}")(x)
        units = self.head_units()
        zero = "zeros" if self.hparams["wide"] else "glorot_uniform"
        heads = {t: keras.layers.Dense(u, kernel_regularizer=reg(), kernel_initializer=zero,
                                       name=t) for t, u in units.items()}
        outputs = {t: heads[t](x) for t in units}
        if self.hparams["wide"]:
            outputs = self._add_wide(inputs, outputs, units, n_train, start)
        model = keras.Model(inputs=inputs, outputs=outputs, name="demo_nn")
        if start is not None:
            for t, layer in heads.items():
                W, _ = layer.get_weights()
                layer.set_weights([W, np.asarray(start[t]["bias"], dtype=np.float32)])
        return model

    def _add_wide(self, inputs: dict, outputs: dict, units: dict[str, int], n_train: int,
                  start: Mapping[str, Mapping] | None) -> dict:
        names = list(features.CATEGORICAL_FEATURES)
        rows = [float(self.hparams["l2_rows"] or 0.0)] * sum(units.values())
        if start is not None:  # each LR's own penalty
            rows = [v for t in units for v in start[t]["l2_rows"]]
        layer = WideLogits([self.encoders.vocabularies[n].size for n in names],
                           list(units.values()), len(features.NUMERIC_FEATURES),
                           [v / max(int(n_train), 1) for v in rows],
                           float(self.hparams["wide_scale"]), name="wide")
        wide = layer([inputs[n] for n in names + list(features.NUMERIC_FEATURES)])
        if start is not None:
            layer.set_start([start[t] for t in units], names)
        return {t: keras.layers.Add(name=f"logits_{t}")([outputs[t], w])
                for t, w in zip(units, wide)}

    def head_units(self) -> dict[str, int]:
        """Logits per head (``TARGETS`` order): K for softmax heads, K-1 for CORN."""
        age = self.n_age - 1 if self.age_head == "corn" else self.n_age
        return {"gender": self.n_classes["gender"], "age": age,
                "age_gender": self.n_classes["age_gender"]}

    def _losses(self) -> dict:
        ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        age = CornLoss(self.n_age) if self.age_head == "corn" else \
            keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return {"gender": ce, "age": age, "age_gender": ce}

    # -------------------------------------------------------------- data
    @staticmethod
    def _inputs(X: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {n: np.asarray(X[n], dtype=np.int64) for n in features.CATEGORICAL_FEATURES}
        out.update({n: np.asarray(X[n], dtype=np.float32) for n in features.NUMERIC_FEATURES})
        return out

    @staticmethod
    def _select(ds: tf.data.Dataset) -> tf.data.Dataset:
        """Keep exactly the model's inputs and heads (datasets may carry ids and extras)."""
        names, targets = features.FEATURE_NAMES, features.TARGETS
        return ds.map(lambda f, y: ({k: f[k] for k in names}, {t: y[t] for t in targets}))

    # -------------------------------------------------------------- fit / predict
    def _fit(self, train: Any, valid: Any) -> dict:
        self._valid_sampler = None
        summary = self._fit_network(train, valid)
        if self._valid_sampler is not None:  # a tf.data split: the temperature's rows
            summary["temperature_sample"] = self._valid_sampler.record
        return summary

    def _fit_network(self, train: Any, valid: Any) -> dict:
        if isinstance(train, Mapping) and isinstance(valid, tf.data.Dataset):
            raise TypeError("numpy train data needs numpy valid data for the MLP")
        if self.start is not None:  # a regional fit from the global one
            return fit_mlp_warm(self, train, valid)
        for knob, allowed in KNOB_CHOICES.items():
            if self.hparams[knob] not in allowed:
                raise ValueError(f"mlp {knob} must be {' or '.join(map(repr, allowed))}, got "
                                 f"{self.hparams[knob]!r}")
        n = int(self.hparams.get("members", 1))
        if n < 1:
            raise ValueError(f"mlp members must be a whole number >= 1, got {n}")
        cfg, start = self.train_cfg, None
        keras.utils.set_random_seed(cfg.seed)
        if self.hparams["wide"] and self.hparams["wide_start"] == "logreg":
            # on the rows the logreg candidate fits on: at most max_train_rows (mlp_valid)
            cap = (cfg.max_train_rows, cfg.seed)
            (train_np, t_rec), (valid_np, v_rec) = (sample_dataset(train, *cap, "train"),
                                                    sample_dataset(valid, *cap, "validation"))
            self._start_sample = {"train": t_rec, "validation": v_rec}
            start = fit_wide_start(train_np, valid_np, self.encoders, self.priors,
                                   self.validation_weights(labels_of(valid_np)["age_gender"]),
                                   self.age_head, cfg,
                                   {"per_feature_l2": bool(self.hparams["wide_per_feature_l2"])},
                                   None if self.hparams["aid_start"] == "logreg"
                                   else float(self.hparams["l2_rows"] or 0.0))
            n_train = (t_rec or {}).get("rows_available") or len(labels_of(train_np)["age_gender"])
            del train_np, valid_np
        else:
            n_train = count_rows(train)
        unseen = UnseenRows(id_counts(train, self.encoders))  # filled before each score
        fits = [self._fit_member(train, valid, start, n_train, unseen, k) for k in range(n)]
        keep = fits[0][1]
        self._kept_valid = keep.best_kept  # the restored weights' validation logits
        if n > 1:  # one network, the mean of the members' logits (models.members)
            self.keras_model = self.build(n_train, start, width=n)
            members.merge([m for m, _ in fits], self.keras_model,
                          len(self.hparams["hidden_units"]), list(self.head_units()))
            merged = shipped_val_losses(self, valid)["age_gender"]
            self._kept_valid = self._scored_valid
        summary = self._fit_summary(keep, start, n_train)  # member 0's epochs
        if n > 1:
            scores = ", ".join(f"{k.history[k.best_index]['age_gender']:.4f}" for _, k in fits)
            notes.say(self.name, f"{n} members (seeds {self.train_cfg.seed}.., the first "
                                 f"above): AgeGender {scores}; their mean, one network: "
                                 f"{merged:.4f}")
            summary["members"] = [{"best_epoch": k.best_index, "val_loss_by_epoch": k.history}
                                  for _, k in fits]
            summary["best_val_loss"] = merged
        return summary

    def _fit_member(self, train: Any, valid: Any, start: Mapping | None, n_train: int,
                    unseen: UnseenRows, k: int) -> tuple[Any, "KeepBest"]:
        """Member ``k``'s network (seed ``seed + k``; member 0 continues the fit's seed), its
        phases and early stopping; returns the network at its kept weights and its scores."""
        if k:
            keras.utils.set_random_seed(self.train_cfg.seed + k)
        self.keras_model = self.build(n_train, start)
        cfg, patience, h = self.train_cfg, int(self.patience()), self.hparams
        keep = KeepBest(unseen.before(self.keras_model, lambda: shipped_val_losses(self, valid)),
                        patience, float(h["min_delta"]), kept=lambda: self._scored_valid)
        frozen = start is not None and h["wide_train"] == "frozen"
        phases = [(float(h["learning_rate"]), not frozen, cfg.max_epochs, patience)]
        joint = cfg.max_epochs if h["finetune_epochs"] is None else int(h["finetune_epochs"])
        if frozen and joint > 0:
            phases.append((float(h["finetune_lr"]), True, joint,
                           int(h.get("finetune_patience") or patience)))
        for rate, wide_trains, epochs, keep.patience in phases:
            self._train_phase(train, rate, wide_trains, epochs, keep)
            keep.phase_ends.append(len(keep.history) - 1)
        return self.keras_model, keep

    def _train_phase(self, train: Any, rate: float, wide_trains: bool, epochs: int,
                     keep: "KeepBest") -> None:
        """Up to ``epochs`` epochs of Adam at ``rate`` (the wide part fixed unless
        ``wide_trains``), continuing ``keep``'s validation history and best weights."""
        if self.hparams["wide"]:
            self.keras_model.get_layer("wide").trainable = wide_trains
        self.keras_model.compile(optimizer=keras.optimizers.Adam(rate), loss=self._losses())
        keras_state.build_before_fit(self, train)  # its train step is traced once, not twice
        cfg = self.train_cfg
        if isinstance(train, tf.data.Dataset):
            self.keras_model.fit(self._select(train), epochs=epochs, callbacks=[keep],
                                 verbose=0, shuffle=False)  # the dataset shuffles itself
        else:
            self.keras_model.fit(self._inputs(train), labels_of(train),
                                 batch_size=cfg.batch_size, epochs=epochs,
                                 callbacks=[keep], shuffle=True, verbose=0)
        if self.hparams["wide"]:
            self.keras_model.get_layer("wide").trainable = True

    def _fit_summary(self, keep: "KeepBest", start: Mapping | None, n_train: int) -> dict:
        first, best = keep.history[0], keep.history[keep.best_index]
        summary = {"epochs": len(keep.history) - 1, "best_val_loss": best["age_gender"],
                   "best_epoch": keep.best_index, "age_head": self.age_head,
                   "n_train": n_train, "val_loss_by_epoch": keep.history,
                   "phase_ends": list(keep.phase_ends)}
        if start is not None:
            summary["wide_start"] = {
                "lr_val_loss": first, "best_val_loss": best, "best_epoch": keep.best_index,
                "improved": keep.best_index > 0, "C": {t: start[t]["C"] for t in start},
                "feature_penalty": start["age_gender"].get("feature_penalty", {}),
                "sample": self._start_sample}
            verdict = (f"training improved it to {best['age_gender']:.4f} (epoch "
                       f"{keep.best_index})" if keep.best_index else
                       "no epoch beat it: the network stays the logistic regression")
            trail = ", ".join(f"{h['age_gender']:.4f}" for h in keep.history)
            notes.say(self.name, f"AgeGender's epoch scores {trail} (0: the wide part, a "
                                 f"logistic regression, {first['age_gender']:.4f}); {verdict}")
        return summary

    def natural_val_losses(self, valid: Any) -> dict[str, float]:
        """Per head, the validation log-loss moved to the natural priors and weighted back to
        the natural class mix (the champion rule's measure; temperature 1). A tf.data split is
        scored batch by batch and only a bounded sample keeps its logits (``mlp_valid``)."""
        raw, y, losses = validation_losses(self, valid)
        self._scored_valid = (raw, y)
        return losses

    def link(self, head: str) -> str:
        return self.age_head if head == "age" else "softmax"

    def _predict_raw(self, X: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return forward_in_batches(self, self._inputs(X))

    def _raw_and_labels(self, valid: Any):
        if not isinstance(valid, tf.data.Dataset):
            return super()._raw_and_labels(valid)
        self.natural_val_losses(valid)  # the kept rows (a bounded sample over the cap)
        return self._scored_valid

    # -------------------------------------------------------------- persistence / export
    def _save_weights(self, folder: str) -> dict:
        if self.keras_model is None:
            raise RuntimeError("MLP is not fitted")
        self.keras_model.save(os.path.join(folder, KERAS_FILE))
        # the bid-time export too, so that the end step exports without TensorFlow
        return {"age_head": self.age_head, "keras_file": KERAS_FILE,
                **ex.save_export(folder, self.export_numpy())}

    def _load_weights(self, folder: str, meta: Mapping[str, Any]) -> None:
        self.age_head = meta.get("age_head", self.age_head)
        self.keras_model = keras.saving.load_model(
            os.path.join(folder, KERAS_FILE), compile=False,
            custom_objects={"CornLoss": CornLoss, "WideLogits": WideLogits,
                            "ColumnL2": ColumnL2})
        # models saved before the wide part existed have none, whatever today's default says
        self.hparams["wide"] = any(layer.name == "wide" for layer in self.keras_model.layers)

    @classmethod
    def export(cls, model_dir: str) -> dict[str, Any]:
        """The ``NUMPY_LAYERS`` payload: the bid-time scorer runs it with NumPy alone."""
        return {ex.RUNTIME: ex.NUMPY_LAYERS, ex.EXPORT: cls.load(model_dir).export_numpy()}

    def export_numpy(self) -> dict:
        """Everything the bid-time scorer needs for a pure-NumPy forward pass.

        Forward pass: concatenate ``embeddings[i][1][id]`` in order, then the ``numeric``
        values in order; apply each trunk layer ``relu(x @ W + b)``; per head
        ``z = (x @ W + b + wide) / temperature[t]`` turned into probabilities by 'softmax' or
        'corn', where ``wide = sum_i wide[t][i][1][id_i] + numeric @ wide_numeric[t]`` when the
        model has a wide part (else 0),
        (``links.corn_probabilities``); then ``p ∝ p * prior_ratio[t]`` (renormalised). With
        ``activity_temperature``, AgeGender's T is its row's bin's (``models.activity_temp``).
        """
        if self.keras_model is None or self.priors is None:
            raise RuntimeError("MLP is not fitted")
        m = self.keras_model
        trunk = []
        for i in range(len(self.hparams["hidden_units"])):
            W, b = m.get_layer(f"trunk_{i}").get_weights()
            trunk.append((W, b, "relu"))

        def head(name: str, activation: str) -> tuple:
            return (*m.get_layer(name).get_weights(), activation)
        export = {
            "kind": self.name,
            "embeddings": [(n, m.get_layer(f"emb_{n}").get_weights()[0])
                           for n in features.CATEGORICAL_FEATURES],
            "numeric": list(features.NUMERIC_FEATURES),
            "trunk": trunk,
            "heads": {"gender": head("gender", "softmax"), "age": head("age", self.age_head),
                      "age_gender": head("age_gender", "softmax")},
            "temperature": {t: float(v) for t, v in self.temperature.items()},
            "prior_ratio": {t: np.asarray(r, dtype=np.float64)
                            for t, r in self.prior_ratio.items()},
        }
        if self.hparams["wide"]:
            export["wide"], export["wide_numeric"] = m.get_layer("wide").export(
                list(features.CATEGORICAL_FEATURES), list(self.head_units()))
        if self.activity_temperature is not None:
            export[EXPORT_KEY] = self.activity_temperature.export()
        return export
