"""One contract column per function: the extractors that map an OpenRTB ``imp`` to a row.

``EXTRACTORS`` lists them in contract order; their docstrings are the mapping table
(``render_mapping``). ``_first_problem`` picks a row's first contract breach.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import urllib.parse
from typing import Any, Callable, Mapping

from pythia import contract
from pythia.contract import BAD_TIMESTAMP, NULL_REQUIRED, OUT_OF_DOMAIN, REASONS, WRONG_TYPE
from pythia.features import COUNTRY, IMPRESSION_ID, TS, USER_ID
from pythia.scoring.openrtb.values import (_Breach, _integer, _is_object, _obj, _size, _text,
                                           country_alpha2, parse_browser, parse_ts)

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


def render_mapping() -> str:
    """The mapping table (Markdown), from the extractors' docstrings."""
    lines = ["| contract column | from OpenRTB 2.6 |", "|---|---|"]
    for name, fn in EXTRACTORS.items():
        doc = " ".join((fn.__doc__ or "").split())
        lines.append(f"| `{name}` | {doc} |")
    return "\n".join(lines)
