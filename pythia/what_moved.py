"""What moved between two runs' records (pure: no Metaflow): their settings, the lines
`pythia runs` prints under a run whose settings or stack differ from the next older listed
run's, and the rows per split. `pythia diff` (``run_diff``) prints them for two runs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from pythia import stack

# RunParams fields left out of the settings: the window line shows the dates a run read, and
# where its files went changes no number
SKIP_FIELDS = ("date", "data_root")
MAX_ITEMS = 8  # differences a `pythia runs` line names before '… and N more'


def flatten(params: Any) -> dict[str, str]:
    """A run's settings (``config.RunParams``) as 'name' -> text, in field order:
    dataclasses and mappings as dotted names ('train.max_epochs', 'model_hparams.mlp.members',
    'geo.region_of_country.US'), sequences comma-joined, None as '-'; the ETL's and
    training's seeds only where they differ from the run's ``seed``; {} for None."""
    out: dict[str, str] = {}

    def put(name: str, value: Any) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                put(f"{name}.{f.name}", getattr(value, f.name))
        elif isinstance(value, Mapping):  # an empty [models.x] section is no knob
            for key in sorted(value, key=str):
                put(f"{name}.{key}", value[key])
        elif isinstance(value, (tuple, list, frozenset, set)):
            items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
            out[name] = ",".join(map(str, items))
        else:
            out[name] = "-" if value is None else str(value)

    if params is None:
        return out
    for f in dataclasses.fields(params):
        if f.name not in SKIP_FIELDS:
            put(f.name, getattr(params, f.name))
    for name in ("etl.seed", "train.seed"):
        if out.get(name) == out.get("seed"):
            out.pop(name, None)
    return out


def settings_differences(old: Any, new: Any) -> list[str]:
    """'train.max_epochs 12 -> 20' per setting that differs (``flatten``), in the newer run's
    order, then settings only the older one had; a setting one run lacks reads '-';
    [] when either run has no settings recorded (``params``)."""
    if old is None or new is None:
        return []
    a, b = flatten(old), flatten(new)
    names = list(b) + [n for n in a if n not in b]
    return [f"{n} {a.get(n, '-')} -> {b.get(n, '-')}" for n in names
            if a.get(n, "-") != b.get(n, "-")]


def moved_settings(old: Any, new: Any) -> list[str]:
    """``settings_differences`` but the seed's (`pythia runs` has a seed column, `pythia diff`
    a seed line)."""
    return [d for d in settings_differences(old, new) if not d.startswith("seed ")]


def _some(items: Sequence[str]) -> str:
    more = len(items) - MAX_ITEMS
    return ", ".join(items[:MAX_ITEMS]) + (f" … and {more} more" if more > 0 else "")


def change_notes(entries: Sequence[tuple[str, Mapping | None, Any]]) -> dict[str, str]:
    """For ``pythia runs``: given (run id, ``stack.run_stack``, ``params``) newest first, the
    lines under each run whose settings or stack differ from the next older run's (joined by
    newlines), by run id; a run with nothing recorded says nothing."""
    notes = stack.change_notes([(run_id, s) for run_id, s, _ in entries])
    for (run_id, _, new), (older_id, _, old) in zip(entries, entries[1:]):
        moved = moved_settings(old, new)
        if moved:
            line = f"  settings differ from run {older_id}: {_some(moved)}"
            notes[run_id] = f"{line}\n{notes[run_id]}" if run_id in notes else line
    return notes


def _rows(split_manifest: Any) -> dict[str, int]:
    rows = (split_manifest or {}).get("rows") if isinstance(split_manifest, Mapping) else None
    return dict(rows) if isinstance(rows, Mapping) else {}


def rows_line(old: Any, new: Any) -> str | None:
    """'rows: train 443,166 -> 450,001 (+1.5%), …' from two ``split_manifest`` artifacts;
    None when neither recorded rows."""
    a, b = _rows(old), _rows(new)
    if not a and not b:
        return None
    parts = []
    for split in list(b) + [s for s in a if s not in b]:
        x, y = a.get(split), b.get(split)
        change = f" ({(y - x) / x:+.1%})" if x and y is not None else ""
        parts.append(f"{split} {'-' if x is None else f'{x:,}'} -> "
                     f"{'-' if y is None else f'{y:,}'}{change}")
    return "rows: " + ", ".join(parts)


