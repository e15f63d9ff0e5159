"""Every ISO-3166 country's model region and IANA time zone, from the data file ``data/geo.json``.

Regions. Every ISO-3166-1 alpha-2 country (pycountry's list, plus the user-assigned ``XK`` that
exchanges send for Kosovo) gets an ad-market region from its UN M49 area (``data/geo.json``):
Northern America -> NA; Latin America and the Caribbean (South and Central America,
Caribbean) -> LATAM; Europe (Eastern, Northern, Southern, Western) -> EU; Africa and Western
Asia -> MEA; the rest of Asia (Eastern, South-eastern, Southern, Central) and Oceania -> APAC.
Four exceptions win over the rule: MX -> NA (as before: ad markets sell it with the US and
Canada), CY -> EU (an EU member state), IR -> MEA (Middle East) and AQ -> APAC (no M49 area).
A code that is not a country (or empty) belongs to ``OTHER_REGION``. The map is plain data:
``load_region_map`` patches or replaces it from a user's file or a flow ``Config`` table.

Zones. A country's clock is its IANA zone; countries that span several zones use the ISO-3166-2
subdivision in ``geo_region`` ('US-CA' or 'CA', as OpenRTB sends it) where the data file knows
it, else their most populous zone; unknown countries use UTC (``zone_of``).
``pythia.geo.offsets`` compiles those zones into the offset table.
"""
from __future__ import annotations

import functools
import importlib.resources
import json
import re
from typing import Any, Mapping

REGIONS: tuple[str, ...] = ("NA", "LATAM", "EU", "APAC", "MEA")  # the default's regions
OTHER_REGION = "OTHER"  # a country code the map does not know
UTC_ZONE = "Etc/UTC"  # the clock of an unknown country

_DATA_FILE = "geo.json"
# A region name is also a file-name part of the bundle (weights-<region>.npz); "global" is the
# name of the fallback model, not a region.
_REGION_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_RESERVED_REGIONS = ("global",)


# ---------------------------------------------------------------- the data file

@functools.cache
def _data() -> dict[str, Any]:
    text = importlib.resources.files("pythia").joinpath("data", _DATA_FILE).read_text("utf8")
    return json.loads(text)


@functools.cache
def known_countries() -> frozenset[str]:
    """Country codes the geography accepts: ISO-3166-1 alpha-2 (pycountry) plus the extras."""
    import pycountry

    return frozenset(c.alpha_2 for c in pycountry.countries) | frozenset(
        _data()["extra_countries"])


# ---------------------------------------------------------------- regions

def default_region_map() -> dict[str, str]:
    """Country -> ad-market region for every known country (the module docstring's rule)."""
    return dict(_default_region_map())


@functools.cache
def _default_region_map() -> dict[str, str]:
    data = _data()
    out = {c: area["region"] for area in data["m49_areas"].values() for c in area["countries"]}
    out.update({c: e["region"] for c, e in data["region_exceptions"].items()})
    out.update({c: e["region"] for c, e in data["extra_countries"].items()})
    return dict(sorted(out.items()))


def region_of(country: Any, region_map: Mapping[str, str] | None = None) -> str:
    """The region of a country code in ``region_map`` (default map if None); else OTHER_REGION."""
    regions = _default_region_map() if region_map is None else region_map
    return regions.get(country, OTHER_REGION) if isinstance(country, str) else OTHER_REGION


def load_region_map(overrides: Mapping[str, str] | None = None, *,
                    replace: bool = False) -> dict[str, str]:
    """The default region map patched (or replaced) by a user's overrides.

    Args:
        overrides: country code -> region name, e.g. a Metaflow ``Config`` TOML table
            ``[geography.regions]`` or ``read_region_overrides(path)``. Codes are
            case-insensitive ISO-3166-1 alpha-2; region names are free (``DACH``, ``OTHER`` …)
            but must be usable in file names and may not be ``global``.
        replace: if True the overrides are the whole map: countries they omit fall into
            ``OTHER_REGION``.

    Raises:
        ValueError: one line naming the first bad country code or region name.
    """
    out = {} if replace else default_region_map()
    known, seen = known_countries(), set()
    for key, region in (overrides or {}).items():
        code = key.strip().upper() if isinstance(key, str) else key
        if not isinstance(code, str) or code not in known:
            raise ValueError(f"region override {key!r}: not an ISO-3166-1 alpha-2 country code "
                             f"(e.g. 'US', 'DE')")
        if code in seen:
            raise ValueError(f"region override {key!r}: country {code!r} is given twice")
        seen.add(code)
        if (not isinstance(region, str) or not _REGION_NAME.match(region)
                or region.lower() in _RESERVED_REGIONS):
            raise ValueError(f"region override {key!r} = {region!r}: a region name is letters, "
                             f"digits, '_', '.' or '-' and not {_RESERVED_REGIONS[0]!r}")
        out[code] = region
    return dict(sorted(out.items()))


def read_region_overrides(path: str) -> dict[str, str]:
    """Country -> region overrides from a ``.toml`` or ``.json`` file.

    TOML: either a ``[regions]`` table or top-level ``US = "NA"`` lines; JSON: an object, or one
    with a ``"regions"`` object. Validate the result with ``load_region_map``.
    """
    if path.endswith(".toml"):
        import tomllib

        with open(path, "rb") as f:
            doc = tomllib.load(f)
    elif path.endswith(".json"):
        with open(path, encoding="utf8") as f:
            doc = json.load(f)
    else:
        raise ValueError(f"region overrides {path}: expected a .toml or .json file")
    if isinstance(doc, dict) and isinstance(doc.get("regions"), dict):
        doc = doc["regions"]
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise ValueError(f"region overrides {path}: expected COUNTRY = \"REGION\" entries")
    return dict(doc)


# ---------------------------------------------------------------- zones

def country_zones() -> dict[str, str]:
    """Country -> its IANA zone (the most populous one where a country spans several)."""
    data = _data()
    out = dict(data["country_zones"])
    out.update({c: e["zone"] for c, e in data["extra_countries"].items()})
    return out


def subdivision_zones() -> dict[str, str]:
    """ISO-3166-2 subdivision ('US-CA') -> IANA zone, for countries that span several zones."""
    return {s: z for subs in _data()["subdivision_zones"].values() for s, z in subs.items()}


def subdivision_code(country: str, geo_region: Any) -> str | None:
    """The ISO-3166-2 code a ``geo_region`` names: 'CA' or ' us-ca' -> 'US-CA'; None if unusable."""
    if not isinstance(geo_region, str):
        return None
    code = geo_region.strip().upper()
    if not code:
        return None
    return code if code.startswith(country + "-") else f"{country}-{code}"


def zone_of(country: str | None, geo_region: str | None = None) -> str:
    """The IANA zone of an impression (the rule ``build_offset_table`` compiles).

    Args:
        country: ISO-3166-1 alpha-2 code (upper case, as the contract has it).
        geo_region: the impression's ISO-3166-2 subdivision ('US-CA' or 'CA'), if any.
    """
    zones = country_zones()
    if country not in zones:
        return UTC_ZONE
    code = subdivision_code(country, geo_region)
    if code is not None:
        zone = _data()["subdivision_zones"].get(country, {}).get(code)
        if zone is not None:
            return zone
    return zones[country]
