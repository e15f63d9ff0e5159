"""The per-slice guard on regional candidates (evaluate/guard.py): on the validation day a
regional candidate that loses to its family's global candidate on the power users or on the
other users by more than z_min user-clustered SEs is not chosen, and the champions row says
why; one that does not lose (or loses only on the test day) is left alone."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pythia.evaluate.guard import guard_regional, loses_by_more_than
from pythia.evaluate.margins import OTHER_PART, POWER_PART, Margin, slice_margin_lookup
from pythia.evaluate.stream import score_streaming
from pythia.features import age_gender_index
from test_evaluate import prediction_rows
from test_margins import write_candidates

EDGES = (18, 35, 55)
N_AGE = len(EDGES)
K = 2 * N_AGE
COUNTRIES = {"DE": "EU", "FR": "EU", "BR": "LATAM", "MX": "LATAM", "US": "NA"}


def _rows(seed: int = 0) -> dict[str, pd.DataFrame]:
    """Split rows as a user's pipeline leaves them: five countries in three regions with
    skewed shares, skewed classes, power users (a tenth of the users, heavy), a null user
    id, pandas nullable label and flag columns."""
    rng = np.random.default_rng(seed)
    n_users = 900
    home = rng.choice(list(COUNTRIES), n_users, p=[0.3, 0.1, 0.25, 0.1, 0.25])
    power_user = rng.random(n_users) < 0.1
    frames = {}
    for split in ("validation", "test_natural", "test_resampled"):
        n = 7000
        u = np.where(rng.random(n) < 0.15, rng.choice(np.flatnonzero(power_user), n),
                     rng.choice(np.flatnonzero(~power_user), n))
        y_ag = rng.choice(K, n, p=[0.35, 0.25, 0.15, 0.12, 0.08, 0.05])
        yg, ya = y_ag // N_AGE, y_ag % N_AGE
        users = pd.Series([f"u{i:05d}" for i in u], dtype=object)
        users[rng.random(n) < 0.01] = None
        country = home[u]
        frames[split] = pd.DataFrame({
            "impression_id": [f"{split[:3]}-{i:06d}" for i in range(n)], "user_id": users,
            "country": country, "region": [COUNTRIES[c] for c in country],
            "is_power_user": pd.array(power_user[u], dtype="boolean"),
            "y_gender": pd.array(yg, dtype="Int32"), "y_age": pd.array(ya, dtype="Int32"),
            "y_age_gender": pd.array(age_gender_index(yg, ya, N_AGE), dtype="Int32"),
            "label_provider": "acme", "date": "2024-01-05", "split": split})
    return frames


def _per_power_flag(sharp, split, df):
    """A candidate's sharpness on power users and on the others, per split (``sharp(split)``)."""
    s_power, s_other = sharp(split)
    return np.where(df["is_power_user"].to_numpy(bool), s_power, s_other)[:, None]


def _write(root, frames, candidates, seed: int = 1):
    """Each split as a pandas-written and a pyarrow-written part; each candidate's
    predictions with its own sharpness on power users and on the others, per split."""
    return write_candidates(root, frames, candidates, seed, {"0": 0.5, "1": 0.7, "5": 1.0}, 3,
                            _per_power_flag)


def _everywhere(s_power, s_other):
    return lambda split: (s_power, s_other)


def test_guard_excludes_a_regional_candidate_that_falls_apart_on_validation_power_users(
        tmp_path):
    from pythia import evaluate

    frames = _rows()
    manifest, cands = _write(tmp_path, frames, [
        ("mlp", "global", _everywhere(2.0, 2.0), False),
        ("logreg", "global", _everywhere(0.5, 0.5), True),
        ("class_prior", "global", _everywhere(0.0, 0.0), True),
        # LATAM: much better on the other users, much worse on the power users
        ("mlp", "LATAM", _everywhere(1.0, 4.0), False),
        # EU: better on both parts
        ("mlp", "EU", _everywhere(2.4, 2.4), False),
        # NA: better on validation, falls apart on the test day only (never read)
        ("mlp", "NA", lambda split: (2.4, 2.4) if split == "validation" else (-3.0, 2.4),
         False)])
    out = evaluate.run(cands, manifest, None, EDGES, str(tmp_path / "reports"),
                       baseline_models=evaluate.baseline_models_of(cands), make_figures=False,
                       z_min=2.0)
    c = out["champions"].set_index("region")
    head = out["headline"]
    val = head.set_index(["eval_region", "model", "candidate_region"])["val_logloss"]
    # without the guard LATAM's regional candidate would win: it is better overall
    assert val[("LATAM", "mlp", "LATAM")] < val[("LATAM", "mlp", "global")]
    assert c.loc["LATAM", "champion"] == "mlp/global#0"
    guard = c.loc["LATAM", "guard"]
    assert guard.startswith("per-slice guard excluded mlp/LATAM#0 loses to mlp/global#0 on "
                            "validation power users +")
    assert "other users" not in guard and "\n" not in guard
    assert c.loc["LATAM", "reason"].endswith(guard)  # what the card and `pythia report` show
    assert c.loc["EU", "champion"] == "mlp/EU#0" and pd.isna(c.loc["EU", "guard"])
    assert c.loc["NA", "champion"] == "mlp/NA#0" and pd.isna(c.loc["NA", "guard"])
    assert pd.isna(c.loc["global", "guard"])
    # the margins behind it: streamed per part of the validation rows
    margin = slice_margin_lookup(evaluate.score_streaming(
        cands, manifest, EDGES, bucket_rows=3000).sums.groups)
    power = margin(("mlp", "LATAM", 0), ("mlp", "global", 0), "LATAM", POWER_PART)
    other = margin(("mlp", "LATAM", 0), ("mlp", "global", 0), "LATAM", OTHER_PART)
    assert power.z > 2 and other.z < -2 and power.n_groups >= 20
    assert f"{power.diff:+.4f}" in guard
    # the card's regional-vs-global table shows the guard's figures for every family
    rvg = out["regional_vs_global"].set_index(["region", "model"])
    assert rvg.loc[("LATAM", "mlp"), "val_z_power_users"] == pytest.approx(power.z)
    assert rvg.loc[("LATAM", "mlp"), "val_z_other_users"] == pytest.approx(other.z)
    assert rvg.loc[("EU", "mlp"), "val_z_power_users"] < 2


def test_the_parts_partition_the_validation_rows_and_match_pandas(tmp_path):
    frames = _rows(seed=5)
    manifest, cands = _write(tmp_path, frames, [
        ("mlp", "global", _everywhere(2.0, 1.0), False),
        ("mlp", "EU", _everywhere(0.5, 3.0), False)])
    sums = score_streaming(cands, manifest, EDGES, bucket_rows=1000).sums
    g = sums.groups
    for key in [("mlp", "global", 0), ("mlp", "EU", 0)]:
        whole = g[(key, "EU")]
        parts = [g[(key, "EU", part)] for part in (POWER_PART, OTHER_PART)]
        np.testing.assert_array_equal(parts[0].rows + parts[1].rows, whole.rows)
        np.testing.assert_allclose(parts[0].loss + parts[1].loss, whole.loss, atol=1e-9)
    # the power part's labelled row count equals pandas' on the region's validation rows
    val = frames["validation"]
    want = int((val["is_power_user"].fillna(False) & (val["region"] == "EU")
                & val["y_age_gender"].notna()).sum())
    assert g[(("mlp", "EU", 0), "EU", POWER_PART)].rows.sum() == want


def _scores(rows):
    base = {"model_dir": "/m", "eligible": True, "ineligible_reason": None, "config_id": 0}
    return pd.DataFrame([dict(base, **r) for r in rows])


def test_guard_rule_on_given_margins():
    scores = _scores([
        dict(eval_region="EU", model="mlp", candidate_region="EU", val_logloss=1.0),
        dict(eval_region="EU", model="mlp", candidate_region="global", val_logloss=1.1),
        dict(eval_region="EU", model="logreg", candidate_region="EU", val_logloss=1.2),
        dict(eval_region="global", model="mlp", candidate_region="global", val_logloss=1.1)])
    lose = {POWER_PART: Margin(0.05, 0.02, 40), OTHER_PART: Margin(-0.01, 0.01, 40)}
    out, notes = guard_regional(scores, lambda a, b, r, part: lose[part], 2.0, ("logreg",))
    assert out["eligible"].tolist() == [False, True, True, True]  # the baseline is not guarded
    assert out.loc[0, "ineligible_reason"].startswith("per-slice guard: mlp/EU#0 loses to "
                                                      "mlp/global#0 on validation power users")
    assert list(notes) == ["EU"]
    # within noise: kept; z_min 0: any loss on the point estimate excludes it
    out, notes = guard_regional(scores, lambda a, b, r, part: lose[part], 3.0, ("logreg",))
    assert out["eligible"].all() and notes == {}
    out, _ = guard_regional(scores, lambda a, b, r, part: lose[part], 0.0, ("logreg",))
    assert not out.loc[0, "eligible"]
    # no SE (too few users) or no sums: no evidence, kept (z_min > 0)
    no_se = Margin(0.3, math.nan, 5, "only 5 user group(s)")
    assert not loses_by_more_than(no_se, 2.0) and loses_by_more_than(no_se, 0.0)
    assert not loses_by_more_than(None, 0.0)
    out, _ = guard_regional(scores, lambda *a: None, 2.0)
    assert out["eligible"].all()
    with pytest.raises(ValueError, match="z_min must be >= 0"):
        guard_regional(scores, lambda *a: None, -1.0)


def test_a_regional_candidate_that_wins_only_on_power_users_is_not_chosen(tmp_path):
    """Better overall through the held-out power users, a shade worse (within noise) on the
    other users: the old rule kept it and the overall validation loss chose it; the guard
    now routes the region to the global candidate and says why. LATAM, better on both
    parts, stays."""
    from pythia import evaluate

    frames = _rows(seed=3)
    manifest, cands = _write(tmp_path, frames, [
        ("mlp", "global", _everywhere(2.0, 2.0), False),
        ("logreg", "global", _everywhere(0.5, 0.5), True),
        ("class_prior", "global", _everywhere(0.0, 0.0), True),
        ("mlp", "EU", _everywhere(3.0, 1.97), False),
        ("mlp", "LATAM", _everywhere(2.1, 2.1), False)])
    out = evaluate.run(cands, manifest, None, EDGES, str(tmp_path / "reports"),
                       baseline_models=evaluate.baseline_models_of(cands), make_figures=False,
                       z_min=2.0)
    c = out["champions"].set_index("region")
    val = out["headline"].set_index(["eval_region", "model", "candidate_region"])["val_logloss"]
    rvg = out["regional_vs_global"].set_index(["region", "model"])
    eu = rvg.loc[("EU", "mlp")]
    # the case: better overall, worse on the other users but not by z_min SEs
    assert val[("EU", "mlp", "EU")] < val[("EU", "mlp", "global")] and eu["val_diff"] < 0
    assert 0 < eu["val_z_other_users"] < 2 and eu["val_diff_power_users"] < 0
    assert c.loc["EU", "champion"] == "mlp/global#0"
    guard = c.loc["EU", "guard"]
    assert guard == (f"per-slice guard excluded mlp/EU#0 is not better than mlp/global#0 on "
                     f"validation other users {eu['val_diff_other_users']:+.4f} ± "
                     f"{eu['val_diff_other_users'] / eu['val_z_other_users']:.4f} "
                     f"(z {eu['val_z_other_users']:+.2f}); a regional candidate must win there")
    assert c.loc["LATAM", "champion"] == "mlp/LATAM#0" and pd.isna(c.loc["LATAM", "guard"])


def test_the_other_users_must_show_a_win():
    scores = _scores([
        dict(eval_region="EU", model="mlp", candidate_region="EU", val_logloss=1.0),
        dict(eval_region="EU", model="mlp", candidate_region="global", val_logloss=1.1)])
    parts = {POWER_PART: Margin(-0.2, math.nan, 4, "only 4 user group(s)")}
    for other, kept in ((Margin(0.001, 0.01, 40), False), (Margin(0.0, 0.01, 40), False),
                        (Margin(-0.001, 0.01, 40), True), (None, True),
                        (Margin(math.nan, math.nan, 0, "no rows"), True)):
        parts[OTHER_PART] = other
        for z_min in (0.0, 2.0):
            out, notes = guard_regional(scores, lambda a, b, r, part: parts[part], z_min)
            assert out.loc[0, "eligible"] == kept and out.loc[1, "eligible"]
            assert ("mlp/EU#0" in notes.get("EU", "")) == (not kept)
            # z_min 0 excludes a positive point estimate as a loss; the win rule adds ties
            says = "is not better than mlp/global#0 on validation other users"
            assert (says in notes.get("EU", "")) == (
                not kept and (z_min > 0 or other.diff == 0))
    # a regional candidate that kept its start: the same predictions, said so
    parts[OTHER_PART] = Margin(0.0, 0.0, 40)
    _, notes = guard_regional(scores, lambda a, b, r, part: parts[part], 2.0)
    assert notes["EU"].endswith("is not better than mlp/global#0 on validation other users "
                                "+0.0000 (the same predictions on every row); a regional "
                                "candidate must win there")
