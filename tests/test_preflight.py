"""``pythia check``: the flow's input steps on a sample, before a run (``pythia.preflight``).
Sources as a user's producer writes them (pandas), one clean and one per kind of stop."""
from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest

from pythia.cli import main
from pythia.preflight import check

from test_input_health import DAY, _rewrite_with_pandas, _source
from test_layout import _relayout


def _last(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("check: ")]


def test_a_clean_source_would_go_on_and_leaves_nothing(tmp_path, capsys):
    root = _source(tmp_path)
    scratch = tmp_path / "scratch"
    assert check(root, DAY.isoformat(), scratch=str(scratch)) == 0
    said = _last(capsys)
    assert said[0] == ("check: the etl sample is hours 12-15 of the window's dates: the lines "
                       "below that speak of the window speak of this sample")
    assert said[-1].startswith("check: the input steps would go on (sampled: every label row, "
                               "and hours 12-15 of 5 dates: ")
    assert said[-1].endswith(f"labelled); run: python flows/demo_flow.py run --source {root} "
                             f"--date {DAY}")
    assert not scratch.exists()


def test_a_producers_vocabulary_would_stop_join_hours_and_its_quarantine_is_kept(
        tmp_path, capsys):
    root = _source(tmp_path)
    _rewrite_with_pandas(root, "impressions", lambda f: f.__setitem__(
        "device_type", pd.Categorical(f["device_type"].replace({"mobile": "Phone"}))))
    scratch = tmp_path / "scratch"
    assert main(["check", root, "--date", DAY.isoformat(), "--hours", "0,1"]) == 1
    said = _last(capsys)
    assert said[0].startswith("check: the etl sample is hours 00-01 of the window's dates")
    assert said[-2].startswith("check: the flow would stop in join_hours: ")
    assert "out_of_domain device_type" in said[-2] and "'Phone'" in said[-2]
    kept = said[-1].removeprefix("check: the sample's outputs (quarantine, labels) are kept "
                                 "under ")
    assert kept != said[-1] and os.path.isdir(os.path.join(kept, "Check", "1", "quarantine"))
    shutil.rmtree(kept)
    assert check(root, DAY.isoformat(), max_quarantined=1.0, scratch=str(scratch)) == 0


def test_a_layout_of_the_producers_own_would_stop_start(tmp_path, capsys):
    root = _source(tmp_path)
    _relayout(root, "daily")
    scratch = tmp_path / "scratch"
    assert check(root, DAY.isoformat(), scratch=str(scratch)) == 1
    (said,) = _last(capsys)
    assert said.startswith("check: the flow would stop in start: no hour partition of the "
                           "window ")
    assert "hold their files without hour=HH folders (daily partitions" in said
    assert not scratch.exists()


def test_labels_keyed_another_way_would_stop_with_the_key_diagnosis(tmp_path, capsys):
    root = _source(tmp_path)
    _rewrite_with_pandas(root, "labels", lambda f: f.__setitem__("user_id",
                                                                 f["user_id"].str.upper()))
    assert check(root, DAY.isoformat(), scratch=str(tmp_path / "s")) == 1
    said = _last(capsys)[-2]
    assert said.startswith("check: the flow would stop in join_hours: none of the window's ")
    assert "they meet once both are lower-cased or upper-cased" in said


@pytest.mark.parametrize("hours, text", [([3, 1, 2], "01-03"), ([0, 5], "00,05")])
def test_hours_are_said_as_a_range_or_a_list(hours, text):
    from pythia.preflight import _hours
    assert _hours(hours) == text
