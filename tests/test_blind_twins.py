"""The ``blind_twins`` table (``evaluate.twins``): each candidate trained blind to some
features against its sighted model's candidates, paired on the same rows, as evaluate builds
it, as the card and ``pythia report`` print it, and empty for a run without twins."""
from __future__ import annotations

import copy
import io

import pandas as pd
import pytest

from pythia.evaluate.slices import NATURAL, NATURAL_NEW_USERS
from pythia.evaluate.stream import score_streaming
from pythia.evaluate.twins import (COLUMNS, OFFSET, SAME, blind_twins_text, build_blind_twins,
                                   print_blind_twins, twin_pairs)
from test_evaluate import EDGES
from test_evaluate_stream import tiny  # noqa: F401 (module fixture)

REGIONS = ["global", "EU", "NA"]


def _as_twins(candidates):
    """tiny's gbdt candidates as blind twins of its mlp (evaluate reads only the record)."""
    out = copy.deepcopy(candidates)
    for c in out:
        if c["model"] == "gbdt":
            c.update(twin_of="mlp", hparams={"blind_to": ["region_device_make"]})
    return out


def test_pairs_are_the_same_rows_fit_everywhere_and_the_offset_per_region(tiny):  # noqa: F811
    pairs = twin_pairs(_as_twins(tiny[0]), REGIONS)
    assert [(r, c, s, b) for r, c, s, b, _ in pairs] == [
        ("global", SAME, ("mlp", "global", 0), ("gbdt", "global", 0)),
        ("EU", SAME, ("mlp", "global", 0), ("gbdt", "global", 0)),
        ("NA", SAME, ("mlp", "global", 0), ("gbdt", "global", 0)),
        ("EU", OFFSET, ("mlp", "global", 0), ("gbdt", "EU", 0))]
    assert all(blind == ["region_device_make"] for *_, blind in pairs)
    assert twin_pairs(tiny[0], REGIONS) == []  # no record names a twin


def test_each_margin_is_sighted_minus_blind_on_the_same_rows(tiny):  # noqa: F811
    candidates, manifest, _ = tiny
    twins = _as_twins(candidates)
    scored = score_streaming(twins, manifest, EDGES, None, bucket_rows=97)
    table = build_blind_twins(twins, REGIONS[::-1], scored.sums.groups)
    assert list(table.columns) == COLUMNS and len(table) == 4
    assert list(table["region"]) == ["global", "EU", "EU", "NA"]  # global first, then by name
    assert list(table["comparison"][1:3]) == [OFFSET, SAME]
    m = scored.metrics

    def loss(model, region, eval_region, test_set):
        sel = m[(m["model"] == model) & (m["region"] == region)
                & (m["eval_region"] == eval_region) & (m["test_set"] == test_set)
                & (m["metric"] == "log_loss") & (m["target"] == "age_gender")
                & (m["label_source"] == "provider")]
        return float(sel["value"].iloc[0])

    for _, row in table.iterrows():
        blind_region = row["blind"].split("/")[1].split("#")[0]
        for part, test_set in (("test", NATURAL), ("new", NATURAL_NEW_USERS)):
            want = (loss("mlp", "global", row["region"], test_set)
                    - loss("gbdt", blind_region, row["region"], test_set))
            assert row[f"{part}_diff"] == pytest.approx(want, abs=1e-6), (row["region"], part)
    glob = table[table["region"] == "global"].iloc[0]
    assert glob["test_se"] > 0 and glob["test_z"] == pytest.approx(
        glob["test_diff"] / glob["test_se"])
    assert pd.notna(glob["val_diff"]) and glob["blind_to"] == "region_device_make"
    # for reading: the margins as text, and the report's section
    text = blind_twins_text(table)
    assert text["test_sighted_minus_blind"].iloc[0].startswith(
        f"{glob['test_diff']:+.4f} ± {glob['test_se']:.4f} (z ")
    out = io.StringIO()
    print_blind_twins(table.to_dict("records"), out)
    assert "Blind twins (AgeGender log-loss, sighted - blind" in out.getvalue()
    assert "offset vs fine-tune" in out.getvalue() and "gbdt/EU#0" in out.getvalue()


def test_a_run_without_twins_has_an_empty_table_and_prints_nothing(tiny):  # noqa: F811
    candidates, manifest, _ = tiny
    scored = score_streaming(candidates, manifest, EDGES, None, bucket_rows=97)
    table = build_blind_twins(candidates, REGIONS, scored.sums.groups)
    assert table.empty and list(table.columns) == COLUMNS
    assert blind_twins_text(table).empty
    out = io.StringIO()
    print_blind_twins(table, out)
    print_blind_twins(None, out)  # a run from before the table
    assert out.getvalue() == ""
