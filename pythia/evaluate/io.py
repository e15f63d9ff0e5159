"""Evaluation I/O at the edges: the split rows and candidates' predictions in, the synthetic
world when the source has one, the report files out; and split rows as bid-time requests for
scoring them with a previous run's bundle. Rows and predictions are read as record batches
(``split_batches``, ``prediction_batches``); ``read_split_frames`` and ``read_predictions``
read them whole for the in-memory reference and tests.
"""
from __future__ import annotations

import io
import json
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pythia import storage
from pythia.config import GLOBAL_REGION
from pythia.parquet_footers import iter_dataset_batches, iter_file_batches
from pythia.evaluate.frames import EVAL_SPLITS, JOINT_TARGET, REQUIRED_SPLITS, WEIGHT_COLUMN
from pythia.features import (IMPRESSION_ID, REQUEST_COLUMNS, SPLIT, TARGETS, TS, TS_SECONDS,
                             VALIDATION, Y_AGE_GENDER)
from pythia.paths import join

REPORT_TABLES = ("metrics", "distributions", "gauge", "gauge_slices", "champions", "headline",
                 "regional_vs_global", "regional_structure", "model_verdicts", "blind_twins")
JSON_TABLES = ("metrics", "champions", "headline", "gauge", "gauge_slices",
               "regional_vs_global", "regional_structure", "model_verdicts", "blind_twins")


# ---------------------------------------------------------------- inputs

def importance_weights(y_age_gender: Any, split_manifest: Mapping[str, Any], split: str,
                       n_age: int) -> np.ndarray:
    """1 / keep-rate of each row's resampling class: weights that turn a resampled split's
    averages into natural-distribution averages (Horvitz-Thompson).

    Args:
        y_age_gender: the rows' AgeGender label indices.
        split_manifest: the ETL's manifest; ``rates[split][class]`` are the keep-rates of the
            ``resample_target`` classes (absent: 1, the split was not resampled).
        split: the split the rows come from.
        n_age: number of age buckets.
    """
    from pythia.etl.splits import target_class
    rates = split_manifest.get("rates", {}).get(split, {})
    target = split_manifest.get("resample_target", JOINT_TARGET)
    by_class = np.array([float(rates.get(str(target_class(c, target, n_age)), 1.0))
                         for c in range(2 * n_age)])
    weight = np.divide(1.0, by_class, out=np.zeros_like(by_class), where=by_class > 0)
    y = pd.to_numeric(pd.Series(y_age_gender), errors="raise").astype("float64").to_numpy()
    labelled = y >= 0  # NaN is not: unlabelled rows are never scored, their weight unused
    if (y[labelled] >= len(weight)).any():
        raise ValueError(f"{split}: AgeGender labels outside [0, {len(weight)}) (e.g. "
                         f"{int(y[y >= len(weight)][0])}); do the age edges match the ETL's?")
    out = np.ones(len(y))
    out[labelled] = weight[y[labelled].astype(np.int64)]
    return out


def read_split_frames(split_manifest: Mapping[str, Any], age_edges: Sequence[int]
                      ) -> dict[str, pd.DataFrame]:
    """The evaluated splits' rows (validation, natural and resampled test day) as pandas; the
    validation rows carry importance weights that undo its class resampling."""
    paths = split_manifest["paths"]
    frames = {split: storage.read_frame(paths[split]) for split in EVAL_SPLITS if split in paths}
    if VALIDATION in frames:
        frames[VALIDATION][WEIGHT_COLUMN] = importance_weights(
            frames[VALIDATION][Y_AGE_GENDER].to_numpy(), split_manifest, VALIDATION,
            len(age_edges))
    return frames


def evaluated_splits(split_manifest: Mapping[str, Any]) -> list[str]:
    """The evaluated splits the ETL wrote (validation and the natural test day must be)."""
    paths = split_manifest.get("paths") or {}
    missing = [s for s in REQUIRED_SPLITS if s not in paths]
    if missing:
        raise ValueError(f"split manifest lacks split(s) {missing}; got {sorted(paths)}")
    return [s for s in EVAL_SPLITS if s in paths]


def _split_dataset(split_manifest: Mapping[str, Any], split: str) -> ds.Dataset:
    uri = split_manifest["paths"][split]
    fs, path = storage.filesystem(uri)
    try:
        return ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no Parquet data at {uri}") from exc


def split_schema(split_manifest: Mapping[str, Any], split: str) -> pa.Schema:
    """The columns of one split's Parquet folder (no row is read)."""
    return _split_dataset(split_manifest, split).schema


def count_split_rows(split_manifest: Mapping[str, Any], split: str) -> int:
    """Rows of one split, from the Parquet footers (no row is read)."""
    return _split_dataset(split_manifest, split).count_rows()


def split_batches(split_manifest: Mapping[str, Any], split: str,
                  columns: Sequence[str] | None = None, batch_rows: int = 65_536
                  ) -> Iterator[pa.RecordBatch]:
    """One split's rows (``columns`` only, when given) as record batches of at most
    ``batch_rows``, file by file and a row group at a time (``iter_dataset_batches``), in the
    dataset's schema."""
    dataset = _split_dataset(split_manifest, split)
    names = list(columns) if columns is not None else dataset.schema.names
    schema = pa.schema([dataset.schema.field(n) for n in names])
    for batch in iter_dataset_batches(dataset, batch_rows, names):
        yield batch.cast(schema) if batch.schema != schema else batch


def _prediction_files(uri: str) -> list[str]:
    fs, path = storage.filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        parts = [f for f in storage.list_files(uri) if f.endswith(".parquet")]
        if not parts:
            raise FileNotFoundError(f"no Parquet files under predictions folder {uri}")
        return parts
    return [uri]


def prediction_batches(uri: str, what: str, batch_rows: int = 65_536
                       ) -> Iterator[pa.RecordBatch]:
    """One candidate's predictions (a Parquet file or a folder of parts) as record batches of
    the columns evaluation reads, ids and split names as plain strings.

    Raises ValueError naming the candidate (``what``) when the ids or split names are absent.
    """
    wanted = [IMPRESSION_ID, SPLIT] + [f"p_{t}" for t in TARGETS]
    for file_uri in _prediction_files(uri):
        fs, path = storage.filesystem(file_uri)
        with fs.open_input_file(path) as f:
            reader = pq.ParquetFile(f)
            names = reader.schema_arrow.names
            for col in (IMPRESSION_ID, SPLIT):
                if col not in names:
                    raise ValueError(f"{what}: predictions lack column {col!r} ({file_uri})")
            columns = [c for c in wanted if c in names]
            for batch in iter_file_batches(reader, batch_rows, columns):
                yield batch.set_column(0, IMPRESSION_ID, batch.column(0).cast(pa.string())) \
                           .set_column(1, SPLIT, batch.column(1).cast(pa.string()))


def truth_batches(world: Any, batch_rows: int = 262_144) -> Iterator[pd.DataFrame]:
    """The synthetic world's true demographics in batches: read from its
    ``truth/users.parquet`` when the world has a root folder (the whole table is never held),
    else ``world.truth()`` cut into batches."""
    root = getattr(world, "root", None)
    uri = join(root, "truth", "users.parquet") if isinstance(root, str) else None
    if uri is None or not storage.exists(uri):
        truth = world.truth()
        for start in range(0, max(len(truth), 1), batch_rows):
            yield truth.iloc[start:start + batch_rows]
        return
    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as f:
        reader = pq.ParquetFile(f)
        for batch in iter_file_batches(reader, batch_rows):
            yield batch.to_pandas()


def read_world(source_path: str | None, fingerprint: str | None = None) -> Any:
    """The synthetic world behind a source (it carries its truth), or None for real data;
    with ``fingerprint`` (the run's ``world_fingerprint``) it must be that very world
    (``synth.check_world``: a one-line ValueError when it was regenerated since)."""
    if not source_path or not storage.exists(join(source_path, "truth")):
        return None
    from pythia.synth import check_world, load_world
    check_world(source_path, fingerprint)
    return load_world(source_path)


def read_predictions(uri: str) -> pa.Table:
    """Read one candidate's predictions: a Parquet file, or a folder of part files."""
    fs, path = storage.filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        parts = [f for f in storage.list_files(uri) if f.endswith(".parquet")]
        if not parts:
            raise FileNotFoundError(f"no Parquet files under predictions folder {uri}")
        return pa.concat_tables([pq.read_table(io.BytesIO(storage.read_bytes(f)))
                                 for f in parts])
    return pq.read_table(io.BytesIO(storage.read_bytes(uri)))


# ---------------------------------------------------------------- the previous bundle

def rows_to_requests(rows: pd.DataFrame) -> list[dict]:
    """Split-Parquet rows as bid-time requests (contract columns, ts in epoch seconds)."""
    cols = [c for c in REQUEST_COLUMNS if c in rows.columns]
    frame = rows[cols].astype(object).where(rows[cols].notna(), None)
    frame[TS] = rows[TS_SECONDS].astype("int64").to_numpy()
    return frame.to_dict("records")


def bundle_scorer(bundle_uri: str) -> Callable[[str, pd.DataFrame], dict[str, np.ndarray]]:
    """A ``previous(region, rows)`` for ``evaluate.run`` that scores split rows with a bid-time
    bundle: a region's rows as the bundle routes them (its region's slot, else the global
    one); ``global`` with the global slot alone, as this run's global champion is scored alone
    (routed, the bundle's regional slots would score their regions' rows, and an identical
    rerun's global champion would look worse than itself)."""
    from pythia.scoring import Scorer
    scorer = Scorer.load(bundle_uri)

    def previous(region: str, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        slot = GLOBAL_REGION if region == GLOBAL_REGION and GLOBAL_REGION in scorer.models \
            else None
        return scorer.score_arrays(rows_to_requests(rows), slot=slot)
    return previous


# ---------------------------------------------------------------- outputs

def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def write_reports(results: Mapping[str, Any], reports_uri: str) -> list[str]:
    """Write tables (Parquet), metrics.json and figures/*.png under ``reports_uri``; returns
    the written URIs."""
    written = []
    for name in REPORT_TABLES:
        df = results.get(name)
        if df is None:
            continue
        uri = join(reports_uri, f"{name}.parquet")
        storage.write_bytes_atomic(uri, _parquet_bytes(df))
        written.append(uri)
    # pandas writes the records (NaN/NA -> null) far faster than json.dumps over dicts
    parts = [f'"{name}": {results[name].to_json(orient="records")}'
             for name in JSON_TABLES if results.get(name) is not None]
    parts.append(f'"gauge_note": {json.dumps(results.get("gauge_note"))}')
    uri = join(reports_uri, "metrics.json")
    storage.write_bytes_atomic(uri, ("{" + ", ".join(parts) + "}").encode())
    written.append(uri)
    for name, png in sorted(results.get("figures", {}).items()):
        uri = join(reports_uri, "figures", f"{name}.png")
        storage.write_bytes_atomic(uri, png)
        written.append(uri)
    return written
