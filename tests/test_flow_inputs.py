"""Flow tests on inputs other than the tiny world: an unreadable file in one hour and
``resume``, a hand-written source with bad rows of every kind, and the skewed world with
default parameters (issue 13). Each runs DemoFlow through metaflow.Runner in a private
datastore.
"""
import json
import shutil
from pathlib import Path

import pytest

from flow_fixtures import REPO, flow_env, runner as _runner  # noqa: F401,F811  (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.spark]


def _checkout(folder: Path) -> Path:
    """A copy of the flow and the library, laid out as in the repository (``flows/pythia``
    a symlink to ``../pythia``): code a test may edit. Returns the flow file."""
    shutil.copytree(REPO / "pythia", folder / "pythia",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "flows").mkdir()
    for name in ("demo_flow.py", "pythia.toml"):
        shutil.copy(REPO / "flows" / name, folder / "flows" / name)
    (folder / "flows" / "pythia").symlink_to(folder / "pythia", target_is_directory=True)
    return folder / "flows" / "demo_flow.py"


def test_resume_reruns_only_the_failed_hours(flow_env, tmp_path, capsys):
    """An unreadable file in one hour group stops its etl task; once the file is repaired
    (and the code edited, as a fix would), resume clones the groups that had finished and
    reruns only the failed one; `pythia report` says the run mixes two versions of the code."""
    from metaflow import Runner

    from pythia import stack
    from pythia.cli import main
    from pythia.synth import run_synth_cli
    _, env = flow_env
    root = tmp_path / "world"
    assert run_synth_cli("tiny", str(root), 0) == 0
    day = sorted(p.name for p in (root / "impressions").iterdir())[-1]
    broken = root / "impressions" / day / "hour=19" / "part-broken.parquet"
    broken.write_bytes(b"this is not parquet")
    args = dict(source=str(root), models="gbdt", regions="global", max_epochs=1)
    flow = _checkout(tmp_path / "checkout")

    def runner():
        return Runner(str(flow), show_output=False, env=env,
                      cwd=env["METAFLOW_DATASTORE_SYSROOT_LOCAL"])

    with runner() as r:
        result = r.run(**args)
    failed = result.run
    assert not failed.successful
    broken_task = [t for t in failed["etl_hour"].tasks() if not t.successful]
    assert broken_task and "part-broken.parquet" in broken_task[0].stderr  # names the file
    finished = {tuple(t.data.hours): t for t in failed["etl_hour"].tasks() if t.successful}
    assert finished and (18, 19, 20, 21, 22, 23) not in finished
    broken.unlink()  # the user repairs the input, and edits the code
    before = stack.code_version(flow.parent.parent / "pythia")
    with open(flow.parent.parent / "pythia" / "__init__.py", "a") as f:
        f.write("# a fix\n")
    after = stack.code_version(flow.parent.parent / "pythia")
    assert None not in (before, after) and before != after
    with runner() as r:
        resumed = r.resume(origin_run_id=failed.id).run
    assert resumed.successful
    # the cloned start step's code, and the re-run train task's, each as it ran
    assert failed["start"].task.data.stack["pythia"] == resumed.data.stack["pythia"] == before
    assert {c["stack"]["pythia"] for c in resumed.data.candidates} == {after}
    capsys.readouterr()
    assert main(["report", resumed.id]) == 0
    assert (f"WARNING: THE START STEP AND THE TRAIN TASKS RAN ON DIFFERENT CODE: pythia "
            f"{before} -> {after} (a resume after the code changed") in capsys.readouterr().out
    tasks = list(resumed["etl_hour"].tasks())
    assert sorted(tuple(t.data.hours) for t in tasks) == [tuple(range(h, h + 6))
                                                          for h in (0, 6, 12, 18)]
    cloned = {tuple(t.data.hours): t for t in tasks if "origin-task-id" in t.metadata_dict}
    rerun = {tuple(t.data.hours) for t in tasks if "origin-task-id" not in t.metadata_dict}
    assert set(cloned) == set(finished)  # every finished hour group was cloned, none redone
    assert (18, 19, 20, 21, 22, 23) in rerun
    for hours, task in cloned.items():
        assert task.metadata_dict["origin-task-id"] == finished[hours].id
        # the clone's files live under the origin run, and downstream steps read them there
        assert f"/{failed.id}/" in json.dumps(task.data.manifest)
    assert resumed.data.metrics is not None
    assert bool(resumed.data.reconciliation["balanced"].all())


def test_hand_written_source_with_bad_rows_of_every_kind(flow_env, tmp_path):
    """A folder written by hand in the contract layout runs; bad rows are quarantined, counted."""
    import datetime as dt

    import pyarrow as pa

    from pythia.etl import sample
    _, env = flow_env
    day = dt.date(2025, 6, 30)
    root = str(tmp_path / "bidlogs")
    sample.write_sample_source(root, day, n_users=80, providers=("acme", "lucid"), seed=3)
    imp = sample.impression
    bad = [imp("no-user", None, sample.at(day, 3, 5)),
           imp("fridge", "u00001", sample.at(day, 3, 5), device_type="fridge"),
           imp("late", "u00001", sample.at(day, 5, 0)),
           imp("dup", "u00001", sample.at(day, 3, 30)),
           imp("dup", "u00001", sample.at(day, 3, 20))]
    sample.write_impressions(root, day, 3, bad, name="part-bad.parquet")
    label_schema = pa.schema([("user_id", pa.string()), ("gender", pa.string()),
                              ("age", pa.string()), ("country", pa.string()),
                              ("observed_date", pa.date32())])
    sample.write_labels(root, "acme", [{"user_id": "u00002", "gender": "F", "age": "forty",
                                        "country": "GB", "observed_date": day}],
                        name="part-bad.parquet", schema=label_schema)
    with _runner(env) as runner:
        result = runner.run(source=root, models="gbdt", regions="global", max_epochs=1,
                            provider_overrides="")
    run = result.run
    assert run.successful, result.stderr[-4000:]
    data = run.data
    assert data.window["test"] == [day.isoformat()]
    by_reason = data.quarantine["by_reason"]
    assert by_reason["null_required"] >= 1 and by_reason["out_of_domain"] >= 1
    assert by_reason["bad_timestamp"] >= 1 and by_reason["duplicate_impression_id"] >= 1
    assert data.labels_manifest["counts"]["quarantined"]["wrong_type"] == 1
    assert Path(data.quarantine["path"]).exists()
    recon = data.reconciliation
    assert bool(recon["balanced"].all())


def test_skewed_world_runs_with_default_parameters(flow_env):
    """The hard case of issue 13: 40 countries, a small skewed label set, a provider set without
    the seed's `lucid` (the default override is skipped with a warning). The champion must beat
    every baseline on the natural test day, or the run must say loudly that it does not and
    export no new model for that slot."""
    _, env = flow_env
    with _runner(env) as runner:
        result = runner.run(source="synthetic://skewed", regions="global",
                            models="mlp,logreg,gbdt")
    run = result.run
    assert run.successful, result.stderr[-4000:]
    data = run.data
    assert any("US=lucid skipped" in w for w in data.provider_warnings)
    assert data.split_manifest["resample"] == "natural"  # auto keeps the small label set
    champ = data.champions.set_index("region").loc["global"]
    metrics = data.metrics
    natural = metrics[(metrics["test_set"] == "natural") & (metrics["label_source"] == "provider")
                      & (metrics["metric"] == "log_loss") & (metrics["target"] == "age_gender")
                      & (metrics["eval_region"] == "global") & (metrics["region"] == "global")]
    by_model = natural.groupby("model")["value"].min()
    if champ["blessed"]:
        assert champ["model"] not in ("class_prior", "logreg")
        for baseline in ("class_prior", "logreg"):
            assert by_model[champ["model"]] < by_model[baseline], by_model.to_dict()
    else:  # loudly: the reason names the baselines, the bundle is not a new champion
        assert "baseline" in champ["reason"] or "prior" in champ["reason"]


def test_a_producers_vocabulary_stops_the_run_in_one_line_until_the_user_says_go_on(
        flow_env, tmp_path):
    """A user's first run: the tiny world as a producer writes it (read and written back by
    pandas) with its own word for mobile devices. Before, the run went on with the 37% of rows
    left, nothing blessed, no line said why. Now join_hours stops, naming the column, the
    values and the fix; resumed with a max_quarantined tag (the ETL kept), or rerun with
    --max_quarantined, the run goes on, the quarantine artifact says
    what was set aside, and the rows reconcile."""
    import pyarrow.parquet as pq

    from pythia.synth.generate import generate_world
    _, env = flow_env
    root = tmp_path / "bidlogs"
    generate_world(str(root), "tiny", seed=0)
    for path in (root / "impressions").rglob("*.parquet"):
        frame = pq.read_table(path, partitioning=None).to_pandas()
        frame["device_type"] = frame["device_type"].replace({"mobile": "smartphone"})
        frame["country"] = frame["country"].replace({"GB": "UK"})  # the UK's own code
        frame.to_parquet(path)  # pandas' defaults: ns timestamps, the index stored
    with _runner(env) as runner:
        failed = runner.run(source=str(root), models="logreg", regions="global",
                            max_epochs=1)
        assert not failed.run.successful
        task_err = failed.run["join_hours"].task.stderr
        (line,) = [ln for ln in task_err.splitlines() if "InputHealthError: " in ln]
        message = line.split("InputHealthError: ", 1)[1]
        assert message.startswith("join_hours: ")
        assert "out_of_domain device_type" in message and "'smartphone'" in message
        assert "allowed: mobile, tablet, desktop, ctv" in message
        assert "--max_quarantined 0." in message
        share = float(message.split("--max_quarantined ")[1].split()[0])
        # going on by resuming: the finished ETL is kept, the tag records the choice
        tag = f"max_quarantined:{share:g}"
        assert message.endswith(f"resume --origin-run-id {failed.run.id} --tag {tag}`")
        resumed = runner.resume(origin_run_id=failed.run.id, tags=[tag]).run
        assert resumed.successful
        etl_tasks = list(resumed["etl_hour"].tasks())
        assert etl_tasks and all("origin-task-id" in t.metadata_dict for t in etl_tasks)
        assert resumed.data.params.etl.max_quarantined == share
        assert resumed["start"].task.data.params.etl.max_quarantined == 0.1  # the origin's
        assert (f"note: max_quarantined {share:g} from the run's tag {tag} (the parameter says "
                "0.1)") in resumed["join_hours"].task.stdout
        run = runner.run(source=str(root), models="logreg", regions="global", max_epochs=1,
                         max_quarantined=share).run
    assert run.successful, [t.stderr[-3000:] for s in run for t in s if not t.successful]
    q = run.data.quarantine
    top = q["summary"]["entries"][0]
    assert (top["reason"], top["column"]) == ("out_of_domain", "device_type")
    assert top["values"] == [["smartphone", q["by_reason"]["out_of_domain"]]]
    assert run.data.params.etl.max_quarantined == share
    assert bool(run.data.reconciliation["balanced"].all())
    assert "warning: join_hours: " in run["join_hours"].task.stdout
    assert ("warning: to_tfrecords: 1 country code(s) of the train rows are no ISO-3166-1 code: "
            "'UK' ('UK' -> 'GB'?)") in run["to_tfrecords"].task.stdout
    # the end step's summary and `pythia report` say what the run set aside
    said = [ln.strip() for ln in run["end"].task.stdout.splitlines() if "input: " in ln]
    assert said and said[0].startswith("input: ") and "'smartphone'" in said[0]
