"""``parquet_footers.iter_file_batches``: every row in order, in bounded batches, holding about
a batch however large the file (a fresh process, so the Arrow pool's peak is this read's)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pythia.parquet_footers import iter_dataset_batches, iter_file_batches


def _file(path, groups: int, rows: int, text: int = 32) -> pa.Table:
    """A string and a list<float> column, as in a candidate's predictions file."""
    n = groups * rows
    offsets = pa.array(np.arange(0, 12 * n + 1, 12, dtype=np.int32))
    table = pa.table({"i": pa.array(range(n), pa.int64()),
                      "s": pa.array([f"{k:0{text}d}" for k in range(n)], pa.string()),
                      "p": pa.ListArray.from_arrays(offsets, pa.array(
                          np.random.default_rng(0).random(12 * n, dtype=np.float32)))})
    pq.write_table(table, path, row_group_size=rows)
    return table


def test_every_row_in_order_in_bounded_batches(tmp_path):
    path = str(tmp_path / "f.parquet")
    table = _file(path, groups=3, rows=1000, text=8)
    got = list(iter_file_batches(pq.ParquetFile(path), 256, ["p", "i"]))
    assert max(b.num_rows for b in got) == 256
    assert pa.Table.from_batches(got).equals(table.select(["p", "i"]))
    empty = str(tmp_path / "e.parquet")
    pq.write_table(table.slice(0, 0), empty)
    assert list(iter_file_batches(pq.ParquetFile(empty), 256)) == []


def test_a_dataset_file_by_file_in_its_files_order(tmp_path):
    import pyarrow.dataset as ds
    (tmp_path / "d").mkdir()
    a = _file(str(tmp_path / "d" / "part-0.parquet"), groups=2, rows=300, text=4)
    b = _file(str(tmp_path / "d" / "part-1.parquet"), groups=3, rows=100, text=4)
    dataset = ds.dataset(str(tmp_path / "d"), format="parquet")
    got = list(iter_dataset_batches(dataset, 128, ["i"]))
    assert max(x.num_rows for x in got) == 128
    # each file's row groups go one at a time: no batch spans two row groups or two files
    assert [x.num_rows for x in got] == [128, 128, 44] * 2 + [100] * 3
    assert pa.Table.from_batches(got).equals(pa.concat_tables([a, b]).select(["i"]))


_PEAK = """
import json, sys
import pyarrow as pa, pyarrow.parquet as pq
from pythia.parquet_footers import iter_dataset_batches, iter_file_batches
rows = sum(b.num_rows for b in iter_file_batches(pq.ParquetFile(sys.argv[1]), 4096))
print(json.dumps({"rows": rows, "peak": pa.default_memory_pool().max_memory()}))
"""


def test_memory_is_a_row_group_not_the_file(tmp_path):
    path = str(tmp_path / "big.parquet")
    _file(path, groups=60, rows=16_384)  # ~85 MB decoded, 1.4 MB a row group
    out = subprocess.run([sys.executable, "-c", _PEAK, path], capture_output=True, text=True,
                         check=True)
    got = json.loads(out.stdout)
    assert got["rows"] == 60 * 16_384
    assert got["peak"] < 16 * 2**20, got  # one iter_batches over the whole file: ~100 MB


def test_a_full_scratch_disk_is_one_line_naming_the_folder_and_the_fix(tmp_path, monkeypatch):
    import errno

    import pytest

    from pythia import buckets

    real = pa.ipc.new_file
    monkeypatch.setattr(pa.ipc, "new_file",  # every bucket file is /dev/full: writes fail
                        lambda path, schema, options=None: real("/dev/full", schema))
    table = pa.table({"k": [str(i) for i in range(100)]})
    with pytest.raises(OSError, match=r"no space left on the scratch disk writing 4 buckets "
                                      r"under .*: free space there or point TMPDIR") as err:
        buckets.partition([table], "k", 4, str(tmp_path / "b"))
    assert err.value.errno == errno.ENOSPC and "\n" not in str(err.value)
