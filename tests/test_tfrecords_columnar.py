"""The TensorFlow-free reader (``tfrecords.columnar``) against the tf.data one.

On splits converted by both engines (hand-made ones with nulls, "", NaN, ±inf, unseen values,
unicode ids, an empty and a one-row split, several regions, row groups and files; and the tiny
world's), ``columnar.iter_numpy`` yields exactly the chunks ``reader.iter_numpy_tf`` yields
(keys, dtypes, values, order) for every split, region selection and chunk size;
``count_labels`` and ``load_sample`` agree; a changed or missing source Parquet is refused in
one line; an older manifest falls back to tf.data with one line; S3 sources read the same; and
a class_prior or logreg candidate fits and predicts without importing TensorFlow or Keras.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from pythia import tfrecords
from pythia.tfrecords import columnar, layout, reader, writer_local
from pythia.tfrecords.sample import load_sample

from s3_fixtures import moto_s3, s3_env  # noqa: F401  (S3 fixtures)
from test_tfrecords import skewed_split
from test_tfrecords_local import both, edge_frames, tiny_splits, write_inputs  # noqa: F401

SPLITS = layout.SPLITS


def assert_same_chunks(got: list[dict], want: list[dict], what: str) -> None:
    assert len(got) == len(want), f"{what}: {len(got)} chunks, want {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        assert list(g) == list(w), what
        for k in w:
            assert g[k].dtype == w[k].dtype, f"{what} chunk {i} {k}"
            assert g[k].shape == w[k].shape, f"{what} chunk {i} {k}"
            np.testing.assert_array_equal(g[k], w[k], err_msg=f"{what} chunk {i} {k}")


def without_source(manifest: dict) -> dict:
    old = copy.deepcopy(manifest)
    for entry in old["splits"].values():
        entry.pop("source", None)
    return old


# (chunk_rows, batch_size): batch_size sets the interleaved block (min of the two)
READS = ((1, 8192), (7, 8192), (7, 5), (None, 8192), (None, 5))


def assert_reads_like_tf(manifest: dict, region_lists, reads=READS) -> None:
    for split in SPLITS:
        assert columnar.has_source(manifest, split)
        for regions in region_lists:
            for chunk_rows, batch_size in reads:
                what = f"{split} {regions} chunk_rows={chunk_rows} batch_size={batch_size}"
                want = list(reader.iter_numpy_tf(manifest, split, regions, chunk_rows,
                                                 batch_size=batch_size))
                got = list(columnar.iter_numpy(manifest, split, regions, chunk_rows,
                                               batch_size=batch_size))
                assert_same_chunks(got, want, what)
                if chunk_rows is not None:
                    assert all(len(c["impression_id"]) == chunk_rows for c in got[:-1])
            assert columnar.count_labels(manifest, split, regions) == \
                reader.count_labels_tf(manifest, split, regions), f"{split} {regions}"
            assert_same_chunks([reader.load_numpy(manifest, split, regions)],
                               [reader.load_numpy(without_source(manifest), split, regions)],
                               f"load_numpy {split} {regions}")


@pytest.mark.spark
@pytest.mark.parametrize("how", ["spark", "arrow"])
def test_columnar_reads_what_tf_reads_on_both_engines(spark, tmp_path, how):
    frames = edge_frames()
    frames["validation"]["impression_id"] = [f"ü-{i}-記録" for i in range(len(frames["validation"]))]
    split_paths = write_inputs(spark, frames, str(tmp_path / "in"), how)
    runs = both(spark, split_paths, str(tmp_path), shard_rows=40)
    if how == "arrow":  # several files, several row groups per file
        assert [len(f["row_groups"]) for f in runs["driver"][0]["splits"]["train"]["source"]
                ["files"]] == [5, 1]
    for engine, (manifest, _) in runs.items():
        assert_reads_like_tf(manifest, [None, ["EU", "NA"], ["APAC"]])


@pytest.mark.spark
def test_columnar_reads_the_tiny_world_like_tf(spark, tiny_splits):  # noqa: F811
    tmp, split_manifests = tiny_splits
    runs = both(spark, dict(split_manifests["driver"]["paths"]),
                os.path.join(tmp, "columnar"))
    for engine, (manifest, _) in runs.items():
        regions = [r for r, n in manifest["splits"]["train"]["rows_by_region"].items() if n]
        assert_reads_like_tf(manifest, [None, regions[:1], regions[::-1]],
                             reads=((7, 8192), (4096, 8192), (None, 8192)))


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    """Splits over a sample cap (train 3000 rows, validation 1000: each region over 400) in
    several row groups."""
    root = tmp_path_factory.mktemp("skewed")
    paths = {}
    for i, split in enumerate(SPLITS):
        df = skewed_split({"train": 3000, "validation": 1000}.get(split, 300), 20 + i)
        paths[split] = str(root / "in" / split)
        os.makedirs(paths[split])
        import pyarrow as pa
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False),
                       os.path.join(paths[split], "part-0.parquet"), row_group_size=700)
    manifest, _ = writer_local.convert_splits(paths, str(root / "tfr"), shard_rows=300)
    return paths, manifest


@pytest.mark.parametrize("max_rows", [400, 0])
@pytest.mark.parametrize("regions", [None, ["EU"]])
def test_load_sample_draws_the_same_rows_either_way(skewed, max_rows, regions):
    _, manifest = skewed
    for split in ("train", "validation"):
        got, rec = load_sample(manifest, split, regions, max_rows, seed=3, chunk_rows=257)
        want, want_rec = load_sample(without_source(manifest), split, regions, max_rows,
                                     seed=3, chunk_rows=257)
        assert rec == want_rec
        assert_same_chunks([got], [want], f"sample {split} {regions}")
    if max_rows:
        assert rec["rows_used"] == 400 and rec["rows_available"] > 400


def test_a_changed_or_missing_source_is_refused(skewed, tmp_path):
    paths, manifest = skewed
    assert len(list(columnar.iter_numpy(manifest, "test_natural"))) == 1
    moved = copy.deepcopy(manifest)
    source = moved["splits"]["test_natural"]["source"]["files"][0]
    # the same rows rewritten with other row groups: another footer
    table = pq.read_table(source["path"])
    other = str(tmp_path / "rewritten.parquet")
    pq.write_table(table, other, row_group_size=100)
    source["path"] = other
    with pytest.raises(ValueError) as err:
        next(columnar.iter_numpy(moved, "test_natural"))
    msg = str(err.value)
    assert "test_natural" in msg and other in msg and "changed" in msg \
        and "rerun to_tfrecords" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="rerun to_tfrecords"):
        columnar.count_labels(moved, "test_natural")
    source["path"] = str(tmp_path / "gone.parquet")
    with pytest.raises(ValueError, match=r"gone\.parquet is gone since .*rerun to_tfrecords"):
        next(columnar.iter_numpy(moved, "test_natural"))
    # the public readers go the same way (no silent fallback to stale data)
    with pytest.raises(ValueError, match="rerun to_tfrecords"):
        reader.load_numpy(moved, "test_natural")


def test_an_older_manifest_falls_back_to_tf_with_one_line(skewed, capsys, monkeypatch):
    _, manifest = skewed
    monkeypatch.setattr(reader, "_FELL_BACK", set())
    old = without_source(manifest)
    for split in ("validation", "test_natural"):
        reader.load_numpy(old, split)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "does not name its source Parquet" in out[0] \
        and "rerun to_tfrecords" in out[0]


def test_the_columnar_reader_reads_s3_sources(tmp_path, s3_env, moto_s3):  # noqa: F811
    from pythia import storage
    frames = edge_frames()
    local = write_inputs(None, frames, str(tmp_path / "in"), "arrow")
    paths = {}
    for split, folder in local.items():
        paths[split] = f"{s3_env['PYTHIA_DATA_ROOT']}/splits/{split}"
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as f:
                storage.write_bytes_atomic(f"{paths[split]}/{name}", f.read())
    manifest, _ = writer_local.convert_splits(paths, f"{s3_env['PYTHIA_DATA_ROOT']}/tfr",
                                              shard_rows=40)
    assert manifest["splits"]["train"]["source"]["uri"] == paths["train"]
    assert_reads_like_tf(manifest, [None, ["NA"]], reads=((7, 8192), (None, 8192)))


_NO_TF = """
import json, sys
from pythia.config import TrainConfig
from pythia.models import fit_candidate
from pythia.tfrecords import read_manifest
args = json.loads(sys.argv[1])
p = {t: [1 / k] * k for t, k in {"gender": 2, "age": 6, "age_gender": 12}.items()}
out = {}
for name in args["models"]:
    s = fit_candidate(name, "global", 0, {}, read_manifest(args["tfr"]), {"train": p, "natural": p},
                      args["out"] + "/model-" + name, args["out"] + "/" + name + ".parquet",
                      TrainConfig(max_train_rows=400, max_epochs=1))
    out[name] = s["n_predicted"]
print(json.dumps({"predicted": out,
                  "loaded": sorted(m for m in ("tensorflow", "keras") if m in sys.modules)}))
"""


@pytest.mark.parametrize("models,loaded", [(["class_prior", "logreg"], []),
                                           (["mlp"], ["keras", "tensorflow"])])
def test_numpy_candidates_never_import_tensorflow(skewed, tmp_path, models, loaded):
    _, manifest = skewed
    arg = json.dumps({"models": models, "tfr": manifest["root"], "out": str(tmp_path)})
    out = subprocess.run([sys.executable, "-c", _NO_TF, arg], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["loaded"] == loaded  # the MLP still trains from tf.data
    rows = {"validation": 1000, "test_natural": 300, "test_resampled": 300}
    assert got["predicted"] == {m: rows for m in models}
    for m in models:
        assert pq.read_table(str(tmp_path / f"{m}.parquet")).num_rows == 1600


def test_interleave_replays_tf_data_order():
    """The replayed order for shards of uneven sizes, against tf.data itself."""
    tf = pytest.importorskip("tensorflow")
    sizes = [5, 1, 9, 3, 7, 2, 4]
    for block in (1, 2, 3, 8):
        for cycle in (1, 2, 4):
            ds = tf.data.Dataset.from_tensor_slices(tf.constant(sizes, tf.int64)).enumerate()
            ds = ds.interleave(lambda i, n: tf.data.Dataset.range(n).map(
                lambda r: tf.stack([i, r])).batch(block), cycle_length=cycle)
            want = [(int(b[0, 0]), int(b[0, 1]), int(b[-1, 1]) + 1)
                    for b in ds.as_numpy_iterator()]
            assert list(columnar._interleave(sizes, block, cycle)) == want, (block, cycle)


def test_the_package_exports_the_readers():
    assert tfrecords.iter_numpy is reader.iter_numpy
    assert tfrecords.count_labels is reader.count_labels
