"""Write-time shuffling of TFRecord shards: a seeded permutation of each unit's rows per region.

A split's rows arrive in time order (impression ids grow through the day) and region by region
would fill shards that cover a narrow stretch of the day each. With a shuffle seed, the rows
of region r in unit u (one Parquet row group, ``layout``) are written in the order of
``row_keys(seed, u, position)``, ``position`` being the row's index among all the unit's rows:
a bijective 64-bit mix (SplitMix64's finaliser) of (unit, position) salted by the seed: every
shard of a region is a uniform sample of its unit across the day, the same in both engines
(the keys never depend on Spark), and ``columnar`` replays it from the Parquet. Copies of a
resampled impression get independent places (the key is the position, not the id).

Memory stays bounded: ``Spill`` appends each batch's rows, cut by key range, to one temporary
Arrow file as they stream in (disk: the unit's rows as Arrow, about half the size of their
records), then reads back one range at a time, sorts each region's part by key and hands it to
be encoded and written. Ranges are a power of two of equal key spans, enough that one holds
about ``SPILL_ROWS`` rows of the unit on average (the keys are uniform); the order written
does not depend on how many there are.
"""
from __future__ import annotations

import itertools
import math
import os
import tempfile
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc  # noqa: F401  (pa.ipc)

from pythia.features import REGION

SHUFFLE_RULE = ("the rows of each (unit, region) in order of f(x * G + f(seed + G)) mod 2^64, "
                "f = SplitMix64's finaliser, G = 0x9E3779B97F4A7C15, x = unit * 2^40 + the "
                "row's position in its unit")
SPILL_ROWS = 32_768  # rows of a unit per key range, on average: the sort's memory bound
UNKNOWN_UNIT_BITS = 4  # key ranges = 2**this when the unit's row count is not known
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_MAX_POSITION = 1 << 40
_MAX_UNIT = 1 << 24
_KEY = "__shuffle_key"


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (a bijection of 64-bit words)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def row_keys(seed: int, unit: int, positions: np.ndarray) -> np.ndarray:
    """Sort keys (uint64, distinct within a unit) of the rows at ``positions`` of ``unit``.

    Raises:
        ValueError: a unit or position out of range (keys would collide).
    """
    positions = np.asarray(positions, dtype=np.int64)
    if not 0 <= unit < _MAX_UNIT or (len(positions) and (
            positions.min() < 0 or positions.max() >= _MAX_POSITION)):
        span = f"{positions.min()}..{positions.max()}" if len(positions) else "none"
        raise ValueError(f"shuffle keys need 0 <= unit < 2^24 and 0 <= row < 2^40, got unit "
                         f"{unit}, rows {span}")
    salt = _mix(np.array([(seed + int(_GOLDEN)) & ((1 << 64) - 1)], dtype=np.uint64))[0]
    x = positions.astype(np.uint64) + np.uint64(unit << 40)
    with np.errstate(over="ignore"):
        return _mix(x * _GOLDEN + salt)


def range_bits(unit_rows: int | None) -> int:
    """log2 of the key ranges a unit of ``unit_rows`` rows is spilled into."""
    if unit_rows is None:
        return UNKNOWN_UNIT_BITS
    return max(0, math.ceil(math.log2(max(1, math.ceil(unit_rows / SPILL_ROWS)))))


class Spill:
    """One unit's rows, each batch cut by key range, in a temporary Arrow IPC file.

    ``add`` appends a batch as ``ranges`` record batches (its rows of each key range, with
    their keys); ``drain`` reads one range at a time (that range's piece of every batch) and
    yields (region, rows) per region present (by name), the rows sorted by key, so each
    region's rows come in key order. Memory: one range of rows (about ``SPILL_ROWS``).
    """

    def __init__(self, seed: int, unit: int, unit_rows: int | None) -> None:
        self.seed, self.unit, self.bits = seed, unit, range_bits(unit_rows)
        self.ranges = 1 << self.bits
        self.position = self.batches = 0
        fd, self.path = tempfile.mkstemp(prefix="pythia-shuffle-", suffix=".arrow")
        os.close(fd)
        self.sink: Any = None
        self.writer: Any = None

    def add(self, batch: pa.RecordBatch) -> None:
        n = batch.num_rows
        keys = row_keys(self.seed, self.unit, np.arange(self.position, self.position + n))
        self.position += n
        ranges = (keys >> np.uint64(64 - self.bits)).astype(np.int64) if self.bits else \
            np.zeros(n, dtype=np.int64)
        order = np.argsort(ranges, kind="stable")
        batch = batch.take(pa.array(order)).append_column(_KEY, pa.array(keys[order]))
        if self.writer is None:
            self.sink = pa.OSFile(self.path, "wb")
            self.writer = pa.ipc.new_file(self.sink, batch.schema)
        bounds = np.searchsorted(ranges[order], np.arange(self.ranges + 1)).tolist()
        for a, b in zip(bounds[:-1], bounds[1:]):
            self.writer.write_batch(batch.slice(a, b - a))
        self.batches += 1

    def drain(self) -> Iterator[tuple[str, pa.RecordBatch]]:
        if self.writer is None:
            return
        self.writer.close()
        self.sink.close()
        with pa.OSFile(self.path, "rb") as f:
            spilled = pa.ipc.open_file(f)
            for rng in range(self.ranges):
                table = pa.Table.from_batches(
                    [spilled.get_batch(b * self.ranges + rng) for b in range(self.batches)],
                    spilled.schema).combine_chunks()
                if not table.num_rows:
                    continue
                keys = table.column(_KEY).to_numpy()
                rows = table.drop_columns([_KEY]).to_batches()[0]  # one chunk: combined
                enc = pc.dictionary_encode(rows.column(REGION))
                codes = enc.indices.to_numpy(zero_copy_only=False)
                for name, code in sorted(zip(enc.dictionary.to_pylist(), itertools.count())):
                    mine = np.flatnonzero(codes == code)
                    yield name, rows.take(pa.array(mine[np.argsort(keys[mine], kind="stable")]))

    def close(self) -> None:
        for f in (self.writer, self.sink):
            if f is not None and not getattr(f, "closed", False):
                try:
                    f.close()
                except (OSError, pa.ArrowInvalid):
                    pass
        if os.path.exists(self.path):
            os.remove(self.path)
