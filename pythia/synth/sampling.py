"""Vectorised sampling and Arrow column helpers shared by the user and impression samplers."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class Categorical:
    """Many categorical distributions (rows of a table) sampled in one vectorised call."""

    def __init__(self, table: np.ndarray):
        p = np.asarray(table, dtype=np.float64).reshape(-1, table.shape[-1])
        total = p.sum(axis=1, keepdims=True)
        cdf = np.cumsum(p, axis=1) / np.where(total > 0, total, 1.0)
        # Pin everything from the last possible category on to exactly 1, so rounding can never
        # pick a trailing zero-probability category; rows with no mass are never sampled.
        last = p.shape[1] - 1 - np.argmax(p[:, ::-1] > 0, axis=1)
        cdf[np.arange(p.shape[1])[None, :] >= last[:, None]] = 1.0
        self.width = p.shape[1]
        self.n_rows = p.shape[0]
        self._flat = (cdf + np.arange(p.shape[0])[:, None]).ravel()

    def sample(self, keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        keys = np.asarray(keys, dtype=np.int64)
        u = rng.random(len(keys))
        pos = np.searchsorted(self._flat, keys + u, side="right")
        return pos - keys * self.width


def stack_tables(*tables: np.ndarray) -> np.ndarray:
    """Concatenate tables as rows of one categorical table (last axis = categories)."""
    return np.concatenate([t.reshape(-1, t.shape[-1]) for t in tables], axis=0)


def format_ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """Fixed-width ids ``prefix`` + zero-padded number, built without a Python loop."""
    numbers = np.asarray(numbers, dtype=np.int64)
    n = len(numbers)
    if n and numbers.max() >= 10 ** width:
        raise ValueError(f"id number {numbers.max()} does not fit in {width} digits")
    digits = (numbers[:, None] // 10 ** np.arange(width - 1, -1, -1)) % 10 + ord("0")
    pre = np.frombuffer(prefix.encode(), dtype=np.uint8)
    buf = np.concatenate([np.broadcast_to(pre, (n, len(pre))), digits.astype(np.uint8)], axis=1)
    offsets = (np.arange(n + 1) * buf.shape[1]).astype(np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()),
                                       pa.py_buffer(np.ascontiguousarray(buf).tobytes()))


def take_strings(vocab: list[str], idx: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """``vocab[idx]`` as an Arrow string column; rows where ``valid`` is False are null."""
    indices = pa.array(idx.astype(np.int32), mask=None if valid is None else ~valid)
    return pc.take(pa.array(vocab, type=pa.string()), indices)
