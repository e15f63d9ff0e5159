"""Load a repository script (benchmarks/*.py, scripts/*.py) as a module by its path: they are
programs, not a package, so tests cannot import them by name."""
from __future__ import annotations

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_repo_module(relpath: str):
    """The module at ``REPO/relpath`` (e.g. ``benchmarks/scale_bench.py``), executed once per
    call."""
    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
