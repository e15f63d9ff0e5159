"""The region-blind gauge (issue 15, item 2: regional structure that is real, and models that
use it): evaluate scores the population posterior of the world's tables without their regional
make effects on the same rows as every candidate (``gauge.region_blind_of``), and the card's
and `pythia report`'s "Regional structure" table sets each candidate against it per region."""
from __future__ import annotations

import dataclasses
import io
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pythia.config import DEFAULT_AGE_EDGES
from pythia.evaluate.gauge import build_gauge, print_regional_structure, region_blind_of
from pythia.evaluate.stream import score_streaming
from pythia.evaluate.margins import user_groups
from pythia.evaluate.tables import SE_COLUMNS, build_regional_structure
from pythia.features import LABEL_PROVIDER, marginals_from_joint
from pythia.synth import PRESETS, generate_world, load_world
from pythia.synth.regional import region_blind
from test_evaluate import prediction_rows
from test_in_between import labelled_world, write_day_splits

# APAC's make means something of its own; LATAM's scale is 0; EU and NA have none
CONFIG = dataclasses.replace(PRESETS["tiny"], n_users=1_500,
                             regional_make_strength=(("APAC", 1.5), ("LATAM", 0.0)))


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A regional world's splits scored with three candidates: the population posterior of
    provider labels (it knows the regional effects), the region-blind one (it does not) and
    a uniform one; returns (gauge, test rows, world)."""
    folder = tmp_path_factory.mktemp("regional-gauge")
    generate_world(str(folder / "world"), CONFIG, seed=3)
    world, _, _, rows, _ = labelled_world(str(folder / "world"))
    splits, manifest = write_day_splits(rows, folder)
    test = splits["test_natural"].reset_index(drop=True)
    val = splits["validation"]
    providers = test[LABEL_PROVIDER].to_numpy(object)
    joint = {"knows": world.population().gauge_posteriors(test, providers)[1],
             "blind": region_blind(world).population().gauge_posteriors(test, providers)[1],
             "flat": np.full((len(test), 12), 1 / 12)}
    candidates = []
    for name, p in joint.items():
        uri = str(folder / f"{name}.parquet")
        pd.concat([prediction_rows(test, "test_natural", "global", p),
                   prediction_rows(val, "validation", "global",
                                   np.full((len(val), 12), 1 / 12))]).to_parquet(uri)
        candidates.append({"model": name, "region": "global", "config_id": 0,
                           "model_dir": "/m", "predictions_uri": uri,
                           "val_logloss": {"age_gender": math.log(12)}})
    scored = score_streaming(candidates, manifest, DEFAULT_AGE_EDGES, world,
                             bucket_rows=1500, workers=1, in_between=False)
    return build_gauge(scored.metrics, scored.sums.groups), test, world


def _natural(gauge: pd.DataFrame, model: str, region: str, target: str = "age_gender"
             ) -> pd.Series:
    sel = gauge[(gauge["model"] == model) & (gauge["eval_region"] == region)
                & (gauge["test_set"] == "natural") & (gauge["label_source"] == "provider")]
    return sel.set_index("target").loc[target]


def test_only_a_world_with_regional_effects_has_a_region_blind_form(scored):
    _, _, world = scored
    assert region_blind_of(world) is not None
    assert region_blind_of(object()) is None  # real data, test fakes
    zero = dataclasses.replace(world.params.config, regional_make_strength=(("APAC", 0.0),))
    assert region_blind_of(SimpleNamespace(params=dataclasses.replace(
        world.params, config=zero))) is None  # it would be the population form


def test_the_region_blind_gauge_is_that_posteriors_log_loss_on_the_same_rows(scored):
    gauge, test, world = scored
    blind = region_blind(world).population()
    p = blind.gauge_posteriors(test, test[LABEL_PROVIDER].to_numpy(object))[1]
    y = test["y_age_gender"].to_numpy()
    apac = (test["region"] == "APAC").to_numpy()
    for region, rows in (("global", np.ones(len(test), bool)), ("APAC", apac)):
        want = -np.log(p[rows, y[rows]]).mean()
        got = _natural(gauge, "flat", region)
        assert got["region_blind_logloss"] == pytest.approx(want, rel=1e-6)
        assert got["ratio_region_blind"] == pytest.approx(math.log(12) / want, rel=1e-4)


def test_the_table_shows_the_effect_where_the_world_puts_it_and_who_learnt_it(scored):
    gauge, test, _ = scored
    champions = pd.DataFrame({"region": ["APAC", "EU"], "model": ["knows", "flat"],
                              "candidate_region": ["global", "global"], "config_id": [0, 0],
                              "blessed": [True, False]})
    table = build_regional_structure(gauge, champions)
    assert set(table["region"]) == set(test["region"]) - {"global"}
    assert {"APAC", "EU"} <= set(table["region"])
    by = table.set_index(["region", "candidate"])
    # APAC: ignoring its make costs the region-blind reader; elsewhere nothing at all
    for target in ("age_gender", "gender", "age"):
        assert by.loc[("APAC", "knows/global#0"), f"effect_{target}"] > 1.002, target
    for region in set(table["region"]) - {"APAC"}:
        np.testing.assert_allclose(by.loc[region]["effect_age_gender"], 1.0, rtol=1e-9)
    # a candidate that knows the regional effects beats the region-blind posterior there;
    # the region-blind posterior as a candidate is level with it, and worse than population
    knows, blind = by.loc[("APAC", "knows/global#0")], by.loc[("APAC", "blind/global#0")]
    assert knows["ratio_region_blind_age_gender"] < 0.998
    assert knows["ratio_population_age_gender"] == pytest.approx(1.0, abs=1e-5)
    assert blind["ratio_region_blind_age_gender"] == pytest.approx(1.0, abs=1e-5)
    assert blind["ratio_population_age_gender"] == pytest.approx(
        blind["effect_age_gender"], rel=1e-5)
    # the blessed champion first in its region; an unblessed one is not flagged
    apac = table[table["region"] == "APAC"]
    assert apac.iloc[0]["candidate"] == "knows/global#0" and apac.iloc[0]["champion"]
    assert not table[table["region"] == "EU"]["champion"].any()
    out = io.StringIO()
    print_regional_structure(gauge, champions, out)
    assert "Regional structure" in out.getvalue() and "knows/global#0" in out.getvalue()


def test_the_region_blind_ratio_has_the_user_clustered_se_of_its_rows(scored):
    """``ratio_region_blind_se`` equals the delta-method SE from the rows (clustered by the
    rows' user groups) for every target; a candidate that knows APAC's make is below 1 by
    many of them, the region-blind posterior as a candidate sits at 1 with no spread."""
    gauge, test, world = scored
    providers = test[LABEL_PROVIDER].to_numpy(object)
    apac = (test["region"] == "APAC").to_numpy()
    knows = marginals_from_joint(world.population().gauge_posteriors(test, providers)[1], 6)
    blind = marginals_from_joint(
        region_blind(world).population().gauge_posteriors(test, providers)[1], 6)
    groups = user_groups(test["user_id"][apac])
    for target in ("age_gender", "gender", "age"):
        y = test[f"y_{target}"].to_numpy()[apac]
        lm = -np.log(knows[target][apac][np.arange(len(y)), y])
        lb = -np.log(blind[target][apac][np.arange(len(y)), y])
        r = lm.sum() / lb.sum()
        e = np.bincount(groups, weights=lm - r * lb)
        row = _natural(gauge, "knows", "APAC", target)
        assert row["ratio_region_blind"] == pytest.approx(r, rel=1e-5)
        assert row["ratio_region_blind_se"] == pytest.approx(
            np.sqrt((e ** 2).sum()) / lb.sum(), rel=1e-4)  # float32 predictions
        assert _natural(gauge, "blind", "APAC", target)["ratio_region_blind_se"] < 1e-4
    for target in ("age_gender", "gender"):  # the make's effect, beyond noise
        row = _natural(gauge, "knows", "APAC", target)
        assert (1 - row["ratio_region_blind"]) / row["ratio_region_blind_se"] > 3
    champions = pd.DataFrame({"region": ["APAC"], "model": ["knows"],
                              "candidate_region": ["global"], "config_id": [0],
                              "blessed": [True]})
    table = build_regional_structure(gauge, champions).set_index(["region", "candidate"])
    assert table.loc[("APAC", "knows/global#0"), "ratio_region_blind_se_gender"] == _natural(
        gauge, "knows", "APAC", "gender")["ratio_region_blind_se"]
    assert table[SE_COLUMNS].notna().all().all()
    out = io.StringIO()
    print_regional_structure(gauge, champions, out)
    assert "(± its SE, clustered by user)" in out.getvalue() and "_se_" not in out.getvalue()
    se = table.loc[("APAC", "knows/global#0"), "ratio_region_blind_se_gender"]
    ratio = table.loc[("APAC", "knows/global#0"), "ratio_region_blind_gender"]
    assert f"{ratio:.4f} ± {se:.4f}" in out.getvalue()
    # a gauge from before the SEs: the columns are left out of the print
    out = io.StringIO()
    print_regional_structure(gauge.assign(ratio_region_blind_se=np.nan), champions, out)
    assert "±" not in out.getvalue() and "knows/global#0" in out.getvalue()


def test_no_table_without_a_region_blind_gauge(scored):
    gauge, _, _ = scored
    champions = pd.DataFrame(columns=["region", "model", "candidate_region", "config_id",
                                      "blessed"])
    without = gauge.assign(region_blind_logloss=np.nan, ratio_region_blind=np.nan)
    assert build_regional_structure(without, champions).empty
    assert build_regional_structure(None, champions).empty
    out = io.StringIO()
    print_regional_structure(without, champions, out)
    assert out.getvalue() == ""
