"""What moved between two runs (``pythia.what_moved``, ``pythia.run_diff``): the settings,
the `pythia runs` lines, and `pythia diff` over fake runs (the flow test runs it on two real
ones)."""
from __future__ import annotations

import dataclasses
import io

import pandas as pd
import pytest

from pythia import run_diff, runs, what_moved
from pythia.cli import main
from pythia.config import RunParams


def _params(**values) -> RunParams:
    return RunParams.build({"source": "synthetic://tiny", "models": "mlp,logreg", **values})


def test_flatten_names_every_setting_once():
    p = _params(seed=3)
    flat = what_moved.flatten(p)
    assert flat["source"] == "synthetic://tiny" and flat["models"] == "mlp,logreg"
    assert flat["seed"] == "3" and flat["train.max_epochs"] == str(p.train.max_epochs)
    assert flat["etl.holdout_users"] == "0.2" and flat["regions"] == "-"
    assert "date" not in flat and "data_root" not in flat  # the window line; paths
    assert "etl.seed" not in flat and "train.seed" not in flat  # the run's seed says them
    assert flat["geo.region_of_country.US"] == "NA"  # the deploy config's mappings, by key
    assert what_moved.flatten(None) == {}


def test_settings_differences_in_order_with_dashes_for_the_missing():
    a = _params()
    assert what_moved.settings_differences(a, _params()) == []
    b = _params(models="mlp", regions="NA,EU", max_epochs=20, seed=1)
    assert what_moved.settings_differences(a, b) == [
        "models mlp,logreg -> mlp", "regions - -> NA,EU", "seed 0 -> 1",
        "train.max_epochs 12 -> 20"]
    knobs = dataclasses.replace(a, model_hparams={"mlp": {"members": 3}, "logreg": {}})
    assert what_moved.settings_differences(a, knobs) == ["model_hparams.mlp.members - -> 3"]
    assert what_moved.settings_differences(knobs, a) == ["model_hparams.mlp.members 3 -> -"]
    geo = dataclasses.replace(a.geo, region_of_country={**a.geo.region_of_country, "BR": "NA"})
    assert what_moved.settings_differences(a, dataclasses.replace(a, geo=geo)) == [
        "geo.region_of_country.BR LATAM -> NA"]
    assert what_moved.settings_differences(None, a) == []
    assert what_moved.settings_differences(a, None) == []


def test_runs_notes_say_the_settings_and_the_stack_under_a_run():
    old_stack = {"python": "3.11.7", "pythia": "a1", "numpy": "2.4.5"}
    many = _params(**{"max_epochs": 20, "age_head": "softmax", "prior_correction": "none",
                      "search": 2, "holdout_users": 0.1, "resample": "natural",
                      "models": "mlp", "regions": "NA", "hours_per_task": 2, "seed": 9})
    notes = what_moved.change_notes([
        ("4", dict(old_stack, pythia="b2"), _params(max_epochs=20)),
        ("3", old_stack, _params()),
        ("2", old_stack, _params(seed=5)),  # only the seed moved: no line
        ("1", None, many), ("0", None, None)])
    assert notes["4"] == (
        "  settings differ from run 3: train.max_epochs 12 -> 20\n"
        "  stack differs from run 3: pythia a1 -> b2 (the same seed may not give the same "
        "models)")
    assert "3" not in notes  # run 2 is run 3 but for its seed
    assert notes["2"].startswith("  settings differ from run 1: ")
    assert notes["2"].endswith(" more") and notes["2"].count(" -> ") == what_moved.MAX_ITEMS
    assert "1" not in notes and "0" not in notes  # nothing recorded: nothing said


def test_rows_line():
    a = {"rows": {"train": 1000, "validation": 200}}
    b = {"rows": {"train": 1100, "validation": 200, "test_natural": 50}}
    assert what_moved.rows_line(a, b) == ("rows: train 1,000 -> 1,100 (+10.0%), validation 200 "
                                        "-> 200 (+0.0%), test_natural - -> 50")
    assert what_moved.rows_line(None, {}) is None


class _Artifact:
    def __init__(self, data):
        self.data = data


class _FakeRun:
    """What `pythia diff` reads of a Metaflow Run: id, status and its artifacts."""

    def __init__(self, run_id, **artifacts):
        self.id, self.pathspec = run_id, f"DemoFlow/{run_id}"
        self.successful, self.created_at, self.finished_at = True, None, None
        self.end_task = {k: _Artifact(v) for k, v in artifacts.items()}


def _champions(rows):
    """champions + headline artifacts: (region, champion, AgeGender log-loss) per row."""
    champions = pd.DataFrame([{"region": r, "champion": c, "blessed": True} for r, c, _ in rows])
    headline = pd.DataFrame([{"eval_region": r, "champion": True, "logloss_age_gender": ll,
                              "macro_f1_age_gender": 0.2} for r, _, ll in rows])
    return {"champions": champions, "headline": headline}


def _flow(monkeypatch, fakes):
    class Flow:
        def runs(self):
            return iter(fakes)  # newest first

    by_id = {f.id: f for f in fakes}
    monkeypatch.setattr(runs, "open_flow", lambda name: Flow())
    monkeypatch.setattr(runs, "open_run", lambda name, rid: by_id.get(str(rid)))


def _diff(*ids):
    out = io.StringIO()
    assert run_diff.print_diff(list(ids), out=out) == 0
    return out.getvalue().splitlines()


def test_pythia_diff_puts_two_runs_side_by_side(monkeypatch):
    window = {"train": ["2026-11-16", "2026-11-17", "2026-11-18"],
              "validation": ["2026-11-19"], "test": ["2026-11-20"]}
    stack_a = {"python": "3.11.7", "pythia": "a1", "numpy": "2.4.5"}
    old = _FakeRun("7", params=_params(), window=window, stack=stack_a, world_fingerprint="w",
                   split_manifest={"rows": {"train": 1000}},
                   **_champions([("NA", "mlp/NA#0", 2.20), ("global", "mlp/global#0", 2.10)]))
    new = _FakeRun("9", params=_params(seed=1, max_epochs=20), stack=dict(stack_a, pythia="b2"),
                   window={"train": ["2026-11-17", "2026-11-18", "2026-11-19"],
                           "validation": ["2026-11-20"], "test": ["2026-11-21"]},
                   world_fingerprint="w", split_manifest={"rows": {"train": 1100}},
                   **_champions([("NA", "logreg/NA#0", 2.25), ("global", "mlp/global#0", 2.05),
                                 ("EU", "mlp/global#0", 2.00)]))
    _flow(monkeypatch, [new, _FakeRun("8"), old])
    lines = _diff("7", "9")
    assert lines[:9] == [
        "DemoFlow/7 -> DemoFlow/9", "status: the same, successful",
        "window: 2026-11-16..2026-11-20 (test 2026-11-20) -> "
        "2026-11-17..2026-11-21 (test 2026-11-21)",
        "seed: 0 -> 1", "settings:", "  train.max_epochs 12 -> 20",
        "stack: pythia a1 -> b2 (the same seed may not give the same models)",
        "world: the same", "rows: train 1,000 -> 1,100 (+10.0%)"]
    table = lines[lines.index("") + 2:]  # after the blank line and the title
    assert [ln.split()[0] for ln in table[1:]] == ["global", "EU", "NA"]  # global first
    assert table[1].split()[-1] == "-0.0500" and table[3].split()[-1] == "0.0500"
    assert "logreg/NA#0" in table[3] and table[2].split()[1:] == ["mlp/global#0", "2.0000",
                                                                  "0.2000"]  # new only
    # one run named: it against the run listed after it; none: the two newest
    assert _diff("9")[0] == "DemoFlow/8 -> DemoFlow/9"
    assert _diff()[0] == "DemoFlow/8 -> DemoFlow/9"
    assert _diff("8")[:8] == ["DemoFlow/7 -> DemoFlow/8", "status: the same, successful",
                              "window: 2026-11-16..2026-11-20 (test 2026-11-20) -> -",
                              "seed: 0 -> -", "settings: not recorded by both runs",
                              "stack: not recorded by both runs",
                              "world: a synthetic world -> no synthetic world",
                              "rows: train 1,000 -> -"]
    other_world = _FakeRun("6", world_fingerprint="v")
    _flow(monkeypatch, [other_world, old])
    assert ("world: another synthetic world (regenerated, or another preset or seed)"
            in _diff("7", "6"))


def test_pythia_diff_says_when_more_of_the_input_was_quarantined(monkeypatch):
    """Numbers that moved because a producer changed: the quarantine of each run."""
    summary = {"entries": [{"reason": "out_of_domain", "column": "device_type", "rows": 600,
                            "values": [["phone", 600]]},
                           {"reason": "null_required", "column": "user_id", "rows": 300,
                            "values": []}]}
    clean = _FakeRun("1", quarantine={"by_reason": {"out_of_domain": 0}, "rows_in": 1000})
    broken = _FakeRun("2", quarantine={"by_reason": {"out_of_domain": 600,
                                                     "null_required": 300},
                                       "rows_in": 1000, "summary": summary})
    older = _FakeRun("0", quarantine={"by_reason": {"wrong_type": 4}})  # before rows_in
    _flow(monkeypatch, [broken, clean, older])
    assert "quarantined: none -> 900 of 1,000 impressions (60.0% lost)" in _diff("1", "2")
    assert "quarantined: 4 impressions -> none" in _diff("0", "1")
    no_record = _FakeRun("5")
    _flow(monkeypatch, [no_record, _FakeRun("4")])
    assert not [ln for ln in _diff("4", "5") if ln.startswith("quarantined")]


def test_pythia_diff_says_what_it_cannot_compare(monkeypatch, capsys):
    _flow(monkeypatch, [_FakeRun("2"), _FakeRun("1")])
    with pytest.raises(ValueError, match="run DemoFlow/5 not found: `pythia runs` lists them"):
        run_diff.print_diff(["5"])
    with pytest.raises(ValueError, match="no run before DemoFlow/1: name the two runs"):
        run_diff.print_diff(["1"])
    assert main(["diff", "1", "2", "3"]) == 2
    assert capsys.readouterr().err.strip() == (
        "pythia diff: diff compares two runs, got 3: pythia diff [OLD] [NEW]")
    _flow(monkeypatch, [_FakeRun("1")])
    with pytest.raises(ValueError, match="DemoFlow has 1 run"):
        run_diff.print_diff([])
