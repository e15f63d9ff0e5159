"""Cost curve: every stage function of DemoFlow on synthetic worlds of s x a base size.

    python benchmarks/scale_bench.py [--preset default] [--scales 1,2,4,8] [--models default]
        [--regions all] [--max-epochs 8] [--hours-per-task 4] [--workdir DIR] [--keep]
        [--until STEP]

    # small and quick (minutes): python benchmarks/scale_bench.py --preset tiny \\
    #     --scales 0.25,0.5,1 --models gbdt --regions global --max-epochs 1

For each scale s the world is the preset with s x its users (same seed and catalogs, so
impressions grow ~linearly with s; ``scaled_world_config``). The steps run in flow order
(synth, start, select_providers, prepare_labels, etl_hour x hour groups, join_hours,
to_tfrecords, train x model family, evaluate, end), each task in a fresh process started by
a measuring parent that collects it and every descendant (its Spark JVM) and then reads
``resource.getrusage(RUSAGE_CHILDREN)``: wall s, CPU s (user + sys), peak RSS (of the largest
single process: the step's Python or its JVM) and rows/s (the step's own input rows); each
task is configured as the flow's step (``threads.configure_task`` with its ``@resources`` cpu and
memory from flows/pythia.toml: a Spark heap is sized from that memory). Foreach
steps add their tasks' wall and CPU (run one at a time here) and keep the largest RSS.

Per step it then fits the growth exponent b of wall = a * n^b (and of CPU and peak RSS), n the
world's impressions (log-log least squares; 1.0 = linear, 0 = flat), and the fixed cost per
run: the intercept c0 of wall = c0 + c1 * n. Not a test: nothing fails on a slow machine; the
RSS ratio column compares each step's peak RSS at the largest scale with the smallest.
``--until STEP`` stops every scale after that step (e.g. ``--until etl_hour`` measures the
ETL's memory in minutes instead of the whole run's half hour at 8x); the tables then list the
steps that ran. ``--replot DIR[,DIR…]`` prints the tables again from kept runs'
``results.json`` (several folders: their scales merged, e.g. a larger scale run on its own
later; the same scale twice is an error). ``results.json`` is rewritten after every scale, so a
stopped run keeps the scales it finished. The 1-minute load average is recorded after every
task and printed per scale: the wall column of a busy machine is inflated, CPU seconds less so,
peak RSS not at all.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
STEPS = ("synth", "start", "select_providers", "prepare_labels", "etl_hour", "join_hours",
         "to_tfrecords", "train", "evaluate", "end")
FOREACH = {"etl_hour": "hour_groups", "train": "train_families"}
_PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


# ---------------------------------------------------------------- the scaled world

def scaled_world_config(preset: str, scale: float):
    """The preset's WorldConfig with ``scale`` x its users (at least 1); everything else (days,
    catalogs, activity) is unchanged, so impressions grow in proportion to users."""
    from dataclasses import replace

    from pythia.synth import PRESETS
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    base = PRESETS[preset]
    return replace(base, n_users=max(1, round(base.n_users * scale)))


# ---------------------------------------------------------------- one step, in its own process

def _load(state_dir: str) -> dict:
    with open(os.path.join(state_dir, "state.pkl"), "rb") as f:
        return pickle.load(f)


def _rows_of(value, *keys, default=None):
    """A nested count from a manifest (None when the manifest does not have it)."""
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return default
        value = value[key]
    return value


def _step_synth(st: dict, task: int) -> tuple[dict, int | None]:
    from pythia import storage
    from pythia.synth import generate_world
    from pythia.synth.generate import SUCCESS, is_complete
    if st.get("reuse_world") and is_complete(st["world_dir"]):  # its figures: the check only
        summary = storage.read_json(os.path.join(st["world_dir"], SUCCESS))
        return {"world_summary": summary}, summary["impressions"]
    summary = generate_world(st["world_dir"], scaled_world_config(st["preset"], st["scale"]),
                             seed=st["seed"])
    return {"world_summary": summary}, summary["impressions"]


def _step_start(st: dict, task: int) -> tuple[dict, int | None]:
    from pythia import models, source
    from pythia.config import DeployConfig, RunParams, read_deploy_config
    from pythia.paths import RunPaths
    cfg_file = os.path.join(ROOT, "flows", "pythia.toml")
    deploy = read_deploy_config(cfg_file) if os.path.exists(cfg_file) else DeployConfig()
    params = RunParams.build({"source": st["world_dir"], "data_root": st["data_root"],
                              "models": st["models"], "regions": st["regions"],
                              "max_epochs": st["max_epochs"],
                              "hours_per_task": st["hours_per_task"], "seed": st["seed"]},
                             deploy, model_names=models.MODEL_NAMES,
                             default_models=models.DEFAULT_MODELS).compiled()
    source_path, window, _ = source.resolve(params)
    return {"params": params, "source_path": source_path, "window": window,
            "paths": RunPaths(params.data_root, "ScaleBench", st["run_id"]),
            "hour_groups": params.hour_groups}, None


def _step_select_providers(st: dict, task: int) -> tuple[dict, int | None]:
    from pythia import providers
    _, provider_map, _ = providers.choose(st["source_path"], st["params"], st["paths"])
    return {"provider_map": provider_map}, st["world_summary"]["provider_metrics"]


def _step_prepare_labels(st: dict, task: int) -> tuple[dict, int | None]:
    from pythia import providers
    manifest = providers.run(st["source_path"], st["provider_map"], st["params"], st["paths"])
    return {"labels_manifest": manifest}, sum(st["world_summary"]["label_rows"].values())


def _step_etl_hour(st: dict, task: int) -> tuple[dict, int | None]:
    from pythia import etl
    manifest = etl.run_hours(st["source_path"], list(st["hour_groups"][task]), st["window"],
                             st["labels_manifest"], st["params"], st["paths"])
    return {f"hour_manifest_{task}": manifest}, _rows_of(manifest, "total", "rows_in")


def _step_join_hours(st: dict, task: int) -> tuple[dict, int | None]:
    from pythia import etl
    manifests = sorted((st[f"hour_manifest_{i}"] for i in range(len(st["hour_groups"]))),
                       key=lambda m: m["hours"])
    split_manifest, *_ = etl.join_hours(manifests, st["params"], st["paths"])
    return {"split_manifest": split_manifest}, sum(
        _rows_of(m, "total", "rows_in", default=0) for m in manifests)


def _step_to_tfrecords(st: dict, task: int) -> tuple[dict, int | None]:
    from pythia import models, tfrecords
    p = st["params"]
    tf_manifest, encoders = tfrecords.convert(st["split_manifest"], p, st["paths"])
    families = models.train_families(p.models, p.regions, tf_manifest, p.search, p.seed)
    return {"tf_manifest": tf_manifest, "encoders": encoders, "train_families": families}, sum(
        int(n) for n in (st["split_manifest"].get("rows") or {}).values())


def _step_train(st: dict, task: int) -> tuple[dict, int | None]:
    from pythia import models
    from pythia.features import TRAIN
    p = st["params"]
    candidates = models.train_family(st["train_families"][task], st["tf_manifest"],
                                     st["split_manifest"], p.train, p.etl.age_edges, st["paths"])
    return {f"candidates_{task}": candidates}, _rows_of(st["split_manifest"], "rows", TRAIN)


def _candidates(st: dict) -> list[dict]:
    return [c for i in range(len(st["train_families"])) for c in st[f"candidates_{i}"]]


def _step_evaluate(st: dict, task: int) -> tuple[dict, int | None]:
    from pythia import evaluate
    from pythia.evaluate.frames import EVAL_SPLITS
    cands = _candidates(st)
    results = evaluate.run(cands, st["split_manifest"], st["source_path"],
                           st["params"].etl.age_edges, st["paths"].reports,
                           baseline_models=evaluate.baseline_models_of(cands))
    rows = st["split_manifest"].get("rows") or {}
    return {"champions": results["champions"]}, sum(int(rows.get(s, 0)) for s in EVAL_SPLITS)


def _step_end(st: dict, task: int) -> tuple[dict, int | None]:
    from pythia import evaluate, scoring
    cands = _candidates(st)
    pathspec = f"ScaleBench/{st['run_id']}"
    chosen = evaluate.choose_bundle_models(st["champions"], cands, {}, pathspec,
                                           evaluate.baseline_models_of(cands))
    scoring.export_champions(chosen, st["encoders"], st["params"].geo, pathspec,
                             st["paths"].bundle)
    return {}, None


def run_step(name: str, state_dir: str, task: int) -> None:
    """Child process: run one task of one step on the saved state, save what it adds."""
    sys.path.insert(0, ROOT)
    import tomllib

    from pythia import quiet, threads
    quiet.install()
    with open(os.path.join(ROOT, "flows", "pythia.toml"), "rb") as f:
        asked = tomllib.load(f).get("resources", {}).get(name)
    if asked:  # as the flow's step: its cores, and its @resources memory sizes a Spark heap
        threads.configure_task(asked.get("cpu"), memory_mb=asked.get("memory"))
    updates, rows = globals()[f"_step_{name}"](_load(state_dir), task)
    out = os.path.join(state_dir, f"out-{name}-{task}.pkl")
    with open(out + ".tmp", "wb") as f:
        pickle.dump({"updates": updates, "rows": rows}, f)
    os.replace(out + ".tmp", out)


# ---------------------------------------------------------------- measuring a process tree

def measure(cmd: list[str]) -> None:
    """Measuring parent: run ``cmd``, collect it and every descendant re-parented here (a
    Spark JVM outlives its Python by a moment), print rusage of them all as one JSON line."""
    try:  # orphaned descendants come to us instead of init, so their rusage counts
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, stdout=sys.stderr)  # the step's log goes to the log file
    wall = time.perf_counter() - t0
    while True:  # wait for the descendants (they exit once their parent pipe closes)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"rc": rc, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
                      "rss_mb": ru.ru_maxrss / 1024.0}))


def _measured(name: str, state_dir: str, task: int, log) -> dict:
    child = [sys.executable, os.path.abspath(__file__), "_step", name, state_dir, str(task)]
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "_measure", "--", *child],
                          stdout=subprocess.PIPE, stderr=log, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"step {name}[{task}] gave no measurement; see {log.name}")
    figures = json.loads(lines[-1])
    if figures["rc"] != 0:
        raise RuntimeError(f"step {name}[{task}] failed (exit {figures['rc']}); see {log.name}")
    with open(os.path.join(state_dir, f"out-{name}-{task}.pkl"), "rb") as f:
        out = pickle.load(f)
    figures["rows"], figures["updates"] = out["rows"], out["updates"]
    return figures


def run_scale(scale: float, args: argparse.Namespace, workdir: str) -> dict[str, dict]:
    """Every step at one scale: {step: {wall_s, cpu_s, rss_mb, rows, tasks}}."""
    run_id = f"s{scale:g}"
    base = os.path.join(workdir, run_id)
    state_dir = os.path.join(base, "state")
    os.makedirs(state_dir, exist_ok=True)
    state = {"preset": args.preset, "scale": scale, "seed": args.seed, "run_id": run_id,
             "world_dir": os.path.join(base, "world"), "data_root": os.path.join(base, "data"),
             "models": args.models, "regions": args.regions, "max_epochs": args.max_epochs,
             "hours_per_task": args.hours_per_task, "reuse_world": args.reuse_worlds}
    results: dict[str, dict] = {}
    with open(os.path.join(base, "steps.log"), "w") as log:
        for name in steps_until(args.until):
            with open(os.path.join(state_dir, "state.pkl"), "wb") as f:
                pickle.dump(state, f)
            n_tasks = len(state[FOREACH[name]]) if name in FOREACH else 1
            step = {"wall_s": 0.0, "cpu_s": 0.0, "rss_mb": 0.0, "rows": None, "tasks": n_tasks,
                    "load": []}
            for task in range(n_tasks):
                fig = _measured(name, state_dir, task, log)
                state.update(fig.pop("updates"))
                step["wall_s"] += fig["wall_s"]
                step["cpu_s"] += fig["cpu_s"]
                step["rss_mb"] = max(step["rss_mb"], fig["rss_mb"])
                step["load"].append(round(os.getloadavg()[0], 2))
                if fig["rows"] is not None:
                    step["rows"] = (step["rows"] or 0) + fig["rows"]
            if name == "train" and step["rows"] is not None:
                step["rows"] //= max(n_tasks, 1)  # every family reads the same train rows
            results[name] = step
            print(f"  s={scale:g} {name:16s} {step['wall_s']:8.1f} s wall "
                  f"{step['cpu_s']:8.1f} s cpu {step['rss_mb']:8.0f} MB", flush=True)
    results["_world"] = {"impressions": state["world_summary"]["impressions"]}
    return results


# ---------------------------------------------------------------- the curve

def fit_exponent(scales: list[float], values: list[float]) -> float:
    """b of value = a * scale^b by least squares on logs (NaN with fewer than two sizes)."""
    pts = [(math.log(s), math.log(v)) for s, v in zip(scales, values) if v > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else float("nan")


def fit_fixed(scales: list[float], values: list[float]) -> float:
    """c0 of value = c0 + c1 * scale by least squares: the cost a run pays at any size."""
    if len(scales) < 2:
        return float("nan")
    mx, my = sum(scales) / len(scales), sum(values) / len(values)
    sxx = sum((x - mx) ** 2 for x in scales)
    slope = sum((x - mx) * (y - my) for x, y in zip(scales, values)) / sxx if sxx else 0.0
    return my - slope * mx


def steps_until(until: str | None) -> tuple[str, ...]:
    """The steps in flow order up to and including ``until`` (all of them for None)."""
    if until is None:
        return STEPS
    if until not in STEPS:
        raise ValueError(f"--until {until!r} is not a step; choose from {', '.join(STEPS)}")
    return STEPS[:STEPS.index(until) + 1]


def _steps_of(runs: list[dict[str, dict]]) -> tuple[str, ...]:
    """The steps every run has (a run stopped by ``--until`` has a prefix of STEPS)."""
    return tuple(name for name in STEPS if all(name in run for run in runs))


def print_table(scales: list[float], runs: list[dict[str, dict]]) -> None:
    steps = _steps_of(runs)
    print()
    print(f"{'step':16s} {'scale':>6s} {'rows':>10s} {'wall s':>8s} {'cpu s':>8s} "
          f"{'RSS MB':>8s} {'rows/s':>10s}")
    for name in steps:
        for scale, run in zip(scales, runs):
            st = run[name]
            rows = st["rows"]
            rate = f"{rows / st['wall_s']:10.0f}" if rows and st["wall_s"] > 0 else f"{'-':>10s}"
            print(f"{name:16s} {scale:6g} {rows if rows is not None else '-':>10} "
                  f"{st['wall_s']:8.1f} {st['cpu_s']:8.1f} {st['rss_mb']:8.0f} {rate}")
    # a world of s x the users has about s x the impressions; fit against what it really has
    imps = [r["_world"]["impressions"] for r in runs]
    size = [n / imps[0] for n in imps]
    print()
    for scale, run in zip(scales, runs):
        loads = [x for name in steps for x in run[name].get("load", [])]
        if loads:
            print(f"load average (1 min, after each task) at {scale:g}x: min {min(loads):.1f}, "
                  f"median {sorted(loads)[len(loads) // 2]:.1f}, max {max(loads):.1f}")
    print("impressions per scale: " + ", ".join(f"{s:g}x={n}" for s, n in zip(scales, imps)))
    print("growth exponents b of value ~ impressions^b (1 = linear, 0 = flat); fixed s = wall "
          "at zero impressions (linear fit)")
    print(f"{'step':16s} {'exp wall':>8s} {'exp cpu':>8s} {'exp RSS':>8s} {'RSS max/min':>11s} "
          f"{'fixed s':>8s}")
    total_fixed = 0.0
    for name in steps:
        wall = [r[name]["wall_s"] for r in runs]
        cpu = [r[name]["cpu_s"] for r in runs]
        rss = [r[name]["rss_mb"] for r in runs]
        fixed = fit_fixed(size, wall)
        total_fixed += fixed if math.isfinite(fixed) else 0.0
        ratio = rss[-1] / rss[0] if rss[0] else float("nan")
        print(f"{name:16s} {fit_exponent(size, wall):8.2f} {fit_exponent(size, cpu):8.2f} "
              f"{fit_exponent(size, rss):8.2f} {ratio:11.2f} {fixed:8.1f}")
    totals = [sum(r[n]["wall_s"] for n in steps) for r in runs]
    print(f"{'whole run':16s} {fit_exponent(size, totals):8.2f} {'':8s} {'':8s} {'':11s} "
          f"{total_fixed:8.1f}")


def merge_results(folders: list[str]) -> tuple[list[float], list[dict]]:
    """(scales, runs) of several kept runs' ``results.json``, sorted by scale."""
    by_scale: dict[float, tuple[dict, str]] = {}
    for folder in folders:
        path = os.path.join(folder, "results.json")
        if not os.path.exists(path):
            raise SystemExit(f"scale_bench: no results.json in {folder}; run with --keep or "
                             f"--workdir first")
        with open(path) as f:
            saved = json.load(f)
        for scale, run in zip(saved["scales"], saved["runs"]):
            if scale in by_scale:
                raise SystemExit(f"scale_bench: scale {scale:g} is in both "
                                 f"{by_scale[scale][1]} and {folder}; replot one of them")
            by_scale[scale] = (run, folder)
    scales = sorted(by_scale)
    return scales, [by_scale[s][0] for s in scales]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="default",
                    help="the synthetic preset to scale (default, tiny, …)")
    ap.add_argument("--scales", default="1,2,4,8", help="comma-separated multiples of the preset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="default", help="the flow's --models")
    ap.add_argument("--regions", default="all", help="the flow's --regions")
    ap.add_argument("--max-epochs", type=int, default=8, help="the flow's --max_epochs")
    ap.add_argument("--hours-per-task", type=int, default=4, help="the flow's --hours_per_task")
    ap.add_argument("--workdir", default=None, help="folder for worlds and run files "
                    "(default: a temporary folder, removed unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the worlds and run files")
    ap.add_argument("--reuse-worlds", action="store_true",
                    help="use a complete world already in the workdir (the synth row then "
                         "measures only the check, not the generation)")
    ap.add_argument("--until", default=None, choices=STEPS, metavar="STEP",
                    help="stop every scale after this step (one of: " + ", ".join(STEPS)
                         + "); the tables list the steps that ran")
    ap.add_argument("--replot", default=None, metavar="DIR[,DIR…]",
                    help="only print the tables of kept runs (their results.json, scales merged)")
    args = ap.parse_args(argv)
    if args.replot:
        scales, runs = merge_results(args.replot.split(","))
        print_table(scales, runs)
        return 0
    scales = sorted(float(s) for s in args.scales.split(","))
    workdir = args.workdir or tempfile.mkdtemp(prefix="scale-bench-")
    print(f"scale_bench: preset {args.preset} x {scales}; models {args.models}, regions "
          f"{args.regions}, max_epochs {args.max_epochs}, hours_per_task "
          f"{args.hours_per_task}; steps up to {args.until or STEPS[-1]}; files under "
          f"{workdir}", flush=True)
    try:
        runs = []
        for s in scales:  # saved after every scale, so a failed or stopped larger one keeps these
            runs.append(run_scale(s, args, workdir))
            if args.keep or args.workdir:
                with open(os.path.join(workdir, "results.json"), "w") as f:
                    json.dump({"args": vars(args), "scales": scales[:len(runs)], "runs": runs},
                              f, indent=1)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print_table(scales, runs)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_measure":
        measure(sys.argv[3:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_step":
        run_step(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        raise SystemExit(main())
