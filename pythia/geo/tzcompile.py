"""Compiling the offset table: each country's IANA zone (``zoneinfo`` over the ``tzdata``
package, daylight saving included) as plain transition/offset arrays in a JSON document, which
``pythia.geo.offsets.OffsetTable`` reads; split from ``pythia.geo.offsets`` to keep each file
short.
"""
from __future__ import annotations

import datetime as dt
import importlib.resources
import io
import struct
from typing import Any, Iterable

from pythia.geo.countries import _data, country_zones

DEFAULT_YEARS: tuple[int, int] = (2000, 2045)  # instants outside keep the nearest year's offset

OFFSETS_FORMAT = "pythia-utc-offsets"
OFFSETS_FORMAT_VERSION = 1

_RULE_PROBE_SECONDS = 7 * 86_400  # probe step where a zone file's POSIX rule applies


def _tzdata_version() -> str:
    from importlib.metadata import version

    return version("tzdata")


def _tzif_bytes(zone: str) -> bytes:
    """The zone's TZif file from the ``tzdata`` package (not the host's): the same everywhere."""
    path = importlib.resources.files("tzdata.zoneinfo").joinpath(*zone.split("/"))
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise ValueError(f"time zone {zone!r} is not in tzdata {_tzdata_version()}") from exc


def _tzif_transitions(data: bytes) -> list[int]:
    """The explicit transition instants of a TZif file (RFC 8536; the 64-bit block if any)."""
    if data[:4] != b"TZif":
        raise ValueError("not a TZif file")
    isut, isstd, leap, timecnt, typecnt, charcnt = struct.unpack(">6l", data[20:44])
    if data[4] == 0:  # version 1: 32-bit times only
        return list(struct.unpack(f">{timecnt}l", data[44:44 + 4 * timecnt]))
    second = 44 + timecnt * 5 + typecnt * 6 + charcnt + leap * 8 + isstd + isut
    timecnt = struct.unpack(">6l", data[second + 20:second + 44])[3]
    return list(struct.unpack(f">{timecnt}q", data[second + 44:second + 44 + 8 * timecnt]))


def _zone_series(zone: str, start: int, end: int) -> tuple[list[int], list[int]]:
    """(transition instants, UTC offsets in minutes) of ``zone`` over [start, end).

    The first instant is ``start`` with the offset then in force; each later one is a change.
    Offsets come from ``zoneinfo``. Where they change: at the file's explicit transitions
    (checked, since some change only the abbreviation), and after the last of them, where the
    file's POSIX rule applies (at most two changes a year, months apart), at changes found by
    probing weekly and bisecting to the second.
    """
    import zoneinfo

    data = _tzif_bytes(zone)
    tz = zoneinfo.ZoneInfo.from_file(io.BytesIO(data), key=zone)

    def offset(t: int) -> int:
        return int(dt.datetime.fromtimestamp(t, tz).utcoffset().total_seconds())

    listed = _tzif_transitions(data)
    explicit = [t for t in listed if start < t < end]
    rule_from = max([start, *listed])
    points = explicit + list(range(rule_from + _RULE_PROBE_SECONDS, end, _RULE_PROBE_SECONDS))
    transitions, offsets = [start], [offset(start)]
    t, current = start, offsets[0]
    for probe in sorted(set(points)):
        if probe <= t or offset(probe) == current:
            continue
        lo, hi = t, probe  # offset is `current` on [t, lo] and differs at hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if offset(mid) == current else (lo, mid)
        current = offset(hi)
        transitions.append(hi)
        offsets.append(current)
        t = hi
    if any(o % 60 for o in offsets):
        raise ValueError(f"time zone {zone!r} has an offset that is not whole minutes")
    return transitions, [o // 60 for o in offsets]


def build_offset_table(countries: Iterable[str] | None = None,
                       years: tuple[int, int] = DEFAULT_YEARS) -> dict[str, Any]:
    """Compile the UTC offsets the ETL and the scorer need into a JSON-able document.

    Args:
        countries: the countries to cover (default: every known country); e.g. the countries
            of a run's data, to keep the bundle small.
        years: first and last calendar year (UTC) whose transitions are compiled; an instant
            before/after keeps the offset in force at the start/end of the range.

    Returns:
        ``{'format', 'format_version', 'years', 'tzdata', 'countries': {country: zone},
        'subdivisions': {'US-CA': zone} (only those whose zone differs from their country's),
        'zones': {zone: {'transitions': [epoch s], 'offsets_minutes': [min]} or
        {'same_as': zone}}}`` -- a zone whose series equals an earlier one names it.

    Raises:
        ValueError: an unknown country code or a bad year range (one line naming it).
    """
    first, last = int(years[0]), int(years[1])
    if not 1900 <= first <= last <= 2200:
        raise ValueError(f"offset table years {years!r}: expected (first, last) within 1900..2200")
    zones_of = country_zones()
    chosen = sorted(zones_of) if countries is None else sorted(set(countries))
    for c in chosen:
        if c not in zones_of:
            raise ValueError(f"offset table: {c!r} is not an ISO-3166-1 alpha-2 country code")
    country_zone = {c: zones_of[c] for c in chosen}
    subdivisions = {}
    for c in chosen:
        for code, zone in _data()["subdivision_zones"].get(c, {}).items():
            if zone != country_zone[c]:
                subdivisions[code] = zone
    start = int(dt.datetime(first, 1, 1, tzinfo=dt.timezone.utc).timestamp())
    end = int(dt.datetime(last + 1, 1, 1, tzinfo=dt.timezone.utc).timestamp())
    zones: dict[str, dict[str, Any]] = {}
    first_with: dict[tuple, str] = {}
    by_file: dict[bytes, tuple[list[int], list[int]]] = {}  # links are copies in tzdata
    # Countries' own zones first, so they hold the series and subdivisions' zones name them.
    ordered = sorted(set(country_zone.values()))
    ordered += sorted(set(subdivisions.values()) - set(ordered))
    for zone in ordered:
        data = _tzif_bytes(zone)
        if data not in by_file:
            by_file[data] = _zone_series(zone, start, end)
        transitions, offsets = by_file[data]
        key = (tuple(transitions), tuple(offsets))
        if key in first_with:
            zones[zone] = {"same_as": first_with[key]}
        else:
            first_with[key] = zone
            zones[zone] = {"transitions": transitions, "offsets_minutes": offsets}
    return {"format": OFFSETS_FORMAT, "format_version": OFFSETS_FORMAT_VERSION,
            "years": [first, last], "tzdata": _tzdata_version(),
            "countries": country_zone, "subdivisions": dict(sorted(subdivisions.items())),
            "zones": zones}
