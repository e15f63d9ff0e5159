"""OpenRTB 2.6 bid requests -> impression contract rows: the one mapping, for ingest and scoring.

Training logs and bid-time requests are the same ``BidRequest`` objects, so both go through
``map_bid_request`` (one contract row per ``imp``). ``pythia.ingest`` quarantines the rows that
break the contract; ``score_openrtb`` scores every ``imp`` with whatever could be mapped (the
scorer's boundary handles missing and unknown values). ``contract_row_to_bid_request`` is the
inverse, used to emit the synthetic world as bid requests and to test the round trip.
``render_mapping()`` prints the mapping table from the extractors' own docstrings.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import re
import urllib.parse
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator, Mapping

from pythia import contract
from pythia.contract import BAD_TIMESTAMP, NULL_REQUIRED, OUT_OF_DOMAIN, REASONS, WRONG_TYPE
from pythia.features import COUNTRY, IMPRESSION_ID, TS, USER_ID
from pythia.scoring.boundary import MAX_TS_SECONDS

# The line format of bid logs: one JSON object per line, either the envelope
# {"ts": <auction time>, "request": {BidRequest}} or a bare BidRequest carrying the auction
# time in its own "ext": {"ts": ...}. OpenRTB has no auction-time field, so a logger adds one.
LINE_TS = "ts"
LINE_REQUEST = "request"

# Contract domains, read from the contract (never restated here).
_AD_FORMATS = contract.IMPRESSIONS.column("ad_format").allowed  # also their Imp object names
_INVENTORY_TYPES = contract.IMPRESSIONS.column("inventory_type").allowed  # site | app objects
_DEVICE_TYPES = contract.IMPRESSIONS.column("device_type").allowed

# AdCOM 1.0 "Device Types" (OpenRTB 2.6 device.devicetype) -> contract device_type. Listed with
# the preferred code of each contract value first: the inverse mapping takes the first.
# 6 (Connected Device) and 8 (OOH Device) have no contract value: out_of_domain.
DEVICE_TYPE_OF_CODE: tuple[tuple[int, str], ...] = (
    (4, "mobile"), (5, "tablet"), (2, "desktop"), (3, "ctv"), (1, "mobile"), (7, "ctv"))
ADCOM_DEVICE_TYPES = {1: "Mobile/Tablet", 2: "Personal Computer", 3: "Connected TV", 4: "Phone",
                      5: "Tablet", 6: "Connected Device", 7: "Set Top Box", 8: "OOH Device"}
_DEVICE_TYPE = dict(DEVICE_TYPE_OF_CODE)
_DEVICE_CODE: dict[str, int] = {}
for _code, _name in DEVICE_TYPE_OF_CODE:
    _DEVICE_CODE.setdefault(_name, _code)
if set(_DEVICE_CODE) != set(_DEVICE_TYPES):
    raise ImportError(f"DEVICE_TYPE_OF_CODE maps to {sorted(_DEVICE_CODE)}, the contract's "
                      f"device_type allows {sorted(_DEVICE_TYPES)}")

# Audio has no size in OpenRTB; the synthetic world records audio slots as '0x0', and mapping
# audio to the same keeps both sources in one vocabulary.
AUDIO_AD_SIZE = "0x0"
DEFAULT_CATTAX = 1  # OpenRTB 2.6: cattax absent = IAB Content Category Taxonomy 1.0
NATIVE_MAIN_IMAGE = 3  # Native Ads 1.2 image asset type "Main image"
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


# ------------------------------------------------------------------------------- one imp

class _Context:
    """The pieces of one (request, imp) that several columns read."""

    def __init__(self, request: Mapping, imp: Mapping, n_imps: int, ts: Any) -> None:
        self.request, self.imp, self.n_imps, self.ts = request, imp, n_imps, ts
        self.inventory, self.inventory_obj, self.inventory_breach = self._inventory()
        self._device: Mapping | None = None
        self._geo: Mapping | None = None

    def _inventory(self) -> tuple[str | None, Mapping, _Breach | None]:
        present = [k for k in (*_INVENTORY_TYPES, "dooh") if self.request.get(k) is not None]
        for k in present:
            if not _is_object(self.request[k]):
                return None, {}, _Breach(WRONG_TYPE, f"{k} is not an object")
        if len(present) > 1:
            return None, {}, _Breach(OUT_OF_DOMAIN, f"request has {' and '.join(present)}; "
                                     "OpenRTB allows one")
        if present == ["dooh"]:
            return None, {}, _Breach(OUT_OF_DOMAIN, "dooh inventory has no contract "
                                     "inventory_type")
        if not present:
            return None, {}, None
        return present[0], self.request[present[0]], None

    def device(self) -> Mapping:
        if self._device is None:  # a breach is raised again for every column that reads it
            self._device = _obj(self.request, "device", "device")
        return self._device

    def geo(self) -> Mapping:
        if self._geo is None:
            geo = _obj(self.device(), "geo", "device.geo")
            self._geo = geo or _obj(_obj(self.request, "user", "user"), "geo", "user.geo")
        return self._geo


def _impression_id(c: _Context) -> str | None:
    """`id` (the request id) when the request has one imp, else `id` + ':' + `imp.id`."""
    rid = _text(c.request.get("id"), "id")
    if c.n_imps == 1:
        return rid
    iid = _text(c.imp.get("id"), "imp.id")
    return None if rid is None or iid is None else f"{rid}:{iid}"


def _user_id(c: _Context) -> str | None:
    """`user.id`, else `user.buyeruid`, else `device.ifa` (an all-zero ifa is missing:
    limit-ad-tracking devices send it, and it would merge every such user into one)."""
    user = _obj(c.request, "user", "user")
    for value, path in ((user.get("id"), "user.id"), (user.get("buyeruid"), "user.buyeruid")):
        text = _text(value, path)
        if text:
            return text
    ifa = _text(c.device().get("ifa"), "device.ifa")
    return ifa if ifa and ifa.strip("0-") else None


def _ts(c: _Context) -> dt.datetime | None:
    """The line's auction time (`ts` of the envelope, or `ext.ts` of a bare request); epoch
    seconds or ISO-8601, stored as UTC microseconds."""
    try:
        return parse_ts(c.ts)
    except ValueError as exc:
        raise _Breach(BAD_TIMESTAMP, str(exc)) from None


def _country(c: _Context) -> str | None:
    """`device.geo.country` (else `user.geo.country`): ISO-3166-1 alpha-3 per the spec, alpha-2
    also accepted, any case -> alpha-2 (pycountry); an unknown code is out_of_domain."""
    code = _text(c.geo().get("country"), "geo.country")
    if code is None:
        return None
    alpha2 = country_alpha2(code)
    if alpha2 is None:
        raise _Breach(OUT_OF_DOMAIN, f"geo.country {code!r} is not an ISO-3166-1 code")
    return alpha2


def _geo_region(c: _Context) -> str | None:
    """`geo.region` as given (ISO-3166-2 'US-CA' or the bare 'CA'), upper case."""
    region = _text(c.geo().get("region"), "geo.region")
    return region.upper() if region else None


def _metro(c: _Context) -> str | None:
    """`geo.metro` as given (Google metro code)."""
    return _text(c.geo().get("metro"), "geo.metro")


def _zip(c: _Context) -> str | None:
    """`geo.zip` as given."""
    return _text(c.geo().get("zip"), "geo.zip")


def _inventory_type(c: _Context) -> str | None:
    """'site' or 'app': which object the request has; both, or `dooh`, is out_of_domain."""
    if c.inventory_breach is not None:
        raise c.inventory_breach
    return c.inventory


def _site_or_app(c: _Context) -> str | None:
    """`site.domain` (else the host of `site.page`) or `app.bundle`, as given."""
    if c.inventory_breach is not None:  # report the cause (inventory_type), not a missing value
        raise c.inventory_breach
    if c.inventory == "site":
        domain = _text(c.inventory_obj.get("domain"), "site.domain")
        page = None if domain else _text(c.inventory_obj.get("page"), "site.page")
        return domain or (urllib.parse.urlsplit(page).hostname if page else None)
    if c.inventory == "app":
        return _text(c.inventory_obj.get("bundle"), "app.bundle")
    return None


def _content_category(c: _Context) -> str | None:
    """First of `site.cat`/`app.cat`; as given under cattax 1 (the default), else prefixed
    'cattax<N>:' so codes of different taxonomies never share a vocabulary entry."""
    cats = c.inventory_obj.get("cat")
    if not cats:
        return None
    path = f"{c.inventory}.cat"
    if not isinstance(cats, list):
        raise _Breach(WRONG_TYPE, f"{path} is not an array")
    code = _text(cats[0], f"{path}[0]")
    cattax = _integer(c.inventory_obj.get("cattax"), f"{c.inventory}.cattax")
    if code is None or cattax in (None, DEFAULT_CATTAX):
        return code
    return f"cattax{cattax}:{code}"


def _supply_vendor(c: _Context) -> str | None:
    """`asi` of the LAST node of `source.schain` (2.6; else `source.ext.schain`, 2.5): the
    system that sent this request, i.e. the exchange bought from. None without a chain."""
    source = _obj(c.request, "source", "source")
    schain = _obj(source, "schain", "source.schain") or _obj(
        _obj(source, "ext", "source.ext"), "schain", "source.ext.schain")
    nodes = schain.get("nodes")
    if not nodes:
        return None
    if not isinstance(nodes, list) or not _is_object(nodes[-1]):
        raise _Breach(WRONG_TYPE, "schain.nodes is not an array of objects")
    return _text(nodes[-1].get("asi"), "schain.nodes[-1].asi")


def _ad_format(c: _Context) -> str | None:
    """The first of `imp.banner`, `imp.video`, `imp.native`, `imp.audio` present (a
    multi-format imp counts as the first, in the contract's order)."""
    for name in _AD_FORMATS:
        value = c.imp.get(name)
        if value is not None:
            if not _is_object(value):
                raise _Breach(WRONG_TYPE, f"imp.{name} is not an object")
            return name
    return None


def _ad_size(c: _Context) -> str | None:
    """'WxH' from `banner.w/h` (else `banner.format[0]`), `video.w/h`, the native main image
    asset (type 3: `w/h`, else `wmin/hmin`); audio is '0x0'."""
    fmt = _ad_format(c)
    if fmt is None:
        return None
    obj = c.imp[fmt]
    if fmt == "banner":
        size = _size(obj.get("w"), obj.get("h"), "imp.banner")
        formats = obj.get("format")
        if size is None and isinstance(formats, list) and formats and isinstance(
                formats[0], Mapping):
            size = _size(formats[0].get("w"), formats[0].get("h"), "imp.banner.format[0]")
        return size
    if fmt == "video":
        return _size(obj.get("w"), obj.get("h"), "imp.video")
    if fmt == "native":
        return _native_size(obj.get("request"))
    return AUDIO_AD_SIZE


def _native_size(payload: Any) -> str | None:
    # The Native Ads request is an opaque JSON string; an unreadable one just has no size.
    try:
        doc = json.loads(payload) if isinstance(payload, str) else payload
        doc = doc.get("native", doc) if isinstance(doc, Mapping) else {}
        for asset in doc.get("assets") or ():
            img = asset.get("img") if isinstance(asset, Mapping) else None
            if isinstance(img, Mapping) and img.get("type") == NATIVE_MAIN_IMAGE:
                return _size(img.get("w") or img.get("wmin"), img.get("h") or img.get("hmin"),
                             "native.img")
    except (ValueError, AttributeError, TypeError, RecursionError, _Breach):
        return None
    return None


def _device_type(c: _Context) -> str | None:
    """`device.devicetype` (AdCOM): 1, 4 -> mobile; 5 -> tablet; 2 -> desktop; 3, 7 -> ctv;
    6 (Connected Device), 8 (OOH) and unknown codes are out_of_domain."""
    code = _integer(c.device().get("devicetype"), "device.devicetype")
    if code is None:
        return None
    if code not in _DEVICE_TYPE:
        name = ADCOM_DEVICE_TYPES.get(code, "unknown code")
        raise _Breach(OUT_OF_DOMAIN, f"device.devicetype {code} ({name}) has no contract "
                                     "device_type")
    return _DEVICE_TYPE[code]


def _device_make(c: _Context) -> str | None:
    """`device.make` as given."""
    return _text(c.device().get("make"), "device.make")


def _device_model(c: _Context) -> str | None:
    """`device.model` as given."""
    return _text(c.device().get("model"), "device.model")


def _os(c: _Context) -> str | None:
    """`device.os` as given."""
    return _text(c.device().get("os"), "device.os")


def _os_version(c: _Context) -> str | None:
    """`device.osv` as given."""
    return _text(c.device().get("osv"), "device.osv")


def _browser(c: _Context) -> str | None:
    """Site inventory only: the family in `device.ua` (`BROWSER_RULES`; TV platforms none).
    In-app traffic sends an SDK/webview agent, not a browser the user chose: None."""
    if c.inventory != "site":
        return None
    ua = _text(c.device().get("ua"), "device.ua")
    return parse_browser(ua) if ua else None


# Every contract column, in contract order, with the function that maps it.
EXTRACTORS: dict[str, Callable[[_Context], Any]] = {
    IMPRESSION_ID: _impression_id, USER_ID: _user_id, TS: _ts, COUNTRY: _country,
    "geo_region": _geo_region, "metro": _metro, "zip": _zip,
    "inventory_type": _inventory_type, "site_or_app": _site_or_app,
    "content_category": _content_category, "supply_vendor": _supply_vendor,
    "ad_format": _ad_format, "ad_size": _ad_size, "device_type": _device_type,
    "device_make": _device_make, "device_model": _device_model, "os": _os,
    "os_version": _os_version, "browser": _browser,
}
if list(EXTRACTORS) != contract.IMPRESSIONS.names:
    raise ImportError(f"EXTRACTORS {list(EXTRACTORS)} do not match the contract's impression "
                      f"columns {contract.IMPRESSIONS.names}")
_PATTERNS = {c.name: re.compile(c.pattern) for c in contract.IMPRESSIONS.columns if c.pattern}


def _first_problem(row: Mapping[str, Any], breaches: Mapping[str, _Breach]
                   ) -> tuple[str, str, str] | None:
    """The contract's precedence: the first reason code that applies, then column order."""
    found: list[tuple[int, int, str, str, str]] = []
    for j, spec in enumerate(contract.IMPRESSIONS.columns):
        name, value = spec.name, row[spec.name]
        if name in breaches:
            b = breaches[name]
            found.append((REASONS.index(b.reason), j, b.reason, name, b.detail))
        elif value is None:
            if spec.required:
                found.append((REASONS.index(NULL_REQUIRED), j, NULL_REQUIRED, name,
                              f"no value for required column {name}"))
        elif spec.allowed is not None and value not in spec.allowed:
            found.append((REASONS.index(OUT_OF_DOMAIN), j, OUT_OF_DOMAIN, name,
                          f"{name}={value!r} not in {spec.allowed}"))
        elif name in _PATTERNS and not _PATTERNS[name].match(value):
            found.append((REASONS.index(OUT_OF_DOMAIN), j, OUT_OF_DOMAIN, name,
                          f"{name}={value!r} does not match {spec.pattern}"))
    return min(found)[2:] if found else None


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
    return [_scorer_row(row) for row in map_request(request, ts)]


def _scorer_row(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(row)
    if out[TS] is not None:
        out[TS] = math.floor(out[TS].timestamp())
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
    rows = [_scorer_row(m.row) for m in mapped]
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


# ------------------------------------------------------------------------------- the inverse

# User agents the inverse writes for a browser; parse_browser reads each back to its name.
_UA_PLATFORM = {"iOS": "iPhone; CPU iPhone OS 17_4 like Mac OS X",
                "Android": "Linux; Android 14", "Windows": "Windows NT 10.0; Win64; x64",
                "macOS": "Macintosh; Intel Mac OS X 10_15_7",
                "ChromeOS": "X11; CrOS x86_64 15633.0.0", "Linux": "X11; Linux x86_64",
                "Fire OS": "Linux; Android 9; KFTRWI"}
_WEBKIT = "AppleWebKit/537.36 (KHTML, like Gecko)"
_UA_BROWSER = {
    "Chrome": f"{_WEBKIT} Chrome/124.0.0.0 Safari/537.36",
    "Safari": "AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Firefox": "Gecko/20100101 Firefox/125.0",
    "Edge": f"{_WEBKIT} Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51",
    "Opera": f"{_WEBKIT} Chrome/124.0.0.0 Safari/537.36 OPR/109.0.0.0",
    "Samsung Internet": f"{_WEBKIT} SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
    "Silk": f"{_WEBKIT} Silk/124.2.1 like Chrome/124.0.0.0 Safari/537.36",
}


def contract_row_to_bid_request(row: Mapping[str, Any]) -> dict[str, Any]:
    """A one-imp BidRequest that ``map_request`` maps back to ``row`` (all but ``ts``, which
    travels on the log line: see ``bid_request_line``).

    Raises:
        ValueError: the row has a value the mapping cannot carry (a browser on app inventory,
            an audio size other than '0x0', a size that is not 'WxH', an unknown country).
    """
    get = row.get
    inventory = get("inventory_type")
    request: dict[str, Any] = {"id": get(IMPRESSION_ID)}
    fmt, size = get("ad_format"), get("ad_size")
    request["imp"] = [{"id": "1", **({fmt: _format_object(fmt, size)} if fmt else {})}]
    if fmt is None and size is not None:
        raise ValueError(f"ad_size {size!r} without an ad_format cannot be carried")
    if inventory is not None:
        key = "domain" if inventory == "site" else "bundle"
        obj = _drop_none({key: get("site_or_app")})
        category = get("content_category")
        if category is not None:
            m = re.fullmatch(r"cattax(\d+):(.*)", category, flags=re.S)
            obj.update({"cat": [m.group(2)], "cattax": int(m.group(1))} if m
                       else {"cat": [category]})
        request[inventory] = obj
    if get("supply_vendor") is not None:
        request["source"] = {"schain": {"complete": 1, "ver": "1.0", "nodes": [
            {"asi": get("supply_vendor"), "sid": "1", "hp": 1}]}}
    country = get(COUNTRY)
    alpha3 = None
    if country is not None:
        alpha3 = _alpha3_of().get(country)
        if alpha3 is None:
            raise ValueError(f"country {country!r} is not an ISO-3166-1 alpha-2 code")
    geo = _drop_none({"country": alpha3, "region": get("geo_region"), "metro": get("metro"),
                      "zip": get("zip")})
    browser = get("browser")
    ua = None
    if browser is not None:
        if inventory != "site" or browser not in _UA_BROWSER:
            raise ValueError(f"browser {browser!r} on {inventory} inventory cannot be carried")
        ua = f"Mozilla/5.0 ({_UA_PLATFORM.get(get('os'), 'compatible')}) {_UA_BROWSER[browser]}"
    device_type = get("device_type")
    device = _drop_none({
        "devicetype": _DEVICE_CODE[device_type] if device_type is not None else None,
        "make": get("device_make"), "model": get("device_model"), "os": get("os"),
        "osv": get("os_version"), "ua": ua, "geo": geo or None})
    if device:
        request["device"] = device
    if get(USER_ID) is not None:
        request["user"] = {"id": get(USER_ID)}
    return request


def _format_object(fmt: str, size: str | None) -> dict[str, Any]:
    w = h = None
    if size is not None:
        m = re.fullmatch(r"(\d+)x(\d+)", size)
        if m is None:
            raise ValueError(f"ad_size {size!r} is not 'WxH'")
        w, h = int(m.group(1)), int(m.group(2))
    if fmt == "audio":
        if size != AUDIO_AD_SIZE:
            raise ValueError(f"audio ad_size {size!r} cannot be carried (audio is "
                             f"{AUDIO_AD_SIZE!r})")
        return {"mimes": ["audio/mp4"]}
    if fmt == "banner":
        return _drop_none({"w": w, "h": h})
    if fmt == "video":
        return _drop_none({"mimes": ["video/mp4"], "w": w, "h": h})
    asset = ({"id": 1, "required": 1, "img": {"type": NATIVE_MAIN_IMAGE, "w": w, "h": h}}
             if size is not None else {"id": 1, "required": 1, "title": {"len": 90}})
    return {"ver": "1.2", "request": json.dumps({"ver": "1.2", "assets": [asset]})}


def _drop_none(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def bid_request_line(request: Mapping[str, Any], ts: dt.datetime | None) -> str:
    """One log line (the envelope format) for ``request`` at ``ts`` (UTC, microseconds kept)."""
    stamp = None if ts is None else ts.astimezone(dt.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps({LINE_TS: stamp, LINE_REQUEST: request}, separators=(",", ":"))


# ------------------------------------------------------------------------------- docs

def render_mapping() -> str:
    """The mapping table (Markdown), from the extractors' docstrings."""
    lines = ["| contract column | from OpenRTB 2.6 |", "|---|---|"]
    for name, fn in EXTRACTORS.items():
        doc = " ".join((fn.__doc__ or "").split())
        lines.append(f"| `{name}` | {doc} |")
    return "\n".join(lines)
