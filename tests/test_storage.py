"""Unit tests: atomic local writes, staged folders, listing (S3 is covered by the moto tests)."""
import os
import tempfile

import pytest

from pythia import storage
from pythia.paths import RunPaths, join
from s3_fixtures import moto_s3, s3_env  # noqa: F401  (pytest fixtures)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "b.json"
    storage.write_json_atomic(str(target), {"x": 1})
    assert storage.read_json(str(target)) == {"x": 1}
    assert os.listdir(target.parent) == ["b.json"]


def test_staged_dir_publishes_only_on_success(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with storage.staged_dir(str(final)) as d:
            open(os.path.join(d, "half"), "w").write("x")
            raise RuntimeError("killed")
    assert not final.exists() and os.listdir(tmp_path) == []
    with storage.staged_dir(str(final)) as d:
        open(os.path.join(d, "whole"), "w").write("x")
    assert os.listdir(final) == ["whole"]


def test_list_files_and_missing_file_error(tmp_path):
    storage.write_bytes_atomic(str(tmp_path / "d" / "1"), b"1")
    storage.write_bytes_atomic(str(tmp_path / "d" / "e" / "2"), b"2")
    assert [os.path.basename(p) for p in storage.list_files(str(tmp_path / "d"))] == ["1", "2"]
    assert storage.list_files(str(tmp_path / "nope")) == []
    with pytest.raises(FileNotFoundError, match="nope"):
        storage.read_bytes(str(tmp_path / "nope"))


def test_run_paths_are_run_scoped_for_local_and_s3():
    p = RunPaths("s3://bucket/pre/", "DemoFlow", "17")
    assert p.split("train") == "s3://bucket/pre/DemoFlow/17/splits/split=train"
    assert p.etl_hours([0, 1]) == "s3://bucket/pre/DemoFlow/17/etl/hours=00-01"
    assert RunPaths("/data", "DemoFlow", "18").model("mlp", "NA") == \
        "/data/DemoFlow/18/models/mlp__NA__0"
    assert join("a/", "/b/", "c") == "a/b/c"


def test_s3_staging_and_copies_use_swept_scratch_folders(s3_env, moto_s3, tmp_path,
                                                          monkeypatch):
    """What S3 paths stage on local disk (staged_dir, local_copy, write_predictions, Spark's
    staged reads) is a ``pythia.scratch`` folder under $TMPDIR: locked while in use, gone
    after, and a killed task's is swept by the next one."""
    from pythia import spark_s3
    from pythia.models.predictions import PREDICTION_SCHEMA, write_predictions
    from test_scratch import is_locked, leave_dead_scratch

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches $TMPDIR
    stale = leave_dead_scratch(str(scratch), "pythia-stage-", 100)
    uri = f"s3://{moto_s3.bucket}/scratch/folder"
    with storage.staged_dir(uri) as folder:
        root = os.path.dirname(folder)  # the scratch folder: its lock file and ours
        assert os.listdir(scratch) == [os.path.basename(root)]  # the dead one swept
        assert os.path.basename(root).startswith("pythia-stage-") and is_locked(folder)
        with open(os.path.join(folder, "a.txt"), "w") as f:
            f.write("x")
    assert not os.path.exists(stale[0]) and os.listdir(scratch) == []
    assert storage.list_files(uri) == [uri + "/a.txt"]  # the lock file stayed home
    with storage.local_copy(uri) as folder:
        assert os.path.dirname(os.path.dirname(folder)) == str(scratch) and is_locked(folder)
        assert os.listdir(folder) == ["a.txt"]
    assert os.listdir(scratch) == []
    assert write_predictions([PREDICTION_SCHEMA.empty_table()], uri + "/p.parquet") == 0
    assert os.listdir(scratch) == [] and storage.exists(uri + "/p.parquet")
    monkeypatch.setattr(spark_s3, "_stage_root", None)
    root = spark_s3._process_stage_root()
    assert root == spark_s3._process_stage_root() and is_locked(root)
    assert os.path.basename(os.path.dirname(root)).startswith("pythia-s3-stage-")
    spark_s3._stage_root.close()  # what the interpreter's exit does
    assert os.listdir(scratch) == []
