"""``benchmarks/quality_bench.py --members K`` (session 42): K fits of a model on the same rows
that differ only in their training seed, each scored, and their ensemble (the mean of their
probabilities) scored as the model."""
from __future__ import annotations

import numpy as np
import pytest

from repo_modules import load_repo_module


def test_member_mean_is_the_mean_and_keeps_the_marginals():
    bench = load_repo_module("benchmarks/quality_bench.py")
    rng = np.random.default_rng(0)
    members = []
    for _ in range(3):
        joint = rng.dirichlet(np.ones(6), size=5)
        cube = joint.reshape(5, 2, 3)
        members.append({"age_gender": joint, "gender": cube.sum(2), "age": cube.sum(1)})
    mean = bench.member_mean(members)
    np.testing.assert_allclose(mean["age_gender"], np.mean([m["age_gender"] for m in members], 0))
    cube = mean["age_gender"].reshape(5, 2, 3)
    np.testing.assert_allclose(mean["gender"], cube.sum(2), atol=1e-12)
    np.testing.assert_allclose(mean["age"], cube.sum(1), atol=1e-12)


def rows_of(out: str) -> dict[tuple[str, str, str], float]:
    """(slice, model, target) -> logloss from the bench's table."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].startswith("natural"):
            try:
                rows[tuple(parts[:3])] = float(parts[3])
            except ValueError:
                continue
    return rows


def test_members_are_fitted_with_their_own_seeds_and_their_mean_scored(tmp_path, capsys):
    pytest.importorskip("tensorflow")
    bench = load_repo_module("benchmarks/quality_bench.py")
    assert bench.main(["--preset", "tiny", "--cache", str(tmp_path), "--models", "mlp",
                       "--members", "2", "--epochs", "2", "--max-rows", "6000"]) == 0
    rows = rows_of(capsys.readouterr().out)
    one, two, mean = (rows[("natural", m, "age_gender")] for m in ("mlp#0", "mlp#1", "mlp"))
    assert one != two  # the seeds differ
    # the log-loss is convex in the probabilities: the mean's is at most the members' mean,
    # and below it unless the fits agree everywhere
    assert mean < (one + two) / 2


def test_members_below_one_are_refused_before_any_data_is_read(tmp_path, capsys):
    bench = load_repo_module("benchmarks/quality_bench.py")
    with pytest.raises(SystemExit):
        bench.main(["--preset", "tiny", "--cache", str(tmp_path), "--models", "logreg",
                    "--members", "0"])
    assert "--members must be at least 1, got 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no world generated
