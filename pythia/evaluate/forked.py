"""Evaluate's serial work spread over the task's cores: worker processes forked from the step.

``evaluate`` runs alone (no other task of the run beside it) on the cores of its
``@resources``; its bucket scoring and its figures are pure Python and NumPy, one core each.
Forked workers inherit the work (closures, the world, scratch paths) instead of pickling it;
only results travel back. Each worker runs its BLAS/OpenMP pools with one thread: the workers
are the parallelism.
"""
from __future__ import annotations

import multiprocessing
from typing import Any, Callable, Iterable

_JOB: tuple[Callable[[Any], Any], list] | None = None  # what a forked worker inherits


def _run(i: int) -> Any:
    from threadpoolctl import threadpool_limits

    fn, items = _JOB
    with threadpool_limits(limits=1):
        return fn(items[i])


def map_forked(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> list[Any]:
    """``[fn(x) for x in items]``, in ``items``' order; with ``workers`` > 1 (and more than
    one item) computed by that many worker processes forked from this one, an item at a time.
    ``fn``'s results must pickle; an exception in a worker is raised here."""
    global _JOB
    items = list(items)
    workers = min(int(workers), len(items))
    if workers <= 1:
        return [fn(x) for x in items]
    _JOB = (fn, items)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return pool.map(_run, range(len(items)), chunksize=1)
    finally:
        _JOB = None
