"""The model registry: every model kind by name, behind one interface (``base.Model``).

``MODELS`` maps 'mlp' / 'tabnet' / 'gbdt' to their classes. It imports a model's module on
first access, so ``import pythia.models`` (e.g. by the scorer or a flow's ``start`` step) does not
pull in TensorFlow or torch until that model is actually used.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from pythia.models.base import Model, read_meta
from pythia.models.train import train_candidate

_MODULES = {"mlp": ("pythia.models.mlp", "MLPModel"),
            "tabnet": ("pythia.models.tabnet", "TabNetModel"),
            "gbdt": ("pythia.models.gbdt", "GBDTModel")}


class _Registry(Mapping):
    """Read-only name -> model class mapping with lazy imports."""

    def __getitem__(self, name: str) -> type[Model]:
        if name not in _MODULES:
            raise KeyError(f"unknown model {name!r}; choose from {sorted(_MODULES)}")
        module, cls = _MODULES[name]
        return getattr(importlib.import_module(module), cls)

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)


MODELS: Mapping[str, type[Model]] = _Registry()
MODEL_NAMES: tuple[str, ...] = tuple(_MODULES)


def get_model(name: str) -> type[Model]:
    """The model class registered under ``name`` (ValueError naming the choices otherwise)."""
    if name not in _MODULES:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(_MODULES)}")
    return MODELS[name]


def load_model(path: str) -> Model:
    """Load any saved model folder (local or s3://): reads its kind, dispatches to its class."""
    from pythia import storage

    with storage.local_copy(path) as folder:
        kind = read_meta(folder).get("kind")
        return get_model(kind).load(folder)


__all__ = ["MODELS", "MODEL_NAMES", "Model", "get_model", "load_model", "train_candidate"]
