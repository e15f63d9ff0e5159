"""Parsers of the flow's parameter and config values, each raising a one-line ValueError that
names the bad value (re-exported by ``pythia.config``)."""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class ParamSpec:
    """One flow Parameter: its single default, type and help text."""

    name: str
    default: Any
    help: str

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``metaflow.Parameter(name, **kwargs)``."""
        out: dict[str, Any] = {"default": self.default, "help": self.help}
        if not isinstance(self.default, str):
            out["type"] = type(self.default)
        return out


def hours_per_task_default() -> int:
    # Locally a few hours per task saves JVM starts; on a cluster set 1 (24 tasks).
    return int(os.environ.get("PYTHIA_HOURS_PER_TASK", "4"))


def parse_date(text: str) -> dt.date:
    """Parse YYYY-MM-DD, raising a ValueError that names the bad value."""
    try:
        return dt.date.fromisoformat(text.strip())
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"date must be YYYY-MM-DD, got {text!r}") from exc


def parse_overrides(text: str) -> dict[str, str]:
    """Parse 'US=lucid,GB=acme' into {'US': 'lucid', 'GB': 'acme'}; '' means no override."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        if "=" not in part:
            raise ValueError(f"provider override {part!r} is not COUNTRY=provider")
        country, provider = (s.strip() for s in part.split("=", 1))
        if len(country) != 2 or not country.isalpha() or not provider:
            raise ValueError(f"provider override {part!r} is not COUNTRY=provider")
        out[country.upper()] = provider
    return out


def parse_list(text: str, allowed: tuple[str, ...] | None = None, what: str = "value") -> list[str]:
    """Parse a comma-separated list, checking members against ``allowed`` when given."""
    items = [p.strip() for p in (text or "").split(",") if p.strip()]
    if not items:
        raise ValueError(f"empty list of {what}s")
    if allowed is not None:
        bad = [i for i in items if i not in allowed]
        if bad:
            raise ValueError(f"unknown {what}(s) {bad}; choose from {list(allowed)}")
    return list(dict.fromkeys(items))


def config_flag(section: Mapping[str, Any], key: str) -> bool:
    value = section.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"config: {key} must be true or false, got {value!r}")
    return value


def non_negative(section: Mapping[str, Any], key: str, default: Any, cast: type = int) -> Any:
    value = cast(section.get(key, default))
    if value < 0:
        raise ValueError(f"config: {key} must be >= 0, got {value}")
    return value


def check_bins(counts: Any) -> tuple[int, ...]:
    """``[train] activity_bins`` as a tuple of strictly increasing whole counts >= 1."""
    try:
        out = tuple(int(c) for c in counts)
        ok = isinstance(counts, (list, tuple)) and all(
            not isinstance(c, (bool, str)) and float(c) == int(c) for c in counts)
    except (TypeError, ValueError):
        out, ok = (), False
    if not ok or any(c < 1 for c in out) or any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"config: [train] activity_bins must be strictly increasing whole "
                         f"counts >= 1 (each starts a bin of user_impressions_today, e.g. "
                         f"[3, 10, 30, 100]; [] = one temperature), got {counts!r}")
    return out
