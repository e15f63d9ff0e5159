"""What streaming evaluation keeps between buckets — slice sizes, label counts and per-slice
sufficient statistics, never rows — and the metric and distribution tables built from them
alone, with the rows and row order of the in-memory path (``slices.score_candidate`` and
``gauge.score_posterior``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from pythia.config import GLOBAL_REGION
from pythia.evaluate.frames import AGE_TARGET, JOINT_TARGET
from pythia.evaluate.margins import GAUGE_FORMS, GroupSums
from pythia.evaluate.metrics import total_variation_distance
from pythia.evaluate.slices import (BAYES_MODEL, DIST_COLUMNS, METRIC_COLUMNS,
                                    SPLIT_OF_TEST_SET, TEST_SETS, candidate_key,
                                    distributions_table, eval_regions_of, metrics_table)
from pythia.evaluate.stats import OTHER_FORMS, LabelStats, ShareStats
from pythia.features import TARGETS, VALIDATION, class_labels

BAYES_KEY = (BAYES_MODEL, GLOBAL_REGION, None)  # the exact posterior, as a scorer


@dataclass
class SliceSums:
    """Counts and statistics per slice; a scorer is keyed (model, region, config_id)."""

    edges: tuple[int, ...]
    sources: tuple[str, ...]  # label sources of the split rows: provider (+ truth on a world)
    rows: Counter = field(default_factory=Counter)  # (test_set, eval_region) -> slice rows
    found: Counter = field(default_factory=Counter)  # (scorer, test_set, region) -> covered
    labels: dict = field(default_factory=dict)  # (scorer, test_set, region, target, source)
    shares: dict = field(default_factory=dict)  # (scorer, test_set, region, target, source|None)
    actual: dict = field(default_factory=dict)  # (test_set, region, target, source) -> counts
    regions: set = field(default_factory=set)
    bayes_sources: tuple[str, ...] = ()  # label sources of the posterior, in its order
    bayes_splits: set = field(default_factory=set)
    gauge_note: str | None = None  # set when the world could not give the posterior
    population_note: str | None = None  # set when it could not give the population one
    in_between_note: str | None = None  # and the in-between one
    region_blind_note: str | None = None  # and the region-blind one
    # (scorer, eval region) -> validation sums per user group (the champion rule's margins);
    # (scorer, eval region, POWER_PART or OTHER_PART): the same on power users / the others;
    # the natural test day's parts: ``add_gauge_groups`` (and the joint target's model sums
    # under (scorer, eval region, part): the regional-vs-global test margins)
    groups: dict = field(default_factory=dict)

    @property
    def present(self) -> list[str]:
        """Regions with rows in some split, sorted."""
        return sorted(self.regions)

    def label_stats(self, key: tuple, test_set: str, region: str, target: str, source: str
                    ) -> LabelStats | None:
        """One scorer's statistics on one slice against one label source (None if unscored)."""
        return self.labels.get((key, test_set, region, target, source))

    def label_of(self, key: tuple) -> LabelStats:
        """The LabelStats of (scorer, test_set, region, target, source), created empty."""
        if key not in self.labels:
            target = key[3]
            self.labels[key] = LabelStats(len(class_labels(target, self.edges)),
                                          ordinal=target == AGE_TARGET)
        return self.labels[key]

    def groups_of(self, key: tuple) -> GroupSums:
        """The GroupSums of (scorer, eval region), created empty."""
        if key not in self.groups:
            self.groups[key] = GroupSums()
        return self.groups[key]

    def add_gauge_groups(self, part: tuple, target: str, groups: np.ndarray, y: np.ndarray,
                         p: np.ndarray, pos: np.ndarray, posteriors: Mapping[str, Mapping | None],
                         cache: dict, rows_key: Any) -> None:
        """A model's sums per user group on a test-day part (scorer, region, part) and
        ``target``, and each gauge form's (``GAUGE_FORMS``; ``posteriors``: form -> target ->
        probabilities of the frame's rows, ``pos`` the model's) on the same rows, keyed
        part + ("model" or form, target): ``gauge.build_gauge``'s ratio SEs. A form's sums
        on rows ``rows_key`` are computed once into ``cache`` (the bucket's; test rows carry
        no weights) and added to every candidate that scored those rows. Nothing without a
        posterior (real data): there is no ratio to give an SE."""
        if all(posteriors.get(form) is None for form in GAUGE_FORMS):
            return
        self.groups_of(part + ("model", target)).add(groups, y, p, None)
        for form in GAUGE_FORMS:
            ref = posteriors.get(form)
            if ref is None:
                continue
            batch = cache.get((rows_key, target, form, "groups"))
            if batch is None:
                batch = cache[(rows_key, target, form, "groups")] = GroupSums()
                batch.add(groups, y, ref[target][pos], None)
            self.groups_of(part + (form, target)).merge(batch)

    def merge(self, other: "SliceSums") -> None:
        """Add the sums of other buckets (another process's, ``stream``), as adding those
        buckets here would, up to the order of the float additions."""
        self.rows.update(other.rows)  # Counter.update adds
        self.found.update(other.found)
        for mine, theirs in ((self.labels, other.labels), (self.shares, other.shares),
                             (self.groups, other.groups)):
            for key, stats in theirs.items():
                if key in mine:
                    mine[key].merge(stats)
                else:
                    mine[key] = stats
        for key, counts in other.actual.items():
            self.actual[key] = self.actual.get(key, 0) + counts
        self.regions |= other.regions
        self.bayes_splits |= other.bayes_splits
        self.bayes_sources = self.bayes_sources or other.bayes_sources
        self.gauge_note = self.gauge_note or other.gauge_note
        for form in OTHER_FORMS:
            note = f"{form}_note"
            setattr(self, note, getattr(self, note) or getattr(other, note))

    def shares_of(self, key: tuple) -> ShareStats:
        """The ShareStats of (scorer, test_set, region, target, source or None), created."""
        if key not in self.shares:
            self.shares[key] = ShareStats(len(class_labels(key[3], self.edges)))
        return self.shares[key]


def tables_of(sums: SliceSums, idents: Sequence[Mapping[str, Any]],
              candidates: Sequence[Mapping[str, Any]], splits: Sequence[str]
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The long metrics table and the distributions table (``metrics_table`` and
    ``distributions_table`` of the in-memory path) from the sums."""
    metric_rows: list[dict] = []
    dist_rows: list[dict] = []
    for ident, cand in zip(idents, candidates):
        _candidate_rows(sums, ident, (cand.get("val_logloss") or {}).get(JOINT_TARGET), splits,
                        metric_rows, dist_rows)
    _posterior_rows(sums, metric_rows)
    metrics = metrics_table([pd.DataFrame(metric_rows, columns=METRIC_COLUMNS)])
    dists = pd.DataFrame(dist_rows, columns=DIST_COLUMNS)
    return metrics, distributions_table([_actual_table(sums), dists], metrics)


def _candidate_rows(sums: SliceSums, ident: Mapping[str, Any], reported: float | None,
                    splits: Sequence[str], metrics: list[dict], dists: list[dict]) -> None:
    key = candidate_key(ident)
    for test_set in (VALIDATION,) + TEST_SETS:
        if SPLIT_OF_TEST_SET[test_set] not in splits:
            continue
        for region in eval_regions_of(ident["region"], sums.present):
            n_expected = sums.rows[(test_set, region)]
            if n_expected == 0:
                continue  # the region has no rows in this split
            base = dict(ident, eval_region=region, test_set=test_set)
            n_found = sums.found[(key, test_set, region)]
            metrics += [
                dict(base, target=None, label_source=None, metric="coverage",
                     value=n_found / n_expected, n=n_expected),
                dict(base, target=None, label_source=None, metric="n_missing_predictions",
                     value=float(n_expected - n_found), n=n_expected)]
            if n_found:
                _slice_rows(sums, key, base, n_found, sums.sources, metrics, dists)
    if reported is not None:
        metrics.append(dict(ident, eval_region=ident["region"], target=JOINT_TARGET,
                            test_set=VALIDATION, label_source="provider",
                            metric="reported_val_logloss", value=float(reported), n=np.nan))


def _posterior_rows(sums: SliceSums, metrics: list[dict]) -> None:
    """The exact posterior's own rows on every slice (``gauge.score_posterior``)."""
    if sums.gauge_note:
        return
    ident = {"model": BAYES_MODEL, "region": GLOBAL_REGION, "config_id": pd.NA}
    for test_set in TEST_SETS:
        if SPLIT_OF_TEST_SET[test_set] not in sums.bayes_splits:
            continue
        for region in [GLOBAL_REGION] + sums.present:
            n_found = sums.found[(BAYES_KEY, test_set, region)]
            if sums.rows[(test_set, region)] == 0 or not n_found:
                continue
            _slice_rows(sums, BAYES_KEY, dict(ident, eval_region=region, test_set=test_set),
                        n_found, sums.bayes_sources, metrics, [])


def _slice_rows(sums: SliceSums, key: tuple, base: Mapping[str, Any], n_found: int,
                sources: Sequence[str], metrics: list[dict], dists: list[dict]) -> None:
    """Rows of one scorer on one slice: per target and label source, the scores, the
    unlabelled count and the distance of its predicted shares to the labels' shares."""
    is_model = key != BAYES_KEY
    test_set, region = base["test_set"], base["eval_region"]
    for target in TARGETS:
        names = class_labels(target, sums.edges)
        for i, source in enumerate(sources):
            shares = sums.shares[(key, test_set, region, target,
                                  None if is_model else source)].shares()
            if is_model and i == 0 and test_set != VALIDATION:
                dists += [dict(base, target=target, source=kind, **{"class": name},
                               share=float(share[j]), n=n_found)
                          for kind, share in shares.items() for j, name in enumerate(names)]
            if source not in sums.sources:
                continue
            base_t = dict(base, target=target, label_source=source)
            stats = sums.labels[(key, test_set, region, target, source)]
            metrics += _label_rows(sums, base_t, stats, names, is_model)
            metrics.append(dict(base_t, metric="n_unlabelled", **{"class": None},
                                value=float(stats.n_unlabelled), n=n_found))
            counts = sums.actual.get((test_set, region, target, source))
            if test_set != VALIDATION and counts is not None and counts.sum() > 0:
                actual = counts / counts.sum()
                metrics += [dict(base_t, metric=f"tvd_{kind}", n=n_found,
                                 value=total_variation_distance(share, actual))
                            for kind, share in shares.items()]


def _label_rows(sums: SliceSums, base: Mapping[str, Any], stats: LabelStats,
                names: Sequence[str], is_model: bool) -> list[dict]:
    """The scores of one slice against one label source (``slices._label_metrics``)."""
    n = stats.n
    if n == 0:
        return []
    out = [dict(base, metric=m, **{"class": c}, value=v, n=n)
           for m, c, v in stats.metric_rows(names).itertuples(index=False)]
    natural = stats.natural_log_loss()
    if is_model and natural is not None:
        out.append(dict(base, metric="log_loss_natural", n=n, value=natural))
    if stats.reference is not None and sums.gauge_note is None:
        ref_ll, ref_f1 = stats.reference.scores(n)
        out += [dict(base, metric="bayes_log_loss", value=ref_ll, n=n),
                dict(base, metric="bayes_macro_f1", value=ref_f1, n=n)]
        for kind in OTHER_FORMS:
            extra = getattr(stats, kind)
            if extra is not None and getattr(sums, f"{kind}_note") is None:
                ll, f1 = extra.scores(n)
                out += [dict(base, metric=f"{kind}_log_loss", value=ll, n=n),
                        dict(base, metric=f"{kind}_macro_f1", value=f1, n=n)]
    return out


def _actual_table(sums: SliceSums) -> pd.DataFrame:
    """The label shares of every test-set slice as distribution rows (model 'labels')."""
    rows = []
    for test_set in TEST_SETS:
        for region in [GLOBAL_REGION] + sums.present:
            for target in TARGETS:
                names = class_labels(target, sums.edges)
                for source in sums.sources:
                    counts = sums.actual.get((test_set, region, target, source))
                    if counts is None or counts.sum() == 0:
                        continue
                    n = int(counts.sum())
                    rows += [{"model": "labels", "region": None, "config_id": pd.NA,
                              "eval_region": region, "target": target, "test_set": test_set,
                              "source": f"{source}_labels", "class": name,
                              "share": counts[j] / n, "n": n} for j, name in enumerate(names)]
    return pd.DataFrame(rows, columns=DIST_COLUMNS)
