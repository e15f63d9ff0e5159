"""Unit tests: config parsing, the window, hour grouping, flow parameter validation."""
import datetime as dt

import pytest

from pythia.config import (EtlConfig, Geography, Window, hour_groups, parse_date, parse_list,
                           parse_overrides)
from pythia.pipeline import make_params


def test_window_splits_five_days_ending_on_test_date():
    w = Window(dt.date(2026, 11, 20))
    assert [d.isoformat() for d in w.dates] == [
        "2026-11-16", "2026-11-17", "2026-11-18", "2026-11-19", "2026-11-20"]
    assert w.split_of(dt.date(2026, 11, 16)) == "train"
    assert w.split_of(dt.date(2026, 11, 18)) == "train"
    assert w.split_of(dt.date(2026, 11, 19)) == "validation"
    assert w.split_of(dt.date(2026, 11, 20)) == "test"
    assert w.split_of(dt.date(2026, 11, 15)) is None
    assert w.split_of(dt.date(2026, 11, 21)) is None


def test_parse_overrides():
    assert parse_overrides("US=lucid, gb = acme") == {"US": "lucid", "GB": "acme"}
    assert parse_overrides("") == {}
    with pytest.raises(ValueError, match="USA=lucid"):
        parse_overrides("USA=lucid")
    with pytest.raises(ValueError, match="'US'"):
        parse_overrides("US")


def test_parse_date_and_list_errors_name_the_value():
    assert parse_date("2026-11-20") == dt.date(2026, 11, 20)
    with pytest.raises(ValueError, match="2026-13-01"):
        parse_date("2026-13-01")
    assert parse_list("mlp, gbdt,mlp", ("mlp", "gbdt")) == ["mlp", "gbdt"]
    with pytest.raises(ValueError, match="xgb"):
        parse_list("mlp,xgb", ("mlp", "gbdt"), "model")


def test_hour_groups_cover_the_day_once():
    for k in (1, 2, 3, 4, 6, 8, 12, 24):
        groups = hour_groups(k)
        assert sorted(h for g in groups for h in g) == list(range(24))
        assert len(groups) == 24 // k
    with pytest.raises(ValueError, match="divide 24"):
        EtlConfig(hours_per_task=5)


def test_etl_config_rejects_bad_values():
    with pytest.raises(ValueError, match="resample"):
        EtlConfig(resample="upsample")
    with pytest.raises(ValueError, match="age_edges"):
        EtlConfig(age_edges=(18, 18, 30))


def test_geography_routes_unknown_country_to_other():
    geo = Geography()
    assert geo.region_of("US") == "NA"
    assert geo.region_of("ZZ") == "OTHER"
    assert geo.region_of(None) == "OTHER"
    assert len(geo.region_of_country) == 12 and len(geo.regions) == 4


def test_make_params_validates_each_parameter():
    p = make_params(source="synthetic://tiny", models="mlp,gbdt", regions="NA,EU")
    assert p.models == ("mlp", "gbdt") and p.regions == ("NA", "EU")
    assert p.provider_overrides == {"US": "lucid"}
    assert make_params(regions="all").regions is None
    for kwargs, needle in [({"models": "mlp,svm"}, "svm"), ({"date": "2026-02-30"}, "2026-02-30"),
                           ({"age_head": "coral"}, "coral"), ({"source": " "}, "source"),
                           ({"max_epochs": 0}, "max_epochs"), ({"resample": "x"}, "resample")]:
        with pytest.raises(ValueError, match=needle):
            make_params(**kwargs)


def test_scheduled_runs_are_recognised_by_their_run_id():
    from pythia.pipeline import is_scheduled_run
    assert is_scheduled_run("airflow-7d1c0a") and is_scheduled_run("argo-demoflow-x2")
    assert not is_scheduled_run("1795780906256409")


def test_window_defaults_to_yesterday_on_a_schedule(tmp_path):
    import datetime as dt

    from pythia.etl import sample
    from pythia.pipeline import resolve_source_and_window
    yesterday = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    old = yesterday - dt.timedelta(days=30)
    sample.write_sample_source(str(tmp_path), old, n_users=4)
    params = make_params(source=str(tmp_path))
    _, window, _ = resolve_source_and_window(params)
    assert window["test"] == [old.isoformat()]  # interactive: newest complete date
    with pytest.raises(ValueError, match="missing"):
        resolve_source_and_window(params, scheduled=True)  # yesterday's partitions are absent
    _, window, gaps = resolve_source_and_window(
        make_params(source=str(tmp_path), allow_gaps=True), scheduled=True)
    assert window["test"] == [yesterday.isoformat()] and len(gaps) == 5 * 24
