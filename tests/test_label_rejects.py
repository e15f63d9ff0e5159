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


def test_a_provider_sending_u_and_o_for_gender_is_rejected_not_quarantined(tmp_path, capsys):
    """``U`` (unknown) and ``O`` (other, OpenRTB's third value) are genders of no class: before
    (session 63) they were out_of_domain, and a provider sending 20% ``U`` stopped the run at
    the 10% quarantine limit."""
    root = _source(tmp_path)

    def unknown(frame):
        frame.loc[frame.index[:6], "gender"] = "U"
        frame.loc[frame.index[6:8], "gender"] = "O"
        frame.loc[frame.index[8:9], "gender"] = None
    _rewrite_with_pandas(root, "labels/provider=lucid", unknown)
    manifest = _run(root, tmp_path)
    assert not any(manifest["counts"]["quarantined"].values())
    assert manifest["counts"]["rejected"]["incomplete_label"] == 9
    rejected = read_frame(manifest["rejected_path"])
    assert sorted(rejected["gender"].fillna("null")) == ["O", "O"] + ["U"] * 6 + ["null"]
    (line,) = [ln for ln in capsys.readouterr().out.splitlines()
               if ln.startswith("warning: prepare_labels: ")]
    assert "incomplete_label 9 (no gender 9: U 6, O 2, null 1; from lucid 9)" in line


def test_a_lower_case_u_is_quarantined_with_its_fix(tmp_path):
    root = _source(tmp_path)

    def lower(frame):
        frame.loc[frame.index[:2], "gender"] = "u"
    _rewrite_with_pandas(root, "labels/provider=lucid", lower)
    manifest = _run(root, tmp_path)
    assert manifest["counts"]["quarantined"]["out_of_domain"] == 2
    text = input_health.describe(manifest["quarantine_summary"], providers.contract.LABELS)
    assert "allowed: F, M, U, O ('u' -> 'U'?)" in text


@pytest.mark.spark
def test_both_engines_read_u_and_o_as_no_gender(spark, source, tmp_path):
    import datetime as dt

    from pythia import providers_local
    from pythia.config import DEFAULT_AGE_EDGES

    day = dt.date(2024, 3, 1)
    source.labels("acme", [{"user_id": u, "gender": g, "age": 30, "age_bucket": None,
                            "country": "US", "observed_date": day}
                           for u, g in [("a", "F"), ("b", "U"), ("c", "O"), ("d", "u"),
                                        ("e", "M")]])
    runs = [providers.prepare_labels(spark, source.root, {"US": "acme"}, DEFAULT_AGE_EDGES,
                                     str(tmp_path / "spark"), "acme"),
            providers_local.prepare_labels(source.root, {"US": "acme"}, DEFAULT_AGE_EDGES,
                                           str(tmp_path / "pandas"), "acme")]
    for manifest in runs:
        counts = manifest["counts"]
        assert (counts["users"], counts["rejected"]["incomplete_label"],
                counts["quarantined"]["out_of_domain"]) == (2, 2, 1)
        assert sorted(read_frame(manifest["rejected_path"])["gender"]) == ["O", "U"]
