"""Provider selection (pandas) and label preparation (Spark) rules."""
import datetime as dt

import pandas as pd
import pytest

from pythia import providers
from pythia.config import DEFAULT_AGE_EDGES

NOW = dt.date(2024, 3, 10)


def _metrics(rows):
    return pd.DataFrame(rows, columns=["provider", "country", "date", "coverage", "accuracy",
                                       "consistency", "n_labels"])


METRICS = _metrics([
    ("acme", "GB", NOW, 0.8, 0.9, 0.8, 100),  # 0.5*.9 + .3*.8 + .2*.8 = 0.85
    ("lucid", "GB", NOW, 0.9, 0.8, 0.8, 100),  # 0.4 + .24 + .18 = 0.82
    ("acme", "US", NOW, 0.5, 0.6, 0.5, 100),  # .3 + .15 + .1 = 0.55
    ("lucid", "US", NOW, 0.5, 0.7, 0.5, 100),  # .35 + .15 + .1 = 0.60
    # a stale, excellent score must not count: older than the recent window
    ("acme", "US", NOW - dt.timedelta(days=30), 1.0, 1.0, 1.0, 100),
])


def test_best_score_per_country_with_reason():
    table, choice, notes = providers.select_providers(METRICS, {}, ["GB", "US"])
    assert choice == {"GB": "acme", "US": "lucid"}
    assert notes == []
    gb = table[(table.country == "GB") & table.chosen].iloc[0]
    assert gb.reason == "best score 0.85 vs next 0.82 (lucid)"
    assert gb.score == pytest.approx(0.85)
    assert table.loc[(table.country == "GB") & (table.provider == "lucid"), "rank"].item() == 2
    assert table.groupby("country").chosen.sum().tolist() == [1, 1]


def test_override_wins_where_it_applies_and_is_skipped_with_a_warning_elsewhere():
    table, choice, notes = providers.select_providers(METRICS, {"GB": "lucid"}, ["GB", "US"])
    assert choice["GB"] == "lucid" and notes == []
    assert table.loc[(table.country == "GB") & table.chosen, "reason"].item() == "override"
    # a provider this source does not have: skipped, named, the scores decide
    _, choice, notes = providers.select_providers(METRICS, {"US": "nobody"}, ["US"])
    assert choice["US"] == "lucid" and len(notes) == 1
    assert "US=nobody" in notes[0] and "no provider 'nobody'" in notes[0]
    # a country this source does not have: skipped, named, no row invented for it
    table, choice, notes = providers.select_providers(METRICS, {"BR": "lucid"}, ["GB", "US"])
    assert "BR" not in choice and "BR" not in set(table.country)
    assert len(notes) == 1 and "no BR rows" in notes[0]
    # a provider known only from the labels/ folder may be forced
    _, choice, _ = providers.select_providers(METRICS, {"US": "newco"}, ["US"],
                                              known_providers=["newco"])
    assert choice["US"] == "newco"


def test_country_without_metrics_falls_back_to_best_global_provider():
    # global means: acme (0.85 + 0.55) / 2 = 0.70, lucid (0.82 + 0.60) / 2 = 0.71
    table, choice, notes = providers.select_providers(METRICS, {}, ["GB", "JP"])
    assert choice["JP"] == "lucid"
    assert notes and "JP" in notes[0]
    jp = table[table.country == "JP"]
    assert jp.reason.tolist() == ["no metrics for JP: best global provider"]
    with pytest.raises(ValueError, match="no provider metrics at all"):
        providers.select_providers(METRICS.iloc[:0], {}, ["JP"])


def test_metrics_missing_a_column_is_named():
    with pytest.raises(ValueError, match="accuracy"):
        providers.select_providers(METRICS.drop(columns=["accuracy"]), {}, ["US"])


def test_bucket_labels_rules():
    pdf = pd.DataFrame({
        "user_id": list("abcdefg"),
        "gender": ["F", "M", "F", "F", None, "M", "F"],
        "age": [30, None, 150, 15, 40, 65, 44],
        "age_bucket": [None, "55-64", None, None, None, None, "18-24"],
    })
    out = providers.bucket_labels(pdf, DEFAULT_AGE_EDGES).set_index("user_id")
    assert out.loc["a", "age_bucket"] == "25-34" and out.loc["a", "y_age_gender"] == 1
    assert out.loc["b", "y_age"] == 4 and out.loc["b", "y_age_gender"] == 6 + 4
    assert out.loc["c", "reject"] == providers.IMPOSSIBLE_AGE
    assert out.loc["d", "reject"] == providers.AGE_BELOW_FIRST_EDGE
    assert out.loc["e", "reject"] == providers.INCOMPLETE_LABEL
    assert out.loc["f", "age_bucket"] == "65+" and out.loc["f", "y_age_gender"] == 11
    assert out.loc["g", "age_bucket"] == "35-44"  # age wins over a contradicting bucket
    assert out.reject.isna().sum() == 4


def _label(u, g, a, c, d, bucket=None):
    return {"user_id": u, "gender": g, "age": a, "age_bucket": bucket, "country": c,
            "observed_date": d}


@pytest.mark.spark
def test_prepare_labels_rules_and_agreement(spark, source, tmp_path):
    early, late = dt.date(2024, 3, 1), dt.date(2024, 3, 5)
    source.labels("acme", [
        _label("u1", "M", 50, "US", early),  # US is lucid's: aside
        _label("u2", "M", 40, "GB", early),
        _label("u9", "F", 30, "GB", late),  # two countries: the latest observation wins
        _label("u8", "M", 20, "GB", early),  # tie with the US row below: GB < US wins
        _label("u6", "F", None, "GB", early, bucket="55-64"),
        _label("old", "F", 30, "GB", early), _label("old", "F", 36, "GB", late),  # superseded
        _label("bad", "F", 150, "GB", early),
        _label("kid", "F", 15, "GB", early),
        _label("nog", None, 30, "GB", early),
        _label("future", "F", 70, "JP", dt.date(2024, 4, 1)),  # after the window: still used
    ])
    source.labels("lucid", [
        _label("u1", "F", 30, "US", early),
        _label("u2", "F", 40, "GB", early),  # GB is acme's: aside
        _label("u9", "M", 60, "US", early),
        _label("u8", "F", 50, "US", early),
        _label("", "F", 30, "US", early),  # contract violation: quarantined
    ])
    choice = {"US": "lucid", "GB": "acme"}
    man = providers.prepare_labels(spark, source.root, choice, DEFAULT_AGE_EDGES,
                                   str(tmp_path / "labels"), default_provider="acme")
    got = {r.user_id: r for r in spark.read.parquet(man["labels_path"]).collect()}
    assert sorted(got) == ["future", "old", "u1", "u2", "u6", "u8", "u9"]
    assert (got["u1"].label_provider, got["u1"].gender, got["u1"].age_bucket) == (
        "lucid", "F", "25-34")
    assert (got["u9"].country, got["u9"].label_provider, got["u9"].y_age_gender) == (
        "GB", "acme", 1)
    assert got["u8"].country == "GB"
    assert got["old"].age_bucket == "35-44"
    assert got["u6"].y_age_gender == 4
    assert got["future"].label_provider == "acme"  # JP: default provider; date after window
    c = man["counts"]
    assert c["rows_in"] == 16 and c["users"] == 7
    assert c["rejected"] == {"impossible_age": 1, "age_below_first_edge": 1,
                             "incomplete_label": 1}
    assert c["quarantined"]["null_required"] == 1
    assert c["superseded"] == 3  # old@early, u9@US, u8@US
    assert c["not_chosen_provider"] == 2  # acme u1 (US), lucid u2 (GB)
    aside = {(r.provider, r.user_id) for r in spark.read.parquet(man["aside_path"]).collect()}
    assert aside == {("acme", "u1"), ("lucid", "u2")}
    agree = {(a["provider_a"], a["provider_b"], a["country"]): a for a in man["agreement"]}
    assert agree[("acme", "lucid", "US")]["shared_users"] == 1
    assert agree[("acme", "lucid", "US")]["gender_agreement"] == 0.0
    assert agree[("acme", "lucid", "GB")]["age_agreement"] == 1.0
    assert agree[("acme", "lucid", "GB")]["gender_agreement"] == 0.0


@pytest.mark.spark
def test_read_provider_metrics_quarantines_and_scores(spark, source):
    source.metrics([{"provider": "acme", "country": "US", "date": NOW, "coverage": 0.5,
                     "accuracy": 0.6, "consistency": 0.5, "n_labels": 1},
                    {"provider": "acme", "country": "GB", "date": NOW, "coverage": 2.0,
                     "accuracy": 0.6, "consistency": 0.5, "n_labels": 1}])
    pdf, man = providers.read_provider_metrics(spark, source.root)
    assert pdf.country.tolist() == ["US"] and man["quarantined"]["out_of_domain"] == 1
    assert providers.best_global_provider(pdf) == "acme"


# ------------------------------------------------------------------------------- driver path

def _flavoured_labels(spark, root):
    """Labels as different producers write them, with bad rows of every reason code."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    early, late = dt.date(2024, 3, 1), dt.date(2024, 3, 5)
    folder = os.path.join(root, "labels")
    # pandas: observed_date datetime64[ns] (tz-aware here, naive below), age float with NaN
    os.makedirs(os.path.join(folder, "provider=acme"))
    pd.DataFrame({
        "user_id": ["u1", "u2", "u3", "u4", "u5", " ", "u6", "u7", "u8", "u9"],
        "gender": ["F", "M", None, "F", "X", "F", "M", "F", "M", None],
        "age": [35.0, 41.0, 30.0, 34.7, 40.0, 30.0, None, 150.0, 15.0, None],
        "age_bucket": [None, None, None, None, None, None, "25-34", None, None, None],
        "country": ["US", "US", "GB", "US", "US", "US", "GB", "GB", "GB", "GB"],
        "observed_date": pd.to_datetime(["2024-03-01"] * 5 + ["2024-03-05"] * 5, utc=True),
    }).to_parquet(os.path.join(folder, "provider=acme", "part-0.parquet"))
    pd.DataFrame({"user_id": ["u1", "u10", "u14"], "gender": ["F", "F", "F"],
                  "age": ["36", " 41.0 ", "30"], "country": ["US", "GB", "usa"],
                  "observed_date": pd.to_datetime(["2024-03-05", "2024-03-01", "2024-03-01"])
                  }).to_parquet(
        os.path.join(folder, "provider=acme", "part-1.parquet"))
    pq.write_table(pa.table({  # pyarrow: decimal and unsigned ages, a date32 column
        "user_id": ["u2", "u3", "u11"], "gender": ["F", "M", "M"],
        "age": pa.array([__import__("decimal").Decimal("50.5"), None,
                         __import__("decimal").Decimal("60.0")], pa.decimal128(4, 1)),
        "age_bucket": [None, "35-44", "18-25"], "country": ["US", "GB", "GB"],
        "observed_date": pa.array([early, late, None], pa.date32())}),
        os.path.join(folder, "provider=acme", "part-2.parquet"))
    # Spark: a partitionBy write, with its _SUCCESS and .crc side files
    rows = [("u1", "M", 30, None, "US", early, "lucid"), ("u2", "M", 41, None, "US", late, "lucid"),
            ("u3", "F", 28, None, "GB", early, "lucid"), ("u12", "F", None, "65+", "GB", late,
                                                           "lucid"),
            ("u13", None, None, None, "GB", late, "lucid")]
    (spark.createDataFrame(rows, "user_id string, gender string, age int, age_bucket string, "
                                 "country string, observed_date date, provider string")
     .write.mode("overwrite").partitionBy("provider").parquet(folder + "/_spark_tmp"))
    os.rename(os.path.join(folder, "_spark_tmp", "provider=lucid"),
              os.path.join(folder, "provider=lucid"))
    with open(os.path.join(folder, "provider=lucid", "_SUCCESS"), "wb"):
        pass
    with open(os.path.join(folder, "provider=lucid", ".stale.parquet.crc"), "wb") as f:
        f.write(b"crc\x00")
    import shutil
    shutil.rmtree(os.path.join(folder, "_spark_tmp"))


def _sorted(frame):
    frame = frame.astype(object).where(frame.notna(), None)
    frame = frame[sorted(frame.columns)]
    return sorted(map(tuple, frame.astype(str).values.tolist()))


@pytest.mark.spark
def test_driver_and_spark_label_paths_give_the_same_outputs(spark, source, tmp_path):
    from pythia import providers_local
    from pythia.storage import read_frame

    _flavoured_labels(spark, source.root)
    choice = {"US": "acme", "GB": "lucid"}
    by_spark = providers.prepare_labels(spark, source.root, choice, DEFAULT_AGE_EDGES,
                                        str(tmp_path / "spark"), default_provider="acme")
    by_pandas = providers_local.prepare_labels(source.root, choice, DEFAULT_AGE_EDGES,
                                               str(tmp_path / "pandas"), default_provider="acme")
    assert by_pandas["counts"] == by_spark["counts"]
    c = by_spark["counts"]  # every outcome is exercised
    assert c["users"] and c["superseded"] and c["not_chosen_provider"]
    assert all(c["rejected"].values())
    assert {r for r, n in c["quarantined"].items() if n} == {
        "null_required", "wrong_type", "out_of_domain"}
    assert by_pandas["agreement"] == by_spark["agreement"] and by_spark["agreement"]
    assert by_pandas["extra_columns"] == by_spark["extra_columns"]
    for key in ("labels_path", "aside_path", "rejected_path", "quarantine_path"):
        want, got = read_frame(by_spark[key]), read_frame(by_pandas[key])
        assert len(want) and _sorted(got) == _sorted(want), key
        assert dict(got.dtypes.astype(str)) == dict(want.dtypes.astype(str)), key
    q = read_frame(by_pandas["quarantine_path"])
    assert set(zip(q.user_id, q.reason, q.reason_column)) >= {
        (" ", "null_required", "user_id"), ("u4", "wrong_type", "age"),
        ("u5", "out_of_domain", "gender"), ("u14", "out_of_domain", "country"),
        ("u9", "null_required", "gender|age|yob|age_bucket")}


@pytest.mark.spark
def test_driver_labels_in_small_batches_and_buckets_are_the_same(spark, source, tmp_path,
                                                                 monkeypatch):
    """Batches of 2 rows and buckets of ~3 (one user's rows always in one bucket; some buckets
    empty) give the same files, counts and agreement as the whole table at once."""
    from pythia import providers_local
    from pythia.storage import read_frame

    _flavoured_labels(spark, source.root)
    choice = {"US": "acme", "GB": "lucid"}
    whole = providers_local.prepare_labels(source.root, choice, DEFAULT_AGE_EDGES,
                                           str(tmp_path / "whole"), default_provider="acme")
    held = []
    bucket_rows = providers_local._bucket_rows
    monkeypatch.setattr(providers_local, "_bucket_rows",
                        lambda path: held.append(bucket_rows(path)) or held[-1])
    monkeypatch.setattr(providers_local, "LABEL_BATCH_ROWS", 2)
    monkeypatch.setattr(providers_local, "LABEL_BUCKET_ROWS", 3)
    small = providers_local.prepare_labels(source.root, choice, DEFAULT_AGE_EDGES,
                                           str(tmp_path / "small"), default_provider="acme")
    assert len(held) == -(-whole["counts"]["rows_in"] // 3) and any(len(b) == 0 for b in held)
    users = [set(b.user_id) for b in held]
    assert sum(len(u) for u in users) == len(set().union(*users))  # a user in one bucket
    assert small["counts"] == whole["counts"] and small["agreement"] == whole["agreement"]
    assert small["extra_columns"] == whole["extra_columns"]
    for key in ("labels_path", "aside_path", "rejected_path", "quarantine_path"):
        want, got = read_frame(whole[key]), read_frame(small[key])
        assert len(want) and _sorted(got) == _sorted(want), key
        assert dict(got.dtypes.astype(str)) == dict(want.dtypes.astype(str)), key


def test_driver_labels_spill_to_a_swept_scratch_folder_and_leave_none(source, tmp_path,
                                                                     monkeypatch):
    """The label spill is a ``pythia.scratch`` folder under $TMPDIR: a killed task's is swept
    when the next one starts, this one's is locked while in use and goes at the end."""
    import os
    import tempfile

    from pythia import providers_local
    from test_scratch import is_locked, leave_dead_scratch

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches $TMPDIR
    stale = leave_dead_scratch(str(scratch), "pythia-labels-", 100)
    early = dt.date(2024, 3, 1)
    source.labels("acme", [_label("u1", "M", 50, "US", early), _label("u2", "F", 30, "US", early),
                           _label("u3", "F", 40, "US", early)])
    seen, bucket_rows = [], providers_local._bucket_rows
    monkeypatch.setattr(providers_local, "_bucket_rows", lambda path: seen.append(
        (os.path.dirname(path), is_locked(os.path.dirname(path)))) or bucket_rows(path))
    monkeypatch.setattr(providers_local, "LABEL_BUCKET_ROWS", 1)
    out = providers_local.prepare_labels(source.root, {"US": "acme"}, DEFAULT_AGE_EDGES,
                                         str(tmp_path / "labels"), default_provider="acme")
    assert out["counts"]["users"] == 3
    assert len(seen) == 3 and len({folder for folder, _ in seen}) == 1
    folder, locked = seen[0]
    root = os.path.dirname(folder)  # the scratch folder: its lock file and the spill's folder
    assert locked and os.path.dirname(root) == str(scratch)
    assert os.path.basename(root).startswith("pythia-labels-")
    assert not os.path.exists(stale[0]) and os.listdir(scratch) == []


@pytest.mark.spark
def test_driver_and_spark_metric_reads_agree(spark, source, tmp_path):
    from pythia import providers_local
    from pythia.storage import read_frame

    source.metrics([
        {"provider": "acme", "country": "US", "date": NOW, "coverage": 0.5, "accuracy": 0.6,
         "consistency": 0.5, "n_labels": 1},
        {"provider": "lucid", "country": "US", "date": NOW, "coverage": 0.4, "accuracy": 0.7,
         "consistency": None, "n_labels": 3},
        {"provider": "acme", "country": "GB", "date": NOW, "coverage": 2.0, "accuracy": 0.6,
         "consistency": 0.5, "n_labels": 1},
        {"provider": "acme", "country": "GB", "date": NOW, "coverage": float("nan"),
         "accuracy": 0.6, "consistency": 0.5, "n_labels": 1},
        {"provider": None, "country": "GB", "date": NOW, "coverage": 0.1, "accuracy": 0.6,
         "consistency": 0.5, "n_labels": 1}])
    want, want_man = providers.read_provider_metrics(spark, source.root, str(tmp_path / "qs"))
    got, got_man = providers_local.read_provider_metrics(source.root, str(tmp_path / "qp"))
    assert got_man["quarantined"] == want_man["quarantined"]
    assert want_man["quarantined"]["out_of_domain"] == 2
    assert want_man["quarantined"]["null_required"] == 1
    assert _sorted(read_frame(got_man["quarantine_path"])) == _sorted(
        read_frame(want_man["quarantine_path"]))
    for a, b in ((want, got),):
        ta, _, _ = providers.select_providers(a, {}, ["US"])
        tb, _, _ = providers.select_providers(b, {}, ["US"])
        pd.testing.assert_frame_equal(ta, tb, check_dtype=False)


def test_small_inputs_run_without_spark_and_clusters_keep_it(source, tmp_path, monkeypatch):
    import contextlib

    from pythia import providers_local
    from pythia.config import RunParams
    from pythia.paths import RunPaths

    source.labels("acme", [_label("u1", "F", 30, "US", NOW), _label("u2", "M", 50, "US", NOW),
                           _label("", "F", 30, "US", NOW)])
    source.metrics([{"provider": "acme", "country": "US", "date": NOW, "coverage": 0.5,
                     "accuracy": 0.6, "consistency": 0.5, "n_labels": 1}])

    @contextlib.contextmanager
    def _no_spark(*_a, **_k):
        raise AssertionError("Spark started for a small table")
        yield

    monkeypatch.setattr("pythia.etl.session.spark_session", _no_spark)
    for var in ("SPARK_REMOTE", "PYTHIA_SPARK_MASTER", providers_local.DRIVER_MAX_ROWS_ENV):
        monkeypatch.delenv(var, raising=False)
    # a third of these rows is bad on purpose: past any sane max_quarantined
    params = RunParams.build({"source": source.root, "data_root": str(tmp_path / "data"),
                              "provider_overrides": "", "max_quarantined": 1.0},
                             model_names=("gbdt",))
    paths = RunPaths(str(tmp_path / "data"), "T", "1")
    _, provider_map, _ = providers.choose(source.root, params, paths)
    manifest = providers.run(source.root, provider_map, params, paths)
    assert manifest["counts"]["users"] == 2
    assert manifest["counts"]["quarantined"]["null_required"] == 1
    files = [source.root + "/labels/provider=acme/part-0.parquet"]
    assert providers_local.use_driver(files, params)[0]
    monkeypatch.setenv(providers_local.DRIVER_MAX_ROWS_ENV, "2")  # 3 rows: too many
    assert not providers_local.use_driver(files, params)[0]
    assert not providers_local.use_driver(files, params, "prepare_labels")[0]  # set: for all
    monkeypatch.delenv(providers_local.DRIVER_MAX_ROWS_ENV)
    # unset: the default limit binds the steps that hold their table, not the streaming ones
    monkeypatch.setattr(providers_local, "DRIVER_MAX_ROWS", 2)
    assert not providers_local.use_driver(files, params, "select_providers")[0]
    for step in ("prepare_labels", "etl_hour", "join_hours", "to_tfrecords"):
        assert providers_local.use_driver(files, params, step) == (
            True, "driver, no JVM: 3 rows, streamed")
    monkeypatch.setenv("SPARK_REMOTE", "sc://cluster:15002")
    fits, why = providers_local.use_driver(files, params)
    assert not fits and "sc://cluster:15002" in why
    assert not providers_local.use_driver(files, params, "etl_hour")[0]  # a cluster: Spark
    with pytest.raises(AssertionError, match="Spark started"):  # the cluster path is taken
        providers.run(source.root, provider_map, params, paths)


def test_types_the_driver_cannot_convert_exactly_go_to_spark(source):
    import pyarrow as pa

    from pythia import contract, contract_local

    schema = pa.schema([("user_id", pa.string()), ("gender", pa.string()), ("age", pa.int32()),
                        ("country", pa.string()), ("observed_date", pa.string())])
    source.labels("acme", [_label("u1", "F", 30, "US", "2024-03-01")], schema=schema)
    with pytest.raises(contract_local.NeedsSpark, match="observed_date"):
        contract_local.read_table(contract.list_table_files(source.root, "labels"),
                                  contract.LABELS)
