"""The ``numpy_layers`` export format of an MLP: its check and its ``.npz`` round trip.

The format is the payload of ``MLPModel.export_numpy()`` (see its docstring for the forward
pass it defines); ``pythia.scoring.runtime.FusedMLP`` runs it, ``pythia.scoring.onnx_graph``
turns it into ONNX, and a bundle stores it with ``save_export_npz``.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

from pythia import features
from pythia.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, TARGETS, Encoders
from pythia.models.export import ACTIVITY_TEMPERATURE as ACTIVITY

EXPORT_KEYS = ("kind", "embeddings", "numeric", "trunk", "heads", "temperature", "prior_ratio")
# Optional, together: {target: [(feature, (rows, head outputs) table), ...]} and
# {target: (n_numeric, head outputs)} -- the wide part added to each head's logits.
WIDE, WIDE_NUMERIC = "wide", "wide_numeric"
ACTIVATIONS = ("relu", "linear")
LINKS = {"gender": ("softmax",), "age": ("corn", "softmax"), "age_gender": ("softmax",)}


def check_export(export: Mapping[str, Any], encoders: Encoders) -> None:
    """Validate an ``export_numpy()`` dict against the feature spec and the encoders.

    Raises:
        ValueError: naming the first inconsistent entry (order, shapes, links, values).
    """
    missing = sorted(set(EXPORT_KEYS) - set(export))
    if missing:
        raise ValueError(f"export lacks {missing} (has {sorted(export)})")
    if not isinstance(export["kind"], str) or not export["kind"]:
        # the name of the model that exported it (recorded, not dispatched on)
        raise ValueError(f"export kind must name the exporting model, got {export['kind']!r}")
    names = [name for name, _ in export["embeddings"]]
    if names != list(CATEGORICAL_FEATURES):
        raise ValueError(f"export embeddings {names} are not the categorical FEATURES in order "
                         f"{list(CATEGORICAL_FEATURES)}")
    if list(export["numeric"]) != list(NUMERIC_FEATURES):
        raise ValueError(f"export numeric {list(export['numeric'])} are not the numeric FEATURES "
                         f"in order {list(NUMERIC_FEATURES)}")
    width = 0
    for name, table in export["embeddings"]:
        table = np.asarray(table)
        size = encoders.vocabularies[name].size
        if table.ndim != 2 or table.shape[0] < size:
            raise ValueError(f"embedding {name!r} has shape {table.shape}; needs 2-D with at "
                             f"least {size} rows (the vocabulary size)")
        _check_finite(table, f"embedding {name!r}")
        width += table.shape[1]
    width += len(NUMERIC_FEATURES)
    for i, (W, b, act) in enumerate(export["trunk"]):
        W, b = np.asarray(W), np.asarray(b)
        if act not in ACTIVATIONS:
            raise ValueError(f"trunk layer {i} activation {act!r} not in {ACTIVATIONS}")
        if W.ndim != 2 or W.shape[0] != width or b.shape != (W.shape[1],):
            raise ValueError(f"trunk layer {i} has W {W.shape}, b {b.shape}; input width is "
                             f"{width}")
        _check_finite(W, f"trunk layer {i} W")
        _check_finite(b, f"trunk layer {i} b")
        width = W.shape[1]
    _check_heads(export, encoders, width)
    if WIDE in export or WIDE_NUMERIC in export:
        _check_wide(export)
    if ACTIVITY in export:
        check_activity(export[ACTIVITY])


ACTIVITY_KEYS = ("edges", "temperature", "deep")  # the entry's arrays (``deep``: optional)


def check_activity(entry: Any) -> None:
    """The optional per-bin temperature of AgeGender (``models.activity_temp``): a numeric
    feature, k strictly increasing finite edges on its normalised value, k + 1 temperatures,
    and optionally ``deep``: k + 1 factors, 1 or 0, of the head's deep logits per bin (0: the
    wide part alone scores the bin)."""
    if not isinstance(entry, Mapping) or not (
            {"feature", "edges", "temperature"} <= set(entry)
            <= {"feature", "edges", "temperature", "deep"}):
        raise ValueError(f"export {ACTIVITY!r} must hold exactly 'feature', 'edges' and "
                         f"'temperature' (and optionally 'deep'), got {entry!r}")
    if entry["feature"] not in NUMERIC_FEATURES:
        raise ValueError(f"export {ACTIVITY!r} bins by {entry['feature']!r}, not one of the "
                         f"numeric FEATURES {list(NUMERIC_FEATURES)}")
    edges = np.asarray(entry["edges"], dtype=np.float64)
    temps = np.asarray(entry["temperature"], dtype=np.float64)
    if edges.ndim != 1 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError(f"export {ACTIVITY!r} edges must be finite and strictly increasing, "
                         f"got {edges.tolist()}")
    if temps.shape != (len(edges) + 1,) or not np.all(np.isfinite(temps)) or np.any(temps <= 0):
        raise ValueError(f"export {ACTIVITY!r} needs {len(edges) + 1} finite temperatures > 0 "
                         f"(one per bin), got {temps.tolist()}")
    deep = np.asarray(entry.get("deep", np.ones(len(temps))), dtype=np.float64)
    if deep.shape != temps.shape or not np.all((deep == 0) | (deep == 1)):
        raise ValueError(f"export {ACTIVITY!r} 'deep' needs {len(temps)} factors of 0 or 1 "
                         f"(one per bin), got {deep.tolist()}")


def _check_wide(export: Mapping[str, Any]) -> None:
    """Per head, one table per categorical feature in order (the embedding's rows, the head's
    logit count as columns) and one (n_numeric, logits) matrix."""
    if WIDE not in export or WIDE_NUMERIC not in export:
        raise ValueError(f"export has {WIDE!r} without {WIDE_NUMERIC!r} or the reverse: the "
                         f"wide part needs both")
    rows = {name: np.asarray(table).shape[0] for name, table in export["embeddings"]}
    for target in TARGETS:
        tables = export[WIDE].get(target)
        names = [name for name, _ in tables or ()]
        if names != list(CATEGORICAL_FEATURES):
            raise ValueError(f"wide {target!r} tables {names} are not the categorical FEATURES "
                             f"in order {list(CATEGORICAL_FEATURES)}")
        out = np.asarray(export["heads"][target][0]).shape[1]
        for name, table in tables:
            table = np.asarray(table)
            if table.shape != (rows[name], out):
                raise ValueError(f"wide {target!r} table of {name!r} has shape {table.shape}; "
                                 f"expected ({rows[name]}, {out})")
            _check_finite(table, f"wide {target!r} table of {name!r}")
        W = np.asarray(export[WIDE_NUMERIC].get(target, np.zeros((0, 0))))
        if W.shape != (len(NUMERIC_FEATURES), out):
            raise ValueError(f"{WIDE_NUMERIC} of {target!r} has shape {W.shape}; expected "
                             f"({len(NUMERIC_FEATURES)}, {out})")
        _check_finite(W, f"{WIDE_NUMERIC} of {target!r}")


def _check_heads(export: Mapping[str, Any], encoders: Encoders, width: int) -> None:
    """Each target's head (shape, link), temperature and prior ratio; ``width`` = trunk output."""
    for target in TARGETS:
        if target not in export["heads"]:
            raise ValueError(f"export has no {target!r} head (heads: {sorted(export['heads'])})")
        W, b, link = export["heads"][target]
        W, b = np.asarray(W), np.asarray(b)
        if link not in LINKS[target]:
            raise ValueError(f"head {target!r} link {link!r} not in {LINKS[target]}")
        k = len(features.class_labels(target, encoders.age_edges))
        out = k - 1 if link == "corn" else k
        if W.shape != (width, out) or b.shape != (out,):
            raise ValueError(f"head {target!r} has W {W.shape}, b {b.shape}; expected "
                             f"({width}, {out}) and ({out},) for {k} classes ({link})")
        _check_finite(W, f"head {target!r} W")
        _check_finite(b, f"head {target!r} b")
        if target not in export["temperature"] or target not in export["prior_ratio"]:
            raise ValueError(f"export has no temperature / prior_ratio for {target!r}")
        temperature = float(export["temperature"][target])
        if not (np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature of {target!r} must be finite and > 0, "
                             f"got {temperature}")
        ratio = np.asarray(export["prior_ratio"][target], dtype=np.float64)
        if ratio.shape != (k,) or not np.all(np.isfinite(ratio)) or np.any(ratio < 0) \
                or not np.any(ratio > 0):
            raise ValueError(f"prior_ratio of {target!r} must be {k} finite values >= 0, "
                             f"not all 0; got {ratio.tolist()}")


def _check_finite(a: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} holds NaN or infinite values")


# ---------------------------------------------------------------------- npz round trip

def save_export_npz(export: Mapping[str, Any], path: str) -> None:
    """Write an export dict to one ``.npz`` (arrays + a JSON ``meta`` entry; no pickle)."""
    arrays: dict[str, np.ndarray] = {}
    meta = {"kind": export["kind"], "embeddings": [n for n, _ in export["embeddings"]],
            "numeric": list(export["numeric"]),
            "trunk": [act for _, _, act in export["trunk"]],
            "heads": {t: h[2] for t, h in export["heads"].items()},
            "temperature": {t: float(v) for t, v in export["temperature"].items()}}
    for name, table in export["embeddings"]:
        arrays[f"emb__{name}"] = np.asarray(table)
    for i, (W, b, _) in enumerate(export["trunk"]):
        arrays[f"trunk__{i}__W"], arrays[f"trunk__{i}__b"] = np.asarray(W), np.asarray(b)
    for t, (W, b, _) in export["heads"].items():
        arrays[f"head__{t}__W"], arrays[f"head__{t}__b"] = np.asarray(W), np.asarray(b)
    for t, ratio in export["prior_ratio"].items():
        arrays[f"prior_ratio__{t}"] = np.asarray(ratio, dtype=np.float64)
    for t, v in export["temperature"].items():
        arrays[f"temperature__{t}"] = np.asarray(float(v))
    for t, tables in export.get(WIDE, {}).items():
        for name, table in tables:
            arrays[f"wide__{t}__{name}"] = np.asarray(table)
        arrays[f"wide_numeric__{t}"] = np.asarray(export[WIDE_NUMERIC][t])
    meta[WIDE] = sorted(export.get(WIDE, {}))
    if ACTIVITY in export:
        meta[ACTIVITY] = export[ACTIVITY]["feature"]
        for key in ACTIVITY_KEYS:
            if key in export[ACTIVITY]:
                arrays[f"activity__{key}"] = np.asarray(export[ACTIVITY][key], np.float64)
    arrays["meta"] = np.asarray(json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_export_npz(path: str) -> dict[str, Any]:
    """Read a ``save_export_npz`` file back into the ``export_numpy()`` structure."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        wide = {t: [(n, z[f"wide__{t}__{n}"]) for n in meta["embeddings"]]
                for t in meta.get(WIDE, [])}
        return {
            **({WIDE: wide, WIDE_NUMERIC: {t: z[f"wide_numeric__{t}"] for t in wide}}
               if wide else {}),
            **({ACTIVITY: {"feature": meta[ACTIVITY],
                           **{k: z[f"activity__{k}"].tolist() for k in ACTIVITY_KEYS
                              if f"activity__{k}" in z}}}
               if meta.get(ACTIVITY) else {}),
            "kind": meta["kind"],
            "embeddings": [(n, z[f"emb__{n}"]) for n in meta["embeddings"]],
            "numeric": meta["numeric"],
            "trunk": [(z[f"trunk__{i}__W"], z[f"trunk__{i}__b"], act)
                      for i, act in enumerate(meta["trunk"])],
            "heads": {t: (z[f"head__{t}__W"], z[f"head__{t}__b"], link)
                      for t, link in meta["heads"].items()},
            "temperature": {t: float(z[f"temperature__{t}"]) for t in meta["temperature"]},
            "prior_ratio": {t: z[f"prior_ratio__{t}"] for t in meta["heads"]},
        }
