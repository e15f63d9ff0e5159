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
user, the same in every split and on every engine).

Before the test day the user decides the split, not the date: every row of a held-out user on
a train or validation date is a validation row, every row of the other users there a train
row (user-disjoint: early stopping, temperatures and champions are decided on users no model
trained on). Nothing is dropped: the rows that change split are counted per hour as
``user_split`` of the split their date gave them (reconciled: ``etl.reconcile`` counts them
again where they land). Why all the days and not only the validation date's held-out rows
(session 37, docs/new-users.md): that threw away 90% of the validation date and the held-out
users' train-date rows, and left validation so thin (one day of a tenth of the users) that one
power user's day decided a region's champion. The test day keeps everyone, in both test
splits, with ``user_held_out`` true on the held-out users' rows: the natural test day's
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

USER_SPLITS = (TRAIN, VALIDATION)  # the splits that keep one side of the user split each
OTHER_SPLIT = {TRAIN: VALIDATION, VALIDATION: TRAIN}
OUTCOME = "user_split"  # the reconciliation term of the rows that change split
RULE = (f"- Held-out users (`holdout_users`, default 0.2): a user is held out when "
        "pmod(xxhash64(user_id, seed), 2^53) / 2^53 < holdout_users. On every date before the "
        f"test day the user decides the split: {VALIDATION} gets the held-out users' rows of "
        f"the train and validation dates, {TRAIN} the other users' rows of the same dates "
        f"(nothing is dropped; the rows that change split count as `{OUTCOME}` of the split "
        "their date gave them, and again where they land). The test day keeps every user, in "
        f"both test splits, with `{USER_HELD_OUT}` true on the held-out users' rows: the "
        "`natural_new_users` slice, users no model trained on. 0 holds out nobody (the dates "
        "decide: validation has every user's rows of the validation date).")


def spark_split_off(flagged: Any, cfg: EtlConfig) -> tuple[Any, list[tuple]]:
    """Spark: (``flagged`` with ``user_held_out`` and, when users are held out, every train-
    and validation-date row in its user's split; the (date, hour, split their date gave them,
    count) groups of the rows that changed split)."""
    from pyspark.sql import functions as F

    if cfg.holdout_users <= 0:
        return flagged.withColumn(USER_HELD_OUT, F.lit(False)), []
    held = F.coalesce(spark_uniform(USER_ID, cfg.seed) < F.lit(float(cfg.holdout_users)),
                      F.lit(False))
    flagged = flagged.withColumn(USER_HELD_OUT, held)
    to_validation = (F.col(SPLIT) == TRAIN) & F.col(USER_HELD_OUT)
    to_train = (F.col(SPLIT) == VALIDATION) & ~F.col(USER_HELD_OUT)
    groups = [tuple(r) for r in flagged.filter(to_validation | to_train)
              .groupBy(DATE, HOUR, SPLIT).count().collect()]
    moved = (F.when(to_validation, F.lit(VALIDATION)).when(to_train, F.lit(TRAIN))
             .otherwise(F.col(SPLIT)))
    return flagged.withColumn(SPLIT, moved), groups


def local_split_off(batch: pa.Table, cfg: EtlConfig) -> tuple[pa.Table, Counter]:
    """Driver: ``spark_split_off`` of a batch of rows (the same draw, ``keep_uniform``)."""
    held = np.zeros(batch.num_rows, dtype=bool)
    if cfg.holdout_users > 0 and batch.num_rows:
        users = pc.unique(batch[USER_ID])  # a null, if any, is one value: Spark hashes it too
        draw = keep_uniform(users, int(cfg.seed)) < cfg.holdout_users
        held = draw[pc.index_in(batch[USER_ID], value_set=users, skip_nulls=False).to_numpy(
            zero_copy_only=False)]
    batch = batch.append_column(USER_HELD_OUT, pa.array(held))
    split = batch[SPLIT].to_numpy(zero_copy_only=False)
    to_validation = held & (split == TRAIN)
    to_train = ~held & (split == VALIDATION) if cfg.holdout_users > 0 else np.zeros_like(held)
    moved = Counter()
    if to_validation.any() or to_train.any():
        part = batch.filter(pa.array(to_validation | to_train)).select([DATE, HOUR, SPLIT])
        grouped = part.group_by([DATE, HOUR, SPLIT]).aggregate([([], "count_all")])
        moved.update({(r[DATE], r[HOUR], r[SPLIT]): r["count_all"]
                      for r in grouped.to_pylist()})
        new = np.where(to_validation, VALIDATION, np.where(to_train, TRAIN, split))
        batch = batch.set_column(batch.column_names.index(SPLIT), batch.schema.field(SPLIT),
                                 pa.array(new, batch.schema.field(SPLIT).type))
    return batch, moved
