"""Learning curve: how close the champions come to the Bayes gauge as the training rows grow.

    python benchmarks/learning_curve.py [--preset default] [--scales 1,2,4] [--models mlp,logreg]
        [--regions all] [--workdir DIR] [--target 1.02] [--region-target 1.03]
    python benchmarks/learning_curve.py --add 1=DATASTORE_ROOT:RUN_ID --add 2=... [--workdir DIR]
    python benchmarks/learning_curve.py --replot DIR

For each scale s the world is the preset with s x its users (``scale_bench.scaled_world_config``:
the same seed, so the same generative tables, catalogs and days; only the drawn users and their
impressions grow), generated under ``DIR/x{s}/world`` unless already there. DemoFlow runs on it
end to end (``python flows/demo_flow.py run --source WORLD --models ...``; its own Metaflow
datastore and data root under ``DIR/x{s}``; ``METAFLOW_USER`` from the environment, else
``pythia-bench``). ``--add SCALE=ROOT:RUN`` takes a finished run instead (ROOT: its
``METAFLOW_DATASTORE_SYSROOT_LOCAL``), e.g. the default run at scale 1.

Per run it reads the ``gauge`` and ``champions`` artifacts (``evaluate.gauge.gauge_by_slice``,
provider labels, the same rows for model and posterior) and the train rows from
``split_manifest``, and prints per scale and region the champion's log-loss / realised-Bayes
log-loss on the natural test day (AgeGender, gender, age) and AgeGender on its non-power-user,
power-user and new-user slices (users held out of training: on them also against the
population posterior, their fair bar; runs from before the holdout have none). Then, per
region and target, it fits excess = ratio - 1 = a * N^-b over the scales (N the train rows;
log-log least squares) and prints the train rows at which the fit reaches the bar
(``--target`` globally, ``--region-target`` per region): an extrapolation that assumes the
excess keeps falling as the same power of N, printed as such. ``results.json`` in
DIR is rewritten after every scale. Not a test: nothing fails on the numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
REGIONS = ("global", "APAC", "EU", "LATAM", "NA")
TARGETS = ("age_gender", "gender", "age")
SLICES = ("natural", "natural_no_power_users", "natural_power_users", "natural_new_users")
NEW_USERS = SLICES[-1]  # its fair bar is the population posterior (evaluate.gauge)
FAR = 1000  # an extrapolation beyond this multiple of the largest scale is not printed
_RUN_ID = re.compile(r"Workflow starting \(run-id (\S+)\)")


# ---------------------------------------------------------------- one run's figures

def run_figures(gauge, champions, split_manifest) -> dict:
    """{'train_rows', 'ratios': {region: {slice: {target: ratio}}}, 'population': the same
    against the population posterior, 'champions': {region: cand}} of one run's artifacts:
    each region's chosen candidate, provider labels."""
    import pandas as pd

    from pythia.evaluate.gauge import gauge_by_slice

    table = gauge_by_slice(None if gauge is None else pd.DataFrame(gauge),
                           pd.DataFrame(champions))
    if table.empty:
        raise ValueError("the run has no Bayes gauge (not a synthetic world, or evaluate did not "
                         "finish): nothing to put on a learning curve")
    table = table[table["label_source"] == "provider"]
    ratios: dict = {}
    population: dict = {}
    chosen: dict = {}
    for row in table.to_dict("records"):
        region, slice_ = row["eval_region"], row["test_set"]
        chosen[region] = row["candidate"]
        ratios.setdefault(region, {})[slice_] = {
            t: float(row[f"ratio_{t}"]) for t in TARGETS if f"ratio_{t}" in row}
        population.setdefault(region, {})[slice_] = {
            t: float(row[f"ratio_population_{t}"]) for t in TARGETS
            if pd.notna(row.get(f"ratio_population_{t}"))}
    return {"train_rows": int(split_manifest["rows"]["train"]), "ratios": ratios,
            "population": population, "champions": chosen}


def collect(run_id: str) -> dict:
    """``run_figures`` of a run of DemoFlow in this process's Metaflow datastore."""
    from pythia.runs import _artifact, open_run

    run = open_run("DemoFlow", run_id)
    if run is None:
        raise ValueError(f"no run DemoFlow/{run_id} in the datastore "
                         f"{os.environ.get('METAFLOW_DATASTORE_SYSROOT_LOCAL', '(default)')}")
    return dict(run_figures(_artifact(run, "gauge"), _artifact(run, "champions"),
                            _artifact(run, "split_manifest")), run_id=str(run_id))


def _env(datastore_root: str, data_root: str | None = None) -> dict:
    paths = [ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    env = dict(os.environ, METAFLOW_DATASTORE_SYSROOT_LOCAL=datastore_root,
               PYTHONPATH=os.pathsep.join(paths))
    env.setdefault("METAFLOW_USER", "pythia-bench")
    if data_root:
        env["PYTHIA_DATA_ROOT"] = data_root
    return env


def collect_in_child(datastore_root: str, run_id: str) -> dict:
    """``collect`` in a fresh process: Metaflow reads its datastore root once, at import."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--collect", run_id],
                         env=_env(datastore_root), capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"learning_curve: reading run {run_id} under {datastore_root} failed: "
                         f"{(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- one scale, end to end

def run_scale(scale: float, args: argparse.Namespace) -> dict:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from scale_bench import scaled_world_config

    from pythia.synth.generate import generate_world, is_complete

    base = os.path.join(args.workdir, f"x{scale:g}")
    world = os.path.join(base, "world")
    if not is_complete(world):
        generate_world(world, scaled_world_config(args.preset, scale), args.seed, workers=2)
    datastore = os.path.join(base, "mf")
    cmd = [sys.executable, os.path.join(ROOT, "flows", "demo_flow.py"), "run", "--source", world,
           "--models", args.models, "--regions", args.regions]
    log = os.path.join(base, "run.log")
    print(f"scale {scale:g}: {' '.join(cmd[1:])} (log: {log})", flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(datastore, os.path.join(base, "data")),
                              stdout=f, stderr=subprocess.STDOUT, check=False)
    with open(log) as f:
        found = _RUN_ID.search(f.read())
    if proc.returncode != 0 or not found:
        raise SystemExit(f"learning_curve: the flow at scale {scale:g} failed "
                         f"(exit {proc.returncode}); see {log}")
    return collect_in_child(datastore, found.group(1))


# ---------------------------------------------------------------- the fit and the table

def fit_power(rows: list[float], ratios: list[float]) -> tuple[float, float] | None:
    """(a, b) of ratio - 1 = a * rows^-b by log-log least squares; None with fewer than two
    points or an excess <= 0 (a ratio at or below 1 has nothing left to fit)."""
    pts = [(math.log(n), math.log(r - 1)) for n, r in zip(rows, ratios) if r > 1 and n > 0]
    if len(pts) < 2 or len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    slope = (sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts))
    return math.exp(my - slope * mx), -slope


def rows_for(fit: tuple[float, float] | None, target: float) -> float | None:
    """Train rows at which a * N^-b = target - 1; None when the fit does not fall (b <= 0)."""
    if fit is None or fit[1] <= 0:
        return None
    a, b = fit
    return (a / (target - 1)) ** (1 / b)


def print_curve(points: list[dict], target: float, region_target: float, out=None) -> None:
    out = out or sys.stdout
    points = sorted(points, key=lambda p: p["train_rows"])
    print("\nchampion / realised Bayes log-loss, natural test day, provider labels "
          "(ag / g / a; AgeGender on non-power, power and new users; nu pop: AgeGender on new "
          "users / the population posterior, their fair bar)", file=out)
    print(f"{'scale':>6} {'train rows':>11}  {'region':<7} {'ag':>6} {'g':>6} {'a':>6} "
          f"{'ag np':>6} {'ag pw':>6} {'ag nu':>6} {'nu pop':>6}  champion", file=out)
    for p in points:
        for region in REGIONS:
            r = p["ratios"].get(region)
            if not r:
                continue
            nat = r.get("natural", {})
            vals = [nat.get(t) for t in TARGETS] + [r.get(s, {}).get("age_gender")
                                                   for s in SLICES[1:]]
            vals.append(p.get("population", {}).get(region, {}).get(NEW_USERS, {})
                        .get("age_gender"))  # absent on older points
            cells = " ".join(f"{v:6.3f}" if v is not None else f"{'-':>6}" for v in vals)
            print(f"{p['scale']:>6g} {p['train_rows']:>11,}  {region:<7} {cells}  "
                  f"{p['champions'].get(region, '-')}", file=out)
    print(f"\nfit ratio - 1 = a * N^-b per region and target (natural day); rows needed for "
          f"{target} (global) / {region_target} (regions), extrapolated:", file=out)
    for region in REGIONS:
        for t in TARGETS:
            have = [(p["train_rows"], p["ratios"][region]["natural"][t]) for p in points
                    if t in p["ratios"].get(region, {}).get("natural", {})]
            if not have:
                continue
            bar = target if region == "global" else region_target
            fit = fit_power([n for n, _ in have], [r for _, r in have])
            need = rows_for(fit, bar)
            last = have[-1]
            if fit is None:
                text = "too few points to fit"
            elif need is None:
                text = f"b = {fit[1]:.2f}: the excess does not fall with the rows"
            elif last[1] <= bar:
                text = f"b = {fit[1]:.2f}; already at {last[1]:.3f} <= {bar} with {last[0]:,} rows"
            elif need > FAR * last[0]:
                text = (f"b = {fit[1]:.2f}: the excess falls too slowly to reach {bar} within "
                        f"{FAR:g}x the largest scale's {last[0]:,} rows")
            else:
                text = (f"b = {fit[1]:.2f}; {need:,.0f} train rows "
                        f"({need / last[0]:.1f}x the largest scale's {last[0]:,})")
            print(f"  {region:<7} {t:<10} {text}", file=out)


def _save(workdir: str, points: list[dict]) -> None:
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, ".results.json.tmp")
    with open(tmp, "w") as f:
        json.dump({"points": points}, f, indent=1)
    os.replace(tmp, os.path.join(workdir, "results.json"))


def _load(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)["points"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--scales", default="1,2,4", help="comma-separated multiples of the preset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="mlp,logreg", help="the flow's --models")
    ap.add_argument("--regions", default="all", help="the flow's --regions")
    ap.add_argument("--workdir", default=os.path.join(ROOT, ".pythia", "learning_curve"))
    ap.add_argument("--add", action="append", default=[], metavar="SCALE=ROOT:RUN",
                    help="a finished run instead of running the flow at SCALE")
    ap.add_argument("--replot", action="store_true", help="print DIR's results.json again")
    ap.add_argument("--target", type=float, default=1.02)
    ap.add_argument("--region-target", type=float, default=1.03)
    ap.add_argument("--collect", metavar="RUN_ID", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.collect:
        print(json.dumps(collect(args.collect)))
        return 0
    points = {p["scale"]: p for p in _load(args.workdir)} if (args.replot or args.add) else {}
    for spec in args.add:
        m = re.fullmatch(r"([0-9.]+)=(.+):([^:]+)", spec)
        if not m:
            ap.error(f"--add {spec!r}: expected SCALE=DATASTORE_ROOT:RUN_ID, e.g. "
                     f"1=/work/.metaflow-root:1796327380839205")
        points[float(m.group(1))] = dict(collect_in_child(m.group(2), m.group(3)),
                                         scale=float(m.group(1)))
        _save(args.workdir, list(points.values()))
    if not args.replot and not args.add:
        try:
            scales = [float(s) for s in args.scales.split(",") if s.strip()]
        except ValueError:
            ap.error(f"--scales {args.scales!r}: expected numbers like 1,2,4")
        for scale in scales:
            points[scale] = dict(run_scale(scale, args), scale=scale)
            _save(args.workdir, list(points.values()))
    if not points:
        ap.error(f"no results under {args.workdir}: run some scales or --add finished runs")
    print_curve(list(points.values()), args.target, args.region_target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
