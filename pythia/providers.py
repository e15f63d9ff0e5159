"""Label providers: pick one per country from quality metrics, then one seed label per user.

Port of the notebooks ``0_owdi-provider-consistency`` (provider scores, overrides) and
``0_owdi_preprocess`` (raw provider labels -> one label per user with age buckets).
"""
from __future__ import annotations

import datetime as dt
import math
from typing import Any, Iterator, Mapping, Sequence

import pandas as pd
import pyarrow.fs as pafs

from pythia import contract, contract_read, storage
from pythia.label_rules import (AGE_BELOW_FIRST_EDGE, AGE_SHIFT,  # noqa: F401 (API)
                                BUCKET_YEARS, CONFLICT, IMPOSSIBLE_AGE, INCOMPLETE_LABEL,
                                LABELLED, NOT_CHOSEN, OUTPUT_COLUMNS, REJECT_REASONS,
                                SUPERSEDED, bucket_labels, conflicts, label_age, label_lines,
                                label_outcome, status_counts)
from pythia.label_agreement import agreement_table, latest_per_provider
from pythia.paths import join
from pythia.source_layout import list_data_files

# Score of a (provider, country): a weighted mean of the three quality figures, each averaged
# over the RECENT_DAYS newest dates of the metrics table. Accuracy matters most (labels are the
# training target); consistency (stability of a user's label over time) next; coverage last,
# since it only changes how many impressions get a label, not their quality.
SCORE_WEIGHTS: Mapping[str, float] = {"accuracy": 0.5, "consistency": 0.3, "coverage": 0.2}
RECENT_DAYS = 7

CHOICE_COLUMNS = ["country", "provider", "score", "accuracy", "consistency", "coverage",
                  "n_dates", "rank", "chosen", "reason"]


# ------------------------------------------------------------------------------- selection

def score_providers(metrics: pd.DataFrame, recent_days: int = RECENT_DAYS) -> pd.DataFrame:
    """One row per (provider, country) with recent mean metrics, score and rank in its country.

    score = 0.5 * accuracy + 0.3 * consistency + 0.2 * coverage, each the mean over the metric
    rows dated within ``recent_days`` of the newest date in ``metrics`` (nulls ignored; a figure
    with no value counts as 0). Rank 1 is the best score of the country (ties: provider name).
    """
    missing = [c for c in ("provider", "country", "date", *SCORE_WEIGHTS) if c not in metrics]
    if missing:
        raise ValueError(f"provider metrics lack column(s) {missing}")
    if metrics.empty:
        return pd.DataFrame(columns=CHOICE_COLUMNS[:-2])
    dates = pd.to_datetime(metrics["date"])
    recent = metrics[dates > dates.max() - pd.Timedelta(days=recent_days)]
    grouped = recent.groupby(["country", "provider"], sort=True)
    table = grouped[list(SCORE_WEIGHTS)].mean()
    table["n_dates"] = grouped["date"].nunique()
    table = table.reset_index()
    table["score"] = sum(w * table[m].fillna(0.0) for m, w in SCORE_WEIGHTS.items())
    table = table.sort_values(["country", "score", "provider"], ascending=[True, False, True])
    table["rank"] = table.groupby("country").cumcount() + 1
    return table[CHOICE_COLUMNS[:-2]].reset_index(drop=True)


def select_providers(metrics: pd.DataFrame, overrides: Mapping[str, str],
                     countries: Sequence[str], known_providers: Sequence[str] = (),
                     recent_days: int = RECENT_DAYS
                     ) -> tuple[pd.DataFrame, dict[str, str], list[str]]:
    """Choose the label provider of each country: override, else best score, else best global.

    Args:
        metrics: provider metric rows (contract table ``provider_metrics``).
        overrides: country -> provider that wins regardless of scores (e.g. ``{'US': 'lucid'}``).
            An override applies where its country is among ``countries`` and its provider
            exists; otherwise it is skipped with a warning (a default must not assume our
            synthetic world's providers).
        countries: the countries to decide for (those of the source's provider metrics).
        known_providers: providers that exist without metrics (e.g. the ``labels/`` folders).
        recent_days: metric look-back, see ``score_providers``.

    Returns:
        ``(provider_choice, choice, warnings)``: every candidate with score, rank, ``chosen``
        and a ``reason`` for the winner; the map country -> provider; warning texts. A country
        without metrics gets the provider with the best mean score over countries.
    """
    scored = score_providers(metrics, recent_days)
    known = set(scored["provider"]) | set(metrics["provider"]) | set(known_providers)
    overrides, notes = _applicable_overrides(overrides, countries, known)
    global_scores = scored.groupby("provider")["score"].mean().sort_index()
    best_global = (global_scores.sort_values(ascending=False, kind="stable").index[0]
                   if len(global_scores) else None)
    rows, choice = [], {}
    for country in sorted(set(countries)):
        cand = scored[scored["country"] == country].to_dict("records")
        for r in cand:
            r.update(chosen=False, reason="")
        if country in overrides:
            winner = overrides[country]
            hit = [r for r in cand if r["provider"] == winner]
            if not hit:
                hit = [{"country": country, "provider": winner, "score": math.nan,
                        "accuracy": math.nan, "consistency": math.nan, "coverage": math.nan,
                        "n_dates": 0, "rank": math.nan}]
                cand.append(hit[0])
            hit[0].update(chosen=True, reason="override")
        elif cand:
            winner = cand[0]["provider"]
            nxt = (f"vs next {cand[1]['score']:.2f} ({cand[1]['provider']})" if len(cand) > 1
                   else "(only candidate)")
            cand[0].update(chosen=True, reason=f"best score {cand[0]['score']:.2f} {nxt}")
        else:
            if best_global is None:
                raise ValueError(f"no provider metrics at all and no override for {country}")
            winner = best_global
            notes.append(f"no metrics for {country}: using the best global provider "
                         f"{winner} (mean score {global_scores[winner]:.2f})")
            cand.append({"country": country, "provider": winner,
                         "score": float(global_scores[winner]), "accuracy": math.nan,
                         "consistency": math.nan, "coverage": math.nan, "n_dates": 0, "rank": 1,
                         "chosen": True,
                         "reason": f"no metrics for {country}: best global provider"})
        choice[country] = winner
        rows.extend(cand)
    table = pd.DataFrame(rows, columns=CHOICE_COLUMNS)
    return table, choice, notes


def _applicable_overrides(overrides: Mapping[str, str], countries: Sequence[str],
                          known: set[str]) -> tuple[dict[str, str], list[str]]:
    """The overrides whose country and provider exist here, and a warning per skipped one."""
    applied, notes = {}, []
    for country, provider in sorted(overrides.items()):
        if provider not in known:
            notes.append(f"provider override {country}={provider} skipped: this source has no "
                         f"provider {provider!r} (providers: {', '.join(sorted(known))})")
        elif country not in set(countries):
            notes.append(f"provider override {country}={provider} skipped: no {country} rows "
                         "in this source's provider metrics")
        else:
            applied[country] = provider
    return applied, notes


def best_global_provider(metrics: pd.DataFrame, recent_days: int = RECENT_DAYS) -> str:
    """The provider with the best mean score over countries (the default for new countries)."""
    scored = score_providers(metrics, recent_days)
    if scored.empty:
        raise ValueError("no provider metrics: cannot pick a global provider")
    means = scored.groupby("provider")["score"].mean().sort_index()
    return str(means.sort_values(ascending=False, kind="stable").index[0])


def list_providers(source: str) -> list[str]:
    """Provider names that have a ``labels/provider=NAME/`` folder under ``source``."""
    fs, path = storage.filesystem(join(source, "labels"))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(i.base_name.split("=", 1)[1] for i in infos
                  if i.type == pafs.FileType.Directory and i.base_name.startswith("provider="))


def read_provider_metrics(spark: Any, source: str, quarantine_dir: str | None = None
                          ) -> tuple[pd.DataFrame, dict]:
    """Valid provider metric rows as pandas, and counts.

    The quarantined rows are written to ``quarantine_dir`` itself when it is given.
    """
    from pythia.etl.io import write_parquet_atomic

    files = contract.list_table_files(source, "provider_metrics")
    raw, extras = contract_read.read_table(spark, files, contract.PROVIDER_METRICS)
    valid, quarantine = contract.validate_provider_metrics(raw)
    pdf = valid.toPandas()
    counts = contract.count_by_reason(quarantine.groupBy("reason").count().collect())
    manifest = {"rows_valid": len(pdf), "quarantined": counts, "extra_columns": extras,
                "quarantine_path": None}
    if quarantine_dir:
        manifest["quarantine_path"] = write_parquet_atomic(quarantine, quarantine_dir)
    return pdf, manifest


# ------------------------------------------------------------------------------- labels

def prepare_labels(spark: Any, source: str, choice: Mapping[str, str],
                   age_edges: tuple[int, ...], out_dir: str, default_provider: str,
                   quarantine_dir: str | None = None, as_of: dt.date | None = None) -> dict:
    # Long on purpose: one persisted frame feeds every write and count; split into functions
    # it would be re-computed or held past its unpersist.
    """One label per user from the provider chosen for the label row's country.

    Rules (each tested):
      * a label row is used only if its provider is ``choice[row.country]`` (countries absent
        from ``choice`` use ``default_provider``); other usable rows are written aside;
      * a user with several usable chosen rows (several dates, or several countries) gets the
        one with the latest ``observed_date``; ties: country, then provider, alphabetically;
      * labels are user-level attributes: an observation dated after the window still applies;
        an age is moved to ``as_of`` (the test day) by the whole years since it was observed;
      * impossible ages, ages below the first edge and rows lacking gender or age are rejected
        and counted; contract violations are quarantined.

    Writes ``labels/`` (OUTPUT_COLUMNS), ``aside/`` (other providers' latest label per user and
    country), ``rejected/`` under ``out_dir`` and the quarantined rows to ``quarantine_dir`` itself
    (default ``<out_dir>/quarantine``). Returns a manifest: paths, counts per outcome (they sum
    to ``rows_in``), the inter-provider agreement records, extra columns.
    """
    from pyspark import StorageLevel
    from pyspark.sql import Window as W
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from pythia.etl.io import write_parquet_atomic

    files = contract.list_table_files(source, "labels")
    # read_table prints extra columns and naive timestamps to the step's log
    raw, extras = contract_read.read_table(spark, files, contract.LABELS)
    flagged = contract.flag_labels(raw, age_edges)
    base = ["user_id", *contract.LABEL_VALUES, "country", "observed_date", "provider"]
    valid = flagged.filter(F.col("reason").isNull()).select(*base)
    schema = T.StructType(valid.schema.fields + [T.StructField("reject", T.StringType())] + [
        T.StructField(c, T.IntegerType()) for c in ("y_gender", "y_age", "y_age_gender",
                                                    AGE_SHIFT, BUCKET_YEARS)])
    edges = tuple(age_edges)

    def _bucket(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in frames:
            yield bucket_labels(pdf, edges, as_of)[[f.name for f in schema.fields]]

    bucketed = valid.mapInPandas(_bucket, schema)
    chosen_provider = F.lit(default_provider)
    if choice:  # an empty create_map() has no key type and cannot be indexed by a string
        mapping = F.create_map(*[x for c, p in sorted(choice.items())
                                 for x in (F.lit(c), F.lit(p))])
        chosen_provider = F.coalesce(mapping[F.col("country")], chosen_provider)
    usable = F.col("reject").isNull()
    is_chosen = usable & (F.col("provider") == chosen_provider)
    rank = F.row_number().over(
        W.partitionBy("user_id", is_chosen).orderBy(
            F.col("observed_date").desc(), "country", "provider", "y_age_gender"))
    status = (F.when(~usable, F.col("reject")).when(~is_chosen, F.lit(NOT_CHOSEN))
              .when(rank > 1, F.lit(SUPERSEDED)).otherwise(F.lit(LABELLED)))
    raw_cols = [contract.RAW_PREFIX + c for c in contract.LABELS.names]
    q = flagged.filter(F.col("reason").isNotNull()).select(
        *raw_cols, "provider", "reason", "reason_column", F.col("reason").alias("status"))
    same_day = W.partitionBy("user_id", is_chosen, "observed_date")
    split = F.min("y_age_gender").over(same_day) != F.max("y_age_gender").over(same_day)
    every = (bucketed.withColumn("status", status)
             .withColumn(CONFLICT, F.when((F.col("status") == LABELLED) & split,
                                          F.col("provider")).otherwise(F.lit("")))
             .unionByName(q, allowMissingColumns=True)
             .persist(StorageLevel.DISK_ONLY))  # not in the heap: docs/scaling.md section 8
    qdir = quarantine_dir or join(out_dir, "quarantine")
    try:
        tally = [tuple(r) for r in every.groupBy("status", AGE_SHIFT, BUCKET_YEARS, CONFLICT)
                 .count().collect()]
        winners = every.filter(F.col("status") == LABELLED).select(
            "user_id", "country", "gender", "age_bucket", "y_gender", "y_age", "y_age_gender",
            F.col("provider").alias("label_provider"), "observed_date")
        labels_path = write_parquet_atomic(winners, join(out_dir, "labels"))
        latest = latest_per_provider(every.filter(F.col("status").isin(
            LABELLED, SUPERSEDED, NOT_CHOSEN)))
        aside_path = write_parquet_atomic(
            latest.filter(F.col("provider") != chosen_provider), join(out_dir, "aside"))
        rejected_path = write_parquet_atomic(
            every.filter(F.col("status").isin(*REJECT_REASONS)).select(*base, "reject"),
            join(out_dir, "rejected"))
        quarantine_path = write_parquet_atomic(
            every.filter(F.col("reason").isNotNull()).select(
                *[F.col(r).alias(c) for r, c in zip(raw_cols, contract.LABELS.names)],
                "provider", "reason", "reason_column"),
            qdir)
        agreement = agreement_table(latest)
    finally:
        every.unpersist()
    return {"labels_path": labels_path, "aside_path": aside_path,
            "rejected_path": rejected_path, "quarantine_path": quarantine_path,
            "counts": label_outcome(status_counts(tally)), "choice": dict(choice),
            "default_provider": default_provider, "age_edges": list(age_edges),
            "agreement": agreement, "extra_columns": extras, "label_age": label_age(tally, as_of),
            "conflicts": conflicts(tally)}


# ------------------------------------------------------------------------------- the steps

def choose(source_path: str, params: Any, paths: Any) -> tuple[pd.DataFrame, dict, list[str]]:
    """The select_providers step: score every (provider, country), choose one per country.

    The metrics are read on the driver when small (``providers_local.use_driver``), else with
    Spark. Returns the ``provider_choice`` table, ``{'by_country': {country: provider},
    'default': best global provider, 'metrics': read/quarantine counts}`` and the warnings."""
    from pythia import providers_local
    from pythia.errors import user_input_errors
    from pythia.etl.session import spark_session
    qdir = join(paths.quarantine, "provider_metrics")
    known = list_providers(source_path)
    files = list_data_files(join(source_path, "provider_metrics"))
    no_table = not files
    with user_input_errors("select_providers"):
        if not no_table:
            metrics, read_manifest = providers_local.on_driver(
                "select_providers", files, params,
                lambda: providers_local.read_provider_metrics(source_path, qdir)) or (None, None)
        else:  # one provider needs no choice; several do
            metrics, read_manifest = _no_metrics(source_path, known)
        if metrics is None:
            with spark_session("pythia-providers", params, source_path) as spark:
                metrics, read_manifest = read_provider_metrics(spark, source_path, qdir)
    countries = sorted(set(metrics["country"].dropna()))
    choice, mapping, warns = select_providers(
        metrics, dict(params.provider_overrides), countries, known_providers=known)
    if no_table:
        warns = [f"no provider_metrics under {source_path}: the labels' one provider, "
                 f"{known[0]}, labels every country", *warns]
    for w in warns:  # printed, not warnings.warn: Metaflow would silence those
        print(f"warning: {w}")
    default = known[0] if no_table else best_global_provider(metrics)
    print(f"{providers_local.engine('select_providers')}: {read_manifest['rows_valid']} metric "
          "rows used, "
          f"{_quarantined(read_manifest['quarantined'])}; providers chosen: "
          + ", ".join(f"{c}={p}" for c, p in sorted(mapping.items()))
          + f"; default for other countries: {default}")
    return choice, {"by_country": mapping, "default": default, "metrics": read_manifest}, \
        list(warns)


def _no_metrics(source_path: str, known: Sequence[str]) -> tuple[pd.DataFrame, dict]:
    """No provider_metrics table: empty metrics for one labels provider, else a one-line error."""
    if len(known) != 1:
        held = (f"labels/ holds {len(known)} providers ({', '.join(known)})" if known
                else "labels/ holds no provider=NAME folder")
        raise ValueError(f"select_providers: no provider_metrics files under "
                         f"{join(source_path, 'provider_metrics')} and {held}: write the "
                         "provider_metrics table (docs/data-contract.md) to choose among "
                         "several, or give the source one provider's labels")
    empty = pd.DataFrame({c.name: pd.Series(dtype=object)
                          for c in contract.PROVIDER_METRICS.columns})
    return empty, {"rows_valid": 0, "quarantined": {}, "extra_columns": [],
                   "quarantine_path": None}


def _quarantined(by_reason: Mapping[str, int]) -> str:
    """'N quarantined (reason: n, ...)' for the step's summary line."""
    hits = {r: n for r, n in by_reason.items() if n}
    detail = " (" + ", ".join(f"{r}: {n}" for r, n in hits.items()) + ")" if hits else ""
    return f"{sum(hits.values())} quarantined{detail}"


def run(source_path: str, provider_map: Mapping[str, Any], params: Any, paths: Any,
        as_of: dt.date | None = None) -> dict:
    """The prepare_labels step: one label per user from the chosen provider (a manifest),
    ages moved to ``as_of``. On the driver when the labels are small
    (``providers_local.use_driver``), else Spark."""
    from pythia import input_health, label_health, providers_local
    from pythia.errors import user_input_errors
    from pythia.etl.session import spark_session
    args = (dict(provider_map["by_country"]), params.etl.age_edges, paths.labels,
            provider_map["default"])
    qdir = join(paths.quarantine, "labels")
    with user_input_errors("prepare_labels"):
        files = contract.list_table_files(source_path, "labels")
        manifest = providers_local.on_driver(
            "prepare_labels", files, params,
            lambda: providers_local.prepare_labels(source_path, *args, qdir, as_of))
        if manifest is None:
            with spark_session("pythia-labels", params, source_path) as spark:
                manifest = prepare_labels(spark, source_path, *args, qdir, as_of)
    c = manifest["counts"]
    summary = {**input_health.summarize(manifest["quarantine_path"], contract.LABELS),
               "extra_columns": list(manifest.get("extra_columns") or [])} \
        if sum(c["quarantined"].values()) else None  # extras: a renamed required column?
    manifest["quarantine_summary"] = summary
    said = input_health.rejected_rows(c) is not None  # its line reads the rejected rows
    why = (label_health.rejected_text(manifest["rejected_path"])
           if said or (not c["users"] and sum(c["rejected"].values())) else None)
    manifest["rejected_text"] = why  # pythia report repeats it
    if not c["users"]:
        raise label_health.no_labels_error(c, summary or {}, contract.LABELS,
                                           provider_map["by_country"], qdir,
                                           list_providers(source_path), why)
    if said:
        print(f"warning: prepare_labels: {input_health.rejected_line(c, why)}; rows under "
              f"{manifest['rejected_path']}")
    input_health.check_quarantined("prepare_labels", "label rows", c["quarantined"],
                                   c["rows_in"], summary or {}, contract.LABELS,
                                   params.etl.max_quarantined, qdir)
    print(f"{providers_local.engine('prepare_labels')}: {c['rows_in']} label rows -> "
          f"{c['users']} users labelled; "
          f"{_quarantined(c['quarantined'])}, {sum(c['rejected'].values())} rejected, "
          f"{c[NOT_CHOSEN]} from other providers, {c[SUPERSEDED]} superseded; wrote "
          f"{manifest['labels_path']}")
    for line in label_lines(manifest):
        print(line)
    return manifest
