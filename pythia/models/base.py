"""The one model interface: fit / predict_proba / save / load, with calibration and priors.

Subclasses only learn and emit *raw logits* per head under the training priors (``_fit``,
``_predict_raw``; a head's ``link`` — softmax or CORN — turns them into probabilities) and
persist their weights (``_save_weights`` / ``_load_weights``). They also answer for themselves
what the rest of the pipeline would otherwise look up by name: ``is_baseline``,
``input_format``, ``search_space()`` and ``export()``. This base class owns what must be
identical for every model: input checks, per-head temperature scaling fitted on validation, the
move to natural priors, and the saved folder layout (``meta.json`` + ``encoders.json`` + the
model's own files).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Mapping

import numpy as np

from pythia import features, stack, storage
from pythia.config import TrainConfig
from pythia.features import Encoders
from pythia.models import activity_temp as at, crossfit, export as ex, priors as pr
from pythia.models import start_temp
from pythia.models.raw_memo import RawMemo

META_FILE = "meta.json"
ENCODERS_FILE = "encoders.json"
# The age head options: CORN (ordinal, rank-consistent) or a plain softmax.
AGE_HEADS = ("corn", "softmax")
_AGE_HEAD_ALIASES = {"ordinal": "corn", "corn": "corn", "softmax": "softmax"}
# How ``fit`` reads its training data: numpy dicts (``pythia.tfrecords.load_numpy``, the whole
# split in memory) or the streamed (features, labels) ``tf.data.Dataset`` of ``make_dataset``.
NUMPY = "numpy"
TF_DATASET = "tf.data"
INPUT_FORMATS = (NUMPY, TF_DATASET)


def normalize_age_head(name: str) -> str:
    """'ordinal' and 'corn' both mean the CORN head; 'softmax' the plain one."""
    try:
        return _AGE_HEAD_ALIASES[str(name).lower()]
    except KeyError:
        raise ValueError(f"age_head must be one of {sorted(_AGE_HEAD_ALIASES)}, got {name!r}"
                         ) from None


def labels_of(data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{'gender': y_gender, 'age': y_age, 'age_gender': y_age_gender}`` from a numpy split."""
    missing = [c for c in features.LABEL_COLUMNS.values() if c not in data]
    if missing:
        raise KeyError(f"label column(s) {missing} missing from the data (keys: {sorted(data)})")
    return {t: np.asarray(data[c], dtype=np.int64) for t, c in features.LABEL_COLUMNS.items()}


def train_config_to_json(cfg: TrainConfig) -> dict:
    doc = dataclasses.asdict(cfg)
    doc["hparams"] = dict(cfg.hparams)
    return doc


class Model:
    """Base class of every registered model (see the module docstring for the split of work)."""

    name: str = "base"
    # True when the model scores AgeGender only; False when every target has its own head (the
    # MLP's gender and age are training aids). Either way a model outputs gender and age as the
    # marginals of its AgeGender probabilities, so the three agree exactly (issue 15).
    joint_only: bool = False
    # True for the reference model every champion must beat (``BASELINE_MODELS``).
    is_baseline: bool = False
    bins_by_activity: bool = True  # False: one temperature, no bins (the constant class prior)
    # What ``train_candidate`` feeds ``fit`` (``INPUT_FORMATS``); every model also fits on
    # numpy dicts (the tests' tiny in-memory splits).
    input_format: str = NUMPY
    # True when ``fit(..., start=other)`` can start from a fitted model of the same class and
    # encoders (a regional candidate fine-tuned from the global one); ``_fit`` reads
    # ``self.start``.
    warm_starts: bool = False

    def __init__(self, encoders: Encoders, hparams: Mapping[str, Any] | None = None,
                 train_cfg: TrainConfig = TrainConfig()) -> None:
        self.encoders = encoders
        self.train_cfg = train_cfg
        defaults = self.default_hparams()
        given = {**dict(train_cfg.hparams), **dict(hparams or {})}
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ValueError(f"unknown hparam(s) {unknown} for model {self.name!r}; "
                             f"known: {sorted(defaults)}")
        self.hparams: dict[str, Any] = {**defaults, **given}
        self.n_age = len(encoders.age_edges)
        self.n_classes = {t: len(features.class_labels(t, encoders.age_edges))
                          for t in features.TARGETS}
        self.priors: dict | None = None
        self.prior_ratio: dict[str, np.ndarray] = {}
        self.temperature: dict[str, float] = {t: 1.0 for t in self.heads}
        self.activity_temperature: at.ActivityTemperature | None = None  # AgeGender's per bin
        # Per AgeGender class, the weight of a validation row that undoes the validation
        # day's class resampling (1 / keep-rate, as evaluation weighs it); set by the caller
        # before ``fit``. None: pi_natural / pi_train of the training priors instead.
        self.valid_class_weights: np.ndarray | None = None
        # (raw logits, labels) of validation under the final weights, when ``_fit`` already
        # computed them (the MLP's early stopping): ``fit`` calibrates on them, once
        self._kept_valid: tuple[dict, dict] | None = None
        # numpy models: the validation logits calibration computed, by impression id, for
        # the predictions file's validation pass (``raw_memo``); ``forget_validation`` drops it
        self._valid_memo: RawMemo | None = None
        self.start: "Model | None" = None  # the fitted model ``fit`` starts from, during it

    def patience(self) -> int:
        """Epochs without a validation gain before early stopping: the model's ``patience``
        hparam when it has one that is set, else ``TrainConfig.patience``."""
        own = self.hparams.get("patience")
        return int(self.train_cfg.patience if own is None else own)

    def serve_as_start(self) -> None:
        """This model will be the ``start`` of other fits (its family's regions): keep from now
        on what they can reuse. Nothing by default; gbdt keeps its raw scores."""

    # ------------------------------------------------------------ to implement per model
    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        """Model-specific knobs and their defaults (the search space's config 0)."""
        return {}

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        """Knobs the random search draws (``search.sample_configs``), in draw order.

        Each knob maps to a list of choices, or ``("log", lo, hi)`` for a log-uniform float.
        Changing the order or the choices changes every sampled config of the model.
        """
        return {}

    @classmethod
    def tie_hparams(cls, config: dict[str, Any]) -> dict[str, Any]:
        """A sampled config with the knobs that follow others filled in (default: as drawn)."""
        return config

    @classmethod
    def export(cls, model_dir: str) -> dict[str, Any]:
        """What the scoring bundle stores for the model saved in ``model_dir``.

        Default: the saved folder itself, run by the ``SAVED_MODEL`` runtime (the scorer loads
        the model and calls ``predict_proba``). Models with a faster bid-time form override it
        (see ``pythia.models.export`` for the runtime kinds and their payloads).
        """
        return {ex.RUNTIME: ex.SAVED_MODEL, ex.MODEL_DIR: model_dir}

    def _fit(self, train: Any, valid: Any) -> dict:
        """Learn from ``train``; early-stop on ``valid``. Returns {'epochs': int, ...}."""
        raise NotImplementedError

    def _predict_raw(self, X: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Logits (training priors) for each of ``self.heads``; ``self.link(head)`` maps them
        to probabilities. Probability-only models return ``priors.log_probabilities(p)``."""
        raise NotImplementedError

    def link(self, head: str) -> str:
        """How a head's logits become probabilities: 'softmax' (default) or 'corn'."""
        return "softmax"

    def _save_weights(self, folder: str) -> dict:
        """Write the model's own files into ``folder``; returns extra JSON-able meta."""
        raise NotImplementedError

    def _load_weights(self, folder: str, meta: Mapping[str, Any]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------ shared behaviour
    @property
    def heads(self) -> tuple[str, ...]:
        return ("age_gender",) if self.joint_only else features.TARGETS

    def check_features(self, X: Mapping[str, np.ndarray]) -> int:
        """Check every feature is present, of one length and (ids) inside its table; returns n."""
        missing = [f for f in features.FEATURE_NAMES if f not in X]
        if missing:
            raise KeyError(f"feature(s) {missing} missing from the input (keys: {sorted(X)})")
        lengths = {f: len(X[f]) for f in features.FEATURE_NAMES}
        n = lengths[features.FEATURE_NAMES[0]]
        bad = {f: m for f, m in lengths.items() if m != n}
        if bad:
            raise ValueError(f"features have different lengths: {bad} vs {n}")
        for f in features.CATEGORICAL_FEATURES:
            ids = np.asarray(X[f])
            size = self.encoders.vocabularies[f].size
            if ids.size and (ids.min() < 0 or ids.max() >= size):
                raise ValueError(f"feature {f!r} has ids outside [0, {size}): "
                                 f"[{ids.min()}, {ids.max()}]; were the encoders the same?")
        return n

    def _raw_and_labels(self, valid: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Raw logits and labels of the validation data (numpy dict by default)."""
        self.check_features(valid)
        return self._predict_raw(valid), at.with_activity(labels_of(valid), valid)

    def validation_weights(self, y_age_gender: np.ndarray) -> np.ndarray:
        """Per validation row, the weight that makes averages over the (resampled) validation
        day natural-distribution averages: the champion rule's log-loss weighting. Needs
        ``fit``'s priors when no ``valid_class_weights`` were given."""
        per_class = (self.valid_class_weights if self.valid_class_weights is not None
                     else self.prior_ratio["age_gender"])
        return np.asarray(per_class, dtype=np.float64)[np.asarray(y_age_gender, dtype=np.int64)]

    def _calibrated(self, raw: Mapping[str, np.ndarray], activity: Any = None) -> dict:
        """Each head at its temperature; AgeGender's per row of ``activity`` when it has bins
        (and without its deep part in wide-only bins: ``ActivityTemperature.logits``)."""
        temps: dict[str, Any] = dict(self.temperature)
        if self.activity_temperature is not None and activity is not None:
            temps[at.JOINT] = self.activity_temperature.per_row(activity)
            raw = {**raw, at.JOINT: self.activity_temperature.logits(raw, activity)}
        return {t: at.scaled_probabilities(raw[t], temps[t], self.link(t)) for t in self.heads}

    def _expand(self, per_head: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Gender and age as the marginals of AgeGender (see ``joint_only``)."""
        return features.marginals_from_joint(per_head["age_gender"], self.n_age)

    def fit(self, train: Any, valid: Any, priors: Mapping, start: "Model | None" = None
            ) -> dict:
        """Fit, early-stop on ``valid``, then fit the per-head temperature on ``valid``.

        Temperature divides a head's logits (``link(z / T)``), fitted on validation before any
        prior correction (validation is resampled like training: it shares the training
        priors); AgeGender's also per bin of the user's activity (``activity_temp``).

        Args:
            train, valid: numpy dicts (features + ``y_*`` labels); the MLP also takes the
                ``(features, labels)`` tf.data.Dataset of ``pythia.tfrecords.make_dataset``.
            priors: ``{'train': {target: [...]}, 'natural': {target: [...]}}``.
            start: a fitted model of the same class and encoders to start from (e.g. the
                global candidate, for a regional one); None: from scratch.

        Returns:
            Summary: epochs, best_val_loss, seconds, temperature, val_logloss per target (the
            calibrated posteriors under the training priors, which validation shares).

        Raises:
            ValueError: ``start`` given to a model that does not warm-start, of another class,
                or fitted with other encoders.
        """
        if start is not None:
            if not self.warm_starts:
                raise ValueError(f"model {self.name!r} does not start from a fitted model "
                                 f"(warm_starts is False); fit it from scratch")
            if type(start) is not type(self) or start.encoders != self.encoders:
                raise ValueError(f"model {self.name!r} can start only from a fitted "
                                 f"{self.name!r} model with the same encoders, got "
                                 f"{getattr(start, 'name', type(start).__name__)!r}")
        self.start = start
        try:
            return self._fit_and_calibrate(train, valid, priors)
        finally:
            self.start = None

    def _fit_and_calibrate(self, train: Any, valid: Any, priors: Mapping) -> dict:
        self.priors = pr.check_priors(priors, self.n_classes)
        self.prior_ratio = {t: pr.prior_ratio(self.priors["train"][t], self.priors["natural"][t])
                            for t in features.TARGETS}
        if isinstance(train, Mapping):
            self.check_features(train)
            labels_of(train)
        t0 = time.perf_counter()
        self._kept_valid = None
        summary = dict(self._fit(train, valid))
        self.kept_start = (summary.get("start") or {}).get("epochs_or_iterations") == 0
        kept, self._kept_valid = self._kept_valid, None
        raw, y = kept if kept is not None else self._raw_and_labels(valid)
        self._valid_memo = (RawMemo(valid[features.IMPRESSION_ID], raw) if kept is None and
                            isinstance(valid, Mapping) and features.IMPRESSION_ID in valid
                            else None)
        self.temperature = {**self.temperature, **start_temp.fit_temperatures(self, raw, y)}
        # a warm start keeps its start's bins' shape (a kept start its scale only beyond noise)
        self.activity_temperature = at.fit_for(self, raw, y, self.temperature[at.JOINT])
        self.fold_calibration = crossfit.fold_calibrations(self, raw, y)
        calibrated = self._expand(self._calibrated(raw, y.get(at.FEATURE)))
        summary["val_logloss"] = {t: (pr.mean_log_loss(calibrated[t], y[t]) if len(y[t])
                                      else float("nan")) for t in features.TARGETS}
        summary["temperature"] = dict(self.temperature)
        summary["activity_temperature"] = at.to_json(self.activity_temperature)
        summary["seconds"] = time.perf_counter() - t0
        summary["n_valid"] = int(len(y["age_gender"]))
        return summary

    def predict_proba(self, X: Mapping[str, np.ndarray], groups: np.ndarray | None = None
                      ) -> dict[str, np.ndarray]:
        """Posteriors under the natural priors for every target; rows sum to 1.

        Args:
            X: feature dict (``FEATURES`` names; extra keys are ignored).
            groups: optional (n,) group per row (e.g. region) for ``prior_correction='em'``.

        Returns:
            {'gender': (n, 2), 'age': (n, n_age), 'age_gender': (n, 2*n_age)}.
        """
        if self.priors is None:
            raise RuntimeError(f"model {self.name!r} is not fitted")
        n = self.check_features(X)
        if n == 0:
            return {t: np.zeros((0, k)) for t, k in self.n_classes.items()}
        known = (self._valid_memo.lookup(X[features.IMPRESSION_ID])
                 if self._valid_memo is not None and features.IMPRESSION_ID in X else None)
        calibrated = self._calibrated(known if known is not None else self._predict_raw(X),
                                      X[at.FEATURE])
        method = self.train_cfg.prior_correction
        corrected = {t: pr.correct_priors(calibrated[t], method, self.priors["train"][t],
                                          self.priors["natural"][t], groups)
                     for t in self.heads}
        out = self._expand(corrected)
        for t, p in out.items():
            if not np.all(np.isfinite(p)):
                raise FloatingPointError(f"model {self.name!r} produced non-finite {t} "
                                         f"probabilities")
        return out

    def forget_validation(self) -> None:
        """Drop the validation logits kept from calibration (once its predictions are out)."""
        self._valid_memo = None

    def save(self, path: str) -> None:
        """Write the model folder (local or s3://) atomically: meta, encoders, weights."""
        if self.priors is None:
            raise RuntimeError(f"model {self.name!r} is not fitted; nothing to save")
        with storage.staged_dir(path) as folder:
            extra = self._save_weights(folder)
            meta = {
                "kind": self.name,
                "spec_version": features.spec_version(),
                "stack": stack.versions(),  # the libraries that fitted it (pythia.stack)
                "hparams": self.hparams,
                "train_cfg": train_config_to_json(self.train_cfg),
                "priors": self.priors,
                "prior_ratio": {t: r.tolist() for t, r in self.prior_ratio.items()},
                "temperature": self.temperature,
                "activity_temperature": at.to_json(self.activity_temperature),
                "age_edges": list(self.encoders.age_edges),
                "extra": extra,
            }
            with open(os.path.join(folder, META_FILE), "w", encoding="utf8") as f:
                json.dump(meta, f, indent=2, sort_keys=True, default=_json_default)
            with open(os.path.join(folder, ENCODERS_FILE), "w", encoding="utf8") as f:
                json.dump(self.encoders.to_json(), f)

    @classmethod
    def load(cls, path: str) -> "Model":
        """Rebuild a saved model from its folder (the saved config wins over today's defaults)."""
        with storage.local_copy(path) as folder:
            meta = read_meta(folder)
            if meta.get("kind") != cls.name:
                raise ValueError(f"{path} holds a {meta.get('kind')!r} model, not {cls.name!r}")
            if meta.get("spec_version") != features.spec_version():
                raise ValueError(f"{path} was saved for feature spec {meta.get('spec_version')}, "
                                 f"this code has {features.spec_version()}")
            with open(os.path.join(folder, ENCODERS_FILE), encoding="utf8") as f:
                encoders = Encoders.from_json(json.load(f))
            # training knobs a newer version added do not change how a model scores: a
            # folder saved by newer code loads (a rollback, a datastore shared by versions)
            known = {f.name for f in dataclasses.fields(TrainConfig)}
            cfg = TrainConfig(**{k: v for k, v in meta["train_cfg"].items() if k in known})
            model = cls(encoders, meta["hparams"], dataclasses.replace(cfg, hparams={}))
            model.train_cfg = cfg
            model.priors = meta["priors"]
            model.prior_ratio = {t: np.asarray(r) for t, r in meta["prior_ratio"].items()}
            model.temperature = {t: float(v) for t, v in meta["temperature"].items()}
            model.activity_temperature = at.from_json(meta.get("activity_temperature"))
            model._load_weights(folder, meta.get("extra", {}))
        return model


def read_meta(folder: str) -> dict:
    """The ``meta.json`` of a model folder, with a clear error when it is not one."""
    path = os.path.join(folder, META_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{folder} is not a saved pythia model (no {META_FILE})")
    with open(path, encoding="utf8") as f:
        return json.load(f)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot store {type(obj)} in model meta")


def start_record(val_loss_at_start: float, best_val_loss: float, kept: int, tried: int,
                 measure: str) -> dict:
    """The fit summary's ``start``: the start's and the kept validation loss on the region,
    whether the regional steps improved on it, how many of them the model keeps
    (``epochs_or_iterations``; 0 = the start) and how many ran (``tried``)."""
    return {"warm": True, "val_loss_at_start": float(val_loss_at_start),
            "best_val_loss": float(best_val_loss),
            "improved": bool(best_val_loss < val_loss_at_start),
            "epochs_or_iterations": int(kept), "tried": int(tried), "measure": measure}
