"""The MLP's members (issue 15, session 42): K fits that differ only in their seed, folded
into ONE network whose logits are the mean of theirs.

Why: three MLPs of one run's rows, differing only in their training seed, gained about 0.002
x the population posterior on its new users by averaging (``benchmarks/quality_bench.py
--members 3``; docs/new-users.md, session 42), where a moving average of one fit's weights
gained 0.0003. The members' errors are independent; the points of one trajectory are not.

How it stays one network: members that read the same inputs are one MLP K times as wide.
The embeddings sit side by side (member k's columns after member k-1's, per feature); the
first trunk layer reads each member's own columns into its own block of units (the numeric
inputs into every block); deeper layers are block-diagonal; each head stacks the members'
kernels, divided by K, with the mean of their biases; the wide part (linear in its tables) is
the mean of the members' wide parts. So the merged logits are exactly the mean of the
members' logits (the geometric mean of their probabilities before calibration), the deep part
of a wide-only bin is the mean of theirs, and the export format, the NumPy scorer and the
ONNX graph take the merged network as they take any MLP. The calibration (temperatures, the
activity cut) is fitted on the merged network's validation logits, as for one fit.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from pythia import features


def merge(members: Sequence[Any], merged: Any, n_hidden: int, heads: Sequence[str]) -> None:
    """Set ``merged``'s weights (a Keras MLP built ``len(members)`` times as wide, same layer
    names) so that its logits are the mean of the ``members``' (Keras MLPs of one graph)."""
    k = len(members)

    def weights(name: str) -> list[list[np.ndarray]]:
        return [m.get_layer(name).get_weights() for m in members]

    dims = []
    for f in features.CATEGORICAL_FEATURES:
        tables = [w[0] for w in weights(f"emb_{f}")]
        dims.append(tables[0].shape[1])
        merged.get_layer(f"emb_{f}").set_weights([np.concatenate(tables, axis=1)])
    n_num = len(features.NUMERIC_FEATURES)
    for i in range(n_hidden):
        ws = weights(f"trunk_{i}")
        if i == 0:
            W = _spread_input([w[0] for w in ws], dims, n_num, blocks=True)
        else:
            W = _block_diagonal([w[0] for w in ws])
        merged.get_layer(f"trunk_{i}").set_weights([W, np.concatenate([w[1] for w in ws])])
    for t in heads:
        ws = weights(t)
        if not n_hidden:  # no trunk: the heads read the inputs
            W = _spread_input([w[0] for w in ws], dims, n_num, blocks=False) / k
        else:
            W = np.concatenate([w[0] for w in ws], axis=0) / k
        merged.get_layer(t).set_weights([W, np.mean([w[1] for w in ws], axis=0)])
    if any(layer.name == "wide" for layer in merged.layers):
        ws = weights("wide")
        merged.get_layer("wide").set_weights([np.mean(parts, axis=0) for parts in zip(*ws)])


def _spread_input(Ws: Sequence[np.ndarray], dims: Sequence[int], n_num: int, blocks: bool
                  ) -> np.ndarray:
    """The first dense kernel of the merged network from the members' ones: rows of feature f
    of member j go to the merged input's rows ``offset_f + j * dim_f``; the numeric rows are
    shared. ``blocks``: member j's outputs are its own block of columns (a trunk layer), else
    the members' outputs are summed into the same columns (a head)."""
    k, units = len(Ws), Ws[0].shape[1]
    W = np.zeros((k * sum(dims) + n_num, k * units if blocks else units), dtype=Ws[0].dtype)
    for j, Wj in enumerate(Ws):
        cols = slice(j * units, (j + 1) * units) if blocks else slice(0, units)
        own, merged_row = 0, 0
        for d in dims:
            W[merged_row + j * d:merged_row + (j + 1) * d, cols] += Wj[own:own + d]
            own, merged_row = own + d, merged_row + k * d
        W[merged_row:, cols] += Wj[own:]
    return W


def _block_diagonal(Ws: Sequence[np.ndarray]) -> np.ndarray:
    rows, cols = Ws[0].shape
    W = np.zeros((len(Ws) * rows, len(Ws) * cols), dtype=Ws[0].dtype)
    for j, Wj in enumerate(Ws):
        W[j * rows:(j + 1) * rows, j * cols:(j + 1) * cols] = Wj
    return W
