"""The train step in bounded memory: numpy-trained models fit on a seeded, class-stratified
sample of at most ``max_train_rows`` rows per split (recorded in the candidate), and the
predictions of every scored split are streamed into the Parquet chunk by chunk."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pythia.config import TrainConfig
from pythia.models import predictions as pred_io
from pythia.models.predictions import PREDICTION_SCHEMA, predictions_table, write_predictions
from pythia.tfrecords import SAMPLE_RULE
from test_tfrecords import local_manifest, skewed_split

N_AGE = 6
N_CLASSES = {"gender": 2, "age": N_AGE, "age_gender": 2 * N_AGE}


def _uniform_priors() -> dict:
    p = {t: [1 / k] * k for t, k in N_CLASSES.items()}
    return {"train": p, "natural": p}


def _block(n: int, start: int, split: str = "validation") -> pa.Table:
    ids = np.array([f"i{start + i}" for i in range(n)], dtype=object)
    probs = {t: np.full((n, k), 1 / k) for t, k in N_CLASSES.items()}
    return predictions_table(ids, split, "EU", "global", probs)


def test_write_predictions_streams_blocks_into_row_groups(tmp_path):
    uri = str(tmp_path / "out" / "p.parquet")
    blocks = (_block(50, 50 * b) for b in range(3))
    assert write_predictions(blocks, uri) == 150
    meta = pq.ParquetFile(uri).metadata
    assert meta.num_row_groups == 3 and meta.num_rows == 150
    table = pq.read_table(uri)
    assert table.schema == PREDICTION_SCHEMA
    assert table.column("impression_id").to_pylist() == [f"i{i}" for i in range(150)]
    assert write_predictions([], str(tmp_path / "empty.parquet")) == 0
    assert pq.read_table(str(tmp_path / "empty.parquet")).schema == PREDICTION_SCHEMA

    def dying():
        yield _block(10, 0)
        raise RuntimeError("killed mid-split")

    with pytest.raises(RuntimeError, match="killed"):
        write_predictions(dying(), str(tmp_path / "out" / "q.parquet"))
    assert sorted(os.listdir(tmp_path / "out")) == ["p.parquet"]  # no partial, no temp file


@pytest.fixture(scope="module")
def tf_manifest(tmp_path_factory):
    """TFRecords of four splits; train (3000 rows) and validation (800) exceed a 400 cap."""
    frames = {"train": skewed_split(3000, 11), "validation": skewed_split(800, 12),
              "test_natural": skewed_split(500, 13), "test_resampled": skewed_split(300, 14)}
    return frames, local_manifest(tmp_path_factory.mktemp("tfr"), frames)


def _fit(manifest, tmp_path, name, cfg, tag="a"):
    from pythia.models import fit_candidate
    uri = str(tmp_path / f"{name}-{tag}.parquet")
    return fit_candidate(name, "global", 0, {}, manifest, _uniform_priors(),
                         str(tmp_path / f"model-{name}-{tag}"), uri, cfg), uri


def test_numpy_models_fit_on_a_bounded_sample_the_candidate_records(tf_manifest, tmp_path,
                                                                    monkeypatch):
    frames, manifest = tf_manifest
    cfg = TrainConfig(max_train_rows=400, seed=5)
    res, uri = _fit(manifest, tmp_path, "class_prior", cfg)
    json.dumps(res)
    train, valid = res["training_sample"]["train"], res["training_sample"]["validation"]
    assert (train["rows_available"], train["rows_used"]) == (3000, 400)
    assert (valid["rows_available"], valid["rows_used"]) == (800, 400)
    assert train["rule"] == valid["rule"] == SAMPLE_RULE
    assert (train["max_rows"], train["seed"], train["stratum"]) == (400, 5, "y_age_gender")
    assert set(train["rows_by_class_used"]) == set(train["rows_by_class_available"])
    assert min(train["rows_by_class_used"].values()) >= 1  # every class, even the 1-row one
    assert res["n_train"] == 3000 and res["n_valid"] == 400
    # predictions cover every row of the scored splits, sampled or not
    table = pq.read_table(uri)
    assert res["n_predicted"] == {"validation": 800, "test_natural": 500, "test_resampled": 300}
    assert table.num_rows == 1600
    # the same seed draws the same rows; predicting in small chunks writes the same file
    monkeypatch.setattr(pred_io, "PREDICT_CHUNK_ROWS", 128)
    again, uri2 = _fit(manifest, tmp_path, "class_prior", cfg, tag="b")
    assert again["training_sample"] == res["training_sample"]
    assert pq.ParquetFile(uri2).metadata.num_row_groups > pq.ParquetFile(uri).metadata \
        .num_row_groups
    assert pq.read_table(uri2).equals(table)
    other, _ = _fit(manifest, tmp_path, "class_prior", TrainConfig(max_train_rows=400, seed=6),
                    tag="c")
    assert other["training_sample"]["train"]["seed"] == 6


def test_the_default_cap_leaves_small_splits_whole(tf_manifest, tmp_path):
    _, manifest = tf_manifest
    res, _ = _fit(manifest, tmp_path, "class_prior", TrainConfig())
    assert TrainConfig().max_train_rows >= 360_000  # the default world's 359k train rows fit
    sample = res["training_sample"]["train"]
    assert sample["rows_used"] == sample["rows_available"] == 3000
    assert sample["rule"] != SAMPLE_RULE and res["n_valid"] == 800


class _ConstantModel:
    """Uniform probabilities; records the rows of each ``predict_proba`` call."""

    def __init__(self, prior_correction: str) -> None:
        self.train_cfg = TrainConfig(prior_correction=prior_correction)
        self.calls: list[int] = []

    def predict_proba(self, X):
        n = len(X["impression_id"])
        self.calls.append(n)
        return {t: np.full((n, k), 1 / k) for t, k in N_CLASSES.items()}


def test_predictions_are_chunked_except_under_em(tf_manifest, tmp_path, monkeypatch):
    """EM re-estimates priors from the rows it is given, so chunks would change its answer:
    under EM each region is predicted whole, otherwise in chunks of PREDICT_CHUNK_ROWS."""
    _, manifest = tf_manifest
    monkeypatch.setattr(pred_io, "PREDICT_CHUNK_ROWS", 64)
    by_region = manifest["splits"]["validation"]["rows_by_region"]
    for method in ("bayes", "em"):
        model = _ConstantModel(method)
        counts = pred_io.write_split_predictions(model, manifest, "global", ["validation"],
                                                 str(tmp_path / f"{method}.parquet"))
        assert counts == {"validation": 800}
        if method == "em":
            assert sorted(model.calls) == sorted(by_region.values())
        else:
            assert max(model.calls) == 64 and sum(model.calls) == 800
            assert len(model.calls) == sum(-(-n // 64) for n in by_region.values())
    with pytest.raises(ValueError, match="no split 'holdout'"):
        pred_io.write_split_predictions(_ConstantModel("bayes"), manifest, "EU", ["holdout"],
                                        str(tmp_path / "x.parquet"))
    assert not (tmp_path / "x.parquet").exists()


def test_max_train_rows_comes_from_the_deploy_config():
    from pythia.config import DeployConfig, RunParams, read_deploy_config

    shipped = read_deploy_config(os.path.join(os.path.dirname(__file__), "..", "flows",
                                              "pythia.toml"))
    assert shipped.max_train_rows == TrainConfig().max_train_rows
    deploy = DeployConfig.from_mapping({"train": {"max_train_rows": 1234}})
    params = RunParams.build({"models": "gbdt"}, deploy, model_names=("gbdt",))
    assert params.train.max_train_rows == 1234
    assert DeployConfig.from_mapping({"train": {"max_train_rows": 0}}).max_train_rows == 0
    with pytest.raises(ValueError, match="max_train_rows must be >= 0"):
        DeployConfig.from_mapping({"train": {"max_train_rows": -5}})


def test_the_mlp_reads_its_splits_once_within_the_cap_and_streams_over_it(tf_manifest):
    """Within ``max_train_rows`` the MLP gets numpy arrays read once (no per-epoch parse);
    over it, or with the cap off (0), tf.data streams every epoch."""
    import types

    import tensorflow as tf

    from pythia.models.base import TF_DATASET
    from pythia.models.train import _training_data
    from pythia.tfrecords.sample import ALL_ROWS_RULE
    _, manifest = tf_manifest

    def data(cap):
        mlp = types.SimpleNamespace(input_format=TF_DATASET,
                                    train_cfg=TrainConfig(max_train_rows=cap, seed=1))
        return _training_data(mlp, manifest, "global")
    train, valid, record = data(3000)
    assert isinstance(train, dict) and isinstance(valid, dict)
    assert len(train["y_age_gender"]) == 3000 and len(valid["y_age_gender"]) == 800
    assert record["train"]["rule"] == record["validation"]["rule"] == ALL_ROWS_RULE
    for cap in (2999, 0):
        train, valid, record = data(cap)
        assert isinstance(train, tf.data.Dataset) and isinstance(valid, tf.data.Dataset)
        assert record["train"]["rule"] == "all rows, streamed (tf.data)"
        assert record["train"]["rows_used"] == 3000


def test_an_mlp_fitted_in_memory_records_every_row(tf_manifest, tmp_path):
    _, manifest = tf_manifest
    res, uri = _fit(manifest, tmp_path, "mlp",
                    TrainConfig(max_epochs=1, batch_size=256, patience=1, max_train_rows=5000))
    sample = res["training_sample"]
    assert sample["train"]["rows_used"] == 3000 and sample["validation"]["rows_used"] == 800
    assert res["n_predicted"] == {"validation": 800, "test_natural": 500, "test_resampled": 300}
    assert np.isfinite(res["val_logloss"]["age_gender"])
