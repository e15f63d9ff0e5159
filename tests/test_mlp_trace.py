"""The MLP's train step is traced once per phase (``pythia.models.keras_state``): its optimizer
slots and loss trackers exist before ``fit``, so TensorFlow does not trace the step a second
time after a first trace that created them. The fit is the same, loss for loss."""
from __future__ import annotations

import numpy as np
import pytest

from pythia import features
from pythia.models import keras_state

tf = pytest.importorskip("tensorflow")

from test_models import FAST, HPARAMS, MODELS, make_encoders, make_split  # noqa: E402
from test_models import uniform_priors  # noqa: E402


def _dataset(d: dict, batch: int):
    x = {f: d[f] for f in features.FEATURE_NAMES}
    x["impression_id"] = d["impression_id"].astype(bytes)  # a split carries ids: _select drops
    y = {t: d[c] for t, c in features.LABEL_COLUMNS.items()}
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def _fit(train, valid):
    """An MLP fitted on ``train``: (its fit summary, train-step traces, phases)."""
    model = MODELS["mlp"](make_encoders(), HPARAMS["mlp"], FAST)
    build, traces = model.build, []

    def counted_build(*args, **kwargs):
        net = build(*args, **kwargs)
        step = net.train_step

        def train_step(data):
            traces.append(1)  # Python runs only while TensorFlow traces
            return step(data)
        net.train_step = train_step
        return net
    model.build = counted_build
    summary = model.fit(train, valid, uniform_priors())
    return summary, len(traces), len(summary["phase_ends"])


def test_the_train_step_is_traced_once_per_phase_with_the_same_fit(monkeypatch):
    train, valid = _dataset(make_split(600, 0), 64), make_split(300, 1)  # the flow's: tf.data
    once, traces, phases = _fit(train, valid)
    assert phases == 2 and traces == phases  # the residual phase, then the joint one
    _, traces, phases = _fit(make_split(600, 0), valid)  # arrays too
    assert phases == 2 and traces == phases
    # without the build (as before session 66): twice per phase, the same fit to the digit
    monkeypatch.setattr(keras_state, "build_before_fit", lambda model, data: False)
    twice, traces, phases = _fit(train, valid)
    assert traces == 2 * phases
    assert twice["val_loss_by_epoch"] == once["val_loss_by_epoch"]
    assert twice["best_epoch"] == once["best_epoch"]


def test_build_before_fit_reads_no_rows_of_a_dataset():
    """A tf.data split is described by its element spec: nothing is read (a shuffled split
    would fill its shuffle buffer for one batch)."""
    class Model:  # what build_before_fit uses of an MLP
        _select = staticmethod(MODELS["mlp"]._select)
        _inputs = staticmethod(MODELS["mlp"]._inputs)

        class keras_model:  # noqa: N801
            seen = []

            @classmethod
            def _symbolic_build(cls, data_batch):
                cls.seen.append(data_batch)

    def never():
        raise AssertionError("build_before_fit read a row")
        yield  # a generator: iterating the dataset calls it
    ok = _dataset(make_split(10, 0), 4)
    data = tf.data.Dataset.from_generator(never, output_signature=ok.element_spec)
    with pytest.raises(Exception, match="read a row"):
        next(iter(data))  # the dataset does fail when read
    assert keras_state.build_before_fit(Model, data)
    x, y = Model.keras_model.seen[-1]
    assert set(x) == set(features.FEATURE_NAMES) and set(y) == set(features.TARGETS)
    assert all(spec.shape[0] is None for spec in x.values())
    # arrays: their first row, typed as the network takes them
    assert keras_state.build_before_fit(Model, make_split(10, 0))
    x, y = Model.keras_model.seen[-1]
    assert all(len(v) == 1 for v in x.values()) and x["country"].dtype == np.int64
    del Model.keras_model._symbolic_build  # another Keras: fit builds them itself
    assert not keras_state.build_before_fit(Model, data)
