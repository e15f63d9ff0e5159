"""Streaming evaluation: every candidate and the exact posterior scored on every slice with
memory bounded by one bucket of rows, whatever the size of the splits.

Three passes over scratch files on local disk (``pythia.scratch``: removed at the end, or
by a later task's sweep when this one is killed):
  1. the split rows go to K buckets by a hash of the impression id — on a synthetic world
     first by the user id, to join the truth bucket by bucket, then on by impression id;
  2. each candidate's predictions go to the same K buckets;
  3. bucket by bucket (``bucket``): the rows become SplitFrames, each candidate's predictions
     are aligned to them (``slices.align``), the exact posterior is computed
     (``gauge.posterior_probs``), and everything is added to per-slice sufficient statistics
     (``stats``), and per user group (``margins``: the paired SEs) on the validation and
     natural test days.
     With more than one core, ``workers`` processes (``forked``) take every other bucket each,
     and their sums are merged (``SliceSums.merge``): the same figures up to the order of the
     float additions (default world, idle 2-core machine: pass 3 took about 30 of evaluate's
     41 s in one process).
The metric and distribution tables are then built from the statistics alone (``tables_of``),
in the rows and order of the in-memory path (``slices.score_candidate``, kept as the
reference: the two agree to 1e-9). The population, in-between and region-blind posteriors'
figures (``population_log_loss`` / ``population_macro_f1``, ``in_between_*``,
``region_blind_*``: when the world has those forms, ``gauge.population_of`` /
``gauge.in_between_of`` / ``gauge.region_blind_of``) and the per-group sums are streaming
only; the in-memory path gives the former with that form as its only posterior.
"""
from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pandas as pd
import pyarrow as pa

from pythia import buckets, threads
from pythia.evaluate import io
from pythia.evaluate.bucket import TRUTH_COLUMN, bucket_frames, score_bucket
from pythia.evaluate.forked import map_forked
from pythia.evaluate.frames import (FRAME_COLUMNS, OPTIONAL_FRAME_COLUMNS, PROVIDER, TRUTH,
                                    truth_labels)
from pythia.evaluate.gauge import in_between_of, population_of, region_blind_of
from pythia.evaluate.slices import candidate_label, check_candidates
from pythia.evaluate.stats import OTHER_FORMS
from pythia.evaluate.sums import SliceSums, tables_of
from pythia.features import IMPRESSION_ID, TARGETS, USER_ID
from pythia.scratch import ScratchDir

DEFAULT_BUCKET_ROWS = 100_000  # split rows per bucket: bounds evaluate's working set


@dataclass
class StreamScores:
    """The streamed evaluation: the metric and distribution tables and the sums behind them."""

    metrics: pd.DataFrame
    distributions: pd.DataFrame
    sums: SliceSums

    @property
    def gauge_note(self) -> str | None:
        return self.sums.gauge_note

    @property
    def present(self) -> list[str]:
        return self.sums.present


def score_streaming(candidates: Sequence[Mapping[str, Any]], split_manifest: Mapping[str, Any],
                    age_edges: Sequence[int], world: Any = None, *,
                    bucket_rows: int = DEFAULT_BUCKET_ROWS, scratch_dir: str | None = None,
                    workers: int | None = None, in_between: bool = True) -> StreamScores:
    """Score every candidate (and the exact posterior on a world) on every slice, streaming.

    Args:
        candidates: train-step records {model, region, config_id, predictions_uri,
            val_logloss: {target: float}, …}.
        split_manifest: the ETL's manifest (``paths`` of the split folders, resampling
            ``rates``).
        age_edges: the run's age bucket edges.
        world: the synthetic world (truth labels and the exact posterior), or None.
        bucket_rows: split rows per bucket; peak memory grows with it, not with the splits.
        scratch_dir: parent folder of the scratch files (default: the system temp folder).
        workers: processes scoring buckets at once (default: the task's cores,
            ``threads.thread_budget``; 1 = in this process).
        in_between: also score the in-between gauge (``gauge.in_between_of``: it reads the
            train and validation splits and about doubles the scoring time); the flow's
            ``[evaluate] in_between_gauge`` (default off).
    """
    if bucket_rows < 1:
        raise ValueError(f"bucket_rows must be >= 1, got {bucket_rows}")
    idents = check_candidates(candidates)
    edges = tuple(int(e) for e in age_edges)
    splits = io.evaluated_splits(split_manifest)
    n_rows = sum(io.count_split_rows(split_manifest, s) for s in splits)
    n_buckets = max(1, math.ceil(n_rows / bucket_rows))
    sums = SliceSums(edges, (PROVIDER, TRUTH) if world is not None else (PROVIDER,))
    with ScratchDir("pythia-evaluate-", scratch_dir) as folder:  # locked: swept if we die
        scratch = folder.path
        print(f"evaluate: {n_rows} split rows and {len(candidates)} candidates' predictions "
              f"in {n_buckets} bucket(s) under {scratch}")
        rows_dirs = _stage_rows(split_manifest, splits, world, edges, n_buckets, scratch)
        pred_dirs = [_stage_predictions(c, i, scratch, n_buckets)
                     for i, c in enumerate(candidates)]
        try:  # what the run's train and validation rows say about the world's users
            between = in_between_of(world, split_manifest) if in_between else None
        except ValueError as exc:
            between, sums.in_between_note = None, f"in-between gauge skipped: {exc}"
        job = _Job(rows_dirs, split_manifest, edges, idents, pred_dirs,
                   (world, {"population": population_of(world), "in_between": between,
                            "region_blind": region_blind_of(world)}))
        n_workers = min(n_buckets, threads.thread_budget() if workers is None else workers)
        if n_workers <= 1:
            job.score(sums, range(n_buckets))
        else:  # worker w of n: buckets w, w + n, ...; merged in worker order (a fixed order)
            shares = [list(range(w, n_buckets, n_workers)) for w in range(n_workers)]
            for part in map_forked(lambda ids: job.score(SliceSums(edges, sums.sources), ids),
                                   shares, n_workers):
                sums.merge(part)
        for note in [sums.gauge_note] + [getattr(sums, f"{f}_note") for f in OTHER_FORMS]:
            if note:  # here, not in a worker: a forked worker's output may go nowhere
                print(note)
    metrics, distributions = tables_of(sums, idents, candidates, splits)
    return StreamScores(metrics, distributions, sums)


@dataclass
class _Job:
    """What scoring a bucket reads (pass 3), shared by the processes that score buckets."""

    rows_dirs: dict[str, str]
    split_manifest: Mapping[str, Any]
    edges: tuple[int, ...]
    idents: Sequence[Mapping]
    pred_dirs: Sequence[tuple[str, pa.Schema | None]]
    worlds: tuple

    def score(self, sums: SliceSums, bucket_ids: Sequence[int]) -> SliceSums:
        """Add these buckets to ``sums``; returns it."""
        for b in bucket_ids:
            frames = bucket_frames(self.rows_dirs, b, self.split_manifest, self.edges)
            score_bucket(sums, frames, self.idents, self.pred_dirs, b, self.worlds)
        return sums


# ---------------------------------------------------------------- passes 1 and 2: buckets

def _check_split_columns(split_manifest: Mapping, split: str, world: Any) -> None:
    names = io.split_schema(split_manifest, split).names
    absent = [c for c in FRAME_COLUMNS if c not in names]
    if absent:
        raise ValueError(f"split {split!r} lacks columns {absent}")
    if world is not None and USER_ID not in names:
        raise ValueError(f"split {split!r} lacks {USER_ID}, needed to join the truth")


def _stage_rows(split_manifest: Mapping, splits: Sequence[str], world: Any,
                edges: tuple[int, ...], n_buckets: int, scratch: str) -> dict[str, str]:
    """Split rows into impression-id buckets (with truth label columns on a world); returns
    split -> bucket folder."""
    out = {s: os.path.join(scratch, "rows", s) for s in splits}
    for split in splits:
        _check_split_columns(split_manifest, split, world)
    if world is None:
        # the metrics read the label, region and power-user columns only, and when the split
        # has them the held-out flags (OPTIONAL_FRAME_COLUMNS) and the user id (it clusters
        # the margins' SEs)
        for split in splits:
            names = io.split_schema(split_manifest, split).names
            extra = tuple(c for c in (USER_ID,) + OPTIONAL_FRAME_COLUMNS if c in names)
            buckets.partition(io.split_batches(split_manifest, split, FRAME_COLUMNS + extra),
                              IMPRESSION_ID, n_buckets, out[split])
        return out
    # a world's posterior reads columns of its own choosing, so every column is kept; the
    # truth joins on user id: both sides by user first, then the rows on by impression id
    truth_dir = os.path.join(scratch, "truth")
    _, truth_schema = buckets.partition(
        (pa.Table.from_pandas(t, preserve_index=False) for t in io.truth_batches(world)),
        USER_ID, n_buckets, truth_dir)
    for split in splits:
        by_user = os.path.join(scratch, "rows_by_user", split)
        buckets.partition(io.split_batches(split_manifest, split), USER_ID, n_buckets, by_user)
        with buckets.BucketWriter(out[split], n_buckets) as writer:
            for u in range(n_buckets):
                rows = buckets.read_bucket(by_user, u)
                if rows is None:
                    continue
                truth = buckets.read_bucket(truth_dir, u)
                truth = (truth if truth is not None else truth_schema.empty_table()).to_pandas()
                labels = truth_labels(rows.column(USER_ID).to_pandas(), truth, edges)
                for t in TARGETS:
                    rows = rows.append_column(TRUTH_COLUMN.format(t), pa.array(labels[t]))
                writer.write(rows, buckets.bucket_of(rows.column(IMPRESSION_ID), n_buckets))
        shutil.rmtree(by_user, ignore_errors=True)
    return out


def _stage_predictions(candidate: Mapping, i: int, scratch: str, n_buckets: int
                       ) -> tuple[str, pa.Schema | None]:
    """One candidate's predictions into impression-id buckets: (folder, schema)."""
    what = candidate_label(candidate["model"], candidate["region"],
                           int(candidate.get("config_id", 0) or 0))
    folder = os.path.join(scratch, "predictions", str(i))
    _, schema = buckets.partition(io.prediction_batches(candidate["predictions_uri"], what),
                                  IMPRESSION_ID, n_buckets, folder)
    return folder, schema
