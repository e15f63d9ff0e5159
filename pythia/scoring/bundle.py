"""The bid-time bundle: a self-contained folder holding everything the scorer needs.

Layout::

    bundle.json            version (the run's pathspec), feature spec + its version, routing
                           table country -> region, UTC offsets, age edges, class labels,
                           and per region the model kind, its runtime and its file or folder
    encoders.json          ``Encoders.to_json()``: the run's, which every slot reads unless
    encoders-<region>.json a slot's own (a previous run's champion kept for a region: the
                           vocabularies and statistics it trained with; entry "encoders")
    weights-<region>.npz   a ``numpy_layers`` region (the MLP): the exported arrays
                           (temperature and prior ratio in), scored with NumPy alone
    model-<region>/        a ``saved_model`` region: the saved model folder, loaded with
                           ``pythia.models.load_model`` at score time (slower; needs its libs)

Which runtime a region gets is the model's own answer (``Model.export``); see
``pythia.scoring.runtimes``. A bundle of ``numpy_layers`` regions only loads and scores with
NumPy alone (no TensorFlow, no Metaflow).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Sequence

from pythia import features, stack
from pythia.config import GLOBAL_REGION, OTHER_REGION, Geography
from pythia.features import Encoders
from pythia.models.export import NUMPY_LAYERS, RUNTIME
from pythia.scoring.runtimes import runtime_of

from pythia.scoring.bundle_doc import (BUNDLE_FILE, BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION,
                                       ENCODERS_FILE, SLOT_ENCODERS, slot_encoders_file)

_REGION_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
CHAMPION_KEYS = ("region", "model", "model_dir")


def export_champions(chosen: Sequence[Mapping[str, Any]], encoders: Encoders | Mapping,
                     geo: Geography, pathspec: str, bundle_uri: str) -> str:
    """The ``end`` step: write the bid-time bundle of the chosen models; returns its path.

    Which models (this run's blessed champions, a previous run's, a fallback) is decided by
    ``evaluate.champions``; this only exports the given list.

    Args:
        chosen: one dict per region, ``{'region', 'model', 'model_dir'}`` and optionally
            'source' (why it was chosen, e.g. 'previous run'), 'blessed_in' (the run that
            blessed it) and 'blessed_date' (that run's test day); a 'global' entry is required.
        encoders: the run's encoders, as ``Encoders`` or their JSON (the ``encoders`` artifact).
        geo: the run's geography (routing table and UTC offsets).
        pathspec: the model version reported with every score (the run's pathspec).
        bundle_uri: bundle folder to write (local or s3://), e.g. ``RunPaths.bundle``.
    """
    if not isinstance(encoders, Encoders):
        encoders = Encoders.from_json(encoders)
    return export_bundle(chosen, encoders, geo, pathspec, bundle_uri)


def export_bundle(champions: Sequence[Mapping[str, Any]], encoders: Encoders, geo: Geography,
                  version: str, out_uri: str) -> str:
    """Export the champion models of a run as one scoring bundle (atomically).

    Args:
        champions: one dict per region, ``{'region': 'global'|region, 'model': a registered
            model name, 'model_dir': saved model folder}`` (an optional 'source', e.g.
            'previous run', is recorded as the entry's 'origin'); a 'global' champion is
            required (it scores every country whose region has no champion of its own).
        encoders: the run's encoders; a model saved with others (its folder's
            ``encoders.json``: a previous run's champion) gets its own in its slot.
        geo: the run's geography (routing table and UTC offsets).
        version: the model version reported with every score (the run's pathspec).
        out_uri: bundle folder to write (local or s3://).

    Returns:
        ``out_uri``.
    """
    from pythia.models import MODEL_NAMES, get_model  # model libraries: to export, not to score

    seen: set[str] = set()
    for champion in champions:  # every entry checked before any model folder is read
        missing = [k for k in CHAMPION_KEYS if k not in champion]
        if missing:
            raise ValueError(f"champion {dict(champion)} lacks {missing}")
        region, kind, _ = (champion[k] for k in CHAMPION_KEYS)
        if region in seen:
            raise ValueError(f"two champions for region {region!r}")
        if kind not in MODEL_NAMES:
            raise ValueError(f"model kind {kind!r} of region {region!r} not in {MODEL_NAMES}")
        seen.add(region)
    payloads: dict[str, dict[str, Any]] = {}
    for champion in champions:
        region, kind, model_dir = (champion[k] for k in CHAMPION_KEYS)
        # a saved export first: no model library (e.g. TensorFlow) to import
        payloads[region] = {"kind": kind, **(saved_export(model_dir)
                                             or get_model(kind).export(model_dir)),
                            "source": model_dir, "origin": champion.get("source"),
                            "blessed_in": champion.get("blessed_in"),
                            "blessed_date": champion.get("blessed_date")}
        own = model_encoders(model_dir)
        if own.to_json() != encoders.to_json():
            payloads[region][SLOT_ENCODERS] = own
    return write_bundle(payloads, encoders, geo, version, out_uri)


def model_encoders(model_dir: str) -> Encoders:
    """The encoders a saved model was trained with (its folder's ``encoders.json``)."""
    from pythia import storage
    from pythia.models.base import ENCODERS_FILE as MODEL_ENCODERS
    return Encoders.from_json(storage.read_json(f"{model_dir.rstrip('/')}/{MODEL_ENCODERS}"))


def saved_export(model_dir: str) -> dict[str, Any] | None:
    """The ``NUMPY_LAYERS`` payload saved with the model in ``model_dir`` (local or s3://,
    ``models.export.save_export``), or None when the folder has none or was saved for another
    feature spec (then the model's class exports it from its weights, importing its library).
    """
    import joblib

    from pythia import storage
    from pythia.models.base import read_meta
    from pythia.models.export import EXPORT, EXPORT_FILE_KEY

    with storage.local_copy(model_dir) as folder:
        meta = read_meta(folder)
        name = meta.get("extra", {}).get(EXPORT_FILE_KEY)
        if not name or meta.get("spec_version") != features.spec_version():
            return None
        return {RUNTIME: NUMPY_LAYERS, EXPORT: joblib.load(os.path.join(folder, name))}


def write_bundle(models: Mapping[str, Mapping[str, Any]], encoders: Encoders, geo: Geography,
                 version: str, out_uri: str) -> str:
    """Write a bundle from per-region payloads (what ``export_bundle`` gets from the models).

    Args:
        models: region -> ``{'kind': model name, **Model.export(model_dir)}``, i.e. a
            'runtime' (``pythia.models.export.RUNTIMES``) and that runtime's payload; optional
            'source' (model folder), 'origin' (why it was chosen), 'blessed_in' (the run
            that blessed it) and 'blessed_date' (its test day) are recorded, and an
            optional 'encoders' (the model's own ``Encoders``) is written beside the run's
            for that slot alone (same age edges: a bundle has one set of classes).
        encoders, geo, version, out_uri: as in ``export_bundle``.

    Returns:
        ``out_uri``.
    """
    from pythia import storage
    from pythia.models import MODEL_NAMES

    if GLOBAL_REGION not in models:
        raise ValueError(f"a bundle needs a {GLOBAL_REGION!r} model (regions given: "
                         f"{sorted(models)}); it scores countries without a regional champion")
    known = set(geo.regions) | {GLOBAL_REGION, OTHER_REGION}
    for region, payload in models.items():
        if not _REGION_NAME.match(region) or region not in known:
            raise ValueError(f"region {region!r} is not a model region of the geography "
                             f"({sorted(known)})")
        if payload.get("kind") not in MODEL_NAMES:
            raise ValueError(f"model kind {payload.get('kind')!r} of region {region!r} not in "
                             f"{MODEL_NAMES}")
        own = payload.get(SLOT_ENCODERS)
        if own is not None and tuple(own.age_edges) != tuple(encoders.age_edges):
            raise ValueError(f"region {region!r}'s model has age edges {list(own.age_edges)}, "
                             f"the bundle's classes are of {list(encoders.age_edges)}: a bundle "
                             "has one set of classes; export that model in a bundle of its own")
        runtime_of(payload).check(payload, own or encoders)
    entries: dict[str, dict[str, Any]] = {}
    with storage.staged_dir(out_uri) as folder:
        for region, payload in sorted(models.items()):
            runtime = runtime_of(payload)
            entries[region] = {"kind": payload["kind"], RUNTIME: runtime.kind,
                               "source": payload.get("source"), "origin": payload.get("origin"),
                               "blessed_in": payload.get("blessed_in"),
                               "blessed_date": payload.get("blessed_date"),
                               **runtime.write(payload, folder, region)}
            if payload.get(SLOT_ENCODERS) is not None:
                entries[region][SLOT_ENCODERS] = slot_encoders_file(region)
                with open(os.path.join(folder, slot_encoders_file(region)), "w",
                          encoding="utf8") as f:
                    json.dump(payload[SLOT_ENCODERS].to_json(), f)
        doc = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "version": version,
            "spec_version": features.spec_version(),
            "stack": stack.versions(),  # the exporting environment's libraries (pythia.stack)
            "feature_spec": features.spec_document(),
            "age_edges": list(encoders.age_edges),
            "class_labels": {t: list(features.class_labels(t, encoders.age_edges))
                             for t in features.TARGETS},
            "routing": {"region_of_country": dict(geo.region_of_country),
                        "other_region": OTHER_REGION, "fallback_region": GLOBAL_REGION},
            # compiled zone transitions: the scorer needs no tz database (pythia.geo)
            "utc_offsets": geo.offset_table.to_json(),
            "models": entries,
        }
        with open(os.path.join(folder, BUNDLE_FILE), "w", encoding="utf8") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
        with open(os.path.join(folder, ENCODERS_FILE), "w", encoding="utf8") as f:
            json.dump(encoders.to_json(), f)
        if any(e[RUNTIME] == NUMPY_LAYERS for e in entries.values()):
            # model.onnx per layer-runtime region + encoders as JSON, for non-Python bidders
            from pythia.scoring.onnx_export import ONNX_DIR, export_onnx
            export_onnx({"models": models, "encoders": encoders, "geo": geo,
                         "version": version}, os.path.join(folder, ONNX_DIR))
    return out_uri
