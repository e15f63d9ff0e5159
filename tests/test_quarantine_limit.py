"""``max_quarantined`` from a run tag (``resume --tag max_quarantined:X``) and the stop's
resume line (``pythia.quarantine_limit``). The flow test of a producer's vocabulary
(tests/test_flow_inputs.py) resumes a stopped run this way."""
from __future__ import annotations

import pytest

from pythia import input_health, quarantine_limit
from pythia.config import RunParams
from pythia.contract import IMPRESSIONS


def _params(**values) -> RunParams:
    return RunParams.build({"models": "gbdt", **values})


@pytest.mark.parametrize("tags, want", [
    ([], None), (["nightly", "max_quarantined:0.65"], 0.65), (["max_quarantined: 1"], 1.0),
    (["max_quarantined:0"], 0.0), (["max_quarantined_old:0.3"], None),
])
def test_the_tag_gives_the_limit(tags, want):
    assert quarantine_limit.from_tags(tags) == want


@pytest.mark.parametrize("tags, message", [
    (["max_quarantined:1.5"], r"^run tag 'max_quarantined:1\.5': max_quarantined must be a "
                              r"share in \[0, 1\] \(1 = never stop\), e\.g\. --tag "
                              r"max_quarantined:0\.5$"),
    (["max_quarantined:lots"], r"^run tag 'max_quarantined:lots': "),
    (["max_quarantined"], r"^run tag 'max_quarantined': "),
    (["max_quarantined:nan"], r"^run tag 'max_quarantined:nan': "),
    (["max_quarantined:0.2", "max_quarantined:0.3"],
     r"^the run has 2 max_quarantined tags \(max_quarantined:0\.2, max_quarantined:0\.3\): "
     r"resume with one, e\.g\. --tag max_quarantined:0\.5$"),
])
def test_a_tag_that_is_no_share_is_one_line(tags, message):
    with pytest.raises(ValueError, match=message):
        quarantine_limit.from_tags(tags)


def test_apply_tags_puts_the_limit_in_params_and_says_so():
    params = _params()
    same, note = quarantine_limit.apply_tags(params, ["nightly"])
    assert same is params and note is None
    changed, note = quarantine_limit.apply_tags(params, ["max_quarantined:0.65"])
    assert changed.etl.max_quarantined == 0.65 and params.etl.max_quarantined == 0.1
    assert changed.etl.power_user_quantile == params.etl.power_user_quantile
    assert changed.models == params.models and changed.geo == params.geo
    assert note == ("note: max_quarantined 0.65 from the run's tag max_quarantined:0.65 (the "
                    "parameter says 0.1)")
    said, note = quarantine_limit.apply_tags(_params(max_quarantined=0.65),
                                             ["max_quarantined:0.65"])
    assert note is None and said.etl.max_quarantined == 0.65


def _stop(by_reason, rows_in, limit=0.1):
    summary = {"entries": [], "extra_columns": []}
    input_health.check_quarantined("join_hours", "impressions", by_reason, rows_in, summary,
                                   IMPRESSIONS, limit, "/q")


def test_a_stop_that_can_go_on_says_how_to_resume():
    with pytest.raises(input_health.InputHealthError) as err:
        with quarantine_limit.resume_hint("python flows/demo_flow.py resume --origin-run-id 7"):
            _stop({"out_of_domain": 62}, 100)
    text = str(err.value)
    assert "rerun with --max_quarantined 0.65 to go on with the rest; or keep this run's " \
           "finished steps (the ETL): `python flows/demo_flow.py resume --origin-run-id 7 " \
           "--tag max_quarantined:0.65`" in text and text.count("\n") == 0
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_a_stop_with_no_row_left_and_other_errors_get_no_resume_line():
    with pytest.raises(input_health.InputHealthError) as err:
        with quarantine_limit.resume_hint("python f.py resume"):
            _stop({"bad_timestamp": 100}, 100)
    assert "no row is left to use" in str(err.value) and "resume" not in str(err.value)
    with pytest.raises(input_health.InputHealthError, match="^no labels$"):
        with quarantine_limit.resume_hint("python f.py resume"):
            raise input_health.InputHealthError("no labels")
    with pytest.raises(KeyError):
        with quarantine_limit.resume_hint("python f.py resume"):
            raise KeyError("other")
