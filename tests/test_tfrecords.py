"""TFRecord conversion: wire bytes vs TensorFlow, encoders from train, Spark round trips,
determinism, atomicity, checksums, and the S3 path (moto)."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet  # noqa: F401  (pa.parquet)
import pytest

from pythia import features, storage
from pythia.evaluate.margins import user_groups
from pythia.features import ACTIVITY_FEATURES, Encoders, NumericStats, Vocabulary
from pythia.tfrecords import encode, listing, reader, wire, writer
from pythia.tfrecords import (SAMPLE_RULE, convert_splits, count_labels, fit_encoders,
                              iter_numpy, load_numpy, load_sample, make_dataset, parquet_units,
                              sample_quotas, verify_shards, write_split, write_split_files)
from pythia.tfrecords.shards import write_partition

tf = pytest.importorskip("tensorflow")

CATS = [f.name for f in features.FEATURES if f.kind == features.CATEGORICAL]
NUMS = [f.name for f in features.FEATURES if f.kind == features.NUMERIC]


# ---------------------------------------------------------------- fixtures

def split_frame(n: int, seed: int, regions=("NA", "EU"), prefix: str = "v") -> pd.DataFrame:
    """A tiny split in the split-Parquet schema (only the columns TFRecords need + extras)."""
    rng = np.random.default_rng(seed)
    d: dict = {}
    for name in CATS:
        # few values, a skewed frequency so min_count matters
        d[name] = [f"{prefix}{i}" for i in np.minimum(rng.geometric(0.4, n) - 1, 9)]
    for name in NUMS:
        if name in ACTIVITY_FEATURES:  # whole counts, from their own draws (the others' stay)
            d[name] = np.random.default_rng([seed, 1]).poisson(3.0, n).astype(np.int64)
        else:
            d[name] = rng.normal(size=n).astype(np.float32)
    d["y_gender"] = rng.integers(0, 2, n).astype(np.int32)
    d["y_age"] = rng.integers(0, 6, n).astype(np.int32)
    d["y_age_gender"] = (d["y_gender"] * 6 + d["y_age"]).astype(np.int32)
    d["impression_id"] = [f"{seed}-{i}-{'x' * (i % 5)}" for i in range(n)]
    d["region"] = rng.choice(list(regions), n)
    d["user_id"] = [f"u{i % 7}" for i in range(n)]
    d["split"] = "any"
    return pd.DataFrame(d)


def with_edge_values(df: pd.DataFrame) -> pd.DataFrame:
    """Missing (None, '') and unusual values in the first rows."""
    df = df.copy()
    df.loc[0, "site_or_app"] = None
    df.loc[1, "device_model"] = ""
    df.loc[2, "browser"] = "never-seen-in-train"
    df.loc[3, "hour_sin"] = np.nan
    df.loc[4, "impression_id"] = "é-ünïcode-" + "z" * 200  # long: 2-byte varint lengths
    return df


def reference(df: pd.DataFrame, encoders: Encoders) -> dict[str, np.ndarray]:
    """What the records must hold, by the library's own per-row encoder."""
    cols = {c: df[c].to_numpy(dtype=object) for c in CATS}
    cols.update({c: df[c].to_numpy(dtype=np.float64) for c in NUMS})
    out = encoders.encode_batch(cols)
    for c in encode.LABEL_COLUMNS:
        out[c] = df[c].to_numpy(dtype=np.int64)
    # the user's group as evaluate's user-clustered SE computes it (the same clusters)
    out["user_group"] = user_groups(df["user_id"])
    out["impression_id"] = df["impression_id"].to_numpy(dtype=object)
    return out


def tiny_encoders() -> Encoders:
    return Encoders({c: Vocabulary(["v0", "v1", "v2"]) for c in CATS},
                    {c: NumericStats(0.1, 2.0) for c in NUMS})


# Spark tests use conftest's shared session: a module's own getOrCreate() returns that same
# session, and stopping it here stopped it for every later test module.


@pytest.fixture(scope="module")
def splits(spark, tmp_path_factory):
    """Four split Parquets; APAC rows exist in train only (an empty region elsewhere)."""
    root = tmp_path_factory.mktemp("splits")
    frames = {
        "train": split_frame(300, 1, regions=("NA", "EU", "APAC")),
        "validation": with_edge_values(split_frame(120, 2)),
        "test_resampled": split_frame(80, 3),
        "test_natural": split_frame(5, 4),  # fewer rows than partitions below
    }
    paths = {}
    for name, df in frames.items():
        paths[name] = str(root / name)
        # 4 partitions for 5 rows: empty partitions must write nothing
        spark.createDataFrame(df).repartition(4).write.parquet(paths[name])
    return frames, paths


@pytest.fixture(scope="module", params=[None, "GZIP"])
def converted(request, spark, splits, tmp_path_factory):
    frames, paths = splits
    out = tmp_path_factory.mktemp("tfr")
    manifest, encoders = convert_splits(spark, paths, str(out), shard_rows=40,
                                        compression=request.param)
    return frames, paths, str(out), manifest, encoders


def by_id(d: dict[str, np.ndarray]) -> dict[str, dict]:
    ids = [i.decode() if isinstance(i, bytes) else i for i in d["impression_id"]]
    return {k: dict(zip(ids, v)) for k, v in d.items() if k != "impression_id"}


# ---------------------------------------------------------------- wire format

def test_crc32c_known_vector():
    assert wire.crc32c(b"123456789") == 0xE3069283
    assert wire.crc32c(b"") == 0


def test_frame_examples_matches_tensorflow(tmp_path):
    vals = np.array([0, 1, 127, 128, 300, 2**35, -1, 16383, 16384], dtype=np.int64)
    n = len(vals)
    floats = np.linspace(-3, 3, n).astype(np.float32)
    strings = [b"", b"a", b"b" * 127, b"c" * 128, b"d" * 5000, b"e", b"f", b"g", b"h"]
    offsets = np.cumsum([0] + [len(s) for s in strings])
    entries = ([wire.int64_entries("k", vals)] + wire.float_entries("num", floats)
               + wire.bytes_entries("sid", np.frombuffer(b"".join(strings), np.uint8), offsets))
    flat, offs = wire.frame_examples(entries, n)
    path = tmp_path / "x.tfrecord"
    path.write_bytes(flat.tobytes())
    # TFRecordDataset checks both masked CRCs of every record
    records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    assert len(records) == n and offs[-1] == len(flat)
    for i, rec in enumerate(records):
        want = tf.train.Example(features=tf.train.Features(feature={
            "k": tf.train.Feature(int64_list=tf.train.Int64List(value=[vals[i]])),
            "num": tf.train.Feature(float_list=tf.train.FloatList(value=[floats[i]])),
            "sid": tf.train.Feature(bytes_list=tf.train.BytesList(value=[strings[i]]))}))
        assert tf.train.Example.FromString(rec) == want
        assert len(rec) == len(want.SerializeToString())
        # the framing against the pure-Python reference CRC
        frame = flat[offs[i]:offs[i + 1]].tobytes()
        assert frame[12:-4] == rec
        assert int(wire.mask_crc(wire.crc32c(rec))) == int.from_bytes(frame[-4:], "little")
        assert int(wire.mask_crc(wire.crc32c(frame[:8]))) == int.from_bytes(frame[8:12],
                                                                            "little")


def test_corrupted_record_is_rejected_by_tensorflow(tmp_path):
    flat, _ = wire.frame_examples([wire.int64_entries("k", np.arange(3))], 3)
    flat = flat.copy()
    flat[20] ^= 0xFF
    path = tmp_path / "bad.tfrecord"
    path.write_bytes(flat.tobytes())
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())


def test_bad_feature_key_rejected():
    with pytest.raises(ValueError, match="feature key"):
        wire.int64_entries("k" * 120, np.arange(2))


def test_empty_batch_frames_nothing():
    flat, offs = wire.frame_examples([], 0)
    assert flat.size == 0 and list(offs) == [0]


# ---------------------------------------------------------------- batch encoding (no Spark)

def test_encode_records_equals_per_row_reference(tmp_path):
    df = with_edge_values(split_frame(50, 7))
    enc = tiny_encoders()
    batch = pa.RecordBatch.from_pandas(df, preserve_index=False)
    flat, _ = encode.encode_records(batch, enc)
    path = tmp_path / "b.tfrecord"
    path.write_bytes(flat.tobytes())
    parsed = next(iter(tf.data.TFRecordDataset(str(path)).batch(1000).map(
        lambda s: tf.io.parse_example(s, reader.feature_description(with_ids=True)))))
    ref = reference(df, enc)
    for k in encode.RECORD_COLUMNS:
        got = parsed[k].numpy()
        if k == "impression_id":
            assert [g.decode() for g in got] == list(ref[k])
        else:
            np.testing.assert_array_equal(got, ref[k], err_msg=k)
    assert parsed["site_or_app"][0] == features.MISSING_ID
    assert parsed["device_model"][1] == features.MISSING_ID
    assert parsed["browser"][2] == features.OOV_ID
    assert parsed["hour_sin"][3] == 0.0  # missing numeric -> the training mean


def test_encode_records_rejects_bad_batches():
    df = split_frame(4, 1)
    enc = tiny_encoders()
    with pytest.raises(ValueError, match="lacks column.*y_age"):
        encode.encode_records(pa.RecordBatch.from_pandas(df.drop(columns=["y_age"])), enc)
    bad = df.astype({"y_age": "float64"})
    bad.loc[1, "y_age"] = np.nan
    with pytest.raises(ValueError, match="y_age is null in 1 row"):
        encode.encode_records(pa.RecordBatch.from_pandas(bad, preserve_index=False), enc)
    bad = df.copy()
    bad.loc[0, "impression_id"] = None
    with pytest.raises(ValueError, match="impression_id is null"):
        encode.encode_records(pa.RecordBatch.from_pandas(bad, preserve_index=False), enc)


# ---------------------------------------------------------------- shard writer (no Spark)

def _batches(df: pd.DataFrame, size: int):
    for i in range(0, len(df), size):
        yield pa.RecordBatch.from_pandas(df.iloc[i:i + size], preserve_index=False)


def test_write_partition_rolls_shards_and_is_deterministic(tmp_path):
    df = split_frame(53, 3)
    enc = tiny_encoders()
    runs = []
    for k in range(2):
        shards = write_partition(_batches(df, 10), enc, str(tmp_path / f"r{k}"), "train",
                                        task=3, shard_rows=7, compression="GZIP")
        runs.append(shards)
    assert sum(s["rows"] for s in runs[0]) == 53
    assert all(s["rows"] <= 7 for s in runs[0])
    assert {s["region"] for s in runs[0]} == {"NA", "EU"}
    names = [[os.path.relpath(s["path"], str(tmp_path / f"r{k}")) for s in r]
             for k, r in enumerate(runs)]
    assert names[0] == names[1]
    assert names[0][0] == "region=EU/part-00003-0000.tfrecord.gz"
    assert [s["sha256"] for s in runs[0]] == [s["sha256"] for s in runs[1]]
    for s in runs[0]:
        assert listing.sha256_file(s["path"]) == s["sha256"]


def test_failed_writer_publishes_no_shard(tmp_path):
    df = split_frame(30, 3)

    def dying():
        yield from _batches(df, 10)
        raise RuntimeError("executor killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_partition(dying(), tiny_encoders(), str(tmp_path), "train", task=0,
                               shard_rows=1000, compression=None)
    assert storage.list_files(str(tmp_path)) == []  # no shard, no temp file left


# ---------------------------------------------------------------- bounded reading (no Spark)

def local_manifest(root, frames: dict[str, pd.DataFrame], shard_rows: int = 97) -> dict:
    """TFRecords of ``frames`` (split -> rows) written by the shard writer with
    ``tiny_encoders``, and their manifest (as ``convert_splits`` writes it, without Spark)."""
    storage.write_json_atomic(f"{root}/encoders.json", tiny_encoders().to_json())
    manifest = {"root": str(root), "compression": None, "spec_version": features.spec_version(),
                "encoders": f"{root}/encoders.json", "splits": {}}
    for task, (split, df) in enumerate(frames.items()):
        shards = write_partition(_batches(df, 256), tiny_encoders(), f"{root}/split={split}",
                                 split, task, shard_rows, None)
        manifest["splits"][split] = {
            "rows": len(df), "shards": shards,
            "rows_by_region": {str(r): int(n) for r, n in df["region"].value_counts().items()}}
    return manifest


def skewed_split(n: int, seed: int) -> pd.DataFrame:
    """A split whose AgeGender classes run from common to a single row (class 11)."""
    df = split_frame(n, seed)
    rng = np.random.default_rng(seed)
    share = np.r_[np.linspace(30, 1, 11), 0.0]
    y = rng.choice(11, size=n, p=share[:11] / share[:11].sum())
    y[n // 2] = 11
    df["y_age_gender"] = y.astype(np.int32)
    df["y_gender"], df["y_age"] = (y // 6).astype(np.int32), (y % 6).astype(np.int32)
    return df


@pytest.fixture(scope="module")
def big_split(tmp_path_factory):
    """(rows, manifest): a 3000-row train split in 31 shards."""
    df = skewed_split(3000, 5)
    return df, local_manifest(tmp_path_factory.mktemp("big"), {"train": df})


def test_iter_numpy_chunks_are_load_numpy_in_pieces(big_split):
    df, manifest = big_split
    whole = load_numpy(manifest, "train")
    chunks = list(iter_numpy(manifest, "train", chunk_rows=700))
    assert [len(c["impression_id"]) for c in chunks] == [700, 700, 700, 700, 200]
    for k, v in whole.items():
        np.testing.assert_array_equal(np.concatenate([c[k] for c in chunks]), v)
    [one] = list(iter_numpy(manifest, "train", chunk_rows=None))
    assert len(one["impression_id"]) == 3000
    eu = list(iter_numpy(manifest, "train", ["EU"], chunk_rows=10_000))
    assert len(eu) == 1 and len(eu[0]["impression_id"]) == (df["region"] == "EU").sum()
    assert count_labels(manifest, "train") == {
        int(c): int(n) for c, n in sorted(df["y_age_gender"].value_counts().items())}
    with pytest.raises(ValueError, match="chunk_rows"):
        next(iter_numpy(manifest, "train", chunk_rows=0))


def test_load_sample_caps_stratifies_and_is_seeded(big_split):
    df, manifest = big_split
    got, rec = load_sample(manifest, "train", None, max_rows=400, seed=1)
    y = got["y_age_gender"]
    counts = df["y_age_gender"].value_counts().to_dict()
    assert len(y) == rec["rows_used"] == 400 and rec["rows_available"] == 3000
    assert rec["rule"] == SAMPLE_RULE and (rec["max_rows"], rec["seed"]) == (400, 1)
    assert set(np.unique(y)) == set(counts)  # every class keeps rows, the 1-row class too
    assert rec["rows_by_class_used"] == {str(c): q for c, q in
                                         sample_quotas(counts, 400).items()}
    for c, n in counts.items():  # shares kept: within a row of proportional (+1 for class 11)
        assert abs((y == c).sum() - n * 400 / 3000) <= 2
    # the sampled rows are split rows, values intact, in shard order
    whole = load_numpy(manifest, "train")
    pos = {i: k for k, i in enumerate(whole["impression_id"])}
    idx = np.array([pos[i] for i in got["impression_id"]])
    assert (np.diff(idx) > 0).all()
    for k in whole:
        np.testing.assert_array_equal(got[k], whole[k][idx])
    again, _ = load_sample(manifest, "train", None, max_rows=400, seed=1)
    other, _ = load_sample(manifest, "train", None, max_rows=400, seed=2)
    assert list(again["impression_id"]) == list(got["impression_id"])
    assert set(other["impression_id"]) != set(got["impression_id"])
    assert len(other["impression_id"]) == 400
    json.dumps(rec)  # goes into the candidate's summary


def test_load_sample_within_the_cap_reads_everything(big_split):
    df, manifest = big_split
    for cap in (0, 3000, 10**6):
        got, rec = load_sample(manifest, "train", None, max_rows=cap, seed=0)
        assert len(got["impression_id"]) == rec["rows_used"] == rec["rows_available"] == 3000
        assert rec["rule"] != SAMPLE_RULE
    eu, rec = load_sample(manifest, "train", ["EU"], max_rows=50, seed=0)
    assert rec["rows_available"] == (df["region"] == "EU").sum()
    assert len(eu["impression_id"]) == rec["rows_used"] == 50
    assert set(eu["impression_id"]) <= set(df[df["region"] == "EU"]["impression_id"])
    with pytest.raises(ValueError, match="cannot keep a row of each"):
        load_sample(manifest, "train", None, max_rows=5, seed=0)
    with pytest.raises(ValueError, match="max_rows"):
        load_sample(manifest, "train", None, max_rows=-1, seed=0)


def test_sample_quotas_rules():
    assert sample_quotas({0: 1000, 1: 10, 2: 1, 3: 500}, 100) == {0: 65, 1: 1, 2: 1, 3: 33}
    assert sample_quotas({0: 5, 1: 5, 2: 0}, 100) == {0: 5, 1: 5}  # within the cap: all
    assert sum(sample_quotas({c: 7 * c + 1 for c in range(12)}, 97).values()) == 97
    with pytest.raises(ValueError, match="max_rows"):
        sample_quotas({0: 3}, 0)


def _synthetic_chunks(n: int, chunk: int, seed: int = 0):
    """Numpy-dict chunks of a split of ``n`` rows made on the fly (never held whole)."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        yield {"impression_id": np.array([f"i{start + i}" for i in range(m)], dtype=object),
               "y_age_gender": rng.choice(12, size=m, p=np.r_[[0.2] * 4, [0.02] * 8] / 0.96),
               "country": rng.integers(0, 50, m), "hour_sin": rng.normal(size=m)}


def test_sample_memory_does_not_grow_with_the_split():
    """Peak memory of the sampling pass is set by the cap and the chunk, not the split: 40x
    the rows cost no more than 10x (tracemalloc sees numpy's buffers)."""
    import tracemalloc

    from pythia.tfrecords.sample import sample_chunks

    cap, chunk, peaks = 2_000, 5_000, {}
    for n in (20 * cap, 80 * cap):
        counts = np.zeros(12, dtype=np.int64)
        for c in _synthetic_chunks(n, chunk):
            counts += np.bincount(c["y_age_gender"], minlength=12)
        quotas = sample_quotas(dict(enumerate(counts.tolist())), cap)
        tracemalloc.start()
        got = sample_chunks(_synthetic_chunks(n, chunk), quotas, seed=3)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(got["impression_id"]) == cap
        assert set(np.unique(got["y_age_gender"])) == set(range(12))
    assert peaks[80 * cap] < 1.25 * peaks[20 * cap], peaks
    # the read order does not matter: the same rows from the chunks in reverse
    rows = list(_synthetic_chunks(9_000, 1_000, seed=4))
    counts = np.bincount(np.concatenate([r["y_age_gender"] for r in rows]), minlength=12)
    quotas = sample_quotas(dict(enumerate(counts.tolist())), 500)
    forward, backward = (set(sample_chunks(iter(order), quotas, seed=9)["impression_id"])
                         for order in (rows, rows[::-1]))
    assert forward == backward and len(forward) == 500


# ---------------------------------------------------------------- encoders (Spark)

@pytest.mark.spark
def test_fit_encoders_uses_train_counts_only(spark):
    df = split_frame(200, 11)
    df.loc[:3, "metro"] = "rare"  # 4 occurrences < min_count 5
    sdf = spark.createDataFrame(df)
    enc = fit_encoders(spark, sdf)
    for f in features.FEATURES:
        if f.kind == features.CATEGORICAL:
            counts = df[f.name].value_counts().to_dict()
            want = Vocabulary.fit(counts, f.min_count, f.max_vocab)
            assert enc.vocabularies[f.name].values == want.values, f.name
    assert "rare" not in enc.vocabularies["metro"].values
    for name in NUMS:  # statistics of the transformed values (log1p of the counts)
        x = features.transform_values(features.feature_transform(name),
                                      df[name].to_numpy(dtype=np.float64))
        assert enc.numeric[name].transform == features.feature_transform(name)
        assert enc.numeric[name].mean == pytest.approx(x.mean(), abs=1e-6)
        assert enc.numeric[name].std == pytest.approx(x.std(), abs=1e-6)


@pytest.mark.spark
def test_fit_encoders_respects_max_vocab_ties(spark, monkeypatch):
    small = tuple(features.Feature(f.name, f.kind, f.source, min_count=1, max_vocab=2)
                  if f.name == "os" else f for f in features.FEATURES)
    monkeypatch.setattr(features, "FEATURES", small)
    df = split_frame(30, 2)
    df["os"] = ["b", "a", "c", "b", "a", "c"] * 5  # a three-way tie: a, b win by value
    enc = fit_encoders(spark, spark.createDataFrame(df))
    assert enc.vocabularies["os"].values == ["a", "b"]


@pytest.mark.spark
def test_fit_encoders_rejects_bad_train(spark):
    df = split_frame(10, 1)
    with pytest.raises(ValueError, match="lacks feature column.*browser.*run the ETL again"):
        fit_encoders(spark, spark.createDataFrame(df.drop(columns=["browser"])))
    with pytest.raises(ValueError, match="no rows"):
        fit_encoders(spark, spark.createDataFrame(df).limit(0))


# ---------------------------------------------------------------- round trip (Spark)

@pytest.mark.spark
def test_round_trip_values(converted):
    frames, _, out, manifest, encoders = converted
    assert manifest["spec_version"] == features.spec_version()
    assert json.loads(open(os.path.join(out, "manifest.json")).read()) == manifest
    assert storage.read_json(manifest["feature_spec"])["spec_version"] == features.spec_version()
    assert reader.load_encoders(manifest).to_json() == encoders.to_json()
    for split, df in frames.items():
        entry = manifest["splits"][split]
        assert entry["rows"] == len(df)
        assert sum(entry["rows_by_region"].values()) == len(df)
        want = by_id(reference(df, encoders))
        got = load_numpy(manifest, split)
        assert set(got) == set(encode.RECORD_COLUMNS)
        assert got["impression_id"].dtype == object and len(got["impression_id"]) == len(df)
        assert by_id(got) == want, split
        # the Keras view of the same rows
        n = 0
        for feats, labels in make_dataset(manifest, split, batch_size=16):
            assert set(feats) == set(features.FEATURE_NAMES)
            assert set(labels) == set(features.TARGETS)
            assert feats["country"].dtype == tf.int64 and feats["hour_sin"].dtype == tf.float32
            assert labels["age"].dtype == tf.int64
            n += int(labels["gender"].shape[0])
        assert n == len(df)


@pytest.mark.spark
def test_round_trip_missing_and_oov(converted):
    frames, _, _, manifest, _ = converted
    df = frames["validation"]
    got = load_numpy(manifest, "validation")
    row = {i: k for k, i in enumerate(got["impression_id"])}
    assert got["site_or_app"][row[df.loc[0, "impression_id"]]] == features.MISSING_ID
    assert got["device_model"][row[df.loc[1, "impression_id"]]] == features.MISSING_ID
    assert got["browser"][row[df.loc[2, "impression_id"]]] == features.OOV_ID
    assert got["hour_sin"][row[df.loc[3, "impression_id"]]] == 0.0
    assert df.loc[4, "impression_id"] in row


@pytest.mark.spark
def test_regions_and_empty_region(converted):
    frames, _, out, manifest, _ = converted
    val = manifest["splits"]["validation"]
    assert val["rows_by_region"]["APAC"] == 0  # present in train only
    assert not [s for s in val["shards"] if s["region"] == "APAC"]
    assert list(make_dataset(manifest, "validation", ["APAC"])) == []
    assert len(load_numpy(manifest, "validation", ["APAC"])["impression_id"]) == 0
    eu = load_numpy(manifest, "train", ["EU"])
    assert len(eu["impression_id"]) == (frames["train"]["region"] == "EU").sum()
    for s in manifest["splits"]["train"]["shards"]:
        rel = os.path.relpath(s["path"], out)
        assert rel.startswith(f"split=train/region={s['region']}/part-")
        assert s["rows"] <= 40
    with pytest.raises(ValueError, match="unknown region"):
        make_dataset(manifest, "train", ["MARS"])
    with pytest.raises(ValueError, match="no split"):
        load_numpy(manifest, "holdout")


@pytest.mark.spark
def test_shuffled_repeated_dataset(converted):
    _, _, _, manifest, _ = converted
    def first_ids(seed):
        ds = reader._parsed_dataset(manifest, "train", None, 32, True, seed, True, False, True)
        return [b for batch in ds.take(3) for b in batch["impression_id"].numpy()]
    a, b = first_ids(1), first_ids(1)
    assert a == b  # seeded: reproducible
    assert first_ids(2) != a
    batches = list(make_dataset(manifest, "train", batch_size=32, shuffle=True,
                                repeat=True).take(20))
    assert len(batches) == 20  # repeat goes past the 300 rows of one epoch


@pytest.mark.spark
def test_write_split_is_deterministic(spark, splits, tmp_path):
    frames, paths = splits
    enc = tiny_encoders()
    sdf = spark.read.parquet(paths["train"])
    a = write_split(sdf, enc, str(tmp_path / "a"), "train", shard_rows=50)
    b = write_split(sdf, enc, str(tmp_path / "b"), "train", shard_rows=50)
    rel = [[(os.path.relpath(s["path"], str(tmp_path / k)), s["sha256"]) for s in e["shards"]]
           for k, e in (("a", a), ("b", b))]
    assert rel[0] == rel[1] and a["rows"] == len(frames["train"])


@pytest.mark.spark
def test_dataframe_and_file_paths_write_the_same_records(spark, splits, tmp_path):
    frames, paths = splits
    enc = tiny_encoders()
    a = write_split(spark.read.parquet(paths["train"]), enc, str(tmp_path / "a"), "train",
                    shard_rows=64)
    b = write_split_files(spark, paths["train"], enc, str(tmp_path / "b"), "train",
                          shard_rows=64, regions=["MARS"])
    assert a["rows_by_region"] == {r: n for r, n in b["rows_by_region"].items() if r != "MARS"}
    assert b["rows_by_region"]["MARS"] == 0
    manifest = {"compression": None, "spec_version": features.spec_version()}
    got = [by_id(load_numpy({**manifest, "splits": {"train": e}}, "train")) for e in (a, b)]
    assert got[0] == got[1] == by_id(reference(frames["train"], enc))


def test_parquet_units_rejects_bad_folders(tmp_path):
    with pytest.raises(ValueError, match="no Parquet files"):
        parquet_units(str(tmp_path))
    df = split_frame(5, 1).drop(columns=["region"])
    (tmp_path / "_SUCCESS").write_bytes(b"")
    pa.parquet.write_table(pa.Table.from_pandas(df), str(tmp_path / "part-0.parquet"))
    with pytest.raises(ValueError, match="lacks column.*region"):
        parquet_units(str(tmp_path))


@pytest.mark.spark
def test_killed_writer_leftover_is_never_read_and_is_cleaned(spark, splits, tmp_path):
    _, paths = splits
    enc = tiny_encoders()
    sdf = spark.read.parquet(paths["test_resampled"])
    out = str(tmp_path / "t")
    entry = write_split(sdf, enc, out, "test_resampled", shard_rows=1000)
    manifest = {"root": out, "compression": None, "spec_version": features.spec_version(),
                "encoders": "", "feature_spec": "", "splits": {"test_resampled": entry}}
    region_dir = os.path.dirname(entry["shards"][0]["path"])
    leftover = os.path.join(region_dir, ".tmp-0123abcd-part-00009-0000.tfrecord")
    with open(leftover, "wb") as f:
        f.write(b"\x00half a record")
    assert leftover not in {s["path"] for s in entry["shards"]}
    assert len(load_numpy(manifest, "test_resampled")["impression_id"]) == entry["rows"]
    write_split(sdf, enc, out, "test_resampled", shard_rows=1000)  # a rerun tidies up
    assert not os.path.exists(leftover)


@pytest.mark.spark
def test_checksum_mismatch_detected(converted, tmp_path):
    _, _, _, manifest, _ = converted
    assert verify_shards(manifest, "train") == len(manifest["splits"]["train"]["shards"])
    bad = json.loads(json.dumps(manifest))
    bad["splits"]["train"]["shards"][0]["sha256"] = "0" * 64
    with pytest.raises(ValueError, match="checksum mismatch"):
        verify_shards(bad, "train")
    with pytest.raises(ValueError, match="checksum mismatch"):
        make_dataset(bad, "train", verify=True)
    gone = json.loads(json.dumps(manifest))
    gone["splits"]["train"]["shards"][0]["path"] = str(tmp_path / "nope.tfrecord")
    with pytest.raises(FileNotFoundError, match="nope.tfrecord"):
        verify_shards(gone, "train")


@pytest.mark.spark
def test_convert_splits_rejects_bad_arguments(spark, splits, tmp_path):
    _, paths = splits
    with pytest.raises(ValueError, match="missing \\['test_natural'\\]"):
        convert_splits(spark, {k: v for k, v in paths.items() if k != "test_natural"},
                       str(tmp_path))
    with pytest.raises(ValueError, match="compression"):
        convert_splits(spark, paths, str(tmp_path), compression="ZSTD")
    with pytest.raises(ValueError, match="shard_rows"):
        write_split(spark.read.parquet(paths["train"]), tiny_encoders(), str(tmp_path),
                    "train", shard_rows=0)


def test_spec_version_mismatch_refused():
    manifest = {"spec_version": "000000000000", "splits": {"train": {"shards": []}}}
    with pytest.raises(ValueError, match="feature spec"):
        make_dataset(manifest, "train")


def test_feature_spec_covers_every_record_column():
    spec = writer.feature_spec()
    assert spec["spec_version"] == features.spec_version()
    assert list(spec["tfrecord"]) == list(encode.RECORD_COLUMNS)
    assert spec["tfrecord"]["country"]["dtype"] == "int64"
    assert spec["tfrecord"]["hour_cos"]["dtype"] == "float32"
    assert spec["tfrecord"]["impression_id"]["dtype"] == "string"


# ---------------------------------------------------------------- S3 (moto)

def test_s3_shards_round_trip(tmp_path, monkeypatch):
    s3_fixtures = pytest.importorskip("s3_fixtures")
    server, endpoint = s3_fixtures.start_moto_server()
    try:
        env = s3_fixtures.s3_environment(endpoint, s3_fixtures.BUCKET, str(tmp_path / "mf"))
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("PYTHIA_TFRECORD_CACHE", str(tmp_path / "cache"))
        import boto3
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=s3_fixtures.BUCKET)
        df = split_frame(25, 5)
        enc = tiny_encoders()
        root = f"s3://{s3_fixtures.BUCKET}/tfr"
        shards = write_partition(_batches(df, 10), enc, f"{root}/split=test_natural",
                                        "test_natural", task=0, shard_rows=8,
                                        compression="GZIP")
        assert all(s["path"].startswith(root + "/split=test_natural/region=") for s in shards)
        assert sorted(storage.list_files(root)) == sorted(s["path"] for s in shards)
        manifest = {"root": root, "compression": "GZIP", "spec_version": features.spec_version(),
                    "encoders": "", "feature_spec": "",
                    "splits": {"test_natural": {"rows": 25, "rows_by_region": {},
                                                "shards": shards}}}
        got = load_numpy(manifest, "test_natural", verify=True)
        assert by_id(got) == by_id(reference(df, enc))
    finally:
        server.stop()


def test_a_shuffled_read_mixes_every_shard_in_proportion_all_epoch(tmp_path, monkeypatch):
    # 8 shards of unequal size (2 units x 4 regions, as a split of 2x the default world's
    # rows): every quarter of an epoch holds each shard's records in proportion to its rows
    # (interleaving 4 files at a time spent half the epoch on 4 of the 8), every record once
    import collections

    import tensorflow as tf
    sizes = [12000, 4000, 24000, 8000, 10000, 4800, 20000, 9200]
    monkeypatch.setattr(reader, "MIX_BLOCK", 8)  # blocks small against the shards, as in a run
    files = []
    for i, n in enumerate(sizes):
        path = str(tmp_path / f"part-{i}.tfrecord")
        with tf.io.TFRecordWriter(path) as w:
            for j in range(n):
                w.write(f"{i}:{j}".encode())
        files.append(path)
    out = [r.decode() for r in reader._proportional_mix(files, sizes, "", seed=3)
           .as_numpy_iterator()]
    assert sorted(out) == sorted(f"{i}:{j}" for i, n in enumerate(sizes) for j in range(n))
    total = sum(sizes)
    for quarter in np.array_split(np.array(out), 4):
        counts = collections.Counter(r.split(":")[0] for r in quarter)
        for i, n in enumerate(sizes):
            assert counts[str(i)] / len(quarter) == pytest.approx(n / total, abs=0.05), i
    again = [r.decode() for r in reader._proportional_mix(files, sizes, "", seed=3)
             .as_numpy_iterator()]
    assert again == out  # seeded
