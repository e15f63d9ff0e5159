"""The lock (``constraints.txt``): the exact stack ``make setup`` and CI install. It pins every
dependency pyproject.toml names, within its ranges, and everything those need; the start step
says when the environment is not the lock's (``pythia.stack.lock_line``)."""
from __future__ import annotations

import importlib.metadata
import os
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pythia import stack

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / stack.LOCK_FILE


def _roots() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]
            + project["optional-dependencies"]["test"]]


def _unpinned(pins: dict[str, str], roots: list[Requirement]) -> list[str]:
    """What pip would install for ``roots`` (this environment's metadata, markers and extras
    followed) that ``pins`` does not name: each such 'name (required by ...)'."""
    todo = [(r, "pyproject.toml") for r in roots]
    seen, missing = set(), []
    while todo:
        req, by = todo.pop()
        name = canonicalize_name(req.name)
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        if name not in pins:
            missing.append(f"{name} (required by {by})")
            continue
        for text in importlib.metadata.requires(name) or ():
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e})
                                         for e in sorted(req.extras) or [""]):
                todo.append((sub, name))
    return sorted(set(missing))


def test_the_lock_pins_exact_public_releases():
    lines = [ln for ln in LOCK.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines and all("==" in ln and "+" not in ln for ln in lines), lines
    assert len(stack.read_lock(LOCK)) == len(lines)  # every line is a pin the reader takes
    assert stack.read_lock(LOCK)["torch"] == "2.13.0"  # the CPU build on the machines' disk


def test_the_lock_pins_every_dependency_within_pyprojects_ranges():
    pins = stack.read_lock(LOCK)
    outside = [f"{r.name}=={pins.get(canonicalize_name(r.name))} not in {r.specifier}"
               for r in _roots()
               if not r.specifier.contains(pins.get(canonicalize_name(r.name), "0"),
                                           prereleases=True)]
    assert outside == [], "run `make lock` after changing pyproject.toml's dependencies"


def test_the_lock_holds_everything_its_releases_require():
    pins = stack.read_lock(LOCK)
    assert _unpinned(pins, _roots()) == [], "run `make lock`: pip would resolve these afresh"
    # the check can fail: a release that only a dependency needs, left out of the lock
    assert _unpinned({k: v for k, v in pins.items() if k != "py4j"}, _roots()) == [
        "py4j (required by pyspark)"]


@pytest.mark.skipif(not os.environ.get("PYTHIA_EXPECT_LOCK"),
                    reason="`make test` sets it: its venv is installed from the lock")
def test_make_test_runs_on_the_lock():
    assert stack.lock_differences(missing=True) == []


def test_lock_differences_name_each_release_this_environment_has_not(tmp_path):
    numpy = importlib.metadata.version("numpy")
    lock = tmp_path / "constraints.txt"
    lock.write_text(f"# a comment\n\nnumpy=={numpy}\nscikit_learn==0.0.1\n"
                    "no-such-package==1.0\nsix>=1 ; python_version < '3'\n")
    sklearn = importlib.metadata.version("scikit-learn")
    assert stack.read_lock(lock) == {"numpy": numpy, "scikit-learn": "0.0.1",
                                     "no-such-package": "1.0"}
    assert stack.lock_differences(lock, missing=True) == [
        "no-such-package not installed (lock 1.0)", f"scikit-learn {sklearn} (lock 0.0.1)"]
    # the start step's line: what is installed at another version (a production install
    # without the test extra lacks pytest, and that moves no figure)
    assert stack.lock_differences(lock) == [f"scikit-learn {sklearn} (lock 0.0.1)"]
    line = stack.lock_line(lock)
    assert line.startswith("stack: 1 release(s) differ from constraints.txt")
    assert "`make setup`" in line and " more" not in line and "no-such" not in line
    lock.write_text(f"numpy=={numpy}+cpu\n")  # a local build label is the same release
    assert stack.lock_differences(lock) == [] and stack.lock_line(lock) is None
    assert stack.lock_differences(tmp_path / "none.txt") == []  # no lock: an installed package


def test_lock_line_names_the_first_few_and_counts_the_rest(tmp_path):
    names = ["numpy", "pandas", "pyarrow", "scipy", "packaging", "pytest", "six", "tzdata"]
    lock = tmp_path / "constraints.txt"
    lock.write_text("".join(f"{n}==0.0.{i}\n" for i, n in enumerate(names)))
    line = stack.lock_line(lock)
    assert line.startswith(f"stack: {len(names)} release(s) differ")
    assert line.count("(lock 0.0.") == stack.LOCK_NAMED
    assert f"and {len(names) - stack.LOCK_NAMED} more" in line and "numpy " in line
