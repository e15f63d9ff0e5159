"""Unit tests: every ISO-3166 country has a region and a clock; DST; the compiled offset table."""
import datetime as dt
import importlib.resources
import io
import json
import zoneinfo

import numpy as np
import pycountry
import pytest

from pythia import geo
from pythia.features import derive_time_features

ISO_COUNTRIES = sorted(c.alpha_2 for c in pycountry.countries)
LEGACY_REGIONS = {"US": "NA", "CA": "NA", "MX": "NA", "GB": "EU", "DE": "EU", "FR": "EU",
                  "ES": "EU", "JP": "APAC", "AU": "APAC", "IN": "APAC", "BR": "LATAM",
                  "AR": "LATAM"}


@pytest.fixture(scope="module")
def table() -> geo.OffsetTable:
    return geo.OffsetTable.build()  # every country, 2000..2045 (about 2 s)


def _ts(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc).timestamp())


def _zone_tab() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    text = importlib.resources.files("tzdata.zoneinfo").joinpath("zone.tab").read_text()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            country, _, zone = line.split("\t")[:3]
            out.setdefault(country, []).append(zone)
    return out


# ---------------------------------------------------------------- regions

def test_every_iso_country_has_a_region_and_an_offset(table):
    regions = geo.default_region_map()
    assert set(ISO_COUNTRIES) <= set(regions) and set(regions) <= geo.known_countries()
    assert set(regions.values()) == set(geo.REGIONS)
    assert set(ISO_COUNTRIES) <= set(table.countries)
    stamp = _ts("2024-07-01T12:00:00")
    offsets = table.offset_minutes(np.full(len(ISO_COUNTRIES), stamp), ISO_COUNTRIES)
    assert offsets.shape == (len(ISO_COUNTRIES),) and np.all(np.abs(offsets) <= 14 * 60)
    for country in ISO_COUNTRIES:
        assert geo.region_of(country) in geo.REGIONS
        assert type(table.offset_minutes(stamp, country)) is int


def test_legacy_countries_keep_their_regions():
    regions = geo.default_region_map()
    assert {c: regions[c] for c in LEGACY_REGIONS} == LEGACY_REGIONS


def test_region_rule_is_m49_plus_listed_exceptions():
    data = geo._data()
    areas = data["m49_areas"]
    listed = [c for area in areas.values() for c in area["countries"]]
    assert len(listed) == len(set(listed)), "a country in two M49 areas"
    assert set(listed) | {"AQ"} == set(ISO_COUNTRIES)  # Antarctica has no M49 area
    regions = geo.default_region_map()
    exceptions = data["region_exceptions"]
    for area in areas.values():
        assert area["region"] in geo.REGIONS
        for c in area["countries"]:
            assert regions[c] == exceptions.get(c, area)["region"]
    assert set(exceptions) == {"MX", "CY", "IR", "AQ"}
    assert regions["NG"] == "MEA" and regions["SA"] == "MEA" and regions["PL"] == "EU"
    assert regions["CO"] == "LATAM" and regions["KZ"] == "APAC" and regions["NZ"] == "APAC"


@pytest.mark.parametrize("country", ["ZZ", "", None, "us", "USA", 7])
def test_unknown_country_is_other_and_utc(table, country):
    assert geo.region_of(country) == geo.OTHER_REGION
    assert table.offset_minutes(_ts("2024-07-01T12:00:00"), country) == 0
    assert geo.zone_of(country) == table.zone_of(country) == geo.UTC_ZONE


def test_region_overrides_patch_or_replace_the_default():
    patched = geo.load_region_map({"de": "DACH", "AT": "DACH", "XK": "OTHER"})
    assert patched["DE"] == patched["AT"] == "DACH" and patched["XK"] == "OTHER"
    assert patched["FR"] == "EU" and len(patched) == len(geo.default_region_map())
    replaced = geo.load_region_map({"US": "NA"}, replace=True)
    assert replaced == {"US": "NA"} and geo.region_of("DE", replaced) == geo.OTHER_REGION
    assert geo.load_region_map(None) == geo.default_region_map()


@pytest.mark.parametrize("overrides, named", [
    ({"XX": "EU"}, "'XX'"), ({"UK": "EU"}, "'UK'"), ({"USA": "NA"}, "'USA'"),
    ({"DE": "global"}, "'DE'"), ({"DE": "EU west"}, "'DE'"), ({"DE": 3}, "'DE'"),
    ({"de": "A", "DE": "B"}, "'DE'"),
])
def test_bad_region_override_is_one_line_naming_it(overrides, named):
    with pytest.raises(ValueError) as err:
        geo.load_region_map(overrides)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_read_region_overrides_from_toml_and_json(tmp_path):
    (tmp_path / "a.toml").write_text('[regions]\nDE = "DACH"\nAT = "DACH"\n')
    (tmp_path / "b.toml").write_text('CH = "DACH"\n')
    (tmp_path / "c.json").write_text(json.dumps({"regions": {"NG": "AFRICA"}}))
    assert geo.read_region_overrides(str(tmp_path / "a.toml")) == {"DE": "DACH", "AT": "DACH"}
    assert geo.read_region_overrides(str(tmp_path / "b.toml")) == {"CH": "DACH"}
    assert geo.read_region_overrides(str(tmp_path / "c.json")) == {"NG": "AFRICA"}
    (tmp_path / "d.yaml").write_text("DE: DACH\n")
    with pytest.raises(ValueError, match="toml or .json"):
        geo.read_region_overrides(str(tmp_path / "d.yaml"))


# ---------------------------------------------------------------- the zone data

def test_zone_data_names_real_codes_and_tzdata_zones():
    zone_tab = _zone_tab()
    zones = geo.country_zones()
    assert set(zones) == geo.known_countries()
    for country, zone in zones.items():
        geo._tzif_bytes(zone)  # exists in the tzdata package
        if country in zone_tab:  # the only zone, or one of the country's (its most populous)
            assert zone in zone_tab[country], country
    for country, subs in geo._data()["subdivision_zones"].items():
        known = {s.code for s in pycountry.subdivisions.get(country_code=country)}
        assert set(subs) <= known, sorted(set(subs) - known)
        for zone in subs.values():
            geo._tzif_bytes(zone)
    subdivided = set(geo._data()["subdivision_zones"])
    assert {"US", "CA", "AU", "BR", "MX", "RU"} <= subdivided
    for country in ("US", "CA", "AU", "BR", "MX", "RU"):  # every state/province/subject
        known = {s.code for s in pycountry.subdivisions.get(country_code=country)}
        assert known == set(geo._data()["subdivision_zones"][country]), country


@pytest.mark.parametrize("country, geo_region, zone", [
    ("US", None, "America/New_York"), ("US", "CA", "America/Los_Angeles"),
    ("US", "US-CA", "America/Los_Angeles"), ("US", " us-ca ", "America/Los_Angeles"),
    ("US", "AZ", "America/Phoenix"), ("US", "XX", "America/New_York"),
    ("US", "US-01", "America/New_York"), ("MX", "US-CA", "America/Mexico_City"),
    ("CA", None, "America/Toronto"), ("CA", "BC", "America/Vancouver"),
    ("BR", None, "America/Sao_Paulo"), ("BR", "AM", "America/Manaus"),
    ("RU", None, "Europe/Moscow"), ("RU", "RU-PRI", "Asia/Vladivostok"),
    ("AU", "NSW", "Australia/Sydney"), ("AU", "WA", "Australia/Perth"),
    ("ES", "CN", "Atlantic/Canary"), ("DE", "BY", "Europe/Berlin"), ("JP", "13", "Asia/Tokyo"),
    ("ID", None, "Asia/Jakarta"), ("KZ", None, "Asia/Almaty"), ("CD", None, "Africa/Kinshasa"),
])
def test_zone_of_uses_the_subdivision_else_the_most_populous_zone(table, country, geo_region,
                                                                  zone):
    assert geo.zone_of(country, geo_region) == zone
    assert table.zone_of(country, geo_region) == zone


# ---------------------------------------------------------------- DST and local hours

def _local_hour(table, utc: str, country, geo_region=None) -> tuple[int, int]:
    ts = _ts(utc)
    offset = geo.local_offset_minutes(ts, country, geo_region, table)
    return offset, int(derive_time_features(ts, offset)["local_hour"])


@pytest.mark.parametrize("country, geo_region, utc, offset, hour", [
    # US East: 2024-03-10 02:00 EST -> 03:00 EDT (07:00 UTC); 2024-11-03 02:00 EDT -> 01:00 EST
    ("US", None, "2024-03-10T06:59:59", -300, 1), ("US", None, "2024-03-10T07:00:00", -240, 3),
    ("US", None, "2024-11-03T05:30:00", -240, 1), ("US", None, "2024-11-03T06:30:00", -300, 1),
    # California, by subdivision in both spellings: the same changes at 10:00 / 09:00 UTC
    ("US", "US-CA", "2024-03-10T09:30:00", -480, 1), ("US", "CA", "2024-03-10T10:30:00", -420, 3),
    ("US", "CA", "2024-11-03T08:30:00", -420, 1), ("US", "US-CA", "2024-11-03T09:30:00", -480, 1),
    # Germany: 2024-03-31 02:00 CET -> 03:00 CEST (01:00 UTC); 2024-10-27 03:00 -> 02:00
    ("DE", None, "2024-03-31T00:59:59", 60, 1), ("DE", None, "2024-03-31T01:00:00", 120, 3),
    ("DE", None, "2024-10-27T00:30:00", 120, 2), ("DE", None, "2024-10-27T01:30:00", 60, 2),
    # New South Wales (southern hemisphere): DST ends 2024-04-07 03:00 AEDT, starts 10-06 02:00
    ("AU", "AU-NSW", "2024-04-06T15:30:00", 660, 2), ("AU", "NSW", "2024-04-06T16:30:00", 600, 2),
    ("AU", "NSW", "2024-10-05T15:30:00", 600, 1), ("AU", "AU-NSW", "2024-10-05T16:30:00", 660, 3),
    ("AU", "QLD", "2024-01-15T00:00:00", 600, 10),  # Queensland keeps no DST
    # No DST: Japan and India (+05:30) in winter and summer
    ("JP", None, "2024-01-15T00:00:00", 540, 9), ("JP", None, "2024-07-15T00:00:00", 540, 9),
    ("IN", None, "2024-01-15T00:45:00", 330, 6), ("IN", None, "2024-07-15T00:45:00", 330, 6),
    ("ZZ", None, "2024-07-15T00:45:00", 0, 0), (None, None, "2024-07-15T13:45:00", 0, 13),
])
def test_local_hour_on_both_sides_of_dst_changes(table, country, geo_region, utc, offset, hour):
    assert _local_hour(table, utc, country, geo_region) == (offset, hour)
    # the batch path (ETL) gives the same as the one-request path (scorer)
    many = geo.local_offset_minutes(np.array([_ts(utc)] * 3), [country] * 3, [geo_region] * 3,
                                    table)
    assert many.tolist() == [offset] * 3


def test_table_agrees_with_zoneinfo_in_every_zone(table):
    """Around every compiled transition and at random instants, the table is zoneinfo's answer."""
    rng = np.random.default_rng(0)
    doc = table.to_json()
    lo, hi = _ts("2000-01-01T00:00:00"), _ts("2046-01-01T00:00:00")
    for zone, entry in doc["zones"].items():
        series = doc["zones"][entry["same_as"]] if "same_as" in entry else entry
        tz = zoneinfo.ZoneInfo.from_file(io.BytesIO(geo._tzif_bytes(zone)), key=zone)
        probes = [t + d for t in series["transitions"][1:] for d in (-1, 0)]
        probes += rng.integers(lo, hi, 40).tolist()
        for t in probes:
            want = dt.datetime.fromtimestamp(t, tz).utcoffset().total_seconds() / 60
            pos = np.searchsorted(series["transitions"], t, side="right") - 1
            assert series["offsets_minutes"][max(pos, 0)] == want, (zone, t)


def test_scalar_and_array_lookups_agree(table):
    rng = np.random.default_rng(1)
    n = 3000
    # half the rows in countries with subdivision zones, so the regions below often apply
    countries = np.where(
        rng.random(n) < 0.5,
        rng.choice(np.array(["US", "AU", "RU", "BR", "CA"], dtype=object), n),
        rng.choice(np.array(ISO_COUNTRIES + ["ZZ", "", None, "us"], dtype=object), n))
    regions = rng.choice(np.array(["CA", "US-CA", "nsw", " AU-WA ", "PRI", "AM", "BC", None,
                                   "", float("nan")], dtype=object), n)
    ts = rng.integers(_ts("1995-01-01T00:00:00"), _ts("2050-01-01T00:00:00"), n)
    changes = table.to_json()["zones"]["America/Sao_Paulo"]["transitions"][1:]
    ts[:len(changes)] = changes  # exactly at a change (Sao Paulo kept DST until 2019)
    countries[:len(changes)] = "BR"
    many = geo.local_offset_minutes(ts, countries, regions, table)
    one = [geo.local_offset_minutes(int(t), c, r, table) for t, c, r in zip(ts, countries, regions)]
    assert many.dtype == np.int64 and many.tolist() == one
    # float and NumPy scalars, broadcasting of a scalar country or instant
    assert table.offset_minutes(float(ts[0]) + 0.5, "US") == table.offset_minutes(int(ts[0]), "US")
    assert table.offset_minutes(np.int64(ts[0]), "US") == table.offset_minutes(int(ts[0]), "US")
    assert table.offset_minutes(ts[:5], "DE").tolist() == [table.offset_minutes(int(t), "DE")
                                                           for t in ts[:5]]
    assert table.offset_minutes(int(ts[0]), ["US", "JP"]).tolist() == [
        table.offset_minutes(int(ts[0]), "US"), 540]
    with pytest.raises(ValueError, match="lengths differ"):
        table.offset_minutes(ts[:3], ["US", "DE"])


def _factorized(values: list) -> tuple[np.ndarray, list]:
    """(position of each value, distinct values), the last value's positions written -1."""
    distinct = list(dict.fromkeys(values))
    position = {v: i for i, v in enumerate(distinct)}
    at = np.array([position[v] for v in values], dtype=np.int64)
    at[at == len(distinct) - 1] = -1
    return at, distinct


class _ClaimsToBe:
    """A hostile code: hashes like 'US' and compares equal to anything."""

    def __hash__(self) -> int:
        return hash("US")

    def __eq__(self, other) -> bool:
        return True


def test_array_path_agrees_with_one_lookup_at_every_change(table):
    """At every compiled change of every zone, and a second either side, reached through every
    country and subdivision (both spellings, odd case and spaces) that names the zone, rows
    shuffled so pairs interleave: the array path gives what one lookup gives, which is
    zoneinfo's answer."""
    doc = table.to_json()
    owners = [(c, None) for c in doc["countries"]]
    for code in doc["subdivisions"]:
        country, short = code.split("-", 1)
        owners += [(country, code), (country, f" {short.lower()} ")]
    ts, countries, regions = [], [], []
    for country, region in owners:
        zone = table.zone_of(country, region)
        entry = doc["zones"][zone]
        changes = (doc["zones"][entry["same_as"]] if "same_as" in entry else entry)["transitions"]
        for t in changes[1:]:
            ts += [t - 1, t, t + 1]
            countries += [country] * 3
            regions += [region] * 3
    order = np.random.default_rng(2).permutation(len(ts))
    ts = np.array(ts, dtype=np.int64)[order]
    countries = np.array(countries, dtype=object)[order]
    regions = np.array(regions, dtype=object)[order]
    assert len(ts) > 10_000  # daylight saving in many zones over 46 years
    many = table.offset_minutes(ts, countries, regions)
    one = [table.offset_minutes(int(t), c, r) for t, c, r in zip(ts, countries, regions)]
    assert many.tolist() == one
    # factorised, as the scorer's batch encoder holds the columns (-1: the last value)
    coded = [_factorized(countries.tolist()), _factorized(regions.tolist())]
    assert (coded[1][0] == -1).any()
    assert table.offset_minutes_coded(ts, *coded[0], *coded[1]).tolist() == one
    # and zoneinfo agrees, for a sample of the rows
    for i in np.random.default_rng(3).choice(len(ts), 300, replace=False):
        tz = zoneinfo.ZoneInfo.from_file(io.BytesIO(geo._tzif_bytes(
            table.zone_of(countries[i], regions[i]))))
        want = dt.datetime.fromtimestamp(int(ts[i]), tz).utcoffset().total_seconds() / 60
        assert many[i] == want


def test_array_path_reads_odd_codes_as_one_lookup_does(table):
    """Codes that are not strings are no code (UTC, or the country's main zone) in both paths:
    unhashable ones, ones claiming to equal 'US', numbers, NaN, NumPy strings, and a column
    of one value standing for every row."""
    summer = _ts("2024-07-01T12:00:00")
    odd = [None, "US", "US", "us", _ClaimsToBe(), ["US"], {"US": 1}, 5, float("nan"),
           np.str_("US"), np.str_("AU"), b"US", "AU"]
    regions = ["CA", np.str_("CA"), " nsw ", ["CA"], _ClaimsToBe(), None, 7, "", b"CA",
               "US-CA", "AU-WA", float("nan"), "WA"]
    ts = np.full(len(odd), summer) + np.arange(len(odd))
    as_array = np.empty(len(odd), dtype=object)
    as_array[:] = odd

    def code(value):  # the documented rule: a string is a code, anything else is none
        return value if isinstance(value, str) else None

    want = [table.offset_minutes(int(t), code(c), code(r)) for t, c, r in zip(ts, odd, regions)]
    assert want == [0, -420, -240, 0, 0, 0, 0, 0, 0, -420, 480, 0, 480]
    for column in (odd, as_array):
        assert table.offset_minutes(ts, column, regions).tolist() == want
    distinct = list(range(len(odd)))  # unhashable values: factorised by position
    assert table.offset_minutes_coded(ts + 0.5, np.arange(len(odd)), odd, distinct[::-1],
                                      regions[::-1]).tolist() == want
    assert table.offset_minutes_coded(ts[:0], [], [], [], []).tolist() == []
    assert table.offset_minutes(ts, [_ClaimsToBe()], "CA").tolist() == [0] * len(ts)
    assert table.offset_minutes(ts, np.array(["US"] * len(ts)), "CA").tolist() == \
        [-420] * len(ts)
    assert table.offset_minutes(ts[:0], np.array([], dtype=object), []).tolist() == []


def test_instants_outside_the_years_keep_the_nearest_offset():
    small = geo.OffsetTable.build(["US", "AU"], years=(2024, 2024))
    assert small.offset_minutes(_ts("1990-07-01T00:00:00"), "US") == -300  # 2024-01-01's
    assert small.offset_minutes(_ts("2030-07-01T00:00:00"), "US") == -300  # after 2024-11-03
    assert small.offset_minutes(_ts("2024-07-01T00:00:00"), "US", "CA") == -420
    assert small.offset_minutes(_ts("2024-07-01T00:00:00"), "DE") == 0  # not compiled: UTC


# ---------------------------------------------------------------- the table as data

def test_json_round_trip_is_exact(table):
    doc = table.to_json()
    assert doc["format"] == geo.OFFSETS_FORMAT and doc["years"] == list(geo.DEFAULT_YEARS)
    text = json.dumps(doc)
    again = geo.OffsetTable.from_json(json.loads(text))
    assert again.to_json() == doc and json.dumps(again.to_json()) == text
    ts = np.arange(_ts("2023-01-01T00:00:00"), _ts("2025-01-01T00:00:00"), 3 * 3607)
    for country, region in [("US", "CA"), ("AU", "NSW"), ("BR", None), ("MA", None)]:
        assert (again.offset_minutes(ts, country, region).tolist()
                == table.offset_minutes(ts, country, region).tolist())


def test_restricted_table_and_bad_inputs():
    doc = geo.build_offset_table(["DE", "US"], years=(2023, 2025))
    assert set(doc["countries"]) == {"DE", "US"}
    assert {c.split("-")[0] for c in doc["subdivisions"]} == {"US"}
    assert doc["subdivisions"]["US-CA"] == "America/Los_Angeles"
    assert "US-NY" not in doc["subdivisions"]  # same zone as the country: not repeated
    with pytest.raises(ValueError, match="'XX'"):
        geo.build_offset_table(["US", "XX"])
    with pytest.raises(ValueError, match="years"):
        geo.build_offset_table(["US"], years=(2045, 2000))
    with pytest.raises(ValueError, match="format"):
        geo.OffsetTable.from_json({**doc, "format_version": 99})
    broken = json.loads(json.dumps(doc))
    broken["zones"]["America/New_York"]["transitions"].reverse()
    with pytest.raises(ValueError, match="sorted"):
        geo.OffsetTable.from_json(broken)


def test_compiled_table_is_small(table):
    size = len(json.dumps(table.to_json(), separators=(",", ":")))
    assert size < 200_000, size


def _expanded(table, ts, country_at, countries, region_at, regions) -> list[int]:
    """What one lookup gives for each row of factorised columns (the reference)."""
    return [table.offset_minutes(int(t), countries[c], regions[r])
            for t, c, r in zip(ts, country_at, region_at)]


def test_coded_pair_memo_gives_the_same_answers_batch_after_batch():
    """The (country, subdivision) memo: many batches with fresh, reordered code lists (as each
    Arrow table brings its own dictionary), pairs that differ between batches, a pair first
    seen late, null positions (-1 into a list ending in None) and codes that are not plain
    strings (resolved, never memoised): every batch equals one lookup per row."""
    table = geo.OffsetTable.build(["US", "AU", "BR", "DE", "RU", "CA", "MX", "GB"])
    rng = np.random.default_rng(11)
    subs = [code.split("-", 1)[1] for code in table.to_json()["subdivisions"]]
    regions_pool = subs + [f"US-{s}" for s in subs[:5]] + [" nsw ", "xx", ""]
    countries_pool = table.countries + ["ZZ", ""]
    start = _ts("2024-03-01T00:00:00")
    for batch in range(40):
        countries = rng.permutation(countries_pool).tolist() + [None]
        regions = rng.permutation(regions_pool)[:rng.integers(3, len(regions_pool))].tolist()
        if batch == 33:
            regions.append("US-HI")  # first seen late: Hawaii keeps -600 all year
        regions.append(None)
        n = int(rng.integers(1, 700))
        country_at = rng.integers(-1, len(countries), n)
        region_at = rng.integers(-1, len(regions), n)
        if batch == 33:
            country_at[:5], region_at[:5] = countries.index("US"), len(regions) - 2
        ts = start + rng.integers(0, 240 * 86_400, n)  # spans the spring and autumn changes
        got = table.offset_minutes_coded(ts, country_at, countries, region_at, regions)
        assert got.dtype == np.int64
        assert got.tolist() == _expanded(table, ts, country_at, countries, region_at, regions)
        if batch == 33:
            assert got[:5].tolist() == [-600] * 5
    assert ("US", "US-HI") in table._pair_memo
    assert all(type(c) is str or c is None for pair in table._pair_memo for c in pair)
    odd = [np.str_("US"), "US"]
    got = table.offset_minutes_coded(np.full(2, start), [0, 1], odd, [0, 0], [np.str_("CA")])
    assert got.tolist() == [-480, -480]
    assert not any(type(c) is not str and c is not None for p in table._pair_memo for c in p)


def test_coded_pair_memo_is_bounded(monkeypatch):
    """Past its bound the memo starts again, and the answers do not change."""
    table = geo.OffsetTable.build(["US", "AU"])
    monkeypatch.setattr(geo.offsets, "_PAIR_MEMO_MAX", 8)
    regions = [f"r{i}" for i in range(30)] + ["CA", "NY", "WA", "NSW"]
    ts = np.full(len(regions), _ts("2024-07-01T12:00:00"))
    for country in ("US", "AU", "US"):
        got = table.offset_minutes_coded(ts, np.zeros(len(regions), np.int64), [country],
                                         np.arange(len(regions)), regions)
        assert got.tolist() == [table.offset_minutes(int(t), country, r)
                                for t, r in zip(ts, regions)]
        assert len(table._pair_memo) <= len(regions)


@pytest.mark.parametrize("span_days", [0, 1, 3, 200, 20_000])
def test_batch_lookup_with_and_without_a_change_in_its_span(table, span_days):
    """A batch whose instants lie between two changes of a zone takes that zone's one offset
    for all its rows; one that spans a change (or decades, or instants clipped far outside
    the table's years) searches per row: both equal one lookup per row, just either side of
    every spring change in 2024 too."""
    rng = np.random.default_rng(span_days)
    countries = ["US", "AU", "DE", "BR", "NZ", "IN", None]
    regions = ["CA", "NY", "WA", "NSW", None]
    n = 500
    start = _ts("2024-03-09T12:00:00")  # a day before the US spring change
    ts = start + rng.integers(0, span_days * 86_400 + 1, n)
    if span_days == 20_000:
        ts[:2] = [-(2 ** 40), 2 ** 40]  # clipped into the table's key space
    country_at = rng.integers(0, len(countries), n)
    region_at = rng.integers(0, len(regions), n)
    for rows in (n, 10):  # 10 rows: below the batch threshold, one search per row
        args = (ts[:rows], country_at[:rows], countries, region_at[:rows], regions)
        assert table.offset_minutes_coded(*args).tolist() == _expanded(table, *args)
    zones = table.to_json()["zones"]
    entry = zones[table.zone_of("US", "NY")]
    changes = [t for t in zones[entry.get("same_as", table.zone_of("US", "NY"))]["transitions"]
               if _ts("2024-01-01T00:00:00") < t < _ts("2025-01-01T00:00:00")]
    assert len(changes) == 2
    edge = np.array([t + d for t in changes for d in (-1, 0, 1)] * 30)
    got = table.offset_minutes(edge, "US", "NY")
    assert got.tolist() == [table.offset_minutes(int(t), "US", "NY") for t in edge]


def test_a_runs_geography_pickles_the_same_whatever_lookups_a_task_made():
    """Metaflow merges a foreach's ``params`` only when every task pickles them the same: the
    offset table's pair memo (and the cached table itself) must not travel in the pickle."""
    import pickle

    from pythia.geo.geography import Geography

    g = Geography().compiled()
    before = pickle.dumps(g)
    n = 4096
    rng = np.random.default_rng(0)
    ts = rng.integers(1_700_000_000, 1_760_000_000, n)
    countries = rng.choice(["US", "BR", "AU", "DE", "CA", "MX", "RU"], n)
    subdivisions = rng.choice(["US-CA", "US-NY", "BR-SP", "AU-WA", None], n)
    minutes = g.offset_minutes(ts, countries, subdivisions)
    table = g.offset_table
    c_list, c_at = np.unique(countries, return_inverse=True)
    r_list = ["US-CA", "US-NY", "BR-SP", "AU-WA", None]
    r_at = np.array([r_list.index(r) for r in subdivisions])
    coded = table.offset_minutes_coded(ts, c_at, [str(c) for c in c_list], r_at, r_list)  # as the encoder
    assert coded.tolist() == minutes.tolist()
    assert table._pair_memo  # the lookups did fill the memo
    assert pickle.dumps(g) == before
    again = pickle.loads(pickle.dumps(g))
    assert again == g and again.offset_minutes(ts, countries, subdivisions).tolist() == \
        minutes.tolist()
    restored = pickle.loads(pickle.dumps(table))
    # The state, compared by value: pickle bytes of two live objects also encode which of their
    # parts happen to be shared objects, which depends on what else the process did.
    assert restored._pair_memo == {} and _same_value(restored.__getstate__(), table.__getstate__())
    assert restored.offset_minutes(ts, countries, subdivisions).tolist() == minutes.tolist()


def _same_value(a, b) -> bool:
    """Deep equality over dicts, sequences, sets and NumPy arrays (dtype and shape included)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and bool(np.array_equal(a, b)))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    return bool(a == b)


def test_same_value_tells_arrays_and_nesting_apart():
    assert _same_value({"a": (np.arange(3), [1, "x"])}, {"a": (np.arange(3), [1, "x"])})
    assert not _same_value({"a": np.arange(3)}, {"a": np.arange(3).astype(np.int32)})
    assert not _same_value({"a": (np.arange(3),)}, {"a": [np.arange(3)]})
    assert not _same_value({"a": {"b": 1}}, {"a": {"b": 2}})
