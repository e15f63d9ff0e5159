"""Label rows a provider sends incomplete, said with what they lack and whose they are.

A provider of ages without genders (real providers sell one or the other) used to be "N
rejected (incomplete_label N)" at best, and its countries quietly had no label.
"""
from __future__ import annotations

import pytest

from pythia import input_health, label_health, providers
from pythia.paths import RunPaths
from pythia.storage import read_frame

from test_input_health import _params, _rewrite_with_pandas, _source


def _run(root, tmp_path):
    params = _params(root, tmp_path)
    paths = RunPaths(params.data_root, "Rejects", "1")
    _, mapping, _ = providers.choose(root, params, paths)
    return providers.run(root, mapping, params, paths)


def test_a_provider_without_genders_is_a_warning_naming_it(tmp_path, capsys):
    root = _source(tmp_path)
    _rewrite_with_pandas(root, "labels/provider=lucid", lambda f: f.drop(
        columns=["gender"], inplace=True))
    manifest = _run(root, tmp_path)
    rejected = read_frame(manifest["rejected_path"])
    n = len(rejected)
    assert n and set(rejected["provider"]) == {"lucid"}
    (line,) = [ln for ln in capsys.readouterr().out.splitlines()
               if ln.startswith("warning: prepare_labels: ")]
    rows_in = manifest["counts"]["rows_in"]
    assert line.startswith(f"warning: prepare_labels: {n:,} of {rows_in:,} label rows rejected "
                           f"({n / rows_in:.1%}): incomplete_label {n:,} (no gender {n:,}; "
                           f"from lucid {n:,}): a label needs a gender and an age or an age "
                           "bucket (age_gender is the models' joint target); rows under ")
    assert rejected["age"].notna().all()  # the rejected rows keep what they were given


def test_labels_without_any_gender_stop_saying_what_they_lack(tmp_path):
    root = _source(tmp_path)
    _rewrite_with_pandas(root, "labels", lambda f: f.drop(columns=["gender"], inplace=True))
    rows = {p: len(read_frame(f"{root}/labels/provider={p}")) for p in ("acme", "lucid")}
    with pytest.raises(input_health.InputHealthError) as err:
        _run(root, tmp_path)
    n = sum(rows.values())
    first, second = sorted(rows, key=lambda p: (-rows[p], p))
    assert str(err.value) == (
        f"prepare_labels: no usable label in {n:,} label rows: {n:,} rejected ("
        f"incomplete_label {n:,} (no gender {n:,}; from {first} {rows[first]:,}, {second} "
        f"{rows[second]:,}): a label needs a gender and an age or an age bucket (age_gender is "
        "the models' joint target)). Fix the labels (docs/data-contract.md) and rerun")


def test_a_label_with_a_gender_and_no_age_is_said_so(tmp_path, capsys):
    root = _source(tmp_path)

    def no_age(frame):
        frame.loc[frame.index[:4], ["age", "age_bucket"]] = None
    _rewrite_with_pandas(root, "labels/provider=acme", no_age)
    _run(root, tmp_path)
    (line,) = [ln for ln in capsys.readouterr().out.splitlines()
               if ln.startswith("warning: prepare_labels: ")]
    assert "incomplete_label 4 (neither age nor age_bucket 4; from acme 4)" in line


def test_rejected_text_of_no_table_is_empty(tmp_path):
    assert label_health.rejected_text(None) == ""
    assert label_health.rejected_text(str(tmp_path / "none")) == ""
