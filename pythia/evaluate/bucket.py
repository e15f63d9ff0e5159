"""Pass 3 of the streamed evaluation (``stream``): one bucket of split rows scored.

The bucket's rows become SplitFrames (``bucket_frames``; truth labels when pass 1 staged
them), each candidate's predictions are aligned to them (``slices.align``), the exact
posterior and the world's other forms are computed on them (``gauge.posterior_probs``), and
everything is added to per-slice sufficient statistics (``stats``), and per user group
(``margins``: the paired SEs and the gauge's ratio SEs) on the validation and natural test
days (``score_bucket``). Every process that scores buckets runs this on its share.
"""
from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa

from pythia import buckets
from pythia.config import GLOBAL_REGION
from pythia.evaluate import io
from pythia.evaluate.frames import (JOINT_TARGET, PROVIDER, TRUTH, WEIGHT_COLUMN, SplitFrame,
                                    split_frame)
from pythia.evaluate.gauge import posterior_probs
from pythia.evaluate.margins import OTHER_PART, POWER_PART, TEST_PARTS, user_groups
from pythia.evaluate.slices import (NATURAL, SPLIT_OF_TEST_SET, TEST_SETS, test_set_rows,
                                    Aligned, align, candidate_key, candidate_label,
                                    eval_regions_of, slice_masks)
from pythia.evaluate.stats import OTHER_FORMS
from pythia.evaluate.sums import BAYES_KEY, SliceSums
from pythia.features import (IMPRESSION_ID, SPLIT, TARGETS, USER_ID, VALIDATION, Y_AGE_GENDER,
                             class_labels)

ALL_TEST_SETS = (VALIDATION,) + TEST_SETS
TRUTH_COLUMN = "__truth_{}"  # truth labels carried from the user-id pass to the scoring pass

def bucket_frames(rows_dirs: Mapping[str, str], b: int, split_manifest: Mapping,
                   edges: tuple[int, ...]) -> dict[str, SplitFrame]:
    """One bucket's rows of every split as SplitFrames (truth labels when staged)."""
    frames = {}
    for split, folder in rows_dirs.items():
        table = buckets.read_bucket(folder, b)
        if table is None:
            continue
        truth_cols = [TRUTH_COLUMN.format(t) for t in TARGETS]
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


def score_bucket(sums: SliceSums, frames: Mapping[str, SplitFrame], idents: Sequence[Mapping],
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
