"""Provider metrics and labels on the driver (pyarrow + pandas): no JVM for small tables.

``select_providers`` and ``prepare_labels`` read a few thousand to a few hundred thousand rows;
starting Spark for them costs more than the work. ``use_driver`` decides from the Parquet
footers; the functions here give the same outputs as the Spark path of ``providers`` (same
labels, aside, rejected and quarantine rows, counts, agreement), which tests/test_providers.py
checks by running both on the same inputs.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from pythia import contract, contract_local, label_rules
from pythia.contract_read import RAW_PREFIX
from pythia.etl.io import write_arrow_atomic
from pythia.features import AGE_BUCKET, GENDER, age_bucket_labels
from pythia.parquet_footers import footer_rows
from pythia.paths import join

# Input rows (summed from the Parquet footers of the table's files) up to which the step runs
# on the driver. Measured on a busy 2-core machine: an etl_hour task (etl.hourly_local) of 346k
# impressions took ~6 s and ~400 MB above the process's own (Spark ~55 s); join_hours on the
# default world's 3.2M rows/ + ids/ rows ~8 s and 933 MB for the whole process (Spark ~94 s).
# At the limit a step stays well inside the 8 GB that flows/pythia.toml gives it.
# PYTHIA_DRIVER_MAX_ROWS overrides it; 0 means always Spark.
DRIVER_MAX_ROWS = 4_000_000
DRIVER_MAX_ROWS_ENV = "PYTHIA_DRIVER_MAX_ROWS"

_INT32, _STR, _DATE = pa.int32(), pa.string(), pa.date32()
# Arrow types of the typed label frames' columns as the Spark path writes them (others: string;
# quarantined rows keep every contract column as its raw string).
LABEL_TYPES = {"y_gender": _INT32, "y_age": _INT32, "y_age_gender": _INT32, "age": _INT32,
               "observed_date": _DATE}


def use_driver(files: Sequence[str], params: Any) -> tuple[bool, str]:
    """Whether a step may read ``files`` on the driver, and why (a few words for the step's
    summary line).

    Spark is kept on a cluster (``--spark_master``, ``$SPARK_REMOTE`` or
    ``$PYTHIA_SPARK_MASTER``) and above ``DRIVER_MAX_ROWS`` footer rows."""
    from pythia.etl.session import resolve_target

    kind, target = resolve_target(master=getattr(params, "spark_master", None))
    if kind != "local":
        return False, f"Spark ({kind} {target})"
    limit = int(os.environ.get(DRIVER_MAX_ROWS_ENV, DRIVER_MAX_ROWS))
    rows = sum(footer_rows(f) for f in files)
    if rows > limit:
        return False, f"Spark: {rows} rows > {limit} ({DRIVER_MAX_ROWS_ENV})"
    return True, f"driver, no JVM: {rows} rows <= {limit}"


# step -> where ``on_driver`` sent it and why, until the step's summary line says it
_ENGINES: dict[str, str] = {}


def on_driver(step: str, files: Sequence[str], params: Any, work: Callable[[], Any]) -> Any:
    """``work()`` when ``files`` fit the driver (``use_driver``) and their types convert
    exactly there; else ``None`` and the caller uses Spark. The engine and why (a NeedsSpark
    reason too) are kept for the step's summary line (``engine``), one line per step instead of
    two; ``PYTHIA_VERBOSE=1`` also prints them at once."""
    from pythia.quiet import verbose

    fits, why = use_driver(files, params)
    result = None
    if fits:
        try:
            result = work()
        except contract_local.NeedsSpark as exc:
            fits, why = False, f"Spark ({exc})"
    _ENGINES[step] = why
    if verbose():
        print(f"{step}: {why}")
    return result if fits else None


def engine(step: str, name: str | None = None) -> str:
    """``name`` (default ``step``) and, in brackets, where ``on_driver`` last ran it and why: the head of the
    step's summary line (e.g. ``join_hours (driver, no JVM: 30 rows <= 4000000)``). Said once:
    the note is dropped after it is read."""
    why = _ENGINES.pop(step, None)
    return f"{name or step} ({why})" if why else (name or step)


def write_table(df: pd.DataFrame, uri: str, types: Mapping[str, pa.DataType] | None = None
                ) -> str:
    """Write ``df`` as a one-file Parquet dataset at ``uri`` (atomically, with ``_SUCCESS``);
    columns are strings unless ``types`` names them."""
    schema = pa.schema([(c, (types or {}).get(c, _STR)) for c in df.columns])
    data = pa.Table.from_pydict({c: _values(df[c], schema.field(c).type) for c in df.columns},
                                schema=schema)
    return write_arrow_atomic(data, uri)


def _values(s: pd.Series, kind: pa.DataType) -> list:
    if kind == _INT32:
        return [None if v is None or v != v else int(v) for v in s.astype(object)]
    return [None if v is None or (isinstance(v, float) and v != v) else v
            for v in s.astype(object)]


def read_provider_metrics(source: str, quarantine_dir: str | None = None
                          ) -> tuple[pd.DataFrame, dict]:
    """``providers.read_provider_metrics`` on the driver (NeedsSpark for exotic types)."""
    files = contract.list_table_files(source, "provider_metrics")
    table = contract.PROVIDER_METRICS
    raw, extras = contract_local.read_table(files, table)
    flagged = contract_local.apply_rules(raw, contract_local.rules(table))
    valid, quarantine = contract_local.split_valid(flagged, table)
    counts = contract.count_by_reason(quarantine[contract.REASON].value_counts().items())
    for c in ("coverage", "accuracy", "consistency"):
        valid[c] = pd.to_numeric(valid[c], errors="coerce").astype(float)
    manifest = {"rows_valid": len(valid), "quarantined": counts, "extra_columns": extras,
                "quarantine_path": None}
    if quarantine_dir:
        manifest["quarantine_path"] = write_table(quarantine, quarantine_dir)
    return valid, manifest


def flag_labels(raw: pd.DataFrame, age_edges: Sequence[int]) -> pd.DataFrame:
    """``contract.flag_labels`` on pandas: the contract's rules with the run's age buckets,
    after the 'none of gender/age/age_bucket given' rule."""
    table_rules = contract_local.rules(
        contract.LABELS, allowed={AGE_BUCKET: age_bucket_labels(age_edges)})
    none_given = (lambda df: (df[RAW_PREFIX + GENDER].isna() & df[RAW_PREFIX + "age"].isna()
                              & df[RAW_PREFIX + AGE_BUCKET].isna()).to_numpy(dtype=bool))
    table_rules.insert(0, (none_given, contract.NULL_REQUIRED, f"{GENDER}|age|{AGE_BUCKET}"))
    return contract_local.apply_rules(raw, table_rules)


def _status(bucketed: pd.DataFrame, choice: Mapping[str, str], default: str) -> pd.DataFrame:
    """``providers.prepare_labels``' status per usable/rejected row, and its chosen provider."""
    df = bucketed.copy()
    df["_chosen_provider"] = df["country"].map(lambda c: choice.get(c, default))
    usable = df["reject"].isna().to_numpy()
    is_chosen = usable & (df["provider"] == df["_chosen_provider"]).to_numpy()
    df["_is_chosen"] = is_chosen
    df["_date"] = pd.to_datetime(df["observed_date"].astype(object))
    order = df.sort_values(["_date", "country", "provider", "y_age_gender"],
                           ascending=[False, True, True, True], kind="stable")
    rank = order.groupby(["user_id", "_is_chosen"], sort=False).cumcount() + 1
    rank = rank.reindex(df.index).to_numpy()
    df["status"] = np.select([~usable, ~is_chosen, rank > 1],
                             [df["reject"].astype(object), label_rules.NOT_CHOSEN,
                              label_rules.SUPERSEDED],
                             default=label_rules.LABELLED)
    return df


def _latest_per_provider(df: pd.DataFrame) -> pd.DataFrame:
    order = df.sort_values(["_date", "y_age_gender"], ascending=[False, True], kind="stable")
    latest = order.drop_duplicates(["provider", "country", "user_id"], keep="first")
    return latest


def agreement_table(latest: pd.DataFrame) -> list[dict]:
    """``providers.agreement_table`` on pandas (same rows, same order, Python numbers)."""
    a = latest[["user_id", "country", "provider", "y_gender", "y_age"]]
    pairs = a.merge(a, on=["user_id", "country"], suffixes=("_a", "_b"))
    pairs = pairs[pairs["provider_a"] < pairs["provider_b"]]
    if pairs.empty:
        return []
    pairs = pairs.assign(g=(pairs["y_gender_a"] == pairs["y_gender_b"]).astype(float),
                         a=(pairs["y_age_a"] == pairs["y_age_b"]).astype(float))
    out = (pairs.groupby(["provider_a", "provider_b", "country"], sort=True)
           .agg(shared_users=("user_id", "size"), gender_agreement=("g", "mean"),
                age_agreement=("a", "mean")).reset_index())
    return [{"provider_a": r.provider_a, "provider_b": r.provider_b, "country": r.country,
             "shared_users": int(r.shared_users), "gender_agreement": float(r.gender_agreement),
             "age_agreement": float(r.age_agreement)} for r in out.itertuples()]


def prepare_labels(source: str, choice: Mapping[str, str], age_edges: tuple[int, ...],
                   out_dir: str, default_provider: str, quarantine_dir: str | None = None
                   ) -> dict:
    """``providers.prepare_labels`` on the driver: same rules, files and manifest."""
    files = contract.list_table_files(source, "labels")
    raw, extras = contract_local.read_table(files, contract.LABELS)
    flagged = flag_labels(raw, age_edges)
    valid, quarantine = contract_local.split_valid(flagged, contract.LABELS)
    base = ["user_id", "gender", "age", "age_bucket", "country", "observed_date", "provider"]
    every = _status(label_rules.bucket_labels(valid[base], age_edges), choice, default_provider)
    counts = {**every["status"].value_counts().to_dict(),
              **quarantine[contract.REASON].value_counts().to_dict()}
    winners = every[every["status"] == label_rules.LABELLED].rename(
        columns={"provider": "label_provider"})[label_rules.OUTPUT_COLUMNS]
    kept = every[every["status"].isin(
        [label_rules.LABELLED, label_rules.SUPERSEDED, label_rules.NOT_CHOSEN])]
    latest = _latest_per_provider(kept)
    aside = latest[latest["provider"] != latest["_chosen_provider"]]
    rejected = every[every["status"].isin(label_rules.REJECT_REASONS)]
    aside = aside[["user_id", "country", "provider", "gender", "age_bucket", "y_gender", "y_age",
                   "y_age_gender", "observed_date"]]
    paths = {
        "labels_path": write_table(winners, join(out_dir, "labels"), LABEL_TYPES),
        "aside_path": write_table(aside, join(out_dir, "aside"), LABEL_TYPES),
        "rejected_path": write_table(rejected[[*base, "reject"]], join(out_dir, "rejected"),
                                     LABEL_TYPES),
        "quarantine_path": write_table(quarantine,
                                       quarantine_dir or join(out_dir, "quarantine")),
    }
    return {**paths, "counts": label_rules.label_outcome(counts), "choice": dict(choice),
            "default_provider": default_provider, "age_edges": list(age_edges),
            "agreement": agreement_table(latest), "extra_columns": extras}
