"""The logistic-regression design: one-hot columns per categorical value, standardised
numerics, as a sparse matrix (``logreg`` fits it; the MLP's wide start reuses it through
``logreg.fit_linear``), and the seeded row samples its fits run on.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from pythia import features
from pythia.features import Encoders


def path_rows(y: np.ndarray, max_rows: int, seed: int) -> np.ndarray | None:
    """Sorted indices of at most ``max_rows`` training rows (every class kept) on which the
    regularisation path runs, or None when all rows fit (``max_rows`` <= 0: no limit)."""
    y = np.asarray(y)
    if max_rows <= 0 or len(y) <= max_rows:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(y), size=max_rows, replace=False)
    # a class missing from the sample would change the coefficient shape of the warm start
    _, first = np.unique(y, return_index=True)
    return np.union1d(idx, first)


def fit_columns(train: Mapping[str, np.ndarray], encoders: Encoders, min_count: int
                ) -> tuple[dict[str, np.ndarray], int]:
    """Per categorical feature a lookup ``id -> one-hot column``, and the number of columns.

    Columns are numbered across features in ``CATEGORICAL_FEATURES`` order. The missing and
    OOV ids always get a column; a value id with fewer than ``min_count`` training rows maps
    to its feature's OOV column.
    """
    tables, offset = {}, 0
    for name in features.CATEGORICAL_FEATURES:
        size = encoders.vocabularies[name].size
        counts = np.bincount(np.asarray(train[name], dtype=np.int64), minlength=size)[:size]
        kept = counts >= max(int(min_count), 1)
        kept[: features.FIRST_VALUE_ID] = True
        cols = np.flatnonzero(kept)
        table = np.full(size, -1, dtype=np.int64)
        table[cols] = offset + np.arange(len(cols))
        table[~kept] = table[features.OOV_ID]
        tables[name] = table
        offset += len(cols)
    return tables, offset


def numeric_block(X: Mapping[str, np.ndarray], mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(n, n_numeric) standardised numerics; non-finite values become 0 (the training mean)."""
    cols = [np.asarray(X[f], dtype=np.float64) for f in features.NUMERIC_FEATURES]
    z = (np.column_stack(cols) - mean) / std if cols else np.zeros((0, 0))
    return np.where(np.isfinite(z), z, 0.0)


def design_matrix(X: Mapping[str, np.ndarray], tables: Mapping[str, np.ndarray], n_onehot: int,
                  mean: np.ndarray, std: np.ndarray, dtype: Any = np.float32) -> Any:
    """The sparse (n, n_onehot + n_numeric) CSR design matrix: one 1 per categorical, then
    the standardised numerics; float32 for fitting, float64 to score as ``linear_logits``."""
    from scipy.sparse import csr_matrix

    cat = np.column_stack([tables[f][np.asarray(X[f], dtype=np.int64)]
                           for f in features.CATEGORICAL_FEATURES])
    num = numeric_block(X, mean, std)
    n, n_num = len(cat), num.shape[1]
    indices = np.hstack([cat, np.broadcast_to(n_onehot + np.arange(n_num), (n, n_num))])
    # float32 halves the memory L-BFGS streams through per iteration
    data = np.hstack([np.ones_like(cat, dtype=dtype), num.astype(dtype)])
    width = indices.shape[1]
    return csr_matrix((data.ravel(), indices.ravel(), np.arange(0, n * width + 1, width)),
                      shape=(n, n_onehot + n_num))


def diag(values: np.ndarray) -> Any:
    """The sparse float32 diagonal matrix of ``values``: ``X @ diag(s)`` scales X's columns."""
    from scipy.sparse import diags

    return diags(np.asarray(values, dtype=np.float32)).tocsr()
