"""The ETL's split rules as docs/data-contract.md states them (``pythia.docs``), from the
constants of ``etl.splits``, ``etl.activity`` and ``etl.holdout``."""
from __future__ import annotations

from pythia.etl import holdout
from pythia.etl.activity import RULE as ACTIVITY_RULE
from pythia.etl.splits import (_HASH_BITS, AUTO, AUTO_ENOUGH_ROWS, AUTO_MIN_KEPT_FRACTION)
from pythia.features import TEST_NATURAL, TEST_RESAMPLED, TRAIN, VALIDATION


def rules_markdown() -> str:
    """ETL split rules, for docs/data-contract.md."""
    return "\n".join([
        "## Splits, power users, resampling (`etl.hourly`, `etl.dedupe`, `etl.splits`, "
        "`etl.reconcile`)", "",
        "- Window: the 5 days ending at the test date; split by partition date: 3 train days, "
        "1 validation, 1 test, then by user before the test day (held-out users below). "
        "Impressions of users without a label are counted (`unlabelled`), not written.",
        "- Duplicates across the whole window: each `etl_hour` task keeps one copy of an "
        "`impression_id` among its valid rows; `join_hours` then settles ids kept by several "
        "tasks with the same rule (earliest `ts`, then date, hour, a hash of the raw values). "
        "The other copies leave `written` or `unlabelled` of their own hour, count as "
        "`duplicate_impression_id`, and their raw rows are read again from the source into "
        "the quarantine (`impressions/duplicates_across_tasks`). Counts, splits and the "
        "power-user threshold do not depend on `hours_per_task`.",
        "- Power users: per (user, date) count of labelled impressions over all hours; a "
        "user-day above the threshold (`power_user_threshold`, else the exact "
        "`power_user_quantile` of those counts) is flagged `is_power_user`; with "
        f"`drop_power_users` its rows leave {TRAIN}, {VALIDATION} and `{TEST_RESAMPLED}`; "
        f"else, with `cap_power_users` (the default), {TRAIN} keeps each of its rows with "
        "probability threshold / n on top of its class keep-rate (about as many rows as the "
        "busiest other user-day; the draw is the same hash as the resampling's).",
        ACTIVITY_RULE,
        holdout.RULE,
        "- Resampling: keep-rates per class of `resample_target` from the GLOBAL class counts "
        "of each split after the power-user drop: `balanced` n_min/n_c, `sqrt` "
        "sqrt(n_min/n_c), `natural` 1; with a floor (`balanced:0.2`) no rate is below it. "
        "A row is kept when "
        f"pmod(xxhash64(impression_id, seed), 2^{_HASH_BITS}) / 2^{_HASH_BITS} < rate "
        "(deterministic).",
        f"- `{AUTO}` (the default) picks one mode for all resampled splits from the {TRAIN} "
        "class counts: `balanced` if it keeps at least "
        f"{AUTO_MIN_KEPT_FRACTION:.0%} of the train rows or at least {AUTO_ENOUGH_ROWS:,} "
        "rows, else `sqrt` by the same test, else `natural`. Why: the natural priors are "
        "restored downstream (prior correction, importance weights), so resampling buys class "
        "balance at the price of data; that is cheap where the classes are near balanced or "
        "the data is large, and ruinous on small skewed label sets (a 0.4% class leaves "
        "`balanced` about 5% of the rows). Not free even near balance: on the default world "
        "`balanced` keeps 78% of the train rows, and `natural` scored 0.0014 better AgeGender "
        "on fresh users over three seeds, all of it on power user-days, but worse in APAC on "
        "every seed (docs/new-users.md, session 46), so `auto` is unchanged. "
        "The split manifest records the mode applied "
        "(`resample`), what was asked (`resample_requested`, `min_keep_rate`) and the numbers "
        "(`resample_choice`).",
        f"- The test day is written twice: `{TEST_RESAMPLED}` (rules above) and `{TEST_NATURAL}` "
        "(every row, power users kept and flagged). `natural_priors` are the class "
        "frequencies of all labelled train rows (power users included).",
        "- Reconciliation, per (date, hour, output split) and in total: rows_in = quarantined "
        "+ unlabelled + power_user_dropped + user_split + resampled_out + written. Rows that "
        "change split with their user are `user_split` of their date's split and `rows_in` "
        "of that hour's record of the split they land in.", "",
    ])
