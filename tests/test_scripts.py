"""The analysis scripts' own arithmetic (scripts/*.py read finished runs; their statistics are
checked here on numbers whose answer is known)."""
from __future__ import annotations

import numpy as np
import pytest

from repo_modules import load_repo_module


def _load(name: str):
    return load_repo_module(f"scripts/{name}.py")


def test_paired_difference_standard_errors_over_rows_and_users():
    weighted_diff = _load("champion_margins").weighted_diff
    rng = np.random.default_rng(0)
    d = rng.normal(0.1, 1.0, 400)
    ones = np.ones(400)
    mean, se_rows, se_users = weighted_diff(d, ones, np.arange(400))
    # one row per user, unit weights: the textbook SE of a mean (n in the denominator)
    assert mean == pytest.approx(d.mean())
    assert se_rows == pytest.approx(d.std() / np.sqrt(400)) and se_users == pytest.approx(se_rows)
    # every user's row shown twice: same mean, the row SE shrinks by sqrt(2), the user SE not
    twice = np.repeat(d, 2)
    mean2, se_rows2, se_users2 = weighted_diff(twice, np.ones(800), np.repeat(np.arange(400), 2))
    assert mean2 == pytest.approx(mean) and se_users2 == pytest.approx(se_users)
    assert se_rows2 == pytest.approx(se_rows / np.sqrt(2))
    # weights: a row of weight 2 is that row twice
    w = np.where(np.arange(400) < 200, 2.0, 1.0)
    copies = np.concatenate([d, d[:200]])
    users = np.concatenate([np.arange(400), np.arange(200)])
    assert weighted_diff(d, w, np.arange(400))[::2] == pytest.approx(
        weighted_diff(copies, np.ones(600), users)[::2])


def test_champion_margins_compares_with_the_registry_baselines():
    from pythia.models import BASELINE_MODELS

    assert set(_load("champion_margins").BASELINES) == set(BASELINE_MODELS)


def test_gauge_bench_row_losses_skip_unlabelled_rows():
    gauge_bench = load_repo_module("benchmarks/gauge_bench.py")
    rng = np.random.default_rng(3)
    y = rng.integers(-1, 4, 200)  # -1: a row without a label
    p = rng.dirichlet(np.ones(4), 200)
    loss = gauge_bench.row_losses(p, y)
    assert np.isnan(loss[y < 0]).all() and not np.isnan(loss[y >= 0]).any()
    assert loss[y == 2] == pytest.approx(-np.log(p[y == 2, 2]))


def test_gauge_bench_rejects_bad_gauges_and_predictions_before_reading_a_run():
    gauge_bench = load_repo_module("benchmarks/gauge_bench.py")
    with pytest.raises(SystemExit, match="'nope' is not one of realised, in_between"):
        gauge_bench.main(["--run", "1", "--gauges", "realised,nope"])
    with pytest.raises(SystemExit, match="'realised' is required"):
        gauge_bench.main(["--run", "1", "--gauges", "population"])
    with pytest.raises(SystemExit, match="expected LABEL=PATH"):
        gauge_bench.main(["--run", "1", "--predictions", "/tmp/p.parquet"])
