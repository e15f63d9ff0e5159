"""Renders ``docs/data-contract.md`` from the code (``python -m pythia.docs > docs/…``).

The one module that imports the contract, the provider rules and the ETL split rules together;
nothing imports it, so documentation can never close an import cycle.
"""
from __future__ import annotations

from pythia import contract, input_health, label_health, label_rules, providers
from pythia.config import MAX_VALID_AGE, MIN_VALID_AGE, EtlConfig
from pythia.contract import (BAD_TIMESTAMP, DUPLICATE_IMPRESSION_ID, NULL_REQUIRED, OUT_OF_DOMAIN,
                             TS_TOLERANCE_SECONDS, WRONG_TYPE, ColumnSpec)
from pythia.etl import split_rules
from pythia.parquet_footers import ARROW_READ_TYPES, MAX_SPARK_DECIMAL_PRECISION
from pythia.source_layout import HIVE_NULL_PARTITION, SPARK_REPARTITION


# what input_health, label_health, column_check and quarantine_limit do, said for users
INPUT_HEALTH_RULES = (
    "The window's quarantined impressions (in `join_hours`, before its work) and the label rows "
    "(in `prepare_labels`) are said in one line per step: rows per reason and column, the most "
    "frequent values, what the column expects, and a likely fix where a value is an allowed "
    "one but for its case, spaces or a full word (`'Mobile' -> 'mobile'?`, `'female' -> "
    "'F'?`), or names a country another way (`'usa' -> 'US'?`, `'Germany' -> 'DE'?`). The "
    "run's `quarantine` artifact (`summary`) and the labels manifest (`quarantine_summary`) "
    f"keep the {input_health.KEEP_VALUES} most frequent values per reason and column.",
    f"When more than `max_quarantined` (a run Parameter, default {EtlConfig.max_quarantined:g}) "
    "of the impressions, or of "
    "the label rows, are quarantined (duplicates aside: a copy of those is kept; and "
    "impressions without a `user_id`, which can never meet a label), the step "
    "stops with that line, the share and the fix: repair the producer, or go on with the "
    "rest at the share named (1 never stops): resume the stopped run with "
    "`resume --origin-run-id RUN --tag max_quarantined:0.65` (the line gives the command; "
    "the finished ETL is kept, since `resume` takes no Parameter but takes tags, and the "
    "steps put the limit they used into their `params` artifact: `pythia/quarantine_limit.py`) "
    "or rerun with `--max_quarantined 0.65`.",
    "A run whose labels give no usable label stops in `prepare_labels` saying what became of "
    "every row (quarantined, rejected, from a provider not chosen for the row's country). A run "
    "where no valid impression has a label stops in `join_hours` describing both sides' "
    "`user_id`s (examples, length, characters, a hash's length) and whether they meet once "
    "lower-cased, upper-cased, trimmed, read as whole numbers (`'11.0'` as `'11'`: ids "
    "stored as floats) or without leading zeros; under "
    f"{input_health.LOW_LABELLED:.0%} labelled, the same line is a warning. Integer ids of "
    "any stored type "
    "(int64, decimal(38,0)) read as their digits and meet; a `user_id` or `impression_id` "
    "stored as a float is a warning at `start`.",
    "Before any ETL, `start` reads the Parquet footers of the first impression file of each "
    "window date and of the first label file of each provider (`pythia/column_check.py`): a "
    "required column that no sampled file of a table has stops the run there, naming the "
    "columns the contract does not know (`event_time` for `ts`, `userId` for `user_id`); one "
    "that some lack is a warning. Names match case-blind, as in Spark SQL and Hive (a "
    "Snowflake unload's `USER_ID` is `user_id`; the step's log names such columns); a file "
    "with two columns naming one contract column (`user_id` and `USER_ID`) stops the step "
    "in one line naming the file.",
    "In `join_hours`, each country holding "
    f"{label_health.COVERAGE_SHARE:.0%} or more of the window's valid impressions with under "
    f"{input_health.LOW_LABELLED:.0%} of them labelled is named in a warning, repeated by "
    "`pythia report` as an `input:` line: no model trains on or is judged by their users, "
    "yet the bundle scores them. The `quarantine` artifact's `label_coverage` holds every "
    "country's labelled and unlabelled impressions.",
    "A `country` that matches the pattern but that no ISO-3166-1 map knows (`UK`, `EL`, `QQ`) "
    "is not quarantined: its rows are region OTHER, scored by the global model, with local "
    "time in UTC. `to_tfrecords` names such codes of the train rows in a warning, with the "
    "ISO code where one is meant (`'UK' -> 'GB'?`, `'EL' -> 'GR'?`).",
)


def domain_text(column: ColumnSpec) -> str:
    """A column's allowed values as one short human-readable string."""
    if column.allowed is not None:
        return ", ".join(f"`{a}`" for a in column.allowed)
    if column.min_value is not None or column.max_value is not None:
        return f"[{column.min_value}, {column.max_value}]"
    if column.pattern is not None:
        return f"matches `{column.pattern}`"
    return ""


def render_tables() -> str:
    """The contract's quarantine reasons and tables as Markdown."""
    out = [
        "# Input data contract",
        "",
        "Generated from `pythia/contract.py`, `pythia/features.py`, `pythia/providers.py` and "
        "`pythia/etl/split_rules.py` (`python -m pythia.docs > docs/data-contract.md`); edit the "
        "code, not this page.",
        "",
        "`source` is a local folder or an `s3://` prefix; both go through the same code path "
        "(Spark reads the files, `pythia.storage` lists them). Columns not listed here are "
        "ignored and named in the step's log (and recorded in the ETL manifest). A file that "
        "cannot be read as Parquet stops the run with an error naming it. Missing hour "
        "partitions stop the run with an error listing them, unless `allow_gaps` (then they "
        "are recorded and printed). What each producer may write, and what each problem gets: "
        "see *What producers may write* below.",
        "",
        "## Quarantine reasons",
        "",
        "Each row breaking the contract is written to the run's quarantine table (Parquet under "
        "`RunPaths.quarantine`: the original columns as strings, plus `reason`, `reason_column`, "
        "and the partition columns). A row gets the first reason that applies:",
        "",
        f"1. `{NULL_REQUIRED}`: a required column is null or an empty string.",
        f"2. `{WRONG_TYPE}`: a value cannot be cast to the column's type (the raw Parquet is "
        "read as stored and cast explicitly).",
        f"3. `{BAD_TIMESTAMP}`: `ts` is malformed, lies outside its date/hour partition by more "
        f"than {TS_TOLERANCE_SECONDS} s, or lies outside the window (also: a partition outside "
        "the requested dates/hours).",
        f"4. `{OUT_OF_DOMAIN}`: a value outside the allowed set, range or pattern.",
        f"5. `{DUPLICATE_IMPRESSION_ID}`: an `impression_id` already seen among the valid rows "
        "of the whole window (settled across ETL tasks in `join_hours`, so the result does not "
        "depend on `hours_per_task`); the earliest by `ts` is kept "
        "(ties broken by a hash of the raw values, so the choice is deterministic).",
        "",
        "### How much, and what the run says (`pythia/input_health.py`)",
        "",
        *[f"- {rule}" for rule in INPUT_HEALTH_RULES],
        "",
    ]
    for table in (contract.IMPRESSIONS, contract.LABELS, contract.PROVIDER_METRICS,
                  contract.SPLIT):
        out += [f"## `{table.name}`", "", f"Layout: `{table.layout}`", ""]
        if table.notes:
            out += [table.notes, ""]
        out += ["| column | type | required | allowed | notes |", "|---|---|---|---|---|"]
        for c in table.columns + table.partition_columns:
            out.append(f"| `{c.name}` | {c.type} | {'yes' if c.required else ''} | "
                       f"{domain_text(c)} | {c.description} |")
        out.append("")
    return "\n".join(out)


def _types_read_as(read_as: str) -> str:
    return ", ".join(f"`{a}`" for a, r in ARROW_READ_TYPES.items() if r == read_as)


def _producer_files() -> list[str]:
    return [
        "### Files", "",
        "- Any Parquet writer: pandas / pyarrow, Spark (`df.write.parquet`, also "
        "`partitionBy(\"date\", \"hour\")` into `impressions/`), Hive, Impala. File names are "
        "free (`part-00000-….snappy.parquet`, `000000_0`, no extension needed).",
        "- Side files are skipped the way Spark's readers skip them: names starting with `_` "
        "(unless they hold `=`) or `.`, `*.crc`, `*._COPYING_`, and everything inside such "
        "folders — `_SUCCESS`, `_committed_*`, `_started_*`, `.part-….crc`, `_temporary/`, "
        "`.hive-staging…/`. A stale `.NAME.crc` beside a rewritten file does not matter: "
        "sessions pythia starts read local files without Hadoop's client-side checksums (a "
        "cluster that still checks them gets an error naming the `.crc` to remove).",
        "- Every other file in a table folder must be Parquet. One that is not (a CSV, an "
        "empty 0-byte file, a damaged footer) stops the step with one line naming the file: "
        "remove it or move it out of the source.", "",
    ]


def _producer_types() -> list[str]:
    ints = ", ".join(f"`{a}`" for a, r in ARROW_READ_TYPES.items()
                     if r in ("tinyint", "smallint", "int", "bigint", "decimal(20,0)"))
    return [
        "### Column types", "",
        "The Parquet footer of each file decides how its columns are read (files of different "
        "stored types can be mixed); a value that does not fit the contract column is "
        f"quarantined (`{WRONG_TYPE}`, `{BAD_TIMESTAMP}`), never coerced silently.", "",
        "- Timestamps with a time zone (`isAdjustedToUTC`), in ms, µs or ns: the instant. "
        "Nanoseconds (pandas' default) are read as 64-bit integers and converted, truncated to "
        "µs (Spark refuses `TIMESTAMP(NANOS)`).",
        "- Timestamps without a time zone (pandas' naive `datetime64`) and `INT96` (Hive, "
        "Impala, Spark's default; told apart by the Parquet physical type, since pyarrow "
        "reports it as a naive ns timestamp): taken as UTC, with a note in the step's log.",
        f"- Timestamps as strings: parsed (ISO 8601), else `{BAD_TIMESTAMP}`; as numbers: "
        f"`{BAD_TIMESTAMP}` (epoch numbers are ambiguous).",
        f"- Strings: {_types_read_as('string')}, and dictionary-encoded strings (pandas "
        "categoricals). Dates: " + _types_read_as("date") + ", timestamps (their UTC date) and "
        "`YYYY-MM-DD` strings.",
        f"- Integer columns: {ints}. A float, double, decimal or text value in an integer "
        f"column must be whole: `35.0` is 35, `34.7` is `{WRONG_TYPE}` (never truncated).",
        "- A column whose Arrow type is `null` (pandas' all-`None` column) reads as absent "
        "(all null).",
        "- Anything else in a contract column (lists, structs, maps, time of day, decimals "
        f"over {MAX_SPARK_DECIMAL_PRECISION} digits) stops the step with one line naming the "
        "file, the column and the fix. Extra columns of any type are ignored and named in the "
        "log; pandas' index (`__index_level_N__`) is ignored silently.", "",
    ]


def _producer_partitions_and_errors() -> list[str]:
    return [
        "### Partition folders (`impressions/`)", "",
        "- `date=YYYY-MM-DD` (zero-padded) and `hour=H` or `hour=HH` with H in 0..23: "
        "`hour=5` and `hour=05` are the same partition (both read). Folders below an hour "
        "folder belong to it.",
        "- A folder whose name does not parse is a **quarantine entry**: folder, problem, "
        "files, and rows counted from the Parquet footers. Its rows are never read, so they "
        "are outside the row reconciliation. `start` prints the entries; `join_hours` prints "
        "them again and records them in its `quarantine` artifact (`partitions`, "
        "`partition_rows`). Entries: every folder directly under `impressions/` that is not a "
        "valid date (`date=2024-02-30`, `date=yesterday`, "
        f"`date={HIVE_NULL_PARTITION}`, any other name) and files lying there; within the "
        "window's dates, `hour=` folders that do not parse (`hour=24`, `hour=ab`, "
        f"`hour={HIVE_NULL_PARTITION}`) and files outside any `hour=` folder. Folders of valid "
        "dates outside the window are not looked at.",
        "- `start` never fails on such a folder: it lists dates past it; its errors (no date, "
        "no complete date, missing hour partitions) name the folders that do not parse.",
        "- A producer's whole layout that differs (date folders under another key, `dt=` with "
        "`hr=` inside; files with no partition folders; daily partitions without `hour=` "
        "folders) stops `start` in one line saying which, with an example. Rewrite such a "
        "table once, in Spark (`SRC` the producer's table, `OUT` the source given to the "
        "flow; pandas' nanosecond timestamps need "
        "`spark.sql.legacy.parquet.nanosAsLong=true` and `F.expr(\"timestamp_micros(ts div "
        "1000)\")` for `ts`):", "", "```python", SPARK_REPARTITION, "```", "",
        "### Errors", "",
        "A Spark failure while reading (a damaged data page, a type Spark refuses, a file "
        "that disappears mid-run) ends the step (`select_providers`, `prepare_labels`, "
        "`etl_hour`, `join_hours`) with one line: the step, the file, the column when Spark "
        "names one, Spark's error class and the fix. The JVM trace stays attached as the "
        "error's cause. Sessions never skip corrupt or missing files "
        "(`spark.sql.files.ignoreCorruptFiles=false`, `ignoreMissingFiles=false`) and read "
        "dates as written (`CORRECTED` rebase modes), so a sentinel like `0001-01-01` is a "
        "value to validate, not a read failure.", "",
        "Steps that read a small input on the driver (pyarrow, no JVM: `select_providers`, "
        "`prepare_labels`, `etl_hour`, `join_hours` and `to_tfrecords` streamed at any size "
        "unless `PYTHIA_DRIVER_MAX_ROWS` sets a limit) "
        "apply the same rules and write the same outputs; a damaged file there is one line "
        "naming it and the "
        "fix, and a stored type they do not convert exactly as Spark does (e.g. `ts` as text) "
        "sends the step to Spark, which its log says in one line.", "",
    ]


def render_producers() -> str:
    """What producers may write and what each problem gets (``source_layout``,
    ``parquet_footers``, ``contract_read``, ``errors``)."""
    return "\n".join(["## What producers may write", "", *_producer_files(),
                      *_producer_types(), *_producer_partitions_and_errors()])


def render_data_contract() -> str:
    """The whole ``docs/data-contract.md``: the tables, what producers may write, and the
    provider, label and ETL rules."""
    return "\n".join([render_tables(), render_producers(), render_provider_rules(),
                      split_rules.rules_markdown()])


def render_provider_rules() -> str:
    """Provider selection and label rules, for docs/data-contract.md."""
    w = " + ".join(f"{v:g} × {k}" for k, v in providers.SCORE_WEIGHTS.items())
    return "\n".join([
        "## Provider selection (`providers.select_providers`)", "",
        f"score(provider, country) = {w}, each figure averaged over the metric rows dated "
        f"within {providers.RECENT_DAYS} days of the newest metric date (nulls ignored; a figure with no "
        "value counts 0). Per country the best score wins (ties: provider name); an override "
        "(`US=lucid` by default in the flow) always wins and must name a provider that has "
        "metrics or a `labels/provider=NAME/` folder. A country without metrics gets the "
        "provider with the best mean score over countries, with a warning. The "
        "`provider_choice` table lists every candidate with its score, rank, `chosen` and the "
        "winner's `reason`. A source without `provider_metrics` whose `labels/` holds one "
        "provider uses it for every country (a warning says so); with several providers it "
        "stops in one line naming them: the metrics choose among them.", "",
        "## Labels (`providers.prepare_labels`)", "",
        "- A label row counts only if its provider is the one chosen for the row's `country`; "
        "other usable rows are written aside and feed the inter-provider agreement table "
        "(per provider pair and country: shared users, share with equal gender, with equal "
        "age bucket).",
        "- One label per user: the latest `observed_date` wins; ties go to the country, then "
        "the provider, in alphabetical order, then the lower `age_gender` class. So a user "
        "labelled in two countries keeps the label of the latest observation. A kept label "
        "that another chosen label of the same user and date contradicts (gender or age "
        "bucket) is a conflict: the labels manifest's `conflicts` counts them per provider; "
        f"over {label_rules.CONFLICT_SHARE:.0%} of the users it is a warning (repeated by "
        "`pythia report`), else a note.",
        "- Labels are user-level attributes: an observation dated after the window still "
        "applies to the window's impressions.",
        "- An `age` is the user's age on its `observed_date`, and is moved to the run's test "
        "day by the whole years between the two (rounded; back, for an observation after it) "
        "before it is bucketed: 24 observed three years before is 27, in 25-34. "
        f"`{providers.IMPOSSIBLE_AGE}` judges the age as given, "
        f"`{providers.AGE_BELOW_FIRST_EDGE}` the moved one (17 a year and a half before is "
        "18). A label given only as an `age_bucket` cannot be moved: more than "
        f"{label_rules.STALE_BUCKET_SHARE:.0%} of the kept labels as buckets observed a year or "
        "more from the test day is a warning. The labels manifest's `label_age` counts both "
        "(`aged`, `max_years`, `stale_buckets`), and the step's log says them.",
        f"- A `{contract.YOB}` (year of birth, OpenRTB's `user.yob`) gives the age on the test "
        "day of a mid-year birthday, the likelier of the two ages that year (one less before 2 "
        "July): born 1990, 36 on 2026-11-20; `impossible_age` judges its age on the observed "
        "date. Years of birth written to `age` (1985) are impossible ages, and the rejected "
        f"rows' line says `years of birth? write them to {contract.YOB}`.",
        f"- `age` wins over `{contract.YOB}`, which wins over `age_bucket`. Rejected (counted, "
        "written to `rejected/`): "
        f"`{providers.IMPOSSIBLE_AGE}` (outside [{MIN_VALID_AGE}, {MAX_VALID_AGE}]), "
        f"`{providers.AGE_BELOW_FIRST_EDGE}` (e.g. 15 with a first edge of 18), `{providers.INCOMPLETE_LABEL}` "
        "(no gender: null, or " + " or ".join(f"`{v}` ({what.split(',')[0]})" for v, what
                                             in contract.GENDER_NO_CLASS.items())
        + "; or neither age nor age bucket): a label needs a gender and an age or "
        "an age bucket, since `age_gender` is the models' joint target, so a provider of ages "
        "alone (or genders alone) labels nobody. Rejected rows keep the values they were given. "
        f"Over {input_health.WARN_SHARE:.0%} of the label rows rejected is a warning naming "
        "the reasons, what incomplete labels lack (`no gender`, with its `U` and `O` rows, "
        "`neither age nor age_bucket`) "
        "and the providers whose rows they are; with no label left, the stop says the same.",
        "- Counts reconcile: rows in = quarantined + rejected + not chosen + superseded + users.",
        "",
    ])


if __name__ == "__main__":
    print(render_data_contract())
