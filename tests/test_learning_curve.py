"""benchmarks/learning_curve.py: the power-law fit, the rows it asks for, and the table.

Reading a real run's gauge (run_figures / --add) is tested on the tiny flow run in
test_flow.py."""
from __future__ import annotations

import io
import json

import pytest

from repo_modules import load_repo_module


@pytest.fixture(scope="module")
def lc():
    return load_repo_module("benchmarks/learning_curve.py")


def _point(scale: float, rows: int, ratio: float) -> dict:
    per_slice = {"natural": {"age_gender": ratio, "gender": 1 + (ratio - 1) / 2,
                             "age": 1 + (ratio - 1) / 2},
                 "natural_no_power_users": {"age_gender": 1 + (ratio - 1) / 3},
                 "natural_power_users": {"age_gender": 1 + 3 * (ratio - 1)}}
    return {"scale": scale, "train_rows": rows, "champions": {"global": "mlp/global#0"},
            "ratios": {"global": per_slice}}


def test_fit_recovers_a_power_law_and_the_rows_it_needs(lc):
    rows = [1e5, 2e5, 4e5, 8e5]
    ratios = [1 + 0.5 * n ** -0.25 for n in rows]
    a, b = lc.fit_power(rows, ratios)
    assert (a, b) == (pytest.approx(0.5), pytest.approx(0.25))
    need = lc.rows_for((a, b), 1.02)
    assert 1 + 0.5 * need ** -0.25 == pytest.approx(1.02)


def test_fit_refuses_what_it_cannot_fit(lc):
    assert lc.fit_power([1e5], [1.1]) is None  # one point
    assert lc.fit_power([1e5, 1e5], [1.1, 1.05]) is None  # one size
    assert lc.fit_power([1e5, 2e5], [0.99, 1.0]) is None  # no excess left
    assert lc.rows_for((0.1, -0.2), 1.02) is None  # an excess that grows with the rows


def test_table_names_every_scale_and_the_extrapolated_rows(lc):
    points = [_point(2, 200_000, 1 + 0.5 * 200_000 ** -0.25),
              _point(1, 100_000, 1 + 0.5 * 100_000 ** -0.25)]
    out = io.StringIO()
    lc.print_curve(points, 1.02, 1.03, out=out)
    text = out.getvalue()
    lines = [ln.split() for ln in text.splitlines()]
    table = [ln for ln in lines if ln[:1] in (["1"], ["2"])]
    assert [ln[1] for ln in table] == ["100,000", "200,000"]  # sorted by rows
    assert table[0][3] == f"{1 + 0.5 * 100_000 ** -0.25:.3f}"
    ratios = [p["ratios"]["global"]["natural"]["age_gender"]
              for p in sorted(points, key=lambda p: p["scale"])]
    need = lc.rows_for(lc.fit_power([1e5, 2e5], ratios), 1.02)
    assert f"{need:,.0f} train rows" in text
    assert "b = 0.25" in text


def test_replot_and_bad_add_say_what_is_wrong(lc, tmp_path, capsys):
    with pytest.raises(SystemExit):
        lc.main(["--workdir", str(tmp_path), "--replot"])
    assert "no results under" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lc.main(["--workdir", str(tmp_path), "--add", "one=/x"])
    assert "expected SCALE=DATASTORE_ROOT:RUN_ID" in capsys.readouterr().err
    (tmp_path / "results.json").write_text(json.dumps(
        {"points": [_point(1, 100_000, 1.08), _point(4, 400_000, 1.04)]}))
    assert lc.main(["--workdir", str(tmp_path), "--replot"]) == 0
    assert "b = 0.50" in capsys.readouterr().out


def test_an_excess_that_hardly_falls_is_said_so_not_extrapolated(lc):
    points = [_point(1, 100_000, 1.080), _point(2, 200_000, 1.079)]
    out = io.StringIO()
    lc.print_curve(points, 1.02, 1.03, out=out)
    line = next(ln for ln in out.getvalue().splitlines() if "global  age_gender" in ln)
    assert "falls too slowly to reach 1.02 within 1000x" in line and "train rows (" not in line


def test_table_shows_the_new_users_against_both_bars_and_dashes_on_older_points(lc):
    """natural_new_users: the realised ratio (``ag nu``) and the population one (``nu pop``,
    their fair bar); a point from before the holdout has neither."""
    new = _point(2, 200_000, 1.05)
    new["ratios"]["global"]["natural_new_users"] = {"age_gender": 1.25}
    new["population"] = {"global": {"natural_new_users": {"age_gender": 1.01}}}
    out = io.StringIO()
    lc.print_curve([_point(1, 100_000, 1.08), new], 1.02, 1.03, out=out)
    lines = out.getvalue().splitlines()
    assert any(ln.rstrip().endswith("ag pw  ag nu nu pop  champion") for ln in lines)
    rows = {ln.split()[0]: ln.split() for ln in lines if ln.split()[:1] in (["1"], ["2"])}
    # scale, rows, region, ag, g, a, ag np, ag pw, ag nu, nu pop, champion
    assert rows["2"][8:10] == ["1.250", "1.010"] and rows["1"][8:10] == ["-", "-"]
    assert lc.SLICES[-1] == lc.NEW_USERS == "natural_new_users"
