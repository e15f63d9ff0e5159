"""Spec-driven TFRecords: Spark split Parquet -> sharded ``tf.train.Example`` files -> tf.data.

Layout under the TFRecord root (``RunPaths.tfrecords``)::

    feature_spec.json  encoders.json  manifest.json
    split=<split>/region=<region>/part-<task>-<seq>.tfrecord[.gz]

Writing (``convert_splits``, ``write_split[_files]``, ``fit_encoders``) runs on Spark; encoding and
framing are TensorFlow-free (``encode``, ``wire``). Reading (``make_dataset``, ``iter_numpy``,
``load_numpy``, and ``load_sample``: a bounded class-stratified sample, see ``sample``) imports
TensorFlow lazily, so importing this package stays cheap on Spark workers.
"""
from pythia.tfrecords.encode import encode_records
from pythia.tfrecords.reader import (count_labels, feature_description, iter_numpy,
                                     load_encoders, load_numpy, make_dataset, verify_shards)
from pythia.tfrecords.sample import SAMPLE_RULE, load_sample, sample_quotas
from pythia.tfrecords.writer import (SPLITS, convert_splits, feature_spec, fit_encoders,
                                     parquet_units, read_manifest, write_split,
                                     write_split_files)



def convert(split_manifest: dict, params, paths) -> tuple[dict, dict]:
    """The to_tfrecords step: vocabularies/statistics from the train days, TFRecord shards per
    split and region. Returns (manifest, encoders as JSON)."""
    from pythia.etl.session import spark_session
    with spark_session("pythia-tfrecords", params) as spark:
        manifest, encoders = convert_splits(spark, dict(split_manifest["paths"]),
                                            paths.tfrecords, age_edges=params.etl.age_edges)
    splits = manifest["splits"]
    print(f"to_tfrecords: {sum(len(s['shards']) for s in splits.values())} shard files under "
          f"{manifest['root']}; rows: "
          + ", ".join(f"{name} {s['rows']:,}" for name, s in splits.items()))
    return manifest, encoders.to_json()


__all__ = [
    "SAMPLE_RULE", "SPLITS", "convert", "convert_splits", "count_labels", "encode_records",
    "feature_description", "feature_spec", "fit_encoders", "iter_numpy", "load_encoders",
    "load_numpy", "load_sample", "make_dataset", "parquet_units", "read_manifest",
    "sample_quotas", "verify_shards", "write_split", "write_split_files",
]
