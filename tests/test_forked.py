"""``evaluate.forked.map_forked``: evaluate's serial work on the task's other cores."""
from __future__ import annotations

import os

import numpy as np
import pytest

from pythia.evaluate import figures
from pythia.evaluate.forked import map_forked


def test_results_come_back_in_order_from_other_processes():
    parent = os.getpid()
    big = np.arange(1000.0)  # inherited by the workers, not pickled

    def work(i):
        return i, os.getpid(), float(big[i::7].sum())
    got = map_forked(work, range(7), workers=2)
    assert [g[0] for g in got] == list(range(7))
    assert [g[2] for g in got] == [float(big[i::7].sum()) for i in range(7)]
    assert parent not in {g[1] for g in got}  # computed in workers
    assert all(g[1] == parent for g in map_forked(work, range(3), workers=1))  # in process
    assert map_forked(work, [], workers=2) == []


def test_a_worker_exception_is_raised_here():
    def work(i):
        if i == 3:
            raise ValueError(f"item {i} is bad")
        return i
    with pytest.raises(ValueError, match="item 3 is bad"):
        map_forked(work, range(5), workers=2)


def test_figures_drawn_in_workers_are_the_same_images():
    import pandas as pd

    def draw(seed):
        rng = np.random.default_rng(seed)
        panels = {t: pd.DataFrame(rng.random((4, 3)), index=list("abcd"), columns=list("xyz"))
                  for t in ("gender", "age")}
        return figures.plot_bar_panels(panels, f"figure {seed}", "F1")
    serial = [draw(s) for s in range(4)]
    assert map_forked(draw, range(4), workers=2) == serial
    assert serial[0][:8] == b"\x89PNG\r\n\x1a\n"


def test_items_a_dead_worker_lost_are_computed_here_not_waited_for(capfd):
    """A worker that dies (here ``os._exit``; in CI, TensorFlow aborting a fork) used to leave
    ``Pool.map`` waiting forever for its item."""
    parent = os.getpid()

    def work(i):
        if i == 2 and os.getpid() != parent:
            os._exit(3)
        return i * i, os.getpid() == parent
    got = map_forked(work, range(6), workers=2)
    assert [g[0] for g in got] == [i * i for i in range(6)]
    assert got[2][1]  # item 2 was computed in this process
    err = capfd.readouterr().err
    assert "a worker process died (exit 3)" in err and "of 6 in this process" in err


def test_the_parents_garbage_is_freed_in_the_parent_not_in_a_worker(tmp_path):
    """Unreachable objects of the parent (TensorFlow's functions, in CI) are collected before
    the fork; a worker's collection never runs their finalisers."""
    import gc
    parent = os.getpid()
    log = tmp_path / "freed"

    class Finalised:
        def __del__(self):
            with open(log, "a") as f:
                f.write(f"{'parent' if os.getpid() == parent else 'worker'}\n")

    def work(i):
        gc.collect()
        return i
    was_enabled = gc.isenabled()
    gc.disable()  # the cycle stays uncollected until map_forked forks
    try:
        a, b = Finalised(), Finalised()
        a.other, b.other = b, a
        del a, b
        assert map_forked(work, range(4), workers=2) == [0, 1, 2, 3]
    finally:
        if was_enabled:
            gc.enable()
    assert log.read_text().split() == ["parent", "parent"]
