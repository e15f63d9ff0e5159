"""Evaluate's serial work spread over the task's cores: worker processes forked from the step.

``evaluate`` runs alone (no other task of the run beside it) on the cores of its
``@resources``; its bucket scoring and its figures are pure Python and NumPy, one core each.
Forked workers inherit the work (closures, the world, scratch paths) instead of pickling it;
only results travel back. Each worker runs its BLAS/OpenMP pools with one thread: the workers
are the parallelism.

A forked child must not run the parent's garbage. TensorFlow's function objects abort the
process when they are freed in a fork (their runtime's threads did not come along), and a
``multiprocessing.Pool`` whose worker dies waits for its lost task forever: CI saw evaluate's
figures hang that way. So the parent collects its garbage and freezes what is left before it
forks (``gc.freeze``, the pattern the ``gc`` docs give for fork without exec): the children's
collections never visit an object they inherited. And the workers are a
``concurrent.futures`` pool, which notices a dead worker: the items it lost are computed here,
in this process, after one line that says so, instead of never.
"""
from __future__ import annotations

import concurrent.futures as cf
import gc
import multiprocessing
import signal
import sys
from typing import Any, Callable, Iterable

_JOB: tuple[Callable[[Any], Any], list] | None = None  # what a forked worker inherits


def _run(i: int) -> Any:
    from threadpoolctl import threadpool_limits

    fn, items = _JOB
    with threadpool_limits(limits=1):
        return fn(items[i])


def _exit_codes(procs: list) -> str:
    """How a pool's joined workers ended, e.g. ``SIGABRT``, for the one-line warning."""
    codes = []
    for proc in procs:
        code = proc.exitcode
        if code is not None and code != 0:
            codes.append(signal.Signals(-code).name if code < 0 and -code in
                         signal.valid_signals() else f"exit {code}")
    # the pool terminates the other workers once one died: their SIGTERM is not the cause
    codes = sorted(set(codes) - {"SIGTERM"}) or sorted(set(codes))
    return ", ".join(codes) or "unknown cause"


def map_forked(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> list[Any]:
    """``[fn(x) for x in items]``, in ``items``' order; with ``workers`` > 1 (and more than
    one item) computed by that many worker processes forked from this one, an item at a time.
    ``fn``'s results must pickle; an exception ``fn`` raises in a worker is raised here. Items
    a worker lost by dying (a signal, ``os._exit``) are computed in this process."""
    global _JOB
    items = list(items)
    workers = min(int(workers), len(items))
    if workers <= 1:
        return [fn(x) for x in items]
    _JOB = (fn, items)
    results: dict[int, Any] = {}
    lost: list[int] = []
    gc.collect()  # the parent's garbage is freed here, where it is safe ...
    gc.freeze()  # ... and what is alive is never visited by a child's collection
    try:
        with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) \
                as pool:
            futures = {pool.submit(_run, i): i for i in range(len(items))}
            for fut in cf.as_completed(futures):
                try:
                    results[futures[fut]] = fut.result()
                except cf.process.BrokenProcessPool:
                    lost.append(futures[fut])
                except BaseException:  # fn's own error: raised here, the rest not started
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
            procs = list((getattr(pool, "_processes", None) or {}).values())
        cause = _exit_codes(procs) if lost else ""  # the with joined the workers
    finally:
        _JOB = None
        gc.unfreeze()
    if lost:
        print(f"evaluate: a worker process died ({cause}); computing its {len(lost)} "
              f"unfinished item(s) of {len(items)} in this process", file=sys.stderr)
        for i in sorted(lost):
            results[i] = fn(items[i])
    return [results[i] for i in range(len(items))]
