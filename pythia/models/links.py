"""Head links: logits -> class probabilities (softmax, and ordinal CORN), in NumPy.

Shared by training-time prediction, temperature scaling and the tests' reference forward pass,
and identical to what the bid-time scorer computes from ``MLPModel.export_numpy()``.
"""
from __future__ import annotations

import numpy as np

LINKS = ("softmax", "corn")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (max-shifted, so large logits do not overflow)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def corn_probabilities(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from K-1 CORN conditional logits (Shi, Cao & Raschka 2021).

    ``P(y > k) = prod_{j<=k} sigmoid(l_j)`` is non-increasing in k (rank-consistent), and the
    class probabilities are its successive differences, so they are >= 0 and sum to 1.
    """
    logits = np.asarray(logits, dtype=np.float64)
    # sigmoid via tanh: never overflows, whatever the sign of the logit
    exceed = np.cumprod(0.5 + 0.5 * np.tanh(0.5 * logits), axis=1)  # P(y > k), k = 0..K-2
    n = len(logits)
    edges = np.concatenate([np.ones((n, 1)), exceed, np.zeros((n, 1))], axis=1)
    return np.maximum(edges[:, :-1] - edges[:, 1:], 0.0)


def link_probabilities(logits: np.ndarray, link: str) -> np.ndarray:
    """'softmax' or 'corn' logits -> class probabilities (float64)."""
    if link == "softmax":
        return softmax(logits)
    if link == "corn":
        return corn_probabilities(logits)
    raise ValueError(f"unknown head link {link!r}; choose from {LINKS}")
