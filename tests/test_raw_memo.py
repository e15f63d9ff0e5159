"""The validation logits kept from calibration answer the predictions file's validation pass
(``pythia.models.raw_memo``): the same probabilities, without walking the model again."""
from __future__ import annotations

import numpy as np
import pytest

from tests.test_models import FAST, HPARAMS, make_encoders, make_split, uniform_priors


def test_memo_answers_whole_chunks_of_known_ids_in_their_order():
    from pythia.models.raw_memo import RawMemo

    ids = np.array(["b", "a", "c", "a"], dtype=object)  # a resampled copy of "a"
    raw = {"age_gender": np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [2.0, 0.0]])}
    memo = RawMemo(ids, raw)
    got = memo.lookup(np.array(["c", "a", "a", "b"], dtype=object))
    np.testing.assert_array_equal(got["age_gender"][:, 0], [3.0, 2.0, 2.0, 1.0])
    assert memo.lookup(np.array(["a", "zz"], dtype=object)) is None  # one unknown: predict all
    assert memo.lookup(np.array(["0"], dtype=object)) is None  # sorts before every id
    assert memo.lookup(np.array([], dtype=object)) is None
    assert RawMemo(np.array([], dtype=object), {"age_gender": np.zeros((0, 2))}).lookup(
        np.array(["a"], dtype=object)) is None


@pytest.mark.parametrize("name", ["gbdt", "logreg", "tabnet"])
def test_validation_predictions_come_from_the_memo_and_equal_a_fresh_pass(name, monkeypatch):
    from pythia.models import get_model

    model = get_model(name)(make_encoders(), HPARAMS[name], FAST)
    train, valid, test = make_split(600, 0), make_split(300, 1), make_split(200, 2)
    model.fit(train, valid, uniform_priors())
    # a chunk of validation rows in another order, with resampled copies, as the
    # predictions pass reads them
    order = np.random.default_rng(3).permutation(np.r_[np.arange(300), np.arange(40)])
    chunk = {k: np.asarray(v)[order] for k, v in valid.items()}
    fresh_calls = []
    real = model._predict_raw
    monkeypatch.setattr(model, "_predict_raw", lambda X: fresh_calls.append(1) or real(X))
    from_memo = model.predict_proba(chunk)
    assert not fresh_calls  # answered from the memo
    model.predict_proba(test)  # unknown ids: predicted
    assert fresh_calls == [1]
    mixed = {k: np.concatenate([np.asarray(chunk[k])[:5], np.asarray(test[k])[:5]])
             for k in chunk}
    model.predict_proba(mixed)  # partly known: the whole chunk predicted
    assert fresh_calls == [1, 1]
    model.forget_validation()
    fresh = model.predict_proba(chunk)
    assert len(fresh_calls) == 3
    for t in fresh:
        if name == "gbdt":  # a row's trees are summed in the same order either way
            np.testing.assert_array_equal(from_memo[t], fresh[t])
        else:  # BLAS may block another batch differently: the last bits
            np.testing.assert_allclose(from_memo[t], fresh[t], rtol=0, atol=1e-6)
