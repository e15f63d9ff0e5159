"""OpenRTB 2.6 bid requests -> impression contract rows, for ingest and scoring.

``map_bid_request`` maps one ``BidRequest`` to one contract row per ``imp`` (each with its first
contract breach); ``score_openrtb`` scores every ``imp`` with whatever could be mapped;
``parse_line`` reads one bid-log line.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

from pythia.contract import NULL_REQUIRED, WRONG_TYPE
from pythia.features import IMPRESSION_ID, TS, USER_IMPRESSIONS_TODAY
from pythia.scoring.openrtb.columns import EXTRACTORS, _Context, _first_problem
from pythia.scoring.openrtb.values import UnmappableRequest, _Breach, _is_object, _text

# The line format of bid logs: one JSON object per line, either the envelope
# {"ts": <auction time>, "request": {BidRequest}} or a bare BidRequest carrying the auction
# time in its own "ext": {"ts": ...}. OpenRTB has no auction-time field, so a logger adds one.
LINE_TS = "ts"
LINE_REQUEST = "request"
# The bidder's frequency counter: ``user.ext.impressions_today``, the user's impressions earlier
# the same UTC day (docs/bidder.md). It is no contract column, so only scorer rows carry it.
USER_EXT_COUNTER = "impressions_today"


@dataclass(frozen=True)
class MappedImpression:
    """One ``imp`` of a bid request as a contract row.

    ``row`` holds every contract column (``ts`` as a UTC ``datetime``); values that could not
    be mapped are None. ``problem`` is ``(reason, column, detail)`` for the first contract
    breach (the contract's precedence: reason order, then column order), else None.
    """

    imp_id: str | None
    row: dict[str, Any]
    problem: tuple[str, str, str] | None


# ------------------------------------------------------------------------------- requests

def map_bid_request(request: Any, ts: Any = None) -> list[MappedImpression]:
    """Map a BidRequest to one contract row per ``imp``, each with its first contract breach.

    Args:
        request: the BidRequest as decoded JSON.
        ts: the auction time: epoch seconds, ISO-8601 string or datetime; None = unknown.

    Returns:
        One ``MappedImpression`` per element of ``request['imp']``, in order.

    Raises:
        UnmappableRequest: ``request`` is not an object, or has no non-empty ``imp`` array.
    """
    if not _is_object(request):
        raise UnmappableRequest(WRONG_TYPE, "request",
                                f"a BidRequest is an object, got {type(request).__name__}")
    imps = request.get("imp")
    if imps is None or imps == []:
        raise UnmappableRequest(NULL_REQUIRED, "imp", "the request has no imp")
    if not isinstance(imps, list):
        raise UnmappableRequest(WRONG_TYPE, "imp", f"imp is {type(imps).__name__}, "
                                                   "expected an array")
    out = []
    for imp in imps:
        imp_ok = _is_object(imp)
        c = _Context(request, imp if imp_ok else {}, len(imps), ts)
        row: dict[str, Any] = {}
        breaches: dict[str, _Breach] = {}
        for name, extract in EXTRACTORS.items():
            try:
                row[name] = extract(c)
            except _Breach as b:
                row[name], breaches[name] = None, b
        if not imp_ok:
            breaches[IMPRESSION_ID] = _Breach(WRONG_TYPE, "imp element is not an object")
        try:
            imp_id = _text(imp.get("id"), "imp.id") if imp_ok else None
        except _Breach:
            imp_id = None
        out.append(MappedImpression(imp_id, row, _first_problem(row, breaches)))
    return out


def map_request(request: Any, ts: Any = None) -> list[dict[str, Any]]:
    """Contract rows of a BidRequest (one per ``imp``); unmappable values are None.

    Never raises: a request without imps gives ``[]``. Rows with a contract breach are kept
    (the scorer treats their missing values as missing); use ``map_bid_request`` to see them.
    """
    try:
        return [m.row for m in map_bid_request(request, ts)]
    except UnmappableRequest:
        return []


def request_rows(request: Any, ts: Any = None) -> list[dict[str, Any]]:
    """Rows ready for ``Scorer.score`` / ``score_batch``: ``map_request`` with ``ts`` as epoch
    seconds (None when unknown, so the scorer uses the current time)."""
    counter = user_counter(request)
    return [_scorer_row(row, counter) for row in map_request(request, ts)]


def user_counter(request: Any) -> Any:
    """``user.ext.impressions_today`` of a BidRequest as sent (None when absent); the scorer
    cleans it (``cleaning.clean_count``: anything but a number >= 0 is unknown)."""
    user = request.get("user") if isinstance(request, dict) else None
    ext = user.get("ext") if isinstance(user, dict) else None
    return ext.get(USER_EXT_COUNTER) if isinstance(ext, dict) else None


def _scorer_row(row: Mapping[str, Any], counter: Any = None) -> dict[str, Any]:
    out = dict(row)
    if out[TS] is not None:
        out[TS] = math.floor(out[TS].timestamp())
    out[USER_IMPRESSIONS_TODAY] = counter
    return out


def score_openrtb(scorer: Any, request: Any, ts: Any = None, now: float | None = None
                  ) -> list[dict[str, Any]]:
    """Score every ``imp`` of a BidRequest.

    Args:
        scorer: a loaded ``pythia.scoring.Scorer``.
        request: the BidRequest (decoded JSON); anything else scores nothing.
        ts: the auction time (default: ``now``, i.e. the time of the bid).
        now: epoch seconds used when ``ts`` is None or unusable (default: the current time).

    Returns:
        Per imp, in order: ``{'imp_id', 'impression_id', 'gender', 'age', 'age_gender',
        'region', 'model_version', 'model'}`` -- ``region`` is the region whose model scored
        it and ``model`` that model's kind ('mlp', 'gbdt', 'tabnet').
    """
    try:
        mapped = map_bid_request(request, ts)
    except UnmappableRequest:
        return []
    counter = user_counter(request)
    rows = [_scorer_row(m.row, counter) for m in mapped]
    scores = ([scorer.score(rows[0], now=now)] if len(rows) == 1
              else scorer.score_batch(rows, now=now))
    kinds = {region: entry.get("kind") for region, entry in scorer.doc.get("models", {}).items()}
    return [{"imp_id": m.imp_id, IMPRESSION_ID: m.row[IMPRESSION_ID], **s,
             "model": kinds.get(s["region"])} for m, s in zip(mapped, scores)]


def parse_line(line: str | bytes) -> tuple[Mapping, Any]:
    """(BidRequest, auction time) of one log line in either line format.

    Raises:
        UnmappableRequest: not JSON, not an object, or neither an envelope nor a BidRequest.
    """
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise UnmappableRequest(WRONG_TYPE, "line", f"invalid JSON: {exc}"[:300]) from None
    if not isinstance(doc, dict):
        raise UnmappableRequest(WRONG_TYPE, "line", f"a line is a JSON object, got "
                                                    f"{type(doc).__name__}")
    if LINE_REQUEST in doc:
        request = doc[LINE_REQUEST]
        if not isinstance(request, dict):
            raise UnmappableRequest(WRONG_TYPE, "request", "the envelope's request is not an "
                                                           "object")
        return request, doc.get(LINE_TS)
    if "imp" in doc:
        ext = doc.get("ext")
        return doc, ext.get(LINE_TS) if isinstance(ext, dict) else None
    raise UnmappableRequest(WRONG_TYPE, "line", "neither an envelope {ts, request} nor a "
                                                "BidRequest (no imp)")


def score_openrtb_lines(scorer: Any, lines: Iterable[str | bytes], now: float | None = None
                        ) -> Iterator[dict[str, Any]]:
    """One output record per input line: ``{'line', 'id', 'impressions': [...]}`` with
    ``score_openrtb``'s records (the line's own ``ts`` when it has one), or
    ``{'line', 'error'}``. Blank lines give ``{'line', 'error': 'empty line'}``."""
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            yield {"line": n, "error": "empty line"}
            continue
        try:
            request, ts = parse_line(line)
        except UnmappableRequest as exc:
            yield {"line": n, "error": str(exc)}
            continue
        yield {"line": n, "id": request.get("id"),
               "impressions": score_openrtb(scorer, request, ts, now=now)}
