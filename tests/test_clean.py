"""`pythia clean`: which run folders go, which stay and why (``pythia.clean``)."""
import pytest

from pythia import clean, cli
from s3_fixtures import moto_s3, s3_env  # noqa: F401  (pytest fixtures)


class _Artifact:
    def __init__(self, data):
        self.data = data


class _Task(dict):
    """A task's artifacts (``_task_ok`` when it finished) and its Metaflow metadata."""

    def __init__(self, ok=None, origin=None):
        super().__init__({} if ok is None else {"_task_ok": _Artifact(ok)})
        self.metadata_dict = {"origin-run-id": str(origin)}  # Metaflow writes "None"


class _Step(list):
    @property
    def task(self):
        return self[0]


class _Run:
    """What ``clean.plan`` reads of a Metaflow Run: id, status (``runs.run_status``: the end
    task, the most recent step's tasks) and the start task's ``origin-run-id``."""

    def __init__(self, run_id, status, origin=None):
        self.id, self.successful = run_id, status == "successful"
        self.end_task = _Task(ok=True) if self.successful else None
        last = _Task(ok=False if status == "failed" else None)
        self.steps = [_Step([last]), _Step([_Task(ok=True, origin=origin)])]  # newest first

    def __iter__(self):
        return iter(self.steps)

    def __getitem__(self, name):
        assert name == "start"
        return self.steps[-1]


RUNS = [_Run("9", "failed"), _Run("8", "successful", origin="6"), _Run("7", "successful"),
        _Run("6", "failed", origin="2"), _Run("5", "successful", origin="3"),
        _Run("4", "running"), _Run("3", "successful"), _Run("2", "failed")]


def _folders(tmp_path, ids=("9", "8", "7", "6", "5", "4", "3", "2", "12345")):
    base = tmp_path / "data" / "DemoFlow"
    for k, run_id in enumerate(ids):
        (base / run_id / "etl").mkdir(parents=True)
        (base / run_id / "etl" / "part-0.parquet").write_bytes(b"x" * (1000 + k))
    return base


def test_the_plan_keeps_what_later_runs_and_resume_read(tmp_path):
    base = _folders(tmp_path)
    entries = clean.plan(clean.run_folders(str(tmp_path / "data"), "DemoFlow"), RUNS, keep=2)
    got = {e.run_id: (e.keep, e.status, e.reason) for e in entries}
    assert got["9"] == (True, "failed", "failed after the newest successful run: `resume` "
                                        "reads it")
    assert got["8"][:2] == (True, "successful") and "newest successful run" in got["8"][2]
    assert got["7"] == (True, "successful", "one of the 2 newest successful runs")
    assert got["6"] == (True, "failed", "run 8, kept, was resumed from it and reads its files")
    assert got["2"] == (True, "failed", "run 6, kept, was resumed from it and reads its files")
    assert got["4"][:2] == (True, "running")  # never removed while it may be writing
    assert got["12345"] == (True, "unknown", "no run of this id in this datastore: left alone")
    # 5 is older than the kept runs; its origin 3 is only needed by 5
    assert {k for k, v in got.items() if not v[0]} == {"5", "3"}
    assert [e.run_id for e in entries][:2] == ["9", "8"]
    assert {e.run_id: e.bytes for e in entries}["5"] == 1004
    assert base.exists()


def test_clean_prints_the_plan_and_removes_only_with_yes(tmp_path, monkeypatch, capsys):
    base = _folders(tmp_path)

    class _Flow:
        def runs(self):
            return iter(RUNS)

    monkeypatch.setattr("pythia.runs.open_flow", lambda name: _Flow())
    root = str(tmp_path / "data")
    assert cli.main(["clean", "--data_root", root, "--keep", "2"]) == 0
    out = capsys.readouterr().out
    assert "would remove 5 successful" in out and "would remove 3 successful" in out
    assert "2 run folder(s), 2.0 KB, would be removed; add --yes" in out
    assert sorted(p.name for p in base.iterdir()) == ["12345", "2", "3", "4", "5", "6", "7",
                                                      "8", "9"]
    assert cli.main(["clean", "--data_root", root, "--keep", "2", "--yes"]) == 0
    out = capsys.readouterr().out
    assert f"removed 2 run folder(s), 2.0 KB, under {base}" in out
    assert sorted(p.name for p in base.iterdir()) == ["12345", "2", "4", "6", "7", "8", "9"]
    # keep=1: the second newest successful run goes too, nothing else
    assert cli.main(["clean", "--data_root", root, "--keep", "1", "--yes"]) == 0
    assert sorted(p.name for p in base.iterdir()) == ["12345", "2", "4", "6", "8", "9"]


def test_refusals_are_one_line(tmp_path, capsys):
    assert cli.main(["clean", "--data_root", str(tmp_path), "--keep", "0"]) == 2
    assert "--keep must be at least 1" in capsys.readouterr().err
    # a data root that cannot be listed (a file where the folder should be)
    (tmp_path / "DemoFlow").write_text("not a folder")
    assert cli.main(["clean", "--data_root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pythia clean: cannot list {tmp_path}/DemoFlow: ") and "\n" not in err
    assert "Fix: check the data root" in err


def test_no_folders_no_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("pythia.runs.open_flow", lambda name: None)
    assert clean.run_clean(str(tmp_path), keep=3, yes=True) == 0
    assert "nothing to clean: no run folders under" in capsys.readouterr().out


@pytest.mark.parametrize("value", [None, "None", ""])
def test_a_run_not_resumed_has_no_origin(value):
    run = _Run("1", "successful")
    run.steps[-1][0].metadata_dict["origin-run-id"] = value
    assert clean.resumed_from(run) is None


def test_an_s3_data_root_is_cleaned_by_the_same_rules(moto_s3, s3_env, monkeypatch, capsys):
    """Run folders on a real S3 endpoint (moto): the same plan as on disk; --yes deletes every
    object of the folders it marks and nothing else (not the neighbouring flow's prefix)."""
    import uuid

    from pythia import storage

    # moto keeps one store per process: other modules' S3 tests may have written to this
    # bucket, so this test owns a fresh prefix (the data root, through PYTHIA_DATA_ROOT)
    prefix = f"clean-{uuid.uuid4().hex[:8]}"
    root = f"s3://{moto_s3.bucket}/{prefix}"
    monkeypatch.setenv("PYTHIA_DATA_ROOT", root)
    for k, run_id in enumerate(("9", "8", "7", "6", "5", "4", "3", "2", "12345")):
        for part in ("etl/hours=0/part-0.parquet", "models/mlp__global__0/meta.json"):
            storage.write_bytes_atomic(f"{root}/DemoFlow/{run_id}/{part}", b"x" * (500 + k))
    storage.write_bytes_atomic(f"{root}/OtherFlow/5/kept.bin", b"y")

    class _Flow:
        def runs(self):
            return iter(RUNS)

    monkeypatch.setattr("pythia.runs.open_flow", lambda name: _Flow())
    assert cli.main(["clean", "--keep", "2"]) == 0  # the data root from PYTHIA_DATA_ROOT
    out = capsys.readouterr().out
    assert "would remove 5 successful    1008 B  older than the runs kept" in out
    assert "2 run folder(s), 2.0 KB, would be removed; add --yes" in out
    before = moto_s3.keys(f"{prefix}/")
    assert len(before) == 19
    assert cli.main(["clean", "--keep", "2", "--yes"]) == 0
    assert f"removed 2 run folder(s), 2.0 KB, under {root}/DemoFlow" in capsys.readouterr().out
    after = moto_s3.keys(f"{prefix}/")
    assert sorted(set(before) - set(after)) == [
        f"{prefix}/DemoFlow/{r}/{p}" for r in ("3", "5")
        for p in ("etl/hours=0/part-0.parquet", "models/mlp__global__0/meta.json")]
    assert f"{prefix}/OtherFlow/5/kept.bin" in after
    assert sorted(clean.run_folders(root, "DemoFlow")) == ["12345", "2", "4", "6", "7", "8",
                                                            "9"]
