"""Will the run fit? The start step's estimate from the newest earlier successful run
(``pythia.disk_budget``)."""
import datetime as dt
import os

from pythia import disk_budget


def test_window_bytes_counts_the_windows_impression_files(tmp_path):
    from pythia.synth import run_synth_cli
    world = tmp_path / "world"
    assert run_synth_cli("tiny", str(world), 0) == 0
    days = sorted(p.name[len("date="):] for p in (world / "impressions").iterdir())
    test_day = dt.date.fromisoformat(days[-1])
    window = {"test": [test_day.isoformat()]}
    inside = {(test_day - dt.timedelta(days=k)).isoformat() for k in range(5)}
    expected = sum(os.path.getsize(f) for f in (world / "impressions").rglob("*.parquet")
                   if f.parent.parent.name[len("date="):] in inside)
    assert expected > 0
    assert disk_budget.window_bytes(str(world), window) == expected
    # a window one day earlier drops the test day's files
    earlier = {"test": [(test_day - dt.timedelta(days=1)).isoformat()]}
    assert disk_budget.window_bytes(str(world), earlier) < expected


def _folder(tmp_path, nbytes):
    run = tmp_path / "data" / "DemoFlow" / "7"
    (run / "models").mkdir(parents=True)
    (run / "models" / "m.bin").write_bytes(b"x" * nbytes)
    return str(run)


def test_the_estimate_scales_the_previous_runs_folder_by_the_impressions(tmp_path):
    root = str(tmp_path / "data")
    folder = _folder(tmp_path, 4096)
    lines = disk_budget.preflight_lines(root, 2000, ("7", folder, 1000))
    assert len(lines) == 1 and lines[0].startswith(f"disk: the data root {root} has ")
    assert ("run 7 wrote 4.0 KB there for 1000 B of impressions, so this run (2.0 KB) needs "
            "about 8.0 KB") in lines[0]
    # a run that cannot fit: a loud block, and the run goes on
    huge = disk_budget.preflight_lines(root, 10 ** 15, ("7", folder, 1))
    assert len(huge) == 3 and huge[0] == huge[2] == "!" * 88
    assert huge[1].startswith("WARNING: THIS RUN MAY NOT FIT ON ITS DISK: the data root ")
    assert "`pythia clean`" in huge[1] and "--data_root on a larger disk" in huge[1]


def test_no_previous_run_no_estimate_and_s3_says_nothing(tmp_path):
    root = str(tmp_path / "not-made-yet" / "data")
    lines = disk_budget.preflight_lines(root, 2000, None)
    assert lines == [f"disk: the data root {root} has " + lines[0].split(" has ")[1]]
    assert "no earlier successful run here to estimate this run's need from" in lines[0]
    assert disk_budget.preflight_lines("s3://bucket/data", 2000, None) == []


class _Artifact:
    def __init__(self, data):
        self.data = data


class _Task(dict):
    def __init__(self, origin=None, **artifacts):
        super().__init__({k: _Artifact(v) for k, v in artifacts.items()})
        self.metadata_dict = {"origin-run-id": str(origin)}


class _Run:
    def __init__(self, run_id, successful=True, origin=None, **artifacts):
        self.id, self.successful = run_id, successful
        self.start = _Task(origin, **artifacts)

    def __getitem__(self, name):
        assert name == "start"
        return type("Step", (), {"task": self.start})()


def test_the_previous_footprint_skips_what_cannot_give_an_estimate(tmp_path, monkeypatch):
    folder = _folder(tmp_path, 10)
    runs = [_Run("9"),  # the current run
            _Run("8", successful=False, run_root=folder, source_bytes=5),
            _Run("7", origin="3", run_root=folder, source_bytes=5),  # resumed
            _Run("6", run_root=folder),  # from before the record
            _Run("5", run_root="s3://b/DemoFlow/5", source_bytes=5),
            _Run("4", run_root=str(tmp_path / "gone"), source_bytes=5),  # cleaned
            _Run("2", run_root=folder, source_bytes=5)]

    class _Flow:
        def runs(self):
            return iter(runs)

    monkeypatch.setattr("pythia.runs.open_flow", lambda name: _Flow())
    assert disk_budget.previous_footprint("DemoFlow", "9") == ("2", folder, 5)
    monkeypatch.setattr(disk_budget, "LOOK_BACK", 4)  # 7, 6, 5, 4: none qualifies
    assert disk_budget.previous_footprint("DemoFlow", "9") is None
    monkeypatch.setattr("pythia.runs.open_flow", lambda name: None)
    assert disk_budget.previous_footprint("DemoFlow", "9") is None


def test_the_datastore_line_and_its_loud_block(tmp_path):
    store = str(tmp_path / ".metaflow")
    os.makedirs(store)
    assert disk_budget.datastore_lines(None, ("7", 10)) == []  # not a local datastore
    first = disk_budget.datastore_lines(store, None)
    assert first == [f"datastore: Metaflow's datastore {store} has " + first[0].split(" has ")[1]]
    fits = disk_budget.datastore_lines(store, ("7", 4096))
    assert len(fits) == 1 and fits[0].endswith("; run 7 stored 4.0 KB there")
    shared = disk_budget.datastore_lines(store, ("7", 4096), reserved=2048)
    assert shared[0].endswith("; run 7 stored 4.0 KB there (and the data root's 2.0 KB "
                              "estimate is on the same disk)")
    # the data root's estimate takes the disk's free space: the datastore's bytes do not fit
    full = disk_budget.datastore_lines(store, ("7", 4096), reserved=10 ** 18)
    assert len(full) == 3 and full[0] == full[2] == "!" * 88
    assert full[1].startswith(f"WARNING: METAFLOW'S DATASTORE MAY FILL: Metaflow's datastore "
                              f"{store} has ")
    assert "METAFLOW_DATASTORE_SYSROOT_LOCAL" in full[1] and "Internal error" in full[1]
