"""Streaming evaluation: every candidate and the exact posterior scored on every slice with
memory bounded by one bucket of rows, whatever the size of the splits.

Three passes over scratch files on local disk (``pythia.scratch``: removed at the end, or
by a later task's sweep when this one is killed):
  1. the split rows go to K buckets by a hash of the impression id — on a synthetic world
     first by the user id, to join the truth bucket by bucket, then on by impression id;
  2. each candidate's predictions go to the same K buckets;
  3. bucket by bucket: the rows become SplitFrames, each candidate's predictions are aligned
     to them (``slices.align``), the exact posterior is computed (``gauge.posterior_probs``),
     and everything is added to per-slice sufficient statistics (``stats``), and per user
     group (``margins``: the paired SEs) on the validation and natural test days.
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

import hashlib
import math
import os
import shutil
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from pythia import buckets, threads
from pythia.config import GLOBAL_REGION
from pythia.evaluate import io
from pythia.evaluate.forked import map_forked
from pythia.evaluate.frames import (FRAME_COLUMNS, JOINT_TARGET, OPTIONAL_FRAME_COLUMNS,
                                    PROVIDER, TRUTH, WEIGHT_COLUMN, SplitFrame, split_frame,
                                    truth_labels)
from pythia.evaluate.gauge import (in_between_of, population_of, posterior_probs,
                                   region_blind_of)
from pythia.evaluate.margins import OTHER_PART, POWER_PART, TEST_PARTS, user_groups
from pythia.evaluate.slices import (NATURAL, SPLIT_OF_TEST_SET, TEST_SETS, test_set_rows,
                                    Aligned, align, candidate_key, candidate_label,
                                    check_candidates, eval_regions_of, slice_masks)
from pythia.evaluate.stats import OTHER_FORMS
from pythia.evaluate.sums import BAYES_KEY, SliceSums, tables_of
from pythia.features import (IMPRESSION_ID, SPLIT, TARGETS, USER_ID, VALIDATION, Y_AGE_GENDER,
                             class_labels)
from pythia.scratch import ScratchDir

DEFAULT_BUCKET_ROWS = 100_000  # split rows per bucket: bounds evaluate's working set
ALL_TEST_SETS = (VALIDATION,) + TEST_SETS
_TRUTH_COLUMN = "__truth_{}"  # truth labels carried from the user-id pass to the scoring pass


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
            frames = _bucket_frames(self.rows_dirs, b, self.split_manifest, self.edges)
            _score_bucket(sums, frames, self.idents, self.pred_dirs, b, self.worlds)
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
                    rows = rows.append_column(_TRUTH_COLUMN.format(t), pa.array(labels[t]))
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


# ---------------------------------------------------------------- pass 3: score a bucket

def _bucket_frames(rows_dirs: Mapping[str, str], b: int, split_manifest: Mapping,
                   edges: tuple[int, ...]) -> dict[str, SplitFrame]:
    """One bucket's rows of every split as SplitFrames (truth labels when staged)."""
    frames = {}
    for split, folder in rows_dirs.items():
        table = buckets.read_bucket(folder, b)
        if table is None:
            continue
        truth_cols = [_TRUTH_COLUMN.format(t) for t in TARGETS]
        has_truth = truth_cols[0] in table.column_names
        df = table.drop_columns(truth_cols).to_pandas() if has_truth else table.to_pandas()
        if split == VALIDATION:
            df[WEIGHT_COLUMN] = io.importance_weights(df[Y_AGE_GENDER].to_numpy(),
                                                      split_manifest, split, len(edges))
        frame = split_frame(split, df, edges)
        if has_truth:
            frame.labels[TRUTH] = {t: table.column(c).to_numpy().astype(np.int64)
                                   for t, c in zip(TARGETS, truth_cols)}
        frames[split] = frame
    return frames


def _count_rows(sums: SliceSums, frames: Mapping[str, SplitFrame]) -> list[str]:
    """Add the bucket's slice sizes and label counts; returns its regions, sorted."""
    regions = sorted(set().union(*(set(f.regions) for f in frames.values())))
    sums.regions.update(regions)
    for test_set in ALL_TEST_SETS:
        frame = frames.get(SPLIT_OF_TEST_SET[test_set])
        if frame is None:
            continue
        keep = test_set_rows(frame, test_set)
        for region in [GLOBAL_REGION] + regions:
            mask = keep if region == GLOBAL_REGION else keep & (frame.regions == region)
            sums.rows[(test_set, region)] += int(mask.sum())
            if test_set == VALIDATION:
                continue
            for target in TARGETS:
                k = len(class_labels(target, sums.edges))
                for source, labels in frame.labels.items():
                    y = labels[target][mask]
                    key = (test_set, region, target, source)
                    sums.actual[key] = sums.actual.get(key, 0) + np.bincount(
                        y[y >= 0], minlength=k)
    return regions


def _bucket_posteriors(sums: SliceSums, frames: Mapping[str, SplitFrame], worlds: tuple
                       ) -> tuple[dict[str, dict], dict[str, dict[str, dict]]]:
    """The exact (realised) posterior on the bucket's test rows and each other form's of the
    world (population, in-between, region-blind); {} without a world, or once one failed to
    give it: that gauge is skipped for the run, with a note (all, when the realised failed)."""
    world, forms = worlds
    if world is None or sums.gauge_note:
        return {}, {}
    splits = sorted({SPLIT_OF_TEST_SET[t] for t in TEST_SETS} & set(frames))
    try:
        out = {s: posterior_probs(world, frames[s], len(sums.edges)) for s in splits}
    except ValueError as exc:
        sums.gauge_note = f"Bayes gauge skipped: {exc}"  # printed once scored
        return {}, {}
    for posterior in out.values():
        sums.bayes_sources = tuple(posterior)
    sums.bayes_splits.update(out)
    extra: dict[str, dict] = {}
    for kind, form in forms.items():
        if form is None or getattr(sums, f"{kind}_note"):
            continue
        try:
            extra[kind] = {s: posterior_probs(form, frames[s], len(sums.edges)) for s in splits}
        except ValueError as exc:  # printed once scored
            setattr(sums, f"{kind}_note", f"{kind.replace('_', '-')} gauge skipped: {exc}")
    return out, extra


def _score_bucket(sums: SliceSums, frames: Mapping[str, SplitFrame], idents: Sequence[Mapping],
                  pred_dirs: Sequence[tuple[str, pa.Schema | None]], b: int, worlds: tuple
                  ) -> None:
    """Add one bucket: slice sizes, the posteriors' (all forms) and candidates' scores."""
    if not frames:
        return
    regions = _count_rows(sums, frames)
    bayes, extra = _bucket_posteriors(sums, frames, worlds)
    # the rows' user groups cluster the SEs: validation's (the champion rule, the guard), the
    # natural test day's (the regional-vs-global table's test margins, the gauge's ratios)
    groups = {name: user_groups(f.df[USER_ID]) for name, f in frames.items()
              if name in (VALIDATION, SPLIT_OF_TEST_SET[NATURAL]) and USER_ID in f.df.columns}
    ref_cache: dict = {}  # the posterior's sums per (slice, rows), shared by the candidates
    for test_set in TEST_SETS:
        frame = frames.get(SPLIT_OF_TEST_SET[test_set])
        if frame is None or frame.split not in bayes:
            continue
        everything = Aligned(np.arange(len(frame.df)), {}, len(frame.df))
        _add_slices(sums, BAYES_KEY, frame, test_set, everything, bayes[frame.split],
                    [GLOBAL_REGION] + regions, None,
                    extras={k: v.get(frame.split) for k, v in extra.items()})
    for ident, (folder, schema) in zip(idents, pred_dirs):
        key = candidate_key(ident)
        what = candidate_label(*key)
        table = buckets.read_bucket(folder, b)
        if table is None:
            table = (schema or pa.schema([(IMPRESSION_ID, pa.string()),
                                          (SPLIT, pa.string())])).empty_table()
        aligned: dict[str, Aligned] = {}
        for test_set in ALL_TEST_SETS:
            frame = frames.get(SPLIT_OF_TEST_SET[test_set])
            if frame is None:
                continue
            if frame.split not in aligned:
                aligned[frame.split] = align(table, frame, ident["region"], sums.edges, what)
            a = aligned[frame.split]
            _add_slices(sums, key, frame, test_set, a, {s: a.probs for s in frame.labels},
                        eval_regions_of(ident["region"], regions), bayes.get(frame.split),
                        ref_cache, groups.get(frame.split)
                        if test_set == VALIDATION or test_set in TEST_PARTS else None,
                        extras={k: v.get(frame.split) for k, v in extra.items()})


def _add_slices(sums: SliceSums, key: tuple, frame: SplitFrame, test_set: str,
                aligned: Aligned, probs_by_source: Mapping[str, Mapping[str, np.ndarray]],
                eval_regions: Sequence[str], reference: Mapping | None,
                ref_cache: dict | None = None, groups: np.ndarray | None = None, *,
                extras: Mapping[str, Mapping | None] | None = None) -> None:
    """Add one scorer's rows of one test set to every slice (``slices.score_slices``' cuts).
    ``reference``: the realised posterior per label source; ``extras``: the other forms'
    (``OTHER_FORMS``; {form: per label source}).
    ``ref_cache`` holds the posteriors' sums per (slice, rows) of this bucket: every candidate
    that covers the same rows shares them instead of scoring the posteriors again. ``groups``
    (the frame rows' user groups) adds the paired margins' sums: on validation the whole slice
    and its power-user and other rows (the champion rule's, the regional guard's); on the
    natural test day's slices part ``TEST_PARTS[test_set]``, and per target the posteriors'
    sums on the same rows (``SliceSums.add_gauge_groups``: the gauge's ratio SEs)."""
    ref_cache = {} if ref_cache is None else ref_cache
    extras = extras or {}
    is_model = key != BAYES_KEY
    for region, mask in slice_masks(frame, aligned.pos, test_set, eval_regions):
        pos = aligned.pos[mask]
        sums.found[(key, test_set, region)] += len(pos)
        if not len(pos):
            continue
        rows_key = ((test_set, region, len(pos),
                     hashlib.blake2b(pos.tobytes(), digest_size=16).digest())
                    if reference is not None or any(v is not None for v in extras.values())
                    else None)  # names these rows in ref_cache
        for target in TARGETS:
            for i, (source, probs) in enumerate(probs_by_source.items()):
                if not is_model or i == 0:  # a model's probabilities (so its shares) are the
                    p = probs[target][mask]  # same for every source: cut and added once
                    sums.shares_of((key, test_set, region, target,
                                  None if is_model else source)).add(p)
                if source not in frame.labels:
                    continue
                stats = sums.label_of((key, test_set, region, target, source))
                y = frame.labels[source][target][pos]
                refs = {}
                for kind, posteriors in (("realised", reference), *extras.items()):
                    ref = posteriors.get(source) if posteriors is not None else None
                    if ref is not None:  # the posterior's sums on these rows: once per bucket
                        ref_key = (rows_key, target, source, kind)
                        if ref_key not in ref_cache:
                            ref_cache[ref_key] = stats.reference_batch(y, ref[target][pos])
                        ref = ref_cache[ref_key]
                    refs[kind] = ref
                w = frame.weights[pos] if is_model and frame.weights is not None else None
                stats.add(y, p, w, refs["realised"],
                          **{form: refs.get(form) for form in OTHER_FORMS})
                if groups is not None and source == PROVIDER and test_set in TEST_PARTS:
                    part = (key, region, TEST_PARTS[test_set])  # the test day: a part per set
                    sums.add_gauge_groups(part, target, groups[pos], y, p, pos, {
                        f: (r or {}).get(source) for f, r in (("realised", reference),
                                                              *extras.items())},
                        ref_cache, rows_key)
                    if target == JOINT_TARGET:  # the regional-vs-global test margins
                        sums.groups_of(part).add(groups[pos], y, p, w)
                elif groups is not None and target == JOINT_TARGET and source == PROVIDER:
                    sums.groups_of((key, region)).add(groups[pos], y, p, w)
                    power = frame.power[pos]
                    for part, rows in ((POWER_PART, power), (OTHER_PART, ~power)):
                        sums.groups_of((key, region, part)).add(
                            groups[pos][rows], y[rows], p[rows], None if w is None else w[rows])
