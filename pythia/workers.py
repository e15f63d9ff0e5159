"""How many tasks a local run executes at once, and what each of them may plan for.

``install_runtime`` runs in the process that runs the flow locally (``python flows/demo_flow.py
run``): it defaults Metaflow's ``--max-workers`` to ``local_workers()`` and passes the count to
the tasks (``$PYTHIA_LOCAL_WORKERS``), whose foreach steps then size their thread pools to
their share of the machine (``threads.configure_task(parallel=True)``).
"""
from __future__ import annotations

import math
import os
from typing import Mapping

from pythia.threads import WORKERS_ENV, machine_cores

TASK_MEMORY_BYTES = 2 << 30  # planned per concurrent local task (default world: 1.5 GB peak)
CGROUP_MEMORY_FILES = ("/sys/fs/cgroup/memory.max",  # v2
                       "/sys/fs/cgroup/memory/memory.limit_in_bytes")  # v1


def local_workers(memory_bytes: int | None = None) -> int:
    """Metaflow's default for local runs: one task at a time per core this process may use,
    and at most one per ``TASK_MEMORY_BYTES`` of memory (a default-world train task peaks at
    1.5 GB RSS). Measured on an idle 2-core VM, default world: 2 tasks of 1 thread each ran
    the flow in 253 s against 481 s for 1 task of 2 threads (TabNet's global fit alone: 47 s
    on 1 thread vs 120 s on 2; torch and OpenMP pools of small ops scale badly here)."""
    if memory_bytes is None:
        memory_bytes = memory_limit_bytes()
    by_memory = math.inf if memory_bytes is None else memory_bytes // TASK_MEMORY_BYTES
    return int(max(1, min(math.floor(machine_cores()), by_memory)))


def memory_limit_bytes() -> int | None:
    """The smallest of physical memory and this container's cgroup memory limit (bytes)."""
    limits = []
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not on every platform
        pass
    for path in CGROUP_MEMORY_FILES:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max" / a huge v1 value: no limit
            limits.append(int(text))
    return min(limits) if limits else None


def runtime_workers(argv: list[str], environ: Mapping[str, str]) -> int | None:
    """How many tasks a local Metaflow ``run``/``resume`` started with ``argv`` runs at once:
    its ``--max-workers`` option, else ``METAFLOW_{RUN,RESUME}_MAX_WORKERS``; None when
    ``argv`` is not a run or resume (a task's ``step`` command, ``show``, ...)."""
    if "step" in argv:
        return None
    command = next((c for c in ("run", "resume") if c in argv), None)
    if command is None:
        return None
    value = environ.get(f"METAFLOW_{command.upper()}_MAX_WORKERS")
    for i, arg in enumerate(argv):
        if arg == "--max-workers" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--max-workers="):
            value = arg.split("=", 1)[1]
    try:
        return max(1, int(value)) if value is not None else None
    except ValueError:
        return None  # Metaflow itself reports the bad option


def runs_remote(argv: list[str]) -> bool:
    """Whether ``argv`` sends the steps to Kubernetes or AWS Batch (``--with kubernetes``,
    ``--with batch:cpu=4``, ``--with=kubernetes``): their tasks do not share this machine."""
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--with"]
    values += [a.split("=", 1)[1] for a in argv if a.startswith("--with=")]
    return any(v.split(":", 1)[0] in ("kubernetes", "batch") for v in values)


def install_runtime(argv: list[str]) -> None:
    """In the process that runs the flow locally: default Metaflow's max workers to
    ``local_workers()`` and tell the tasks (through ``$PYTHIA_LOCAL_WORKERS``, which they
    inherit) how many of them share this machine, so that a foreach task sizes its pools to
    its share (``configure_task(parallel=True)``). A user's own setting of either wins. A run
    whose steps go to Kubernetes or Batch keeps Metaflow's own default (16 tasks at once) and
    its tasks size to their own containers."""
    if runs_remote(argv):
        return
    for cmd in ("RUN", "RESUME"):
        os.environ.setdefault(f"METAFLOW_{cmd}_MAX_WORKERS", str(local_workers()))
    workers = runtime_workers(argv, os.environ)
    if workers is not None:
        os.environ.setdefault(WORKERS_ENV, str(workers))
