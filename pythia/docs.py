"""Renders ``docs/data-contract.md`` from the code (``python -m pythia.docs > docs/…``).

The one module that imports the contract, the provider rules and the ETL split rules together;
nothing imports it, so documentation can never close an import cycle.
"""
from __future__ import annotations

from pythia import contract, providers
from pythia.contract import (BAD_TIMESTAMP, DUPLICATE_IMPRESSION_ID, NULL_REQUIRED, OUT_OF_DOMAIN,
                             TS_TOLERANCE_SECONDS, WRONG_TYPE, ColumnSpec)
from pythia.etl import splits


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
        "`pythia/etl/splits.py` (`python -m pythia.docs > docs/data-contract.md`); edit the "
        "code, not this page.",
        "",
        "`source` is a local folder or an `s3://` prefix; both go through the same code path "
        "(Spark reads the files, `pythia.storage` lists them). Columns not listed here are "
        "ignored with a warning (and recorded in the ETL manifest). A file that cannot be read "
        "as Parquet stops the run with an error naming it. Missing hour partitions stop the run "
        "with an error listing them, unless `allow_gaps` (then they are recorded).",
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
        "of the same ETL task (all window days of its hours); the earliest by `ts` is kept "
        "(ties broken by a hash of the raw values, so the choice is deterministic).",
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


def render_data_contract() -> str:
    """The whole ``docs/data-contract.md``: the tables plus the provider, label and ETL rules."""
    return "\n".join([render_tables(), providers.rules_markdown(), splits.rules_markdown()])


if __name__ == "__main__":
    print(render_data_contract())
