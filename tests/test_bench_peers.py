"""The scoring bench's TensorFlow peers compute what the bundle computes, also when the bundle
scores AgeGender per activity bin with wide-only bins (benchmarks/scoring_bench.py,
benchmarks/tf_raw_peer.py): their timings are like for like only then."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from pythia.features import TARGETS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNTS = (3, 10, 30, 100)
GATES = (True, True, True, False, False)  # 30+ impressions today: the wide part alone


@pytest.fixture(scope="module")
def bench():
    pytest.importorskip("tensorflow")
    pytest.importorskip("pyarrow")
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import scoring_bench
        import tf_raw_peer
    finally:
        sys.path.remove(os.path.join(REPO, "benchmarks"))
    return scoring_bench, tf_raw_peer


def gated(model) -> None:
    """Per-bin temperatures with wide-only bins from 30 up, and a head kernel of its own (the
    one-epoch fit may leave the logistic-regression start's zeros): the gates then matter."""
    from pythia.models import activity_temp as at

    head = model.keras_model.get_layer(at.JOINT)
    W, b = head.get_weights()
    head.set_weights([np.random.default_rng(0).normal(0, 0.5, W.shape).astype(W.dtype), b])
    model.activity_temperature = at.ActivityTemperature(
        COUNTS, at.normalized_edges(model.encoders, COUNTS), (0.8, 1.0, 1.3, 2.0, 3.0),
        (1,) * 5, (True,) * 5, (0, 1, 2, 3, 4), deep=GATES)


@pytest.fixture(scope="module")
def gated_bundle(bench, tmp_path_factory):
    scoring_bench, _ = bench
    from pythia.models import load_model
    from pythia.scoring import Scorer
    from pythia.scoring.runtime import load_export_npz

    work = str(tmp_path_factory.mktemp("peers"))
    bundle, model_dir = scoring_bench.train_bundle(
        work, 2048, {"hidden_units": [16], "age_head": "softmax"}, gated)
    scorer = Scorer.load(bundle)
    export = load_export_npz(os.path.join(bundle, "weights-global.npz"))
    return scorer, export, load_model(model_dir).keras_model


def test_the_bundle_bins_by_activity_with_wide_only_bins(gated_bundle):
    _, export, _ = gated_bundle
    from pythia.models import activity_temp as at
    assert export[at.EXPORT_KEY]["deep"] == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_the_raw_in_peer_equals_the_scorer_and_would_catch_ungated_logits(bench, gated_bundle):
    scoring_bench, tf_raw_peer = bench
    scorer, export, keras_model = gated_bundle
    requests = scoring_bench.make_requests(scorer.encoders, 3000, seed=9)
    assert sum(r.get("user_impressions_today", 0) >= 30 for r in requests) > 100  # heavy rows
    sample = scoring_bench.as_arrow(scoring_bench.dst_sample(scorer.encoders) + requests)
    offsets = scorer.geo.offset_table.to_json()
    regions = scorer.geo.region_of_country
    peer = tf_raw_peer.make_raw_peer(keras_model, scorer.encoders, offsets, export, regions)
    assert tf_raw_peer.check_peer(peer, scorer, sample) <= 1e-5
    # a peer that ignores the wide-only bins is caught by the check
    ungated = {k: v for k, v in export.items()}
    ungated["activity_temperature"] = {k: v for k, v in export["activity_temperature"].items()
                                       if k != "deep"}
    wrong = tf_raw_peer.make_raw_peer(keras_model, scorer.encoders, offsets, ungated, regions)
    with pytest.raises(AssertionError, match="differs from Scorer.score_arrays"):
        tf_raw_peer.check_peer(wrong, scorer, sample)


def test_the_forward_peer_equals_the_bundles_forward(bench, gated_bundle):
    import tensorflow as tf

    scoring_bench, _ = bench
    scorer, export, keras_model = gated_bundle
    from pythia.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES
    from pythia.scoring.boundary import RequestEncoder
    ids, numeric, _ = RequestEncoder(scorer.encoders, scorer.geo, ["global"]).encode_many(
        scoring_bench.make_requests(scorer.encoders, 2000, seed=11))
    signature = [{**{n: tf.TensorSpec([None], tf.int64, name=n) for n in CATEGORICAL_FEATURES},
                  **{n: tf.TensorSpec([None], tf.float32, name=n) for n in NUMERIC_FEATURES}}]
    x = {n: tf.constant(ids[:, j]) for j, n in enumerate(CATEGORICAL_FEATURES)}
    x.update({n: tf.constant(numeric[:, j]) for j, n in enumerate(NUMERIC_FEATURES)})
    got = scoring_bench._proba_peer(keras_model, export, signature, scorer)(x)
    want = scorer.models["global"].predict(ids, numeric)
    assert max(float(np.abs(got[t].numpy() - np.asarray(want[t])).max()) for t in TARGETS) <= 1e-5


def test_against_times_two_bundles_in_turns_and_refuses_what_it_cannot_compare(
        bench, tmp_path_factory, capsys):
    """``scoring_bench --bundle A --against B``: both bundles on the same requests, in turns;
    a table with B / A and A / B ratios (no figure is asserted: timings are not tests)."""
    scoring_bench, _ = bench
    work = str(tmp_path_factory.mktemp("against"))
    narrow, _ = scoring_bench.train_bundle(os.path.join(work, "a"), 512, {"hidden_units": [8]})
    wide, _ = scoring_bench.train_bundle(os.path.join(work, "b"), 512, {"hidden_units": [64]})
    args = ["--bundle", narrow, "--against", wide, "--single", "40", "--rounds", "2",
            "--batch", "64", "--seconds", "0.05"]
    assert scoring_bench.main(args) == 0
    out = capsys.readouterr().out
    assert f"A: {narrow}" in out and f"B: {wide}" in out
    assert "2 alternating rounds of 20 requests" in out
    for line in ("  p50: A", "  p99: A", "raw columns -> probabilities", "forward on encoded"):
        assert line in out, line
    ratios = [float(x.split(":")[-1]) for x in out.splitlines() if "A / B (median CPU" in x]
    assert len(ratios) == 2 and all(r > 0 for r in ratios)
    with pytest.raises(SystemExit, match="--against needs --bundle"):
        scoring_bench.main(["--against", wide])
    with pytest.raises(SystemExit, match="not a bundle folder"):
        scoring_bench.main(["--bundle", narrow, "--against", work])
    with pytest.raises(SystemExit, match="--rounds >= 1"):
        scoring_bench.main(["--bundle", narrow, "--against", wide, "--rounds", "0"])
