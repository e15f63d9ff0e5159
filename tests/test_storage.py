"""Unit tests: atomic local writes, staged folders, listing (S3 is covered by the moto tests)."""
import os

import pytest

from pythia import storage
from pythia.paths import RunPaths, join


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
