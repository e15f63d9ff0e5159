"""The four training splits: power users, class resampling from global counts, final writes.

Runs once after all hourly tasks: the mode (``auto`` decides it from the train counts) and the
rates come from each split's GLOBAL class counts (never per hour), selection is a deterministic
hash of (impression_id, seed), and the test day is written twice: ``test_resampled`` (same
rules as train/validation) and ``test_natural`` (every row, power users kept and flagged).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

from pythia import contract
from pythia.config import RESAMPLE_MODES, EtlConfig
from pythia.contract_read import SPARK_TYPES
from pythia.etl import holdout
from pythia.etl.activity import add_user_impressions_today
from pythia.etl.content_hash import UNIFORM_BITS as _HASH_BITS, spark_uniform
from pythia.etl.hourly import OUTCOME, WRITTEN
from pythia.etl.io import read_parquet, write_parquet_atomic
from pythia.etl.quantile import BROADCAST_MAX_ROWS, count_histogram, rank_quantile, rows_above
from pythia.features import (DATE, ETL_SPLIT_OF, ETL_SPLITS, HOUR, IMPRESSION_ID, IS_POWER_USER,
                             OUTPUT_SPLITS, SPLIT, TARGETS, TEST_NATURAL, TEST_RESAMPLED, TRAIN,
                             USER_ID, VALIDATION, Y_AGE_GENDER, class_labels)

RESAMPLED_SPLITS = (TRAIN, VALIDATION, TEST_RESAMPLED)  # the output splits that are resampled
CAP = "_power_user_cap"  # per row: threshold / its user-day's n on power users' rows, else 1
AUTO = "auto"
# ``auto`` balances only where balancing costs little data: the mode must keep at least this
# share of the train rows ...
AUTO_MIN_KEPT_FRACTION = 0.5
# ... or at least this many rows, where training time rather than data is the constraint.
AUTO_ENOUGH_ROWS = 1_000_000


def resample_rates(counts: Mapping[int, int], mode: str, min_keep_rate: float = 0.0
                   ) -> dict[int, float]:
    """Keep-rate per class from global class counts.

    ``balanced``: every class down to the smallest present class (rate n_min / n_c);
    ``sqrt``: kept counts proportional to sqrt(n_c) (rate sqrt(n_min / n_c));
    ``natural``: every rate 1. No rate falls below ``min_keep_rate``. Classes with no rows get
    no rate. All rates are in (0, 1]. (``auto`` is decided by :func:`choose_resample` first.)
    """
    present = {int(c): int(n) for c, n in counts.items() if n > 0}
    if mode == "natural" or not present:
        return {c: 1.0 for c in present}
    n_min = min(present.values())
    if mode == "balanced":
        rates = {c: n_min / n for c, n in present.items()}
    elif mode == "sqrt":
        rates = {c: math.sqrt(n_min / n) for c, n in present.items()}
    else:
        raise ValueError(f"unknown resample mode {mode!r}; choose from {RESAMPLE_MODES}")
    return {c: max(r, float(min_keep_rate)) for c, r in rates.items()}


def kept_fraction(counts: Mapping[int, int], rates: Mapping[int, float]) -> float:
    """Expected share of the rows that ``rates`` keep (1.0 for no rows)."""
    total = sum(int(n) for n in counts.values())
    kept = sum(int(n) * rates.get(int(c), 0.0) for c, n in counts.items())
    return kept / total if total else 1.0


def choose_resample(counts: Mapping[int, int], requested: str, min_keep_rate: float = 0.0
                    ) -> tuple[str, dict]:
    """The resampling mode to apply to every resampled split, from the TRAIN class counts.

    Any mode but ``auto`` is kept as asked. ``auto`` takes the first of balanced, sqrt that
    keeps at least ``AUTO_MIN_KEPT_FRACTION`` of the rows or at least ``AUTO_ENOUGH_ROWS``
    rows, else natural (see ``split_rules.rules_markdown`` for why).

    Returns:
        (mode, evidence): evidence holds the train rows, the smallest class and the expected
        kept fraction of each mode, so the manifest shows why the mode was chosen.
    """
    present = [int(n) for n in counts.values() if n > 0]
    total = sum(present)
    kept = {m: kept_fraction(counts, resample_rates(counts, m, min_keep_rate))
            for m in ("balanced", "sqrt", "natural")}
    evidence = {"requested": requested, "min_keep_rate": float(min_keep_rate),
                "decided_on": TRAIN, "rows": total, "smallest_class_rows": min(present or [0]),
                "kept_fraction": kept}
    if requested != AUTO:
        return requested, evidence
    if not total:  # no train rows: nothing to balance
        return "natural", evidence
    for mode in ("balanced", "sqrt"):
        if kept[mode] >= AUTO_MIN_KEPT_FRACTION or kept[mode] * total >= AUTO_ENOUGH_ROWS:
            return mode, evidence
    return "natural", evidence


def target_class(y_age_gender: int, target: str, n_age: int) -> int:
    """The class index of ``target`` implied by an AgeGender index."""
    if target == "age_gender":
        return int(y_age_gender)
    if target == "gender":
        return int(y_age_gender) // n_age
    if target == "age":
        return int(y_age_gender) % n_age
    raise ValueError(f"unknown target {target!r}; choose from {TARGETS}")


def power_user_threshold(spark: Any, user_day_paths: Sequence[str], cfg: EtlConfig,
                         duplicates: str | None = None) -> tuple[Any, float | None, int]:
    """Per-(user, date) impression totals over all tasks, the power-user threshold and the
    user-days over it (the exact quantile from a histogram of totals: ``etl.quantile``).

    The threshold is ``cfg.power_user_threshold`` when set, else the exact
    ``cfg.power_user_quantile`` of the per-user-day counts of labelled rows; a user-day with
    MORE impressions than the threshold is a power user. None when there are no rows.
    ``duplicates`` (the losers of ``etl.dedupe``) are taken out of the counts first, so the
    threshold is the one a single task reading every hour would find.
    """
    from pyspark.sql import functions as F

    counts = read_parquet(spark, list(user_day_paths)).select(
        USER_ID, DATE, F.col("n").cast("long").alias("n"))
    if duplicates:
        counts = counts.unionByName(
            read_parquet(spark, duplicates).filter(F.col(OUTCOME) == WRITTEN)
            .groupBy(USER_ID, DATE).agg((-F.count(F.lit(1))).cast("long").alias("n")))
    totals = counts.groupBy(USER_ID, DATE).agg(F.sum("n").alias("n")).filter(F.col("n") > 0)
    histogram = count_histogram(totals, "n")
    threshold = threshold_rule(cfg, lambda q: rank_quantile(histogram, q))
    return totals, threshold, rows_above(histogram, threshold)


def threshold_rule(cfg: EtlConfig, quantile: Callable[[float], float | None]) -> float | None:
    """``cfg.power_user_threshold`` when set, else ``quantile(cfg.power_user_quantile)`` (the
    exact quantile of the per-user-day totals; None when there are none), as a float."""
    if cfg.power_user_threshold is not None:
        return float(cfg.power_user_threshold)
    q = quantile(cfg.power_user_quantile)
    return None if q is None else float(q)


def _out_uri(out_root: Any) -> Callable[[str], str]:
    if hasattr(out_root, "split"):
        return out_root.split
    if isinstance(out_root, Mapping):
        return lambda name: out_root[name]
    if callable(out_root):
        return out_root
    raise TypeError(f"out_root must be RunPaths, a dict split->uri or a function, got "
                    f"{type(out_root).__name__}")


def _check_manifests(hour_manifests: Sequence[Mapping]) -> None:
    seen: dict[int, int] = {}
    for i, m in enumerate(hour_manifests):
        for h in m["hours"]:
            if h in seen:
                raise ValueError(f"hour {h} appears in hour manifests {seen[h]} and {i}")
            seen[h] = i


def finalize_splits(spark: Any, hour_manifests: Sequence[Mapping], cfg: EtlConfig,
                    out_root: Any, duplicates: str | None = None) -> dict:
    """Flag power users, resample from global counts and write the four splits.

    Args:
        spark: the session.
        hour_manifests: the manifests returned by ``hourly.run_hours``, one per task (after
            ``dedupe.apply_duplicates`` when there were duplicates across tasks).
        cfg: resampling mode/target/floor, power-user rule, seed, age edges.
        out_root: ``RunPaths`` (its ``split(name)``), a dict split -> uri, or a function.
        duplicates: the losers' ids table of ``dedupe.find_duplicates``: their written rows
            are left out (and out of the power-user counts).

    Returns:
        A JSON-able manifest: paths and row counts per split, the applied resampling mode (and
        why, for ``auto``), keep-rates and class counts before/after per split (keys: class
        index as str), natural train priors per target, the power-user threshold, and
        per-(date, hour, split) counts for ``reconcile``. One line saying which mode was
        applied and how many rows each split kept is printed.
    """
    # Long on purpose: ``flagged`` is persisted for two count queries and four writes.
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    if not hour_manifests:
        raise ValueError("finalize_splits needs at least one hour manifest")
    _check_manifests(hour_manifests)
    uri_of = _out_uri(out_root)
    n_age = len(cfg.age_edges)
    totals, threshold, n_power = power_user_threshold(
        spark, [m["user_day_counts_path"] for m in hour_manifests], cfg, duplicates)
    rows = read_parquet(spark, [m["rows_path"] for m in hour_manifests])
    if duplicates:
        keys = [IMPRESSION_ID, DATE, HOUR]
        rows = rows.join(read_parquet(spark, duplicates).filter(F.col(OUTCOME) == WRITTEN)
                         .select(*keys), keys, "left_anti")
    rows = add_user_impressions_today(rows)  # over every kept row: before any flag or sample
    if threshold is None:
        flagged = rows.withColumn(IS_POWER_USER, F.lit(False)).withColumn(CAP, F.lit(1.0))
    else:
        power = totals.filter(F.col("n") > threshold).select(
            USER_ID, DATE, F.lit(True).alias(IS_POWER_USER),
            (F.lit(float(threshold)) / F.col("n").cast("double")).alias(CAP))
        power = F.broadcast(power) if n_power <= BROADCAST_MAX_ROWS else power
        flagged = (rows.join(power, [USER_ID, DATE], "left")
                   .withColumn(IS_POWER_USER, F.coalesce(IS_POWER_USER, F.lit(False)))
                   .withColumn(CAP, F.coalesce(CAP, F.lit(1.0))))
    flagged = flagged.persist(StorageLevel.DISK_ONLY)  # not in the heap: scaling.md §8
    try:
        kept, held = holdout.spark_split_off(flagged, cfg)
        before = kept.groupBy(SPLIT, IS_POWER_USER, Y_AGE_GENDER).count().collect()
        counts, natural, mode, choice, rates = plan(before, cfg, n_age)
        uniform = spark_uniform(IMPRESSION_ID, cfg.seed)
        y_t = {"age_gender": F.col(Y_AGE_GENDER),
               "gender": F.floor(F.col(Y_AGE_GENDER) / n_age).cast("int"),
               "age": F.pmod(F.col(Y_AGE_GENDER), F.lit(n_age))}[cfg.resample_target]
        keep = {}
        for out in RESAMPLED_SPLITS:
            rate = F.lit(None).cast("double")  # no rows of this split: nothing to keep
            if rates[out]:
                rate = F.create_map(*[x for c, r in sorted(rates[out].items())
                                      for x in (F.lit(c), F.lit(float(r)))])[y_t]
                if out == TRAIN and caps_power_users(cfg):
                    rate = rate * F.col(CAP)
            keep[out] = (F.col(SPLIT) == ETL_SPLIT_OF[out]) & F.coalesce(
                uniform < rate, F.lit(False))
        keep_cols = [keep[o].alias(f"_keep_{o}") for o in RESAMPLED_SPLITS]
        after = kept.select(DATE, HOUR, SPLIT, IS_POWER_USER, Y_AGE_GENDER,
                               *keep_cols).groupBy(
            DATE, HOUR, SPLIT, IS_POWER_USER, Y_AGE_GENDER,
            *[f"_keep_{o}" for o in RESAMPLED_SPLITS]).count().collect()
        paths = {}
        for out in OUTPUT_SPLITS:
            sel = F.col(SPLIT) == ETL_SPLIT_OF[out]
            if out in RESAMPLED_SPLITS:
                if cfg.drop_power_users:
                    sel = sel & ~F.col(IS_POWER_USER)
                sel = sel & keep[out]
            part = kept.filter(sel).withColumn(SPLIT, F.lit(out))
            paths[out] = write_parquet_atomic(_split_columns(part), uri_of(out))
    finally:
        flagged.unpersist()
    return finish(after, (counts, natural, mode, choice, rates), threshold, paths, cfg, held)


def caps_power_users(cfg: EtlConfig) -> bool:
    """Whether train keeps a power user-day's rows with probability threshold / n on top of
    its class keep-rate (``cap_power_users``; moot when power users are dropped): about as many
    rows as the busiest other user-day, so a few heavy users do not dominate the fit."""
    return cfg.cap_power_users and not cfg.drop_power_users


def plan(before: Sequence[Sequence], cfg: EtlConfig, n_age: int) -> tuple:
    """(counts, natural, mode, choice, rates) from ``(split, is_power_user, y_age_gender, n)``
    groups, taken in sorted order so float sums do not depend on the engine's row order."""
    counts, natural = _counts_before(sorted(tuple(r) for r in before), cfg, n_age)
    mode, choice = choose_resample(counts[TRAIN], cfg.resample, cfg.min_keep_rate)
    rates = {s: resample_rates(counts[s], mode, cfg.min_keep_rate) for s in RESAMPLED_SPLITS}
    return counts, natural, mode, choice, rates


def finish(after: Sequence[Sequence], planned: tuple, threshold: float | None, paths: dict,
           cfg: EtlConfig, held: Sequence[Sequence] = ()) -> dict:
    """The split manifest (printed in one line) from ``plan``, the ``after`` groups and the
    (date, hour, split, rows) groups of the rows the user split removed (``etl.holdout``)."""
    counts, natural, mode, choice, rates = planned
    manifest = _manifest(list(after), counts, rates, natural, threshold, paths, cfg,
                         len(cfg.age_edges), held)
    manifest.update(resample=mode, resample_requested=cfg.resample,
                    min_keep_rate=cfg.min_keep_rate, resample_choice=choice)
    print(resample_summary(manifest))
    return manifest


def _counts_before(before: list, cfg: EtlConfig, n_age: int
                   ) -> tuple[dict[str, dict[int, int]], dict[int, int]]:
    """Class counts of ``resample_target`` per resampled split (after the power-user drop),
    and the AgeGender counts of every labelled train row (the natural priors)."""
    counts: dict[str, dict[int, int]] = {s: {} for s in OUTPUT_SPLITS}
    natural: dict[int, int] = {}
    for split, pu, y, n in before:
        if split == TRAIN:
            natural[int(y)] = natural.get(int(y), 0) + n
        for out in RESAMPLED_SPLITS:
            if ETL_SPLIT_OF[out] != split or (pu and cfg.drop_power_users):
                continue
            c = target_class(y, cfg.resample_target, n_age)
            counts[out][c] = counts[out].get(c, 0) + n
    return counts, natural


def resample_summary(manifest: Mapping) -> str:
    """One line for the step's log: the mode applied (and, for ``auto``, the numbers that chose
    it) and the rows each resampled split kept of its rows after the power-user drop."""
    choice = manifest.get("resample_choice", {})
    kept = ", ".join(
        f"{s} {manifest['rows'][s]:,}/{sum(manifest['class_counts_before'][s].values()):,}"
        for s in RESAMPLED_SPLITS)
    why = ""
    if choice.get("requested") == AUTO:
        frac = choice["kept_fraction"]
        why = (f" (auto, on {choice['rows']:,} train rows, smallest class "
               f"{choice['smallest_class_rows']:,}: balanced would keep {frac['balanced']:.0%}, "
               f"sqrt {frac['sqrt']:.0%})")
    floor = (f", keep-rates floored at {manifest['min_keep_rate']:g}"
             if manifest.get("min_keep_rate") else "")
    return f"resample: {manifest['resample']}{why}{floor}; rows kept: {kept}"


def _split_columns(sdf: Any) -> Any:
    """Columns in the pinned order and types of ``contract.SPLIT``."""
    from pyspark.sql import functions as F

    return sdf.select(*[F.col(c.name).cast(SPARK_TYPES[c.type]).alias(c.name)
                        for c in contract.SPLIT.columns])


def _manifest(after: list, counts: dict, rates: dict, natural: dict, threshold: float | None,
              paths: dict, cfg: EtlConfig, n_age: int, held: Sequence[Sequence]) -> dict:
    per: dict[tuple[str, int, str], dict] = {}
    rows = {s: 0 for s in OUTPUT_SPLITS}
    cls_after: dict[str, dict[int, int]] = {s: {} for s in OUTPUT_SPLITS}
    pu_rows = {s: 0 for s in ETL_SPLITS}
    for r in after:
        date, hour, split, pu, y, n = r[0], int(r[1]), r[2], bool(r[3]), int(r[4]), r[-1]
        kept = dict(zip(RESAMPLED_SPLITS, r[5:8]))
        pu_rows[split] += n if pu else 0
        for out in OUTPUT_SPLITS:
            if ETL_SPLIT_OF[out] != split:
                continue
            rec = per.setdefault((date, hour, out), _hour_record(date, hour, out))
            rec["etl_written"] += n
            if out not in RESAMPLED_SPLITS:
                outcome = "written"
            elif pu and cfg.drop_power_users:
                outcome = "power_user_dropped"
            else:
                outcome = "written" if kept[out] else "resampled_out"
            rec[outcome] += n
            if outcome == "written":
                rows[out] += n
                c = target_class(y, cfg.resample_target, n_age)
                cls_after[out][c] = cls_after[out].get(c, 0) + n
    held_rows = {s: 0 for s in holdout.USER_SPLITS}
    for date, hour, split, n in held:  # train and validation: one output split each
        rec = per.setdefault((date, int(hour), split), _hour_record(date, int(hour), split))
        rec["etl_written"] += n
        rec[holdout.OUTCOME] += n
        held_rows[split] += n
    natural_total = sum(natural.values())
    priors = {}
    for target in TARGETS:
        k = len(class_labels(target, cfg.age_edges))
        freq = [0.0] * k
        for y, n in natural.items():
            freq[target_class(y, target, n_age)] += n / natural_total if natural_total else 0.0
        priors[target] = freq
    counts = dict(counts)
    counts[TEST_NATURAL] = dict(cls_after[TEST_NATURAL])

    def _keyed(d: Mapping[int, Any]) -> dict[str, Any]:
        return {str(k): d[k] for k in sorted(d)}
    rate_doc = {s: _keyed(rates[s]) for s in rates}
    return {
        "paths": paths, "rows": rows,
        "splits": {s: {"path": paths[s], "rows": rows[s]} for s in OUTPUT_SPLITS},
        "resample_rates": rate_doc,
        "resample_target": cfg.resample_target, "seed": cfg.seed,
        "class_names": list(class_labels(cfg.resample_target, cfg.age_edges)),
        "rates": rate_doc,
        "class_counts_before": {s: _keyed(counts[s]) for s in OUTPUT_SPLITS},
        "class_counts_after": {s: _keyed(cls_after[s]) for s in OUTPUT_SPLITS},
        "natural_priors": priors, "power_user_threshold": threshold,
        "drop_power_users": cfg.drop_power_users, "power_user_rows": pu_rows,
        "holdout_users": cfg.holdout_users, "user_split_rows": held_rows,
        "cap_power_users": caps_power_users(cfg),
        "per_hour": [per[k] for k in sorted(per)],
    }


def _hour_record(date: str, hour: int, out: str) -> dict:
    return {DATE: date, HOUR: hour, SPLIT: out, "etl_written": 0, "power_user_dropped": 0,
            holdout.OUTCOME: 0, "resampled_out": 0, "written": 0}
