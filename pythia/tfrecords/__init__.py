"""Spec-driven TFRecords: split Parquet -> sharded ``tf.train.Example`` files -> tf.data.

Layout under the TFRecord root (``RunPaths.tfrecords``)::

    feature_spec.json  encoders.json  manifest.json
    split=<split>/region=<region>/part-<unit>-<seq>.tfrecord[.gz]

Writing runs on Spark (``writer``: ``convert_splits``, ``write_split[_files]``,
``fit_encoders``) or, for small runs, on the driver without a JVM (``writer_local``); both
build the same files through ``layout`` (units, manifest, encoders from counts) and ``shards``.
Encoding and framing are TensorFlow-free (``encode``, ``wire``). ``make_dataset`` (tf.data, for
Keras) imports TensorFlow lazily; the numpy readers (``iter_numpy``, ``load_numpy``,
``count_labels``, and ``load_sample``: a bounded class-stratified sample, see ``sample``) read
the split's source Parquet without TensorFlow (``columnar``) when the manifest names it, else
through tf.data. The Spark names import pyspark only when first used, so importing this package
stays cheap on Spark workers and on the driver path.
"""
from pythia.tfrecords.encode import encode_records
from pythia.tfrecords.layout import SPLITS, feature_spec, parquet_units, read_manifest
from pythia.tfrecords.reader import (count_labels, feature_description, iter_numpy,
                                     load_encoders, load_numpy, make_dataset, verify_shards)
from pythia.tfrecords.sample import SAMPLE_RULE, load_sample, sample_quotas

_SPARK_NAMES = ("convert_splits", "fit_encoders", "write_split", "write_split_files")


def __getattr__(name: str):
    if name in _SPARK_NAMES:  # pyspark only for whoever uses the Spark writer
        from pythia.tfrecords import writer
        return getattr(writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def convert(split_manifest: dict, params, paths) -> tuple[dict, dict]:
    """The to_tfrecords step: vocabularies/statistics from the train days, TFRecord shards per
    split and region. Returns (manifest, encoders as JSON).

    On the driver (``writer_local``, no JVM) when the splits' footer rows fit
    ``providers_local.use_driver`` and the run is local, else Spark (``writer``); the same
    files either way, and one line says which engine and why. Each region's rows are written
    in the seeded order of ``permute`` (the run's seed, recorded in the manifest), so every
    shard mixes its split's day instead of holding a stretch of it."""
    from pythia import providers_local
    from pythia.tfrecords import layout, writer_local
    split_paths = dict(split_manifest["paths"])
    files = [f for s in SPLITS if s in split_paths for f in layout.parquet_files(split_paths[s])]
    args = (split_paths, paths.tfrecords)
    kw = {"age_edges": params.etl.age_edges, "shuffle_seed": int(params.seed)}
    done = providers_local.on_driver(
        "to_tfrecords", files, params, lambda: writer_local.convert_splits(*args, **kw))
    if done is None:
        from pythia.etl.session import spark_session
        from pythia.tfrecords.writer import convert_splits
        with spark_session("pythia-tfrecords", params) as spark:
            done = convert_splits(spark, *args, **kw)
    manifest, encoders = done
    splits = manifest["splits"]
    print(f"{providers_local.engine('to_tfrecords')}: "
          f"{sum(len(s['shards']) for s in splits.values())} shard files under "
          f"{manifest['root']}; rows: "
          + ", ".join(f"{name} {s['rows']:,}" for name, s in splits.items()))
    return manifest, encoders.to_json()


__all__ = [
    "SAMPLE_RULE", "SPLITS", "convert", "convert_splits", "count_labels", "encode_records",
    "feature_description", "feature_spec", "fit_encoders", "iter_numpy", "load_encoders",
    "load_numpy", "load_sample", "make_dataset", "parquet_units", "read_manifest",
    "sample_quotas", "verify_shards", "write_split", "write_split_files",
]
