"""DemoFlow on a disk that fills up: the failed step says so in one line naming the data root
and its free space, removes its task's partial output, and ``resume`` finishes the run once
there is room. The data root is a real small tmpfs (``mount`` needs root and CAP_SYS_ADMIN;
without them the tests skip and say why); the datastore stays on the normal disk."""
import io
import re
import subprocess
from pathlib import Path

import pytest

from pythia.disk_full import task_outputs
from pythia.paths import RunPaths

from flow_fixtures import flow_env, mount_tmpfs, umount_tmpfs  # noqa: F401  (fixture)
from flow_fixtures import runner as _runner

pytestmark = [pytest.mark.slow, pytest.mark.spark]

ONE_LINE = re.compile(r"etl_hour: no space left on the disk writing to (.*?); "
                      r"removed this task's partial output \(([^)]*)\)\. "
                      r"Fix: (.*), then `python \S*demo_flow\.py resume etl_hour`")


def _mount(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (the tiny world's labels fit, its etl_hour output does not)."""
    disk = mount_tmpfs(tmp_path / "disk", "1m")
    yield disk
    umount_tmpfs(disk)


def _removed(text: str) -> list[str]:
    """The paths of the line's 'removed …' part: '1.2 KB: /a' or '1.2 KB under /b: c, d'."""
    size_and_base, _, names = text.partition(": ")
    base = size_and_base.split(" under ")[1] if " under " in size_and_base else ""
    return [str(Path(base, n)) if base else n for n in names.split(", ")]


def _failed_lines(run) -> list[str]:
    failed = [t for t in run["etl_hour"].tasks() if not t.successful]
    assert failed, "no etl_hour task failed: the disk was not full"
    lines = [ln for t in failed for ln in t.stderr.splitlines() if ONE_LINE.search(ln)]
    assert lines, ("no one-line disk-full error in the failed etl_hour tasks' stderr: "
                   + " | ".join(t.stderr[-1500:] for t in failed))
    return lines


def _fails_in_one_line(env):
    """Run the tiny world onto the small disk: it fails in etl_hour, each failed task says so
    in one line, and the paths that line names as removed are gone. Returns the run and each
    line's (where, fix)."""
    with _runner(env) as runner:
        failed = runner.run(source="synthetic://tiny", models="logreg", regions="global").run
    assert not failed.successful
    said = []
    for line in _failed_lines(failed):
        where, removed, fix = ONE_LINE.search(line).groups()
        for path in _removed(removed):  # the task's partial output is gone
            assert re.search(f"/{failed.id}/(etl|quarantine/impressions)/hours=", path)
            assert not Path(path).exists()
        said.append((where, fix))
    return failed, said


def test_a_full_data_root_stops_in_one_line_and_resume_finishes(flow_env, small_disk):
    _, env = flow_env
    env = {**env, "PYTHIA_DATA_ROOT": str(small_disk / "data")}
    failed, said = _fails_in_one_line(env)
    for where, fix in said:
        assert where.startswith(f"the data root {small_disk / 'data'} (")
        assert " free of 1.0 MB now" in where
        assert "--data_root on a larger disk" in fix
    _mount(["mount", "-o", "remount,size=64m", str(small_disk)])  # the user makes room
    with _runner(env) as runner:
        resumed = runner.resume(origin_run_id=failed.id).run
    assert resumed.successful
    assert Path(resumed.data.bundle_path, "bundle.json").exists()
    # `pythia clean` keeps the failed origin: the resumed run's cloned steps read its files
    from pythia.clean import run_clean
    out = io.StringIO()
    assert run_clean(str(small_disk / "data"), keep=1, yes=True, out=out) == 0
    plan = out.getvalue()
    assert re.search(f"^keep +{failed.id} failed ", plan, re.M)
    assert f"run {resumed.id}, kept, was resumed from it and reads its files" in plan
    assert "removed 0 run folder(s)" in plan
    assert (small_disk / "data" / "DemoFlow" / failed.id).is_dir()
    # every file either run wrote belongs to exactly one task's outputs (what a full disk
    # removes): no other task's file is ever removed, and nothing is left unowned
    root = str(small_disk / "data")
    for run in (failed, resumed):
        paths = RunPaths(root, "DemoFlow", run.id)
        outputs = [p for s in ("select_providers", "prepare_labels", "join_hours",
                               "to_tfrecords", "evaluate", "end")
                   for p in task_outputs(s, paths)]
        outputs += [p for hours in resumed["start"].task.data.hour_groups
                    for p in task_outputs("etl_hour", paths, hours=hours)]
        outputs += [p for family in resumed["to_tfrecords"].task.data.train_families
                    for p in task_outputs("train", paths, family=family)]
        files = [f for f in Path(paths.base).rglob("*") if f.is_file()]
        assert files
        for f in files:
            owners = [o for o in outputs if str(f) == o or str(f).startswith(o + "/")]
            assert len(owners) == 1, f"{f} is in {len(owners)} task outputs: {owners}"


def test_spark_on_a_full_data_root_names_the_file_it_was_writing(flow_env, small_disk):
    _, env = flow_env
    # Spark forced; one etl task (one Spark start-up instead of four)
    env = {**env, "PYTHIA_DATA_ROOT": str(small_disk / "data"), "PYTHIA_DRIVER_MAX_ROWS": "0",
           "PYTHIA_HOURS_PER_TASK": "24"}
    failed, said = _fails_in_one_line(env)
    for where, _ in said:  # Spark names the file of its failed write, under the task's folder
        assert where.startswith(f"{small_disk / 'data'}/DemoFlow/{failed.id}/etl/hours=")
