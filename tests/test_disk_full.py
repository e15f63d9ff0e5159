"""A full disk inside a step: one line naming the folder, its free space and the fix; the task's
partial output removed; every other failure unchanged (``pythia.disk_full``)."""
import errno
import os
import stat

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pythia import disk_full

SPARK_TEXT = (  # what Py4J carries when Spark's writer meets a full disk (trimmed)
    "An error occurred while calling o123.parquet.\n: org.apache.spark.SparkException: "
    "[TASK_WRITE_FAILED] Task failed while writing rows to file:{root}/DemoFlow/1/etl/"
    "hours=12-13/.tmp-28913ff5-ids/_spark.\n\tat org.apache.spark.sql.errors.X(X.scala:1)\n"
    "Caused by: org.apache.hadoop.fs.FSError: java.io.IOException: No space left on device\n")


def _pyarrow_full() -> OSError:
    """The error pyarrow's Parquet writer really raises on a full disk: /dev/full, opened by
    pyarrow (given the path itself, pyarrow would remove the "partial file" on failure)."""
    if not os.path.exists("/dev/full") or not stat.S_ISCHR(os.stat("/dev/full").st_mode):
        pytest.skip("no /dev/full device on this system")
    with pytest.raises(OSError) as caught, pa.OSFile("/dev/full", "wb") as sink:
        pq.write_table(pa.table({"a": list(range(100_000))}), sink)
    return caught.value


def _chained(outer: Exception, cause: BaseException) -> Exception:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise outer from inner
    except Exception as exc:
        return exc


def test_what_counts_as_a_full_disk():
    assert disk_full.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert disk_full.is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert disk_full.is_disk_full(_pyarrow_full())
    # a Spark failure: our one-line RuntimeError, with the Py4J error's text as its cause
    spark = _chained(RuntimeError("etl_hour: Spark failed: [TASK_WRITE_FAILED] Task failed"),
                     RuntimeError(SPARK_TEXT.format(root="/data")))
    assert disk_full.is_disk_full(spark)
    assert not disk_full.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk_full.is_disk_full(ValueError("column age: not an int"))
    assert not disk_full.is_disk_full(_chained(RuntimeError("x"), KeyError("y")))


def test_the_path_a_failed_write_names():
    assert disk_full.failing_path(OSError(errno.ENOSPC, "full", "/data/a.parquet")) == \
        "/data/a.parquet"
    spark = _chained(RuntimeError("etl_hour: Spark failed"),
                     RuntimeError(SPARK_TEXT.format(root="/data")))
    assert disk_full.failing_path(spark) == \
        "/data/DemoFlow/1/etl/hours=12-13/.tmp-28913ff5-ids/_spark"
    shuffle = RuntimeError("java.io.FileNotFoundException: /tmp/blockmgr-1a/0c/temp_shuffle_2 "
                           "(No space left on device)")
    assert disk_full.failing_path(shuffle) == "/tmp/blockmgr-1a/0c/temp_shuffle_2"
    assert disk_full.failing_path(_pyarrow_full()) is None


def _task_output(tmp_path):
    root = tmp_path / "data"
    mine = root / "DemoFlow" / "1" / "etl" / "hours=00-01"
    (mine / "rows").mkdir(parents=True)
    (mine / "rows" / "part-0.parquet").write_bytes(b"x" * 3000)
    (mine / "rows" / ".tmp-1-part-1.parquet").write_bytes(b"x" * 1000)
    other = root / "DemoFlow" / "1" / "etl" / "hours=02-03"
    other.mkdir(parents=True)
    (other / "part-0.parquet").write_bytes(b"y" * 10)
    single = root / "DemoFlow" / "1" / "predictions" / "mlp__global__0.parquet"
    single.parent.mkdir(parents=True)
    single.write_bytes(b"z" * 24)
    return root, mine, other, single


def test_a_full_disk_becomes_one_line_and_frees_the_partial_output(tmp_path):
    root, mine, other, single = _task_output(tmp_path)
    missing = root / "DemoFlow" / "1" / "models" / "never-written"
    with pytest.raises(OSError) as caught:
        with disk_full.full_disk_errors("etl_hour", str(root), [str(mine), str(single),
                                                               str(missing)]):
            raise _pyarrow_full()
    err = caught.value
    text = str(err)
    assert err.errno == errno.ENOSPC and "\n" not in text
    assert text.startswith("[Errno 28] etl_hour: no space left on the disk writing to ")
    assert f"writing to the data root {root} (" in text and " free of " in text  # its room
    # 3000 + 1000 + 24 bytes, under the two paths' common folder
    assert (f"removed this task's partial output (3.9 KB under {root}/DemoFlow/1: "
            "etl/hours=00-01, predictions/mlp__global__0.parquet)") in text
    assert "never-written" not in text
    assert "resume` reads its finished steps" in text and "SPARK" not in text
    assert text.endswith("then `python flows/demo_flow.py resume etl_hour`")
    assert isinstance(err.__cause__, OSError) and "Error writing bytes" in str(err.__cause__)
    assert not mine.exists() and not single.exists()
    assert (other / "part-0.parquet").read_bytes() == b"y" * 10  # another task's: kept


def test_a_spark_write_names_its_folder_and_a_shuffle_names_spark_scratch(tmp_path):
    root, mine, _, _ = _task_output(tmp_path)
    spark = _chained(RuntimeError("etl_hour: Spark failed: [TASK_WRITE_FAILED]"),
                     RuntimeError(SPARK_TEXT.format(root=root)))
    with pytest.raises(OSError) as caught:
        with disk_full.full_disk_errors("etl_hour", str(root), [str(mine)], resume="RESUME"):
            raise spark
    text = str(caught.value)
    assert f"writing to {root}/DemoFlow/1/etl/hours=12-13/.tmp-28913ff5-ids/_spark (" in text
    assert "--data_root on a larger disk, then RESUME" in text
    shuffle = RuntimeError("java.io.FileNotFoundException: /tmp/blockmgr-1a/0c/temp_shuffle_2 "
                           "(No space left on device)")
    with pytest.raises(OSError) as caught:
        with disk_full.full_disk_errors("join_hours", str(root)):
            raise shuffle
    text = str(caught.value)
    assert "writing to /tmp/blockmgr-1a/0c/temp_shuffle_2 (" in text
    assert "set SPARK_LOCAL_DIRS to a folder on a disk with room" in text
    assert "no partial output to remove" in text
    with pytest.raises(OSError) as caught:  # the same with the data root on S3
        with disk_full.full_disk_errors("join_hours", "s3://bucket/data"):
            raise shuffle
    assert "set SPARK_LOCAL_DIRS to a folder on a disk with room" in str(caught.value)


def test_spark_naming_no_file_lists_the_disks_it_may_have_filled(tmp_path, monkeypatch):
    root = tmp_path / "data"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("SPARK_LOCAL_DIRS", str(scratch))
    spark = _chained(RuntimeError("prepare_labels: Spark failed: Caused by: "
                                  "java.io.IOException: No space left on device"),
                     RuntimeError("Job aborted ... java.io.IOException: No space left on "
                                  "device"))
    with pytest.raises(OSError) as caught:
        with disk_full.full_disk_errors("prepare_labels", str(root)):
            raise spark
    text = str(caught.value)
    assert f"one of the data root {root} (" in text
    assert f"the scratch folder {scratch} (" in text


def test_other_failures_pass_unchanged_and_remove_nothing(tmp_path):
    root, mine, _, _ = _task_output(tmp_path)
    for exc in (ValueError("column age: not an int"), OSError(errno.EACCES, "denied")):
        with pytest.raises(type(exc)) as caught:
            with disk_full.full_disk_errors("etl_hour", str(root), [str(mine)]):
                raise exc
        assert caught.value is exc
    assert (mine / "rows" / "part-0.parquet").exists()


def test_staging_siblings_go_too_and_only_they(tmp_path):
    root, mine, other, _ = _task_output(tmp_path)
    left = mine.parent / f".tmp-0a1b-{mine.name}"  # a killed writer's staged folder
    (left / "rows").mkdir(parents=True)
    (left / "rows" / "part-0.parquet").write_bytes(b"x" * 100)
    theirs = other.parent / f".tmp-0a1b-{other.name}"
    theirs.mkdir()
    removed, freed = disk_full.remove_partial([str(mine)])
    assert removed == [str(mine), str(left)] and freed == 4100
    assert theirs.exists() and other.exists()


def test_a_dataset_writer_aborted_on_a_full_disk_leaves_no_staged_folder(tmp_path):
    """The footer write of an aborted writer fails on a full disk too; the staged folder must
    go all the same, and the next writer's abort must still run."""
    from pythia.etl.io import ArrowDatasetWriter

    class FullDisk:
        def close(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    writers = [ArrowDatasetWriter(str(tmp_path / name)) for name in ("rows", "ids")]
    for w in writers:
        w.write(pa.table({"a": [1, 2]}))
    writers[0]._writer.close()
    writers[0]._writer = FullDisk()
    for w in writers:
        w.abort()
    assert list(tmp_path.iterdir()) == []


def test_s3_outputs_are_not_removed(tmp_path):
    removed, freed = disk_full.remove_partial(["s3://bucket/run/etl/hours=00"])
    assert removed == [] and freed == 0


def test_every_step_of_the_flow_runs_inside_the_guard():
    """Each DemoFlow step's work is inside ``full_disk`` / ``full_disk_errors`` (a new step
    that forgets would stop on a full disk with a raw writer error)."""
    import ast
    from pathlib import Path
    flow = Path(__file__).resolve().parent.parent / "flows" / "demo_flow.py"
    tree = ast.parse(flow.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DemoFlow")
    steps = [f for f in cls.body if isinstance(f, ast.FunctionDef)
             and any(getattr(d, "id", None) == "step" for d in f.decorator_list)]
    assert len(steps) == 9
    for f in steps:
        guards = [w for w in ast.walk(f) if isinstance(w, ast.With)
                  and any(isinstance(i.context_expr, ast.Call)
                          and ast.unparse(i.context_expr.func) in ("self.full_disk",
                                                                   "full_disk_errors")
                          for i in w.items)]
        assert guards, f"step {f.name} writes outside the full-disk guard"


def _line_of(stderr: str, head: str) -> str:
    """The one line starting with ``head`` (a progress bar's ``\\r`` redraws print around
    it)."""
    lines = [ln[ln.index(head):] for ln in stderr.splitlines() if head in ln]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def full_disk(tmp_path):
    from flow_fixtures import mount_tmpfs, umount_tmpfs
    disk = mount_tmpfs(tmp_path / "disk", "1m")
    yield disk
    umount_tmpfs(disk)


def test_commands_on_a_full_disk_say_so_in_one_line_and_leave_nothing(full_disk, tmp_path,
                                                                        capsys):
    """``pythia synth`` and ``pythia ingest openrtb`` writing to a real 1 MB disk: exit 1, one
    line naming the folder and its free space, and no file or staging folder left there."""
    from pythia import cli
    assert cli.main(["synth", "--preset", "tiny", "--out", str(full_disk / "world")]) == 1
    err = _line_of(capsys.readouterr().err, "pythia synth:")
    assert err.startswith(f"pythia synth: no space left on the disk writing to "
                          f"{full_disk / 'world'} (")
    assert " free of 1.0 MB now); files are published only when complete. Fix: " in err
    assert list(full_disk.iterdir()) == []
    logs = tmp_path / "rtb"  # bid logs on the normal disk, ingested onto the full one
    assert cli.main(["synth", "--preset", "tiny", "--out", str(tmp_path / "w"),
                     "--openrtb", str(logs)]) == 0
    capsys.readouterr()
    assert cli.main(["ingest", "openrtb", str(logs), "--out", str(full_disk / "src")]) == 1
    err = _line_of(capsys.readouterr().err, "pythia ingest:")
    assert err.startswith(f"pythia ingest: no space left on the disk writing to "
                          f"{full_disk / 'src'} (")
    assert [p for p in full_disk.rglob("*") if p.is_file()] == []
    # bid logs written onto the full disk: the hours already written are removed too, so no
    # folder looks like a whole log while missing hours
    assert cli.main(["synth", "--preset", "tiny", "--out", str(tmp_path / "w"),
                     "--openrtb", str(full_disk / "rtb")]) == 1
    err = _line_of(capsys.readouterr().err, "pythia synth:")
    assert f"{full_disk / 'rtb'} (" in err
    assert [p for p in full_disk.rglob("*") if p.is_file()] == []
