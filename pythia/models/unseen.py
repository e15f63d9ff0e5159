"""The MLP's answer for a categorical id that no training row carries.

Such an id is common, not an edge case: ``local_dow`` on the test day is the weekday after the
training and validation days, absent from a window shorter than a week, so it encodes as OOV
(default world: 89% of the natural test rows). No gradient reaches its embedding row, only the
L2 penalty, which Adam drives to about zero: an input the trunk never saw, answered by
extrapolation that varies from fit to fit (same data, flow vs ``quality_bench``: AgeGender
1.881 vs 2.590 on the test day). ``UnseenRows.fill`` sets such rows to the training-count-
weighted mean of the rows the training rows carry (an unseen value means "some value, as often
as each was seen"), or, in a warm fit, back to the start's rows (the region never saw the id,
the global fit may have). The MLP fills before every validation score, so early stopping, the
kept weights and the temperature are those of the filled network (same two fits: 1.854 and
1.875).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from pythia import features
from pythia.features import Encoders


def id_counts(data: Any, encoders: Encoders) -> dict[str, np.ndarray]:
    """Per categorical feature, the training rows carrying each id (length: the vocabulary's
    size), from a numpy split or one pass of a ``(features, labels)`` tf.data.Dataset."""
    sizes = {f: encoders.vocabularies[f].size for f in features.CATEGORICAL_FEATURES}
    counts = {f: np.zeros(n, dtype=np.int64) for f, n in sizes.items()}
    batches = [data] if isinstance(data, Mapping) else (x for x, _ in data.as_numpy_iterator())
    for x in batches:
        for f, n in sizes.items():
            ids = np.asarray(x[f], dtype=np.int64).ravel()
            if ids.size and (ids.min() < 0 or ids.max() >= n):
                raise ValueError(f"feature {f!r} has ids outside [0, {n}): [{ids.min()}, "
                                 f"{ids.max()}]; were the encoders the same?")
            counts[f] += np.bincount(ids, minlength=n)
    return counts


class UnseenRows:
    """Fills the embedding rows of ids with no training row (see the module docstring)."""

    def __init__(self, counts: Mapping[str, np.ndarray], start: Any = None) -> None:
        """``counts``: ``id_counts`` of the training rows; ``start``: the keras model a warm
        fit started from (its rows are restored), None for the weighted mean."""
        self.counts, self.start = counts, start

    def fill(self, keras_model: Any) -> dict[str, int]:
        """Set the unseen rows of every ``emb_<feature>`` layer; returns rows set per feature."""
        filled = {}
        for f, count in self.counts.items():
            unseen = count == 0
            if not unseen.any() or unseen.all():
                continue
            layer = keras_model.get_layer(f"emb_{f}")
            table = layer.get_weights()[0]
            if self.start is not None:
                table[unseen] = self.start.get_layer(f"emb_{f}").get_weights()[0][unseen]
            else:
                w = count.astype(np.float64)
                table[unseen] = (w @ table.astype(np.float64) / w.sum()).astype(table.dtype)
            layer.set_weights([table])
            filled[f] = int(unseen.sum())
        return filled

    def before(self, keras_model: Any, score: Callable[[], Any]) -> Callable[[], Any]:
        """``score`` with ``keras_model``'s unseen rows filled first (``KeepBest``'s score)."""
        def filled() -> Any:
            self.fill(keras_model)
            return score()
        return filled
