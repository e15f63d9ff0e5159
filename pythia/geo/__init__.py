"""Geography for every ISO-3166 country: its model region, and local time with daylight saving.

``pythia.geo.countries`` holds the data file's answers per country: the ad-market region
(``region_of``, ``load_region_map`` for a user's overrides) and the IANA zone (``zone_of``).
``pythia.geo.tzcompile`` compiles those zones into plain transition/offset arrays (carried by
the bundle); ``pythia.geo.offsets`` reads them as an ``OffsetTable``, whose
``local_offset_minutes`` the ETL and the scorer share.
"""
from pythia.geo.countries import (OTHER_REGION, REGIONS, UTC_ZONE, _data, country_zones,
                                  default_region_map, known_countries, load_region_map,
                                  read_region_overrides, region_of, subdivision_code,
                                  subdivision_zones, zone_of)
from pythia.geo.offsets import OffsetTable, local_offset_minutes
from pythia.geo.tzcompile import (DEFAULT_YEARS, OFFSETS_FORMAT, OFFSETS_FORMAT_VERSION,
                                  _tzif_bytes, build_offset_table)

# _data and _tzif_bytes are private, re-exported only because tests reach them as geo._X.
__all__ = ["REGIONS", "OTHER_REGION", "UTC_ZONE", "DEFAULT_YEARS", "OFFSETS_FORMAT",
           "OFFSETS_FORMAT_VERSION", "known_countries", "default_region_map", "region_of",
           "load_region_map", "read_region_overrides", "country_zones", "subdivision_zones",
           "subdivision_code", "zone_of", "OffsetTable", "build_offset_table",
           "local_offset_minutes"]
