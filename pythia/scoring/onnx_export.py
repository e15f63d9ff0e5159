"""ONNX export of a bundle's MLP regions, their portable encoders, and an ONNX Runtime engine.

A bidder outside Python loads ``<region>/model.onnx`` in its own ONNX runtime and applies
``encoders.json`` itself (docs/bidder.md). The graph is built by ``pythia.scoring.onnx_graph``
(``build_onnx_model``, re-exported here with ``OPSET`` and the input names) from the same
``MLPModel.export_numpy()`` payload the NumPy runtime reads, with the temperature and the Bayes
prior ratio folded in exactly as ``runtime.FusedMLP`` does, so its probabilities equal the NumPy
scorer's (parity test: tests/test_onnx.py).

Layout written by ``export_onnx(source, out_dir)``::

    onnx.json              manifest: versions, inputs/outputs, class labels, routing, and per
                           region the model file (or why that region has none)
    encoders.json          vocabularies (value -> id), reserved ids, normalisation, derivations
    <region>/encoders.json a region's own, when its model read other vocabularies (a previous
                           run's champion kept in the bundle); each entry names its encoders
    <region>/model.onnx    inputs ids int64 [N, 17], numeric float32 [N, 2];
                           outputs gender [N, 2], age [N, n_age], age_gender [N, 2*n_age]

Only MLP regions are exported. gbdt (scikit-learn HistGradientBoosting with native categorical
splits) and TabNet regions are listed in the manifest with the reason they have no file.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from pythia import features
from pythia.config import GLOBAL_REGION, OTHER_REGION, Geography
from pythia.features import (CATEGORICAL_FEATURES, FEATURES, FIRST_VALUE_ID, MISSING_ID,
                             NUMERIC_FEATURES, OOV_ID, TARGETS, Encoders)
from pythia.models.export import EXPORT, NUMPY_LAYERS, RUNTIME
from pythia.scoring.boundary import MAX_VALUE_CHARS
from pythia.scoring.bundle_doc import SLOT_ENCODERS
from pythia.scoring.onnx_graph import (IDS_INPUT, IR_VERSION, NUMERIC_INPUT,  # noqa: F401
                                       OPSET, build_onnx_model)  # IR_VERSION: re-exported

ONNX_DIR = "onnx"  # the sub-folder of a bundle that holds the ONNX export
MANIFEST_FILE = "onnx.json"
ENCODERS_FILE = "encoders.json"
MODEL_FILE = "model.onnx"
MANIFEST_FORMAT = "pythia-onnx"
ENCODERS_FORMAT = "pythia-onnx-encoders"
# 2: numeric entries carry "transform" (user_impressions_today: log1p); 3: regional categories;
# 4: each model entry names its encoders file (a region may have its own)
FORMAT_VERSION = 4
ONNX_READS = (3, 4)  # a v3 export is a v4 one whose regions all read encoders.json
# Below this many rows a call goes to the NumPy runtime when one is at hand: ONNX Runtime's
# fixed cost per call from Python is larger than a small batch's compute (measured: the
# two cross between 4 and 16 rows of the default-shape MLP).
ONNX_MIN_ROWS = 8
# Why a region has no model.onnx (recorded in the manifest, repeated in docs/bidder.md).


# ---------------------------------------------------------------------- portable encoders

def encoders_document(encoders: Encoders, geo: Geography) -> dict[str, Any]:
    """The encoders as a non-Python runtime applies them (format ``ENCODERS_FORMAT``).

    Everything here mirrors ``pythia.features`` and ``pythia.scoring.boundary``; docs/bidder.md
    explains each entry.
    """
    categorical, numeric = [], []
    column = {name: j for j, name in enumerate(CATEGORICAL_FEATURES)}
    for f in FEATURES:
        if f.kind == features.CATEGORICAL:
            vocab = encoders.vocabularies[f.name]
            categorical.append({
                "name": f.name, "column": column[f.name], "source": f.source,
                "size": vocab.size, **({"of": f.of} if f.source == features.REGIONAL else {}),
                "ids": {v: i + FIRST_VALUE_ID for i, v in enumerate(vocab.values)}})
        else:
            stats = encoders.numeric[f.name]
            numeric.append({"name": f.name, "column": NUMERIC_FEATURES.index(f.name),
                            "source": f.source, "transform": stats.transform,
                            "mean": float(stats.mean), "std": float(stats.std)})
    return {
        "format": ENCODERS_FORMAT,
        "format_version": FORMAT_VERSION,
        "spec_version": features.spec_version(),
        "reserved_ids": {"missing": MISSING_ID, "oov": OOV_ID, "first_value": FIRST_VALUE_ID},
        "rules": {
            "missing": "absent, null or empty string -> id 'missing' (0)",
            "oov": "any other value not in 'ids' (also strings longer than "
                   "max_value_chars) -> id 'oov' (1)",
            "numbers_as_categories": "a number where a category is expected is looked up as "
                                     "its decimal string (Python str())",
            "normalise": "numeric = (t - mean) / (std if std > 0 else 1) with t = x, or "
                         "t = log(1 + x) where 'transform' is 'log1p' (x < 0 -> unknown); "
                         "unknown / non-finite -> 0",
            "activity": "a numeric with source 'activity' is read from the request under its "
                        "name (the bidder's counter, e.g. user_impressions_today: the user's "
                        "impressions earlier the same UTC day); missing or not a number >= 0 "
                        "-> unknown (normalised 0, the training mean)",
            "utc_offset": "from 'utc_offsets': code = geo_region stripped and upper-cased, "
                          "prefixed 'COUNTRY-' unless it already is; zone = "
                          "subdivisions[code] if present, else countries[country], else UTC "
                          "(offset 0); follow a zone's 'same_as'; offset = offsets_minutes[i] "
                          "for the last i with transitions[i] <= ts (i = 0 before the first); "
                          "reference: pythia.geo.OffsetTable.offset_minutes",
            "derived": "local_minutes = floor(ts / 60) + utc_offset; local_hour = floor(local_minutes / 60) mod 24; "
                       "local_dow = (floor(local_minutes / 1440) + 3) mod 7 (0 = Monday); "
                       "hour_sin / hour_cos = sin / cos(local_hour * 2 pi / 24) rounded to "
                       "float32 (the training rows' values); local_hour "
                       "and local_dow are categories: look up their decimal string; "
                       "reference: pythia.features.derive_time_features",
            "regional": "a category with source 'regional' reads the request's field 'of': "
                        "missing when that field is; oov when its value is not in the 'ids' "
                        "of the category named 'of'; else ids[region + '|' + value] (else oov), "
                        "region = the routing's region_of_country[country], else its "
                        "other_region; reference: pythia.features.regional_values",
            "ts": "epoch seconds (UTC) of the auction; the current time when unknown",
        },
        "max_value_chars": MAX_VALUE_CHARS,
        "categorical": categorical,
        "numeric": numeric,
        "utc_offsets": geo.offset_table.to_json(),
    }


# ---------------------------------------------------------------------- export

def export_onnx(source: str | Mapping[str, Any], out_dir: str) -> dict[str, Any]:
    """Write the ONNX export of a bundle (or of a bundle's payload) to ``out_dir``.

    Args:
        source: a local bundle folder, or ``{'models': {region: {'kind': model name,
            'runtime': 'numpy_layers', 'export': export_numpy() dict} | {'runtime':
            'saved_model', ...}}, 'encoders': Encoders, 'geo': Geography, 'version': str}``
            (what ``write_bundle`` receives: a region's payload may hold its own 'encoders');
            only ``numpy_layers`` regions become ONNX.
        out_dir: local folder to write (created; existing files of the same name replaced).

    Returns:
        The manifest written to ``out_dir/onnx.json``.
    """
    models, encoders, geo, version = _read_source(source)
    os.makedirs(out_dir, exist_ok=True)
    labels = {t: list(features.class_labels(t, encoders.age_edges)) for t in TARGETS}
    entries: dict[str, dict[str, Any]] = {}
    for region, payload in sorted(models.items()):
        kind = payload["kind"]
        if payload.get(RUNTIME, NUMPY_LAYERS if EXPORT in payload else None) != NUMPY_LAYERS:
            entries[region] = {"kind": kind, "file": None, "reason": (
                f"model {kind!r} runs in Python (runtime {payload.get(RUNTIME)!r}), not as "
                "layers ONNX can express; score it in Python or over HTTP (docs/bidder.md)")}
            continue
        own = payload.get(SLOT_ENCODERS)
        model = build_onnx_model(payload["export"], own or encoders,
                                 doc_string=f"pythia MLP, region {region}, version {version}",
                                 metadata={"region": region, "model_version": version})
        rel = f"{region}/{MODEL_FILE}"
        os.makedirs(os.path.join(out_dir, region), exist_ok=True)
        _write_bytes(os.path.join(out_dir, rel), model.SerializeToString())
        entries[region] = {"kind": kind, "file": rel, "encoders": ENCODERS_FILE}
        if own is not None:
            entries[region]["encoders"] = f"{region}/{ENCODERS_FILE}"
            _write_json(os.path.join(out_dir, region, ENCODERS_FILE),
                        encoders_document(own, geo))
    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": FORMAT_VERSION,
        "version": version,
        "spec_version": features.spec_version(),
        "opset": OPSET,
        "encoders": ENCODERS_FILE,
        "inputs": {IDS_INPUT: {"dtype": "int64", "shape": ["N", len(CATEGORICAL_FEATURES)],
                               "columns": list(CATEGORICAL_FEATURES)},
                   NUMERIC_INPUT: {"dtype": "float32", "shape": ["N", len(NUMERIC_FEATURES)],
                                   "columns": list(NUMERIC_FEATURES)}},
        "outputs": {t: {"dtype": "float32", "shape": ["N", len(labels[t])],
                        "labels": labels[t]} for t in TARGETS},
        "routing": {"region_of_country": dict(geo.region_of_country),
                    "other_region": OTHER_REGION, "fallback_region": GLOBAL_REGION},
        "models": entries,
    }
    _write_json(os.path.join(out_dir, ENCODERS_FILE), encoders_document(encoders, geo))
    _write_json(os.path.join(out_dir, MANIFEST_FILE), manifest)
    return manifest


def _read_source(source: str | Mapping[str, Any]
                 ) -> tuple[Mapping[str, Any], Encoders, Geography, str]:
    if not isinstance(source, (str, os.PathLike)):
        return source["models"], source["encoders"], source["geo"], str(source["version"])
    from pythia.scoring.bundle_doc import read_bundle_doc, read_encoders
    from pythia.scoring.runtime import load_export_npz

    folder = os.fspath(source)
    doc = read_bundle_doc(folder)
    encoders, own = read_encoders(folder, doc)
    geo = Geography(region_of_country=dict(doc["routing"]["region_of_country"]),
                    offsets=doc["utc_offsets"])
    models = {region: ({"kind": entry["kind"], RUNTIME: NUMPY_LAYERS,
                        EXPORT: load_export_npz(os.path.join(folder, entry["file"]))}
                       if entry.get(RUNTIME, NUMPY_LAYERS if "file" in entry else None)
                       == NUMPY_LAYERS else {"kind": entry["kind"], RUNTIME: entry.get(RUNTIME)})
              for region, entry in doc["models"].items()}
    for region, slot in own.items():
        models[region][SLOT_ENCODERS] = slot
    return models, encoders, geo, str(doc["version"])


def _write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_json(path: str, doc: Mapping[str, Any]) -> None:
    _write_bytes(path, json.dumps(doc, indent=1, sort_keys=True).encode("utf8"))


def read_onnx_manifest(onnx_dir: str) -> dict[str, Any]:
    """``onnx.json`` of an ONNX export folder, checked for format and feature spec."""
    from pythia.scoring.bundle_doc import read_versioned_doc
    return read_versioned_doc(onnx_dir, MANIFEST_FILE, MANIFEST_FORMAT, ONNX_READS,
                              "an ONNX export", "export it again with this pythia version")


# ---------------------------------------------------------------------- ONNX Runtime engine

def make_session(model: Any, threads: int = 1):
    """An ``onnxruntime.InferenceSession`` on CPU with ``threads`` intra-op threads.

    Args:
        model: a path, serialized bytes, or an ``onnx.ModelProto``.
        threads: intra-op threads (1 = the caller's thread only; inter-op is always 1).
    """
    import onnxruntime as ort

    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads == 1:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


class OnnxMLP:
    """One MLP region run by ONNX Runtime, with the interface of ``runtime.FusedMLP``.

    ``predict(ids, numeric)`` takes what ``RequestEncoder.encode_many`` returns and gives
    ``{target: (n, n_classes) float64}``; ``predict_one`` takes ``encode_one``'s lists. So a
    ``Scorer``'s region models can be swapped for it (``load_onnx_scorer``).

    ONNX Runtime wins on batches; for one row its per-node dispatch from Python costs more than
    the whole fused NumPy pass. Given ``numpy_runtime`` (the region's ``FusedMLP``), calls with
    fewer than ``min_rows`` rows, and ``predict_one``, go to it instead.

    Args:
        model: path to a ``model.onnx``, its bytes, or an ``onnx.ModelProto``.
        threads: ONNX Runtime intra-op threads (default 1: the caller's thread, no pool).
        numpy_runtime: optional NumPy runtime of the same region for small calls.
        min_rows: smallest batch sent to ONNX Runtime when ``numpy_runtime`` is given.
    """

    def __init__(self, model: Any, threads: int = 1, numpy_runtime: Any = None,
                 min_rows: int = ONNX_MIN_ROWS) -> None:
        self.session = make_session(model, threads)
        self.numpy_runtime = numpy_runtime
        self.min_rows = min_rows if numpy_runtime is not None else 0
        self._outputs = list(TARGETS)

    def predict(self, ids: np.ndarray, numeric: np.ndarray) -> dict[str, np.ndarray]:
        """Probabilities per target for encoded rows (float32 inside, float64 out)."""
        if len(ids) < self.min_rows:
            return self.numpy_runtime.predict(ids, numeric)
        out = self.session.run(self._outputs, {
            IDS_INPUT: np.ascontiguousarray(ids, dtype=np.int64),
            NUMERIC_INPUT: np.ascontiguousarray(numeric, dtype=np.float32)})
        return {t: p.astype(np.float64) for t, p in zip(self._outputs, out)}

    def predict_one(self, ids: list[int], numeric: list[float]) -> dict[str, list[float]]:
        """``predict`` for one request; Python floats out."""
        if self.numpy_runtime is not None:
            return self.numpy_runtime.predict_one(ids, numeric)
        out = self.session.run(self._outputs, {
            IDS_INPUT: np.array([ids], dtype=np.int64),
            NUMERIC_INPUT: np.array([numeric], dtype=np.float32)})
        return {t: p[0].tolist() for t, p in zip(self._outputs, out)}


def load_onnx_models(onnx_dir: str, threads: int = 1) -> dict[str, OnnxMLP]:
    """Every exported region of an ONNX export folder as an ``OnnxMLP`` (ONNX Runtime only)."""
    manifest = read_onnx_manifest(onnx_dir)
    return {region: OnnxMLP(os.path.join(onnx_dir, entry["file"]), threads=threads)
            for region, entry in manifest["models"].items() if entry.get("file")}


def load_onnx_scorer(bundle: str, onnx_dir: str | None = None, threads: int = 1,
                     numpy_for_small: bool = True):
    """A ``Scorer`` whose MLP regions score batches on ONNX Runtime (other regions unchanged).

    Args:
        bundle: a local bundle folder.
        onnx_dir: its ONNX export (default ``<bundle>/onnx``; exported to a temporary folder
            when absent, so any bundle works).
        threads: ONNX Runtime intra-op threads per region.
        numpy_for_small: keep the NumPy runtime for single requests and batches below
            ``ONNX_MIN_ROWS`` (faster there); False runs everything on ONNX Runtime.
    """
    import tempfile

    from pythia.scoring.scorer import Scorer

    scorer = Scorer.load(bundle)
    folder = onnx_dir or os.path.join(bundle, ONNX_DIR)
    if os.path.exists(os.path.join(folder, MANIFEST_FILE)):
        manifest = read_onnx_manifest(folder)
        if manifest["version"] != scorer.version:
            raise ValueError(f"ONNX export {folder} is of model version "
                             f"{manifest['version']!r}, the bundle is {scorer.version!r}: "
                             f"re-export it")
        files = {r: os.path.join(folder, e["file"]) for r, e in manifest["models"].items()
                 if e.get("file")}
        models = {r: _read_bytes(path) for r, path in files.items()}
    else:
        with tempfile.TemporaryDirectory(prefix="pythia-onnx-") as tmp:
            manifest = export_onnx(bundle, tmp)
            models = {r: _read_bytes(os.path.join(tmp, e["file"]))
                      for r, e in manifest["models"].items() if e.get("file")}
    for region, model in models.items():
        if region in scorer.models:
            scorer.models[region] = OnnxMLP(
                model, threads=threads,
                numpy_runtime=scorer.models[region] if numpy_for_small else None)
    return scorer


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
