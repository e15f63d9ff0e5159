"""Provider metrics and labels on the driver (pyarrow + pandas): no JVM for small tables.

``select_providers`` and ``prepare_labels`` read a few thousand to a few hundred thousand rows;
starting Spark for them costs more than the work. ``use_driver`` decides from the Parquet
footers; the functions here give the same outputs as the Spark path of ``providers`` (same
labels, aside, rejected and quarantine rows, counts, agreement), which tests/test_providers.py
checks by running both on the same inputs.
"""
from __future__ import annotations

import datetime as dt
import os
import pickle
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from pythia import contract, contract_local, label_rules
from pythia.contract_read import RAW_PREFIX
from pythia.etl.io import ArrowDatasetWriter, write_arrow_atomic
from pythia.features import AGE_BUCKET, age_bucket_labels
from pythia.parquet_footers import footer_rows
from pythia.paths import join
from pythia.scratch import scratch_dir

# Input rows (summed from the Parquet footers of the table's files) up to which the step runs
# on the driver. Measured on a busy 2-core machine: an etl_hour task (etl.hourly_local) of 346k
# impressions took ~6 s and ~400 MB above the process's own (Spark ~55 s); join_hours on the
# default world's 3.2M rows/ + ids/ rows ~8 s and 933 MB for the whole process (Spark ~94 s).
# At the limit a step stays well inside the 8 GB that flows/pythia.toml gives it; since
# session 28 prepare_labels and etl_hour hold a bucket / a batch, not the table, on the driver.
# PYTHIA_DRIVER_MAX_ROWS overrides it; 0 means always Spark.
DRIVER_MAX_ROWS = 4_000_000
DRIVER_MAX_ROWS_ENV = "PYTHIA_DRIVER_MAX_ROWS"
# Steps whose driver path holds a batch, a bucket or a row group, not the table (session 28:
# peak RSS 1.18x / 1.33x / 1.28x from 1x to 8x the default world; join_hours since session 30,
# etl.splits_local): on a local run they stay on the driver at any size unless
# PYTHIA_DRIVER_MAX_ROWS is set.
STREAMING_STEPS = frozenset({"prepare_labels", "etl_hour", "join_hours", "to_tfrecords"})

_INT32, _STR, _DATE = pa.int32(), pa.string(), pa.date32()
# Arrow types of the typed label frames' columns as the Spark path writes them (others: string;
# quarantined rows keep every contract column as its raw string).
LABEL_TYPES = {"y_gender": _INT32, "y_age": _INT32, "y_age_gender": _INT32, "age": _INT32,
               contract.YOB: _INT32, "observed_date": _DATE}


def use_driver(files: Sequence[str], params: Any, step: str | None = None
               ) -> tuple[bool, str]:
    """Whether ``step`` may read ``files`` on the driver, and why (a few words for the step's
    summary line).

    Spark is kept on a cluster (``--spark_master``, ``$SPARK_REMOTE`` or
    ``$PYTHIA_SPARK_MASTER``) and above ``DRIVER_MAX_ROWS`` footer rows, a limit the
    ``STREAMING_STEPS`` have only when ``$PYTHIA_DRIVER_MAX_ROWS`` sets it."""
    from pythia.etl.session import resolve_target

    kind, target = resolve_target(master=getattr(params, "spark_master", None))
    if kind != "local":
        return False, f"Spark ({kind} {target})"
    rows = sum(footer_rows(f) for f in files)
    if step in STREAMING_STEPS and DRIVER_MAX_ROWS_ENV not in os.environ:
        return True, f"driver, no JVM: {rows} rows, streamed"
    limit = int(os.environ.get(DRIVER_MAX_ROWS_ENV, DRIVER_MAX_ROWS))
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

    fits, why = use_driver(files, params, step)
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
    return write_arrow_atomic(_arrow(df, types), uri)


def _arrow(df: pd.DataFrame, types: Mapping[str, pa.DataType] | None = None) -> pa.Table:
    """``df`` as ``write_table`` writes it: strings unless ``types`` names the column."""
    schema = pa.schema([(c, (types or {}).get(c, _STR)) for c in df.columns])
    return pa.Table.from_pydict({c: _values(df[c], schema.field(c).type) for c in df.columns},
                                schema=schema)


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
    none_given = (lambda df: np.logical_and.reduce(
        [df[RAW_PREFIX + c].isna().to_numpy(dtype=bool) for c in contract.LABEL_VALUES]))
    table_rules.insert(0, (none_given, contract.NULL_REQUIRED, "|".join(contract.LABEL_VALUES)))
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
    same_day = df.groupby(["user_id", "_is_chosen", "_date"], sort=False)["y_age_gender"]
    split = (same_day.transform("min") != same_day.transform("max")).to_numpy()
    df[label_rules.CONFLICT] = np.where((df["status"] == label_rules.LABELLED) & split,
                                        df["provider"], "")
    return df


def _latest_per_provider(df: pd.DataFrame) -> pd.DataFrame:
    order = df.sort_values(["_date", "y_age_gender"], ascending=[False, True], kind="stable")
    latest = order.drop_duplicates(["provider", "country", "user_id"], keep="first")
    return latest


def _agreement_sums(latest: pd.DataFrame) -> pd.DataFrame:
    """Per (provider_a, provider_b, country): users both providers label and how many of them
    they agree on (gender, age bucket): sums that add up across buckets of users."""
    a = latest[["user_id", "country", "provider", "y_gender", "y_age"]]
    pairs = a.merge(a, on=["user_id", "country"], suffixes=("_a", "_b"))
    pairs = pairs[pairs["provider_a"] < pairs["provider_b"]]
    pairs = pairs.assign(g=(pairs["y_gender_a"] == pairs["y_gender_b"]).astype(float),
                         a=(pairs["y_age_a"] == pairs["y_age_b"]).astype(float))
    return (pairs.groupby(["provider_a", "provider_b", "country"], sort=False)
            .agg(shared_users=("user_id", "size"), g=("g", "sum"), a=("a", "sum"))
            .reset_index())


def agreement_table(sums: Sequence[pd.DataFrame]) -> list[dict]:
    """``providers.agreement_table`` from ``_agreement_sums`` of buckets of users (same rows,
    same order, Python numbers; a mean of 0/1 values is its exact sum over its count)."""
    parts = [s for s in sums if len(s)]
    if not parts:
        return []
    out = (pd.concat(parts).groupby(["provider_a", "provider_b", "country"], sort=True)
           .sum().reset_index())
    return [{"provider_a": r.provider_a, "provider_b": r.provider_b, "country": r.country,
             "shared_users": int(r.shared_users),
             "gender_agreement": float(r.g / r.shared_users),
             "age_agreement": float(r.a / r.shared_users)} for r in out.itertuples()]


# Label rows are read LABEL_BATCH_ROWS at a time and spilled, by a hash of user_id, into
# ceil(rows / LABEL_BUCKET_ROWS) buckets resolved one at a time: every rule of the step looks
# at one user's rows only, and a bucket holds them all. A row costs ~1.3 KB as pandas objects
# (session 27: 162k rows, 365 MB; 1.29M rows, 1711 MB when held whole), so the step's peak is
# about a bucket's plus a batch's whatever the table's size (session 28, docs/scaling.md).
LABEL_BATCH_ROWS = 50_000
LABEL_BUCKET_ROWS = 100_000
_BASE = ["user_id", *contract.LABEL_VALUES, "country", "observed_date", "provider"]
_ASIDE = ["user_id", "country", "provider", "gender", "age_bucket", "y_gender", "y_age",
          "y_age_gender", "observed_date"]


def _spill(files: Sequence[str], age_edges: tuple[int, ...], n_buckets: int, folder: str,
           quarantine: ArrowDatasetWriter) -> tuple[list[str], dict[str, int]]:
    """Pass 1: flag every batch, write its quarantined rows, and append its valid rows (in
    read order) to the pickle file of their user's bucket. Returns the extra column names and
    the quarantined rows per reason."""
    batches, extras = contract_local.iter_table(files, contract.LABELS, LABEL_BATCH_ROWS)
    paths = [os.path.join(folder, f"bucket-{k}.pkl") for k in range(n_buckets)]
    handles = [open(p, "wb") for p in paths]
    quarantined: dict[str, int] = {}
    try:
        for raw in batches:
            valid, bad = contract_local.split_valid(flag_labels(raw, age_edges), contract.LABELS)
            quarantine.write(_arrow(bad))
            bucket = pd.util.hash_array(valid["user_id"].to_numpy(dtype=object)) % n_buckets
            for k in np.unique(bucket):
                pickle.dump(valid.loc[bucket == k, _BASE], handles[k],
                            protocol=pickle.HIGHEST_PROTOCOL)
            for reason, n in bad[contract.REASON].value_counts().items():
                quarantined[reason] = quarantined.get(reason, 0) + int(n)
    finally:
        for h in handles:
            h.close()
    return extras, quarantined


def _bucket_rows(path: str) -> pd.DataFrame:
    frames = []
    with open(path, "rb") as f:
        while True:
            try:
                frames.append(pickle.load(f))
            except EOFError:
                break
    if not frames:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in _BASE})
    return pd.concat(frames, ignore_index=True)


def prepare_labels(source: str, choice: Mapping[str, str], age_edges: tuple[int, ...],
                   out_dir: str, default_provider: str, quarantine_dir: str | None = None,
                   as_of: dt.date | None = None) -> dict:
    """``providers.prepare_labels`` on the driver: same rules, files and manifest, in bounded
    memory (``LABEL_BUCKET_ROWS``); rows are written bucket by bucket."""
    files = contract.list_table_files(source, "labels")
    n_buckets = max(1, -(-sum(footer_rows(f) for f in files) // LABEL_BUCKET_ROWS))
    out = {"labels_path": ArrowDatasetWriter(join(out_dir, "labels")),
           "aside_path": ArrowDatasetWriter(join(out_dir, "aside")),
           "rejected_path": ArrowDatasetWriter(join(out_dir, "rejected")),
           "quarantine_path": ArrowDatasetWriter(quarantine_dir or join(out_dir, "quarantine"))}
    counts: dict[str, int] = {}
    tally: dict[tuple, int] = {}  # (status, age_shift, bucket_years, conflict) -> rows
    sums = []
    try:
        with scratch_dir("pythia-labels-") as folder:  # locked: swept if this task dies
            extras, quarantined = _spill(files, age_edges, n_buckets, folder,
                                         out["quarantine_path"])
            counts.update(quarantined)
            for k in range(n_buckets):
                every = _status(label_rules.bucket_labels(
                    _bucket_rows(os.path.join(folder, f"bucket-{k}.pkl")), age_edges, as_of),
                    choice, default_provider)
                for key, n in every.groupby(["status", label_rules.AGE_SHIFT,
                                             label_rules.BUCKET_YEARS,
                                             label_rules.CONFLICT]).size().items():
                    tally[key] = tally.get(key, 0) + int(n)
                winners = every[every["status"] == label_rules.LABELLED].rename(
                    columns={"provider": "label_provider"})[label_rules.OUTPUT_COLUMNS]
                kept = every[every["status"].isin(
                    [label_rules.LABELLED, label_rules.SUPERSEDED, label_rules.NOT_CHOSEN])]
                latest = _latest_per_provider(kept)
                aside = latest[latest["provider"] != latest["_chosen_provider"]]
                rejected = every[every["status"].isin(label_rules.REJECT_REASONS)]
                out["labels_path"].write(_arrow(winners, LABEL_TYPES))
                out["aside_path"].write(_arrow(aside[_ASIDE], LABEL_TYPES))
                out["rejected_path"].write(_arrow(rejected[[*_BASE, "reject"]], LABEL_TYPES))
                sums.append(_agreement_sums(latest))
        paths = {key: writer.close() for key, writer in out.items()}
    finally:
        for writer in out.values():
            writer.abort()
    rows = [(*key, n) for key, n in sorted(tally.items())]
    counts.update(label_rules.status_counts(rows))
    return {**paths, "counts": label_rules.label_outcome(counts), "choice": dict(choice),
            "default_provider": default_provider, "age_edges": list(age_edges),
            "agreement": agreement_table(sums), "extra_columns": extras,
            "label_age": label_rules.label_age(rows, as_of),
            "conflicts": label_rules.conflicts(rows)}
