"""``max_quarantined`` chosen after the stop, on ``resume``: a run tag, not a new run.

``join_hours`` stops when more than ``max_quarantined`` of the window's impressions were
quarantined (``pythia.input_health``). Going on with the rest used to mean a new run with
``--max_quarantined``, which repeats the whole ETL: Metaflow's ``resume`` takes no Parameter
(it clones the origin run's). It takes tags, and every step of the resumed run sees them
(``current.tags``, locally and in Kubernetes/Batch pods), so the limit can be said as
``resume --tag max_quarantined:0.65``: the finished ETL tasks are cloned, the tag is the
resumed run's record of the choice, and the steps that apply it put the limit they used into
their ``params`` artifact.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from pythia.input_health import InputHealthError

TAG = "max_quarantined"


def from_tags(tags: Iterable[str]) -> float | None:
    """The limit a ``max_quarantined:X`` run tag gives (None: no such tag). A value that is
    not a share, or two such tags, is a one-line error naming the tags and the fix."""
    given = sorted(t for t in tags if t.split(":", 1)[0].strip() == TAG)
    if not given:
        return None
    if len(given) > 1:
        raise ValueError(f"the run has {len(given)} {TAG} tags ({', '.join(given)}): resume "
                         f"with one, e.g. --tag {TAG}:0.5")
    text = given[0].split(":", 1)[1].strip() if ":" in given[0] else ""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"run tag {given[0]!r}: {TAG} must be a share in [0, 1] (1 = never "
                         f"stop), e.g. --tag {TAG}:0.5")
    return value


def apply_tags(params: Any, tags: Iterable[str]) -> tuple[Any, str | None]:
    """``params`` with the tag's ``max_quarantined`` (a ``RunParams``), and a line saying so;
    ``params`` unchanged and None without the tag, or when it says what params say."""
    value = from_tags(tags)
    if value is None or value == params.etl.max_quarantined:
        return params, None
    note = (f"note: max_quarantined {value:g} from the run's tag {TAG}:{value:g} (the "
            f"parameter says {params.etl.max_quarantined:g})")
    return dataclasses.replace(params, etl=dataclasses.replace(params.etl,
                                                               max_quarantined=value)), note


@contextmanager
def resume_hint(resume: str) -> Iterator[None]:
    """An ``InputHealthError`` that proposes a higher limit (``go_on``) also says how to go on
    without repeating the finished steps: ``<resume> --tag max_quarantined:X``."""
    try:
        yield
    except InputHealthError as exc:
        go_on = getattr(exc, "go_on", None)
        if go_on is None:
            raise
        raise InputHealthError(f"{exc}; or keep this run's finished steps (the ETL): "
                               f"`{resume} --tag {TAG}:{go_on:g}`") from None
