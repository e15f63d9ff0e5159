"""Streaming evaluation against the in-memory reference: on the tiny world, every row of the
metrics and distributions tables is the same (keys, order, n) and every value agrees to 1e-9,
whatever the number of buckets; plus the bucket files and the per-slice sums on their own."""
from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pythia import buckets
from pythia.evaluate.gauge import posterior_probs_by_split, score_posterior
from pythia.evaluate.io import read_predictions, read_split_frames
from pythia.evaluate.metrics import score_predictions
from pythia.evaluate.slices import (check_candidates, distributions_table, metrics_table,
                                    prepare_data, score_candidate)
from pythia.evaluate.stats import LabelStats, ShareStats
from pythia.evaluate.stream import score_streaming
from pythia.features import TEST_RESAMPLED, USER_HELD_OUT, VALIDATION
# the tiny world of the evaluate tests, built the same way
from test_evaluate import EDGES, N_AGE, _make_world, _write_predictions, _write_splits

KEYS = ["model", "region", "config_id", "eval_region", "target", "test_set", "label_source",
        "metric", "class"]
DIST_KEYS = ["model", "region", "config_id", "eval_region", "target", "test_set", "source",
             "class", "n"]
SPECS = [("mlp", "global", 0.0, 0), ("gbdt", "global", 0.5, 0), ("gbdt", "EU", 0.3, 0),
         ("tabnet", "EU", 0.0, 5)]  # tabnet misses 5 EU rows per split


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(candidates, split manifest, world): a resampled validation day (importance weights),
    a resampled test day holding duplicated impressions, and held-out users (every tenth)
    flagged on the test days (the natural_new_users slice)."""
    tmp = tmp_path_factory.mktemp("stream")
    frames, world = _make_world(seed=3)
    res = frames[TEST_RESAMPLED]
    frames[TEST_RESAMPLED] = pd.concat([res, res.iloc[:60]], ignore_index=True)
    for split, df in frames.items():
        df[USER_HELD_OUT] = (df["user_id"].str[1:].astype(int) % 10 == 0) & (split != VALIDATION)
    rates = {VALIDATION: {str(c): (0.25 if c < N_AGE else 1.0) for c in range(2 * N_AGE)}}
    manifest = _write_splits(tmp / "splits", frames, rates)
    candidates = [{"model": m, "region": r, "config_id": 0, "model_dir": f"/models/{m}_{r}",
                   "predictions_uri": _write_predictions(tmp / f"{m}_{r}.parquet", frames,
                                                         world, mix, r, drop),
                   "val_logloss": {"age_gender": 1.5}}
                  for m, r, mix, drop in SPECS]
    return candidates, manifest, world


def in_memory(candidates, manifest, world):
    """The metrics and distributions tables as evaluate.run computed them before streaming:
    every split and every candidate's predictions read whole, scored with scikit-learn."""
    data = prepare_data(read_split_frames(manifest, EDGES), EDGES,
                        world.truth() if world is not None else None)
    bayes, note = posterior_probs_by_split(world, data)
    metric_parts, dist_parts = [], [data.actual_table]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # float32 rows sum to 1 +- 1e-7
        for ident, cand in zip(check_candidates(candidates), candidates):
            m, d = score_candidate(ident, read_predictions(cand["predictions_uri"]), data, bayes,
                                   cand["val_logloss"]["age_gender"])
            metric_parts += m
            dist_parts += d
    metrics = metrics_table(metric_parts + score_posterior(data, bayes))
    return metrics, distributions_table(dist_parts, metrics), note


def _keys(df: pd.DataFrame, cols: list[str]) -> np.ndarray:
    """Key columns with None / NaN / NA spelled alike."""
    sub = df[cols].astype(object)
    return sub.where(sub.notna(), None).astype(str).to_numpy()


def assert_same_table(got: pd.DataFrame, want: pd.DataFrame, keys: list[str], values: list[str]):
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want)
    np.testing.assert_array_equal(_keys(got, keys), _keys(want, keys))
    for col in values:
        np.testing.assert_allclose(got[col].to_numpy(float), want[col].to_numpy(float),
                                   rtol=0, atol=1e-9, err_msg=col)


@pytest.mark.parametrize("bucket_rows", [10**9, 700, 97])  # 1, 3 and 20 buckets
@pytest.mark.parametrize("with_world", [True, False])
def test_streaming_metrics_equal_the_in_memory_ones(tiny, bucket_rows, with_world, tmp_path):
    candidates, manifest, world = tiny
    world = world if with_world else None
    want_m, want_d, _ = in_memory(candidates, manifest, world)
    got = score_streaming(candidates, manifest, EDGES, world, bucket_rows=bucket_rows,
                          scratch_dir=str(tmp_path))
    assert_same_table(got.metrics, want_m, KEYS, ["value", "n"])
    assert_same_table(got.distributions, want_d, DIST_KEYS,
                      [c for c in want_d.columns if c in ("share", "tvd_provider", "tvd_truth")])
    metrics = set(got.metrics["metric"])
    assert {"log_loss_natural", "coverage", "tvd_argmax"} <= metrics
    assert ("bayes_log_loss" in metrics) == with_world
    assert got.gauge_note is None
    assert list(tmp_path.iterdir()) == []  # scratch files removed


@pytest.mark.parametrize("with_world", [True, False])
def test_buckets_scored_in_processes_equal_one_process(tiny, with_world):
    # forked workers take every other bucket; their merged sums give the one-process tables
    candidates, manifest, world = tiny
    world = world if with_world else None
    one = score_streaming(candidates, manifest, EDGES, world, bucket_rows=97, workers=1)
    for workers in (2, 3):
        got = score_streaming(candidates, manifest, EDGES, world, bucket_rows=97,
                              workers=workers)
        assert_same_table(got.metrics, one.metrics, KEYS, ["value", "n"])
        assert_same_table(got.distributions, one.distributions, DIST_KEYS,
                          [c for c in one.distributions.columns
                           if c in ("share", "tvd_provider", "tvd_truth")])
        assert got.sums.rows == one.sums.rows and got.sums.found == one.sums.found
        assert set(got.sums.labels) == set(one.sums.labels)
        for key, stats in one.sums.labels.items():
            np.testing.assert_array_equal(got.sums.labels[key].confusion, stats.confusion)
            assert got.sums.labels[key].log_loss_sum == pytest.approx(stats.log_loss_sum,
                                                                      rel=1e-12)
        for key, groups in one.sums.groups.items():
            np.testing.assert_array_equal(got.sums.groups[key].rows, groups.rows)
            np.testing.assert_allclose(got.sums.groups[key].loss, groups.loss, rtol=1e-12)


class FailingWorld:
    """A world whose posterior refuses one impression: the gauge is skipped for the whole run,
    even when the refusal comes in a late bucket."""

    def __init__(self, world, bad_id):
        self._world, self._bad = world, bad_id

    def truth(self):
        return self._world.truth()

    def posterior(self, df, providers=None):
        if (df["impression_id"] == self._bad).any():
            raise ValueError("row has zero probability under this world")
        return self._world.posterior(df, providers)

    def label_posterior(self, df, providers, dates=None):
        return self._world.label_posterior(df, providers, dates)


def test_a_posterior_failing_in_a_late_bucket_skips_the_gauge_like_in_memory(tiny, capsys):
    candidates, manifest, world = tiny
    failing = FailingWorld(world, "test_natural-33")
    # 20 buckets of ~97 rows: that impression is in the last one, after 19 scored ones
    assert buckets.bucket_of(pa.array(["test_natural-33"]), 20)[0] == 19
    want_m, want_d, want_note = in_memory(candidates, manifest, failing)
    got = score_streaming(candidates, manifest, EDGES, failing, bucket_rows=97, workers=2)
    assert want_note and got.gauge_note == want_note
    assert want_note in capsys.readouterr().out  # printed to the step's log
    assert not got.metrics["metric"].isin(["bayes_log_loss", "bayes_macro_f1"]).any()
    assert "bayes" not in set(got.metrics["model"])
    assert_same_table(got.metrics, want_m, KEYS, ["value", "n"])


def test_streaming_rejects_bad_inputs_with_one_line_errors(tiny, tmp_path):
    candidates, manifest, world = tiny
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": ["x"], "split": ["validation"]}), bad)
    broken = dict(candidates[0], predictions_uri=str(bad))
    with pytest.raises(ValueError, match=r"mlp/global#0: predictions lack column 'impression_id'"):
        score_streaming([broken], manifest, EDGES)
    with pytest.raises(ValueError, match="lacks split"):
        only_validation = {VALIDATION: manifest["paths"][VALIDATION]}
        score_streaming(candidates, dict(manifest, paths=only_validation), EDGES)
    with pytest.raises(ValueError, match="age edges"):
        score_streaming(candidates, manifest, (18, 40))
    with pytest.raises(ValueError, match="bucket_rows"):
        score_streaming(candidates, manifest, EDGES, bucket_rows=0)


def test_streaming_sweeps_a_dead_tasks_scratch_and_leaves_none(tiny, tmp_path, monkeypatch,
                                                                capsys):
    # a killed evaluate's scratch in $TMPDIR goes when the next one starts; a sweep while this
    # one runs (another task starting) leaves this one's folder, which goes at the end
    from pythia.evaluate import stream
    from pythia.scratch import sweep
    from test_scratch import is_locked, leave_dead_scratch

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches $TMPDIR
    stale = leave_dead_scratch(str(tmp_path), "pythia-evaluate-", 5000)
    stage_rows, during = stream._stage_rows, []

    def staging(*args):
        out = stage_rows(*args)
        during.append((sweep(str(tmp_path)), os.listdir(tmp_path), is_locked(args[-1])))
        return out

    monkeypatch.setattr(stream, "_stage_rows", staging)
    candidates, manifest, world = tiny
    got = score_streaming(candidates, manifest, EDGES, world, bucket_rows=97, workers=2)
    assert len(got.metrics)
    assert not os.path.exists(stale[0])
    assert "scratch: removed 1 folder(s), 5.0 kB" in capsys.readouterr().out
    [(swept, names, locked)] = during
    assert swept.folders == 0 and locked
    assert len(names) == 1 and names[0].startswith("pythia-evaluate-")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- buckets and sums

def test_buckets_keep_a_key_together_and_arrival_order(tmp_path):
    ids = pa.array([f"i{n % 37}" for n in range(500)])
    table = pa.table({"impression_id": ids, "seq": np.arange(500)})
    batches = [table.slice(0, 200), table.slice(200)]
    rows, schema = buckets.partition(batches, "impression_id", 7, str(tmp_path))
    assert rows == 500 and schema == table.schema
    parts = [buckets.read_bucket(str(tmp_path), b) for b in range(7)]
    got = pa.concat_tables([p for p in parts if p is not None])
    assert sorted(got["seq"].to_pylist()) == list(range(500))
    for b, part in enumerate(parts):
        if part is None:
            continue
        assert (np.diff(part["seq"].to_numpy()) > 0).all()  # arrival order kept
        assert (buckets.bucket_of(part["impression_id"], 7) == b).all()
    # the same key lands in the same bucket from another table (and null reads "None")
    again = buckets.bucket_of(pa.array(["i3", None, "None"]), 7)
    assert again[0] == buckets.bucket_of(pa.array(["i3"]), 7)[0] and again[1] == again[2]
    with pytest.raises(ValueError, match="n_buckets"):
        buckets.bucket_of(ids, 0)
    assert buckets.read_bucket(str(tmp_path / "none"), 0) is None


def test_label_stats_added_in_batches_equal_score_predictions():
    rng = np.random.default_rng(7)
    k = 4
    y = rng.integers(-1, k, 300)  # -1: unlabelled
    p = rng.dirichlet(np.ones(k), 300).astype(np.float32)
    stats = LabelStats(k, ordinal=True)
    for part in np.array_split(np.arange(300), 5):
        stats.add(y[part], p[part])
    valid = y >= 0
    want = score_predictions(y[valid], p[valid], list("abcd"), ordinal=True)
    got = stats.metric_rows(list("abcd"))
    assert got[["metric", "class"]].astype(str).equals(want[["metric", "class"]].astype(str))
    np.testing.assert_allclose(got["value"], want["value"], rtol=0, atol=1e-12)
    assert stats.n == valid.sum() and stats.n_unlabelled == (~valid).sum()
    shares = ShareStats(k)
    shares.add(p[:100])
    shares.add(p[100:])
    np.testing.assert_allclose(shares.shares()["mean_probability"], p.astype(float).mean(axis=0))
    with pytest.raises(ValueError, match="labels outside"):
        LabelStats(k, ordinal=False).add(np.array([k]), p[:1])
    assert LabelStats(k, ordinal=False).metric_rows(list("abcd")).empty  # nothing added


# ---------------------------------------------------------------- the previous run's champion

def _label_scorer(rows):
    """A previous champion that knew the labels (unlabelled rows: uniform)."""
    y = pd.to_numeric(rows["y_age_gender"]).fillna(-1).to_numpy().astype(int)
    p = np.full((len(rows), 2 * N_AGE), 0.02)
    p[np.flatnonzero(y >= 0), y[y >= 0]] = 1 - 0.02 * (2 * N_AGE - 1)
    p[y < 0] = 1 / (2 * N_AGE)
    return {"age_gender": p}


def _row_scorer(rows):
    """A previous champion whose answer depends on each row alone (so batches cannot matter)."""
    seeds = rows["impression_id"].str.rsplit("-", n=1).str[-1].astype(int).to_numpy()
    return {"age_gender": np.stack([np.random.default_rng(s).dirichlet(np.ones(2 * N_AGE))
                                    for s in seeds]) if len(seeds) else
            np.zeros((0, 2 * N_AGE))}


PREVIOUS = {
    "knows labels": lambda region, rows: _label_scorer(rows),
    "row-wise": lambda region, rows: None if region == "NA" else _row_scorer(rows),
    "broken": lambda region, rows: (_ for _ in ()).throw(OSError("bundle unreadable")),
}


@pytest.fixture(scope="module")
def natural_day(tmp_path_factory):
    """(candidates, manifest): a natural test day with unlabelled AgeGender rows, a global
    winner and a regional one that misses rows."""
    tmp = tmp_path_factory.mktemp("previous")
    frames, world = _make_world(seed=4)
    nat = frames["test_natural"]
    nat["y_age_gender"] = nat["y_age_gender"].astype("Int32")
    nat.loc[[3, 50, 51, 400], "y_age_gender"] = pd.NA
    nat[USER_HELD_OUT] = nat["user_id"].str[1:].astype(int) % 10 == 0  # new users (etl.holdout)
    manifest = _write_splits(tmp / "splits", frames)
    candidates = [{"model": m, "region": r, "config_id": 0,
                   "predictions_uri": _write_predictions(tmp / f"{m}_{r}.parquet", frames,
                                                         world, mix, r, drop)}
                  for m, r, mix, drop in [("mlp", "global", 0.2, 0), ("gbdt", "EU", 0.5, 3)]]
    return candidates, manifest


def _in_memory_comparison(candidate, manifest, region, previous):
    from pythia import storage
    from pythia.evaluate.champions import compare_with_previous
    from pythia.evaluate.frames import split_frame
    from pythia.evaluate.previous import comparison_test_set
    from pythia.evaluate.slices import align
    frame = split_frame("test_natural", storage.read_frame(manifest["paths"]["test_natural"]),
                        EDGES)
    winner = align(read_predictions(candidate["predictions_uri"]), frame, candidate["region"],
                   EDGES, "winner")
    return compare_with_previous(frame, winner, region, previous, "DemoFlow/1",
                                 comparison_test_set(manifest))


def _assert_same_comparison(got, want):
    assert got[2:] == want[2:]  # rows compared and the note
    for g, w in zip(got[:2], want[:2]):
        assert (g is None) == (w is None)
        if w is not None:
            assert abs(g - w) <= 1e-9, (g, w)


@pytest.mark.parametrize("bucket_rows,batch_rows", [(10**9, 10**6), (250, 7), (31, 64)])
def test_streamed_previous_comparison_equals_the_in_memory_one(natural_day, bucket_rows,
                                                               batch_rows, tmp_path):
    from pythia.evaluate.previous import PreviousComparison
    candidates, manifest = natural_day
    for name, previous in PREVIOUS.items():
        with PreviousComparison(candidates, manifest, EDGES, previous, "DemoFlow/1",
                                bucket_rows=bucket_rows, score_batch_rows=batch_rows,
                                scratch_dir=str(tmp_path)) as check:
            for cand in candidates:
                best = {"model": cand["model"], "candidate_region": cand["region"],
                        "config_id": 0}
                regions = ["global", "EU", "NA"] if cand["region"] == "global" else ["EU"]
                for region in regions:
                    want = _in_memory_comparison(cand, manifest, region, previous)
                    got = check(region, best)
                    _assert_same_comparison(got, want)
                    if name == "knows labels":
                        assert got[3] == "previous = DemoFlow/1" and got[0] < got[1]
                        assert got[2] == want[2] > 100
                    if name == "row-wise" and region == "NA":
                        assert got == (None, None, 0, "DemoFlow/1 has no champion for NA")
                    if name == "broken":
                        assert "DemoFlow/1 could not score" in got[3]
        assert list(tmp_path.iterdir()) == []  # scratch files removed


def test_a_run_that_held_out_users_is_compared_with_the_previous_one_on_them(natural_day,
                                                                           tmp_path):
    from pythia import storage
    from pythia.evaluate.previous import PreviousComparison
    candidates, manifest = natural_day
    held = dict(manifest, holdout_users=0.1)
    rows = storage.read_frame(manifest["paths"]["test_natural"])
    new = rows["user_held_out"].astype(bool) & rows["y_age_gender"].notna()
    assert 0 < new.sum() < rows["y_age_gender"].notna().sum()
    best = {"model": "mlp", "candidate_region": "global", "config_id": 0}
    for bucket_rows in (10**9, 31):
        with PreviousComparison(candidates, held, EDGES, PREVIOUS["knows labels"], "DemoFlow/1",
                                bucket_rows=bucket_rows, scratch_dir=str(tmp_path)) as check:
            got = check("global", best)
        want = _in_memory_comparison(candidates[0], held, "global", PREVIOUS["knows labels"])
        _assert_same_comparison(got, want)
        assert got[2] == int(new.sum())  # the new users' labelled rows only
        assert got[3] == "previous = DemoFlow/1; the new users' rows"


def test_streamed_previous_comparison_refuses_what_the_reference_refuses(natural_day, tmp_path):
    from pythia.evaluate.previous import PreviousComparison
    candidates, manifest = natural_day
    best = {"model": "mlp", "candidate_region": "global", "config_id": 0}
    k = 2 * N_AGE
    bad = {"wrong classes": (lambda r, rows: {"age_gender": np.full((len(rows), 2), 0.5)},
                             f"expected {k} classes, got 2"),
           "wrong rows": (lambda r, rows: {"age_gender": np.full((len(rows) + 1, k), 1 / k)},
                          "returned")}
    for previous, match in bad.values():
        with pytest.raises(ValueError, match=match):
            _in_memory_comparison(candidates[0], manifest, "EU", previous)
        with pytest.raises(ValueError, match=match):
            with PreviousComparison(candidates, manifest, EDGES, previous, "DemoFlow/1",
                                    bucket_rows=200, scratch_dir=str(tmp_path)) as check:
                check("EU", best)
    assert list(tmp_path.iterdir()) == []
    # no row of the region at all: the bundle is still asked, as the reference asks it
    asked = []

    def counting(region, rows):
        asked.append(len(rows))
        return _label_scorer(rows)

    with PreviousComparison(candidates, manifest, EDGES, counting, "DemoFlow/1") as check:
        got = check("APAC", best)
    assert got == (None, None, 0, "no labelled test rows in APAC to compare with")
    assert asked == [0]
    with pytest.raises(ValueError, match="bucket_rows"):
        PreviousComparison(candidates, manifest, EDGES, counting, "x", bucket_rows=0)
