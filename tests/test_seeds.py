"""`pythia seeds`: margins pooled over runs that differ only in their seed (evaluate.pooled,
pythia.seeds), on hand-made tables; the Metaflow path is in test_flow.py."""
import dataclasses
import io
import math

import numpy as np
import pandas as pd
import pytest

from pythia.config import RunParams
from pythia.evaluate import pooled
from pythia.evaluate.pooled import print_pooled
from pythia.seeds import SeedRun, check_poolable, pool_runs

KEYS = ["region", "model", "config_id"]


def _table(rows):
    """A regional-vs-global-like table: (region, model, test_diff, test_se) per row."""
    out = []
    for region, model, diff, se in rows:
        r = {"region": region, "model": model, "config_id": 0}
        for p in pooled.PARTS:
            r.update({f"{p}_diff": diff, f"{p}_se": se, f"{p}_z": diff / se if se else np.nan})
        out.append(r)
    return pd.DataFrame(out)


def test_t_critical_is_students():
    assert pooled.t_critical(1) == pytest.approx(12.706, abs=1e-3)
    assert pooled.t_critical(2) == pytest.approx(4.303, abs=1e-3)
    assert pooled.t_critical(4) == pytest.approx(2.776, abs=1e-3)


def test_pool_margins_gives_mean_spread_and_t_over_the_runs():
    diffs = [-0.0040, -0.0030, -0.0050, -0.0045]
    tables = {f"seed {i}": _table([("EU", "mlp", d, 0.0005), ("NA", "mlp", 0.001 * (-1) ** i,
                                                              0.0004)])
              for i, d in enumerate(diffs)}
    t = pooled.pool_margins(tables, KEYS, ("regional better", "global better")).set_index(
        "region")
    eu = t.loc["EU"]
    assert eu["runs"] == 4 and eu["test_each"] == tuple(diffs)
    assert eu["test_mean"] == pytest.approx(np.mean(diffs))
    assert eu["test_sd"] == pytest.approx(np.std(diffs, ddof=1))
    assert eu["test_se"] == pytest.approx(np.std(diffs, ddof=1) / 2)
    assert eu["test_t"] == pytest.approx(np.mean(diffs) / (np.std(diffs, ddof=1) / 2))
    assert eu["test_verdict"] == "regional better"  # t -11 beyond 3.18 (3 df)
    assert eu["test_single"] == "4 below, 0 above of 4"  # every card said so too
    assert eu["test_sd_over_se"] == pytest.approx(np.std(diffs, ddof=1) / 0.0005)
    na = t.loc["NA"]  # +/- 0.001 alternating: each card beyond 2 SEs, the mean 0
    assert na["test_mean"] == pytest.approx(0.0) and na["test_verdict"] == pooled.LEVEL
    assert na["test_single"] == "2 below, 2 above of 4"


def test_a_margin_every_card_calls_can_be_within_noise_over_the_seeds():
    """Three cards each beyond 2 SEs below 0, but spread widely: t on 2 df is not beyond
    4.30 (session 59's LATAM row); the verdict is the pooled one, not the cards' count."""
    tables = {f"s{i}": _table([("LATAM", "mlp", d, 0.0012)])
              for i, d in enumerate([-0.0044, -0.0104, -0.0052])}
    row = pooled.pool_margins(tables, KEYS).iloc[0]
    assert row["test_single"] == "3 below, 0 above of 3"
    assert -4.303 < row["test_t"] < -2 and row["test_verdict"] == pooled.LEVEL
    tables["s3"] = _table([("LATAM", "mlp", -0.0070, 0.0012)])  # a fourth seed: 3.18
    assert pooled.pool_margins(tables, KEYS).iloc[0]["test_verdict"] == "below 0"


def test_rows_missing_in_a_run_pool_over_the_runs_that_have_them():
    tables = {"a": _table([("EU", "mlp", -0.002, 0.001), ("NA", "mlp", -0.001, 0.001)]),
              "b": _table([("EU", "mlp", -0.004, 0.001)]),
              "c": _table([("EU", "mlp", -0.003, 0.001)])}
    t = pooled.pool_margins(tables, KEYS).set_index("region")
    assert t.loc["EU", "runs"] == 3
    na = t.loc["NA"]
    assert na["runs"] == 1 and na["test_verdict"] == "one run"
    assert na["test_mean"] == -0.001 and math.isnan(na["test_se"])
    assert na["test_each"][0] == -0.001 and all(math.isnan(v) for v in na["test_each"][1:])
    assert pooled.each_text(na["test_each"]) == "-0.0010 / · / ·"


def test_identical_margins_in_every_run():
    same = {f"s{i}": _table([("EU", "mlp", 0.0, 0.0), ("NA", "mlp", -0.001, 0.0005)])
            for i in range(3)}
    t = pooled.pool_margins(same, KEYS).set_index("region")
    assert t.loc["EU", "test_t"] == 0 and t.loc["EU", "test_verdict"] == pooled.LEVEL
    assert t.loc["NA", "test_t"] == -math.inf and t.loc["NA", "test_verdict"] == "below 0"


def test_pool_margins_refuses_a_table_that_names_a_row_twice_or_lacks_a_key():
    twice = _table([("EU", "mlp", -0.001, 0.001), ("EU", "mlp", -0.002, 0.001)])
    with pytest.raises(ValueError, match=r"run a's table names the row \['EU', 'mlp', 0\]"):
        pooled.pool_margins({"a": twice, "b": twice}, KEYS)
    with pytest.raises(ValueError, match=r"run b's table has no column\(s\) \['config_id'\]"):
        pooled.pool_margins({"a": twice.iloc[:1], "b": twice.iloc[:1].drop(
            columns="config_id")}, KEYS)
    assert pooled.pool_margins({"a": twice.iloc[:0]}, KEYS).empty


def test_pool_values_spread_per_key():
    tables = {f"s{i}": pd.DataFrame({"eval_region": ["global"], "test_set": ["natural"],
                                     "ratio": [v]}) for i, v in enumerate([1.24, 1.25, 1.26])}
    row = pooled.pool_values(tables, ["eval_region", "test_set"], ["ratio", "absent"]).iloc[0]
    assert row["ratio_mean"] == pytest.approx(1.25) and row["ratio_sd"] == pytest.approx(0.01)
    assert (row["ratio_min"], row["ratio_max"]) == (1.24, 1.26) and row["runs"] == 3
    assert math.isnan(row["absent_mean"])


# ---------------------------------------------------------------- pythia.seeds

def _params(seed: int, **changes) -> RunParams:
    p = RunParams.build({"seed": seed, "source": "synthetic://tiny", "models": "mlp,logreg"})
    return dataclasses.replace(p, **changes)


def _run(run_id, seed, rvg=None, twins=None, **changes):
    return SeedRun(run_id, _params(seed, **changes), "world1", {"test": "2026-11-20"},
                   rvg, twins)


def test_check_poolable_allows_only_the_seed_models_and_regions_to_differ():
    a = _run("101", 0)
    check_poolable([a, _run("102", 1, models=("mlp",), regions=("global",))])
    with pytest.raises(ValueError, match="runs 101 and 103 have the same seed 0: pool runs "
                                         "with distinct --seed"):
        check_poolable([a, _run("103", 0)])
    epochs = dataclasses.replace(a.params.train, max_epochs=20)
    with pytest.raises(ValueError, match=r"runs 101 and 104 differ in train.max_epochs "
                                         r"\(12 vs 20\): pool runs that differ only in --seed"):
        check_poolable([a, _run("104", 1, train=epochs)])
    with pytest.raises(ValueError, match=r"differ in source \('synthetic://tiny' vs "
                                         r"'/data/logs'\)"):
        check_poolable([a, _run("105", 1, source="/data/logs")])
    other_world = _run("106", 1)
    other_world.fingerprint = "world2"
    with pytest.raises(ValueError, match="differ in world"):
        check_poolable([a, other_world])
    with pytest.raises(ValueError, match=r"differ in model_hparams"):
        check_poolable([a, _run("107", 1, model_hparams={"mlp": {"members": 3}})])
    check_poolable([a, _run("108", 1, model_hparams={"mlp": {}})])  # an empty section
    with pytest.raises(ValueError, match="pooling needs two runs or more, got 1"):
        check_poolable([a])


def test_runs_on_other_code_or_libraries_do_not_pool():
    code = {"python": "3.11.7", "pythia": "a1b2c3d4e5f6", "numpy": "2.4.6"}
    a = dataclasses.replace(_run("101", 0), stack=code)
    check_poolable([a, dataclasses.replace(_run("102", 1), stack=dict(code))])
    with pytest.raises(ValueError, match=r"runs 101 and 103 ran on different stacks \(pythia "
                                         r"a1b2c3d4e5f6 -> 0f0f0f0f0f0f\): pool runs of the "
                                         r"same code and libraries"):
        check_poolable([a, dataclasses.replace(_run("103", 1), stack=dict(
            code, pythia="0f0f0f0f0f0f"))])
    with pytest.raises(ValueError, match=r"different stacks \(numpy 2.4.6 -> 2.5.0\)"):
        check_poolable([a, dataclasses.replace(_run("104", 1), stack=dict(code, numpy="2.5.0"))])
    # a run from before the code digest was recorded, or with no stack at all: not held
    # against it (the settings still decide)
    from types import SimpleNamespace

    from pythia.seeds import seed_run_of
    flow_self = SimpleNamespace(params=_params(3), window=a.window, world_fingerprint="world1",
                                stack=dict(code, pythia="0f0f0f0f0f0f"))
    with pytest.raises(ValueError, match="different stacks"):  # the flow's own stack counts
        check_poolable([a, seed_run_of("107", flow_self)])
    older = {k: v for k, v in code.items() if k != "pythia"}
    check_poolable([a, dataclasses.replace(_run("105", 1), stack=older), _run("106", 2)])


def test_pool_runs_and_the_printed_tables():
    runs = [_run(str(100 + s), s,
                 rvg=_table([("EU", "mlp", d, 0.0005), ("EU", "logreg", 0.0, 0.0)]),
                 twins=pd.DataFrame([{"region": "global", "comparison": "same rows' fit",
                                      "sighted": "mlp/global#0", "blind": "mlp_blind/global#0",
                                      **{f"{p}_{w}": v for p in pooled.PARTS
                                         for w, v in (("diff", t), ("se", 0.0004),
                                                      ("z", t / 0.0004))}}]))
            for s, d, t in ((0, -0.0020, -0.0018), (1, -0.0030, -0.0050), (2, -0.0025,
                                                                           -0.0032))]
    tables = pool_runs(runs)
    assert list(tables["runs"]["run"]) == ["100", "101", "102"]
    rvg = tables["regional_vs_global"].set_index("model")
    assert rvg.loc["mlp", "test_mean"] == pytest.approx(-0.0025)
    assert rvg.loc["mlp", "test_verdict"] == "regional better"
    twin = tables["blind_twins"].iloc[0]
    assert twin["test_mean"] == pytest.approx(np.mean([-0.0018, -0.0050, -0.0032]))
    assert twin["test_verdict"] == pooled.LEVEL  # t -3.58 on 2 df: within 4.30
    out = io.StringIO()
    print_pooled(tables, out)
    text = out.getvalue()
    assert "Pooled over 3 runs that differ only in their seed: 100 (seed 0)" in text
    assert "|t| > 4.30 with 3 runs" in text
    assert "-0.0020 / -0.0030 / -0.0025" in text
    assert "identical in every run (kept its start each time): EU logreg 0" in text
    assert "Blind twins (AgeGender log-loss, sighted - blind" in text
    assert "Bayes gauge" not in text  # no gauge in these runs


def test_pythia_seeds_needs_runs_or_latest_not_both(capsys):
    from pythia.cli import main
    assert main(["seeds", "1", "2", "--latest", "2"]) == 2
    assert "name the runs to pool (two or more) or give --latest K: one" in capsys.readouterr().err
    assert main(["seeds"]) == 2


def test_make_seeds_runs_the_job_once_per_seed_then_pools_them():
    import shutil
    import subprocess
    from pathlib import Path
    if shutil.which("make") is None:
        pytest.skip("no make on PATH")
    import os
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    out = subprocess.run(["make", "--no-print-directory", "-n", "seeds", "SEEDS=3 4",
                          "SEED_MODELS=mlp,mlp_blind"], env=env,
                         cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                         text=True, check=True).stdout
    lines = out.splitlines()  # under `make test` too (a make inside make)
    loop = lines.index("for s in 3 4; do .venv/bin/python flows/demo_flow.py run --seed $s "
                       "--models mlp,mlp_blind || exit 1; done")
    assert lines[loop + 1:] == [".venv/bin/python -m pythia.cli seeds --latest 2"]


def test_the_cards_over_seeds_section_and_its_note():
    from metaflow.cards import Markdown, Table

    from pythia.evaluate.card import _append_seed_pool

    class Card(list):
        append = list.append

    rvg = _table([("EU", "mlp", -0.002, 0.0005)])
    tables = pool_runs([_run("201", 1, rvg=rvg), _run("200", 0, rvg=_table(
        [("EU", "mlp", -0.003, 0.0005)]))])
    card = Card()
    _append_seed_pool(card, {"seed_pool": tables, "regional_vs_global": rvg})
    marks = [c._text for c in card if isinstance(c, Markdown)]
    assert marks[0].startswith("## Over seeds") and "201 (seed 1), 200 (seed 0)" in marks[0]
    assert [m for m in marks if m.startswith("**Regional vs global")] == [
        f"**Regional vs global (AgeGender log-loss, regional - global candidate of the same "
        f"model on the same rows), {p}**" for p in (
            "natural test day", "its new users (held out of training)",
            "validation (natural-weighted)")]
    assert sum(isinstance(c, Table) for c in card) == 3  # no twins, no gauge in these runs
    for c in card:
        c.render()
    alone = Card()  # a run with margins and no other seed: one line says what is missing
    _append_seed_pool(alone, {"seed_pool": None, "regional_vs_global": rvg})
    assert len(alone) == 1 and alone[0]._text.startswith("_Over seeds: no earlier run")
    quiet = Card()  # nothing to pool: nothing said
    _append_seed_pool(quiet, {"seed_pool": None, "regional_vs_global": rvg.iloc[:0],
                              "blind_twins": None})
    assert not quiet


def test_seed_list_takes_commas_and_spaces():
    from pythia.seeds import seed_list
    assert seed_list(["101,102", "103", " 104 , 105", ""]) == ["101", "102", "103", "104", "105"]


class _FakeRun:
    """A Metaflow Run as `pool_with_earlier` reads it: id, successful and artifacts."""

    def __init__(self, seed_run: SeedRun, successful: bool = True):
        self.id, self.successful = seed_run.run_id, successful
        self.pathspec = f"DemoFlow/{self.id}"
        self.artifacts = {"params": seed_run.params, "world_fingerprint": seed_run.fingerprint,
                          "window": seed_run.window, "stack": seed_run.stack,
                          "regional_vs_global": seed_run.regional_vs_global}


def _fake_flow(monkeypatch, runs):
    import pythia.runs

    class Flow:
        id = "DemoFlow"

        def runs(self):
            return iter(runs)

    monkeypatch.setattr(pythia.runs, "open_flow", lambda name: Flow())
    monkeypatch.setattr(pythia.runs, "_artifact", lambda run, name: run.artifacts.get(name))


def test_pool_with_earlier_takes_the_poolable_runs_newest_first(monkeypatch, capsys):
    from pythia.seeds import MAX_POOLED, pool_with_earlier
    rvg = _table([("EU", "mlp", -0.002, 0.0005)])
    this = _run("300", 0, rvg=rvg)
    other_day = _run("299", 5, rvg=rvg)
    other_day.window = {"test": "2026-11-21"}
    longer = dataclasses.replace(this.params.train, max_epochs=20)
    earlier = [_FakeRun(_run("298", 1, rvg=rvg)), _FakeRun(other_day),
               _FakeRun(_run("297", 2, rvg=rvg), successful=False),
               _FakeRun(_run("296", 0, rvg=rvg)),  # this run's seed: a resume of it, say
               _FakeRun(_run("295", 3, rvg=rvg, train=longer)),
               _FakeRun(_run("294", 1, rvg=rvg)),  # seed 1 again: the newer one counts
               _FakeRun(_run("293", 4, rvg=rvg))]
    _fake_flow(monkeypatch, earlier)
    pool = pool_with_earlier("DemoFlow", this)
    assert list(pool["runs"]["run"]) == ["300", "298", "293"]
    assert pool["regional_vs_global"].iloc[0]["runs"] == 3
    many = [_FakeRun(_run(str(200 - s), s, rvg=rvg)) for s in range(1, 15)]
    _fake_flow(monkeypatch, many)
    assert len(pool_with_earlier("DemoFlow", this)["runs"]) == MAX_POOLED
    _fake_flow(monkeypatch, [_FakeRun(other_day)])
    assert pool_with_earlier("DemoFlow", this) is None  # nobody to pool with
    # an earlier seed on other code is passed over; this run's stack comes from its artifacts
    stacked = dataclasses.replace(this, stack={"pythia": "a1"})
    _fake_flow(monkeypatch, [_FakeRun(dataclasses.replace(_run("292", 1, rvg=rvg),
                                                          stack={"pythia": "b2"})),
                             _FakeRun(dataclasses.replace(_run("291", 2, rvg=rvg),
                                                          stack={"pythia": "a1"}))])
    assert list(pool_with_earlier("DemoFlow", stacked)["runs"]["run"]) == ["300", "291"]
    capsys.readouterr()


def test_pool_with_earlier_never_fails_the_run(monkeypatch, capsys):
    import pythia.runs
    from pythia.seeds import pool_with_earlier

    def broken(name):
        raise OSError("metadata service unreachable")

    monkeypatch.setattr(pythia.runs, "open_flow", broken)
    assert pool_with_earlier("DemoFlow", _run("300", 0)) is None
    assert ("over seeds: not pooled (OSError: metadata service unreachable); `pythia seeds` "
            "can pool the runs later") in capsys.readouterr().out


def test_models_against_the_baselines_pooled_and_said_loudly():
    def verdicts(gaps):
        return pd.DataFrame([{"model": m, "eval_region": r, "candidate": f"{m}/{r}#0",
                              "gap": g, "gap_se": 0.004, "gap_z": g / 0.004}
                             for (m, r), g in gaps.items()])

    runs = [_run(str(400 + s), s) for s in range(4)]
    for s, r in enumerate(runs):
        r.model_verdicts = verdicts({("mlp", "global"): -0.009 - 0.001 * s,
                                     ("mlp", "EU"): (-0.015, -0.007, +0.007, -0.008)[s],
                                     ("tabnet", "global"): 0.021 + 0.01 * (s % 2),
                                     ("tabnet", "EU"): 0.03 + 0.002 * s})
    tables = pool_runs(runs)
    v = tables["model_verdicts"].set_index(["model", "eval_region"])
    assert v.loc[("mlp", "global"), "val_verdict"] == "model better"
    assert v.loc[("mlp", "EU"), "val_verdict"] == pooled.LEVEL  # one seed's +0.007
    assert v.loc[("mlp", "EU"), "val_single"] == "1 below, 0 above of 4"  # +0.007: z 1.75
    assert v.loc[("tabnet", "global"), "val_verdict"] == "baseline better"
    assert "test_mean" not in v.columns  # validation only: the champion rule's measure
    out = io.StringIO()
    print_pooled(tables, out)
    text = out.getvalue()
    assert ("WARNING: over 4 seeds, `tabnet` is behind the baselines beyond noise in global, "
            "EU") in text
    assert "mlp` is behind" not in text
    assert "the best baseline's, the champion rule's measure)\n" in text  # one block, no part


def test_pool_with_earlier_reads_each_runs_window_once(monkeypatch):
    import pythia.runs
    from pythia.seeds import pool_with_earlier
    rvg = _table([("EU", "mlp", -0.002, 0.0005)])
    other_day = _run("299", 5, rvg=rvg)
    other_day.window = {"test": "2026-11-21"}
    _fake_flow(monkeypatch, [_FakeRun(_run("298", 1, rvg=rvg)), _FakeRun(other_day)])
    reads = []
    monkeypatch.setattr(pythia.runs, "_artifact",
                        lambda run, name: reads.append((run.id, name)) or run.artifacts.get(name))
    assert len(pool_with_earlier("DemoFlow", _run("300", 0, rvg=rvg))["runs"]) == 2
    assert reads.count(("298", "window")) == reads.count(("299", "window")) == 1
    assert ("299", "params") not in reads  # another day's run: its window only
