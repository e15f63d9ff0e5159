"""The bid-time bundle: a self-contained folder holding everything the scorer needs.

Layout::

    bundle.json            version (the run's pathspec), feature spec + its version, routing
                           table country -> region, UTC offsets, age edges, class labels,
                           and per region the model kind and file
    encoders.json          ``Encoders.to_json()``
    weights-<region>.npz   an MLP region: ``export_numpy()`` arrays (temperature, prior ratio in)
    model-<region>/        a gbdt / tabnet region: the saved model folder, loaded with
                           ``pythia.models.load_model`` at score time (slower; needs those libs)

An MLP-only bundle loads and scores with NumPy alone (no TensorFlow, no Metaflow).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Sequence

from pythia import features
from pythia.config import GLOBAL_REGION, OTHER_REGION, Geography
from pythia.features import Encoders
from pythia.scoring.runtime import check_export, save_export_npz

BUNDLE_FILE = "bundle.json"
ENCODERS_FILE = "encoders.json"
BUNDLE_FORMAT = "pythia-scoring-bundle"
BUNDLE_FORMAT_VERSION = 1
MODEL_KINDS = ("mlp", "tabnet", "gbdt")
_REGION_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def export_bundle(champions: Sequence[Mapping[str, Any]], encoders: Encoders, geo: Geography,
                  version: str, out_uri: str) -> str:
    """Export the champion models of a run as one scoring bundle (atomically).

    Args:
        champions: one dict per region, ``{'region': 'global'|region, 'model': 'mlp'|'tabnet'|
            'gbdt', 'model_dir': saved model folder}`` (an optional 'source', e.g. 'previous
            run', is recorded as the entry's 'origin'); a 'global' champion is required (it
            scores every country whose region has no champion of its own).
        encoders: the run's encoders.
        geo: the run's geography (routing table and UTC offsets).
        version: the model version reported with every score (the run's pathspec).
        out_uri: bundle folder to write (local or s3://).

    Returns:
        ``out_uri``.
    """
    from pythia.models import load_model  # TensorFlow etc. are needed to export, not to score

    payloads: dict[str, dict[str, Any]] = {}
    for champion in champions:
        missing = [k for k in ("region", "model", "model_dir") if k not in champion]
        if missing:
            raise ValueError(f"champion {dict(champion)} lacks {missing}")
        kind, region = champion["model"], champion["region"]
        if region in payloads:
            raise ValueError(f"two champions for region {region!r}")
        origin = champion.get("source")
        if kind == "mlp":
            payloads[region] = {"kind": "mlp", "export": load_model(champion["model_dir"])
                                .export_numpy(), "source": champion["model_dir"],
                                "origin": origin}
        else:
            payloads[region] = {"kind": kind, "model_dir": champion["model_dir"],
                                "origin": origin}
    return write_bundle(payloads, encoders, geo, version, out_uri)


def write_bundle(models: Mapping[str, Mapping[str, Any]], encoders: Encoders, geo: Geography,
                 version: str, out_uri: str) -> str:
    """Write a bundle from per-region payloads (what ``export_bundle`` loads from model folders).

    Args:
        models: region -> ``{'kind': 'mlp', 'export': export_numpy() dict}`` or
            ``{'kind': 'gbdt'|'tabnet', 'model_dir': saved model folder}``; optional
            'source' (model folder) and 'origin' (why it was chosen) are recorded.
        encoders, geo, version, out_uri: as in ``export_bundle``.

    Returns:
        ``out_uri``.
    """
    from pythia import storage

    if GLOBAL_REGION not in models:
        raise ValueError(f"a bundle needs a {GLOBAL_REGION!r} model (regions given: "
                         f"{sorted(models)}); it scores countries without a regional champion")
    known = set(geo.regions) | {GLOBAL_REGION, OTHER_REGION}
    for region, payload in models.items():
        if not _REGION_NAME.match(region) or region not in known:
            raise ValueError(f"region {region!r} is not a model region of the geography "
                             f"({sorted(known)})")
        if payload.get("kind") not in MODEL_KINDS:
            raise ValueError(f"model kind {payload.get('kind')!r} of region {region!r} not in "
                             f"{MODEL_KINDS}")
        if payload["kind"] == "mlp":
            check_export(payload["export"], encoders)
    entries: dict[str, dict[str, Any]] = {}
    with storage.staged_dir(out_uri) as folder:
        for region, payload in sorted(models.items()):
            if payload["kind"] == "mlp":
                name = f"weights-{region}.npz"
                save_export_npz(payload["export"], os.path.join(folder, name))
                entries[region] = {"kind": "mlp", "file": name,
                                   "source": payload.get("source"),
                                   "origin": payload.get("origin")}
            else:
                name = f"model-{region}"
                storage.download_dir(payload["model_dir"], os.path.join(folder, name))
                entries[region] = {"kind": payload["kind"], "dir": name,
                                   "source": payload["model_dir"],
                                   "origin": payload.get("origin")}
        doc = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "version": version,
            "spec_version": features.spec_version(),
            "feature_spec": features.spec_document(),
            "age_edges": list(encoders.age_edges),
            "class_labels": {t: list(features.class_labels(t, encoders.age_edges))
                             for t in features.TARGETS},
            "routing": {"region_of_country": dict(geo.region_of_country),
                        "other_region": OTHER_REGION, "fallback_region": GLOBAL_REGION},
            "utc_offset_minutes": dict(geo.utc_offset_minutes),
            "models": entries,
        }
        with open(os.path.join(folder, BUNDLE_FILE), "w", encoding="utf8") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
        with open(os.path.join(folder, ENCODERS_FILE), "w", encoding="utf8") as f:
            json.dump(encoders.to_json(), f)
    return out_uri


def read_bundle_doc(folder: str) -> dict[str, Any]:
    """``bundle.json`` of a local bundle folder, checked for format and feature spec."""
    path = os.path.join(folder, BUNDLE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{folder} is not a scoring bundle (no {BUNDLE_FILE})")
    with open(path, encoding="utf8") as f:
        doc = json.load(f)
    if doc.get("format") != BUNDLE_FORMAT or doc.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise ValueError(f"{path} is format {doc.get('format')!r} v{doc.get('format_version')}, "
                         f"this code reads {BUNDLE_FORMAT!r} v{BUNDLE_FORMAT_VERSION}")
    if doc.get("spec_version") != features.spec_version():
        raise ValueError(f"bundle {folder} was built for feature spec {doc.get('spec_version')}, "
                         f"this code has {features.spec_version()}: use the matching pythia "
                         f"version or re-export")
    return doc
