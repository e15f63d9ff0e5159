"""pythia.input_health and pythia.label_health: what the quarantine holds, said in one
line; a stop above max_quarantined; a stop, with the two sides' ids described, when no
impression has a label; country codes no map knows. Inputs are written the way producers
write them: pandas (``to_parquet``, its index, ns timestamps, categoricals), pyarrow, and the
run's own quarantine tables."""
import datetime as dt
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pythia import contract, input_health, label_health, providers
from pythia.config import RunParams, Window
from pythia.contract import IMPRESSIONS, LABELS
from pythia.etl import sample
from pythia.paths import RunPaths

DAY = dt.date(2025, 6, 30)


def _quarantine_file(path, rows, columns=("impression_id", "device_type", "country", "ts")):
    """A quarantine table as both engines write it: raw strings, reason, reason_column."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    table = {c: pa.array([r.get(c) for r in rows], pa.string()) for c in columns}
    table.update({k: pa.array([r[k] for r in rows], pa.string())
                  for k in ("reason", "reason_column")})
    pq.write_table(pa.table(table), path)


def _row(reason, column, **values):
    return {"reason": reason, "reason_column": column, **values}


def test_summarize_counts_rows_per_reason_and_column_and_the_values(tmp_path):
    q = tmp_path / "q"
    _quarantine_file(str(q / "hours=00" / "part-0.parquet"),
                     [_row("out_of_domain", "device_type", device_type="phone")] * 5
                     + [_row("out_of_domain", "device_type", device_type="Mobile")] * 2
                     + [_row("null_required", "country")] * 3
                     + [_row("duplicate_impression_id", "impression_id", impression_id="x")])
    # another task's file without the ts column, and a side file Spark leaves
    _quarantine_file(str(q / "hours=04" / "part-1.parquet"),
                     [_row("out_of_domain", "device_type", device_type="phone")] * 4
                     + [_row("out_of_domain", "country", country="us")],
                     columns=("impression_id", "device_type", "country"))
    (q / "hours=04" / "_SUCCESS").write_text("")
    s = input_health.summarize(str(q), IMPRESSIONS)
    assert s["rows"] == 16
    by = {(e["reason"], e["column"]): e for e in s["entries"]}
    assert [(e["reason"], e["column"]) for e in s["entries"]][0] == ("out_of_domain",
                                                                     "device_type")
    assert by[("out_of_domain", "device_type")]["values"] == [["phone", 9], ["Mobile", 2]]
    assert by[("null_required", "country")] == {
        "reason": "null_required", "column": "country", "rows": 3, "values": [],
        "values_exact": True}
    assert by[("duplicate_impression_id", "impression_id")]["values"] == []  # ids: not shown
    assert by[("out_of_domain", "country")]["values"] == [["us", 1]]
    assert input_health.summarize(str(tmp_path / "none"), IMPRESSIONS) == {"rows": 0,
                                                                           "entries": []}


def test_a_whole_hour_shift_of_ts_is_said_as_a_time_zone(tmp_path):
    """Local time written as UTC: every row lies 2 h after its hour folder. Two tasks' files
    (one as the driver writes ts, one with an ISO 'T' and 'Z'), and rows that are just bad."""
    def rows(fmt, n, hours_off):
        start = dt.datetime(2025, 6, 30, 3, 10) + dt.timedelta(hours=hours_off)
        return [_row("bad_timestamp", "ts", ts=(start + dt.timedelta(seconds=i)).strftime(fmt),
                     date="2025-06-30", hour="3") for i in range(n)]
    cols = ("impression_id", "ts", "date", "hour")
    _quarantine_file(str(tmp_path / "q" / "a" / "part-0.parquet"),
                     rows("%Y-%m-%d %H:%M:%S.%f", 30, 2), columns=cols)
    _quarantine_file(str(tmp_path / "q" / "b" / "part-0.parquet"),
                     rows("%Y-%m-%dT%H:%M:%SZ", 15, 2) + rows("%Y-%m-%d %H:%M:%S", 3, -9)
                     + [_row("bad_timestamp", "ts", ts="soon", date="2025-06-30", hour="3")],
                     columns=cols)
    parts = [input_health.summarize(str(tmp_path / "q" / k), IMPRESSIONS) for k in "ab"]
    assert parts[1]["entries"][0]["offsets"] == {"2": 15, "-9": 3}
    (entry,) = input_health.merge(parts)["entries"]
    assert entry["rows"] == 49 and entry["offsets"] == {"2": 45, "-9": 3}
    assert input_health.entry_text(entry, IMPRESSIONS).endswith(
        "inside the window; 92% lie 2 h after their hour folder: local time written as UTC, "
        "or folders in local time?)")
    # no shift holds half the rows: no time-zone guess
    entry = {**entry, "offsets": {"2": 20, "-9": 3}}
    assert "lie" not in input_health.entry_text(entry, IMPRESSIONS)


def test_many_distinct_values_keep_exact_rows_and_say_the_values_are_not(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(input_health, "MAX_TRACKED", 50)
    monkeypatch.setattr(input_health, "BATCH_ROWS", 64)
    rows = [_row("wrong_type", "ts", ts=f"t{i}") for i in range(500)]
    rows += [_row("wrong_type", "ts", ts="often")] * 100
    _quarantine_file(str(tmp_path / "q" / "part-0.parquet"), rows)
    (entry,) = input_health.summarize(str(tmp_path / "q"), IMPRESSIONS)["entries"]
    assert entry["rows"] == 600 and not entry["values_exact"]
    assert entry["values"][0] == ["often", 100]
    assert len(entry["values"]) == input_health.KEEP_VALUES


def test_merge_adds_the_tasks_summaries():
    a = {"rows": 3, "entries": [{"reason": "out_of_domain", "column": "device_type", "rows": 3,
                                 "values": [["phone", 3]], "values_exact": True}]}
    b = {"rows": 6, "entries": [{"reason": "out_of_domain", "column": "device_type", "rows": 5,
                                 "values": [["phone", 4], ["pc", 1]], "values_exact": False},
                                {"reason": "null_required", "column": "user_id", "rows": 1,
                                 "values": [], "values_exact": True}]}
    m = input_health.merge([a, None, b])
    assert m["rows"] == 9
    assert m["entries"][0] == {"reason": "out_of_domain", "column": "device_type", "rows": 8,
                               "values": [["phone", 7], ["pc", 1]], "values_exact": False}
    assert input_health.merge([]) == {"rows": 0, "entries": []}


@pytest.mark.parametrize("table, entry, wanted", [
    (LABELS, ("out_of_domain", "gender", [["female", 3], ["male", 2]]),
     "out_of_domain gender 5 ('female' 3, 'male' 2; allowed: F, M, U, O ('female' -> "
     "'F'?, "
     "'male' -> 'M'?))"),
    (IMPRESSIONS, ("out_of_domain", "device_type", [["Mobile", 3], [" ctv", 1], ["phone", 1],
                                                    ["pc", 1]]),
     "out_of_domain device_type 5 ('Mobile' 3, ' ctv' 1, 'phone' 1, …; allowed: mobile, "
     "tablet, desktop, ctv ('Mobile' -> 'mobile'?, ' ctv' -> 'ctv'?))"),
    (IMPRESSIONS, ("out_of_domain", "device_type", [["4", 3], ["2", 1], ["8", 1]]),
     "out_of_domain device_type 5 ('4' 3, '2' 1, '8' 1; allowed: mobile, tablet, desktop, ctv "
     "('4' -> 'mobile'?, '2' -> 'desktop'?); OpenRTB device.devicetype codes?)"),
    (IMPRESSIONS, ("out_of_domain", "inventory_type", [["1", 5]]),
     "out_of_domain inventory_type 5 ('1' 5; allowed: site, app)"),
    (IMPRESSIONS, ("out_of_domain", "country", [["us", 3], ["USA", 1], ["Germany", 1]]),
     "out_of_domain country 5 ('us' 3, 'USA' 1, 'Germany' 1; must match ^[A-Z]{2}$ ('us' -> "
     "'US'?, 'USA' -> 'US'?, 'Germany' -> 'DE'?))"),
    (IMPRESSIONS, ("out_of_domain", "country", [["xx1", 5], ["ÜS", 1]]),
     "out_of_domain country 5 ('xx1' 5, 'ÜS' 1; must match ^[A-Z]{2}$)"),
    (IMPRESSIONS, ("null_required", "user_id", []),
     "null_required user_id 5 (required: null or empty)"),
    (LABELS, ("wrong_type", "age", [["forty", 5]]),
     "wrong_type age 5 ('forty' 5; not of type int32)"),
    (IMPRESSIONS, ("out_of_domain", "hour", [["24", 5]]),
     "out_of_domain hour 5 ('24' 5; allowed [0, 23])"),
    (IMPRESSIONS, ("bad_timestamp", "ts", [["2025-06-30 09:00:00", 5]]),
     "bad_timestamp ts 5 ('2025-06-30 09:00:00' 5; must be a UTC instant within 300 s of its "
     "date/hour folder and inside the window)"),
    (IMPRESSIONS, ("bad_timestamp", "ts", [["1794787203830", 3], ["1794787203.5", 2]]),
     "bad_timestamp ts 5 ('1794787203830' 3, '1794787203.5' 2; must be a UTC instant within "
     "300 s of its date/hour folder and inside the window; epoch numbers are not read "
     "(seconds? milliseconds?): write a Parquet timestamp)"),
    (IMPRESSIONS, ("out_of_domain", "no_such_column", [[None, 5]]),
     "out_of_domain no_such_column 5 (null 5)"),
])
def test_each_entry_says_what_the_column_expects(table, entry, wanted):
    reason, column, values = entry
    assert input_health.entry_text({"reason": reason, "column": column, "rows": 5,
                                    "values": values}, table) == wanted


def _summary(*entries):
    return input_health.merge([{"entries": [
        {"reason": r, "column": c, "rows": n, "values": v} for r, c, n, v in entries]}])


def test_a_required_column_of_nulls_names_the_columns_the_contract_does_not_know():
    s = {**_summary(("null_required", "ts", 9, [])), "extra_columns": ["event_time", "xyz"]}
    assert input_health.describe(s, IMPRESSIONS) == (
        "null_required ts 9 (required: null or empty, or absent: the source has event_time, "
        "xyz, which the contract does not know: a renamed ts?)")


def test_check_quarantined_prints_stops_above_the_limit_and_leaves_duplicates_aside(capsys):
    s = _summary(("out_of_domain", "device_type", 600, [["phone", 600]]),
                 ("duplicate_impression_id", "impression_id", 300, []))
    by_reason = {"out_of_domain": 600, "duplicate_impression_id": 300, "wrong_type": 0}
    with pytest.raises(input_health.InputHealthError) as err:
        input_health.check_quarantined("join_hours", "impressions", by_reason, 1000, s,
                                       IMPRESSIONS, 0.1, "/q")
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("join_hours: 900 of 1,000 impressions quarantined (60.0% lost, "
                           "duplicates and rows without a user_id aside): out_of_domain "
                           "device_type 600 ('phone' 600; ")
    assert "more than max_quarantined 0.1" in text and "--max_quarantined 0.6 " in text
    # at the limit it goes on, with a warning line; 1 never stops
    assert input_health.check_quarantined("join_hours", "impressions", by_reason, 1000, s,
                                          IMPRESSIONS, 0.6, "/q") == 0.6
    assert capsys.readouterr().out.startswith("warning: join_hours: 900 of 1,000 impressions")
    # all lost: nothing to go on with, so no rerun is proposed
    with pytest.raises(input_health.InputHealthError, match=r": no row is left to use$"):
        input_health.check_quarantined("join_hours", "impressions", {"wrong_type": 10}, 10,
                                       s, IMPRESSIONS, 0.1, "/q")
    # duplicates alone lose nothing: a plain line, whatever the limit
    dups = {"duplicate_impression_id": 300}
    assert input_health.check_quarantined("join_hours", "impressions", dups, 1000, s,
                                          IMPRESSIONS, 0.0, "/q") == 0.0
    assert capsys.readouterr().out.startswith("join_hours: 300 of 1,000 impressions")
    # impressions without a user id (real bid logs hold many) are said, not held against it
    no_id = _summary(("null_required", "user_id", 400, []),
                     ("null_required", "country", 50, []))
    assert input_health.check_quarantined("join_hours", "impressions", {"null_required": 450},
                                          1000, no_id, IMPRESSIONS, 0.1, "/q") == 0.05
    assert "null_required user_id 400" in capsys.readouterr().out
    # in labels a null user_id is the producer's: held against it
    with pytest.raises(input_health.InputHealthError, match=r"\(45.0% lost, duplicates aside\)"):
        input_health.check_quarantined("prepare_labels", "label rows", {"null_required": 450},
                                       1000, no_id, LABELS, 0.1, "/q")
    # nothing quarantined: nothing said
    assert input_health.check_quarantined("join_hours", "impressions", {"wrong_type": 0}, 10,
                                          s, IMPRESSIONS, 0.0, "/q") == 0.0
    assert capsys.readouterr().out == ""


def test_no_labels_error_says_what_became_of_every_row():
    counts = {"rows_in": 1100, "quarantined": {"out_of_domain": 1000, "wrong_type": 0},
              "rejected": {"impossible_age": 40, "incomplete_label": 0},
              "not_chosen_provider": 60, "users": 0}
    s = _summary(("out_of_domain", "gender", 1000, [["female", 600], ["male", 400]]))
    err = label_health.no_labels_error(counts, s, LABELS, {"US": "acme"}, "/q/labels",
                                       ["Acme"])
    text = str(err)
    assert text.startswith("prepare_labels: no usable label in 1,100 label rows: 1,000 "
                           "quarantined (out_of_domain gender 1,000 ('female' 600, 'male' 400;")
    assert "40 rejected (impossible_age 40)" in text
    assert "60 from a provider not chosen for the row's country (chosen: US=acme; labels " \
           "from: Acme;" in text
    assert "\n" not in text
    empty = label_health.no_labels_error({"rows_in": 0}, {}, LABELS, {}, "/q")
    assert "the labels folder holds no row" in str(empty)


def _ids_table(path, ids, **extra):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pd.DataFrame({"user_id": ids, **extra}).to_parquet(path)  # pandas: its index is stored


def test_key_diagnosis_describes_both_sides_and_the_transform_that_meets(tmp_path):
    labels = str(tmp_path / "labels")
    _ids_table(labels + "/part-0.parquet", [f"U{i:08d}" for i in range(50)])
    text = label_health.key_diagnosis([f"u{i:08d}" for i in range(40, 90)], labels)
    assert "impressions' user_id e.g. 'u00000040', 'u00000041' (9 characters: digits, " \
           "lower-case letters)" in text
    assert "labels' e.g. 'U00000000', 'U00000001' (9 characters: digits, upper-case " \
           "letters)" in text
    assert text.endswith("they meet once both are lower-cased or upper-cased")
    import hashlib
    hashed = str(tmp_path / "hashed")
    _ids_table(hashed + "/part-0.parquet",
               [hashlib.sha256(f"u{i}".encode()).hexdigest() for i in range(20)])
    text = label_health.key_diagnosis([f"u{i}" for i in range(20)], hashed)
    assert "(64 hex characters: a SHA-256 hash?)" in text and "meet" not in text
    spaced = str(tmp_path / "spaced")
    _ids_table(spaced + "/part-0.parquet", [f"u{i} " for i in range(20)])
    text = label_health.key_diagnosis([f"u{i}" for i in range(20)], spaced)
    assert "leading/trailing spaces" in text and text.endswith("both are trimmed")


def test_check_labelled_stops_on_none_warns_below_one_percent(tmp_path, capsys):
    labels, ids = str(tmp_path / "labels"), str(tmp_path / "ids")
    _ids_table(labels + "/part-0.parquet", ["A1", "A2"])
    _ids_table(ids + "/part-0.parquet", ["a1", "a2", "a3"],
               outcome=["unlabelled", "written", "unlabelled"])
    args = (ids, labels, "user_id", "outcome", "unlabelled")
    with pytest.raises(input_health.InputHealthError, match=r"^join_hours: none of the "
                       r"window's 500 valid impressions has a label: impressions' user_id "
                       r"e.g. 'a1', 'a3' .*they meet once both are lower-cased or "
                       r"upper-cased. Fix: key"):
        label_health.check_labelled("join_hours", 0, 500, *args)
    label_health.check_labelled("join_hours", 4, 996, *args)
    assert capsys.readouterr().out.startswith(
        "warning: join_hours: only 4 of the window's 1,000 valid impressions (0.40%) have a "
        "label: impressions' user_id e.g. 'a1', 'a3'")
    label_health.check_labelled("join_hours", 10, 990, *args)
    label_health.check_labelled("join_hours", 0, 0, *args)
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------- the steps, as a user meets them

def _source(tmp_path, n_users=60):
    root = str(tmp_path / "bidlogs")
    sample.write_sample_source(root, DAY, n_users=n_users, seed=5)
    return root


def _rewrite_with_pandas(root: str, table: str, change) -> None:
    """Each Parquet file of ``table`` read and written back by pandas (``to_parquet``, its
    defaults: the index stored, ns timestamps) after ``change(frame)``."""
    for folder, _, files in os.walk(os.path.join(root, table)):
        for name in files:
            if name.endswith(".parquet"):
                path = os.path.join(folder, name)
                frame = pq.read_table(path, partitioning=None).to_pandas()
                change(frame)
                frame.to_parquet(path)


def _params(root, tmp_path, **values):
    return RunParams.build({"source": root, "models": "gbdt", "regions": "global",
                            "provider_overrides": "", "data_root": str(tmp_path / "data"),
                            **values})


def _etl(root, params, paths):
    """select_providers, prepare_labels and every etl_hour task, as the flow runs them."""
    from pythia import etl
    _, mapping, _ = providers.choose(root, params, paths)
    labels = providers.run(root, mapping, params, paths)
    window = Window(DAY).as_dict()
    return etl, [etl.run_hours(root, hours, window, labels, params, paths)
                 for hours in params.hour_groups]


def test_a_producers_device_type_stops_join_hours_naming_it(tmp_path, capsys):
    root = _source(tmp_path)

    def phone(frame):  # a producer's vocabulary, as a pandas categorical
        frame["device_type"] = pd.Categorical(frame["device_type"].replace(
            {"mobile": "Phone", "desktop": "PC"}))
    _rewrite_with_pandas(root, "impressions", phone)
    params = _params(root, tmp_path)
    paths = RunPaths(params.data_root, "Health", "1")
    etl, manifests = _etl(root, params, paths)
    with pytest.raises(input_health.InputHealthError) as err:
        etl.join_hours(manifests, params, paths)
    text = str(err.value)
    assert text.startswith("join_hours: ") and "\n" not in text
    assert "out_of_domain device_type" in text and "'Phone'" in text and "'PC'" in text
    assert "allowed: mobile, tablet, desktop, ctv" in text
    assert f"rows under {paths.quarantine}" in text and "--max_quarantined 0." in text
    # the user's choice: go on with the rest, and the artifact says what was set aside
    params = _params(root, tmp_path, max_quarantined=1.0)
    split, recon, _, quarantine = etl.join_hours(manifests, params, paths)
    assert bool(recon["balanced"].all())
    top = quarantine["summary"]["entries"][0]
    assert (top["reason"], top["column"]) == ("out_of_domain", "device_type")
    assert {v for v, _ in top["values"]} == {"Phone", "PC"}
    assert top["rows"] == quarantine["by_reason"]["out_of_domain"]
    assert "warning: join_hours: " in capsys.readouterr().out


def test_labels_keyed_by_another_id_stop_join_hours_saying_how_they_differ(tmp_path):
    root = _source(tmp_path)

    def upper(frame):
        frame["user_id"] = frame["user_id"].str.upper()
    _rewrite_with_pandas(root, "labels", upper)
    params = _params(root, tmp_path)
    paths = RunPaths(params.data_root, "Health", "1")
    etl, manifests = _etl(root, params, paths)
    with pytest.raises(input_health.InputHealthError,
                       match=r"^join_hours: none of the window's [\d,]+ valid impressions has a "
                             r"label: impressions' user_id e.g. 'u000\d\d'.* labels' e.g. "
                             r"'U000\d\d'.*they meet once both are lower-cased or upper-cased"):
        etl.join_hours(manifests, params, paths)


def test_labels_of_another_vocabulary_stop_prepare_labels_naming_it(tmp_path):
    root = _source(tmp_path)

    def words(frame):
        frame["gender"] = frame["gender"].map({"F": "female", "M": "male"})
    _rewrite_with_pandas(root, "labels", words)
    params = _params(root, tmp_path)
    paths = RunPaths(params.data_root, "Health", "1")
    _, mapping, _ = providers.choose(root, params, paths)
    with pytest.raises(input_health.InputHealthError) as err:
        providers.run(root, mapping, params, paths)
    text = str(err.value)
    assert text.startswith("prepare_labels: no usable label in ")
    assert "out_of_domain gender" in text and "'female' -> 'F'?" in text


def test_some_bad_labels_go_on_with_a_line_or_stop_above_the_limit(tmp_path, capsys):
    root = _source(tmp_path)

    def some(frame):  # a third of one provider's rows with a word for a gender
        frame.loc[frame.index % 3 == 0, "gender"] = "unknown"
    _rewrite_with_pandas(root, os.path.join("labels", "provider=acme"), some)
    paths = RunPaths(str(tmp_path / "data"), "Health", "1")
    _, mapping, _ = providers.choose(root, _params(root, tmp_path), paths)
    with pytest.raises(input_health.InputHealthError, match=r"^prepare_labels: \d+ of \d+ "
                       r"label rows quarantined .*out_of_domain gender \d+ \('unknown' \d+; "
                       r"allowed: F, M, U, O \('unknown' -> 'U'\?\)\).*max_quarantined 0.1 "
                       r"of the label rows"):
        providers.run(root, mapping, _params(root, tmp_path), paths)
    manifest = providers.run(root, mapping, _params(root, tmp_path, max_quarantined=0.5),
                             paths)
    assert manifest["counts"]["users"] > 0
    entry = manifest["quarantine_summary"]["entries"][0]
    assert entry["values"][0][0] == "unknown"
    assert entry["rows"] == manifest["counts"]["quarantined"][contract.OUT_OF_DOMAIN]
    assert "warning: prepare_labels: " in capsys.readouterr().out


def test_max_quarantined_is_a_share():
    with pytest.raises(ValueError, match="max_quarantined must lie in"):
        RunParams.build({"models": "gbdt", "max_quarantined": 1.5})
    assert RunParams.build({"models": "gbdt"}).etl.max_quarantined == 0.1


def test_report_lines_say_what_a_finished_run_set_aside():
    s = _summary(("out_of_domain", "device_type", 60, [["phone", 60]]),
                 ("duplicate_impression_id", "impression_id", 40, []))
    quarantine = {"by_reason": {"out_of_domain": 60, "duplicate_impression_id": 40},
                  "rows_in": 1000, "summary": s,
                  "partitions": [{"folder": "impressions/date=2025-06-30/hour=24"}],
                  "partition_rows": 7}
    labels = {"counts": {"rows_in": 50, "quarantined": {"wrong_type": 5}},
              "quarantine_summary": _summary(("wrong_type", "age", 5, [["forty", 5]]))}
    assert input_health.report_lines(quarantine, labels) == [
        "input: 5 of 50 label rows quarantined (10.0% lost, duplicates aside): wrong_type age "
        "5 ('forty' 5; not of type int32)",
        "input: 100 of 1,000 impressions quarantined (6.0% lost, duplicates and rows without "
        "a user_id aside): out_of_domain device_type 60 ('phone' 60; allowed: mobile, tablet, "
        "desktop, ctv); duplicate_impression_id impression_id 40",
        "input: 1 impression folder(s) not read (names that do not parse; 7 rows): "
        "impressions/date=2025-06-30/hour=24"]
    # a clean input, and a run from before the record: nothing; counts alone: the counts
    clean = {"by_reason": {"out_of_domain": 0}, "partitions": []}
    assert input_health.report_lines(clean, {"counts": {"quarantined": {}}}) == []
    assert input_health.report_lines(None, None) == []
    assert input_health.report_lines({"by_reason": {"wrong_type": 3}}, None) == [
        "input: 3 impressions quarantined: wrong_type 3"]
    # rejected label rows and old bucket-only labels, as prepare_labels warned of them
    said = {"counts": {"rows_in": 200, "quarantined": {}, "rejected": {"incomplete_label": 40}},
            "rejected_text": "incomplete_label 40 (no gender 40; from acme 40): a label …",
            "label_age": {"as_of": "2026-11-20", "labels": 100, "aged": 3, "max_years": 2,
                          "stale_buckets": 30}}
    assert input_health.report_lines(None, said) == [
        "input: 40 of 200 label rows rejected (20.0%): incomplete_label 40 (no gender 40; "
        "from acme 40): a label …",
        "input: 30 of 100 labels (30%) are age buckets observed a year or more from the test "
        "day 2026-11-20: a bucket cannot be moved as an age can, so some of these users are "
        "in an older bucket now (ask the provider for ages, or for fresher labels)"]
    quiet = {**said, "counts": {**said["counts"], "rejected": {"incomplete_label": 2}},
             "label_age": {**said["label_age"], "stale_buckets": 5}}
    assert input_health.report_lines(None, quiet) == []  # 1% rejected, 5% stale: no line


def test_a_source_without_provider_metrics_runs_on_its_one_provider_or_says_why_not(
        tmp_path, capsys):
    """A user with one label provider and no provider_metrics table: nothing to choose, so the
    run uses it (with a warning); with several, one line names them and the fix."""
    import shutil
    root = _source(tmp_path)  # providers acme and lucid
    shutil.rmtree(os.path.join(root, "provider_metrics"))
    params = _params(root, tmp_path)
    paths = RunPaths(params.data_root, "Health", "1")
    with pytest.raises(ValueError, match=r"^select_providers: no provider_metrics files under "
                       r".*/provider_metrics and labels/ holds 2 providers \(acme, lucid\): "
                       r"write the provider_metrics table"):
        providers.choose(root, params, paths)
    shutil.rmtree(os.path.join(root, "labels", "provider=lucid"))
    choice, mapping, warns = providers.choose(root, _params(root, tmp_path,
                                                            provider_overrides="US=lucid"),
                                              paths)
    assert mapping["default"] == "acme" and mapping["by_country"] == {} and choice.empty
    assert warns[0] == f"no provider_metrics under {root}: the labels' one provider, acme, " \
                       "labels every country"
    assert any("US=lucid skipped" in w for w in warns)
    manifest = providers.run(root, mapping, params, paths)
    assert manifest["counts"]["users"] > 0 and manifest["counts"]["not_chosen_provider"] == 0
    assert "warning: no provider_metrics under" in capsys.readouterr().out


def test_country_codes_no_map_knows_are_said_once_the_vocabulary_is_fitted(tmp_path, capsys):
    """'UK' (the UK's own code for GB) passes the contract's pattern, so nothing quarantines
    it; its rows would be region OTHER with UTC local time, silently. to_tfrecords says so."""
    assert input_health.unknown_countries(["US", "GB", "XK", None, ""]) is None
    assert input_health.unknown_countries(["US", "UK", "EL", "QQ"]) == (
        "3 country code(s) of the train rows are no ISO-3166-1 code: 'EL', 'QQ', 'UK' ('EL' "
        "-> 'GR'?, 'UK' -> 'GB'?); their rows are region OTHER, scored by the global model, "
        "with local time in UTC: fix the producer's codes")
    from pythia import tfrecords
    root = str(tmp_path / "bidlogs")
    sample.write_sample_source(root, DAY, n_users=40, countries=("US", "UK", "DE"), seed=2)
    params = _params(root, tmp_path)
    paths = RunPaths(params.data_root, "Health", "1")
    etl, manifests = _etl(root, params, paths)
    split, _, _, _ = etl.join_hours(manifests, params, paths)
    _, encoders = tfrecords.convert(split, params, paths)
    assert input_health.country_line(encoders).startswith(
        "warning: to_tfrecords: 1 country code(s) of the train rows are no ISO-3166-1 code: "
        "'UK' ('UK' -> 'GB'?)")
    assert input_health.country_line({"vocabularies": {"country": ["US"]}}) is None


def test_start_stops_on_a_required_column_no_sampled_file_has(tmp_path, capsys):
    """A producer's own column names, found from a few footers before any ETL: pandas-written
    impressions with ``event_time``, labels with ``userId``; ``User_ID`` is ``user_id`` (names
    match case-blind, as in Spark and Hive), and ``user_id`` beside ``USER_ID`` is a clash."""
    from pythia import column_check, source as run_source
    root = _source(tmp_path)
    clean = column_check.sampled_files(root, Window(DAY).dates)
    assert len(clean["impressions"]) == 5 and len(clean["labels"]) == 2  # a date, a provider
    assert column_check.check_required_columns(clean) == []

    def renamed(frame):
        frame.rename(columns={"ts": "event_time"}, inplace=True)
    _rewrite_with_pandas(root, os.path.join("impressions", f"date={DAY}"), renamed)
    warned = column_check.check_required_columns(column_check.sampled_files(
        root, Window(DAY).dates))
    assert len(warned) == 1 and warned[0].startswith(
        "1 of 5 sampled impressions files lack the required column ts (their rows will be "
        f"quarantined), e.g. {root}/impressions/date={DAY}/hour=00/")
    assert "it has event_time, which the contract does not know" in warned[0]
    for day in Window(DAY).dates:
        _rewrite_with_pandas(root, os.path.join("impressions", f"date={day}"), renamed)
    params = _params(root, tmp_path, date=DAY.isoformat())
    with pytest.raises(input_health.InputHealthError,
                       match=r"^start: no sampled impressions file \(5: the first of each date\) "
                             r"has the required column ts, e\.g\. .*: it has event_time, which "
                             r"the contract does not know \(a rename\?\)\. Every row would be "
                             r"quarantined after the whole ETL"):
        run_source.resolve(params)

    def cased(frame):
        frame.rename(columns={"user_id": "User_ID", "gender": "Gender", "age": "AGE",
                              "age_bucket": "Age_Bucket"}, inplace=True)
    _rewrite_with_pandas(root, "labels", cased)
    labels = column_check.sampled_files(root, Window(DAY).dates)["labels"]
    assert column_check.check_required_columns({"labels": labels}) == []

    _rewrite_with_pandas(root, "labels", lambda f: f.rename(columns={"User_ID": "userId"},
                                                            inplace=True))
    with pytest.raises(input_health.InputHealthError) as err:
        column_check.check_required_columns({"labels": labels})
    assert "the required column user_id" in str(err.value)
    assert "it has userId, which the contract does not know" in str(err.value)

    def twice(frame):
        frame["user_id"] = frame["userId"]
        frame.rename(columns={"userId": "USER_ID"}, inplace=True)
    _rewrite_with_pandas(root, "labels", twice)
    with pytest.raises(ValueError, match=r"^/.*/labels/provider=.*: columns 'USER_ID', "
                                         r"'user_id' all name the contract column user_id"):
        column_check.check_required_columns({"labels": labels})
    _rewrite_with_pandas(root, "labels", lambda f: f.drop(columns=["USER_ID"], inplace=True))

    checked = {"labels": labels[:1]}
    _rewrite_with_pandas(root, "labels", lambda f: f.rename(
        columns={"Gender": "sex", "AGE": "years", "Age_Bucket": "bucket"}, inplace=True))
    with pytest.raises(input_health.InputHealthError,
                       match="has the required column gender/age/yob/age_bucket"):
        column_check.check_required_columns(checked)


def test_countries_with_impressions_and_no_label_are_said_and_kept_in_the_record(
        tmp_path, capsys):
    """A user's multi-country bid logs with labels for some countries only: the countries
    that hold many impressions and no label are named in join_hours and in the record."""
    root = _source(tmp_path, n_users=80)
    _rewrite_with_pandas(root, "labels", lambda f: f.drop(
        f.index[f["country"] == "DE"], inplace=True))
    params = _params(root, tmp_path)
    paths = RunPaths(params.data_root, "Health", "1")
    etl, manifests = _etl(root, params, paths)
    coverage = label_health.label_coverage(manifests)
    assert set(coverage) == {"DE", "GB", "JP", "US"} and coverage["DE"][0] == 0
    assert all(coverage[c][0] > 0 for c in ("GB", "JP", "US"))
    total = sum(sum(v) for v in coverage.values())
    capsys.readouterr()
    _, _, _, quarantine = etl.join_hours(manifests, params, paths)
    printed = [ln for ln in capsys.readouterr().out.splitlines() if "(almost) no label" in ln]
    share = sum(coverage["DE"]) / total
    assert printed == [f"warning: join_hours: 1 country(ies) hold {share:.1%} of the window's "
                       f"{total:,} valid impressions with (almost) no label: DE ({share:.1%} "
                       "of them, none labelled). No model trains on or is judged by their "
                       "users, yet the bundle scores them: find a label provider for them (a "
                       "label counts when it comes from the provider chosen for its row's "
                       "country: the run's provider_choice)"]
    assert quarantine["label_coverage"] == coverage
    assert input_health.report_lines(quarantine, None) == [
        "input: " + printed[0].removeprefix("warning: join_hours: ")]


def test_coverage_text_names_the_big_thin_countries_only():
    cov = {"US": [500, 400], "DE": [0, 60], "FR": [1, 199], "IT": [0, 5], "ES": [30, 30]}
    text = label_health.coverage_text(cov)
    assert text.startswith("2 country(ies) hold 21.2% of the window's 1,225 valid impressions "
                           "with (almost) no label: FR (16.3% of them, 0.50% labelled), DE "
                           "(4.9% of them, none labelled). ")  # IT: under 1% of impressions
    assert label_health.coverage_text({"US": [5, 995], "DE": [0, 100]}) is None  # all thin
    assert label_health.coverage_text({"US": [500, 500]}) is None
    assert label_health.coverage_text({}) is None
    many = {f"C{i}": [0, 10] for i in range(10)} | {"US": [900, 0]}
    assert label_health.coverage_text(many).count("labelled)") == 8 and " and 2 more." in \
        label_health.coverage_text(many)
