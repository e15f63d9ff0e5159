"""Reading TFRecord shards back: tf.data pipelines for Keras, numpy dicts for the other models
(from the split's source Parquet without TensorFlow, ``columnar``, when the manifest names it;
``iter_numpy_tf`` / ``count_labels_tf`` are the tf.data readers it must equal).

Readers open only the shards the manifest lists (``listing``; never a folder listing), so a
``.tmp-*`` file left by a killed writer is never read. ``s3://`` shards are fetched once into a
local, content-addressed cache (keyed by their sha256, which is checked on download).
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from pythia import features
from pythia.tfrecords import encode
from pythia.tfrecords.listing import (  # noqa: F401  (load_encoders, verify_shards: re-exported)
    CYCLE_LENGTH, column_dtypes, load_encoders, local_path, select_shards, verify_shards)

SHUFFLE_BUFFER_BATCHES = 16  # record shuffle buffer = this many batches (>= 10k records)
MIX_BLOCK = 64  # records read from one shard at a time by a shuffled read


def feature_description(with_ids: bool = False, keys: Sequence[str] | None = None) -> dict:
    """``tf.io.parse_example`` spec for our records (from ``features.FEATURES``); ``keys``
    restricts it to those columns (the rest of each record is skipped)."""
    import tensorflow as tf
    desc = {f.name: tf.io.FixedLenFeature([], tf.int64 if f.kind == features.CATEGORICAL
                                          else tf.float32) for f in features.FEATURES}
    desc.update({c: tf.io.FixedLenFeature([], tf.int64) for c in encode.LABEL_COLUMNS})
    if with_ids:  # the keys: the user's group (-1 in shards written before it) and the id
        desc[encode.GROUP_COLUMN] = tf.io.FixedLenFeature([], tf.int64, default_value=-1)
        desc[encode.ID_COLUMN] = tf.io.FixedLenFeature([], tf.string)
    if keys is not None:
        unknown = [k for k in keys if k not in desc]
        if unknown:
            raise ValueError(f"unknown record column(s) {unknown}; known: {sorted(desc)}")
        desc = {k: desc[k] for k in keys}
    return desc


def _parsed_dataset(manifest: Mapping[str, Any], split: str, regions: Sequence[str] | None,
                    batch_size: int, shuffle: bool, seed: int, repeat: bool, verify: bool,
                    with_ids: bool, shape=None, keys: Sequence[str] | None = None):
    """Batches of parsed records: flat dicts (every feature, label and optionally the id), or
    ``shape(parsed)`` applied inside the same parallel map."""
    import tensorflow as tf
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    shards = select_shards(manifest, split, regions)
    if verify:
        verify_shards(manifest, split, regions)
    files = [local_path(s) for s in shards]
    compression = manifest.get("compression") or ""
    desc = feature_description(with_ids, keys)
    if shuffle and files:
        ds = _proportional_mix(files, [int(s.get("rows") or 0) for s in shards], compression,
                               seed)
        if repeat:
            ds = ds.repeat()
        ds = ds.shuffle(max(10_000, SHUFFLE_BUFFER_BATCHES * batch_size), seed=seed,
                        reshuffle_each_iteration=True).batch(batch_size)
    else:
        ds = tf.data.Dataset.from_tensor_slices(tf.constant(files, dtype=tf.string))
        if repeat:
            ds = ds.repeat()
        cycle = max(1, min(CYCLE_LENGTH, len(files)))
        # The same order as a deterministic parallel interleave, read one batch at a time:
        # the parallel one buffered batches of the files ahead, so its memory grew with the
        # split (+170 MB from 100k to 400k rows); the parse below stays parallel.
        ds = ds.interleave(
            lambda f: tf.data.TFRecordDataset(f, compression_type=compression).batch(batch_size),
            cycle_length=cycle)
    shape = shape or (lambda parsed: parsed)
    return ds.map(lambda s: shape(tf.io.parse_example(s, desc)),
                  num_parallel_calls=tf.data.AUTOTUNE)


def _proportional_mix(files: Sequence[str], rows: Sequence[int], compression: str, seed: int):
    """Every shard read at once, blocks of ``MIX_BLOCK`` records drawn from each with
    probability proportional to its rows, so any stretch of an epoch is a sample of the whole
    split (every region and every unit in proportion) and all shards run out together.
    Interleaving ``CYCLE_LENGTH`` files at a time did this only when the split had exactly that
    many shards: with one unit per region and 4 regions. A world with 2x the default's train
    rows has 8 and spent half of each epoch on a few regions' shards (docs/mlp-power-users.md,
    session 32)."""
    import tensorflow as tf
    # each shard's blocks prefetched by its own thread: the shards are read in parallel
    blocks = [tf.data.TFRecordDataset(f, compression_type=compression).batch(MIX_BLOCK)
              .prefetch(tf.data.AUTOTUNE) for f in files]
    if len(blocks) == 1:
        return blocks[0].unbatch()
    # a manifest without row counts: every shard alike; an empty shard: a weight of one row
    weights = [max(r, 1) for r in rows] if any(r > 0 for r in rows) else [1] * len(rows)
    weights = [w / sum(weights) for w in weights]
    return tf.data.Dataset.sample_from_datasets(
        blocks, weights=weights, seed=seed, stop_on_empty_dataset=False,
        rerandomize_each_iteration=True).unbatch()


def make_dataset(manifest: Mapping[str, Any], split: str, regions: list[str] | None = None,
                 batch_size: int = 1024, shuffle: bool = False, seed: int = 0,
                 repeat: bool = False, verify: bool = False, with_ids: bool = False):
    """A ``tf.data.Dataset`` of ``(features_dict, labels_dict)`` batches for Keras.

    ``features_dict`` maps every ``features.FEATURES`` name to a (batch,) tensor (int64 ids for
    categoricals, float32 for numerics); ``labels_dict`` maps ``gender``/``age``/``age_gender``
    to int64. Shards are read in parallel (interleave of per-file batches, or of records then
    a seeded shuffle when ``shuffle``), parsed a batch at a time, and prefetched.

    Args:
        manifest: from ``convert_splits``.
        split: which split.
        regions: model regions to read; None = all (the global model).
        batch_size: records per batch (the last batch of a file may be smaller when not shuffling).
        shuffle: shuffle shard order and records (seeded, so reproducible).
        seed: the shuffle seed.
        repeat: repeat forever (one pass per epoch otherwise).
        verify: check every shard's sha256 first.
        with_ids: ``features_dict`` also carries the impression id (bytes), e.g. for the MLP's
            seeded temperature sample (``models.mlp_valid``), and the user's group (int64,
            -1 in shards written before it: the activity cut's noise test); Keras inputs
            ignore both.

    Raises:
        ValueError: unknown split or region, feature-spec mismatch, checksum mismatch.
    """
    import tensorflow as tf

    def to_pair(parsed):
        names = features.FEATURE_NAMES + ((encode.GROUP_COLUMN, encode.ID_COLUMN)
                                          if with_ids else ())
        feats = {name: parsed[name] for name in names}
        labels = {t: parsed[col] for t, col in features.LABEL_COLUMNS.items()}
        return feats, labels
    ds = _parsed_dataset(manifest, split, regions, batch_size, shuffle, seed, repeat, verify,
                         with_ids=with_ids, shape=to_pair)
    return ds.prefetch(tf.data.AUTOTUNE)


def _concat(parts: Mapping[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """Parsed batches -> one numpy dict (ids decoded to str)."""
    dtypes = column_dtypes()
    out: dict[str, np.ndarray] = {}
    for k, chunks in parts.items():
        arr = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtypes[k])
        if k == encode.ID_COLUMN:
            arr = np.array([b.decode() if isinstance(b, bytes) else b for b in arr], dtype=object)
        out[k] = arr
    return out


_FELL_BACK: set = set()


def _columnar(manifest: Mapping[str, Any], split: str) -> bool:
    """Whether ``columnar`` reads the split (its manifest names the source Parquet); else one
    line per manifest root says the tf.data reader does."""
    from pythia.tfrecords import columnar
    if columnar.has_source(manifest, split) or split not in manifest.get("splits", {}):
        return columnar.has_source(manifest, split)
    if manifest.get("root") not in _FELL_BACK:
        _FELL_BACK.add(manifest.get("root"))
        print(f"tfrecords: the manifest under {manifest.get('root')} does not name its source "
              f"Parquet and encoders (written before the columnar reader): reading with "
              f"tf.data; rerun to_tfrecords to read without TensorFlow")
    return False


def iter_numpy(manifest: Mapping[str, Any], split: str, regions: list[str] | None = None,
               chunk_rows: int | None = 65_536, verify: bool = False,
               batch_size: int = 8192) -> Iterator[dict[str, np.ndarray]]:
    """The split (or its regions) as numpy dicts of at most ``chunk_rows`` rows, in the
    order of ``iter_numpy_tf``; memory holds one chunk. ``chunk_rows=None`` yields the whole
    split as one chunk. Read without TensorFlow from the split's Parquet (``columnar``) when
    the manifest names it, else through tf.data (``iter_numpy_tf``).

    Yields:
        Dicts like ``load_numpy``'s; nothing for an empty split.
    """
    if _columnar(manifest, split):
        from pythia.tfrecords import columnar
        return columnar.iter_numpy(manifest, split, regions, chunk_rows, verify, batch_size)
    return iter_numpy_tf(manifest, split, regions, chunk_rows, verify, batch_size)


def iter_numpy_tf(manifest: Mapping[str, Any], split: str, regions: list[str] | None = None,
                  chunk_rows: int | None = 65_536, verify: bool = False,
                  batch_size: int = 8192) -> Iterator[dict[str, np.ndarray]]:
    """``iter_numpy`` through tf.data: batches of ``batch_size`` rows (at most
    ``chunk_rows``) of up to ``CYCLE_LENGTH`` shards interleaved, parsed from the shards."""
    from pythia import quiet
    tf = quiet.import_tensorflow()
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1 (or None), got {chunk_rows}")
    step = batch_size if chunk_rows is None else min(batch_size, chunk_rows)
    ds = _parsed_dataset(manifest, split, regions, step, shuffle=False, seed=0,
                         repeat=False, verify=verify, with_ids=True).prefetch(tf.data.AUTOTUNE)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in encode.RECORD_COLUMNS}
    pending = 0
    for batch in ds.as_numpy_iterator():
        for k in parts:
            parts[k].append(batch[k])
        pending += len(batch[encode.ID_COLUMN])
        if chunk_rows is not None and pending >= chunk_rows:
            whole = _concat(parts)
            yield {k: v[:chunk_rows] for k, v in whole.items()}
            rest = {k: v[chunk_rows:] for k, v in whole.items()}
            pending = len(rest[encode.ID_COLUMN])
            parts = {k: ([v] if pending else []) for k, v in rest.items()}
    if pending or chunk_rows is None:
        whole = _concat(parts)
        if len(whole[encode.ID_COLUMN]) or chunk_rows is None:
            yield whole


def count_labels(manifest: Mapping[str, Any], split: str, regions: list[str] | None = None,
                 column: str = features.LABEL_COLUMNS["age_gender"],
                 batch_size: int = 65_536) -> dict[int, int]:
    """Rows per value of a label ``column`` (reading that column only): {value: rows};
    from the split's Parquet (``columnar``) when the manifest names it, else tf.data."""
    if _columnar(manifest, split):
        from pythia.tfrecords import columnar
        return columnar.count_labels(manifest, split, regions, column)
    return count_labels_tf(manifest, split, regions, column, batch_size)


def count_labels_tf(manifest: Mapping[str, Any], split: str, regions: list[str] | None = None,
                    column: str = features.LABEL_COLUMNS["age_gender"],
                    batch_size: int = 65_536) -> dict[int, int]:
    """``count_labels`` through tf.data (parsing that column only)."""
    counts: dict[int, int] = {}
    ds = _parsed_dataset(manifest, split, regions, batch_size, shuffle=False, seed=0,
                         repeat=False, verify=False, with_ids=False, keys=[column])
    for batch in ds.as_numpy_iterator():
        values, n = np.unique(batch[column], return_counts=True)
        for v, c in zip(values.tolist(), n.tolist()):
            counts[int(v)] = counts.get(int(v), 0) + int(c)
    return dict(sorted(counts.items()))


def load_numpy(manifest: Mapping[str, Any], split: str, regions: list[str] | None = None,
               verify: bool = False, batch_size: int = 8192) -> dict[str, np.ndarray]:
    """The whole split (or its regions) as numpy arrays. Memory grows with the split: the
    training step reads a bounded sample instead (``sample.load_sample``) and predicts chunk
    by chunk (``iter_numpy``).

    Returns:
        Every ``features.FEATURES`` name (int64 ids / float32), ``y_gender``, ``y_age``,
        ``y_age_gender`` (int64), ``user_group`` (int64) and ``impression_id`` (object array
        of str), in shard order.
    """
    return next(iter_numpy(manifest, split, regions, chunk_rows=None, verify=verify,
                           batch_size=batch_size))
