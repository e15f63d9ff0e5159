"""``pythia check``: a user's first run on their own logs, on a sample, before the flow.

The flow finds a renamed column or a foreign layout in ``start``, but a vocabulary of the
producer's own, labels keyed another way or countries without labels only in ``join_hours``,
after the whole ETL: on a cluster, an hour. ``check`` runs the flow's own input steps, with
the same functions and the same lines, on every label row and on one etl task of a few hours
of day, in a scratch data root (removed when the steps would go on; kept, and named, when one
would stop, for its quarantine):

- ``start``: ``source.resolve`` (layout, partitions, required columns, ids stored as floats);
- ``select_providers``: ``providers.choose``;
- ``prepare_labels``: ``providers.run`` (every label row; ages moved to the test day);
- one ``etl_hour`` task: ``etl.run_hours`` on ``hours`` of the window's dates;
- ``join_hours``' input checks on that task: ``etl.check_inputs`` (the quarantine line and its
  stop, countries without labels, labels that meet no impression).

Returns 0 when these steps would go on, 1 when one would stop (its line is the last printed).
The sample's shares are the sample's: an hour group of a day can differ from the window.
"""
from __future__ import annotations

import shutil
import tempfile
from typing import Sequence

from pythia import etl, models, providers, source
from pythia.config import RunParams
from pythia.input_health import InputHealthError
from pythia.paths import RunPaths

CHECK_HOURS = (12, 13, 14, 15)  # a busy part of the day in most time zones' bid logs


def check(source_uri: str, date: str = "", hours: Sequence[int] = CHECK_HOURS,
          max_quarantined: float | None = None, scratch: str | None = None) -> int:
    """Run the input steps on a sample of ``source_uri``; print what the flow would print and
    a last line saying whether it would go on. ``scratch``: the data root to use (default: a
    new temporary folder; removed unless a step after ``start`` would stop)."""
    root = scratch or tempfile.mkdtemp(prefix="pythia-check-")
    values = {"source": source_uri, "date": date, "data_root": root,
              **({"max_quarantined": max_quarantined} if max_quarantined is not None else {})}
    step = "start"
    try:  # the registry's names, as the flow builds them (no model is trained here)
        params = RunParams.build(values, model_names=models.MODEL_NAMES,
                                 default_models=models.DEFAULT_MODELS).compiled()
        source_path, window, _ = source.resolve(params)
        paths = RunPaths(root, "Check", "1")
        step = "select_providers"
        _, provider_map, warnings = providers.choose(source_path, params, paths)
        for warning in warnings:
            print(f"warning: {warning}")
        step = "prepare_labels"
        labels = providers.run(source_path, provider_map, params, paths,
                               as_of=source.window_of(window).test_date)
        step = "etl_hour"
        print(f"check: the etl sample is hours {_hours(hours)} of the window's dates: the "
              "lines below that speak of the window speak of this sample")
        manifest = etl.run_hours(source_path, sorted(int(h) for h in hours), window, labels,
                                 params, paths)
        step = "join_hours"
        etl.check_inputs([manifest], params, paths)
    except (InputHealthError, ValueError) as exc:
        print(f"check: the flow would stop in {step}: {str(exc).removeprefix(step + ': ')}")
        if step == "start":  # nothing written yet
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"check: the sample's outputs (quarantine, labels) are kept under {root}")
        return 1
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    shutil.rmtree(root, ignore_errors=True)
    total = manifest["total"]
    print(f"check: the input steps would go on (sampled: every label row, and hours "
          f"{_hours(hours)} of {len(manifest['dates'])} dates: {total['rows_in']:,} impressions, "
          f"{total['written']:,} labelled); run: python flows/demo_flow.py run --source "
          f"{source_uri}" + (f" --date {date}" if date else ""))
    return 0


def _hours(hours: Sequence[int]) -> str:
    hours = sorted(int(h) for h in hours)
    return (f"{hours[0]:02d}-{hours[-1]:02d}" if hours == list(range(hours[0], hours[-1] + 1))
            else ",".join(f"{h:02d}" for h in hours))
