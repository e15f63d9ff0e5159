"""The TFRecord conversion on the driver (pyarrow, no JVM): ``writer``'s twin for small runs.

Same inputs, same files: the train split's values are counted with Arrow (``value_counts`` per
batch) and its numerics summed exactly (``layout.moments``), ``layout.make_encoders`` turns the counts into the same encoders as the Spark
path, and each split is cut into the same units (one per Parquet row group, numbered in sorted
file order) that ``shards.write_partition`` encodes and writes one after the other, so shard
names, bytes, sha256 and the manifest equal the Spark path's. tests/test_tfrecords_local.py
runs both engines and compares them.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from pythia import features, threads
from pythia.config import DEFAULT_AGE_EDGES
from pythia.features import Encoders
from pythia.paths import join
from pythia.tfrecords import layout
from pythia.tfrecords.shards import write_partition


def _counts(parts: list[pa.StructArray]) -> dict[str, int]:
    """Sum of ``pc.value_counts`` results (one per batch) as {value: count}."""
    if not parts:
        return {}
    table = pa.table({"v": pa.concat_arrays([p.field("values") for p in parts]),
                      "c": pa.concat_arrays([p.field("counts") for p in parts])})
    summed = table.group_by("v").aggregate([("c", "sum")])
    return dict(zip(summed.column("v").to_pylist(), summed.column("c_sum").to_pylist()))


def fit_encoders(train_uri: str, age_edges: Sequence[int] = DEFAULT_AGE_EDGES) -> Encoders:
    """Vocabularies and numeric statistics from the train split's Parquet files.

    Categorical values are counted as strings (Arrow's cast, as ``encode`` looks them up),
    nulls and "" left out; numerics keep exact sums of their finite values
    (``layout.moments``). Raises ValueError as ``writer.fit_encoders`` does (missing feature
    column, empty split)."""
    units = layout.parquet_units(train_uri)
    cats = [f.name for f in features.FEATURES if f.kind == features.CATEGORICAL]
    parts: dict[str, list] = {n: [] for n in cats}
    numeric = {n: layout.NO_MOMENTS for n in features.NUMERIC_FEATURES}
    rows = 0
    for path, row_group in units:
        for batch in layout.read_row_group(path, row_group, features.FEATURE_NAMES):
            rows += batch.num_rows
            for name in cats:
                arr = batch.column(name)
                if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
                    arr = pc.cast(arr, pa.string())
                arr = arr.filter(pc.and_kleene(pc.is_valid(arr), pc.not_equal(arr, "")))
                parts[name].append(pc.value_counts(arr))
            for name in numeric:
                numeric[name] = layout.merge_moments(
                    numeric[name], layout.feature_moments(name, batch.column(name)))
    if not rows:
        raise ValueError(layout.EMPTY_TRAIN)
    return layout.make_encoders({n: _counts(p) for n, p in parts.items()}, numeric, age_edges)


def write_split_files(parquet_uri: str, encoders: Encoders, out_uri: str, split: str,
                      shard_rows: int = 200_000, compression: str | None = None,
                      regions: Sequence[str] = (), shuffle_seed: int | None = None) -> dict:
    """``writer.write_split_files`` on the driver: the same units, shards and entry."""
    layout.check_args(split, shard_rows, compression)
    units, source = layout.parquet_source(parquet_uri)
    split_uri = join(layout.absolute(out_uri), f"split={split}")

    rows = layout.unit_rows(source)

    def one(unit: int) -> list[dict]:
        path, row_group = units[unit]
        return write_partition(layout.read_row_group(path, row_group), encoders, split_uri,
                               split, unit, shard_rows, compression, shuffle_seed, rows[unit])

    # Arrow and NumPy release the GIL in the heavy kernels: one thread per core of the task
    # (threads.cores(): @resources, affinity, cgroup quota); units write disjoint shards
    with ThreadPoolExecutor(max(1, min(threads.cores(), len(units)))) as pool:
        shards = [s for done in pool.map(one, range(len(units))) for s in done]
    return layout.finish_split(shards, split_uri, regions, source)


def convert_splits(split_paths: Mapping[str, str], out_uri: str, shard_rows: int = 200_000,
                   compression: str | None = None,
                   age_edges: Sequence[int] = DEFAULT_AGE_EDGES,
                   shuffle_seed: int | None = None) -> tuple[dict, Encoders]:
    """``writer.convert_splits`` on the driver: same arguments (no session), same outputs."""
    def write(parquet_uri: str, enc: Encoders, out: str, split: str) -> dict:
        return write_split_files(parquet_uri, enc, out, split, shard_rows, compression,
                                 shuffle_seed=shuffle_seed)

    return layout.convert(split_paths, out_uri, shard_rows, compression,
                          lambda train_uri: fit_encoders(train_uri, age_edges), write,
                          shuffle_seed)
