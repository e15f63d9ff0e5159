"""pythia.threads: the cores a task may use, and pools sized to them without overriding the user.

``task_cores`` is tested in-process against fake affinity and cgroup files; ``configure``
changes process-wide state (environment, loaded pools, an import hook), so it runs in a fresh
interpreter.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pythia import threads, workers
from pythia.etl import session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREAD_ENV = (*threads.WAIT_ENV, *threads.COUNT_ENV, threads.TF_INTRA_ENV, threads.TF_INTER_ENV,
              threads.TASK_CORES_ENV, threads.OURS_ENV, threads.WORKERS_ENV, "SPARK_REMOTE",
              "PYTHIA_SPARK_MASTER")


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A fake 4-CPU machine: affinity {0..3}, no cgroup quota, no thread settings in the env.

    Returns a function ``cgroup(rel, **files)`` that writes files into the cgroup tree at
    ``rel`` (e.g. ``cgroup("", **{"cpu.max": "150000 100000"})``).
    """
    for name in THREAD_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "CGROUP_ROOT", str(tmp_path / "cgroup"))
    monkeypatch.setattr(threads, "PROC_CGROUP", str(tmp_path / "proc-self-cgroup"))
    monkeypatch.setattr(threads, "_cores", None)
    monkeypatch.setattr(threads, "_ours", {})
    (tmp_path / "cgroup").mkdir()
    (tmp_path / "proc-self-cgroup").write_text("0::/\n")

    def cgroup(rel: str, **files: str) -> None:
        folder = tmp_path / "cgroup" / rel
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / name).write_text(text + "\n")

    cgroup.proc = tmp_path / "proc-self-cgroup"
    return cgroup


def test_affinity_bounds_the_task_and_resources_cap_it(machine):
    assert threads.cgroup_cores() is None
    assert threads.task_cores() == 4
    assert threads.task_cores(2) == 2  # @resources(cpu=2)
    assert threads.task_cores(0.5) == 1  # at least one core
    assert threads.task_cores(8) == 4  # asking for more than the affinity gives does not help
    assert threads.core_limits(2) == {"affinity": 4, "@resources": 2.0}


def test_local_workers_follow_affinity_quota_and_memory_not_the_task_override(machine,
                                                                              monkeypatch):
    big = 64 << 30
    assert workers.local_workers(big) == 4  # 4 cores: one task per core
    machine("", **{"cpu.max": "150000 100000"})  # a 1.5-core container on a 4-core host
    assert workers.local_workers(big) == 1
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(64)))
    machine("", **{"cpu.max": "max 100000"})
    monkeypatch.setenv(threads.TASK_CORES_ENV, "1")  # per task, not the machine's size
    assert workers.local_workers(big) == 32  # 64 cores, but 2 GB planned per task
    assert workers.local_workers(5 << 30) == 2  # a 5 GB container: two tasks
    assert workers.local_workers(1 << 30) == 1  # at least one


def test_runtime_workers_read_the_run_option_then_the_environment():
    env = {"METAFLOW_RUN_MAX_WORKERS": "3", "METAFLOW_RESUME_MAX_WORKERS": "5"}
    assert workers.runtime_workers(["flow.py", "run"], env) == 3
    assert workers.runtime_workers(["flow.py", "resume", "train"], env) == 5
    assert workers.runtime_workers(["flow.py", "--quiet", "run", "--max-workers", "1"], env) == 1
    assert workers.runtime_workers(["flow.py", "run", "--max-workers=4"], env) == 4
    assert workers.runtime_workers(["flow.py", "run"], {}) is None
    # a task's own command line, or a command that runs nothing, shares nothing
    assert workers.runtime_workers(["flow.py", "step", "train", "--run-id", "1"], env) is None
    assert workers.runtime_workers(["flow.py", "show"], env) is None


def test_install_runtime_defaults_the_workers_and_tells_the_tasks(machine, monkeypatch):
    for cmd in ("RUN", "RESUME"):
        monkeypatch.delenv(f"METAFLOW_{cmd}_MAX_WORKERS", raising=False)
    monkeypatch.setattr(workers, "memory_limit_bytes", lambda: 64 << 30)
    workers.install_runtime(["flow.py", "run"])
    assert os.environ["METAFLOW_RUN_MAX_WORKERS"] == "4"
    assert os.environ[threads.WORKERS_ENV] == "4"
    monkeypatch.delenv(threads.WORKERS_ENV)
    workers.install_runtime(["flow.py", "run", "--max-workers", "2"])  # the option wins
    assert os.environ[threads.WORKERS_ENV] == "2"
    monkeypatch.delenv(threads.WORKERS_ENV)
    monkeypatch.setenv("METAFLOW_RUN_MAX_WORKERS", "1")  # the user's setting wins
    workers.install_runtime(["flow.py", "run"])
    assert os.environ[threads.WORKERS_ENV] == "1"
    monkeypatch.delenv(threads.WORKERS_ENV)
    workers.install_runtime(["flow.py", "step", "train"])  # a task: inherits, sets nothing
    assert threads.WORKERS_ENV not in os.environ
    monkeypatch.delenv("METAFLOW_RUN_MAX_WORKERS")
    for remote in (["--with", "kubernetes"], ["--with", "batch:cpu=4"], ["--with=kubernetes"]):
        workers.install_runtime(["flow.py", "run", *remote])  # steps on their own nodes
        assert "METAFLOW_RUN_MAX_WORKERS" not in os.environ
        assert threads.WORKERS_ENV not in os.environ
    assert not workers.runs_remote(["flow.py", "run", "--with", "card"])


def test_a_foreach_task_gets_its_share_of_the_cores_and_memory(machine, monkeypatch):
    monkeypatch.delenv(threads.WORKERS_ENV, raising=False)
    assert threads.core_limits(parallel=True) == {"affinity": 4}  # not a local run
    monkeypatch.setenv(threads.WORKERS_ENV, "2")
    assert threads.core_limits(2) == {"affinity": 4, "@resources": 2.0}  # a step run alone
    assert threads.core_limits(parallel=True) == {"affinity": 4, "share of 2 workers": 2.0}
    monkeypatch.setenv(threads.WORKERS_ENV, "4")
    assert threads.task_cores() == 4 and min(threads.core_limits(parallel=True).values()) == 1
    monkeypatch.setattr(threads, "configure", lambda cores, limits, *_: {"cores": cores})
    monkeypatch.setattr(threads, "_memory_share", 1.0)
    assert threads.configure_task(parallel=True) == {"cores": 1}
    assert threads.memory_share() == 0.25
    assert threads.configure_task() == {"cores": 4} and threads.memory_share() == 1.0
    monkeypatch.setenv(threads.WORKERS_ENV, "1")
    assert threads.configure_task(parallel=True) == {"cores": 4}  # one worker: no sharing
    assert threads.memory_share() == 1.0
    monkeypatch.setenv(threads.WORKERS_ENV, "6")  # more workers than cores: at least 1 core
    assert threads.configure_task(parallel=True) == {"cores": 1}


def test_cgroup_v2_quota_tightest_ancestor_and_rounded_down(machine):
    machine("", **{"cpu.max": "max 100000"})
    assert threads.cgroup_cores() is None  # "max": no quota
    machine("", **{"cpu.max": "150000 100000"})
    assert threads.cgroup_cores() == 1.5
    assert threads.task_cores() == 1  # 1.5 cores run one unthrottled thread
    machine.proc.write_text("0::/user.slice/job.scope\n")
    machine("user.slice", **{"cpu.max": "300000 100000"})
    machine("user.slice/job.scope", **{"cpu.max": "250000 100000"})
    assert threads.cgroup_cores() == 1.5  # the root's quota is still the tightest
    machine("", **{"cpu.max": "max 100000"})
    assert threads.cgroup_cores() == 2.5 and threads.task_cores() == 2


def test_cgroup_v2_path_missing_in_a_container_falls_back_to_the_mount_root(machine):
    machine.proc.write_text("0::/docker/abc123\n")  # the host's path, not mounted here
    machine("", **{"cpu.max": "200000 100000"})
    assert threads.task_cores() == 2


def test_cgroup_v1_cfs_quota(machine):
    machine.proc.write_text("4:cpu,cpuacct:/\n0::/\n")
    machine("cpu,cpuacct", **{"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000"})
    assert threads.cgroup_cores() is None  # -1: unlimited
    machine("cpu,cpuacct", **{"cpu.cfs_quota_us": "300000", "cpu.cfs_period_us": "100000"})
    assert threads.cgroup_cores() == 3.0
    assert threads.task_cores() == 3 and threads.task_cores(2) == 2


def test_env_override_lowers_and_is_validated(machine, monkeypatch):
    monkeypatch.setenv("PYTHIA_TASK_CORES", "1")
    assert threads.task_cores(2) == 1
    assert threads.core_limits(2)["$PYTHIA_TASK_CORES"] == 1.0
    monkeypatch.setenv("PYTHIA_TASK_CORES", "16")
    assert threads.task_cores() == 4  # never more than the machine gives the task
    for bad in ("two", "0", "-1"):
        monkeypatch.setenv("PYTHIA_TASK_CORES", bad)
        with pytest.raises(ValueError, match="PYTHIA_TASK_CORES"):
            threads.task_cores()


def test_spark_local_master_follows_the_task_cores(machine, monkeypatch):
    assert session.resolve_target() == ("local", "local[4]")  # affinity, nothing configured
    monkeypatch.setattr(threads, "_cores", 3)  # what configure() was given
    assert session.resolve_target() == ("local", "local[3]")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's OpenMP setting is not Spark's
    assert session.resolve_target() == ("local", "local[3]")
    assert session.resolve_target(master="local[1]") == ("master", "local[1]")  # --spark_master
    monkeypatch.setenv("PYTHIA_SPARK_MASTER", "local[*]")
    assert session.resolve_target() == ("master", "local[*]")


def test_model_thread_knobs_follow_the_budget_not_the_machine(machine, monkeypatch):
    from pythia.models.hgb import SERIAL_BELOW_ROWS, openmp_threads
    monkeypatch.setattr(threads, "_cores", 2)
    assert openmp_threads(0, SERIAL_BELOW_ROWS * 10) == 2  # "every core" = the task's cores
    assert openmp_threads(0, 100) == 1  # small data stays serial
    assert openmp_threads(8, 100) == 2  # an explicit count is capped too
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # ...unless the user raised the budget
    assert threads.thread_budget() == 3 and openmp_threads(8, 100) == 3


def _configure_in_subprocess(code: str, **env: str) -> tuple[dict, str]:
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={**clean, **env}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout


CONFIGURE_THEN_IMPORT = """
import json, os
from pythia import threads, workers
threads.install()
import numpy
result = threads.configure(3, {"affinity": 8, "@resources": 3})
import torch  # imported after configure: sized by the import hook
from pythia.quiet import import_tensorflow
tf = import_tensorflow()
from threadpoolctl import threadpool_info
print(json.dumps({"result": result, "env": {k: os.environ.get(k) for k in %r},
                  "torch": [torch.get_num_threads(), torch.get_num_interop_threads()],
                  "tf": [tf.config.threading.get_intra_op_parallelism_threads(),
                         tf.config.threading.get_inter_op_parallelism_threads()],
                  "pools": sorted({i["num_threads"] for i in threadpool_info()})}))
""" % (list(THREAD_ENV),)


def test_configure_sets_variables_torch_and_tensorflow_pools():
    pytest.importorskip("torch")
    pytest.importorskip("tensorflow")
    out, stdout = _configure_in_subprocess(CONFIGURE_THEN_IMPORT)
    env = out["env"]
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "3"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["GOMP_SPINCOUNT"] == "0"
    assert env["KMP_BLOCKTIME"] == "0"
    assert out["torch"] == [3, 1]  # 3 is neither this machine's default nor torch's
    assert out["tf"] == [3, 1]
    assert out["result"]["blas"] == {"blas": 3}  # numpy's BLAS, loaded before: limited in-process
    assert max(out["pools"]) <= 3  # pools loaded later read the variables (OpenBLAS: <= CPUs)
    assert out["result"]["spark_master"] == "local[3]" and out["result"]["kept"] == {}
    assert ("threads: 3 cores (affinity 8, @resources 3): torch 3/1, TF 3/1, BLAS/OpenMP 3, "
            "Spark local[3]") in stdout


def test_configure_never_overrides_the_users_own_settings():
    pytest.importorskip("torch")
    code = """
import json, os
import torch
from pythia import threads, workers
result = threads.configure(3)
print(json.dumps({"result": result, "env": {k: os.environ.get(k) for k in %r},
                  "torch": torch.get_num_threads()}))
""" % (list(THREAD_ENV),)
    out, stdout = _configure_in_subprocess(code, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="ACTIVE",
                                           TF_NUM_INTRAOP_THREADS="2")
    env, result = out["env"], out["result"]
    assert env["OMP_NUM_THREADS"] == "1" and env["OMP_WAIT_POLICY"] == "ACTIVE"
    assert env["TF_NUM_INTRAOP_THREADS"] == "2"
    assert env["MKL_NUM_THREADS"] == "1"  # the other pools follow the user's count
    assert out["torch"] == 1  # torch was imported first: sized at once
    assert result["threads"] == 1 and result["spark_master"] == "local[3]"
    assert result["kept"] == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1",
                              "TF_NUM_INTRAOP_THREADS": "2"}
    assert "yours: OMP_WAIT_POLICY=ACTIVE OMP_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=2" in stdout


def test_configure_twice_updates_its_own_values():
    out, _ = _configure_in_subprocess("""
import json, os
from pythia import threads, workers
threads.configure(3)
result = threads.configure(1)
print(json.dumps({"result": result, "omp": os.environ["OMP_NUM_THREADS"]}))
""")
    assert out["omp"] == "1" and out["result"]["kept"] == {}  # its own 3 is not "the user's"


def test_a_child_process_does_not_take_its_parents_settings_for_the_users():
    code = """
import json, os, subprocess, sys
from pythia import threads, workers
threads.install()  # as the flow file does in Metaflow's runtime process
os.environ["OMP_NUM_THREADS"] = "5"  # as if the user had set it
child = subprocess.run([sys.executable, "-c", "from pythia import threads; import json; "
                        "print(json.dumps(threads.configure(2)))"],
                       capture_output=True, text=True, check=True)
print(child.stdout.strip().splitlines()[-1])
"""
    out, _ = _configure_in_subprocess(code)
    assert out["kept"] == {"OMP_NUM_THREADS": "5"}  # the wait policy is pythia's, not kept
    assert out["threads"] == 5 and out["env"]["OMP_WAIT_POLICY"] == "PASSIVE"


@pytest.mark.spark
def test_a_local_session_runs_on_the_configured_cores():
    pytest.importorskip("pyspark")
    out, _ = _configure_in_subprocess("""
import json
from pythia import threads, workers
from pythia.etl.session import get_spark
threads.configure(1)
from pythia.etl.session import local_driver_memory
spark = get_spark("threads-test")
heap = spark.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory()
print(json.dumps({"master": spark.sparkContext.master, "heap_mb": heap / 2**20,
                  "asked": local_driver_memory(),
                  "conf": spark.sparkContext.getConf().get("spark.driver.memory")}))
spark.stop()
""")
    assert out["master"] == "local[1]"
    # the driver heap is the one asked for (a quarter of the memory), not Spark's 1 GB default
    assert out["conf"] == out["asked"] and out["asked"].endswith("m")
    assert out["heap_mb"] > 0.85 * int(out["asked"][:-1])


def test_the_local_driver_heap_is_an_eighth_of_the_memory_at_least_1g(monkeypatch, tmp_path):
    from pythia.etl import session

    monkeypatch.delenv(session.DRIVER_MEMORY_ENV, raising=False)
    limit = tmp_path / "memory.max"
    monkeypatch.setattr(workers, "CGROUP_MEMORY_FILES", (str(limit),))
    monkeypatch.setattr(threads, "_memory_share", 1.0)
    monkeypatch.setattr(threads, "_memory_mb", None)
    monkeypatch.setattr(workers.os, "sysconf", lambda name: {
        "SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 24 * 2**30 // 4096}[name])
    assert session.local_driver_memory() == "3072m"  # 24 GiB machine, no cgroup limit file
    limit.write_text("max\n")
    assert session.local_driver_memory() == "3072m"  # cgroup v2 without a limit
    limit.write_text(str(16 * 2**30))
    assert session.local_driver_memory() == "2048m"  # a 16 GiB container on that machine
    limit.write_text(str(4 * 2**30))
    assert session.local_driver_memory() == "1024m"  # never below Spark's own 1 GB
    limit.write_text("max\n")
    monkeypatch.setattr(threads, "_memory_share", 0.5)  # a foreach task of 2 local workers
    assert session.local_driver_memory() == "1536m"
    monkeypatch.setenv(session.DRIVER_MEMORY_ENV, "3g")
    assert session.local_driver_memory() == "3g"


def test_the_local_driver_heap_is_sized_from_the_steps_resources_memory(machine, monkeypatch):
    # A share of the whole machine let a JVM's heap grow with the data (a JVM fills the heap
    # it may use): join_hours' RSS grew 1.3x for 2x the rows with a 6 GB heap, 1.85x
    # from 1x to 4x with 2 GB (docs/scaling.md section 8). The step's @resources memory bounds
    # it, as a remote task's container would; the machine's share still caps it.
    from pythia.etl import session

    monkeypatch.delenv(session.DRIVER_MEMORY_ENV, raising=False)
    monkeypatch.setattr(workers, "CGROUP_MEMORY_FILES", ())
    monkeypatch.setattr(workers.os, "sysconf", lambda name: {
        "SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 24 * 2**30 // 4096}[name])
    monkeypatch.setattr(threads, "_memory_mb", None)
    monkeypatch.setattr(threads, "_memory_share", 1.0)
    monkeypatch.setattr(threads, "configure", lambda cores, limits, *_: {"cores": cores})
    monkeypatch.delenv(threads.WORKERS_ENV, raising=False)
    threads.configure_task(2)
    assert threads.task_memory_mb() is None
    assert session.local_driver_memory() == "3072m"  # no @resources memory: the machine's
    threads.configure_task(2, memory_mb=8000)  # flows/pythia.toml's join_hours
    assert threads.task_memory_mb() == 8000
    assert session.local_driver_memory() == "1024m"  # 1000 MB, raised to Spark's 1 GB
    threads.configure_task(2, memory_mb=16000)
    assert session.local_driver_memory() == "2000m"
    monkeypatch.setenv(threads.WORKERS_ENV, "2")  # 2 local workers: 12 GiB each, under 64 GB
    threads.configure_task(2, memory_mb=64000, parallel=True)
    assert session.local_driver_memory() == "1536m"
    monkeypatch.setenv(session.DRIVER_MEMORY_ENV, "3g")
    assert session.local_driver_memory() == "3g"


def test_the_threads_line_is_quiet_when_a_task_has_every_core_it_may_use():
    code = """
from pythia import threads, workers
threads.configure(2, {"affinity": 2, "@resources": 2})
print("{}")
"""
    _, quiet_out = _configure_in_subprocess(code)
    assert "threads:" not in quiet_out
    _, verbose_out = _configure_in_subprocess(code, PYTHIA_VERBOSE="1")
    assert "threads: 2 cores (affinity 2, @resources 2)" in verbose_out


def test_a_foreach_step_says_its_threads_line_once_for_each_task():
    """Tasks of a foreach step get fewer cores than the machine (worth saying), but only the
    first task says so, for every task of the step; ``PYTHIA_VERBOSE=1`` makes each say it."""
    code = """
from pythia import threads
threads.configure(1, {"affinity": 2, "@resources": 2}, say=%s,
                  label="threads (each task of this step)")
print("{}")
"""
    _, first = _configure_in_subprocess(code % "True")
    assert "threads (each task of this step): 1 cores (affinity 2, @resources 2)" in first
    _, other = _configure_in_subprocess(code % "False")
    assert "threads" not in other
    _, verbose_out = _configure_in_subprocess(code % "False", PYTHIA_VERBOSE="1")
    assert "threads (each task of this step): 1 cores" in verbose_out
