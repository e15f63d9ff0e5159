"""What a TFRecord manifest lists, for both readers (tf.data's ``reader`` and ``columnar``): its
encoders, the shards of a split and its regions, their local copies and checksums, and the
numpy columns the readers yield.

``s3://`` shards are fetched once into a local, content-addressed cache (keyed by their sha256,
which is checked on download).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np

from pythia import features, storage
from pythia.features import Encoders
from pythia.tfrecords import encode

# Files interleaved this many at a time (read in parallel only for shuffled training batches);
# each file is batched before interleaving (record-level parallel reads of small records were
# ~10x slower). ``columnar`` replays the same interleave.
CYCLE_LENGTH = 4


def load_encoders(manifest: Mapping[str, Any]) -> Encoders:
    """The encoders the shards were written with (checks the feature-spec version)."""
    return Encoders.from_json(storage.read_json(manifest["encoders"]))


def select_shards(manifest: Mapping[str, Any], split: str,
                  regions: Sequence[str] | None) -> list[dict]:
    """The manifest's shards of ``split`` (of ``regions``; None = all), in manifest order."""
    if manifest.get("spec_version") != features.spec_version():
        raise ValueError(f"TFRecords were written for feature spec {manifest.get('spec_version')}"
                         f", this code has {features.spec_version()}: rewrite them")
    try:
        entry = manifest["splits"][split]
    except KeyError:
        raise ValueError(f"the TFRecord manifest has no split {split!r} "
                         f"(has: {sorted(manifest.get('splits', {}))})") from None
    shards = list(entry["shards"])
    if regions is None:
        return shards
    known = set(entry.get("rows_by_region", {})) | {s["region"] for s in shards}
    unknown = [r for r in regions if r not in known]
    if unknown:
        raise ValueError(f"unknown region(s) {unknown} for split {split!r}; "
                         f"the manifest has {sorted(known)}")
    wanted = set(regions)
    return [s for s in shards if s["region"] in wanted]


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _cache_dir() -> str:
    return os.environ.get("PYTHIA_TFRECORD_CACHE",
                          os.path.join(tempfile.gettempdir(), "pythia-tfrecord-cache"))


def local_path(shard: Mapping[str, Any]) -> str:
    """A local path with the shard's bytes (the shard itself, or a verified cached copy)."""
    uri = shard["path"]
    if not storage.is_s3(uri):
        return uri
    suffix = ".tfrecord.gz" if uri.endswith(".gz") else ".tfrecord"
    path = os.path.join(_cache_dir(), shard["sha256"] + suffix)
    if not os.path.exists(path):
        data = storage.read_bytes(uri)
        got = hashlib.sha256(data).hexdigest()
        if got != shard["sha256"]:
            raise ValueError(f"checksum mismatch for shard {uri}: manifest {shard['sha256']}, "
                             f"downloaded {got}")
        storage.write_bytes_atomic(path, data)
    return path


def verify_shards(manifest: Mapping[str, Any], split: str,
                  regions: Sequence[str] | None = None) -> int:
    """Check every listed shard's sha256; returns the number checked.

    Raises:
        FileNotFoundError: a listed shard is missing.
        ValueError: a shard's bytes differ from the manifest.
    """
    shards = select_shards(manifest, split, regions)
    for s in shards:
        path = local_path(s)
        if not os.path.exists(path):
            raise FileNotFoundError(f"shard listed in the manifest is missing: {s['path']}")
        got = sha256_file(path)
        if got != s["sha256"]:
            raise ValueError(f"checksum mismatch for shard {s['path']}: manifest "
                             f"{s['sha256']}, file {got}")
    return len(shards)


def column_dtypes() -> dict[str, Any]:
    """The numpy dtype of every column ``iter_numpy`` yields."""
    dtypes: dict[str, Any] = {f.name: (np.int64 if f.kind == features.CATEGORICAL else np.float32)
                              for f in features.FEATURES}
    dtypes.update({c: np.int64 for c in encode.LABEL_COLUMNS})
    dtypes[encode.GROUP_COLUMN] = np.int64
    dtypes[encode.ID_COLUMN] = object
    return dtypes
