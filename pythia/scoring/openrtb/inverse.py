"""The inverse mapping: contract rows -> OpenRTB 2.6 bid requests and bid-log lines.

``contract_row_to_bid_request`` builds a one-imp request that ``map_request`` maps back to the
row; it emits the synthetic world as bid requests and tests the round trip.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any, Mapping

from pythia.features import COUNTRY, IMPRESSION_ID, USER_ID
from pythia.scoring.openrtb.columns import AUDIO_AD_SIZE, NATIVE_MAIN_IMAGE, _DEVICE_CODE
from pythia.scoring.openrtb.mapping import LINE_REQUEST, LINE_TS
from pythia.scoring.openrtb.values import _alpha3_of

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
