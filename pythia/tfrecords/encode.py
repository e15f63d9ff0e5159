"""Arrow batch -> framed TFRecord bytes, by the one feature spec (``pythia.features``).

TensorFlow-free so Spark workers stay light. Categorical ids come from ``features.Vocabulary``
applied to each column's distinct values (Arrow dictionary encoding), numerics from
``features.NumericStats``; the wire bytes are built by ``wire`` for the whole batch at once.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pythia import buckets, features
from pythia.features import Encoders
from pythia.tfrecords import wire

ID_COLUMN = features.IMPRESSION_ID
GROUP_COLUMN = features.USER_GROUP  # from the input's user_id (``user_groups``)
REGION_COLUMN = features.REGION
LABEL_COLUMNS: tuple[str, ...] = tuple(features.LABEL_COLUMNS.values())
# Every column an Example carries, in record order: features, labels, the user's group, then
# the join key.
RECORD_COLUMNS: tuple[str, ...] = (features.FEATURE_NAMES + LABEL_COLUMNS
                                   + (GROUP_COLUMN, ID_COLUMN))
INPUT_COLUMNS: tuple[str, ...] = (features.FEATURE_NAMES + LABEL_COLUMNS
                                  + (ID_COLUMN, features.USER_ID, REGION_COLUMN))


def user_groups(user_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Each row's ``GROUP_COLUMN``: its user id's group, as ``evaluate.margins.user_groups``
    computes it (a missing id is the group of "None")."""
    return buckets.bucket_of(user_ids, features.N_USER_GROUPS)


# the fix for split files this pythia's ETL did not write (e.g. an older run's, resumed)
RERUN_ETL = "run the ETL again (a new run, or 'resume etl_hour')"


def check_columns(names: list[str] | tuple[str, ...], what: str) -> None:
    """Raise a ValueError naming every record column missing from ``names``."""
    missing = [c for c in INPUT_COLUMNS if c not in names]
    if missing:
        # a column the ETL derives: split files of another pythia's ETL (a resumed old run)
        fix = (f"; the ETL of another pythia version wrote it: {RERUN_ETL}"
               if set(missing) & set(features.DERIVED_COLUMNS) else "")
        raise ValueError(f"{what} lacks column(s) {missing} needed for TFRecords{fix} "
                         f"(has {sorted(names)})")


def dictionary_ids(arr: pa.Array) -> tuple[list, np.ndarray]:
    """Distinct values (null included as None) and each row's index into them."""
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    enc = pc.dictionary_encode(arr, null_encoding="encode")
    return enc.dictionary.to_pylist(), enc.indices.to_numpy(zero_copy_only=False)


def non_null_ints(arr: pa.Array, column: str, where: str) -> np.ndarray:
    """A label column as int64 (ValueError naming ``column`` and ``where`` if it has nulls)."""
    if arr.null_count:
        raise ValueError(f"{column} is null in {arr.null_count} row(s) of {where}: the ETL must "
                         f"quarantine unlabelled rows before TFRecords")
    return arr.to_numpy(zero_copy_only=False).astype(np.int64)


def _string_buffers(arr: pa.Array, column: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(data bytes, n+1 offsets) of a string column in Arrow's own layout, without copies."""
    if arr.null_count:
        raise ValueError(f"{column} is null in {arr.null_count} row(s) of {where}")
    arr = pc.cast(arr, pa.large_binary())
    _, offsets, data = arr.buffers()
    offs = np.frombuffer(offsets, dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return raw, offs


def _int64_entry_column(key: str, values: np.ndarray) -> wire.Piece:
    """Entries for a low-cardinality int column: build each distinct value once, then gather."""
    uniq, inverse = np.unique(values, return_inverse=True)
    return wire.int64_entries(key, uniq).take(inverse.reshape(-1))


def encode_records(batch: pa.RecordBatch, encoders: Encoders,
                   where: str = "the batch") -> tuple[np.ndarray, np.ndarray]:
    """Serialise a batch into framed ``tf.train.Example`` TFRecords.

    Args:
        batch: rows with every column of ``INPUT_COLUMNS`` (the split Parquet schema).
        encoders: vocabularies and numeric statistics fitted on the train split.
        where: how to name the batch in error messages (e.g. the split).

    Returns:
        ``(flat uint8 bytes, int64 offsets of n + 1 record boundaries)``.

    Raises:
        ValueError: a needed column is missing, or a label / impression_id is null.
    """
    check_columns(batch.schema.names, where)
    n = batch.num_rows
    entries: list[wire.Piece] = []
    for f in features.FEATURES:
        arr = batch.column(f.name)
        if f.kind == features.CATEGORICAL:
            values, index = dictionary_ids(arr)
            ids = encoders.vocabularies[f.name].encode(values)
            # one entry per distinct raw value, then a row gather: no per-row Python
            entries.append(wire.int64_entries(f.name, ids).take(index))
        else:
            x = pc.fill_null(pc.cast(arr, pa.float64()), np.nan).to_numpy(zero_copy_only=False)
            entries.extend(wire.float_entries(f.name, encoders.numeric[f.name].normalize(x)))
    for col in LABEL_COLUMNS:
        entries.append(_int64_entry_column(col, non_null_ints(batch.column(col), col, where)))
    entries.append(_int64_entry_column(GROUP_COLUMN, user_groups(batch.column(features.USER_ID))))
    data, offsets = _string_buffers(batch.column(ID_COLUMN), ID_COLUMN, where)
    entries.extend(wire.bytes_entries(ID_COLUMN, data, offsets))
    return wire.frame_examples(entries, n)
