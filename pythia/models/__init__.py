"""The model registry: every model kind by name, behind one interface (``base.Model``).

``_MODULES`` is the one list of model names in the code base: everything else asks the classes
(``is_baseline``, ``input_format``, ``search_space()``, ``export()``). ``MODELS`` maps a name to
its class and imports the class's module on first access, so ``import pythia.models`` (e.g. by
the scorer or a flow's ``start`` step) pulls in neither TensorFlow nor torch, nor pyarrow: the
stage entry points and the base class load on first use too.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pythia.models.base import Model, read_meta
    from pythia.models.crossfit import fold_regions
    from pythia.models.family import train_candidate, train_families, train_family
    from pythia.models.train import check_model_hparams, fit_candidate, train_grid

_MODULES = {"mlp": ("pythia.models.mlp", "MLPModel"),
            "mlp_blind": ("pythia.models.mlp_blind", "MLPBlindModel"),
            "tabnet": ("pythia.models.tabnet", "TabNetModel"),
            "gbdt": ("pythia.models.gbdt", "GBDTModel"),
            "logreg": ("pythia.models.logreg", "LogRegModel"),
            "class_prior": ("pythia.models.prior", "PriorModel")}
# Seconds a ``train`` task of each model family took on the default world (its global
# candidate and 4 regions, two one-thread tasks at a time, idle; session 28's run
# 1796289062933437). Kept here, not on the classes, so ordering the foreach imports neither
# TensorFlow nor torch. ``train_families`` starts the costliest families first; only the
# order is used. A model missing here sorts as 0 s (last).
TYPICAL_TASK_SECONDS = {"gbdt": 245.0, "mlp": 210.0, "tabnet": 93.0, "logreg": 26.0,
                        "class_prior": 9.0,
                        "mlp_blind": 200.0}  # the MLP's, a little less: ties sort by ask
# A model trained blind to some features -> the model it is the twin of: it trains with that
# model's ``[models.*]`` knobs and searched configs (``train_grid``), so that evaluate's
# ``blind_twins`` compares fits that differ by the features alone.
BLIND_TWINS = {"mlp_blind": "mlp"}
# What ``--models default`` (the flow's default) trains: the models the product is built
# around (the wide & deep MLP, TabNet) and the baseline every champion must beat (logreg; the
# class prior is always added). gbdt is one flag away (``--models all``): a contender that has
# never won a region on the synthetic worlds (default world, natural test day, AgeGender: 1.956
# against the MLP's 1.832, run 1796324132643841; nor on the large world) and whose task is the
# longest of the run (222 s of a 400 s run on the 2-core reference machine; without it the run
# took 254 s, its champions unchanged: session 31, docs/scaling.md).
DEFAULT_MODELS = ("mlp", "tabnet", "logreg")
# The constant class-prior line: ``train_grid`` (so ``train_families``) adds it to every run
# (even when the run's ``--models`` omit it); no region's champion is blessed unless it beats it.
REFERENCE_MODEL = "class_prior"
# Names this package exports from submodules that import numpy, scipy, pyarrow: loaded on use.
_LAZY = {"Model": "pythia.models.base", "read_meta": "pythia.models.base",
         "fit_candidate": "pythia.models.train", "train_candidate": "pythia.models.family",
         "train_grid": "pythia.models.train", "train_families": "pythia.models.family",
         "check_model_hparams": "pythia.models.train",
         "train_family": "pythia.models.family", "fold_regions": "pythia.models.crossfit"}


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


def baseline_models() -> tuple[str, ...]:
    """Names of the models whose class says ``is_baseline`` (imports every model's module)."""
    return tuple(name for name in MODEL_NAMES if MODELS[name].is_baseline)


def load_model(path: str) -> Model:
    """Load any saved model folder (local or s3://): reads its kind, dispatches to its class."""
    from pythia import storage
    from pythia.models.base import read_meta

    with storage.local_copy(path) as folder:
        kind = read_meta(folder).get("kind")
        return get_model(kind).load(folder)


def __getattr__(name: str) -> Any:
    # PEP 562: ``BASELINE_MODELS`` is computed on first access because it must import every
    # model (TensorFlow, torch, scikit-learn); the names in _LAZY come from their modules.
    if name == "BASELINE_MODELS":
        value = baseline_models()
        globals()[name] = value
        return value
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BASELINE_MODELS", "DEFAULT_MODELS", "MODELS", "MODEL_NAMES", "Model",
           "REFERENCE_MODEL", "TYPICAL_TASK_SECONDS",
           "baseline_models", "fit_candidate", "fold_regions", "get_model", "load_model",
           "read_meta", "train_candidate", "train_families", "train_family", "train_grid",
           "check_model_hparams"]
