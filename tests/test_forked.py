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
