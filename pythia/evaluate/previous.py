"""This run's champions against the previous run's bundle on the same rows -- the natural test
day's new users when the run held users out (``comparison_test_set``: they stand for the users
a bidder scores without a label), else the whole day -- in bounded memory: the natural test
day and each winner's predictions are hash-partitioned by impression id on
scratch disk (``buckets``), and bucket by bucket the winner's labelled rows of a region are
scored by the previous bundle in record batches, the log-losses added up as sums
(``stats.row_log_loss``). The answers equal ``compare_with_previous`` (the in-memory
reference, at the end) to 1e-9; ``PreviousComparison`` is a ``champions.PreviousCheck``.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.metrics import log_loss

from pythia import buckets
from pythia.scratch import ScratchDir
from pythia.evaluate import io
from pythia.evaluate.frames import JOINT_TARGET, PROVIDER, SplitFrame, split_frame
from pythia.evaluate.metrics import check_probabilities, clip_probabilities
from pythia.evaluate.slices import (NATURAL, NATURAL_NEW_USERS, Aligned, align, candidate_ident,
                                    candidate_key, candidate_label, slice_masks)
from pythia.evaluate.stats import row_log_loss
from pythia.features import IMPRESSION_ID, SPLIT, TARGETS, TEST_NATURAL, class_labels

log = logging.getLogger(__name__)

def comparison_test_set(split_manifest: Mapping[str, Any]) -> str:
    """The test set the previous champion is compared on: the new users when the run held
    users out of training (``etl.holdout``), else the whole natural test day."""
    return NATURAL_NEW_USERS if float(split_manifest.get("holdout_users") or 0) > 0 else NATURAL


def _note(previous_name: str, test_set: str) -> str:
    return f"previous = {previous_name}" + (
        "; the new users' rows" if test_set == NATURAL_NEW_USERS else "")


DEFAULT_BUCKET_ROWS = 100_000  # natural test rows per bucket: bounds the working set
SCORE_BATCH_ROWS = 8_192  # rows handed to the previous bundle at a time


class PreviousComparison:
    """``check(region, winner row) -> (previous log-loss, current log-loss, n rows, note)``
    for ``champions.select_champions``; use as a context manager (scratch files go on exit).

    The natural test day is partitioned on the first call, each winner's predictions on its
    first call; a run whose champions all fail the baselines reads nothing.
    """

    def __init__(self, candidates: Sequence[Mapping[str, Any]],
                 split_manifest: Mapping[str, Any], age_edges: Sequence[int], previous: Any,
                 previous_name: str, *, bucket_rows: int = DEFAULT_BUCKET_ROWS,
                 score_batch_rows: int = SCORE_BATCH_ROWS, scratch_dir: str | None = None):
        if bucket_rows < 1 or score_batch_rows < 1:
            raise ValueError(f"bucket_rows and score_batch_rows must be >= 1, got "
                             f"{bucket_rows}, {score_batch_rows}")
        self._by_key = {candidate_key(candidate_ident(c)): c for c in candidates}
        self._manifest, self._edges = split_manifest, tuple(int(e) for e in age_edges)
        self._previous, self._name = previous, previous_name
        self._bucket_rows, self._batch = bucket_rows, score_batch_rows
        self._scratch_parent = scratch_dir
        self._scratch: ScratchDir | None = None  # locked while in use: swept if we die
        self._n_buckets = 0
        self._staged: dict[tuple, tuple[str, pa.Schema | None]] = {}

    def __enter__(self) -> "PreviousComparison":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the scratch files."""
        if self._scratch is not None:
            self._scratch.close()
            self._scratch, self._staged = None, {}

    def __call__(self, region: str, best: Mapping[str, Any]
                 ) -> tuple[float | None, float | None, int, str]:
        key = (str(best["model"]), str(best["candidate_region"]), int(best["config_id"]))
        rows_dir = self._stage_rows()
        pred_dir, schema = self._stage_winner(key)
        return self._compare(key, region, rows_dir, pred_dir, schema)

    # ------------------------------------------------------------ staging
    def _stage_rows(self) -> str:
        if self._scratch is None:
            self._scratch = ScratchDir("pythia-previous-", self._scratch_parent)
            n = io.count_split_rows(self._manifest, TEST_NATURAL)
            self._n_buckets = max(1, math.ceil(n / self._bucket_rows))
            buckets.partition(io.split_batches(self._manifest, TEST_NATURAL), IMPRESSION_ID,
                              self._n_buckets, os.path.join(self._scratch.path, "rows"))
        return os.path.join(self._scratch.path, "rows")

    def _stage_winner(self, key: tuple) -> tuple[str, pa.Schema | None]:
        if key not in self._staged:
            folder = os.path.join(self._scratch.path, "predictions", str(len(self._staged)))
            natural = (b.filter(pc.equal(b.column(SPLIT), TEST_NATURAL)) for b in
                       io.prediction_batches(self._by_key[key]["predictions_uri"],
                                             candidate_label(*key)))
            _, schema = buckets.partition(natural, IMPRESSION_ID, self._n_buckets, folder)
            self._staged[key] = (folder, schema)
        return self._staged[key]

    # ------------------------------------------------------------ comparing
    def _frames(self, rows_dir: str, pred_dir: str, schema: pa.Schema | None
                ) -> Iterator[tuple[SplitFrame, pa.Table]]:
        """Each bucket's natural rows as a SplitFrame, with its predictions."""
        empty = (schema or pa.schema([(IMPRESSION_ID, pa.string()), (SPLIT, pa.string())] + [
            (f"p_{t}", pa.list_(pa.float32())) for t in TARGETS])).empty_table()
        for b in range(self._n_buckets):
            rows = buckets.read_bucket(rows_dir, b)
            if rows is None:
                continue
            preds = buckets.read_bucket(pred_dir, b)
            yield split_frame(TEST_NATURAL, rows.to_pandas(), self._edges), \
                (preds if preds is not None else empty)

    def _compare(self, key: tuple, region: str, rows_dir: str, pred_dir: str,
                 schema: pa.Schema | None) -> tuple[float | None, float | None, int, str]:
        """``compare_with_previous`` over the buckets (same answers and notes)."""
        k = len(class_labels(JOINT_TARGET, self._edges))
        sums = np.zeros(2)  # previous, current
        n_valid = n_scored = 0
        for frame, preds in self._frames(rows_dir, pred_dir, schema):
            winner = align(preds, frame, key[1], self._edges, candidate_label(*key))
            mask = dict(slice_masks(frame, winner.pos, comparison_test_set(self._manifest),
                                    [region]))[region]
            pos, cur_all = winner.pos[mask], winner.probs[JOINT_TARGET][mask]
            for start in range(0, len(pos), self._batch):
                part = pos[start:start + self._batch]
                prev = self._score(region, frame.df.iloc[part].reset_index(drop=True))
                if isinstance(prev, str):
                    return None, None, 0, prev
                y = frame.labels[PROVIDER][JOINT_TARGET][part]
                cur = check_probabilities(cur_all[start:start + self._batch], k)
                valid = y >= 0
                sums += (row_log_loss(y[valid], prev[valid]).sum(),
                         row_log_loss(y[valid], cur[valid]).sum())
                n_valid += int(valid.sum())
                n_scored += len(part)
        if n_scored == 0:  # the reference asks the bundle about the empty slice too
            prev = self._score(region, pd.DataFrame(
                columns=io.split_schema(self._manifest, TEST_NATURAL).names))
            if isinstance(prev, str):
                return None, None, 0, prev
        if n_valid == 0:
            return None, None, 0, f"no labelled test rows in {region} to compare with"
        return (float(sums[0] / n_valid), float(sums[1] / n_valid), n_valid,
                _note(self._name, comparison_test_set(self._manifest)))

    def _score(self, region: str, rows: pd.DataFrame) -> np.ndarray | str:
        """The previous bundle's AgeGender probabilities of ``rows``, or the note saying why
        there are none (a bundle that fails must not block this run)."""
        try:
            out = self._previous(region, rows)
        except Exception as exc:  # noqa: BLE001 - any failure of the old bundle is only a note
            log.warning("previous champion for %s could not score: %s", region, exc)
            return f"{self._name} could not score these rows ({exc})"
        if out is None or out.get(JOINT_TARGET) is None:
            return f"{self._name} has no champion for {region}"
        p = check_probabilities(out[JOINT_TARGET], len(class_labels(JOINT_TARGET, self._edges)),
                                f"{self._name} p_{JOINT_TARGET} ({region})")
        if len(p) != len(rows):
            raise ValueError(f"{self._name} returned {len(p)} rows for {len(rows)} in {region}")
        return p


def compare_with_previous(frame: SplitFrame, winner: Aligned, region: str,
                          previous: Callable[[str, pd.DataFrame],
                                             Mapping[str, np.ndarray] | None],
                          previous_name: str, test_set: str = NATURAL
                          ) -> tuple[float | None, float | None, int, str]:
    """Joint-target log-loss of the previous champion and of the winner on the same labelled
    rows of ``region`` in ``test_set`` (``comparison_test_set``): (previous, current, n rows,
    note).

    A previous bundle that fails to score gives no comparison (it must not block this run).
    """
    mask = dict(slice_masks(frame, winner.pos, test_set, [region]))[region]
    pos = winner.pos[mask]
    y = frame.labels[PROVIDER][JOINT_TARGET][pos]
    try:
        prev = previous(region, frame.df.iloc[pos].reset_index(drop=True))
    except Exception as exc:  # noqa: BLE001 - any failure of the old bundle is only a note
        log.warning("previous champion for %s could not score: %s", region, exc)
        return None, None, 0, f"{previous_name} could not score these rows ({exc})"
    if prev is None or prev.get(JOINT_TARGET) is None:
        return None, None, 0, f"{previous_name} has no champion for {region}"
    k = winner.probs[JOINT_TARGET].shape[1]
    pp = check_probabilities(prev[JOINT_TARGET], k,
                             f"{previous_name} p_{JOINT_TARGET} ({region})")
    if len(pp) != len(pos):
        raise ValueError(f"{previous_name} returned {len(pp)} rows for {len(pos)} in {region}")
    valid = y >= 0
    if not valid.any():
        return None, None, 0, f"no labelled test rows in {region} to compare with"
    cur = check_probabilities(winner.probs[JOINT_TARGET][mask], k)
    labels = np.arange(k)
    return (float(log_loss(y[valid], clip_probabilities(pp[valid]), labels=labels)),
            float(log_loss(y[valid], clip_probabilities(cur[valid]), labels=labels)),
            int(valid.sum()),
            _note(previous_name, test_set))
