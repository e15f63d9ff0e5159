"""Users held out of training: validation and the test day's "new users", in Spark and on the
driver.

Split by date alone, the validation and test days come from the users whose rows trained the
models, and a model learns those very users: which few users of a country sit at an activity
level, which devices and metros they use. A bidder's value is in the users without a label,
whom no model has seen; a model chosen, stopped and calibrated on users it trained on is
over-confident there (on the default world the MLP's AgeGender log-loss on unseen power users
was 8.8 nats, against 2.46 for the class prior: docs/new-users.md). So a share
``holdout_users`` of the users is held out: a user is held out when
``pmod(xxhash64(user_id, seed), 2^53) / 2^53 < holdout_users`` (the run's seed; one draw per
user, the same in every split and on every engine). The days before the test day are then
split by user, not by date: train gets the other users' rows of the train AND validation days,
validation the held-out users' rows of those days (user-disjoint from train: early stopping,
temperatures and champions are decided on users no model trained on, with all the rows the
window has of them). The rows that change split count per hour as ``user_split`` in the split
of their date and again, in the reconciliation, as the rows in of the split they joined
(``etl.reconcile``): moved, not lost. The test day keeps everyone, in both test splits, with
``user_held_out`` true on the held-out users' rows: the natural test day's
``natural_new_users`` slice (``evaluate.slices``). Every user still counts in the power-user
threshold and in ``user_impressions_today`` (of their own rows only).
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pythia.config import EtlConfig
from pythia.etl.content_hash import keep_uniform, spark_uniform
from pythia.features import DATE, HOUR, SPLIT, TRAIN, USER_HELD_OUT, USER_ID, VALIDATION

USER_SPLITS = (TRAIN, VALIDATION)  # the splits the user split exchanges rows between
OTHER = {TRAIN: VALIDATION, VALIDATION: TRAIN}
OUTCOME = "user_split"  # the reconciliation term of the rows that moved to the other split
RULE = (f"- Held-out users (`holdout_users`, default 0.1): a user is held out when "
        "pmod(xxhash64(user_id, seed), 2^53) / 2^53 < holdout_users. The days before the test "
        f"day are then split by user: {TRAIN} gets the other users' rows of the train and "
        f"validation days, {VALIDATION} the held-out users' rows of those days (a row that "
        f"changes split counts as `{OUTCOME}` in its date's split and as rows in of the split "
        "it joins); the test day keeps every user, in both test splits, with "
        f"`{USER_HELD_OUT}` true on the held-out users' rows: the `natural_new_users` slice, "
        "users no model trained on. 0 holds out nobody (the split is by date alone).")


def spark_user_split(flagged: Any, cfg: EtlConfig) -> tuple[Any, list[tuple]]:
    """Spark: (``flagged`` with ``user_held_out`` and, when users are held out, the split of
    the train and validation days' rows by user; the moved rows' (date, hour, split of their
    date, count) groups)."""
    from pyspark.sql import functions as F

    if cfg.holdout_users <= 0:
        return flagged.withColumn(USER_HELD_OUT, F.lit(False)), []
    held = F.coalesce(spark_uniform(USER_ID, cfg.seed) < F.lit(float(cfg.holdout_users)),
                      F.lit(False))
    flagged = flagged.withColumn(USER_HELD_OUT, held)
    moved = (((F.col(SPLIT) == TRAIN) & F.col(USER_HELD_OUT))
             | ((F.col(SPLIT) == VALIDATION) & ~F.col(USER_HELD_OUT)))
    groups = [tuple(r) for r in flagged.filter(moved).groupBy(DATE, HOUR, SPLIT).count()
              .collect()]
    split = F.when(moved, F.when(F.col(SPLIT) == TRAIN, F.lit(VALIDATION))
                   .otherwise(F.lit(TRAIN))).otherwise(F.col(SPLIT))
    return flagged.withColumn(SPLIT, split), groups


def local_user_split(batch: pa.Table, cfg: EtlConfig) -> tuple[pa.Table, Counter]:
    """Driver: ``spark_user_split`` of a batch of rows (the same draw, ``keep_uniform``)."""
    held = np.zeros(batch.num_rows, dtype=bool)
    if cfg.holdout_users > 0 and batch.num_rows:
        users = pc.unique(batch[USER_ID])  # a null, if any, is one value: Spark hashes it too
        draw = keep_uniform(users, int(cfg.seed)) < cfg.holdout_users
        held = draw[pc.index_in(batch[USER_ID], value_set=users, skip_nulls=False).to_numpy(
            zero_copy_only=False)]
    batch = batch.append_column(USER_HELD_OUT, pa.array(held))
    moved_rows = Counter()
    if cfg.holdout_users <= 0 or not batch.num_rows:
        return batch, moved_rows
    split = batch[SPLIT].to_numpy(zero_copy_only=False).astype(object)
    moved = (held & (split == TRAIN)) | (~held & (split == VALIDATION))
    if moved.any():
        part = batch.filter(pa.array(moved)).select([DATE, HOUR, SPLIT])
        grouped = part.group_by([DATE, HOUR, SPLIT]).aggregate([([], "count_all")])
        moved_rows.update({(r[DATE], r[HOUR], r[SPLIT]): r["count_all"]
                           for r in grouped.to_pylist()})
        split[moved] = [OTHER[s] for s in split[moved]]
        batch = batch.set_column(batch.column_names.index(SPLIT), SPLIT,
                                 pa.array(split, batch.schema.field(SPLIT).type))
    return batch, moved_rows
