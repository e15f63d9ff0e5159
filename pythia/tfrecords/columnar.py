"""Reading a split's records back without TensorFlow: from the Parquet the shards came from.

Both writers cut a split into units (one per Parquet row group, in sorted file order), and
unit ``u``'s rows of region ``r``, in row order (or in the seeded order of ``permute`` when
the manifest records a ``shuffle``), become the shards ``region=r/part-u-<seq>``
(``layout``, ``shards.write_partition``). The manifest's ``source`` records that Parquet (per
file: size, footer sha256, rows per row group), so the records can be rebuilt from it by the
same encoders ``encode`` applies (``Vocabulary.encode`` of the dictionary-encoded strings,
``NumericStats.normalize`` to float32, int64 labels, str ids), column by column with Arrow.

``iter_numpy`` yields exactly what ``reader``'s tf.data ``iter_numpy`` yields: the same keys,
dtypes, values and row order. That order is not plain shard order: the tf.data reader
interleaves batches of up to four shards at a time, so ``_interleave`` replays it from the
shards' row counts. Memory holds the open shards' rows (at most four shards) and the last
row group read. Before reading, every source file's size and footer are checked: a split
whose Parquet changed since the shards were written is refused (one line: rerun
to_tfrecords). A manifest without ``source`` (older runs) is read by the tf.data reader.
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pythia import features, storage
from pythia.features import Encoders
from pythia.tfrecords import encode, layout, permute
from pythia.tfrecords.listing import (CYCLE_LENGTH, column_dtypes, load_encoders, select_shards,
                                      verify_shards)

def has_source(manifest: Mapping[str, Any], split: str) -> bool:
    """Whether the manifest says which Parquet the split's shards were written from, and
    with which encoders (what this reader needs)."""
    entry = (manifest.get("splits") or {}).get(split) or {}
    return isinstance(entry.get("source"), Mapping) and bool(manifest.get("encoders"))


def check_source(manifest: Mapping[str, Any], split: str) -> list[tuple[str, int]]:
    """The split's units (file, row group), after checking every source file's size, footer
    and row groups against the manifest.

    Raises:
        ValueError: a file is missing or differs from the one the shards were written from.
    """
    source = manifest["splits"][split]["source"]
    units = []
    for f in source["files"]:
        fix = (f"split {split!r}: the Parquet file {f['path']} {{}} since its TFRecords were "
               f"written; rerun to_tfrecords")
        fs, path = storage.filesystem(f["path"])
        try:
            with fs.open_input_file(path) as fh:
                size, sha = layout.footer(fh)
                meta = pq.ParquetFile(fh).metadata \
                    if (size, sha) == (f["bytes"], f["footer_sha256"]) else None
        except OSError:  # FileNotFoundError locally, OSError from S3
            raise ValueError(fix.format("is gone")) from None
        groups = None if meta is None else [meta.row_group(i).num_rows
                                            for i in range(meta.num_row_groups)]
        if groups != f["row_groups"]:
            raise ValueError(fix.format("changed"))
        units += [(f["path"], rg) for rg in range(len(groups))]
    return units


def _plan(manifest: Mapping[str, Any], split: str, regions: Sequence[str] | None
          ) -> tuple[list[tuple[str, int]], list[dict]]:
    """(units, shards to read in manifest order, each with its unit, region and first row
    among the unit's rows of that region)."""
    shards = select_shards(manifest, split, regions)  # as tf.data selects them
    units = check_source(manifest, split)
    start: dict[tuple[str, int], int] = {}
    plan = []
    for s in shards:
        unit = int(os.path.basename(s["path"]).split("-")[1])  # part-<unit>-<seq>
        if unit >= len(units):
            raise ValueError(f"split {split!r}: shard {s['path']} names unit {unit}, the "
                             f"source has {len(units)}; rerun to_tfrecords")
        key = (s["region"], unit)
        plan.append({"unit": unit, "region": s["region"], "start": start.get(key, 0),
                     "rows": int(s["rows"]), "path": s["path"]})
        start[key] = start.get(key, 0) + int(s["rows"])
    return units, plan


def _interleave(sizes: Sequence[int], block: int, cycle: int) -> Iterator[tuple[int, int, int]]:
    """(shard, start, stop) slices in the order ``tf.data``'s deterministic
    ``interleave(cycle_length=cycle)`` of per-shard ``batch(block)`` datasets yields them:
    slots taken round-robin, an empty slot filled with the next shard when visited, an
    exhausted shard's slot emptied and the turn passed on."""
    slots: list[list[int] | None] = [None] * cycle
    nxt, live, i = 0, 0, 0
    while nxt < len(sizes) or live:
        slot = slots[i]
        if slot is not None:
            shard, pos = slot
            if pos < sizes[shard]:
                stop = min(pos + block, sizes[shard])
                yield shard, pos, stop
                slot[1] = stop
            else:
                slots[i], live = None, live - 1
            i = (i + 1) % cycle
        elif nxt < len(sizes):
            slots[i], nxt, live = [nxt, 0], nxt + 1, live + 1
        else:
            i = (i + 1) % cycle


def encode_columns(table: pa.Table, encoders: Encoders,
                   columns: Sequence[str] = encode.RECORD_COLUMNS) -> dict[str, np.ndarray]:
    """Rows as the shards hold them (``encode.encode_records``' values), as numpy."""
    out: dict[str, np.ndarray] = {}
    kinds = {f.name: f.kind for f in features.FEATURES}
    for name in columns:
        if name == encode.GROUP_COLUMN:
            out[name] = encode.user_groups(table.column(features.USER_ID))
            continue
        arr = table.column(name).combine_chunks() if table.num_rows else \
            pa.array([], table.schema.field(name).type)
        if name == encode.ID_COLUMN:
            ids = pc.cast(arr, pa.large_string()).to_numpy(zero_copy_only=False)
            out[name] = np.asarray(ids, dtype=object)
        elif name in encode.LABEL_COLUMNS:
            out[name] = encode.non_null_ints(arr, name, "the split's Parquet")
        elif kinds[name] == features.CATEGORICAL:
            values, index = encode.dictionary_ids(arr)
            out[name] = encoders.vocabularies[name].encode(values)[index]
        else:
            x = pc.fill_null(pc.cast(arr, pa.float64()), np.nan).to_numpy(zero_copy_only=False)
            out[name] = encoders.numeric[name].normalize(x)
    return out


class _Units:
    """Row groups read on demand for the shards of ``plan``; the last one is kept until its
    last shard is opened (a row group's regions are often opened one after the other).
    ``manifest`` says whether the writer shuffled (``permute``)."""

    def __init__(self, units: Sequence[tuple[str, int]], columns: Sequence[str],
                 plan: Sequence[Mapping[str, Any]], manifest: Mapping[str, Any]) -> None:
        self.units, self.columns = units, list(columns)
        self.seed = (manifest.get("shuffle") or {}).get("seed")
        self.left: dict[int, int] = {}
        for shard in plan:
            self.left[shard["unit"]] = self.left.get(shard["unit"], 0) + 1
        self.key: Any = None
        self.table: pa.Table | None = None

    def rows(self, unit: int, region: str) -> pa.Table:
        """The unit's rows of ``region``, in the order the writer wrote them."""
        if self.key != unit:
            self.table = None
            path, row_group = self.units[unit]
            fs, name = storage.filesystem(path)
            with fs.open_input_file(name) as f:
                self.table = pq.ParquetFile(f).read_row_group(row_group, self.columns)
            self.key = unit
        table = self.table
        self.left[unit] -= 1
        if not self.left[unit]:
            self.key = self.table = None
        mine = pc.equal(table.column(encode.REGION_COLUMN), region)
        if self.seed is None:
            return table.filter(mine)
        at = np.flatnonzero(pc.fill_null(mine, False).to_numpy(zero_copy_only=False))
        return table.take(at[np.argsort(permute.row_keys(self.seed, unit, at), kind="stable")])


def _open(units: _Units, shard: Mapping[str, Any], encoders: Encoders,
          columns: Sequence[str], split: str) -> dict[str, np.ndarray]:
    rows = units.rows(shard["unit"], shard["region"])
    if shard["start"] + shard["rows"] > rows.num_rows:
        raise ValueError(f"split {split!r}: shard {shard['path']} holds rows the Parquet no "
                         f"longer has; rerun to_tfrecords")
    return encode_columns(rows.slice(shard["start"], shard["rows"]), encoders, columns)


def _empty() -> dict[str, np.ndarray]:
    return {k: np.zeros(0, dtype=t) for k, t in column_dtypes().items()}


def iter_numpy(manifest: Mapping[str, Any], split: str, regions: list[str] | None = None,
               chunk_rows: int | None = 65_536, verify: bool = False,
               batch_size: int = 8192) -> Iterator[dict[str, np.ndarray]]:
    """``reader.iter_numpy`` from the split's Parquet: the same chunks (same keys, dtypes,
    values and order; ``batch_size`` sets the replayed interleave's block as there).
    ``verify`` also checks the shards' sha256 (``listing.verify_shards``)."""
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1 (or None), got {chunk_rows}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    units, plan = _plan(manifest, split, regions)
    if verify:
        verify_shards(manifest, split, regions)
    encoders = load_encoders(manifest)
    step = batch_size if chunk_rows is None else min(batch_size, chunk_rows)
    reader = _Units(units, encode.INPUT_COLUMNS, plan, manifest)
    open_: dict[int, dict[str, np.ndarray]] = {}
    parts: list[dict[str, np.ndarray]] = []
    pending = 0
    for i, a, b in _interleave([s["rows"] for s in plan], step,
                               max(1, min(CYCLE_LENGTH, len(plan)))):
        if i not in open_:
            open_[i] = _open(reader, plan[i], encoders, encode.RECORD_COLUMNS, split)
        parts.append({k: v[a:b] for k, v in open_[i].items()})
        if b == plan[i]["rows"]:
            del open_[i]
        pending += b - a
        while chunk_rows is not None and pending >= chunk_rows:
            whole = _join(parts)
            yield {k: v[:chunk_rows] for k, v in whole.items()}
            pending -= chunk_rows
            parts = [{k: v[chunk_rows:] for k, v in whole.items()}] if pending else []
    if pending or chunk_rows is None:
        yield _join(parts) if parts else _empty()


def _join(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return {k: v.copy() for k, v in parts[0].items()}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def count_labels(manifest: Mapping[str, Any], split: str, regions: list[str] | None = None,
                 column: str = features.LABEL_COLUMNS["age_gender"]) -> dict[int, int]:
    """``reader.count_labels`` from the split's Parquet (that column and the region only)."""
    if column not in encode.LABEL_COLUMNS:
        raise ValueError(f"count_labels counts a label column {encode.LABEL_COLUMNS}, "
                         f"got {column!r}")
    units, plan = _plan(manifest, split, regions)
    reader = _Units(units, [column, encode.REGION_COLUMN], plan, manifest)
    counts: dict[int, int] = {}
    for shard in sorted(plan, key=lambda s: s["unit"]):  # any order: each unit read once
        rows = reader.rows(shard["unit"], shard["region"])
        y = encode.non_null_ints(rows.column(column).combine_chunks().slice(
            shard["start"], shard["rows"]), column, f"split {split!r}")
        values, n = np.unique(y, return_counts=True)
        for v, c in zip(values.tolist(), n.tolist()):
            counts[int(v)] = counts.get(int(v), 0) + int(c)
    return dict(sorted(counts.items()))
