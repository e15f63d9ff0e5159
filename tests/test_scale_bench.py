"""benchmarks/scale_bench.py: the growth fit and merging kept runs of different scales."""
from __future__ import annotations

import json
import os

import pytest

from repo_modules import load_repo_module


@pytest.fixture(scope="module")
def bench():
    return load_repo_module("benchmarks/scale_bench.py")


def _run(scale: float, rss: float) -> dict:
    run = {name: {"wall_s": 10.0 * scale, "cpu_s": 5.0 * scale, "rss_mb": rss, "rows": None,
                  "tasks": 1, "load": [3.0]} for name in ("synth", "start", "select_providers",
                                                          "prepare_labels", "etl_hour",
                                                          "join_hours", "to_tfrecords",
                                                          "train", "evaluate", "end")}
    run["_world"] = {"impressions": int(1000 * scale)}
    return run


def _save(folder, scales, runs) -> str:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump({"scales": scales, "runs": runs}, f)
    return str(folder)


def test_fit_exponent_linear_and_flat(bench):
    assert bench.fit_exponent([1, 2, 4], [3, 6, 12]) == pytest.approx(1.0)
    assert bench.fit_exponent([1, 2, 4], [7, 7, 7]) == pytest.approx(0.0)
    assert bench.fit_fixed([1, 2, 4], [13, 16, 22]) == pytest.approx(10.0)


def test_replot_merges_runs_by_scale(bench, tmp_path, capsys):
    a = _save(tmp_path / "a", [1.0, 2.0], [_run(1, 500), _run(2, 500)])
    b = _save(tmp_path / "b", [4.0], [_run(4, 1000)])
    scales, runs = bench.merge_results([b, a])
    assert scales == [1.0, 2.0, 4.0]
    assert [r["_world"]["impressions"] for r in runs] == [1000, 2000, 4000]
    assert bench.main(["--replot", f"{a},{b}"]) == 0
    out = capsys.readouterr().out
    assert "load average (1 min, after each task) at 4x: min 3.0" in out
    evaluate_row = next(ln for ln in out.splitlines()
                        if ln.startswith("evaluate ") and "4x" not in ln and len(ln.split()) == 6)
    assert evaluate_row.split()[1:5] == ["1.00", "1.00", "0.50", "2.00"]  # RSS 500 -> 1000 MB


def test_replot_refuses_the_same_scale_twice(bench, tmp_path):
    a = _save(tmp_path / "a", [1.0], [_run(1, 500)])
    b = _save(tmp_path / "b", [1.0], [_run(1, 600)])
    with pytest.raises(SystemExit, match="scale 1 is in both"):
        bench.merge_results([a, b])


def test_until_stops_after_the_step_and_refuses_an_unknown_one(bench):
    assert bench.steps_until("etl_hour") == ("synth", "start", "select_providers",
                                             "prepare_labels", "etl_hour")
    assert bench.steps_until(None) == bench.STEPS
    with pytest.raises(ValueError, match="'etl' is not a step"):
        bench.steps_until("etl")
    with pytest.raises(SystemExit):  # argparse: not one of the steps
        bench.main(["--until", "etl", "--replot", "x"])


def test_replot_of_runs_stopped_by_until_lists_only_their_steps(bench, tmp_path, capsys):
    runs = []
    for scale in (1, 8):
        run = _run(scale, 300 * scale)
        for name in ("join_hours", "to_tfrecords", "train", "evaluate", "end"):
            del run[name]
        runs.append(run)
    folder = _save(tmp_path / "u", [1.0, 8.0], runs)
    assert bench.main(["--replot", folder]) == 0
    out = capsys.readouterr().out
    assert "etl_hour              8" in out and "join_hours" not in out
    etl_row = next(ln for ln in out.splitlines()
                   if ln.startswith("etl_hour ") and len(ln.split()) == 6)
    assert etl_row.split()[4] == "8.00"  # RSS 300 -> 2400 MB
