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
user, the same in every split and on every engine). Train keeps the other users' rows,
validation only the held-out users' rows (user-disjoint from train: early stopping,
temperatures and champions are decided on users no model trained on); the rows that leave are
counted per hour as ``user_split`` (reconciled, not lost). The test day keeps everyone, in both
test splits, with ``user_held_out`` true on the held-out users' rows: the natural test day's
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
OUTCOME = "user_split"  # the reconciliation term of the rows on the other side
RULE = (f"- Held-out users (`holdout_users`, default 0.1): a user is held out when "
        "pmod(xxhash64(user_id, seed), 2^53) / 2^53 < holdout_users. "
        f"{TRAIN} keeps the other users' rows, {VALIDATION} only the held-out users' rows "
        f"(the rows that leave count as `{OUTCOME}`); the test day keeps every user, in both "
        f"test splits, with `{USER_HELD_OUT}` true on the held-out users' rows: the "
        "`natural_new_users` slice, users no model trained on. 0 holds out nobody (validation "
        "then has every user's rows).")


def spark_split_off(flagged: Any, cfg: EtlConfig) -> tuple[Any, list[tuple]]:
    """Spark: (``flagged`` with ``user_held_out``, without the held-out users' train rows and,
    when users are held out, the other users' validation rows; the removed rows' (date, hour,
    split, count) groups)."""
    from pyspark.sql import functions as F

    held = (F.coalesce(spark_uniform(USER_ID, cfg.seed) < F.lit(float(cfg.holdout_users)),
                       F.lit(False)) if cfg.holdout_users > 0 else F.lit(False))
    flagged = flagged.withColumn(USER_HELD_OUT, held)
    gone = (F.col(SPLIT) == TRAIN) & F.col(USER_HELD_OUT)
    if cfg.holdout_users > 0:
        gone = gone | ((F.col(SPLIT) == VALIDATION) & ~F.col(USER_HELD_OUT))
    groups = [tuple(r) for r in flagged.filter(gone).groupBy(DATE, HOUR, SPLIT).count().collect()]
    return flagged.filter(~gone), groups


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
    gone = held & (split == TRAIN)
    if cfg.holdout_users > 0:
        gone |= ~held & (split == VALIDATION)
    removed = Counter()
    if gone.any():
        part = batch.filter(pa.array(gone)).select([DATE, HOUR, SPLIT])
        grouped = part.group_by([DATE, HOUR, SPLIT]).aggregate([([], "count_all")])
        removed.update({(r[DATE], r[HOUR], r[SPLIT]): r["count_all"]
                        for r in grouped.to_pylist()})
    return batch.filter(pa.array(~gone)), removed
