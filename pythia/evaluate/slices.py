"""Pure slice metrics: split rows aligned with a scorer's probabilities, cut into slices
(test set x eval region) and scored per target and label source, plus the predicted and actual
class distributions. DataFrames and arrays in, DataFrames out; nothing here reads or writes.

Work is vectorised per slice; there is no Python loop over rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.metrics import log_loss

from pythia.config import GLOBAL_REGION
from pythia.evaluate.frames import (AGE_TARGET, JOINT_TARGET, PROVIDER, SplitFrame,
                                    attach_truth, prepare_frames)
from pythia.evaluate.metrics import (class_distribution, clip_probabilities, gauge_scores,
                                     score_predictions, total_variation_distance)
from pythia.features import (IMPRESSION_ID, SPLIT, TARGETS, TEST_NATURAL, TEST_RESAMPLED,
                             VALIDATION, class_labels)

BAYES_MODEL = "bayes"  # the exact posterior's rows in the metrics tables
# test sets: the natural test day, its resampled copy, the natural day without power users
# and with power users only (the two partition its rows), and its new users: those held out
# of train and validation (etl.holdout), whom no model saw (no rows on older runs)
NATURAL, RESAMPLED, NATURAL_NO_POWER_USERS = "natural", "resampled", "natural_no_power_users"
NATURAL_POWER_USERS, NATURAL_NEW_USERS = "natural_power_users", "natural_new_users"
TEST_SETS = (NATURAL, RESAMPLED, NATURAL_NO_POWER_USERS, NATURAL_POWER_USERS, NATURAL_NEW_USERS)
SPLIT_OF_TEST_SET = {VALIDATION: VALIDATION, NATURAL: TEST_NATURAL,
                     RESAMPLED: TEST_RESAMPLED, NATURAL_NO_POWER_USERS: TEST_NATURAL,
                     NATURAL_POWER_USERS: TEST_NATURAL, NATURAL_NEW_USERS: TEST_NATURAL}
# test set -> (the SplitFrame flag that selects its rows, the value they have); others: all rows
_ROWS_OF_TEST_SET = {NATURAL_NO_POWER_USERS: ("power", False),
                     NATURAL_POWER_USERS: ("power", True), NATURAL_NEW_USERS: ("held_out", True)}
METRIC_COLUMNS = ["model", "region", "config_id", "eval_region", "target", "test_set",
                  "label_source", "metric", "class", "value", "n"]
DIST_COLUMNS = ["model", "region", "config_id", "eval_region", "target", "test_set", "source",
                "class", "share", "n"]


@dataclass
class Aligned:
    """A scorer's probabilities aligned to a split: frame row positions and probabilities."""

    pos: np.ndarray
    probs: dict[str, np.ndarray]
    n_eligible: int

    @property
    def n_missing(self) -> int:
        return self.n_eligible - len(self.pos)


@dataclass
class EvalData:
    """The split rows every scorer is measured on, and the label distribution of each slice."""

    frames: dict[str, SplitFrame]
    edges: tuple[int, ...]
    present: list[str]  # regions with rows in some split, sorted
    actual: dict  # (test_set, eval_region, target, label source) -> label class shares
    actual_table: pd.DataFrame  # the same shares as distribution rows (model 'labels')

    @property
    def eval_regions(self) -> list[str]:
        return [GLOBAL_REGION] + self.present


# ---------------------------------------------------------------- split rows

def prepare_data(test_frames: Mapping[str, pd.DataFrame], edges: Sequence[int],
                 truth: pd.DataFrame | None = None) -> EvalData:
    """Index the split rows for scoring.

    Args:
        test_frames: split name (VALIDATION, TEST_NATURAL, TEST_RESAMPLED) -> its rows.
        edges: the run's age bucket edges.
        truth: true demographics per user (synthetic worlds), adding label source TRUTH.
    """
    edges = tuple(int(e) for e in edges)
    frames = prepare_frames(test_frames, edges)
    if truth is not None:
        attach_truth(frames, truth, edges)
    present = sorted(set().union(*(set(f.regions) for f in frames.values())))
    actual, table = _actual_distributions(frames, [GLOBAL_REGION] + present, edges)
    return EvalData(frames, edges, present, actual, table)


# ---------------------------------------------------------------- candidates and alignment

def candidate_label(model: str, candidate_region: str, config_id: object) -> str:
    """Human-readable candidate id, e.g. 'mlp/global#0'."""
    return f"{model}/{candidate_region}#{config_id}"


def candidate_ident(c: Mapping[str, Any]) -> dict[str, Any]:
    """{model, region, config_id} of a train-step record, which must name its predictions."""
    for key in ("model", "region", "predictions_uri"):
        if not c.get(key):
            raise ValueError(f"candidate {dict(c)!r} lacks {key!r}")
    return {"model": str(c["model"]), "region": str(c["region"]),
            "config_id": int(c.get("config_id", 0) or 0)}


def candidate_key(ident: Mapping[str, Any]) -> tuple[str, str, int]:
    return (ident["model"], ident["region"], int(ident["config_id"]))


def check_candidates(candidates: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The idents of the candidates, which must be distinct."""
    idents = [candidate_ident(c) for c in candidates]
    keys = [candidate_key(i) for i in idents]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate candidates (model, region, config_id): {keys}")
    return idents


def eval_regions_of(candidate_region: str, present: Sequence[str]) -> list[str]:
    """The regions a candidate is scored on: all of them for a global model, else its own."""
    return [GLOBAL_REGION] + list(present) if candidate_region == GLOBAL_REGION else [
        candidate_region]


def _list_column(table: pa.Table, name: str, k: int, what: str) -> np.ndarray:
    """A list<float> column of fixed length k -> (n, k) float32 array."""
    if name not in table.column_names:
        raise ValueError(f"{what}: predictions lack column {name!r}")
    col = table.column(name).combine_chunks()
    lengths = pc.list_value_length(col)
    if lengths.null_count or pc.any(pc.not_equal(lengths, k)).as_py():
        raise ValueError(f"{what}: every {name} must hold {k} probabilities")
    return pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, k)


def align(table: pa.Table, frame: SplitFrame, candidate_region: str, edges: Sequence[int],
          what: str) -> Aligned:
    """Match prediction rows to the split rows the candidate should score (by impression id).

    Duplicate impressions (resampling with replacement) share one prediction.
    """
    eligible = (np.arange(len(frame.df)) if candidate_region == GLOBAL_REGION
                else np.flatnonzero(frame.regions == candidate_region))
    for col in (IMPRESSION_ID, SPLIT):
        if col not in table.column_names:
            raise ValueError(f"{what}: predictions lack column {col!r}")
    split_col = table.column(SPLIT)
    if pa.types.is_dictionary(split_col.type):
        split_col = split_col.cast(pa.string())
    sub = table.filter(pc.equal(split_col, frame.split))
    ids = sub.column(IMPRESSION_ID).to_numpy(zero_copy_only=False).astype(str)
    _, first = np.unique(ids, return_index=True)
    index = pd.Index(ids[first])
    hit = index.get_indexer(frame.df[IMPRESSION_ID].astype(str).to_numpy()[eligible])
    found = hit >= 0
    rows = sub.take(pa.array(first[hit[found]], type=pa.int64()))
    probs = {t: _list_column(rows, f"p_{t}", len(class_labels(t, edges)),
                             f"{what} [{frame.split}]") for t in TARGETS}
    return Aligned(pos=eligible[found], probs=probs, n_eligible=len(eligible))


# ---------------------------------------------------------------- scoring

def test_set_rows(frame: SplitFrame, test_set: str, pos: np.ndarray | None = None
                  ) -> np.ndarray:
    """Which of the frame's rows (all, or those at ``pos``) belong to ``test_set``: a new
    boolean array, by the rows' power-user or held-out flags."""
    if test_set not in _ROWS_OF_TEST_SET:
        return np.ones(len(frame.df) if pos is None else len(pos), bool)
    flag, value = _ROWS_OF_TEST_SET[test_set]
    flags = getattr(frame, flag)
    return (flags if pos is None else flags[pos]) == value


def slice_masks(frame: SplitFrame, pos: np.ndarray, test_set: str, eval_regions: Sequence[str]
                ) -> list[tuple[str, np.ndarray]]:
    """(eval_region, boolean mask over pos) for every slice of a test set."""
    keep = test_set_rows(frame, test_set, pos)
    return [(r, keep if r == GLOBAL_REGION else keep & (frame.regions[pos] == r))
            for r in eval_regions]


def _n_expected(frame: SplitFrame, test_set: str, eval_region: str, candidate_region: str
                ) -> int:
    """Rows of a slice that a scorer of ``candidate_region`` is expected to cover."""
    keep = test_set_rows(frame, test_set)
    if eval_region != GLOBAL_REGION:
        keep = keep & (frame.regions == eval_region)
    if candidate_region != GLOBAL_REGION:
        keep = keep & (frame.regions == candidate_region)
    return int(keep.sum())


def score_candidate(ident: Mapping[str, Any], table: pa.Table, data: EvalData,
                    bayes: Mapping[str, Mapping] | None = None,
                    reported_val_logloss: float | None = None
                    ) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
    """Metric and predicted-distribution rows of one candidate's predictions, every slice.

    ``bayes`` (split -> exact posteriors, see gauge) adds the posterior's scores on the rows
    the candidate was scored on; ``reported_val_logloss`` is the train step's own figure.
    """
    what = candidate_label(ident["model"], ident["region"], ident["config_id"])
    metrics: list[pd.DataFrame] = []
    dists: list[pd.DataFrame] = []
    for test_set in (VALIDATION,) + TEST_SETS:
        frame = data.frames.get(SPLIT_OF_TEST_SET[test_set])
        if frame is None:
            continue
        aligned = align(table, frame, ident["region"], data.edges, what)
        m, d = score_slices(ident, frame, test_set, aligned,
                            {s: aligned.probs for s in frame.labels},
                            eval_regions_of(ident["region"], data.present), data.edges,
                            data.actual, (bayes or {}).get(frame.split))
        metrics += m
        dists += d
    if reported_val_logloss is not None:
        metrics.append(pd.DataFrame([dict(
            ident, eval_region=ident["region"], target=JOINT_TARGET, test_set=VALIDATION,
            label_source=PROVIDER, metric="reported_val_logloss",
            value=float(reported_val_logloss), n=np.nan)]))
    return metrics, dists


def score_slices(ident: Mapping[str, Any], frame: SplitFrame, test_set: str, aligned: Aligned,
                 probs_by_source: Mapping[str, Mapping[str, np.ndarray]],
                 eval_regions: Sequence[str], edges: Sequence[int], actual: Mapping,
                 reference: Mapping[str, Mapping[str, np.ndarray]] | None = None
                 ) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
    """Metrics and predicted-distribution rows of one scorer on one test set, every slice.

    ``probs_by_source`` maps label source -> {target: probabilities aligned to aligned.pos};
    a model has the same probabilities for every source, the Bayes gauge does not.
    ``reference`` (label source -> {target: exact posterior for every frame row}) adds the
    posterior's log-loss and macro F1 on exactly the rows the scorer was scored on.
    """
    metrics: list[pd.DataFrame] = []
    dists: list[pd.DataFrame] = []
    is_model = ident["model"] != BAYES_MODEL
    for region, mask in slice_masks(frame, aligned.pos, test_set, eval_regions):
        pos = aligned.pos[mask]
        n_expected = _n_expected(frame, test_set, region, ident["region"])
        if n_expected == 0:
            continue  # the region has no rows in this split
        base = dict(ident, eval_region=region, test_set=test_set)
        if is_model:
            metrics.append(pd.DataFrame([
                dict(base, target=None, label_source=None, metric="coverage",
                     value=len(pos) / n_expected, n=n_expected),
                dict(base, target=None, label_source=None, metric="n_missing_predictions",
                     value=float(n_expected - len(pos)), n=n_expected)]))
        if not len(pos):
            continue
        for target in TARGETS:
            names = class_labels(target, edges)
            for i, (source, probs) in enumerate(probs_by_source.items()):
                p = probs[target][mask]
                shares = class_distribution(p=p)
                if is_model and i == 0 and test_set != VALIDATION:
                    dists += [pd.DataFrame(dict(base, target=target, source=kind,
                                                **{"class": list(names)}, share=share,
                                                n=len(pos)))
                              for kind, share in shares.items()]
                if source not in frame.labels:
                    continue
                base_t = dict(base, target=target, label_source=source)
                metrics += _label_metrics(base_t, frame, pos, p, names, is_model,
                                          reference[source][target][pos]
                                          if reference is not None and source in reference
                                          else None)
                actual_shares = actual.get((test_set, region, target, source))
                if actual_shares is not None and test_set != VALIDATION:
                    metrics.append(pd.DataFrame([
                        dict(base_t, metric=f"tvd_{kind}", n=len(pos),
                             value=total_variation_distance(share, actual_shares))
                        for kind, share in shares.items()]))
    return metrics, dists


def _label_metrics(base: Mapping[str, Any], frame: SplitFrame, pos: np.ndarray, p: np.ndarray,
                   names: Sequence[str], is_model: bool, reference: np.ndarray | None
                   ) -> list[pd.DataFrame]:
    """Scores of probabilities ``p`` of one slice against one label source: the standard
    metrics, the natural-weighted log-loss (models, when the split has importance weights),
    the exact posterior's scores on the same rows (``reference``) and the unlabelled count."""
    out: list[pd.DataFrame] = []
    y_all = frame.labels[base["label_source"]][base["target"]][pos]
    valid = y_all >= 0
    n = int(valid.sum())
    scored = score_predictions(y_all[valid], p[valid], names,
                               ordinal=(base["target"] == AGE_TARGET))
    if len(scored):
        out.append(scored.assign(**base, n=n))
        if frame.weights is not None and is_model:
            out.append(pd.DataFrame([dict(
                base, metric="log_loss_natural", n=n,
                value=float(log_loss(y_all[valid], clip_probabilities(p[valid]),
                                     labels=np.arange(len(names)),
                                     sample_weight=frame.weights[pos][valid])))]))
        if reference is not None:
            ref_ll, ref_f1 = gauge_scores(y_all[valid], reference[valid])
            out.append(pd.DataFrame([dict(base, metric=name, value=value, n=n)
                                     for name, value in (("bayes_log_loss", ref_ll),
                                                         ("bayes_macro_f1", ref_f1))]))
    out.append(pd.DataFrame([dict(base, metric="n_unlabelled", value=float((~valid).sum()),
                                  n=len(pos))]))
    return out


# ---------------------------------------------------------------- distributions and tables

def _actual_distributions(frames: Mapping[str, SplitFrame], eval_regions: Sequence[str],
                          edges: Sequence[int]) -> tuple[dict, pd.DataFrame]:
    """Label distributions per (test_set, eval_region, target, source), as dict and table."""
    actual: dict = {}
    rows = []
    for test_set in TEST_SETS:
        frame = frames.get(SPLIT_OF_TEST_SET[test_set])
        if frame is None:
            continue
        all_pos = np.arange(len(frame.df))
        for region, mask in slice_masks(frame, all_pos, test_set, eval_regions):
            for target in TARGETS:
                names = class_labels(target, edges)
                for source, labels in frame.labels.items():
                    y = labels[target][mask]
                    y = y[y >= 0]
                    if not len(y):
                        continue
                    share = class_distribution(y=y, n_classes=len(names))["labels"]
                    actual[(test_set, region, target, source)] = share
                    rows.append(pd.DataFrame({
                        "model": "labels", "region": None, "config_id": pd.NA,
                        "eval_region": region, "target": target, "test_set": test_set,
                        "source": f"{source}_labels", "class": list(names), "share": share,
                        "n": len(y)}))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=DIST_COLUMNS)
    return actual, table


def metrics_table(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The long metrics table (METRIC_COLUMNS) from per-slice parts."""
    metrics = pd.concat([p for p in parts if len(p)], ignore_index=True)
    return metrics[METRIC_COLUMNS].astype({"config_id": "Int64", "value": float})


def distributions_table(parts: Sequence[pd.DataFrame], metrics: pd.DataFrame) -> pd.DataFrame:
    """Predicted and actual class shares, with tvd_provider / tvd_truth on predicted rows."""
    dists = pd.concat([p for p in parts if len(p)], ignore_index=True)
    tv = metrics[metrics["metric"].str.startswith("tvd_")]
    if tv.empty:
        return dists.astype({"config_id": "Int64"})
    tv = tv.assign(source=tv["metric"].str.slice(4),
                   col="tvd_" + tv["label_source"].astype(str))
    keys = ["model", "region", "config_id", "eval_region", "target", "test_set", "source"]
    wide = unstack_observed(tv, keys, "col", "value")
    return dists.astype({"config_id": "Int64"}).merge(wide, on=keys, how="left")


def unstack_observed(df: pd.DataFrame, index: list[str], columns: str, values: str
                     ) -> pd.DataFrame:
    """Long -> wide on observed key combinations only (pivot_table(dropna=False) would build
    their Cartesian product; dropna=True would drop the Bayes rows whose config_id is NA)."""
    wide = df.set_index(index + [columns])[values].unstack(columns).reset_index()
    wide.columns.name = None
    return wide
