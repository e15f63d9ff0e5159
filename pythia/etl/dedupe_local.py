"""``etl.dedupe`` on the driver (pyarrow, no JVM), streamed: the ids are read a batch at a time.

Same contract as ``dedupe.settle_duplicates``: the losers among the ids kept by several tasks
(the same ``WINNER_ORDER``), the same losers' table and counts, and the losers' raw rows read
again from the source (``impressions_local``) and matched by Spark's own content hash
(``content_hash.spark_xxhash64``) into the same quarantine rows. The count moves and the log
line are ``dedupe.settle``, shared with the Spark path. tests/test_join_local.py runs both.
"""
from __future__ import annotations

import datetime as dt
from typing import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pythia import contract_local, contract_read, source_layout
from pythia.contract import DUPLICATE_IMPRESSION_ID, IMPRESSIONS, REASON, REASON_COLUMN
from pythia.contract_read import RAW_PREFIX
from pythia.etl import dedupe, impressions_local
from pythia.etl.content_hash import key_hashes, spark_xxhash64
from pythia.etl.dedupe import ROW_KEY, WINNER_ORDER
from pythia.etl.hourly import CONTENT_HASH, IDS_COLUMNS, OUTCOME
from pythia.etl.io import write_arrow_atomic
from pythia.features import DATE, HOUR, IMPRESSION_ID, SPLIT, Y_AGE_GENDER
from pythia.parquet_footers import footer_rows, read_footer

_TS = pa.timestamp("us", tz="UTC")  # Spark's timestamps, written as INT96
# Rows read at a time by the streamed passes over the ETL tables (this module's and
# ``splits_local``'s): ~0.5 KB a row of the rows/ table as Arrow.
BATCH_ROWS = 65_536


def _nullable(data: pa.Table, names: Sequence[str]) -> pa.Table:
    """One file's table as Spark reads it: INT96 as UTC microseconds, every column nullable."""
    table = pa.table([c.cast(_TS) if pa.types.is_timestamp(c.type) else c for c in data.columns],
                     names=list(names))
    return table.cast(pa.schema([f.with_nullable(True) for f in table.schema]))


def _files(uris: Sequence[str]) -> list[str]:
    files = [f for u in uris for f in source_layout.list_data_files(u)]
    if not files:
        raise contract_local.NeedsSpark(f"no data files under {', '.join(uris)}")
    return files


def read_dataset(uris: Sequence[str]) -> pa.Table:
    """Every data file of the Parquet datasets ``uris`` (written by either engine) as Spark
    reads them: INT96 as UTC microseconds, every column nullable, the first file's column
    order. ``contract_local.NeedsSpark`` when there is no data file to take a schema from."""
    return pa.concat_tables(iter_dataset(uris, None))


def iter_dataset(uris: Sequence[str], batch_rows: int | None,
                 columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
    """``read_dataset`` (or its ``columns``) in tables of at most ``batch_rows`` rows (None: a
    file at a time), file by file, in the same row order: a reader holds a batch, not the
    dataset. Each table has the first one's schema."""
    files = _files(uris)
    names = list(columns or read_footer(files[0])[0])
    schema = None
    for uri in files:
        for batch in contract_local.iter_parquet(uri, names, batch_rows):
            table = _nullable(batch, names)
            schema = schema or table.schema
            yield table.cast(schema)


def dataset_rows(uris: Sequence[str]) -> int:
    """The rows the footers of the datasets' files record."""
    return sum(footer_rows(f) for u in uris for f in source_layout.list_data_files(u))


def _repeated_hashes(uris: Sequence[str]) -> np.ndarray:
    """Pass 1: the sorted id hashes (``key_hashes``) that more than one row of the ids
    tables has; 8 bytes a row, the only state that grows with the run."""
    hashes, at = np.empty(dataset_rows(uris), np.int64), 0
    for batch in iter_dataset(uris, BATCH_ROWS, [IMPRESSION_ID]):
        if at + batch.num_rows > len(hashes):  # more rows than the footers said
            hashes = np.concatenate([hashes, np.empty(batch.num_rows, np.int64)])
        hashes[at:at + batch.num_rows] = key_hashes(batch[IMPRESSION_ID])
        at += batch.num_rows
    hashes = hashes[:at]
    hashes.sort()  # in place: no second array of the run's ids
    return np.unique(hashes[1:][hashes[1:] == hashes[:-1]])


def find_duplicates(hour_manifests: Sequence[Mapping], out_uri: str) -> dict:
    """``dedupe.find_duplicates`` on the driver: same losers' table, rows and counts. The ids
    are read ``BATCH_ROWS`` at a time, twice at most: pass 1 keeps a hash per id, pass 2 only
    the rows whose hash repeats, which are then settled on their exact ids (a collision keeps
    both rows)."""
    if not dedupe.needs_settling(hour_manifests):
        return {"path": None, "rows": 0, "counts": []}
    uris = [m["ids_path"] for m in hour_manifests]
    repeated = _repeated_hashes(uris)
    parts = [batch.filter(pa.array(np.isin(key_hashes(batch[IMPRESSION_ID]), repeated)))
             for batch in iter_dataset(uris, BATCH_ROWS, IDS_COLUMNS)] if len(repeated) else []
    ids = pa.concat_tables(parts) if parts else next(iter_dataset(uris, 1, IDS_COLUMNS)).slice(0, 0)
    tally = pc.value_counts(ids[IMPRESSION_ID])
    repeated_ids = pc.filter(tally.field("values"), pc.greater(tally.field("counts"), 1))
    candidates = ids.filter(pc.is_in(ids[IMPRESSION_ID], value_set=repeated_ids))
    order = pc.sort_indices(candidates, sort_keys=[(c, "ascending", "at_start") for c in
                                                   (IMPRESSION_ID, *WINNER_ORDER)])
    ranked = candidates.take(order)
    key = ranked[IMPRESSION_ID].to_numpy(zero_copy_only=False)
    later = np.zeros(len(key), dtype=bool)
    later[1:] = key[1:] == key[:-1]  # not the first copy of its id
    losers = ranked.filter(pa.array(later))
    path = write_arrow_atomic(losers, out_uri, int96_timestamps=True)
    grouped = losers.group_by([DATE, HOUR, SPLIT, OUTCOME, Y_AGE_GENDER]).aggregate(
        [([], "count_all")])
    counts = dedupe.sorted_counts([tuple(r.values()) for r in grouped.to_pylist()])
    return {"path": path, "rows": sum(r[-1] for r in counts), "counts": counts}


def write_quarantine(source: str, losers_path: str, quarantine_uri: str, expected: int
                     ) -> str:
    """``dedupe.write_quarantine`` on the driver: the same quarantine rows and check."""
    losers = read_dataset([losers_path]).select(list(ROW_KEY))
    parts = sorted({(d, int(h)) for d, h in zip(losers[DATE].to_pylist(),
                                                losers[HOUR].to_pylist())})
    found = contract_read.list_partition_files(
        source, sorted({dt.date.fromisoformat(d) for d, _ in parts}), sorted({h for _, h in parts}))
    files = [f for key in parts for f in found.get(key, [])]
    # extra columns and naive-timestamp notes were reported by the etl_hour tasks already
    raw, _ = impressions_local.read_impressions(files, report=False)
    raw = raw.append_column(CONTENT_HASH, pa.array(
        spark_xxhash64([raw[RAW_PREFIX + c] for c in IMPRESSIONS.names]), pa.int64()))
    wanted = set(zip(*[losers[c].to_pylist() for c in ROW_KEY]))
    seen: set = set()
    take = []
    for i, key in enumerate(zip(*[raw[c].to_pylist() for c in ROW_KEY])):
        if key in wanted and key not in seen:  # byte-identical copies: one row per key
            seen.add(key)
            take.append(i)
    rows = raw.take(pa.array(take, pa.int64()))
    n = rows.num_rows
    table = pa.table([*[rows[RAW_PREFIX + c] for c in IMPRESSIONS.names], rows[DATE], rows[HOUR],
                      pa.array([DUPLICATE_IMPRESSION_ID] * n, pa.string()),
                      pa.array([IMPRESSION_ID] * n, pa.string())],
                     schema=pa.schema([*[(c, pa.string()) for c in IMPRESSIONS.names],
                                       (DATE, pa.string()), (HOUR, pa.int32()),
                                       pa.field(REASON, pa.string(), nullable=False),
                                       pa.field(REASON_COLUMN, pa.string(), nullable=False)]))
    if n != expected:
        raise ValueError(f"{expected} duplicate impression row(s) to quarantine, but {n} found "
                         f"again under {source}: the source changed since etl_hour read it; "
                         "rerun the run")
    return write_arrow_atomic(table, quarantine_uri)


def settle_duplicates(hour_manifests: Sequence[Mapping], work_uri: str, quarantine_uri: str
                      ) -> tuple[list[dict], dict]:
    """``dedupe.settle_duplicates`` on the driver (same arguments but the session)."""
    found = find_duplicates(hour_manifests, work_uri)
    return dedupe.settle(hour_manifests, found, lambda source: write_quarantine(
        source, found["path"], quarantine_uri, found["rows"]))
