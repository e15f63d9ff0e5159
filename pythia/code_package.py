"""What a remote step needs besides its Metaflow code package's ``.py`` files: the package's
data, and the ``PYTHIA_*`` settings of the shell that launched the run.

A remote step (``--with batch`` / ``--with kubernetes``, Argo, Airflow, Step Functions) runs
the flow from Metaflow's code package, not from an install: ``flows/pythia`` is a symlink to
``../pythia``, so the package holds ``demo_flow.py`` and ``pythia/`` at its top level. By
default Metaflow packs only ``.py`` files, and the library reads ``pythia/data/geo.json``
(every country's region and time zone) and the Spark log configuration: without them every
remote step stopped on ``FileNotFoundError``. ``ship_package_data`` (a Metaflow flow
mutator on ``DemoFlow``) adds them through Metaflow's own ``add_to_package`` hook, so no
``--package-suffixes`` is needed.

A remote step's container gets only the environment Metaflow builds (its own ``METAFLOW_*``
and the ``@environment`` decorator's ``vars``), not the launching shell's. The run's files
(``PYTHIA_DATA_ROOT``), the world cache (``PYTHIA_CACHE``) and the other ``PYTHIA_*`` knobs a
user exports (docs/scaling.md §1) never reached a pod: each step wrote to its own container's
``./.pythia/data`` and the next step found nothing. ``forward_pythia_env`` (a flow mutator)
gives every step an ``@environment`` with the launching shell's ``PYTHIA_*`` variables, so a
``--with kubernetes`` / ``--with batch`` run and an Argo, Airflow or Step Functions deployment
carry them; on a local run it sets what the task inherits anyway.
"""
from __future__ import annotations

from pathlib import Path

import os
from typing import Mapping

from metaflow import FlowMutator, environment
from metaflow.packaging_sys import ContentType

from pythia import stack

FORWARDED_PREFIX = "PYTHIA_"  # the environment variables every step gets from the launcher


def data_files(package: str | Path | None = None) -> list[tuple[str, str]]:
    """(path, name in the package) of each file of the pythia package (``package``: its
    folder, default this one) with a ``stack.DATA_SUFFIXES`` suffix, e.g.
    ('/repo/pythia/data/geo.json', 'pythia/data/geo.json'), in name order."""
    root = Path(package or Path(__file__).parent).resolve()
    return [(str(path), name) for name, path in stack.code_files(root)
            if name.startswith("pythia/") and path.suffix in stack.DATA_SUFFIXES]


class ship_package_data(FlowMutator):  # noqa: N801 - used as a decorator, Metaflow's style
    """Put ``data_files()`` in the flow's code package, beside its ``pythia/*.py``."""

    def add_to_package(self):
        for path, name in data_files():
            yield path, name, ContentType.USER_CONTENT


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``FORWARDED_PREFIX`` variables of ``environ`` (default: this process's), by name."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in sorted(environ) if k.startswith(FORWARDED_PREFIX)}


class forward_pythia_env(FlowMutator):  # noqa: N801 - used as a decorator, Metaflow's style
    """Give every step ``@environment(vars=forwarded_env())`` (a step with an ``@environment``
    of its own keeps it: the flow has none)."""

    def mutate(self, mutable_flow):
        values = forwarded_env()
        if not values:
            return
        for _, mutable_step in mutable_flow.steps:
            mutable_step.add_decorator(environment, deco_kwargs={"vars": dict(values)})
