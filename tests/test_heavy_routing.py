"""benchmarks/heavy_routing.py: a candidate's heavy rows routed to another, and the champion
rule's noise margin of that routing, computed as evaluate computes it."""
import numpy as np
import pytest

from pythia.evaluate.margins import GroupSums, user_groups
from repo_modules import load_repo_module

hr = load_repo_module("benchmarks/heavy_routing.py")


def test_cuts_are_parsed_or_refused_in_one_line():
    assert hr.parse_cuts("none, 10,30") == [None, 10, 30]
    for bad in ("", "0", "ten", "none,-3"):
        with pytest.raises(SystemExit, match="--cuts"):
            hr.parse_cuts(bad)


def test_a_row_is_routed_from_its_cut_up():
    counts = np.array([0, 29, 30, 31, 500])
    np.testing.assert_array_equal(hr.heavy_rows(counts, 30), [0, 0, 1, 1, 1])
    assert not hr.heavy_rows(counts, None).any()
    a, b = np.full((5, 3), 1 / 3), np.tile([0.5, 0.25, 0.25], (5, 1))
    np.testing.assert_array_equal(hr.routed(a, b, hr.heavy_rows(counts, 30))[:, 0],
                                  [1 / 3, 1 / 3, 0.5, 0.5, 0.5])


def _probs(rng, n, k):
    p = rng.dirichlet(np.ones(k), n)
    return p


@pytest.mark.parametrize("cut", [None, 5, 50])
def test_the_margin_is_the_champion_rules_on_the_routed_candidate(cut):
    rng = np.random.default_rng(3)
    n, k = 4000, 12
    users = np.array([f"u{i}" for i in rng.integers(0, 600, n)], dtype=object)
    counts = rng.poisson(20, n)
    y = rng.integers(0, k, n)
    w = rng.uniform(0.5, 2.0, k)[y]
    p_a, p_b = _probs(rng, n, k), _probs(rng, n, k)
    heavy = hr.heavy_rows(counts, cut)
    # evaluate's path: per user group sums of each scorer, then the paired margin
    groups = user_groups(users)
    a, b = GroupSums(), GroupSums()
    a.add(groups, y, hr.routed(p_a, p_b, heavy), w)
    b.add(groups, y, p_b, w)
    want = a.margin_against(b)
    got = hr.routed_margin(hr.row_losses(p_a, y), hr.row_losses(p_b, y), w, users, heavy)
    assert got.n_groups == want.n_groups
    np.testing.assert_allclose([got.diff, got.se], [want.diff, want.se], rtol=1e-9)
    if cut is not None:  # what A says on a routed row does not count
        other = p_a.copy()
        other[heavy] = _probs(rng, int(heavy.sum()), k)
        again = hr.routed_margin(hr.row_losses(other, y), hr.row_losses(p_b, y), w, users,
                                 heavy)
        assert again.diff == pytest.approx(got.diff, rel=1e-12)
        assert again.se == pytest.approx(got.se, rel=1e-12)
