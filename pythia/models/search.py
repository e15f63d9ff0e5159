"""Hyperparameter exploration: seeded random search over each model's own space.

``sample_configs(model, n, seed)`` returns config 0 = the model's defaults (``{}``) followed by
``n`` distinct random draws from ``Model.search_space()``; the flow fans out one ``train`` task
per (model, region, config) and ``best_config`` picks the winner on validation log-loss of
AgeGender.
"""
from __future__ import annotations

import json
import math
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

SELECTION_TARGET = "age_gender"  # the target whose validation log-loss ranks candidates


def _draw(rng: np.random.Generator, spec: Any) -> Any:
    if isinstance(spec, tuple) and spec and spec[0] == "log":
        lo, hi = math.log(spec[1]), math.log(spec[2])
        return float(f"{math.exp(rng.uniform(lo, hi)):.3g}")
    return spec[int(rng.integers(len(spec)))]


def sample_configs(model_name: str, n: int, seed: int) -> list[dict]:
    """Config 0 = defaults (``{}``), then ``n`` distinct random configs; deterministic in seed.

    Args:
        model_name: a registered model (``pythia.models.MODEL_NAMES``); its module is imported.
        n: number of random configs beyond the defaults (0 -> only the defaults).
        seed: search seed; each model gets its own stream (so adding a model changes nothing
            for the others).

    Returns:
        ``n + 1`` hparam dicts (config id = list index), each completed by the model's
        ``tie_hparams`` (knobs that follow others); fewer when a space of lists holds fewer
        than ``n`` configs (all of them then); only ``[{}]`` for a model with nothing to
        search (an empty ``search_space()``, e.g. the constant prior).
    """
    from pythia.models import get_model

    cls = get_model(model_name)
    if n < 0:
        raise ValueError(f"number of search configs must be >= 0, got {n}")
    space = cls.search_space()
    if not space:
        return [{}]
    if all(isinstance(v, list) for v in space.values()):
        size = math.prod(len(v) for v in space.values())
        if n > size:  # a small discrete space (e.g. logreg's) is drawn whole, not a failure
            print(f"search: {model_name} has {size} distinct configs; using all {size} instead "
                  f"of {n}")
            n = size
    rng = np.random.default_rng([int(seed), zlib.crc32(model_name.encode())])
    configs: list[dict] = [{}]
    seen = {json.dumps({}, sort_keys=True)}
    for _ in range(1000 * (n + 1)):
        if len(configs) > n:
            break
        cfg = cls.tie_hparams({k: _draw(rng, v) for k, v in space.items()})
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
