"""The natural_new_users slice: the natural test day's rows of users held out of train and
validation (``user_held_out``, etl.holdout), read when the split has the flag (older runs'
splits lack it: no new users), scored like the other slices, listed by the gauge per slice
with the population posterior as its bar, and left out, not crashing, when it has no rows."""
from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest

from pythia.evaluate.frames import FRAME_COLUMNS, OPTIONAL_FRAME_COLUMNS, split_frame
from pythia.evaluate.gauge import (GAUGE_SLICES, build_gauge, gauge_by_slice, in_between_of,
                                   print_gauge_slices)
from pythia.evaluate import slices  # its test_set_rows, imported here, would be collected
from pythia.evaluate.slices import (NATURAL, NATURAL_NEW_USERS, NATURAL_POWER_USERS,
                                    SPLIT_OF_TEST_SET, TEST_SETS, slice_masks)
from pythia.evaluate.margins import (MIN_USER_GROUPS, NEW_USERS_TEST_PART,
                                     regional_margins, user_groups)
from pythia.evaluate.stream import score_streaming
from pythia.features import TEST_NATURAL, TEST_RESAMPLED, USER_HELD_OUT, VALIDATION
from test_evaluate import EDGES, FakeCard, _make_world, _write_predictions, _write_splits
from test_evaluate_stream import SPECS, in_memory, tiny  # noqa: F401 (module fixture)
from test_gauge_population import PopulationWorld

CHAMPIONS = pd.DataFrame({
    "region": ["global", "EU", "NA"], "model": ["mlp", "gbdt", None],
    "candidate_region": ["global", "EU", None],
    "config_id": pd.array([0, 0, None], dtype="Int64"), "blessed": [True, False, False]})


def _n(metrics: pd.DataFrame, test_set: str, region: str = "global") -> int:
    """Labelled rows mlp/global was scored on in a slice (AgeGender, provider labels)."""
    sel = metrics[(metrics["model"] == "mlp") & (metrics["region"] == "global")
                  & (metrics["eval_region"] == region) & (metrics["test_set"] == test_set)
                  & (metrics["metric"] == "log_loss") & (metrics["target"] == "age_gender")
                  & (metrics["label_source"] == "provider")]
    assert len(sel) == 1, (test_set, region)
    return int(sel["n"].iloc[0])


def test_split_frame_reads_the_held_out_flag_when_present_else_all_false():
    frames, _ = _make_world(seed=1, rows_per_split=40)
    df = frames[TEST_NATURAL][list(FRAME_COLUMNS)]  # an older run's columns: no flag
    old = split_frame(TEST_NATURAL, df, EDGES)
    assert old.held_out.dtype == bool and len(old.held_out) == 40 and not old.held_out.any()
    flags = pd.array([True, None] + [False] * 38, dtype="boolean")  # a null is not held out
    new = split_frame(TEST_NATURAL, df.assign(**{USER_HELD_OUT: flags}), EDGES)
    np.testing.assert_array_equal(new.held_out, [True] + [False] * 39)
    assert OPTIONAL_FRAME_COLUMNS == (USER_HELD_OUT,) and USER_HELD_OUT not in FRAME_COLUMNS


def test_the_slice_selects_exactly_the_held_out_natural_rows():
    assert NATURAL_NEW_USERS in TEST_SETS and NATURAL_NEW_USERS in GAUGE_SLICES
    assert SPLIT_OF_TEST_SET[NATURAL_NEW_USERS] == TEST_NATURAL
    assert GAUGE_SLICES.index(NATURAL_NEW_USERS) > GAUGE_SLICES.index(NATURAL_POWER_USERS)
    frames, _ = _make_world(seed=2, rows_per_split=50)
    df = frames[TEST_NATURAL]
    held = np.arange(50) % 3 == 0
    frame = split_frame(TEST_NATURAL, df.assign(**{USER_HELD_OUT: held}), EDGES)
    np.testing.assert_array_equal(slices.test_set_rows(frame, NATURAL_NEW_USERS), held)
    np.testing.assert_array_equal(slices.test_set_rows(frame, NATURAL_POWER_USERS), frame.power)
    assert slices.test_set_rows(frame, NATURAL).all()
    pos = np.array([0, 1, 3, 6, 7])
    np.testing.assert_array_equal(slices.test_set_rows(frame, NATURAL_NEW_USERS, pos), held[pos])
    masks = dict(slice_masks(frame, pos, NATURAL_NEW_USERS, ["global", "EU"]))
    np.testing.assert_array_equal(masks["global"], held[pos])
    np.testing.assert_array_equal(masks["EU"], held[pos] & (frame.regions[pos] == "EU"))
    # a new mask each call: a caller's `&=` must not change the frame's flags
    slices.test_set_rows(frame, NATURAL_NEW_USERS)[:] = False
    np.testing.assert_array_equal(frame.held_out, held)


@pytest.mark.parametrize("with_world", [True, False])
def test_streamed_metrics_score_the_new_users_like_the_in_memory_path(tiny, with_world):
    """Without a world the stream reads only the frame columns: the flag must be among them."""
    candidates, manifest, world = tiny
    world = world if with_world else None
    got = score_streaming(candidates, manifest, EDGES, world, bucket_rows=97).metrics
    want, _, _ = in_memory(candidates, manifest, world)
    keys = ["model", "region", "eval_region", "target", "label_source", "metric", "class"]
    a, b = (m[m["test_set"] == NATURAL_NEW_USERS].sort_values(keys) for m in (got, want))
    assert len(a) == len(b) > 50
    np.testing.assert_allclose(a["value"].to_numpy(float), b["value"].to_numpy(float),
                               rtol=0, atol=1e-9)
    nat = pd.read_parquet(manifest["paths"][TEST_NATURAL])
    labelled = nat[nat[USER_HELD_OUT]]["y_age_gender"].notna()
    assert _n(got, NATURAL_NEW_USERS) == labelled.sum() > 0
    eu = nat[nat[USER_HELD_OUT] & (nat["region"] == "EU")]
    assert _n(got, NATURAL_NEW_USERS, "EU") == len(eu)
    assert _n(got, NATURAL_NEW_USERS) < _n(got, NATURAL)


def test_gauge_per_slice_lists_the_new_users_with_the_population_bar(tiny):
    candidates, manifest, fake = tiny
    world = PopulationWorld(fake.q, fake.truth())
    gauge = build_gauge(score_streaming(candidates, manifest, EDGES, world).metrics)
    table = gauge_by_slice(gauge, CHAMPIONS)
    assert list(dict.fromkeys(table[table["eval_region"] == "global"]["test_set"])) == list(
        GAUGE_SLICES)
    row = table[(table["eval_region"] == "EU") & (table["test_set"] == NATURAL_NEW_USERS)
                & (table["label_source"] == "provider")].iloc[0]
    want = gauge[(gauge["eval_region"] == "EU") & (gauge["model"] == "gbdt")
                 & (gauge["region"] == "EU") & (gauge["test_set"] == NATURAL_NEW_USERS)
                 & (gauge["label_source"] == "provider") & (gauge["target"] == "age")].iloc[0]
    assert row["ratio_population_age"] == want["ratio_population"]
    out = io.StringIO()
    print_gauge_slices(gauge, CHAMPIONS, out)
    text = out.getvalue()
    assert NATURAL_NEW_USERS in text
    assert f"on {NATURAL_NEW_USERS} (users held out of training) the fair bar is " \
           "ratio_population_*" in text


def test_the_regional_margin_on_the_new_users_pairs_their_rows(tiny):
    """The card's new_diff: regional - global AgeGender log-loss on the test day's held-out
    users of the region, equal to the two candidates' log-losses on the natural_new_users
    slice (same rows), with a user-clustered SE; the whole day's test_diff stays apart."""
    candidates, manifest, _ = tiny
    scored = score_streaming(candidates, manifest, EDGES, None, bucket_rows=97)
    table = regional_margins(scored.sums.groups, pd.DataFrame(
        {"region": ["EU"], "model": ["gbdt"], "config_id": [0]})).iloc[0]
    m = scored.metrics

    def loss(region, test_set):
        sel = m[(m["model"] == "gbdt") & (m["region"] == region) & (m["eval_region"] == "EU")
                & (m["test_set"] == test_set) & (m["metric"] == "log_loss")
                & (m["target"] == "age_gender") & (m["label_source"] == "provider")]
        return float(sel["value"].iloc[0])

    assert table["new_diff"] == pytest.approx(loss("EU", NATURAL_NEW_USERS)
                                              - loss("global", NATURAL_NEW_USERS), abs=1e-6)
    assert table["test_diff"] == pytest.approx(loss("EU", NATURAL) - loss("global", NATURAL),
                                               abs=1e-6)
    assert table["new_diff"] != pytest.approx(table["test_diff"])
    nat = pd.read_parquet(manifest["paths"][TEST_NATURAL])
    held = nat[nat[USER_HELD_OUT] & (nat["region"] == "EU") & nat["y_age_gender"].notna()]
    part = scored.sums.groups[(("gbdt", "EU", 0), "EU", NEW_USERS_TEST_PART)]
    assert part.rows.sum() == len(held) > 0
    # this tiny day's held-out EU users fill fewer user groups than an SE needs: no SE, said
    margin = part.margin_against(scored.sums.groups[(("gbdt", "global", 0), "EU",
                                                     NEW_USERS_TEST_PART)])
    assert margin.n_groups == len(set(user_groups(held["user_id"]))) < MIN_USER_GROUPS
    assert math.isnan(table["new_se"]) and math.isnan(table["new_z"]) and margin.note


@pytest.mark.parametrize("flag", ["absent", "all_false"])
def test_a_new_users_slice_without_rows_is_left_out_not_a_crash(tmp_path, flag):
    """An older run (no flag) and a run with holdout_users 0 (no user held out)."""
    from pythia import evaluate

    frames, fake = _make_world(seed=4, rows_per_split=300)
    if flag == "all_false":
        frames = {s: df.assign(**{USER_HELD_OUT: False}) for s, df in frames.items()}
    manifest = _write_splits(tmp_path / "splits", frames)
    candidates = [{"model": m, "region": r, "config_id": 0, "model_dir": f"/models/{m}_{r}",
                   "predictions_uri": _write_predictions(tmp_path / f"{m}_{r}.parquet", frames,
                                                         fake, mix, r, drop),
                   "val_logloss": {"age_gender": 1.5}}
                  for m, r, mix, drop in SPECS]
    world = PopulationWorld(fake.q, fake.truth())
    for w in (world, None):
        want, dists, _ = in_memory(candidates, manifest, w)
        assert NATURAL_NEW_USERS not in set(want["test_set"]) | set(dists["test_set"])
    results = evaluate.run(candidates, manifest, None, EDGES, str(tmp_path / "reports"),
                           baseline_models=("gbdt",), world=world)
    for name in ("metrics", "distributions", "gauge", "gauge_slices"):
        assert NATURAL_NEW_USERS not in set(results[name]["test_set"]), name
    assert set(results["gauge_slices"]["test_set"]) == set(GAUGE_SLICES) - {NATURAL_NEW_USERS}
    out = io.StringIO()
    print_gauge_slices(results["gauge"], results["champions"], out)
    assert "natural_power_users" in out.getvalue() and "fair bar" not in out.getvalue()
    evaluate.render_card(FakeCard(), results, None, None)


class _WorldWithTables(PopulationWorld):
    params = "the generative tables"  # in_between_of only asks whether there are some


def test_the_in_between_gauge_refuses_a_run_that_held_out_users(tiny, tmp_path):
    candidates, manifest, fake = tiny
    held = {**manifest, "paths": {**manifest["paths"], "train": str(tmp_path / "train")},
            "holdout_users": 0.1}
    world = _WorldWithTables(fake.q, fake.truth())
    with pytest.raises(ValueError, match=r"held out users from train \(holdout_users > 0\)"):
        in_between_of(world, held)
    scored = score_streaming(candidates, held, EDGES, world, workers=1)
    assert "in-between gauge skipped" in scored.sums.in_between_note
    assert "holdout_users 0" in scored.sums.in_between_note
    assert not scored.metrics["metric"].str.startswith("in_between").any()
    assert scored.metrics["metric"].str.startswith("population").any()
    assert {VALIDATION, TEST_RESAMPLED} <= set(held["paths"])
