"""Regional structure in the synthetic world (issue 15, item 2): a device make that says
something different about age and gender per model region, of a documented size, with the
exact posterior still exact."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from pythia.geo.countries import region_of
from pythia.synth import PRESETS, WorldConfig, generate_world, load_world
from pythia.synth.regional import effect_size, region_blind
from pythia.synth.tables import COUNTRY_SETS
from pythia.synth.world import build_params
from test_synth import _calibration_z, _log_loss, impressions_with_truth

STRONG = (("APAC", 1.5), ("LATAM", 0.0))
CONFIG = dataclasses.replace(PRESETS["tiny"], n_users=1_500, regional_make_strength=STRONG)


@pytest.fixture(scope="module")
def regional(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("synth") / "regional")
    generate_world(root, CONFIG, seed=3)
    return root


@pytest.fixture(scope="module")
def regional_rows(regional) -> pd.DataFrame:
    df = impressions_with_truth(regional)
    df["region"] = [region_of(c) for c in df["country"]]
    return df


def test_effects_are_per_region_and_only_where_configured():
    with_effects = build_params(CONFIG, seed=3).arrays
    without = build_params(dataclasses.replace(CONFIG, regional_make_strength=()), 3).arrays
    countries = list(COUNTRY_SETS[CONFIG.country_set])
    logit = np.log(with_effects["p_model"]) - np.log(without["p_model"])
    for key in without:  # everything else is the world without them, draw for draw
        if key not in ("p_model", "m_model"):
            np.testing.assert_array_equal(with_effects[key], without[key], err_msg=key)
    apac = [i for i, c in enumerate(countries) if region_of(c) == "APAC"]
    for i, c in enumerate(countries):
        # a region without a scale (NA, EU) or with scale 0 (LATAM) keeps its table exactly
        if region_of(c) != "APAC":
            np.testing.assert_array_equal(with_effects["p_model"][i], without["p_model"][i])
    # within APAC, the shift of each model's class logits (up to the softmax's per-class
    # constant) is the same in every country: the make means the same thing in the region
    centred = logit[apac] - logit[apac].mean(axis=2, keepdims=True)
    assert np.abs(centred).max() > 0.3
    np.testing.assert_allclose(centred[1:], np.broadcast_to(centred[0], centred[1:].shape),
                               atol=1e-9)
    assert PRESETS["default"].regional_make_strength  # the demo world has them
    assert not PRESETS["tiny"].regional_make_strength  # the test worlds are unchanged


def test_config_round_trips_and_rejects_bad_scales():
    assert WorldConfig.from_json(CONFIG.to_json()) == CONFIG
    with pytest.raises(ValueError, match="regional_make_strength"):
        WorldConfig(regional_make_strength=(("APAC", -1.0),))


def test_posterior_stays_exact_and_the_effect_is_real_where_it_is_set(regional, regional_rows):
    world = load_world(regional)
    p = world.posterior(regional_rows)
    y = regional_rows["y"].to_numpy()
    assert _calibration_z(p, y) < 4.5
    blind = region_blind(world).posterior(regional_rows)
    apac = (regional_rows["region"] == "APAC").to_numpy()
    gain = _log_loss(blind[apac], y[apac]) - _log_loss(p[apac], y[apac])
    assert gain > 0.02, gain  # ignoring the region's make effects costs log-loss in APAC
    elsewhere = ~apac  # LATAM's scale is 0; NA and EU have none: the same posterior
    np.testing.assert_allclose(blind[elsewhere], p[elsewhere], rtol=1e-12, atol=1e-15)


def test_effect_size_table_per_region(regional, regional_rows):
    world = load_world(regional)
    table = effect_size(world, regional_rows, regional_rows["y"].to_numpy(),
                        regional_rows["region"].to_numpy()).set_index("region")
    assert table.loc["global", "rows"] == len(regional_rows)
    assert table.drop(index="global")["rows"].sum() == len(regional_rows)
    assert table.loc["APAC", "excess_age_gender"] > 0.02
    for region in ("NA", "EU", "LATAM"):
        assert table.loc[region, "excess_age_gender"] == pytest.approx(0, abs=1e-12)
