"""The training entry point the flow's ``train`` step calls: one (model, region, config) candidate.

Reads the region's TFRecords (via ``pythia.tfrecords``), fits with early stopping, predicts the
three scored splits under natural priors into ONE Parquet, saves the model folder, and returns
a small JSON-able summary for the ``evaluate`` step.
"""
from __future__ import annotations

import io
import math
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pythia import features, storage
from pythia.config import GLOBAL_REGION, TrainConfig

SCORED_SPLITS = ("validation", "test_natural", "test_resampled")
# Models that stream TFRecords through tf.data; the others load numpy arrays.
DATASET_MODELS = ("mlp",)

PREDICTION_SCHEMA = pa.schema([
    ("impression_id", pa.string()),
    ("split", pa.string()),
    ("region", pa.string()),
    ("scored_by_region", pa.string()),
    ("p_gender", pa.list_(pa.float32())),
    ("p_age", pa.list_(pa.float32())),
    ("p_age_gender", pa.list_(pa.float32())),
])


def split_rows(manifest: Mapping, split: str, region: str) -> int:
    """Rows of ``split`` for ``region`` ('global' = all regions) according to the manifest."""
    try:
        entry = manifest["splits"][split]
    except KeyError:
        raise ValueError(f"the TFRecord manifest has no split {split!r} "
                         f"(has: {sorted(manifest.get('splits', {}))})") from None
    if region == GLOBAL_REGION:
        return int(entry.get("rows", 0))
    return int(entry.get("rows_by_region", {}).get(region, 0))


def split_regions(manifest: Mapping, split: str) -> list[str]:
    """Regions with rows in ``split``, sorted."""
    by_region = manifest["splits"].get(split, {}).get("rows_by_region", {})
    return sorted(r for r, n in by_region.items() if int(n) > 0)


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


def write_predictions(tables: list[pa.Table], uri: str) -> int:
    """Concatenate blocks and write one Parquet atomically (local or s3://); returns rows."""
    table = pa.concat_tables(tables) if tables else PREDICTION_SCHEMA.empty_table()
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes_atomic(uri, buf.getvalue())
    return table.num_rows


def _finite(x: Any) -> Any:
    """JSON-safe float (NaN -> None)."""
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x


def train_candidate(model_name: str, region: str, config_id: int, hparams: Mapping[str, Any],
                    tf_manifest: Mapping, priors: Mapping, model_dir: str, predictions_uri: str,
                    train_cfg: TrainConfig = TrainConfig()) -> dict:
    """Fit one candidate, write its predictions and model, return its summary.

    Args:
        model_name: registered model ('mlp', 'tabnet', 'gbdt').
        region: a model region, or 'global' (trained and scored on every region).
        config_id: index of ``hparams`` in the search (recorded only).
        hparams: model knobs overriding its defaults (``search.sample_configs``).
        tf_manifest: the TFRecord manifest (``pythia.tfrecords``).
        priors: ``{'train': {target: [...]}, 'natural': {target: [...]}}``.
        model_dir: folder (local or s3://) the model is saved to.
        predictions_uri: the Parquet file the predictions go to.
        train_cfg: epochs, batch size, patience, seed, age head, prior correction.

    Returns:
        JSON-able dict: model, region, config_id, hparams, model_dir, predictions_uri, n_train,
        n_valid, fit_seconds, epochs, best_val_loss, val_logloss (per target), age_head,
        temperature, prior_correction, n_predicted (per split).

    Raises:
        ValueError: the region has no training (or no validation) rows.
    """
    from pythia import tfrecords  # TF-heavy; only needed when a candidate really trains
    from pythia.models import get_model

    cls = get_model(model_name)
    n_train = split_rows(tf_manifest, "train", region)
    if n_train == 0:
        raise ValueError(f"region {region!r} has no training rows in the TFRecord manifest "
                         f"(regions with rows: {split_regions(tf_manifest, 'train')})")
    n_valid = split_rows(tf_manifest, "validation", region)
    if n_valid == 0:
        raise ValueError(f"region {region!r} has no validation rows: early stopping and "
                         f"calibration need them")
    regions = None if region == GLOBAL_REGION else [region]
    encoders = tfrecords.load_encoders(tf_manifest)
    model = cls(encoders, hparams, train_cfg)
    if model_name in DATASET_MODELS:
        train = tfrecords.make_dataset(tf_manifest, "train", regions,
                                       batch_size=train_cfg.batch_size, shuffle=True,
                                       seed=train_cfg.seed)
        valid = tfrecords.make_dataset(tf_manifest, "validation", regions,
                                       batch_size=max(train_cfg.batch_size, 4096))
    else:
        train = tfrecords.load_numpy(tf_manifest, "train", regions)
        valid = tfrecords.load_numpy(tf_manifest, "validation", regions)
    summary = model.fit(train, valid, priors)
    del train, valid

    tables, n_predicted = [], {}
    for split in SCORED_SPLITS:
        n_predicted[split] = 0
        scored = [region] if regions else split_regions(tf_manifest, split)
        # One region at a time: the region column is exact and EM prior correction (when on)
        # re-estimates priors per region, as it should.
        for r in scored:
            if split_rows(tf_manifest, split, r) == 0:
                continue
            data = tfrecords.load_numpy(tf_manifest, split, [r])
            if len(data["impression_id"]) == 0:
                continue
            probs = model.predict_proba(data)
            tables.append(predictions_table(data["impression_id"], split, r, region, probs))
            n_predicted[split] += len(data["impression_id"])
    write_predictions(tables, predictions_uri)
    model.save(model_dir)

    return {
        "model": model_name,
        "region": region,
        "config_id": int(config_id),
        "hparams": {k: _finite(v) for k, v in model.hparams.items()},
        "model_dir": model_dir,
        "predictions_uri": predictions_uri,
        "n_train": int(n_train),
        "n_valid": int(summary.get("n_valid", n_valid)),
        "fit_seconds": float(summary["seconds"]),
        "epochs": int(summary["epochs"]),
        "best_val_loss": _finite(summary.get("best_val_loss")),
        "val_logloss": {t: _finite(v) for t, v in summary["val_logloss"].items()},
        "age_head": getattr(model, "age_head", "marginal"),
        "temperature": {t: float(v) for t, v in summary["temperature"].items()},
        "prior_correction": train_cfg.prior_correction,
        "n_predicted": n_predicted,
    }
