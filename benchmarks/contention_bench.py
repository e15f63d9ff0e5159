"""Contention: DemoFlow alone, then beside busy-looping competitors; wall and CPU-second ratios.

    python benchmarks/contention_bench.py [--world tiny|default] [--competitors 1]
        [--models gbdt] [--regions global] [--max-epochs 1] [--workdir DIR] [--keep]

    # smallest (a few minutes): python benchmarks/contention_bench.py --world tiny \\
    #     --models gbdt --regions global --max-epochs 1
    # the issue's figure:       python benchmarks/contention_bench.py --world default

MUST RUN ON AN OTHERWISE IDLE MACHINE: the "alone" run is the baseline, and anything else
running turns it into a contended run too. The synthetic world is generated first (not
measured); then the flow runs twice with the same parameters, each into its own Metaflow
datastore and data root (so the second run does not compare itself with the first): alone,
then beside ``--competitors`` pure-Python busy loops (one core each; started and killed here).
Per run: wall seconds, and CPU-seconds (user + sys) of the flow and every process under it
(Metaflow tasks, Spark JVMs, Python workers), read with ``getrusage(RUSAGE_CHILDREN)`` by a
measuring parent that adopts and reaps orphans (PR_SET_CHILD_SUBREAPER).

Goals (issue 14): contended wall <= 2.2x and CPU-seconds <= 1.2x of the run alone. Threads
that spin for cores they do not get show as CPU-seconds above 1.2x. Not a test: the goals are
printed, never enforced; the exit status is non-zero only when a run crashes.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
FLOW = os.path.join(ROOT, "flows", "demo_flow.py")
GOAL_WALL, GOAL_CPU = 2.2, 1.2
REAP_GRACE_S = 60.0  # how long processes left behind by a run may take to exit
_PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
SPIN = "while True:\n    pass\n"  # one core of pure-Python busy looping


# ---------------------------------------------------------------- the measuring parent

def _children_of(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _reap_all(grace_s: float) -> list[int]:
    """Wait for every descendant (adopted orphans included); after ``grace_s`` terminate the
    ones still running (they belong to the measured run). Returns the pids terminated."""
    deadline, killed = time.monotonic() + grace_s, []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return killed
        if pid:
            continue
        if time.monotonic() > deadline:
            for child in _children_of(os.getpid()):
                if child not in killed:
                    killed.append(child)
                    os.kill(child, signal.SIGTERM)
            deadline = time.monotonic() + 10.0
        time.sleep(0.2)


def measure(cmd: list[str]) -> None:
    """Run ``cmd`` as a subreaper; print one JSON line: rc, wall_s, cpu_s, left_behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: processes orphaned by the run are not counted
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, stdout=sys.stderr)  # the run's output goes to its log, live
    wall = time.perf_counter() - t0
    left = _reap_all(REAP_GRACE_S)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"rc": rc, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
                      "left_behind": left}))


# ---------------------------------------------------------------- one flow run

def flow_command(args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, FLOW, "run", "--source", f"synthetic://{args.world}"]
    for flag, value in (("--models", args.models), ("--regions", args.regions),
                        ("--max_epochs", args.max_epochs)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def run_flow(args: argparse.Namespace, label: str, workdir: str, cache: str) -> dict:
    """One measured run into its own datastore and data root; its log goes to a file."""
    env = {**os.environ, "METAFLOW_DATASTORE_SYSROOT_LOCAL": os.path.join(workdir, f"mf-{label}"),
           "PYTHIA_DATA_ROOT": os.path.join(workdir, f"data-{label}"), "PYTHIA_CACHE": cache}
    env.setdefault("METAFLOW_USER", os.environ.get("USER") or "pythia-bench")
    log_path = os.path.join(workdir, f"{label}.log")
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "_measure", "--",
                               *flow_command(args)], stdout=subprocess.PIPE, stderr=log,
                              text=True, cwd=ROOT, env=env, check=False)
    lines = proc.stdout.splitlines()
    figures = next((json.loads(ln) for ln in reversed(lines) if ln.startswith('{"rc"')), None)
    if figures is None or figures["rc"] != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"the {label} run failed (see {log_path}):\n{tail}")
    figures.update(label=label, log=log_path, env=env,
                   run_id=_run_id(log_path))
    return figures


def _run_id(log_path: str) -> str | None:
    with open(log_path) as f:
        for line in f:
            if "Workflow starting (run-id " in line:
                return line.split("(run-id ", 1)[1].split(")", 1)[0]
    return None


def print_timings(run: dict) -> None:
    """``pythia timings`` of a measured run (per step), when it can be read."""
    if not run.get("run_id"):
        return
    proc = subprocess.run([sys.executable, "-m", "pythia.cli", "timings", run["run_id"]],
                          capture_output=True, text=True, cwd=ROOT, env=run["env"], check=False)
    print(f"\n-- {run['label']}: pythia timings {run['run_id']}")
    print(proc.stdout.rstrip() if proc.returncode == 0 else
          f"(pythia timings failed: {proc.stderr.strip()[-300:]})")


# ---------------------------------------------------------------- competitors

def start_competitors(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]


def stop_competitors(procs: list[subprocess.Popen]) -> float:
    """Kill the competitors this bench started; returns the CPU-seconds they used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


# ---------------------------------------------------------------- report

def _verdict(ratio: float, goal: float) -> str:
    return f"goal <= {goal:.1f}x: " + ("met" if ratio <= goal else "MISSED")


def report(alone: dict, busy: dict, n_competitors: int, competitor_cpu: float) -> None:
    wall_r, cpu_r = busy["wall_s"] / alone["wall_s"], busy["cpu_s"] / alone["cpu_s"]
    print(f"\n{'run':<28}{'wall s':>10}{'CPU s':>10}{'CPU/wall':>10}")
    for run, name in ((alone, "alone"), (busy, f"beside {n_competitors} busy loop(s)")):
        print(f"{name:<28}{run['wall_s']:>10.1f}{run['cpu_s']:>10.1f}"
              f"{run['cpu_s'] / run['wall_s']:>10.2f}")
    print(f"\nwall ratio        {wall_r:5.2f}x   ({_verdict(wall_r, GOAL_WALL)})")
    print(f"CPU-second ratio  {cpu_r:5.2f}x   ({_verdict(cpu_r, GOAL_CPU)})")
    print(f"competitors used {competitor_cpu:.0f} CPU-s over {busy['wall_s']:.0f} s "
          f"({competitor_cpu / busy['wall_s']:.2f} cores)")
    for run in (alone, busy):
        if run["left_behind"]:
            print(f"note: the {run['label']} run left processes running after it ended "
                  f"(terminated after {REAP_GRACE_S:.0f} s): {run['left_behind']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", default="tiny", help="synthetic preset: tiny (default) or default")
    ap.add_argument("--competitors", type=int, default=1, help="busy-looping processes (1)")
    ap.add_argument("--models", default=None, help="flow --models (default: the flow's)")
    ap.add_argument("--regions", default=None, help="flow --regions (default: the flow's)")
    ap.add_argument("--max-epochs", dest="max_epochs", type=int, default=None,
                    help="flow --max_epochs (default: the flow's)")
    ap.add_argument("--workdir", default=None, help="keep datastores and logs here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="pythia-contention-")
    os.makedirs(workdir, exist_ok=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print("contention_bench: MUST RUN ON AN OTHERWISE IDLE MACHINE (the run alone is the "
          "baseline).")
    load = os.getloadavg()[0]
    print(f"machine: {cores} cores, 1-min load {load:.2f} before starting"
          + ("  <-- NOT IDLE: the ratios below understate contention" if load > 0.5 else ""))
    print(f"flow: {' '.join(flow_command(args)[1:])}; workdir {workdir}")
    sys.path.insert(0, ROOT)
    from pythia.synth.generate import resolve_source
    cache = os.path.join(workdir, "worlds")
    t0 = time.perf_counter()
    resolve_source(f"synthetic://{args.world}", cache)  # once, not measured
    print(f"world {args.world} generated in {time.perf_counter() - t0:.0f} s (not measured)")
    try:
        alone = run_flow(args, "alone", workdir, cache)
        print(f"alone: {alone['wall_s']:.1f} s wall, {alone['cpu_s']:.1f} CPU-s "
              f"(log {alone['log']})")
        competitors = start_competitors(args.competitors)
        try:
            busy = run_flow(args, "contended", workdir, cache)
        finally:
            competitor_cpu = stop_competitors(competitors)
        print(f"contended: {busy['wall_s']:.1f} s wall, {busy['cpu_s']:.1f} CPU-s "
              f"(log {busy['log']})")
    except RuntimeError as exc:
        print(f"contention_bench: {exc}", file=sys.stderr)
        return 1
    report(alone, busy, args.competitors, competitor_cpu)
    for run in (alone, busy):
        print_timings(run)
    if args.workdir is None and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"\nlogs and datastores kept in {workdir}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_measure" and sys.argv[2] == "--":
        measure(sys.argv[3:])
    else:
        sys.exit(main())
