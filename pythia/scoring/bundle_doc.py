"""The bundle's documents: file names, format version, and reading ``bundle.json`` back.

Apart from ``bundle.py`` (which writes bundles) so that readers of a bundle (the scorer, the
ONNX export, the service) import no writer.
"""
from __future__ import annotations

import json
import os
from typing import Any

from pythia import features

BUNDLE_FILE = "bundle.json"
ENCODERS_FILE = "encoders.json"
BUNDLE_FORMAT = "pythia-scoring-bundle"
BUNDLE_FORMAT_VERSION = 2  # 2: IANA local-time table (with DST) instead of fixed offsets


def read_bundle_doc(folder: str) -> dict[str, Any]:
    """``bundle.json`` of a local bundle folder, checked for format and feature spec."""
    path = os.path.join(folder, BUNDLE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{folder} is not a scoring bundle (no {BUNDLE_FILE})")
    with open(path, encoding="utf8") as f:
        doc = json.load(f)
    if doc.get("format") != BUNDLE_FORMAT or doc.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise ValueError(f"{path} is format {doc.get('format')!r} v{doc.get('format_version')}, "
                         f"this code reads {BUNDLE_FORMAT!r} v{BUNDLE_FORMAT_VERSION}: re-export "
                         "it with this version (a newer run's bundle_path)")
    if doc.get("spec_version") != features.spec_version():
        raise ValueError(f"bundle {folder} was built for feature spec {doc.get('spec_version')}, "
                         f"this code has {features.spec_version()}: use the matching pythia "
                         f"version or re-export")
    return doc
