"""The MLP's members (issue 15, session 42: ``models.members``): K fits of different seeds
folded into one network K times as wide, whose logits are exactly the mean of theirs."""
from __future__ import annotations

import numpy as np
import pytest

from pythia import features
from pythia.models import activity_temp as at
from pythia.models import get_model, members
from pythia.models.mlp_valid import network_outputs
from test_models import FAST, HPARAMS, make_encoders, make_split, uniform_priors


def randomized(model, seed: int):
    """A built network with every weight random (the heads' kernels included)."""
    rng = np.random.default_rng(seed)
    net = model.build(1000)
    net.set_weights([rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in net.get_weights()])
    return net


@pytest.mark.parametrize("hidden,wide", [([8, 4], True), ([6], False), ([], True)],
                         ids=["two-layers-wide", "one-layer-deep", "no-trunk"])
def test_the_merged_network_is_the_mean_of_its_members(hidden, wide):
    model = get_model("mlp")(make_encoders(), {**HPARAMS["mlp"], "hidden_units": hidden,
                                               "wide": wide, "dropout": 0.1}, FAST)
    nets = [randomized(model, s) for s in range(3)]
    merged = model.build(1000, width=3)
    members.merge(nets, merged, len(hidden), list(model.head_units()))
    x = model._inputs(make_split(200, 5))
    got = network_outputs(merged)(x)
    outs = [network_outputs(n)(x) for n in nets]
    for key in got:  # every head's logits, and the deep part alone with a wide part
        want = np.mean([np.asarray(o[key]) for o in outs], axis=0)
        np.testing.assert_allclose(np.asarray(got[key]), want, atol=2e-5)
    assert (at.DEEP in got) == wide
    assert merged.get_layer("emb_os").get_weights()[0].shape[1] == \
        3 * nets[0].get_layer("emb_os").get_weights()[0].shape[1]


@pytest.fixture(scope="module")
def fitted():
    train, valid = make_split(600, 0), make_split(300, 1)
    model = get_model("mlp")(make_encoders(), {**HPARAMS["mlp"], "members": 2}, FAST)
    summary = model.fit(train, valid, uniform_priors())
    return model, summary


def test_a_fit_with_members_ships_one_wider_network_and_says_so(fitted):
    model, summary = fitted
    assert len(summary["members"]) == 2
    assert model.keras_model.get_layer("trunk_0").units == 2 * HPARAMS["mlp"]["hidden_units"][0]
    histories = [m["val_loss_by_epoch"] for m in summary["members"]]
    assert histories[0] != histories[1]  # the seeds differ
    first = histories[0][summary["members"][0]["best_epoch"]]["age_gender"]
    assert np.isfinite(summary["best_val_loss"]) and summary["best_val_loss"] != first


def test_the_train_line_shows_each_member_and_their_mean():
    from pythia.models import notes

    model = get_model("mlp")(make_encoders(), {**HPARAMS["mlp"], "members": 2}, FAST)
    notes.take("mlp")
    model.fit(make_split(400, 3), make_split(200, 4), uniform_priors())
    said = " ".join(notes.take("mlp"))
    assert "2 members (seeds 0.., the first above): AgeGender " in said
    assert "their mean, one network: " in said
    assert said.index("AgeGender's epoch scores") < said.index("2 members")


def test_the_merged_network_scores_alike_in_keras_numpy_and_onnx(fitted, tmp_path):
    from pythia.models import load_model
    from pythia.scoring.runtime import FusedMLP

    model, _ = fitted
    test = make_split(300, 2)
    want = model.predict_proba(test)
    ids = np.stack([test[f] for f in features.CATEGORICAL_FEATURES], 1).astype(np.int64)
    numeric = np.stack([test[f] for f in features.NUMERIC_FEATURES], 1).astype(np.float32)
    export = model.export_numpy()
    got = FusedMLP(export, model.encoders, dtype="float64").predict(ids, numeric)
    for t in features.TARGETS:
        np.testing.assert_allclose(got[t], want[t], atol=2e-5)
    pytest.importorskip("onnxruntime")
    from pythia.scoring.onnx_export import OnnxMLP
    from pythia.scoring.onnx_graph import build_onnx_model
    onnx = OnnxMLP(build_onnx_model(export, model.encoders)).predict(ids, numeric)
    for t in features.TARGETS:
        np.testing.assert_allclose(np.asarray(onnx[t]), want[t], atol=2e-5)
    model.save(str(tmp_path / "m"))
    back = load_model(str(tmp_path / "m"))
    np.testing.assert_allclose(back.predict_proba(test)["age_gender"], want["age_gender"],
                               atol=1e-6)


def test_a_regional_fit_starts_from_the_merged_network_of_the_same_members(fitted):
    start, _ = fitted
    region = get_model("mlp")(make_encoders(), {**HPARAMS["mlp"], "members": 2}, FAST)
    region.fit(make_split(300, 6), make_split(200, 7), uniform_priors(), start=start)
    assert region.keras_model.get_layer("trunk_0").units == 2 * HPARAMS["mlp"]["hidden_units"][0]
    other = get_model("mlp")(make_encoders(), HPARAMS["mlp"], FAST)  # members 1
    with pytest.raises(ValueError, match=r"knobs differ \(this, start\): \{'members': \(1, 2\)"):
        other.fit(make_split(300, 6), make_split(200, 7), uniform_priors(), start=start)


def test_members_below_one_are_refused_in_one_line():
    model = get_model("mlp")(make_encoders(), {**HPARAMS["mlp"], "members": 0}, FAST)
    with pytest.raises(ValueError, match="mlp members must be a whole number >= 1, got 0"):
        model.fit(make_split(100, 0), make_split(50, 1), uniform_priors())
