"""tests/tmp_cleanup.py: a module's temporary folders go when it ends, unless a test failed."""
from __future__ import annotations

MODULE_DIR = """
import pytest

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store")
    (path / "blob").write_bytes(b"x" * 1000)
    return path

def test_uses_it(store, tmp_path):
    assert (store / "blob").exists()

def test_again(store):
    assert (store / "blob").exists()
"""

CHECK_NEXT = """
def test_the_first_module_freed_its_folders(tmp_path_factory):
    names = [p.name for p in tmp_path_factory.getbasetemp().iterdir()]
    assert not [n for n in names if n.startswith(("store", "test_uses_it"))], names
"""

FAILING = """
import pytest

@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    return tmp_path_factory.mktemp("kept")

def test_fails(kept):
    assert False, "on purpose"
"""


def test_a_passing_module_frees_its_folders_before_the_next(pytester):
    pytester.makepyfile(test_a_module=MODULE_DIR, test_b_next=CHECK_NEXT)
    base = pytester.path / "base"
    result = pytester.runpytest("-p", "tmp_cleanup", f"--basetemp={base}")
    result.assert_outcomes(passed=3)
    assert not list(base.glob("store*"))


def test_a_module_with_a_failing_test_keeps_its_folders(pytester):
    pytester.makepyfile(test_failing=FAILING)
    base = pytester.path / "base"
    result = pytester.runpytest("-p", "tmp_cleanup", f"--basetemp={base}")
    result.assert_outcomes(failed=1)
    assert (base / "kept0").is_dir()


SESSION_CONFTEST = """
import pytest

@pytest.fixture(scope="session", autouse=True)
def shared(tmp_path_factory):
    return tmp_path_factory.mktemp("shared")
"""


def test_folders_from_before_the_module_stay(pytester):
    """A folder made before the module started (a session fixture's) is not the module's."""
    pytester.makeconftest(SESSION_CONFTEST)
    pytester.makepyfile(test_a_module=MODULE_DIR)
    base = pytester.path / "base"
    result = pytester.runpytest("-p", "tmp_cleanup", f"--basetemp={base}")
    result.assert_outcomes(passed=2)
    assert (base / "shared0").is_dir()
    assert not list(base.glob("store*"))
