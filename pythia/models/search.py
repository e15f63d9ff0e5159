"""Hyperparameter exploration: seeded random search over a small space per model.

``sample_configs(model, n, seed)`` returns config 0 = the model's defaults (``{}``) followed by
``n`` distinct random draws; the flow fans out one ``train`` task per (model, region, config)
and ``best_config`` picks the winner on validation log-loss of AgeGender.
"""
from __future__ import annotations

import json
import math
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

# Each knob: a list of choices, or ("log", lo, hi) for a log-uniform float.
SPACES: dict[str, dict[str, Any]] = {
    "mlp": {
        "hidden_units": [[64], [128, 64], [256, 128], [512, 256]],
        "dropout": [0.0, 0.1, 0.2, 0.3],
        "learning_rate": ("log", 3e-4, 3e-3),
        "embedding_max_dim": [8, 16, 24],
        "age_head": ["corn", "softmax"],  # ordinal vs plain: decided by validation numbers
    },
    "tabnet": {
        "n_d": [8, 16, 32],
        "n_steps": [3, 4, 5],
        "gamma": [1.0, 1.3, 1.5],
        "lambda_sparse": ("log", 1e-5, 1e-2),
        "learning_rate": ("log", 5e-3, 5e-2),
    },
    "gbdt": {
        "learning_rate": ("log", 0.03, 0.3),
        "max_leaf_nodes": [15, 31, 63],
        "min_samples_leaf": [10, 20, 50, 100],
        "l2_regularization": [0.0, 0.1, 1.0],
    },
}
SELECTION_TARGET = "age_gender"


def _draw(rng: np.random.Generator, spec: Any) -> Any:
    if isinstance(spec, tuple) and spec and spec[0] == "log":
        lo, hi = math.log(spec[1]), math.log(spec[2])
        return float(f"{math.exp(rng.uniform(lo, hi)):.3g}")
    return spec[int(rng.integers(len(spec)))]


def sample_configs(model_name: str, n: int, seed: int) -> list[dict]:
    """Config 0 = defaults (``{}``), then ``n`` distinct random configs; deterministic in seed.

    Args:
        model_name: a registered model ('mlp', 'tabnet', 'gbdt').
        n: number of random configs beyond the defaults (0 -> only the defaults).
        seed: search seed; each model gets its own stream (so adding a model changes nothing
            for the others).

    Returns:
        ``n + 1`` hparam dicts (config id = list index). For tabnet, ``n_a`` follows ``n_d``.
    """
    if model_name not in SPACES:
        raise ValueError(f"unknown model {model_name!r}; choose from {sorted(SPACES)}")
    if n < 0:
        raise ValueError(f"number of search configs must be >= 0, got {n}")
    space = SPACES[model_name]
    rng = np.random.default_rng([int(seed), zlib.crc32(model_name.encode())])
    configs: list[dict] = [{}]
    seen = {json.dumps({}, sort_keys=True)}
    for _ in range(1000 * (n + 1)):
        if len(configs) > n:
            break
        cfg = {k: _draw(rng, v) for k, v in space.items()}
        if model_name == "tabnet":
            cfg["n_a"] = cfg["n_d"]
        key = json.dumps(cfg, sort_keys=True)
        if key not in seen:
            seen.add(key)
            configs.append(cfg)
    if len(configs) <= n:
        raise ValueError(f"the {model_name} search space has fewer than {n} distinct configs")
    return configs


def best_config(results: Sequence[Mapping[str, Any]], target: str = SELECTION_TARGET) -> dict:
    """The result (a ``train_candidate`` return value) with the lowest validation log-loss.

    Compare candidates of one (model, region) — or of one region across models — by passing
    only those results. Candidates without a finite ``val_logloss[target]`` cannot win.
    """
    def loss(r: Mapping[str, Any]) -> float:
        v = (r.get("val_logloss") or {}).get(target)
        return float(v) if v is not None else float("nan")

    scored = [r for r in results if math.isfinite(loss(r))]
    if not scored:
        raise ValueError(f"no result has a finite validation log-loss for {target!r} "
                         f"({len(results)} result(s) given)")
    return dict(min(scored, key=lambda r: (loss(r), r.get("config_id", 0))))
