"""What Metaflow's code package carries beyond its default ``.py`` files: the package's data.

A remote step (``--with batch`` / ``--with kubernetes``, Argo, Airflow, Step Functions) runs
the flow from Metaflow's code package, not from an install: ``flows/pythia`` is a symlink to
``../pythia``, so the package holds ``demo_flow.py`` and ``pythia/`` at its top level. By
default Metaflow packs only ``.py`` files, and the library reads ``pythia/data/geo.json``
(every country's region and time zone) and the Spark log configuration: without them every
remote step stopped on ``FileNotFoundError``. ``ship_package_data`` (a Metaflow flow
mutator on ``DemoFlow``) adds them through Metaflow's own ``add_to_package`` hook, so no
``--package-suffixes`` is needed.
"""
from __future__ import annotations

from pathlib import Path

from metaflow import FlowMutator
from metaflow.packaging_sys import ContentType

from pythia import stack


def data_files(package: str | Path | None = None) -> list[tuple[str, str]]:
    """(path, name in the package) of each file of the pythia package (``package``: its
    folder, default this one) with a ``stack.DATA_SUFFIXES`` suffix, e.g.
    ('/repo/pythia/data/geo.json', 'pythia/data/geo.json'), in name order."""
    root = Path(package or Path(__file__).parent).resolve()
    return sorted((str(f), f"pythia/{f.relative_to(root).as_posix()}")
                  for f in root.rglob("*")
                  if f.suffix in stack.DATA_SUFFIXES and f.is_file()
                  and "__pycache__" not in f.parts)


class ship_package_data(FlowMutator):  # noqa: N801 - used as a decorator, Metaflow's style
    """Put ``data_files()`` in the flow's code package, beside its ``pythia/*.py``."""

    def add_to_package(self):
        for path, name in data_files():
            yield path, name, ContentType.USER_CONTENT
