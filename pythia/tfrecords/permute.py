"""Write-time shuffling of TFRecord shards: a seeded permutation of each unit's rows per region.

A split's rows arrive in time order (impression ids grow through the day) and region by region
would fill shards that cover a narrow stretch of the day each. With a shuffle seed, the rows
of region r in unit u (one Parquet row group, ``layout``) are written in the order of
``row_keys(seed, u, position)``, ``position`` being the row's index among all the unit's rows:
a bijective 64-bit mix (SplitMix64's finaliser) of (unit, position) salted by the seed: every
shard of a region is a uniform sample of its unit across the day, the same in both engines
(the keys never depend on Spark), and ``columnar`` replays it from the Parquet. Copies of a
resampled impression get independent places (the key is the position, not the id).

Memory stays bounded: ``Spill`` writes each batch's encoded records into temporary files by
(region, key range) as they stream in, then reads back one range at a time, sorts it by key
and hands it to the shard writer. Ranges are a power of two of equal key spans, enough that
one holds about ``SPILL_ROWS`` rows of the unit on average (the keys are uniform).
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from typing import Iterator

import numpy as np

SHUFFLE_RULE = ("the rows of each (unit, region) in order of f(x * G + f(seed + G)) mod 2^64, "
                "f = SplitMix64's finaliser, G = 0x9E3779B97F4A7C15, x = unit * 2^40 + the "
                "row's position in its unit")
SPILL_ROWS = 32_768  # rows of a unit per key range, on average: the sort's memory bound
UNKNOWN_UNIT_BITS = 4  # key ranges = 2**this when the unit's row count is not known
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_MAX_POSITION = 1 << 40
_MAX_UNIT = 1 << 24
_INDEX = np.dtype([("key", "<u8"), ("length", "<i8")])


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
        raise ValueError(f"shuffle keys need 0 <= unit < 2^24 and 0 <= row < 2^40, got unit "
                         f"{unit}, rows {positions.min()}..{positions.max()}")
    salt = _mix(np.array([(seed + int(_GOLDEN)) & ((1 << 64) - 1)], dtype=np.uint64))[0]
    x = positions.astype(np.uint64) + np.uint64(unit << 40)
    with np.errstate(over="ignore"):
        return _mix(x * _GOLDEN + salt)


def range_bits(unit_rows: int | None) -> int:
    """log2 of the key ranges a unit of ``unit_rows`` rows is spilled into."""
    if unit_rows is None:
        return UNKNOWN_UNIT_BITS
    return max(0, math.ceil(math.log2(max(1, math.ceil(unit_rows / SPILL_ROWS)))))


def gather(flat: np.ndarray, offsets: np.ndarray, order: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Framed records ``flat[offsets[i]:offsets[i+1]]`` taken in ``order``."""
    view = memoryview(flat)
    starts, stops = offsets[:-1][order], offsets[1:][order]
    out = np.frombuffer(b"".join([view[a:b] for a, b in zip(starts.tolist(), stops.tolist())]),
                        dtype=np.uint8)
    return out, np.concatenate([[0], np.cumsum(stops - starts)]).astype(np.int64)


class Spill:
    """One unit's encoded records, by (region, key range), in a temporary folder.

    ``keys(n)`` gives the next ``n`` rows' keys and key ranges; ``add`` appends a region's
    records of one range; ``drain`` yields (region, records, offsets) per region (sorted by
    name) and range, each range sorted by key, so a region's records come in key order.
    """

    def __init__(self, seed: int, unit: int, unit_rows: int | None) -> None:
        self.seed, self.unit, self.bits = seed, unit, range_bits(unit_rows)
        self.ranges = 1 << self.bits
        self.position = 0
        self.folder = tempfile.mkdtemp(prefix="pythia-shuffle-")
        self.files: dict[str, set[int]] = {}

    def keys(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        keys = row_keys(self.seed, self.unit, np.arange(self.position, self.position + n))
        self.position += n
        if not self.bits:
            return keys, np.zeros(n, dtype=np.int64)
        return keys, (keys >> np.uint64(64 - self.bits)).astype(np.int64)

    def _path(self, region: str, rng: int, kind: str) -> str:
        return os.path.join(self.folder, f"{region}-{rng}.{kind}")

    def add(self, region: str, rng: int, flat: np.ndarray, offsets: np.ndarray,
            keys: np.ndarray) -> None:
        index = np.empty(len(keys), dtype=_INDEX)
        index["key"], index["length"] = keys, np.diff(offsets)
        with open(self._path(region, rng, "rec"), "ab") as f:
            f.write(memoryview(flat[offsets[0]:offsets[-1]]))
        with open(self._path(region, rng, "idx"), "ab") as f:
            f.write(index.tobytes())
        self.files.setdefault(region, set()).add(rng)

    def drain(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for region in sorted(self.files):
            for rng in sorted(self.files[region]):
                index = np.fromfile(self._path(region, rng, "idx"), dtype=_INDEX)
                flat = np.fromfile(self._path(region, rng, "rec"), dtype=np.uint8)
                for kind in ("idx", "rec"):
                    os.remove(self._path(region, rng, kind))
                offsets = np.concatenate([[0], np.cumsum(index["length"])]).astype(np.int64)
                yield (region, *gather(flat, offsets, np.argsort(index["key"], kind="stable")))

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
