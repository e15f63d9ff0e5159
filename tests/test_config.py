"""Unit tests: config parsing, the window, hour grouping, flow parameter validation."""
import datetime as dt

import pytest

from pythia.config import (EtlConfig, Geography, Window, hour_groups, parse_date, parse_list,
                           parse_overrides)
from pythia.config import RunParams


def make_params(**values):
    return RunParams.build(values, model_names=("mlp", "tabnet", "gbdt"),
                           default_models=("mlp", "tabnet"))


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
    assert len(geo.region_of_country) >= 249  # every ISO-3166 country (pythia.geo)
    assert set(geo.regions) == {"NA", "LATAM", "EU", "APAC", "MEA"}


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
    from pythia.source import is_scheduled_run
    assert is_scheduled_run("airflow-7d1c0a") and is_scheduled_run("argo-demoflow-x2")
    assert not is_scheduled_run("1795780906256409")


def test_window_defaults_to_yesterday_on_a_schedule(tmp_path):
    import datetime as dt

    from pythia.etl import sample
    from pythia.source import resolve as resolve_source_and_window
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


def test_every_parameter_has_one_default_used_by_the_flow():
    """The flow declares exactly PARAMETERS, each from param_kwargs (no second default)."""
    import ast
    from pathlib import Path

    from pythia.config import PARAMETERS, RunParams
    tree = ast.parse(Path(__file__).resolve().parent.parent.joinpath(
        "flows", "demo_flow.py").read_text())
    declared = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Parameter"):
            name = node.args[0].value
            declared[name] = [k.arg for k in node.keywords]
    assert set(declared) == {p.name for p in PARAMETERS}
    assert all(kws == [None] for kws in declared.values()), declared  # only **param_kwargs
    built = RunParams.build({}, model_names=("mlp", "tabnet", "gbdt"),
                            default_models=("mlp", "tabnet"))
    assert built.etl.hours_per_task == 4 and built.models == ("mlp", "tabnet")


def test_models_default_is_the_registry_default_and_all_adds_gbdt():
    """--models default (the flow's default) trains DEFAULT_MODELS, 'all' every registered
    model; either without the registry's names is a clear error, not an empty run."""
    from pythia import models
    from pythia.config import RunParams
    assert set(models.DEFAULT_MODELS) < set(models.MODEL_NAMES)
    assert "gbdt" not in models.DEFAULT_MODELS and "logreg" in models.DEFAULT_MODELS
    names = dict(model_names=models.MODEL_NAMES, default_models=models.DEFAULT_MODELS)
    assert RunParams.build({"source": "x"}, **names).models == models.DEFAULT_MODELS
    assert RunParams.build({"source": "x", "models": "all"}, **names).models == \
        models.MODEL_NAMES
    assert RunParams.build({"source": "x", "models": " default "}, **names).models == \
        models.DEFAULT_MODELS
    for chosen in ("all", "default"):
        with pytest.raises(ValueError, match=f"models='{chosen}' needs"):
            RunParams.build({"source": "x", "models": chosen})
    # the default list and more, each model once, in the order asked
    assert RunParams.build({"source": "x", "models": "default, gbdt,mlp"}, **names).models == \
        (*models.DEFAULT_MODELS, "gbdt")
    assert RunParams.build({"source": "x", "models": "gbdt,default"}, **names).models == \
        ("gbdt", *models.DEFAULT_MODELS)
    with pytest.raises(ValueError, match=r"unknown model\(s\) \['svm'\]"):
        RunParams.build({"source": "x", "models": "default,svm"}, **names)


def test_deploy_config_file_parses_and_feeds_resources():
    import tomllib
    from pathlib import Path

    from pythia.config import DeployConfig
    path = Path(__file__).resolve().parent.parent / "flows" / "pythia.toml"
    doc = tomllib.loads(path.read_text())
    cfg = DeployConfig.from_mapping(doc)
    assert cfg.age_edges == (18, 25, 35, 45, 55, 65) and cfg.batch_size == 4096
    assert cfg.regional_start == "global"  # the file names the default it keeps
    for step in ("prepare_labels", "etl_hour", "join_hours", "to_tfrecords", "train",
                 "evaluate"):
        assert doc["resources"][step]["cpu"] >= 1 and doc["resources"][step]["memory"] > 0
    patched = DeployConfig.from_mapping({"geography": {"regions": {"pl": "EU", "US": "AMER"}}})
    assert patched.geo.region_of("PL") == "EU" and patched.geo.region_of("US") == "AMER"
    assert patched.geo.region_of("GB") == "EU"  # the rest of the default map stays
    with pytest.raises(ValueError, match="geograpy"):
        DeployConfig.from_mapping({"geograpy": {}})


def test_run_params_reject_unknown_parameters():
    with pytest.raises(ValueError, match="sourc"):
        RunParams.build({"sourc": "x"})


def test_regional_start_comes_from_the_deploy_config_and_is_checked():
    from pythia.config import DeployConfig
    assert make_params().train.regional_start == "global"
    scratch = DeployConfig.from_mapping({"train": {"regional_start": "scratch"}})
    assert RunParams.build({}, scratch, model_names=("mlp",)).train.regional_start == "scratch"
    bad = DeployConfig.from_mapping({"train": {"regional_start": "fine-tune"}})
    with pytest.raises(ValueError, match=r"regional_start .*'fine-tune'"):
        RunParams.build({}, bad, model_names=("mlp",))


def test_max_kept_days_comes_from_evaluate_and_is_checked():
    from pythia.config import DeployConfig
    assert DeployConfig().max_kept_days == 0 and make_params().max_kept_days == 0  # no limit
    thirty = DeployConfig.from_mapping({"evaluate": {"max_kept_days": 30}})
    assert RunParams.build({}, thirty, model_names=("mlp",)).max_kept_days == 30
    with pytest.raises(ValueError, match="max_kept_days must be >= 0, got -1"):
        DeployConfig.from_mapping({"evaluate": {"max_kept_days": -1}})


def test_the_commented_model_knobs_in_pythia_toml_show_the_defaults():
    """`# key = value` under [models.<name>] reads as "the default, uncomment to change it":
    each must be the model's own default (a stale `learning_rate = 1e-3` sat there while the
    MLP's default was 1e-2)."""
    import re
    import tomllib
    from pathlib import Path

    from pythia.models import get_model
    text = (Path(__file__).resolve().parent.parent / "flows" / "pythia.toml").read_text()
    section, checked = None, 0
    for line in text.splitlines():
        head = re.match(r"\[models\.(\w+)\]", line)
        if head or line.startswith("["):
            section = head.group(1) if head else None
            continue
        knob = re.match(r"# (\w+) = (.+?)(\s{2,}#.*)?$", line)
        if section and knob:
            value = tomllib.loads(f"v = {knob.group(2)}")["v"]
            default = get_model(section).default_hparams()[knob.group(1)]
            assert value == default, (section, knob.group(1), value, default)
            checked += 1
    assert checked >= 7
