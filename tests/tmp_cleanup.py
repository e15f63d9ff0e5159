"""A pytest plugin that frees a test module's temporary folders when the module ends.

pytest removes a passing test's ``tmp_path`` itself (``tmp_path_retention_policy = "failed"``
in pyproject.toml), but a module-scoped fixture's ``tmp_path_factory.mktemp`` folder lives
until the whole session ends. The flow tests' datastores are 80-250 MB each, so a full run
held ~0.8 GB at its peak, and a CI machine with little disk left after the install failed
with "No space left on device" a third of the way in. This fixture notes the worker's
temporary folders when a module starts and removes the ones the module added when it ends;
a module with a failing test keeps them all, to look at. Loaded by tests/conftest.py.

One limit: a session-scoped fixture that makes a folder with ``tmp_path_factory`` during a
module (first asked for by a later test of it) would lose the folder when that module ends.
None does today (``spark`` makes none); such a fixture should be autouse, or make its folder
elsewhere.
"""
from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="module", autouse=True)
def free_module_tmp(request, tmp_path_factory):
    """Remove the temporary folders this module added, unless one of its tests failed.

    Autouse and module-scoped, so it is set up before the module's other module-scoped
    fixtures and torn down after them: their folders exist and are no longer used."""
    base = tmp_path_factory.getbasetemp()
    before = {p.name for p in base.iterdir()}
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed != failed:
        return
    for path in base.iterdir():
        if path.name in before:
            continue
        if path.is_symlink():  # pytest's "<name>current" link to the newest numbered folder
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
