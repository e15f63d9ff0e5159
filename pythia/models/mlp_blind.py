"""``mlp_blind``: the MLP trained blind to some categorical features, to measure what they are
worth on the run's own rows (issue #15: the regional make as "a region offset in one model",
chosen by numbers against regional fine-tunes without it).

Everything but ``blind_to`` (default ``["region_device_make"]``, ``[models.mlp_blind]`` in the
flow's config) is the MLP's, defaults and search space included. The fit sees each blind
feature as ``MISSING_ID`` on every train and validation row (early stopping, the LR start, the
temperatures, the out-of-fold calibrations: all of them), and when it ends every row of that
feature's embedding and wide table is set to the ``MISSING_ID`` row the fit trained
(``seal``). The saved network is then blind whatever id a row carries: the model, the bundle's
NumPy scorer and the ONNX graph score the same probabilities, so it is a candidate like any
other (it may be a region's champion and ship) and needs no scorer of its own.

Evaluate pairs each blind candidate with its sighted twin (the ``mlp`` candidate of the same
region and config) on the same rows: the ``blind_twins`` table (``evaluate.twins``).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from pythia import features
from pythia.features import MISSING_ID
from pythia.models import BLIND_TWINS
from pythia.models.mlp import MLPModel

BLIND_KEY = "blind_to"  # the hparam: the categorical features the fit never sees
DEFAULT_BLIND = ("region_device_make",)


def blind_features(hparams: Mapping[str, Any]) -> tuple[str, ...]:
    """The hparam's features, checked: categorical features of the spec, each once."""
    names = hparams.get(BLIND_KEY) or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    for n in names:
        if n not in features.CATEGORICAL_FEATURES:
            raise ValueError(
                f"mlp_blind {BLIND_KEY} names {n!r}, not a categorical feature: choose from "
                f"{list(features.CATEGORICAL_FEATURES)} (numeric ones feed the activity "
                f"temperatures too, so a fit cannot be made blind to them)")
    if len(set(names)) != len(names):
        raise ValueError(f"mlp_blind {BLIND_KEY} names a feature twice: {list(names)}")
    if not names and BLIND_KEY in hparams:
        raise ValueError(f"mlp_blind {BLIND_KEY} is empty: name the categorical feature(s) "
                         f"its fit must not see (else it is the MLP; train that instead)")
    return names


def mask_split(data: Any, names: tuple[str, ...]) -> Any:
    """A numpy split (dict) or a ``(features, labels)`` tf.data.Dataset with every ``names``
    column set to ``MISSING_ID``; the input itself is left as it was."""
    if not names:
        return data
    if isinstance(data, Mapping):
        return {k: (np.full_like(np.asarray(v), MISSING_ID) if k in names else v)
                for k, v in data.items()}
    if isinstance(data, tf.data.Dataset):
        def mask(x: dict, y: Any) -> tuple:
            return {k: (tf.fill(tf.shape(v), tf.constant(MISSING_ID, v.dtype))
                        if k in names else v) for k, v in x.items()}, y
        return data.map(mask, num_parallel_calls=tf.data.AUTOTUNE)
    raise TypeError(f"mlp_blind cannot mask {type(data).__name__}: numpy dict or tf.data "
                    f"(features, labels) dataset expected")


class MLPBlindModel(MLPModel):
    """The MLP, blind to ``blind_to``'s categorical features (the module docstring)."""

    name = "mlp_blind"
    sighted = BLIND_TWINS[name]  # the model it is the twin of: the network with every feature

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return {**super().default_hparams(), BLIND_KEY: list(DEFAULT_BLIND)}

    @classmethod
    def check_knobs(cls, knobs: Mapping[str, Any]) -> None:
        """The config's ``[models.mlp_blind]`` values, checked before the ETL runs."""
        blind_features({**cls.default_hparams(), **knobs})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hparams[BLIND_KEY] = list(blind_features(self.hparams))

    def fit(self, train: Any, valid: Any, priors: Mapping, start: "MLPModel | None" = None
            ) -> dict:
        names = tuple(self.hparams[BLIND_KEY])  # checked by __init__
        summary = super().fit(mask_split(train, names), mask_split(valid, names), priors,
                              start=start)
        self.seal()
        return summary

    def seal(self) -> None:
        """Every row of each blind feature's embedding and wide table := its ``MISSING_ID``
        row, the one the fit trained: the network gives every id the same answer."""
        names = tuple(self.hparams[BLIND_KEY])
        model = self.keras_model
        if model is None or not names:
            return
        for n in names:
            layer = model.get_layer(f"emb_{n}")
            (table,) = layer.get_weights()
            layer.set_weights([np.broadcast_to(table[MISSING_ID], table.shape).copy()])
        if self.hparams["wide"]:
            wide = model.get_layer("wide")
            table = np.array(wide.table.numpy())
            for n in names:
                i = list(features.CATEGORICAL_FEATURES).index(n)
                lo = int(wide.offsets[i])
                table[lo:lo + wide.sizes[i]] = table[lo + MISSING_ID]
            wide.table.assign(table)
