"""Raw OpenRTB bid logs -> the impressions layout of the data contract, with a quarantine.

``ingest_openrtb`` reads JSON-lines bid logs (plain or gzip, local or s3://; the line format is
``pythia.scoring.openrtb``'s) and writes ``impressions/date=YYYY-MM-DD/hour=HH/*.parquet`` with
the contract's Arrow schema, so a user with raw bid logs can point the flow at ``--out``.
``write_openrtb_lines`` is the reverse edge: a source's impressions as bid-log lines (the
synthetic world's round trip). The mapping itself lives in ``pythia.scoring.openrtb`` only.

Every line is accounted for: ``lines = blank_lines + requests + quarantined lines`` and
``impressions (imps of parsed requests) = rows_written + quarantined impressions``.
"""
from __future__ import annotations

import datetime as dt
import gzip
import io
import os
import shutil
import sys
import tempfile
import uuid
from contextlib import contextmanager
from typing import IO, Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pythia import storage
from pythia.contract import IMPRESSION_SCHEMA, REASONS
from pythia.features import IMPRESSION_ID, TS
from pythia.paths import join
from pythia.scoring.openrtb import (UnmappableRequest, bid_request_line,
                                    contract_row_to_bid_request, map_bid_request, parse_line)
from pythia.scratch import scratch_dir

DEFAULT_ROWS_PER_FILE = 250_000  # rows buffered per partition before a Parquet file is cut
MAX_RAW_CHARS = 65_536  # a quarantined line is kept up to this length (bid requests are ~1-10 kB)
INGEST_DIR = "_ingest"  # under --out; the flow reads impressions/, labels/, provider_metrics/
EXIT_OK, EXIT_QUARANTINED, EXIT_ERROR = 0, 1, 2

QUARANTINE_SCHEMA = pa.schema([
    ("source", pa.string()),  # input file URI
    ("line", pa.int64()),  # 1-based line number in that file
    ("imp_index", pa.int32()),  # position in imp[]; null when the whole line is quarantined
    (IMPRESSION_ID, pa.string()),
    ("reason", pa.string()),  # a pythia.contract reason code
    ("reason_column", pa.string()),  # a contract column, or line / request / imp
    ("detail", pa.string()),
    ("raw", pa.string()),  # the line as read (truncated to MAX_RAW_CHARS)
])


# ------------------------------------------------------------------------------- reading

def list_inputs(inputs: Sequence[str]) -> list[str]:
    """Files named by ``inputs`` (files, or folders/prefixes read recursively), in order.

    Hidden and side files (names starting with '.' or '_') inside folders are skipped.

    Raises:
        FileNotFoundError: an input does not exist or holds no files (message names it).
    """
    files: list[str] = []
    for uri in inputs:
        fs, path = storage.filesystem(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            files.append(uri)
            continue
        found = [f for f in storage.list_files(uri) if not os.path.basename(f).startswith(
            (".", "_"))] if info.type == pafs.FileType.Directory else []
        if not found:
            raise FileNotFoundError(f"no such input: {uri}" if info.type ==
                                    pafs.FileType.NotFound else f"no files under input {uri}")
        files.extend(found)
    return files


def read_lines(uri: str) -> Iterator[bytes]:
    """The lines of a plain or gzip file (detected by its magic bytes, not its name)."""
    fs, path = storage.filesystem(uri)
    with fs.open_input_stream(path, compression=None) as raw:
        stream: IO[bytes] = io.BufferedReader(raw, buffer_size=1 << 20)
        if stream.peek(2)[:2] == b"\x1f\x8b":
            stream = gzip.GzipFile(fileobj=stream)
        yield from stream


# ------------------------------------------------------------------------------- writing

class _PartWriter:
    """Buffers rows per key and cuts a Parquet file every ``rows_per_file`` rows."""

    def __init__(self, root: str, schema: pa.Schema, rows_per_file: int) -> None:
        self.root, self.schema, self.rows_per_file = root, schema, rows_per_file
        self.buffers: dict[str, list[dict]] = {}
        self.files: dict[str, int] = {}  # key -> files written
        self.rows: dict[str, int] = {}  # key -> rows written

    def add(self, key: str, row: dict) -> None:
        buf = self.buffers.setdefault(key, [])
        buf.append(row)
        if len(buf) >= self.rows_per_file:
            self._flush(key)

    def _flush(self, key: str) -> None:
        rows = self.buffers.pop(key, [])
        if not rows:
            return
        n = self.files.get(key, 0)
        path = os.path.join(self.root, key, f"part-{n:05d}.parquet")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=self.schema), path,
                       compression="snappy")
        self.files[key] = n + 1
        self.rows[key] = self.rows.get(key, 0) + len(rows)

    def close(self) -> None:
        for key in list(self.buffers):
            self._flush(key)


def _partition_key(ts: dt.datetime) -> str:
    return f"date={ts.year:04d}-{ts.month:02d}-{ts.day:02d}/hour={ts.hour:02d}"


def _publish_partition(staged: str, final_uri: str) -> None:
    """Replace the partition ``final_uri`` by the staged local folder.

    Locally: rename the old folder aside, rename the new one in, delete the old (a reader sees
    the old files or the new ones, never a half-written file). On S3: upload each new file
    (single PUTs are atomic), then delete old objects the upload did not overwrite.
    """
    if storage.is_s3(final_uri):
        fs, _ = storage.filesystem(final_uri)
        old = set(storage.list_files(final_uri))
        new = set(storage.upload_dir(staged, final_uri))
        for uri in sorted(old - new):
            fs.delete_file(storage.filesystem(uri)[1])
        return
    final = os.path.abspath(final_uri)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    trash = None
    if os.path.exists(final):
        trash = os.path.join(os.path.dirname(final), f".old-{uuid.uuid4().hex}")
        os.replace(final, trash)
    os.replace(staged, final)
    if trash:
        shutil.rmtree(trash, ignore_errors=True)


@contextmanager
def _staging(out: str) -> Iterator[str]:
    """A folder to stage the new files in, removed on exit: beside a local output (same
    filesystem, so renames are atomic), else a ``pythia.scratch`` folder (swept if killed)."""
    if storage.is_s3(out):
        with scratch_dir("pythia-ingest-") as folder:
            yield folder
        return
    os.makedirs(os.path.abspath(out), exist_ok=True)
    folder = tempfile.mkdtemp(prefix=".tmp-ingest-", dir=os.path.abspath(out))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------- ingest

def ingest_openrtb(inputs: Sequence[str], out: str, *,
                   rows_per_file: int = DEFAULT_ROWS_PER_FILE) -> dict[str, Any]:
    # Long on purpose: one staging folder and one set of counters live across the read, the
    # per-partition writes and the summary; the parts are the helpers it calls.
    """Turn OpenRTB bid-log lines into the contract's impressions layout under ``out``.

    Args:
        inputs: files or folders (local or s3://) of JSON lines, plain or gzip; each line is an
            envelope ``{"ts": ..., "request": BidRequest}`` or a BidRequest with ``ext.ts``.
        out: the source root to write: ``impressions/date=…/hour=…/part-NNNNN.parquet`` (one
            partition per UTC hour of ``ts``) and ``_ingest/<run>/`` (``summary.json`` and
            ``quarantine/part-NNNNN.parquet``, schema ``QUARANTINE_SCHEMA``).
        rows_per_file: rows per Parquet file (bounds the memory held per partition).

    Every partition this call writes replaces the same partition of an earlier call (so a
    rerun never duplicates rows): give all logs of an hour to one call. Partitions the inputs
    do not touch are left alone.

    Returns:
        The summary (also written to ``_ingest/<run>/summary.json``): counts of lines, blank
        lines, requests, impressions, rows written, per-partition rows, quarantined lines and
        impressions with counts by reason.

    Raises:
        FileNotFoundError: an input is missing (nothing is written).
    """
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
    files = list_inputs(inputs)
    run = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    with _staging(out) as staging:
        impressions = _PartWriter(os.path.join(staging, "impressions"), IMPRESSION_SCHEMA,
                                  rows_per_file)
        quarantine = _PartWriter(os.path.join(staging, "quarantine"), QUARANTINE_SCHEMA,
                                 rows_per_file)
        counts = {"lines": 0, "blank_lines": 0, "requests": 0, "impressions": 0,
                  "rows_written": 0}
        q_counts = {"lines": 0, "impressions": 0, "by_reason": {r: 0 for r in REASONS}}

        def reject(source: str, line_no: int, imp_index: int | None, impression_id: Any,
                   reason: str, column: str, detail: str, raw: bytes) -> None:
            q_counts["impressions" if imp_index is not None else "lines"] += 1
            q_counts["by_reason"][reason] += 1
            quarantine.add("", {
                "source": source, "line": line_no, "imp_index": imp_index,
                IMPRESSION_ID: impression_id, "reason": reason, "reason_column": column,
                "detail": detail, "raw": raw[:MAX_RAW_CHARS * 4].decode(
                    "utf-8", errors="replace")[:MAX_RAW_CHARS]})

        for source in files:
            for line_no, raw in enumerate(read_lines(source), start=1):
                counts["lines"] += 1
                if not raw.strip():
                    counts["blank_lines"] += 1
                    continue
                try:
                    request, ts = parse_line(raw)
                    mapped = map_bid_request(request, ts)
                except UnmappableRequest as exc:
                    reject(source, line_no, None, None, exc.reason, exc.column, exc.detail, raw)
                    continue
                counts["requests"] += 1
                counts["impressions"] += len(mapped)
                for i, m in enumerate(mapped):
                    if m.problem is None:
                        impressions.add(_partition_key(m.row[TS]), m.row)
                    else:
                        reject(source, line_no, i, m.row[IMPRESSION_ID], *m.problem, raw)
        impressions.close()
        quarantine.close()
        counts["rows_written"] = sum(impressions.rows.values())
        run_dir = join(out, INGEST_DIR, run)
        for key in sorted(impressions.rows):
            _publish_partition(os.path.join(staging, "impressions", key),
                               join(out, "impressions", key))
        if quarantine.rows:
            storage.upload_dir(os.path.join(staging, "quarantine"), join(run_dir, "quarantine"))
        summary = {"inputs": files, "out": out, "run": run, **counts,
                   "partitions": dict(sorted(impressions.rows.items())),
                   "quarantined": q_counts, "quarantine": join(run_dir, "quarantine")}
        storage.write_json_atomic(join(run_dir, "summary.json"), summary)
        return summary


def run_ingest_cli(inputs: Sequence[str], out: str, *, stderr: IO | None = None) -> int:
    """``pythia ingest openrtb``: ingest and print one summary line.

    Returns:
        ``EXIT_OK`` (every impression written), ``EXIT_QUARANTINED`` (all input read, some
        lines or impressions quarantined) or ``EXIT_ERROR`` (a missing input; one line naming
        it, nothing written).
    """
    err = stderr if stderr is not None else sys.stderr
    try:
        s = ingest_openrtb(inputs, out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"pythia ingest openrtb: {exc}", file=err)
        return EXIT_ERROR
    q = s["quarantined"]
    reasons = ", ".join(f"{r}={n}" for r, n in q["by_reason"].items() if n) or "none"
    print(f"pythia ingest openrtb: {s['lines']} lines, {s['requests']} requests, "
          f"{s['impressions']} impressions -> {s['rows_written']} rows in "
          f"{len(s['partitions'])} partitions under {join(out, 'impressions')}; quarantined "
          f"{q['lines']} lines + {q['impressions']} impressions ({reasons}); summary in "
          f"{join(out, INGEST_DIR, s['run'])}", file=err)
    return EXIT_OK if q["lines"] + q["impressions"] == 0 else EXIT_QUARANTINED


# ------------------------------------------------------------------------------- the reverse

def write_openrtb_lines(source: str, out: str, *, compress: bool = True) -> dict[str, int]:
    """Write a source's impressions as bid-log lines (one BidRequest per impression).

    Each ``impressions/date=…/hour=…/<name>.parquet`` becomes ``out/date=…/hour=…/<name>``
    ``.jsonl.gz`` (or ``.jsonl``), written atomically; ``ingest_openrtb(out, …)`` gives the
    same rows back. A call that fails (a full disk, a row the mapping cannot carry) removes
    the files it wrote, so a folder never looks like a whole log while missing hours.

    Returns:
        ``{'files': n, 'lines': n}``.

    Raises:
        FileNotFoundError: ``source`` has no impression files.
        ValueError: a row the mapping cannot carry (see ``contract_row_to_bid_request``).
    """
    base = join(source, "impressions")
    files = [f for f in storage.list_files(base) if f.endswith(".parquet")
             and not os.path.basename(f).startswith((".", "_"))]
    if not files:
        raise FileNotFoundError(f"no impression Parquet files under {base}")
    n_lines = 0
    base_path = storage.filesystem(base)[1]
    written: list[str] = []
    try:
        for uri in files:
            fs, path = storage.filesystem(uri)
            rel = os.path.relpath(path, base_path).replace(os.sep, "/")
            target = join(out, rel[: -len(".parquet")] + (".jsonl.gz" if compress else ".jsonl"))
            buf = io.BytesIO()
            sink: IO[bytes] = (gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) if compress
                               else buf)
            table = pq.read_table(path, filesystem=fs, columns=IMPRESSION_SCHEMA.names)
            for batch in table.to_batches(max_chunksize=8192):
                lines = [bid_request_line(contract_row_to_bid_request(row), row[TS])
                         for row in batch.to_pylist()]
                sink.write(("\n".join(lines) + "\n").encode())
                n_lines += len(lines)
            if compress:
                sink.close()
            storage.write_bytes_atomic(target, buf.getvalue())
            written.append(target)
    except BaseException:  # a full disk, a bad row: no log that looks whole but lacks hours
        for target in written:
            storage.remove(target)
        raise
    return {"files": len(files), "lines": n_lines}
