"""What both TFRecord writers share, free of Spark: the shard layout, the manifest, and the
encoders' final choice from counts.

``writer`` (Spark) and ``writer_local`` (pyarrow on the driver) differ only in how they count
the train split's values and where ``shards.write_partition`` runs; the units a split is cut
into (one per Parquet row group, numbered in sorted file order, naming the shards), the
vocabularies and statistics made from the counts, and the manifest are built here, so both
engines write the same files byte for byte.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import replace
from fractions import Fraction
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pythia import features, storage
from pythia.features import OUTPUT_SPLITS, TRAIN, Encoders, NumericStats, Vocabulary
from pythia.paths import join
from pythia.tfrecords import encode, permute
from pythia.tfrecords.shards import SHARD_NAME

SPLITS = OUTPUT_SPLITS
COMPRESSIONS = (None, "GZIP")
MANIFEST_NAME = "manifest.json"
FEATURE_SPEC_NAME = "feature_spec.json"
ENCODERS_NAME = "encoders.json"
BATCH_ROWS = 10_000  # rows per Arrow batch read from a Parquet row group


def feature_spec() -> dict:
    """The TFRecord schema, derived from ``features.FEATURES`` (written as feature_spec.json).

    ``tfrecord`` maps every key of an Example to its dtype; every feature holds one value.
    """
    dtypes = {f.name: ("int64" if f.kind == features.CATEGORICAL else "float32")
              for f in features.FEATURES}
    dtypes.update({c: "int64" for c in encode.LABEL_COLUMNS})
    dtypes[encode.GROUP_COLUMN] = "int64"
    dtypes[encode.ID_COLUMN] = "string"
    return {
        "spec_version": features.spec_version(),
        "spec": features.spec_document(),
        "tfrecord": {k: {"dtype": v, "shape": []} for k, v in dtypes.items()},
        "label_columns": dict(features.LABEL_COLUMNS),
        "id_column": encode.ID_COLUMN,
    }


# ---------------------------------------------------------------- encoders from counts

_SPLITTER = 134217729.0  # 2**27 + 1: Veltkamp's split of a double into two 26-bit halves
Moments = tuple  # (finite values, expansion of their sum, expansion of their squares' sum)
NO_MOMENTS: Moments = (0, [], [])


def expansion(values: Sequence[float]) -> list[float]:
    """Floats whose exact sum is the exact sum of ``values``: ``math.fsum`` (correctly
    rounded) of what is left, repeated until nothing is (usually two or three terms)."""
    values, out = list(values), []
    while True:
        rest = math.fsum(values + [-p for p in out])
        if rest == 0.0:  # exact: a non-zero sum of doubles never rounds to zero
            return out
        out.append(rest)


def _floats(exact: Fraction) -> list[float]:
    """Floats summing exactly to a dyadic rational (a sum of doubles)."""
    out = []
    while exact:
        out.append(float(exact))
        exact -= Fraction(out[-1])
    return out


def moments(arr: pa.Array) -> Moments:
    """Count, exact sum and exact sum of squares of the finite values of a numeric column.

    A square is the exact sum of three products of the value's Veltkamp halves, so nothing
    rounds before ``numeric_stats``: any engine, partitioning or order gives the same bits."""
    x = pc.cast(arr, pa.float64())
    x = x.filter(pc.is_finite(x))
    counts = pc.value_counts(x)
    if len(counts) * 16 <= len(x):  # few distinct values (hour_sin: 24): rationals per value
        pairs = list(zip(map(Fraction, counts.field("values").to_pylist()),
                         counts.field("counts").to_pylist()))
        return (len(x), _floats(sum((v * c for v, c in pairs), Fraction(0))),
                _floats(sum((v * v * c for v, c in pairs), Fraction(0))))
    x = x.to_numpy(zero_copy_only=False)
    c = x * _SPLITTER
    hi = c - (c - x)
    lo = x - hi
    # values stored as float32 (24-bit mantissas) have no low half: x * x is exact
    squares = np.concatenate([hi * hi, 2 * hi * lo, lo * lo]) if lo.any() else x * x
    return len(x), expansion(x.tolist()), expansion(squares.tolist())


def feature_moments(name: str, arr: pa.Array) -> Moments:
    """``moments`` of numeric feature ``name``'s values after its ``Feature.transform``."""
    transform = features.feature_transform(name)
    if transform is None:
        return moments(arr)
    raw = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
    return moments(pa.array(features.transform_values(transform, raw), pa.float64()))


def merge_moments(a: Moments, b: Moments) -> Moments:
    return a[0] + b[0], expansion(a[1] + b[1]), expansion(a[2] + b[2])


def numeric_stats(name: str, m: Moments) -> NumericStats:
    """Mean and population std from ``moments``, in rational arithmetic rounded once at the
    end. No finite value: mean 0, std 1 (with a warning)."""
    n, sums, squares = m
    if not n:
        import logging
        logging.getLogger(__name__).warning(
            "numeric feature %s has no finite value in train; using mean 0, std 1", name)
        return NumericStats(0.0, 1.0)
    mean = sum(map(Fraction, sums), Fraction(0)) / n
    var = sum(map(Fraction, squares), Fraction(0)) / n - mean * mean
    return NumericStats(float(mean), math.sqrt(float(var)))


def make_encoders(categorical: Mapping[str, Mapping[str, int]],
                  numeric: Mapping[str, Moments], age_edges: Sequence[int]) -> Encoders:
    """Encoders from the train split: ``Vocabulary.fit`` per categorical on its value counts
    (which may already be cut to its ``min_count``/``max_vocab``; a regional feature keeps the
    values whose column value has an id), ``numeric_stats`` per numeric feature on its
    ``moments``."""
    vocabularies = {f.name: Vocabulary.fit(categorical.get(f.name, {}), f.min_count, f.max_vocab)
                    for f in features.FEATURES if f.kind == features.CATEGORICAL}
    for f in features.REGIONAL_FEATURES:  # only values the scorer can reach: 'R|v', v known
        known = set(vocabularies[f.of].values)
        vocabularies[f.name] = Vocabulary([v for v in vocabularies[f.name].values
                                           if v.split("|", 1)[-1] in known])
    stats = {n: replace(numeric_stats(n, numeric.get(n, NO_MOMENTS)),
                        transform=features.feature_transform(n))
             for n in features.NUMERIC_FEATURES}
    return Encoders(vocabularies, stats, tuple(age_edges))


def check_train_columns(names: Sequence[str]) -> None:
    missing = [n for n in features.FEATURE_NAMES if n not in names]
    if missing:
        raise ValueError(f"train split lacks feature column(s) {missing}: this pythia's ETL "
                         f"did not write it (an older run's?); {encode.RERUN_ETL} "
                         f"(has {sorted(names)})")


EMPTY_TRAIN = "the train split has no rows: cannot fit vocabularies or statistics"


# ---------------------------------------------------------------- units and shards

def parquet_files(uri: str) -> list[str]:
    """The Parquet files of a dataset folder, sorted; hidden and ``_``-prefixed files and
    folders (``_SUCCESS``, ``.tmp-*``) are skipped.

    Raises:
        ValueError: no Parquet file under ``uri``.
    """
    base = uri.rstrip("/")
    files = sorted(f for f in storage.list_files(uri) if f.endswith(".parquet") and not any(
        part.startswith((".", "_")) for part in f[len(base):].split("/") if part))
    if not files:
        raise ValueError(f"no Parquet files under {uri}")
    return files


def parquet_units(uri: str) -> list[tuple[str, int]]:
    """(file, row group) pairs of a Parquet dataset folder, sorted; reads footers only.

    Raises:
        ValueError: no Parquet file under ``uri``, or one lacks a needed column.
    """
    return parquet_source(uri)[0]


def footer(f) -> tuple[int, str]:
    """(size in bytes, sha256 of the Thrift footer) of an open Parquet file: rewriting the
    file changes its footer (row group offsets, sizes, statistics), reading it costs one read."""
    size = f.size()
    tail = f.read_at(8, size - 8) if size >= 12 else b""
    if len(tail) != 8 or tail[4:] != b"PAR1":
        return size, ""
    n = int.from_bytes(tail[:4], "little")
    return size, hashlib.sha256(f.read_at(n, size - 8 - n)).hexdigest() if n <= size - 12 else ""


def parquet_source(uri: str) -> tuple[list[tuple[str, int]], dict]:
    """``parquet_units`` and the split entry's ``source``: the folder and, per file in unit
    order, its size, footer sha256 and rows per row group (what the columnar reader checks
    before it reads the split's Parquet instead of its shards)."""
    units, files = [], []
    for f in parquet_files(uri):
        fs, path = storage.filesystem(f)
        with fs.open_input_file(path) as fh:
            size, sha = footer(fh)
            meta = pq.ParquetFile(fh)
            encode.check_columns(meta.schema_arrow.names, f"Parquet file {f}")
            groups = [meta.metadata.row_group(i).num_rows
                      for i in range(meta.metadata.num_row_groups)]
        units += [(f, rg) for rg in range(len(groups))]
        files.append({"path": f, "bytes": int(size), "footer_sha256": sha, "row_groups": groups})
    return units, {"uri": uri, "files": files}


def unit_rows(source: dict) -> list[int]:
    """Rows of each unit (row group) of a ``parquet_source`` entry, in unit order."""
    return [int(n) for f in source["files"] for n in f["row_groups"]]


def read_row_group(uri: str, row_group: int,
                   columns: Sequence[str] = encode.INPUT_COLUMNS) -> Iterator[pa.RecordBatch]:
    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as f:
        yield from pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, row_groups=[row_group],
                                                  columns=list(columns))


def finish_split(rows: list, split_uri: str, regions: Sequence[str],
                 source: dict | None = None) -> dict:
    """The split's manifest entry from its shards' metadata (and the Parquet it was written
    from, ``parquet_source``); removes shards it does not list."""
    shards = sorted(({"path": r["path"], "region": r["region"], "rows": int(r["rows"]),
                      "sha256": r["sha256"]} for r in rows), key=lambda s: s["path"])
    by_region = {r: 0 for r in regions}
    for s in shards:
        by_region[s["region"]] = by_region.get(s["region"], 0) + s["rows"]
    _remove_unlisted(split_uri, {s["path"] for s in shards})
    entry = {"rows": sum(s["rows"] for s in shards),
             "rows_by_region": dict(sorted(by_region.items())), "shards": shards}
    return entry if source is None else dict(entry, source=source)


def _remove_unlisted(split_uri: str, keep: set[str]) -> None:
    """Delete stale shards and leftovers of killed writers that the new manifest does not list."""
    for uri in storage.list_files(split_uri):
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        if uri not in keep and (name.startswith(".tmp-") or SHARD_NAME.match(name)):
            fs, path = storage.filesystem(uri)
            fs.delete_file(path)


def absolute(uri: str) -> str:
    """Local roots become absolute so the manifest's paths work from any working folder."""
    return uri if storage.is_s3(uri) else os.path.abspath(uri)


def check_args(split: str, shard_rows: int, compression: str | None) -> None:
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")


# ---------------------------------------------------------------- the conversion

def convert(split_paths: Mapping[str, str], out_uri: str, shard_rows: int,
            compression: str | None, fit: Callable[[str], Encoders],
            write: Callable[[str, Encoders, str, str], dict],
            shuffle_seed: int | None = None) -> tuple[dict, Encoders]:
    """Check the arguments, ``fit(train_uri)``, write the spec and encoders, ``write(parquet_uri,
    encoders, out_uri, split)`` every split, then ``manifest.json`` last (atomically). The
    manifest records the ``shuffle_seed`` the writes used (``permute``; None: row order)."""
    check_args(TRAIN, shard_rows, compression)
    missing = [s for s in SPLITS if s not in split_paths]
    unknown = [s for s in split_paths if s not in SPLITS]
    if missing or unknown:
        raise ValueError(f"split_paths must name exactly {SPLITS}; missing {missing}, "
                         f"unknown {unknown}")
    out_uri = absolute(out_uri)
    for s in SPLITS:
        parquet_units(split_paths[s])  # fail fast on a missing split or column
    encoders = fit(split_paths[TRAIN])
    spec_uri, enc_uri = join(out_uri, FEATURE_SPEC_NAME), join(out_uri, ENCODERS_NAME)
    storage.write_json_atomic(spec_uri, feature_spec())
    storage.write_json_atomic(enc_uri, encoders.to_json())
    splits = {s: write(split_paths[s], encoders, out_uri, s) for s in SPLITS}
    regions = sorted({r for entry in splits.values() for r in entry["rows_by_region"]})
    for entry in splits.values():
        entry["rows_by_region"] = {r: entry["rows_by_region"].get(r, 0) for r in regions}
    manifest = {
        "root": out_uri,
        "feature_spec": spec_uri,
        "encoders": enc_uri,
        "compression": compression,
        "shuffle": None if shuffle_seed is None else {"seed": int(shuffle_seed),
                                                      "rule": permute.SHUFFLE_RULE},
        "spec_version": features.spec_version(),
        "splits": splits,
    }
    storage.write_json_atomic(join(out_uri, MANIFEST_NAME), manifest)
    return manifest, encoders


def read_manifest(out_uri: str) -> dict:
    """The manifest ``convert_splits`` wrote under ``out_uri``."""
    return storage.read_json(join(out_uri, MANIFEST_NAME))


__all__ = ["BATCH_ROWS", "COMPRESSIONS", "EMPTY_TRAIN", "SPLITS", "absolute", "check_args",
           "check_train_columns", "convert", "expansion", "feature_spec", "finish_split",
           "make_encoders", "merge_moments", "moments", "numeric_stats", "parquet_files",
           "parquet_source", "parquet_units", "read_manifest", "read_row_group", "unit_rows"]
