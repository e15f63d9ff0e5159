"""Shared fixtures: one small local SparkSession, and writers of tiny hand-made sources.

``spark`` is session-scoped (one JVM for the whole test run). ``source`` gives a
``SourceBuilder`` over a fresh folder: write exactly the partitions, labels and metrics a test
needs, in the contract layout of docs/interfaces.md (see also ``pythia.etl.sample``).
"""
from __future__ import annotations

import datetime as dt
from typing import Mapping, Sequence

import os
import typing

# Metaflow reads its user at import (this file imports it below); under root without $USER it
# would refuse to run. The Makefile/CI export one too; this keeps plain `pytest` working.
os.environ.setdefault("METAFLOW_USER", os.environ.get("USER") or "pythia-test")

import pytest
import typing_extensions  # noqa: F401  (the site copy: it patches `typing` for TypeVar defaults)

# metaflow.Runner -> typeguard imports Metaflow's vendored, older typing_extensions, which
# re-patches typing._collect_parameters/_check_generic; afterwards torch's (lazy) modules that
# subscript Generic with TypeVar defaults fail: "Type parameter ~_R without a default follows
# type parameter with a default". Reproduce: import typing_extensions;
# import metaflow._vendor.typing_extensions; import torch. Tests use the Runner and TabNet in
# one process, so load the vendored copy now and put the site copy's patches back.
_SITE_PATCHES = {name: getattr(typing, name) for name in ("_collect_parameters", "_check_generic")
                 if hasattr(typing, name)}
import metaflow._vendor.typing_extensions  # noqa: E402,F401

for _name, _fn in _SITE_PATCHES.items():
    setattr(typing, _name, _fn)

from pythia.config import Window
from pythia.etl import sample

# pytester runs a small inner session in tests/test_tmp_cleanup.py; tmp_cleanup frees each
# module's temporary folders when it ends (see its docstring).
pytest_plugins = ["pytester", "tmp_cleanup"]

TEST_DATE = dt.date(2024, 3, 10)  # window 2024-03-06 … 2024-03-10
WINDOW = Window(TEST_DATE)


class SourceBuilder:
    """Writes a tiny source under ``root``; every method returns the written file's URI."""

    def __init__(self, root: str) -> None:
        self.root = root

    def hour(self, day: dt.date, hour: int, rows: Sequence[Mapping], name: str = "part-0.parquet",
             schema=None) -> str:
        return sample.write_impressions(self.root, day, hour, rows, name=name, schema=schema)

    def labels(self, provider: str, rows: Sequence[Mapping], name: str = "part-0.parquet",
               schema=None) -> str:
        return sample.write_labels(self.root, provider, rows, name=name, schema=schema)

    def metrics(self, rows: Sequence[Mapping]) -> str:
        return sample.write_metrics(self.root, rows)

    def users_every_hour(self, users: Mapping[str, str], days: Sequence[dt.date],
                         hours: Sequence[int], minute: int = 10) -> int:
        """One impression per user (user_id -> country) in every (day, hour); returns rows."""
        n = 0
        for day in days:
            for h in hours:
                rows = [sample.impression(f"{day:%m%d}-{h:02d}-{u}-0", u,
                                          sample.at(day, h, minute), c)
                        for u, c in users.items()]
                self.hour(day, h, rows)
                n += len(rows)
        return n


# The longest test files first, longest first (per-file seconds of a 2-worker run, session 36):
# `make test`'s workers take whole files in collection order (--dist loadfile
# --no-loadscope-reorder), and one of these started last leaves the other worker idle while it
# runs (xdist's own reorder, by number of tests, put the 3 flow runs of test_flow_inputs.py
# near the end). The other files keep their order after these.
LONG_FILES_FIRST = ("test_scaleout.py", "test_flow.py", "test_flow_inputs.py",
                    "test_tfrecords_columnar.py", "test_join_local.py", "test_etl_memory.py",
                    "test_etl_local.py", "test_models.py", "test_evaluate_stream.py",
                    "test_mlp_temperature.py", "test_warm_start.py", "test_synth_activity.py",
                    "test_etl.py", "test_quiet.py")


def pytest_collection_modifyitems(config, items):
    """On an xdist worker, put LONG_FILES_FIRST's tests first (a stable sort: each file's own
    order is kept); a plain `pytest` keeps the collection order."""
    if not hasattr(config, "workerinput"):
        return
    rank = {name: i for i, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def spark():
    """A local[1] session with 2 shuffle partitions and no UI, shared by all Spark tests."""
    pytest.importorskip("pyspark")
    from pythia.etl.session import get_spark

    session = get_spark("pythia-tests", master="local[1]",
                        conf={"spark.sql.shuffle.partitions": "2",
                              "spark.default.parallelism": "1"})
    yield session
    session.stop()


@pytest.fixture
def source(tmp_path) -> SourceBuilder:
    """An empty source folder with writers for partitions, labels and metrics."""
    return SourceBuilder(str(tmp_path / "source"))
