"""The bundle's documents: file names, format version, and reading ``bundle.json`` back.

Apart from ``bundle.py`` (which writes bundles) so that readers of a bundle (the scorer, the
ONNX export, the service) import no writer.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

from pythia import features

BUNDLE_FILE = "bundle.json"
ENCODERS_FILE = "encoders.json"
BUNDLE_FORMAT = "pythia-scoring-bundle"
# 7: a slot may carry its own encoders (entry "encoders": a file beside bundle.json; a kept
# previous champion reads its own run's vocabularies; a v6 reader would score it through this
# run's); 6: activity bins the MLP's AgeGender scores with its wide part alone (``activity__deep``
# in weights-*.npz; a v5 reader would ignore it and score wrongly); 5: the MLP's AgeGender
# temperature per activity bin in weights-*.npz (a v4 reader would ignore it); 4: numeric
# encoders carry a transform (the activity counter); 3: the MLP wide part in weights-*.npz;
# 2: IANA local-time table
BUNDLE_FORMAT_VERSION = 7
# what this code reads: a v6 bundle is a v7 one without slot encoders, a v5 one also without
# wide-only bins, a v4 one also without the per-bin temperature
BUNDLE_READS = (4, 5, 6, 7)
SLOT_ENCODERS = "encoders"  # a models entry's key: its own encoders file, when it has one


def read_versioned_doc(folder: str, file: str, fmt: str, version: int | tuple[int, ...],
                       what: str, fix: str) -> dict[str, Any]:
    """A JSON document of an exported folder, checked for its format, version (one, or the
    versions this code reads) and feature spec (errors name the file and ``fix``)."""
    versions = version if isinstance(version, tuple) else (version,)
    path = os.path.join(folder, file)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{folder} is not {what} (no {file})")
    with open(path, encoding="utf8") as f:
        doc = json.load(f)
    if doc.get("format") != fmt or doc.get("format_version") not in versions:
        raise ValueError(f"{path} is format {doc.get('format')!r} v{doc.get('format_version')}, "
                         f"this code reads {fmt!r} v{'/v'.join(map(str, versions))}: {fix}")
    if doc.get("spec_version") != features.spec_version():
        raise ValueError(f"{what} {folder} was built for feature spec {doc.get('spec_version')}, "
                         f"this code has {features.spec_version()}: {fix}")
    return doc


def read_bundle_doc(folder: str) -> dict[str, Any]:
    """``bundle.json`` of a local bundle folder, checked for format and feature spec."""
    return read_versioned_doc(folder, BUNDLE_FILE, BUNDLE_FORMAT, BUNDLE_READS,
                              "a scoring bundle", "re-export it with this pythia version (a "
                              "newer run's bundle_path), or use the pythia that wrote it")


def slot_encoders_file(region: str) -> str:
    """The file of a slot's own encoders, beside ``bundle.json``."""
    return f"encoders-{region}.json"


def read_encoders(folder: str, doc: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A local bundle's encoders: the bundle's (``encoders.json``), and per slot that has its
    own (a kept previous champion's: entry ``encoders``) those, as ``Encoders``."""
    from pythia.features import Encoders

    def read(name: str) -> Encoders:
        with open(os.path.join(folder, name), encoding="utf8") as f:
            return Encoders.from_json(json.load(f))
    return read(ENCODERS_FILE), {region: read(entry[SLOT_ENCODERS])
                                 for region, entry in doc["models"].items()
                                 if entry.get(SLOT_ENCODERS)}
