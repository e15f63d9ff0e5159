"""``pythia score``: JSON lines of requests in, JSON lines of predictions out, in batches.

Exactly one output line per input line, in order, so outputs join to inputs by position:
a scored request (its ``impression_id`` echoed when present), or ``{"line": n, "error": ...}``
for a line that is not a JSON object. Bytes that are not UTF-8 inside a JSON string make that
value unknown (out of vocabulary) rather than failing the line.
"""
from __future__ import annotations

import json
import sys
from typing import IO, Any, Iterable

from pythia.features import IMPRESSION_ID
from pythia.scoring.scorer import Scorer

DEFAULT_BATCH_SIZE = 1024
EXIT_OK = 0  # every line scored
EXIT_BAD_LINES = 1  # the whole stream was processed, some lines were errors
EXIT_NO_BUNDLE = 2  # the bundle could not be loaded; nothing was read


FORMATS = ("contract", "openrtb")


def run_score_cli(bundle: str | Scorer, stdin: IO, stdout: IO, *, stderr: IO | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE, format: str = "contract") -> int:
    """Score a JSONL stream with a bundle; reads and writes ``batch_size`` lines at a time.

    Args:
        bundle: bundle folder (or an already loaded ``Scorer``).
        stdin: text or binary stream of JSON objects, one per line (``.buffer`` is used when
            present, so invalid UTF-8 never breaks the stream).
        stdout: text stream for the predictions.
        stderr: where the load error and the final counts go (default ``sys.stderr``).
        batch_size: lines scored per vectorised call.
        format: ``contract`` (our request dicts) or ``openrtb`` (``{"ts", "request"}`` bid
            request lines, ``pythia.scoring.openrtb``): one record per line with every imp.

    Returns:
        ``EXIT_OK``, ``EXIT_BAD_LINES`` or ``EXIT_NO_BUNDLE``.
    """
    err = stderr if stderr is not None else sys.stderr
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    try:
        scorer = bundle if isinstance(bundle, Scorer) else Scorer.load(bundle)
    except (OSError, ValueError, KeyError) as exc:
        print(f"pythia score: cannot load bundle {bundle!r}: {exc}", file=err)
        return EXIT_NO_BUNDLE
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    counts = {"lines": 0, "scored": 0, "errors": 0}
    if format == "openrtb":
        _score_openrtb(scorer, getattr(stdin, "buffer", stdin), stdout, counts)
        print(f"pythia score: {counts['lines']} lines, {counts['scored']} scored, "
              f"{counts['errors']} errors", file=err)
        return EXIT_OK if counts["errors"] == 0 else EXIT_BAD_LINES
    batch: list[tuple[int, Any]] = []
    for line_no, raw in enumerate(getattr(stdin, "buffer", stdin), start=1):
        batch.append((line_no, _parse_line(raw)))
        if len(batch) >= batch_size:
            _write_batch(scorer, batch, stdout, counts)
            batch = []
    if batch:
        _write_batch(scorer, batch, stdout, counts)
    print(f"pythia score: {counts['lines']} lines, {counts['scored']} scored, "
          f"{counts['errors']} errors", file=err)
    return EXIT_OK if counts["errors"] == 0 else EXIT_BAD_LINES


def _parse_line(raw: bytes | str) -> dict | str:
    """The request dict of one line, or an error message."""
    if isinstance(raw, bytes):
        # surrogateescape keeps undecodable bytes as lone surrogates: such values never match
        # a vocabulary entry, so they encode as out of vocabulary.
        raw = raw.decode("utf-8", errors="surrogateescape")
    text = raw.strip()
    if not text:
        return "empty line"
    try:
        request = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return f"invalid JSON: {exc}"[:500]
    if not isinstance(request, dict):
        return f"not a JSON object (got {type(request).__name__})"
    return request


def _write_batch(scorer: Scorer, batch: list[tuple[int, Any]], stdout: IO,
                 counts: dict[str, int]) -> None:
    requests = [r for _, r in batch if isinstance(r, dict)]
    scored: Iterable[dict] = iter(scorer.score_batch(requests))
    lines = []
    for line_no, parsed in batch:
        if isinstance(parsed, dict):
            record = next(scored)
            if IMPRESSION_ID in parsed:
                record = {IMPRESSION_ID: parsed[IMPRESSION_ID], **record}
            counts["scored"] += 1
        else:
            record = {"line": line_no, "error": parsed}
            counts["errors"] += 1
        lines.append(json.dumps(record))
    counts["lines"] += len(batch)
    stdout.write("\n".join(lines) + "\n")
    stdout.flush()


def _score_openrtb(scorer: Scorer, lines: Iterable, stdout: IO, counts: dict[str, int]) -> None:
    from pythia.scoring.openrtb import score_openrtb_lines
    for record in score_openrtb_lines(scorer, lines):
        counts["lines"] += 1
        counts["errors" if "error" in record else "scored"] += 1
        stdout.write(json.dumps(record) + "\n")
    stdout.flush()
