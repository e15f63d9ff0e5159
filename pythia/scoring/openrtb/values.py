"""OpenRTB field values: strings, objects, integers, sizes, auction times, countries, browsers.

The readers the column extractors (``pythia.scoring.openrtb.columns``) build on: a value that
cannot be read raises ``_Breach`` with the contract reason code; a line or request with no
impression rows at all raises ``UnmappableRequest``.
"""
from __future__ import annotations

import datetime as dt
import math
import re
from functools import lru_cache
from typing import Any, Mapping

from pythia.contract import WRONG_TYPE
from pythia.scoring.boundary import MAX_TS_SECONDS

# Kosovo's user-assigned code, used by exchanges though absent from ISO 3166-1 (and pycountry).
_EXTRA_ALPHA3 = {"XKX": "XK"}

# Browser from device.ua: the first matching rule wins (order matters: Chromium derivatives
# name "Chrome" and "Safari" too, Chrome names "Safari"). TV platforms report no browser.
_NO_BROWSER = re.compile(r"SMART-TV|SmartTV|Web0S|NetCast|Roku|\bAFT[A-Z]|CrKey|AppleTV|"
                         r"BRAVIA|HbbTV")
BROWSER_RULES: tuple[tuple[str, str], ...] = (
    (r"SamsungBrowser/", "Samsung Internet"),
    (r"\bSilk/", "Silk"),
    (r"\bEdg(?:e|A|iOS)?/", "Edge"),
    (r"\bOPR/|\bOPiOS/|\bOpera\b", "Opera"),
    (r"\bFirefox/|\bFxiOS/", "Firefox"),
    (r"\bChrome/|\bCriOS/", "Chrome"),
    (r"\bSafari/", "Safari"),
)
_BROWSER_RULES = tuple((re.compile(p), name) for p, name in BROWSER_RULES)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


class UnmappableRequest(ValueError):
    """A line or request that yields no impression rows at all (quarantined as a whole)."""

    def __init__(self, reason: str, column: str, detail: str) -> None:
        super().__init__(f"{reason} ({column}): {detail}")
        self.reason, self.column, self.detail = reason, column, detail


class _Breach(Exception):
    """One column of one imp cannot be mapped; carries the contract reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


# ------------------------------------------------------------------------------- values

def _text(value: Any, path: str) -> str | None:
    """A string field: '' and None are missing; a number is cast as Spark would; else a breach."""
    if isinstance(value, str):
        return value or None
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return str(value)
        except ValueError:  # more digits than Python prints
            pass
    elif isinstance(value, float) and math.isfinite(value):
        return str(value)
    raise _Breach(WRONG_TYPE, f"{path} is {type(value).__name__}, expected a string")


def _is_object(value: Any) -> bool:
    # decoded JSON objects are dicts; the exact type check first is several times faster
    return type(value) is dict or isinstance(value, Mapping)


def _obj(parent: Mapping, key: str, path: str) -> Mapping:
    """A sub-object; missing/null is empty, anything else that is not an object is a breach."""
    value = parent.get(key)
    if value is None:
        return {}
    if _is_object(value):
        return value
    raise _Breach(WRONG_TYPE, f"{path} is {type(value).__name__}, expected an object")


def _integer(value: Any, path: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdecimal():
        try:
            return int(value)
        except ValueError:  # more digits than int() accepts
            pass
    raise _Breach(WRONG_TYPE, f"{path} is {value!r}, expected an integer")


def _size(w: Any, h: Any, path: str) -> str | None:
    w, h = _integer(w, f"{path}.w"), _integer(h, f"{path}.h")
    return f"{w}x{h}" if w and h and w > 0 and h > 0 else None


def parse_ts(value: Any) -> dt.datetime | None:
    """The auction time as a UTC datetime (microseconds kept).

    Accepts epoch seconds (int, float or a numeric string), ISO-8601 strings (naive = UTC,
    'Z' allowed) and datetimes. Returns None when absent; raises ValueError when unusable
    (unparseable, NaN, before 1970 or after 9999 -- epoch milliseconds land after 9999).
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _from_epoch(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return _from_epoch(float(text))
        except ValueError:
            pass
        try:
            value = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"timestamp {text[:64]!r} is neither epoch seconds nor "
                             "ISO-8601") from None
    if not isinstance(value, dt.datetime):
        raise ValueError(f"timestamp of type {type(value).__name__} is neither epoch seconds "
                         "nor ISO-8601")
    stamp = value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
    if stamp < _EPOCH:
        raise ValueError(f"timestamp {value.isoformat()} is before 1970")
    try:
        return stamp.astimezone(dt.timezone.utc)
    except OverflowError:  # a local time late on 9999-12-31 is past 9999 in UTC
        raise ValueError(f"timestamp {value.isoformat()} is after 9999") from None


def _from_epoch(seconds: int | float) -> dt.datetime:
    if not 0 <= seconds <= MAX_TS_SECONDS:  # also False for NaN
        raise ValueError(f"epoch seconds {seconds!r} outside 1970..9999")
    micros = seconds * 1_000_000 if isinstance(seconds, int) else round(seconds * 1e6)
    return _EPOCH + dt.timedelta(microseconds=micros)


@lru_cache(maxsize=1)
def _alpha2_of() -> dict[str, str]:
    import pycountry  # loaded on first use: the scorer's import stays light

    table = {c.alpha_2: c.alpha_2 for c in pycountry.countries}
    table.update({c.alpha_3: c.alpha_2 for c in pycountry.countries})
    table.update(_EXTRA_ALPHA3)
    table.update({v: v for v in _EXTRA_ALPHA3.values()})
    return table


def country_alpha2(code: str) -> str | None:
    """ISO-3166-1 alpha-3 (OpenRTB's form) or alpha-2, any case -> alpha-2; None if unknown."""
    return _alpha2_of().get(code.strip().upper())


@lru_cache(maxsize=1)
def _alpha3_of() -> dict[str, str]:
    return {a2: code for code, a2 in _alpha2_of().items() if len(code) == 3}


def parse_browser(ua: str) -> str | None:
    """The browser family named by a user agent (``BROWSER_RULES``), None for TVs / unknown."""
    if _NO_BROWSER.search(ua):
        return None
    for pattern, name in _BROWSER_RULES:
        if pattern.search(ua):
            return name
    return None
