"""The evaluated split rows as label arrays: per split, each row's class index per target and
label source (the provider's label, and the world's truth on synthetic data), its region, the
power-user and held-out-user flags and importance weights. Pure: DataFrames in, arrays out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from pythia.features import (AGE_BUCKET, GENDER, GENDER_CLASSES, IMPRESSION_ID, IS_POWER_USER,
                             LABEL_COLUMNS, REGION, TARGETS, TEST_NATURAL, TEST_RESAMPLED,
                             USER_HELD_OUT, USER_ID, VALIDATION, age_to_bucket, class_labels)

# target names as features.TARGETS spells them; the joint one decides champions
GENDER_TARGET, AGE_TARGET, JOINT_TARGET = TARGETS
PROVIDER, TRUTH = "provider", "truth"  # label sources
LABEL_SOURCES = (PROVIDER, TRUTH)
EVAL_SPLITS = (VALIDATION, TEST_NATURAL, TEST_RESAMPLED)
REQUIRED_SPLITS = (VALIDATION, TEST_NATURAL)
FRAME_COLUMNS = (IMPRESSION_ID, REGION, IS_POWER_USER) + tuple(LABEL_COLUMNS.values())
# read when a split has them: older runs' splits lack the held-out flag (then all False)
OPTIONAL_FRAME_COLUMNS = (USER_HELD_OUT,)
WEIGHT_COLUMN = "importance_weight"
TRUTH_AGE = "age"  # the synthetic world's truth gives ages in years


@dataclass
class SplitFrame:
    """One split's rows with label indices per source (-1 where a label is missing)."""

    split: str
    df: pd.DataFrame
    regions: np.ndarray
    power: np.ndarray
    held_out: np.ndarray  # the row's user was held out of train: validation's (etl.holdout)
    labels: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # importance weights that undo class resampling (1 / keep-rate of the row's class), when
    # the caller provides them: the validation day is resampled like train, but candidates are
    # compared on natural-prior probabilities, so their log-loss must be natural-weighted
    weights: np.ndarray | None = None


def _label_indices(values: pd.Series, n_classes: int, what: str) -> np.ndarray:
    """Label column -> int64 with -1 for missing; out-of-range values are a bug, so raise."""
    y = pd.to_numeric(values, errors="raise").astype("float64").to_numpy()
    out = np.where(np.isnan(y), -1, y).astype(np.int64)
    bad = (out < -1) | (out >= n_classes)
    if bad.any():
        raise ValueError(f"{what}: {int(bad.sum())} labels outside [0, {n_classes}) "
                         f"(e.g. {out[bad][0]}); do the age edges match the ETL's?")
    return out


def _flags(df: pd.DataFrame, column: str) -> np.ndarray:
    """A bool column as a bool array, nulls False."""
    return df[column].fillna(False).astype(bool).to_numpy()


def split_frame(split: str, df: pd.DataFrame, edges: Sequence[int]) -> SplitFrame:
    """One split's rows (all of them, or one bucket of them) as a SplitFrame with provider
    label indices; importance weights come from the WEIGHT_COLUMN when the rows have one, the
    held-out flags from USER_HELD_OUT (all False without it: a run from before the holdout)."""
    absent = [c for c in FRAME_COLUMNS if c not in df.columns]
    if absent:
        raise ValueError(f"split {split!r} lacks columns {absent}")
    df = df.reset_index(drop=True)
    labels = {t: _label_indices(df[LABEL_COLUMNS[t]], len(class_labels(t, edges)),
                                f"{split}.{LABEL_COLUMNS[t]}") for t in TARGETS}
    return SplitFrame(split=split, df=df,
                      regions=df[REGION].astype(str).to_numpy(dtype=object),
                      power=_flags(df, IS_POWER_USER),
                      held_out=(_flags(df, USER_HELD_OUT) if USER_HELD_OUT in df.columns
                                else np.zeros(len(df), bool)),
                      labels={PROVIDER: labels},
                      weights=(df[WEIGHT_COLUMN].astype("float64").to_numpy()
                               if WEIGHT_COLUMN in df.columns else None))


def prepare_frames(test_frames: Mapping[str, pd.DataFrame], edges: Sequence[int]
                   ) -> dict[str, SplitFrame]:
    """Split name -> SplitFrame with provider label indices, for the evaluated splits."""
    missing = [s for s in REQUIRED_SPLITS if test_frames.get(s) is None]
    if missing:
        raise ValueError(f"test_frames lacks split(s) {missing}; got {sorted(test_frames)}")
    return {split: split_frame(split, df, edges) for split, df in test_frames.items()
            if df is not None and split in EVAL_SPLITS}


def truth_labels(user_ids: pd.Series, truth: pd.DataFrame, edges: Sequence[int]
                 ) -> dict[str, np.ndarray]:
    """Each row's true class index per target (-1 where the user has no truth), from the
    world's true demographics joined on user id (the first row of a duplicated user wins)."""
    need = [c for c in (USER_ID, GENDER, TRUTH_AGE) if c not in truth.columns]
    if need:
        raise ValueError(f"world.truth() lacks columns {need}")
    truth = truth.drop_duplicates(USER_ID)
    index = pd.Index(truth[USER_ID].astype(str))
    g_all = pd.Series(truth[GENDER]).map({g: i for i, g in enumerate(GENDER_CLASSES)})
    g_all = g_all.fillna(-1).astype(np.int64).to_numpy()
    age = pd.to_numeric(truth[TRUTH_AGE], errors="coerce").to_numpy(dtype=float)
    a_all = np.where(np.isnan(age), -1, age_to_bucket(np.nan_to_num(age), edges))
    if AGE_BUCKET in truth.columns:  # ages given only as a bucket
        by_name = truth[AGE_BUCKET].map(
            {b: i for i, b in enumerate(class_labels(AGE_TARGET, edges))})
        a_all = np.where(a_all < 0, by_name.fillna(-1).to_numpy(dtype=float), a_all)
    a_all = a_all.astype(np.int64)
    pos = index.get_indexer(pd.Series(user_ids).astype(str))
    g = np.where(pos >= 0, g_all[pos], -1)
    a = np.where(pos >= 0, a_all[pos], -1)
    return {GENDER_TARGET: g, AGE_TARGET: a,
            JOINT_TARGET: np.where((g >= 0) & (a >= 0), g * len(edges) + a, -1)}


def attach_truth(frames: Mapping[str, SplitFrame], truth: pd.DataFrame, edges: Sequence[int]
                 ) -> None:
    """Add label source TRUTH from the world's true demographics (joined on user id)."""
    for frame in frames.values():
        if USER_ID not in frame.df.columns:
            raise ValueError(f"split {frame.split!r} lacks {USER_ID}, needed to join the truth")
        frame.labels[TRUTH] = truth_labels(frame.df[USER_ID], truth, edges)
