"""Thread pools sized to the cores a task may really use, with passive waiting.

On a busy machine a pool sized from ``os.cpu_count()`` whose idle threads spin for cores they
do not get turns a 1-minute fit into 12. ``task_cores`` says how many cores this task may use
(affinity, cgroup quota, the step's ``@resources``, ``$PYTHIA_TASK_CORES``, and a foreach
task's share of a local run's machine, ``pythia.workers``); ``configure`` sizes OpenMP/BLAS,
torch, TensorFlow and Spark's local master to it. A user's own settings win.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import math
import os
import sys
from typing import Any, Mapping

TASK_CORES_ENV = "PYTHIA_TASK_CORES"
CGROUP_ROOT = "/sys/fs/cgroup"
PROC_CGROUP = "/proc/self/cgroup"
# Idle OpenMP threads sleep at once instead of spinning (GNU: 300k spins; Intel: 200 ms).
WAIT_ENV: Mapping[str, str] = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0",
                               "GOMP_SPINCOUNT": "0"}
COUNT_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
TF_INTRA_ENV, TF_INTER_ENV = "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"
# NAME=VALUE,... that pythia set, so that child processes (Metaflow tasks under the runtime
# that ran install()) do not mistake them for the user's own settings.
OURS_ENV = "PYTHIA_THREADS_SET"
# How many tasks a local run executes at once; set by install_runtime in the runtime process.
WORKERS_ENV = "PYTHIA_LOCAL_WORKERS"

_ours: dict[str, str] = {}  # environment values this process set (not the user's)
_cores: int | None = None  # what configure() was given
_memory_share = 1.0  # what configure_task(parallel=True) planned (memory_share)
_memory_mb: float | None = None  # the task's @resources memory (configure_task: task_memory_mb)


def affinity_cores() -> int:
    """CPUs this process may be scheduled on (``taskset``, cpusets); all CPUs where unknown."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cgroup_paths() -> dict[str, str]:
    """This process's cgroup per hierarchy: ``{'': v2 path, 'cpu': v1 cpu path}``."""
    out = {}
    try:
        with open(PROC_CGROUP) as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for name in controllers.split(","):
                    out[name] = path
    except (OSError, ValueError):
        pass
    return out


def _dirs_up(base: str, rel: str) -> list[str]:
    """``base/rel`` and each ancestor up to ``base`` that exists (a container sees its own
    cgroup as the mount's root, so the listed path may not exist there)."""
    parts = [p for p in rel.split("/") if p]
    dirs = [os.path.join(base, *parts[:i]) for i in range(len(parts), -1, -1)]
    return [d for d in dirs if os.path.isdir(d)]


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cgroup_cores() -> float | None:
    """The tightest CPU quota (cores, may be fractional) on this process's cgroup and its
    ancestors: cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``; None
    when there is none."""
    paths = _cgroup_paths()
    quotas = []
    for d in _dirs_up(CGROUP_ROOT, paths.get("", "/")):
        fields = (_read(os.path.join(d, "cpu.max")) or "max").split()  # "max 100000": none
        quotas.append(_ratio(fields[0], fields[1] if len(fields) == 2 else None))
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        for d in _dirs_up(os.path.join(CGROUP_ROOT, mount), paths.get("cpu", "/")):
            quotas.append(_ratio(_read(os.path.join(d, "cpu.cfs_quota_us")),  # -1: none
                                 _read(os.path.join(d, "cpu.cfs_period_us"))))
    quotas = [q for q in quotas if q is not None]
    return min(quotas) if quotas else None


def _ratio(quota: str | None, period: str | None) -> float | None:
    """quota / period when both are positive integers, else None (no quota)."""
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def core_limits(requested: float | int | None = None, parallel: bool = False
                ) -> dict[str, float]:
    """Every limit on this task's cores, by source: 'affinity', 'cgroup', '@resources',
    '$PYTHIA_TASK_CORES', and for a ``parallel`` (foreach) task of a local run with several
    workers 'share of N workers' (only those that apply)."""
    limits: dict[str, float] = {"affinity": affinity_cores()}
    quota = cgroup_cores()
    if quota is not None:
        limits["cgroup"] = quota
    if requested:
        limits["@resources"] = float(requested)
    raw = os.environ.get(TASK_CORES_ENV, "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = 0.0
        if not value > 0:
            raise ValueError(f"${TASK_CORES_ENV}={raw!r}: expected a positive number of cores")
        limits[f"${TASK_CORES_ENV}"] = value
    n = sharing_workers() if parallel else None
    if n is not None:
        limits[f"share of {n} workers"] = machine_cores() / n
    return limits


def task_cores(requested: float | int | None = None) -> int:
    """The cores this task may use: the smallest of its CPU affinity, its cgroup CPU quota,
    ``requested`` (the step's ``@resources`` cpu) and ``$PYTHIA_TASK_CORES``, rounded down
    (a 1.5-core quota runs 1 thread unthrottled rather than 2 throttled), at least 1."""
    return max(1, math.floor(min(core_limits(requested).values())))


def machine_cores() -> float:
    """The cores this whole run may use: CPU affinity and cgroup quota (not ``os.cpu_count()``,
    which counts the host's cores; not the per-task limits)."""
    limits = core_limits()
    return min(v for k, v in limits.items() if k in ("affinity", "cgroup"))


def sharing_workers() -> int | None:
    """How many local tasks share this machine (``$PYTHIA_LOCAL_WORKERS``, set by
    ``workers.install_runtime``); None outside a local run or with one worker."""
    try:
        n = int(os.environ.get(WORKERS_ENV, "").strip())
    except ValueError:
        return None
    return n if n > 1 else None


def memory_share() -> float:
    """The fraction of the machine's memory this task should plan for: 1 / local workers in a
    parallel (foreach) task of a local run, else 1 (e.g. a local Spark driver's heap)."""
    return _memory_share


def task_memory_mb() -> float | None:
    """The memory (MB) the step's ``@resources`` gives this task (``configure_task``), which a
    remote task's container enforces and a local task plans within; None when not given."""
    return _memory_mb


def _inherited_ours() -> dict[str, str]:
    pairs = (item.split("=", 1) for item in os.environ.get(OURS_ENV, "").split(",") if item)
    return {name: value for name, value in pairs}


def _user_value(name: str) -> str | None:
    """The variable's value when the user (not pythia, here or in a parent) set it."""
    value = os.environ.get(name)
    if value is None or value in (_ours.get(name), _inherited_ours().get(name)):
        return None
    return value


def _as_count(value: str | None) -> int | None:
    """The first count of an ``OMP_NUM_THREADS``-style value ('4' or nested '4,2')."""
    try:
        return max(1, int(str(value).split(",")[0]))
    except ValueError:
        return None


def cores() -> int:
    """The cores given to ``configure`` in this process, else ``task_cores()``."""
    return _cores if _cores is not None else task_cores()


def thread_budget() -> int:
    """Threads an OpenMP/BLAS/torch pool of this task may run: the user's own
    ``OMP_NUM_THREADS`` when set, else ``cores()``."""
    return _as_count(_user_value("OMP_NUM_THREADS")) or cores()


def spark_local_master() -> str:
    """``local[N]`` for a Spark session this task starts, N = ``cores()``."""
    return f"local[{cores()}]"


def _setdefault_env(name: str, value: str) -> bool:
    """Set ``name`` unless the user did; True when the value is ours."""
    if _user_value(name) is not None:
        return False
    os.environ[name] = _ours[name] = value
    os.environ[OURS_ENV] = ",".join(f"{k}={v}" for k, v in {**_inherited_ours(), name: value}
                                    .items())
    return True


def install() -> None:
    """Passive OpenMP waiting in this process's environment (children inherit it). OpenMP
    runtimes read these once, when loaded: call before anything imports numpy/torch/sklearn."""
    for name, value in WAIT_ENV.items():
        _setdefault_env(name, value)


def _tf_threads(n: int) -> tuple[int, int]:
    intra = _as_count(_user_value(TF_INTRA_ENV)) or n
    return intra, _as_count(_user_value(TF_INTER_ENV)) or max(1, n // 2)


def apply_torch(torch: Any = None) -> tuple[int, int]:
    """Size torch's intra-op and inter-op pools to ``thread_budget()``; returns them. The
    inter-op pool can only be sized before its first use: afterwards it is left as it is."""
    torch = torch if torch is not None else sys.modules["torch"]
    n = thread_budget()
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(max(1, n // 2))
    except RuntimeError:  # already started
        pass
    return torch.get_num_threads(), torch.get_num_interop_threads()


def apply_tensorflow(tf: Any = None) -> tuple[int, int]:
    """Size TensorFlow's intra-op and inter-op pools (``tf.config.threading``); returns them.
    A no-op once TensorFlow's runtime has started (it then keeps what it started with)."""
    tf = tf if tf is not None else sys.modules["tensorflow"]
    intra, inter = _tf_threads(thread_budget())
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:  # "cannot be modified after initialization"
        pass
    return (tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads())


_APPLY = {"torch": apply_torch, "tensorflow": apply_tensorflow}


class _ThenApply(importlib.abc.Loader):
    """A module's own loader, then ``_APPLY[name]`` on the freshly imported module."""

    def __init__(self, loader: Any, name: str) -> None:
        self._loader, self._name = loader, name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        try:
            _APPLY[self._name](module)
        except Exception as exc:  # sizing pools must never break the import itself
            print(f"threads: {self._name}'s pools left as they are ({exc})", file=sys.stderr)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._loader, attr)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Sizes torch's / TensorFlow's pools right after their first import in this process."""

    def __init__(self) -> None:
        self._busy: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _APPLY or fullname in self._busy or fullname in sys.modules:
            return None
        self._busy.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy.discard(fullname)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _ThenApply(spec.loader, fullname)
        return spec


def _install_import_hook() -> None:
    if not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())


def _limit_loaded_pools(n: int) -> dict[str, int]:
    """threadpoolctl limits on the BLAS/OpenMP libraries already loaded; {api: threads}."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return {}
    threadpool_limits(limits=n)  # stays in force: it is only undone by restore or a with-exit
    return {i["user_api"]: i["num_threads"] for i in threadpool_info()}


def configure(cores: int, limits: Mapping[str, float] | None = None, say: bool = True,
              label: str = "threads") -> dict[str, Any]:
    """Size this process's thread pools to ``cores`` (call first thing in a heavy step).

    Sets, unless the user set them: OMP/MKL/OPENBLAS_NUM_THREADS, passive OpenMP waiting,
    TensorFlow's TF_NUM_INTRA/INTEROP_THREADS; limits loaded BLAS/OpenMP pools (threadpoolctl);
    sizes torch and TensorFlow now if imported, else right after their import; Spark local
    sessions get ``local[cores]``. A user's ``OMP_NUM_THREADS`` sets the pools' size instead.

    Args:
        cores: the cores this task may use (``task_cores``).
        limits: where that number came from (``core_limits``), for the printed line only.
        say: False keeps the line to ``PYTHIA_VERBOSE=1`` (a foreach step says it once, from
            its first task, not once per task).
        label: the line's head.

    Returns:
        cores, threads, env (what was set), kept (the user's own values), blas, torch,
        tensorflow (None: sized at import), spark_master.
    """
    global _cores
    _cores = max(1, int(cores))
    n = thread_budget()
    intra, inter = _tf_threads(n)
    wanted = {**WAIT_ENV, **{name: str(n) for name in COUNT_ENV},
              TF_INTRA_ENV: str(intra), TF_INTER_ENV: str(inter)}
    env, kept = {}, {}
    for name, value in wanted.items():
        if _setdefault_env(name, value):
            env[name] = value
        else:
            kept[name] = os.environ[name]
    result = {"cores": _cores, "threads": n, "env": env, "kept": kept,
              "blas": _limit_loaded_pools(n),
              "torch": apply_torch() if "torch" in sys.modules else None,
              "tensorflow": apply_tensorflow() if "tensorflow" in sys.modules else None,
              "spark_master": spark_local_master()}
    _install_import_hook()
    if _worth_saying(result, limits, say):
        print(summary_line(result, limits, label))
    return result


def _worth_saying(result: Mapping[str, Any], limits: Mapping[str, float] | None,
                  say: bool = True) -> bool:
    """The threads line goes to the log when it says something a reader needs: the task got
    fewer cores than the machine offers, the user's own settings were kept, or
    ``PYTHIA_VERBOSE=1``; a task on all the cores it may use stays quiet."""
    from pythia.quiet import verbose

    machine = [v for k, v in (limits or {}).items() if k in ("affinity", "cgroup")]
    return verbose() or (say and (bool(result["kept"]) or
                                  bool(machine and result["cores"] < min(machine))))


def configure_task(requested: float | int | None = None, parallel: bool = False,
                   memory_mb: float | int | None = None, say: bool = True) -> dict[str, Any]:
    """``configure(task_cores(requested))`` for a step whose ``@resources`` asks for
    ``requested`` cpus (None: no request) and ``memory_mb`` of memory (``task_memory_mb``: a
    local Spark driver's heap is sized from it). ``parallel``: a foreach step, whose tasks a
    local run executes several at once, so it also gets only its share of the machine's cores
    and memory (1 / ``sharing_workers``: ``memory_share``); a step that runs alone gets all.
    ``say``: whether this task prints the threads line (``configure``); a foreach step passes
    True for its first task only, whose line speaks for each task of the step."""
    global _memory_share, _memory_mb
    limits = core_limits(requested, parallel=parallel)
    n = sharing_workers() if parallel else None
    _memory_share = 1.0 if n is None else 1.0 / n
    _memory_mb = float(memory_mb) if memory_mb else None
    return configure(max(1, math.floor(min(limits.values()))), limits, say,
                     "threads (each task of this step)" if parallel else "threads")


def summary_line(result: Mapping[str, Any], limits: Mapping[str, float] | None = None,
                 label: str = "threads") -> str:
    """One line: 'threads: 2 cores (affinity 2, @resources 2): torch 2/1, TF 2/1, ...'."""
    why = ", ".join(f"{k} {v:g}" for k, v in (limits or {}).items())
    n = result["threads"]
    torch = result["torch"] or (n, max(1, n // 2))
    tf = result["tensorflow"] or _tf_threads(n)
    parts = [f"torch {torch[0]}/{torch[1]}", f"TF {tf[0]}/{tf[1]}", f"BLAS/OpenMP {n}",
             f"Spark {result['spark_master']}"]
    if result["kept"]:
        parts.append("yours: " + " ".join(f"{k}={v}" for k, v in result["kept"].items()))
    return f"{label}: {result['cores']} cores" + (f" ({why})" if why else "") + ": " + \
        ", ".join(parts)
