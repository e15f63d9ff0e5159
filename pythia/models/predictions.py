"""A candidate's predictions of the scored splits: read chunk by chunk (``tfrecords.iter_numpy``:
from the split Parquet without TensorFlow when the TFRecord manifest names it),
predicted, and streamed into one Parquet file (one row group per chunk), so the train step
never holds a split's rows or probabilities whole. Published atomically (local or s3://).
"""
from __future__ import annotations

import os
import uuid
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pythia import features, storage
from pythia.config import GLOBAL_REGION
from pythia.features import IMPRESSION_ID, REGION, SPLIT, VALIDATION
from pythia.models import crossfit
from pythia.scratch import scratch_dir

PREDICT_CHUNK_ROWS = 65_536  # rows read, predicted and written at a time

PREDICTION_SCHEMA = pa.schema([
    (IMPRESSION_ID, pa.string()),
    (SPLIT, pa.string()),
    (REGION, pa.string()),
    ("scored_by_region", pa.string()),
    ("p_gender", pa.list_(pa.float32())),
    ("p_age", pa.list_(pa.float32())),
    ("p_age_gender", pa.list_(pa.float32())),
])


def _list_column(p: np.ndarray) -> pa.ListArray:
    p = np.asarray(p, dtype=np.float32)
    offsets = np.arange(0, p.size + 1, max(p.shape[1], 1), dtype=np.int32)[: len(p) + 1]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(p.ravel()))


def predictions_table(impression_id: np.ndarray, split: str, region: str, scored_by_region: str,
                      probs: Mapping[str, np.ndarray]) -> pa.Table:
    """One block of prediction rows in the ``docs/interfaces.md`` predictions schema."""
    n = len(impression_id)
    for t in features.TARGETS:
        if len(probs[t]) != n:
            raise ValueError(f"{len(probs[t])} {t} probability rows for {n} impressions")
    return pa.Table.from_arrays([
        pa.array(np.asarray(impression_id, dtype=object).astype(str), pa.string()),
        pa.array([split] * n, pa.string()),
        pa.array([region] * n, pa.string()),
        pa.array([scored_by_region] * n, pa.string()),
        _list_column(probs["gender"]),
        _list_column(probs["age"]),
        _list_column(probs["age_gender"]),
    ], schema=PREDICTION_SCHEMA)


def write_predictions(tables: Iterable[pa.Table], uri: str) -> int:
    """Stream blocks into one Parquet file (a row group per block) and publish it atomically
    at ``uri`` (local or s3://); returns rows. Memory holds one block: the file is written on
    local disk (a hidden sibling, or for S3 a ``pythia.scratch`` folder, swept if this task
    is killed) and renamed or uploaded at the end, so a failure leaves nothing at ``uri``."""
    if storage.is_s3(uri):
        with scratch_dir("pythia-predictions-") as folder:
            local = os.path.join(folder, "predictions.parquet")
            rows = _write_file(tables, local)
            fs, path = storage.filesystem(uri)
            pafs.copy_files(local, path, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=fs)
        return rows
    final = os.path.abspath(uri)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    local = os.path.join(os.path.dirname(final),
                         f".tmp-{uuid.uuid4().hex}-{os.path.basename(final)}")
    try:
        rows = _write_file(tables, local)
        os.replace(local, final)
    finally:
        if os.path.exists(local):
            os.remove(local)
    return rows


def _write_file(tables: Iterable[pa.Table], local: str) -> int:
    rows = 0
    with pq.ParquetWriter(local, PREDICTION_SCHEMA) as writer:
        for table in tables:
            writer.write_table(table.cast(PREDICTION_SCHEMA))
            rows += table.num_rows
    return rows


def _scored_regions(tf_manifest: Mapping, split: str, region: str) -> list[str]:
    """The regions of ``split`` a candidate of ``region`` predicts, each with rows."""
    if split not in tf_manifest["splits"]:
        raise ValueError(f"the TFRecord manifest has no split {split!r} "
                         f"(has: {sorted(tf_manifest['splits'])})")
    entry = tf_manifest["splits"][split]
    by_region = {r: int(n) for r, n in entry.get("rows_by_region", {}).items()}
    scored = sorted(r for r, n in by_region.items() if n > 0) if region == GLOBAL_REGION \
        else [region]
    return [r for r in scored if by_region.get(r, 0) > 0]


def prediction_blocks(model: Any, tf_manifest: Mapping, region: str, splits: Sequence[str],
                      counts: dict[str, int], chunk_rows: int | None = PREDICT_CHUNK_ROWS):
    """Prediction blocks of every split, one region and chunk at a time (``counts`` gets the
    rows predicted per split).

    One region at a time: the region column is exact, and EM prior correction re-estimates
    priors per region; EM needs the region's rows together, so ``chunk_rows=None`` (the
    caller's choice under ``prior_correction='em'``) predicts each region whole.
    """
    from pythia import tfrecords

    for split in splits:
        counts[split] = 0
        for r in _scored_regions(tf_manifest, split, region):
            for data in tfrecords.iter_numpy(tf_manifest, split, [r], chunk_rows=chunk_rows):
                ids = data[IMPRESSION_ID]
                if len(ids) == 0:
                    continue
                # validation: out of fold in the regions the model scores so (crossfit)
                probs = (crossfit.predict_validation(model, data, r) if split == VALIDATION
                         else model.predict_proba(data))
                yield predictions_table(ids, split, r, region, probs)
                counts[split] += len(ids)


def write_split_predictions(model: Any, tf_manifest: Mapping, region: str,
                            splits: Sequence[str], uri: str) -> dict[str, int]:
    """Predict ``splits`` with a fitted model in bounded chunks into the Parquet at ``uri``;
    returns rows predicted per split."""
    em = getattr(model.train_cfg, "prior_correction", None) == "em"
    counts: dict[str, int] = {}
    write_predictions(prediction_blocks(model, tf_manifest, region, splits, counts,
                                        None if em else PREDICT_CHUNK_ROWS), uri)
    return counts
