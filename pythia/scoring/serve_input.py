"""Request bodies of ``pythia serve``: size limits, JSON parsing and format detection.

Everything here answers a client error with ``BadInput`` (a 400, or a 413 for too much), never
a 500. ``pythia.scoring.serve`` re-exports these names; this module imports nothing from it.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.requests import Request

MAX_BODY_BYTES = 1 << 20  # 1 MiB: an OpenRTB request is a few KiB; a batch of 1,000 ~ 400 KiB
MAX_BATCH = 4096  # requests (or imps) per call: bounds the work one call can ask for
FORMATS = ("auto", "request", "openrtb")


class BadInput(Exception):
    """A client error: answered with ``status`` and the message, never a 500."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


async def read_body(request: Request, max_body_bytes: int) -> bytes:
    """The raw body, or ``BadInput`` (413) once it is declared or read over the limit."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadInput(f"bad Content-Length {declared[:40]!r}")
        if int(declared) > max_body_bytes:
            raise BadInput(f"body of {int(declared)} bytes; at most {max_body_bytes}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
            raise BadInput(f"body over {max_body_bytes} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_body(raw: bytes) -> Any:
    """Decoded JSON, or ``BadInput`` with the parser's reason."""
    if not raw.strip():
        raise BadInput("empty body: send a JSON object (a request or an OpenRTB BidRequest) "
                       "or an array of requests")
    try:
        return json.loads(raw)
    except RecursionError:
        raise BadInput("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int too long
        raise BadInput(f"invalid JSON: {exc}"[:300]) from None


def detect_format(body: Any, requested: str) -> str:
    """'request', 'batch' or 'openrtb' for a decoded body (``BadInput`` if it fits none)."""
    if requested not in FORMATS:
        raise BadInput(f"format must be one of {list(FORMATS)}, got {requested!r}")
    if requested == "openrtb" or (requested == "auto" and isinstance(body, dict)
                                  and "imp" in body):
        if not isinstance(body, dict):
            raise BadInput(f"an OpenRTB BidRequest is a JSON object, got {_kind(body)}")
        imps = body.get("imp")
        if not isinstance(imps, list) or not imps:
            raise BadInput("an OpenRTB BidRequest needs a non-empty 'imp' array, got "
                           f"{_kind(imps)}" + (" (empty)" if imps == [] else ""))
        if len(imps) > MAX_BATCH:
            raise BadInput(f"{len(imps)} imps; at most {MAX_BATCH} per call", 413)
        return "openrtb"
    if isinstance(body, dict):
        return "request"
    if isinstance(body, list):
        if len(body) > MAX_BATCH:
            raise BadInput(f"{len(body)} requests; at most {MAX_BATCH} per call", 413)
        for i, item in enumerate(body):
            if not isinstance(item, dict):
                raise BadInput(f"element {i} of the array is {_kind(item)}, expected a "
                               f"request object")
        return "batch"
    raise BadInput(f"the body is {_kind(body)}: send a request object, an array of them, "
                   f"or an OpenRTB BidRequest")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value),
                                                                      type(value).__name__)


def check_ts(ts: str | None) -> None:
    """``BadInput`` unless ``?ts=`` is absent, epoch seconds or ISO-8601 (1970..9999)."""
    if ts is None:
        return
    from pythia.scoring.openrtb import parse_ts
    try:
        parse_ts(ts)
    except ValueError as exc:
        raise BadInput(f"ts: {exc}") from None
