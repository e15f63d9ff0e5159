"""Cleaning of one raw request value: the boundary rules every encoding path applies.

``pythia.scoring.boundary`` (one request) and ``pythia.scoring.columnar`` (a batch as columns)
both call these, so a value is cleaned the same way whichever path reads it.
"""
from __future__ import annotations

import datetime as dt
import math
from typing import Any, Mapping

import numpy as np

from pythia.features import OOV_ID

# Longer strings are never real category values; rejecting them early also bounds the work an
# adversarial request can cause (hashing / decoding megabytes).
MAX_VALUE_CHARS = 512
MAX_TS_CHARS = 64
# Valid epoch seconds: 1970-01-01 .. 9999-12-31 (what datetime can represent).
MAX_TS_SECONDS = 253_402_300_799
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class _OutOfVocabulary:
    """Marker for a value that must encode to OOV_ID without being looked up."""

    def __repr__(self) -> str:
        return "<OOV>"


OOV = _OutOfVocabulary()


def clean_category(value: Any) -> str | None | _OutOfVocabulary:
    """One raw categorical value -> a string to look up, ``None`` (missing) or ``OOV``."""
    kind = type(value)
    if kind is str:
        return value if len(value) <= MAX_VALUE_CHARS else OOV
    if value is None:
        return None
    if kind is bool:
        return str(value)
    if isinstance(value, str):  # str subclasses, np.str_
        return str(value) if len(value) <= MAX_VALUE_CHARS else OOV
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if len(raw) > 4 * MAX_VALUE_CHARS:
            return OOV
        try:
            return clean_category(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return OOV
    if isinstance(value, (int, np.integer)):
        try:
            text = str(int(value))
        except ValueError:  # more digits than Python will print
            return OOV
        return text if len(text) <= MAX_VALUE_CHARS else OOV
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return str(number) if math.isfinite(number) else None
    return None


def clean_ts(value: Any) -> int | None:
    """Epoch seconds (floored) from an int/float/numeric string/ISO-8601 string, or a
    ``datetime`` (pandas ``Timestamp`` included; naive = UTC) / ``numpy.datetime64``, else
    ``None``."""
    if type(value) is int:  # the common case first
        return value if 0 <= value <= MAX_TS_SECONDS else None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, dt.datetime):  # what a Parquet / pandas timestamp column holds
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        try:  # whole seconds exactly (a float timestamp can round .999999999 up)
            delta = value - _EPOCH
            value = int(delta.days) * 86_400 + int(delta.seconds)
        except (ValueError, TypeError, OverflowError):  # pandas' NaT: unusable
            return None
    elif isinstance(value, np.datetime64):
        if np.isnat(value):
            return None
        value = int(value.astype("datetime64[us]").astype(np.int64)) // 1_000_000
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        text = value.strip()
        if not text or len(text) > MAX_TS_CHARS:
            return None
        try:
            value = float(text)
        except ValueError:
            try:
                stamp = dt.datetime.fromisoformat(text)
                if stamp.tzinfo is None:
                    stamp = stamp.replace(tzinfo=dt.timezone.utc)
                value = stamp.timestamp()
            except (ValueError, OverflowError, OSError):
                return None
    if isinstance(value, (int, np.integer)):
        seconds = int(value)
    elif isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return None
        seconds = math.floor(value)
    else:
        return None
    return seconds if 0 <= seconds <= MAX_TS_SECONDS else None


def clean_count(value: Any) -> float:
    """An activity counter (``features.ACTIVITY``) as a float: a whole or fractional number
    >= 0 (int, float, numeric string or UTF-8 bytes), else NaN -- unknown, which the encoders
    turn into the training mean. A bool, a negative or non-finite number is unknown too."""
    if type(value) is int and 0 <= value < 1 << 53:  # the common case first
        return float(value)
    if value is None or isinstance(value, (bool, np.bool_)):
        return math.nan
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return math.nan
    if isinstance(value, str):
        text = value.strip()
        if not text or len(text) > MAX_TS_CHARS:
            return math.nan
        try:
            value = float(text)
        except ValueError:
            return math.nan
    if not isinstance(value, (int, float, np.integer, np.floating)):
        return math.nan
    try:
        number = float(value)
    except OverflowError:  # an int too big for a float: no counter reaches that
        return math.nan
    return number if math.isfinite(number) and number >= 0 else math.nan


def clean_code(value: Any) -> str | None:
    """A country or subdivision code as a lookup key: a usable string, else None (an unknown
    country routes to OTHER / the global model and gets UTC; an unknown subdivision, the
    country's main zone)."""
    if type(value) is str and len(value) <= MAX_VALUE_CHARS:
        return value
    cleaned = clean_category(value)
    return cleaned if type(cleaned) is str else None


def lookup_cleaned(memo: Mapping, value: Any) -> int:
    """The id of a value that is not a plain ``str`` / ``None``, by ``clean_category``."""
    cleaned = clean_category(value)
    return OOV_ID if cleaned is OOV else memo.get(cleaned, OOV_ID)
