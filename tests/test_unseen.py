"""Categorical ids no training row carries (``pythia.models.unseen``): the MLP answers for them
as for a value seen as often as each was, not from an untrained embedding row.

The case that showed it: the test day's ``local_dow`` is a weekday the training days never hold
(OOV for 89% of the default world's natural test rows); the MLP's answer for it was whatever the
trunk made of a near-zero row, AgeGender 2.590 in one fit and 1.881 in another of the same data.
"""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pythia import features
from pythia.models import get_model
from pythia.models.unseen import UnseenRows, id_counts
from test_models import FAST, HPARAMS, make_encoders, make_split, uniform_priors

DOW = "local_dow"
SEEN_DOW = (2, 3, 4)  # the training days' weekdays; every other id is unseen in training


def _without_weekdays(split: dict, seed: int) -> dict:
    """``split`` with local_dow drawn from ``SEEN_DOW`` only (it carries no signal)."""
    rng = np.random.default_rng(seed)
    return {**split, DOW: rng.choice(SEEN_DOW, size=len(split[DOW]))}


@pytest.fixture(scope="module")
def fitted():
    train = _without_weekdays(make_split(600, 0), 0)
    valid = _without_weekdays(make_split(300, 1), 1)
    model = get_model("mlp")(make_encoders(), HPARAMS["mlp"], FAST)
    model.fit(train, valid, uniform_priors())
    return model, train


def test_counts_of_a_numpy_split_and_of_a_dataset_agree():
    split = make_split(50, 5)
    x = {f: split[f] for f in features.FEATURE_NAMES}
    y = {t: split[c] for t, c in features.LABEL_COLUMNS.items()}
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    a, b = id_counts(split, make_encoders()), id_counts(ds, make_encoders())
    assert set(a) == set(features.CATEGORICAL_FEATURES)
    for f in features.CATEGORICAL_FEATURES:
        np.testing.assert_array_equal(a[f], b[f])
        assert a[f].sum() == 50 and len(a[f]) == make_encoders().vocabularies[f].size


def test_counts_refuse_ids_outside_the_vocabulary():
    split = make_split(20, 6)
    split[DOW] = split[DOW].copy()
    split[DOW][3] = make_encoders().vocabularies[DOW].size
    with pytest.raises(ValueError, match="local_dow"):
        id_counts(split, make_encoders())


def test_unseen_rows_of_a_fitted_mlp_are_the_count_weighted_mean(fitted):
    model, train = fitted
    counts = np.bincount(train[DOW], minlength=make_encoders().vocabularies[DOW].size)
    table = model.keras_model.get_layer(f"emb_{DOW}").get_weights()[0].astype(np.float64)
    unseen = counts == 0
    assert unseen[features.OOV_ID] and unseen.sum() == len(counts) - len(SEEN_DOW)
    mean = counts @ table / counts.sum()
    np.testing.assert_allclose(table[unseen], np.tile(mean, (unseen.sum(), 1)), atol=1e-6)
    assert np.abs(mean).max() > 1e-3  # a trained mean, not the near-zero row L2 leaves


def _tiny(rows: np.ndarray) -> keras.Model:
    x = keras.Input(shape=(), dtype="int64", name=DOW)
    out = keras.layers.Embedding(len(rows), rows.shape[1], name=f"emb_{DOW}")(x)
    model = keras.Model(x, out)
    model.get_layer(f"emb_{DOW}").set_weights([rows.astype(np.float32)])
    return model


def test_a_warm_fit_restores_the_start_rows_of_ids_its_region_never_carries():
    start = _tiny(np.arange(12, dtype=np.float64).reshape(6, 2))
    model = _tiny(np.full((6, 2), -1.0))
    counts = {DOW: np.array([0, 0, 5, 0, 1, 2])}
    assert UnseenRows(counts, start).fill(model) == {DOW: 3}
    table = model.get_layer(f"emb_{DOW}").get_weights()[0]
    np.testing.assert_array_equal(table[[0, 1, 3]], [[0, 1], [2, 3], [6, 7]])
    np.testing.assert_array_equal(table[[2, 4, 5]], np.full((3, 2), -1.0))


def test_nothing_is_filled_when_every_id_or_no_id_was_seen():
    model = _tiny(np.ones((3, 2)))
    assert UnseenRows({DOW: np.array([1, 2, 3])}).fill(model) == {}
    assert UnseenRows({DOW: np.zeros(3, np.int64)}).fill(model) == {}
