"""Issue 15 item 3: the gender and age probabilities a model, the NumPy scorer and the ONNX
graph output are the marginals of their AgeGender probabilities (agreement to 1e-6)."""
import numpy as np
import pytest

from pythia import features


def _check(probs, atol=1e-6):
    joint = np.asarray(probs["age_gender"], dtype=np.float64)
    n_age = joint.shape[1] // len(features.GENDER_CLASSES)
    cube = joint.reshape(len(joint), len(features.GENDER_CLASSES), n_age)
    np.testing.assert_allclose(np.asarray(probs["gender"]), cube.sum(axis=2), atol=atol)
    np.testing.assert_allclose(np.asarray(probs["age"]), cube.sum(axis=1), atol=atol)


@pytest.mark.parametrize("age_head", ["softmax", "corn"])
def test_numpy_runtime_batch_and_one_row_output_marginals(age_head):
    from test_scoring import make_encoders, make_export  # the parity tests' random export
    from pythia.scoring.runtime import FusedMLP

    encoders = make_encoders()
    export = make_export(encoders, age_link=age_head, wide=True)
    runtime = FusedMLP(export, encoders, dtype="float64")
    rng = np.random.default_rng(0)
    sizes = [encoders.vocabularies[f].size for f in features.CATEGORICAL_FEATURES]
    ids = np.stack([rng.integers(0, s, 64) for s in sizes], axis=1)
    numeric = rng.normal(size=(64, len(features.NUMERIC_FEATURES)))
    batch = runtime.predict(ids, numeric)
    _check(batch)
    # the heads' own answers differ from the marginals: the test would see a head leak out
    one = runtime.predict_one(ids[0].tolist(), numeric[0].tolist())
    _check({t: [v] for t, v in one.items()})
    for t in features.TARGETS:
        np.testing.assert_allclose(one[t], batch[t][0], atol=1e-9)


@pytest.mark.parametrize("age_head", ["softmax", "corn"])
def test_onnx_graph_outputs_marginals(age_head):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from test_scoring import make_encoders, make_export
    from pythia.scoring.onnx_graph import build_onnx_model

    encoders = make_encoders()
    export = make_export(encoders, age_link=age_head, wide=True)
    model = build_onnx_model(export, encoders)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    sizes = [encoders.vocabularies[f].size for f in features.CATEGORICAL_FEATURES]
    ids = np.stack([rng.integers(0, s, 32) for s in sizes], axis=1).astype(np.int64)
    numeric = rng.normal(size=(32, len(features.NUMERIC_FEATURES))).astype(np.float32)
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {session.get_inputs()[0].name: ids,
                                              session.get_inputs()[1].name: numeric})))
    _check(got, atol=1e-6)


def test_model_predict_proba_outputs_marginals():
    """The Keras MLP keeps its gender and age heads as training aids; what it predicts (what
    evaluation and every bundle see) and its validation figures are the AgeGender marginals."""
    from test_models import FAST, HPARAMS, make_encoders, make_split, uniform_priors
    from pythia.models import MODELS

    model = MODELS["mlp"](make_encoders(), HPARAMS["mlp"], FAST)
    summary = model.fit(make_split(400, 0), make_split(200, 1), uniform_priors())
    probs = model.predict_proba(make_split(100, 2))
    _check(probs)
    assert set(summary["val_logloss"]) == set(features.TARGETS)
