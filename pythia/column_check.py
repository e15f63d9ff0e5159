"""Before the ETL (``start``): the required columns, read from a few Parquet footers.

A producer that names a column its own way (``event_time`` for ``ts``, ``userId`` for
``user_id``; case alone does not count: ``USER_ID`` is ``user_id``) gets every row quarantined
as ``null_required``; ``pythia.input_health`` says so in
``join_hours``, after the whole ETL. On a cluster that is an hour of work for one line, so
``start`` reads the footer of the first impression file of each window date and of the first
label file of each provider: a required column absent from every sampled file of a table stops
the run there, naming the columns the contract does not know.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from pythia import contract_read
from pythia.contract import IMPRESSIONS, LABEL_VALUES, LABELS
from pythia.input_health import InputHealthError
from pythia.label_health import FLOAT_IDS
from pythia.parquet_footers import read_footer
from pythia.paths import join
from pythia.source_layout import list_data_files

ID_COLUMNS = ("user_id", "impression_id")  # text ids: a float's text meets no other side


def sampled_files(source: str, dates: Iterable[Any],
                  found: Mapping[tuple[str, int], list[str]] | None = None
                  ) -> dict[str, list[str]]:
    """{table: files}: the first impression file of each window date, the first label file of
    each ``provider=NAME`` folder (what ``check_required_columns`` reads the footers of);
    ``found``: the window's ``list_partition_files`` when the caller has it."""
    found = (contract_read.list_partition_files(source, list(dates), range(24))
             if found is None else found)
    first: dict[str, str] = {}
    for (day, _), files in sorted(found.items()):
        if files and day not in first:
            first[day] = files[0]
    providers: dict[str, str] = {}
    for f in list_data_files(join(source, LABELS.name)):  # none: prepare_labels says so
        folder = next((p for p in f.split("/") if p.startswith("provider=")), "")
        providers.setdefault(folder, f)
    return {IMPRESSIONS.name: list(first.values()), LABELS.name: list(providers.values())}


def check_required_columns(samples: Mapping[str, list[str]]) -> list[str]:
    """Read the sampled files' Parquet footers: a required column absent from every sampled
    file of a table stops the run in one line (each row would be quarantined, after the whole
    ETL), naming the columns the contract does not know (a rename?); absent from some:
    warnings, returned, as are ids stored as floats. Names match case-blind
    (``contract_read.match_columns``, which raises on a clash). Labels also need one of
    ``contract.LABEL_VALUES`` (gender, age, yob, age_bucket)."""
    warnings, tables = [], {IMPRESSIONS.name: IMPRESSIONS, LABELS.name: LABELS}
    for name, files in samples.items():
        table = tables[name]
        required = [c.name for c in table.columns if c.required]
        lacking: dict[str, list[tuple[str, list[str]]]] = {}
        floats: dict[str, list[str]] = {}
        for f in files:
            columns = read_footer(f)[0]
            named = contract_read.match_columns(columns, table, f)  # raises on a clash
            for stored, column in named.items():
                if column in ID_COLUMNS and columns[stored].read_as in ("float", "double"):
                    floats.setdefault(f"{column} as {columns[stored].stored}", []).append(f)
            have = set(named.values())
            extras = sorted(set(columns) - set(named)
                            - {p.name for p in table.partition_columns})
            gone = [c for c in required if c not in have]
            if table is LABELS and not have & set(LABEL_VALUES):
                gone.append("/".join(LABEL_VALUES))
            for c in gone:
                lacking.setdefault(c, []).append((f, extras))
        for column, where in lacking.items():
            f, extras = where[0]
            known = (f": it has {', '.join(extras[:6])}, which the contract does not know (a "
                     f"rename?)" if extras else "")
            if len(where) == len(files):
                raise InputHealthError(
                    f"start: no sampled {name} file ({len(files)}: the first of each "
                    f"{'date' if table is IMPRESSIONS else 'provider'}) has the required column "
                    f"{column}, e.g. {f}{known}. Every row would be quarantined after the whole "
                    "ETL: write the column as docs/data-contract.md names it")
            warnings.append(f"{len(where)} of {len(files)} sampled {name} files lack the "
                            f"required column {column} (their rows will be quarantined), e.g. "
                            f"{f}{known}")
        warnings.extend(f"{len(where)} of {len(files)} sampled {name} files store {how}, "
                        f"e.g. {where[0]}: {FLOAT_IDS}" for how, where in floats.items())
    return warnings
