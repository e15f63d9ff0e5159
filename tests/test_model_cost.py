"""The cheaper model work of issue 14 outside reading: each faster path gives the numbers of
the path it replaced (TabNet's batches, gbdt's prediction, the MLP's validation pass)."""
from __future__ import annotations

import numpy as np
import pytest

from pythia import features
from tests.test_models import FAST, HPARAMS, make_encoders, make_split, uniform_priors


def _tabnet_pair():
    """The library's classifier and ours, built from one set of hparams."""
    from pytorch_tabnet.tab_model import TabNetClassifier

    from pythia.models.tabnet import BatchTabNetClassifier, TabNetModel

    model = TabNetModel(make_encoders(), HPARAMS["tabnet"], FAST)
    ours = model._new_classifier()
    theirs = TabNetClassifier(**ours.get_params())
    assert type(ours) is BatchTabNetClassifier and type(theirs) is TabNetClassifier
    return theirs, ours


def test_tabnet_batches_fit_and_predict_exactly_as_the_library():
    import torch

    from pythia.models.tabnet import to_matrix

    train, valid = make_split(700, 0), make_split(300, 1)
    X, y = to_matrix(train), train["y_age_gender"]
    Xv, yv = to_matrix(valid), valid["y_age_gender"]
    fits = []
    for clf in _tabnet_pair():
        torch.set_num_threads(1)
        torch.manual_seed(0)
        clf.fit(X, y, eval_set=[(Xv, yv)], eval_name=["valid"], max_epochs=3, patience=3,
                batch_size=128, virtual_batch_size=32, num_workers=0, drop_last=False,
                compute_importance=False)
        fits.append((clf.history.history["loss"], clf.predict_proba(Xv),
                     [p.detach().numpy().copy() for p in clf.network.parameters()]))
    (loss_a, p_a, w_a), (loss_b, p_b, w_b) = fits
    assert loss_a == loss_b  # same batches in the same order, epoch after epoch
    for a, b in zip(w_a, w_b):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(p_a, p_b)
    assert p_b.shape == (len(Xv), 6)
    ours = _tabnet_pair()[1]
    ours.batch_size, ours.num_workers, ours.drop_last, ours.pin_memory = 64, 0, False, False
    ours.updated_weights, ours.classes_ = 0, np.arange(6)
    ours.target_mapper = {c: c for c in range(6)}
    train_loader, (valid_loader,) = ours._construct_loaders(X, y, [(Xv, yv)])
    assert type(train_loader.dataset).__name__ == type(valid_loader.dataset).__name__ \
        == "_Batches"


def test_tabnet_batches_serve_rows_by_index():
    from pythia.models.tabnet import _Batches

    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    data = _Batches(x, np.arange(6))
    xb, yb = data.__getitems__([4, 0, 5])
    np.testing.assert_array_equal(xb.numpy(), x[[4, 0, 5]])
    assert yb.tolist() == [4, 0, 5] and len(data) == 6
    with pytest.raises(IndexError):
        data.__getitems__([6])
