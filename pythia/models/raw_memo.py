"""The validation day's raw logits, kept from calibration for the predictions file.

A numpy model computes its validation logits once to fit the temperatures
(``Model._fit_and_calibrate``); the train step then predicts the validation split again, chunk
by chunk, for the candidate's predictions file. ``RawMemo`` keeps the first answer by impression
id, so the second pass only looks rows up: for gbdt a fifth of the rows it predicts (default
world: 162k validation rows of 703k predicted per global candidate). A copy of a resampled
impression has the same features, hence the same logits, so any copy's row answers for all.
Bounded like the validation sample it comes from (``max_train_rows`` rows).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


class RawMemo:
    """Raw logits per head of the rows with ``impression_ids``; ``lookup`` answers whole
    chunks only (every id known), else None so the caller predicts the chunk itself."""

    def __init__(self, impression_ids: np.ndarray, raw: Mapping[str, np.ndarray]) -> None:
        ids = np.asarray(impression_ids).astype(str)
        self.ids, first = np.unique(ids, return_index=True)
        self.raw = {h: np.asarray(v)[first] for h, v in raw.items()}

    def lookup(self, impression_ids: np.ndarray) -> dict[str, np.ndarray] | None:
        """The memo's rows for these ids, in their order; None unless every id is known.
        The first id is tried alone first, so a test day's chunk costs one lookup."""
        if not len(impression_ids) or self._positions(impression_ids[:1]) is None:
            return None
        pos = self._positions(impression_ids)
        return None if pos is None else {h: v[pos] for h, v in self.raw.items()}

    def _positions(self, impression_ids: np.ndarray) -> np.ndarray | None:
        """Each id's row in the memo, or None when any id is unknown."""
        if not len(self.ids):
            return None
        ids = np.asarray(impression_ids).astype(str)
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return pos if np.array_equal(self.ids[pos], ids) else None
