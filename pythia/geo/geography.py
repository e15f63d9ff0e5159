"""``Geography``: the run's country -> model region map and local-time table, as one config
object (``pythia.config`` re-exports it; the ETL, the scorer and the bundle take it)."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from pythia.geo.countries import default_region_map, load_region_map, region_of
from pythia.geo.offsets import OffsetTable


@functools.lru_cache(maxsize=1)
def _process_offset_table() -> OffsetTable:
    # Built once per process for every country (1-3 s); runs store their own table instead.
    return OffsetTable.build()


@dataclass(frozen=True)
class Geography:
    """Country -> model region, and local time (IANA zones with DST) for every country.

    ``offsets`` is a ``pythia.geo.build_offset_table`` document: a run compiles it once (``compiled``)
    so every ETL task and the exported bundle use the same table, and the scorer never needs a
    tz database. ``None`` uses a table built once per process from this machine's tzdata.
    """

    region_of_country: Mapping[str, str] = field(default_factory=default_region_map)
    offsets: Mapping[str, Any] | None = None

    @property
    def regions(self) -> list[str]:
        return sorted(set(self.region_of_country.values()))

    def region_of(self, country: str | None) -> str:
        return region_of(country, self.region_of_country)

    @functools.cached_property
    def offset_table(self) -> OffsetTable:
        return (OffsetTable.from_json(self.offsets) if self.offsets is not None
                else _process_offset_table())

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the cached table (rebuilt from ``offsets`` on use): a run's params
        must pickle the same in every task, whatever lookups a task made (Metaflow merges
        artifacts of equal pickles only)."""
        state = dict(self.__dict__)
        state.pop("offset_table", None)
        return state

    def offset_minutes(self, ts_seconds: Any, country: Any, geo_region: Any = None) -> Any:
        """UTC offset (minutes) of the local clock at ``ts_seconds`` (scalars or arrays)."""
        return self.offset_table.offset_minutes(ts_seconds, country, geo_region)

    def compiled(self) -> "Geography":
        """This geography with its offset table stored in it (what a run records)."""
        return replace(self, offsets=self.offset_table.to_json())

    @classmethod
    def from_config(cls, regions: Mapping[str, str] | None = None,
                    replace_regions: bool = False) -> "Geography":
        """The default map patched (or replaced) by a user's ``regions`` (errors name the code)."""
        return cls(region_of_country=load_region_map(regions, replace=replace_regions))
