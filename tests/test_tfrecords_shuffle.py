"""Write-time shuffling of TFRecord shards (``tfrecords.permute``, ``shards.write_partition``).

A split whose rows come in time order (impression ids in day order, as the ETL writes them)
must not give shards that each hold a stretch of the day: with a shuffle seed every shard of a
region holds that region's rows from the whole day in no time order, the regions stay in their
own folders, the order is a function of the seed alone (not of the spill's key ranges, i.e. of
memory), both readers read the same rows in the same order, and a failed write leaves no
temporary file. The engines' byte equality with a seed is in test_tfrecords_local.py.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pythia.tfrecords import layout, listing, permute, reader, writer_local
from pythia.tfrecords.shards import write_partition

from test_tfrecords import split_frame, tiny_encoders
from test_tfrecords_columnar import assert_reads_like_tf
from test_tfrecords_local import edge_frames, write_inputs

tf = pytest.importorskip("tensorflow")


def timed_frame(n: int, seed: int):
    """A split in time order: ids ``<row:06d>`` sort like the rows, regions mixed."""
    df = split_frame(n, seed, regions=("NA", "EU", "APAC"))
    df["impression_id"] = [f"{i:06d}" for i in range(n)]
    return df


def batches(df, size: int):
    table = pa.Table.from_pandas(df, preserve_index=False)
    yield from table.to_batches(max_chunksize=size)


def shard_rows_of(path: str) -> list[int]:
    """The row numbers (ids) a shard holds, in its order."""
    desc = reader.feature_description(with_ids=True, keys=["impression_id"])
    ds = tf.data.TFRecordDataset(path).batch(4096).map(lambda s: tf.io.parse_example(s, desc))
    return [int(i) for b in ds.as_numpy_iterator() for i in b["impression_id"]]


def write(df, root, seed, shard_rows=150, unit_rows=None, task=2):
    return write_partition(batches(df, 256), tiny_encoders(), str(root), "train", task,
                           shard_rows, None, shuffle_seed=seed, unit_rows=unit_rows)


def test_row_keys_are_a_seeded_bijection_of_unit_and_position():
    pos = np.arange(200_000)
    keys = permute.row_keys(3, 5, pos)
    assert keys.dtype == np.uint64 and len(np.unique(keys)) == len(pos)
    assert np.array_equal(keys, permute.row_keys(3, 5, pos))
    for other in (permute.row_keys(4, 5, pos), permute.row_keys(3, 6, pos)):
        assert np.mean(other == keys) < 1e-3
    # uniform enough for equal key ranges to hold equal shares of a unit
    ranges = np.bincount((keys >> np.uint64(60)).astype(np.int64), minlength=16)
    assert ranges.min() > 0.9 * len(pos) / 16
    first = [int(np.argsort(permute.row_keys(s, 0, np.arange(1000)))[0]) for s in range(8)]
    assert len(set(first)) > 4  # no fixed first row (seed 0 once put row 0 first)
    with pytest.raises(ValueError, match="unit < 2\\^24"):
        permute.row_keys(0, -1, pos[:3])
    with pytest.raises(ValueError, match="row < 2\\^40"):
        permute.row_keys(0, 0, np.array([1 << 40]))
    assert [permute.range_bits(n) for n in (None, 0, 1, permute.SPILL_ROWS,
                                            permute.SPILL_ROWS + 1, 5 * permute.SPILL_ROWS)] \
        == [permute.UNKNOWN_UNIT_BITS, 0, 0, 0, 1, 3]


def test_shuffled_shards_mix_the_day_and_keep_regions_apart(tmp_path):
    df = timed_frame(3000, 1)
    plain = write(df, tmp_path / "plain", None)
    mixed = write(df, tmp_path / "mixed", 7)
    assert [os.path.relpath(s["path"], tmp_path / "mixed") for s in mixed] == \
        [os.path.relpath(s["path"], tmp_path / "plain") for s in plain]
    for s in plain:  # the old order: every shard a stretch of the day
        rows = shard_rows_of(s["path"])
        assert rows == sorted(rows)
    for region in ("APAC", "EU", "NA"):
        want = np.flatnonzero(df["region"].to_numpy() == region)
        shards = [s for s in mixed if s["region"] == region]
        assert all(f"/region={region}/" in s["path"] for s in shards) and len(shards) >= 6
        got = [shard_rows_of(s["path"]) for s in shards]
        assert sorted(r for rows in got for r in rows) == want.tolist()
        # the region's rows in key order, i.e. the order columnar replays
        order = want[np.argsort(permute.row_keys(7, 2, want), kind="stable")]
        assert [r for rows in got for r in rows] == order.tolist()
        lo, hi = np.quantile(want, [0.1, 0.9])
        for rows in got[:-1]:  # each full shard: no time order, the whole day
            assert rows != sorted(rows)
            assert min(rows) < lo and max(rows) > hi
            assert np.corrcoef(np.arange(len(rows)), rows)[0, 1] ** 2 < 0.05


def test_the_order_depends_on_the_seed_not_on_the_spill(tmp_path, monkeypatch):
    df = timed_frame(2000, 2)
    one = write(df, tmp_path / "one", 5, unit_rows=len(df))  # a single key range
    again = write(df, tmp_path / "again", 5, unit_rows=len(df))
    other = write(df, tmp_path / "other", 6, unit_rows=len(df))
    monkeypatch.setattr(permute, "SPILL_ROWS", 50)  # 64 key ranges of ~31 rows
    many = write(df, tmp_path / "many", 5, unit_rows=len(df))
    unknown = write(df, tmp_path / "unknown", 5)  # 2**UNKNOWN_UNIT_BITS ranges
    sha = [[s["sha256"] for s in r] for r in (one, again, many, unknown, other)]
    assert sha[0] == sha[1] == sha[2] == sha[3]
    assert not set(sha[4]) & set(sha[0])
    for s in one:
        assert listing.sha256_file(s["path"]) == s["sha256"]
    assert sorted(r for s in other for r in shard_rows_of(s["path"])) == list(range(len(df)))


def test_a_failed_shuffled_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    os.makedirs(tmp_path / "tmp")
    df = timed_frame(600, 3)

    def dying():
        yield from batches(df, 100)
        raise RuntimeError("executor killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_partition(dying(), tiny_encoders(), str(tmp_path / "out"), "train", 0, 1000,
                        None, shuffle_seed=1, unit_rows=600)
    assert not glob.glob(str(tmp_path / "out" / "**" / "*"), recursive=True)
    write(df, tmp_path / "ok", 1)
    assert os.listdir(tmp_path / "tmp") == []  # the spill folder is gone after a write too
    bad = df.assign(region=["N A"] * len(df))
    with pytest.raises(ValueError, match="'N A' in split 'train' is not a valid folder name"):
        write(bad, tmp_path / "bad", 1)


def test_both_readers_read_a_shuffled_split_alike(tmp_path):
    """Several files and row groups (units), unicode ids, an empty and a one-row split."""
    split_paths = write_inputs(None, edge_frames(), str(tmp_path / "in"), "arrow")
    manifest, _ = writer_local.convert_splits(split_paths, str(tmp_path / "tfr"), shard_rows=40,
                                              shuffle_seed=11)
    assert manifest["shuffle"] == {"seed": 11, "rule": permute.SHUFFLE_RULE}
    assert layout.read_manifest(manifest["root"])["shuffle"]["seed"] == 11
    assert_reads_like_tf(manifest, [None, ["EU", "NA"], ["APAC"]])
    plain, _ = writer_local.convert_splits(split_paths, str(tmp_path / "plain"), shard_rows=40)
    assert plain["shuffle"] is None
    for split in layout.SPLITS:  # the same rows, in another order
        a = reader.load_numpy(plain, split)["impression_id"]
        b = reader.load_numpy(manifest, split)["impression_id"]  # columnar: source named
        assert sorted(a) == sorted(b)
        if len(a) > 40:
            assert a.tolist() != b.tolist()


def test_a_row_group_is_one_unit_of_the_permutation(tmp_path):
    """Two row groups: each unit's rows stay in that unit's shards (columnar reads a unit)."""
    df = timed_frame(1000, 4)
    path = tmp_path / "in" / "train"
    os.makedirs(path)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path / "p.parquet",
                   row_group_size=500)
    entry = writer_local.write_split_files(str(path), tiny_encoders(), str(tmp_path / "out"),
                                           "train", shard_rows=10_000, shuffle_seed=3)
    for s in entry["shards"]:
        unit = int(os.path.basename(s["path"]).split("-")[1])
        rows = shard_rows_of(s["path"])
        assert all(unit * 500 <= r < (unit + 1) * 500 for r in rows) and rows != sorted(rows)
