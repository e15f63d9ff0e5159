"""`pythia …` console commands: synth, ingest, runs, report, seeds, diff, timings, clean, score,
serve, bench.

Imports are lazy so each command only pays for what it uses (the scorer never loads TensorFlow).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def _cmd_synth(args: argparse.Namespace) -> int:
    from pythia.synth import run_synth_cli
    rc = run_synth_cli(args.preset, args.out, args.seed)
    if rc == 0 and args.openrtb:
        from pythia.ingest import write_openrtb_lines
        done = write_openrtb_lines(args.out, args.openrtb)
        print(f"  wrote {done['lines']:,} OpenRTB bid-request lines to {args.openrtb}")
    return rc


def _cmd_ingest(args: argparse.Namespace) -> int:
    from pythia.ingest import run_ingest_cli
    return run_ingest_cli(args.inputs, args.out)


def _cmd_check(args: argparse.Namespace) -> int:
    from pythia.preflight import check
    hours = [int(h) for h in args.hours.split(",")] if args.hours else None
    return check(args.source, args.date, *([hours] if hours else []),
                 max_quarantined=args.max_quarantined)


def _cmd_runs(args: argparse.Namespace) -> int:
    from pythia.runs import print_runs
    return print_runs(n=args.n, flow_name=args.flow)


def _cmd_report(args: argparse.Namespace) -> int:
    from pythia.runs import print_report
    return print_report(run_id=args.run_id, flow_name=args.flow)


def _cmd_seeds(args: argparse.Namespace) -> int:
    from pythia.seeds import print_seeds, seed_list
    if bool(args.run_ids) == (args.latest is not None):
        raise ValueError("name the runs to pool (two or more) or give --latest K: one of them")
    return print_seeds(seed_list(args.run_ids), args.latest, flow_name=args.flow)


def _cmd_diff(args: argparse.Namespace) -> int:
    from pythia.run_diff import print_diff
    return print_diff(args.run_ids, flow_name=args.flow)


def _cmd_timings(args: argparse.Namespace) -> int:
    from pythia.run_timings import print_timings
    return print_timings(run_id=args.run_id, flow_name=args.flow)


def _cmd_clean(args: argparse.Namespace) -> int:
    from pythia.clean import run_clean
    from pythia.paths import default_data_root
    return run_clean(args.data_root or default_data_root(), args.keep, args.yes,
                     flow_name=args.flow)


def _cmd_score(args: argparse.Namespace) -> int:
    from pythia.scoring import run_score_cli
    from pythia.runs import bundle_path_of_run
    bundle = args.bundle or bundle_path_of_run(args.run, flow_name=args.flow)
    return run_score_cli(bundle, sys.stdin, sys.stdout, format=args.format)


def _cmd_serve(args: argparse.Namespace) -> int:
    from pythia.runs import bundle_path_of_run
    from pythia.scoring.serve import run_server
    bundle = args.bundle or bundle_path_of_run(args.run, flow_name=args.flow)
    return run_server(bundle, args.host, args.port, engine=args.engine, workers=args.workers,
                      watch_seconds=args.watch, admin=args.admin, log_level=args.log_level)


def _benchmarks_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "benchmarks"


def _cmd_bench(args: argparse.Namespace) -> int:
    bench_dir = _benchmarks_dir()
    available = sorted(p.stem.removesuffix("_bench") for p in bench_dir.glob("*_bench.py"))
    if not available:
        print(f"no benchmarks found under {bench_dir} (run from a source checkout)",
              file=sys.stderr)
        return 2
    names = args.names or available
    unknown = [n for n in names if n not in available]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {available}", file=sys.stderr)
        return 2
    status = 0
    for name in names:
        print(f"== {name}", flush=True)
        rc = subprocess.call([sys.executable, str(bench_dir / f"{name}_bench.py")],
                             env=os.environ.copy())
        status = status or rc
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pythia", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="generate a synthetic world in the data-contract layout")
    p.add_argument("--preset", default="default",
                   help="tiny | default | skewed (40 countries, small skewed label set) | large")
    p.add_argument("--out", required=True, help="output folder or s3:// prefix")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--openrtb", default=None, metavar="DIR",
                   help="also write the world's impressions as OpenRTB 2.6 JSON lines here")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("ingest", help="raw logs -> the data-contract layout")
    kinds = p.add_subparsers(dest="kind", required=True)
    q = kinds.add_parser("openrtb", help="OpenRTB 2.6 bid-request JSON lines (plain or gzip, "
                                         "local or s3://), each with its auction time")
    q.add_argument("inputs", nargs="+", help="files or folders of JSON lines")
    q.add_argument("--out", required=True, help="source folder or s3:// prefix to write")
    q.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("check", help="a source's first run, on a sample, before the flow: "
                                      "the input steps' lines, and whether they would go on")
    p.add_argument("source", help="source folder or s3:// prefix (the flow's --source)")
    p.add_argument("--date", default="", help="test day (default: the newest complete date)")
    p.add_argument("--hours", default="", help="hours of day the etl sample reads "
                                               "(default 12,13,14,15)")
    p.add_argument("--max_quarantined", type=float, default=None,
                   help="as the flow's parameter (default 0.1)")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("runs", help="compare recent DemoFlow runs (Metaflow client)")
    p.add_argument("-n", type=int, default=10, help="how many runs")
    p.add_argument("--flow", default="DemoFlow")
    p.set_defaults(func=_cmd_runs)

    p = sub.add_parser("report", help="headline table of a run (default: latest successful)")
    p.add_argument("run_id", nargs="?", default=None)
    p.add_argument("--flow", default="DemoFlow")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("seeds", help="pool runs that differ only in --seed: each margin of "
                                     "models vs baselines, regional vs global and the blind "
                                     "twins over the seeds, with a t test; each region's Bayes "
                                     "gauge per seed")
    p.add_argument("run_ids", nargs="*", help="two or more run ids (comma- or space-separated)")
    p.add_argument("--latest", type=int, default=None,
                   help="instead: the K newest successful runs poolable with the newest one")
    p.add_argument("--flow", default="DemoFlow")
    p.set_defaults(func=_cmd_seeds)

    p = sub.add_parser("diff", help="what moved between two runs: window, seed, settings, "
                                    "code and libraries, rows per split, each region's champion "
                                    "and its scores (default: the two newest runs)")
    p.add_argument("run_ids", nargs="*", help="OLD NEW; one run: it against the run before it")
    p.add_argument("--flow", default="DemoFlow")
    p.set_defaults(func=_cmd_diff)

    p = sub.add_parser("timings", help="wall time of a run and of each step; per train task "
                                       "(model family) its candidates' fit seconds")
    p.add_argument("run_id", nargs="?", default=None)
    p.add_argument("--flow", default="DemoFlow")
    p.set_defaults(func=_cmd_timings)

    p = sub.add_parser("clean", help="free the data root of old runs' files, keeping what "
                                     "later runs and resume read (prints the plan; --yes acts)")
    p.add_argument("--keep", type=int, default=3, help="newest successful runs to keep (>= 1)")
    p.add_argument("--data_root", default=None,
                   help="the flows' --data_root (default: PYTHIA_DATA_ROOT, else ./.pythia/data)")
    p.add_argument("--yes", action="store_true", help="remove the folders the plan marks")
    p.add_argument("--flow", default="DemoFlow")
    p.set_defaults(func=_cmd_clean)

    p = sub.add_parser("score", help="score JSONL requests from stdin with a bundle")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--bundle", help="bundle folder (a run's `bundle_path` artifact)")
    g.add_argument("--run", default=None, help="run id whose bundle to use (default: latest)")
    p.add_argument("--flow", default="DemoFlow")
    p.add_argument("--format", choices=("contract", "openrtb"), default="contract",
                   help="input lines: our request dicts, or OpenRTB bid requests "
                        '({"ts": …, "request": BidRequest}); openrtb scores every imp')
    p.set_defaults(func=_cmd_score)

    from pythia.scoring.serve import add_serve_arguments
    p = sub.add_parser("serve", help="serve a bundle over HTTP: POST /score (our request or "
                                     "OpenRTB), GET /healthz, GET /version; hot reload")
    add_serve_arguments(p)
    p.add_argument("--run", default=None, help="run id whose bundle to serve (default: latest)")
    p.add_argument("--flow", default="DemoFlow")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("bench", help="run benchmarks/*_bench.py (from a source checkout)")
    p.add_argument("names", nargs="*", help="e.g. tfrecord scoring etl synth quality")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"pythia {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader stopped early (`pythia report RUN | head`): no traceback; stdout goes
        # to /dev/null so that flushing it at exit does not raise again (Python's docs,
        # "Note on SIGPIPE")
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # a full disk: one line naming the folder and its free space
        from pythia import disk_full
        if not disk_full.is_disk_full(exc):
            raise
        outs = [o for o in (getattr(args, "out", None), getattr(args, "openrtb", None)) if o]
        print(f"pythia {args.command}: {disk_full.cli_message(exc, outs)}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the client under root without a user name
        from metaflow.exception import MetaflowUnknownUser
        if not isinstance(exc, MetaflowUnknownUser):
            raise
        print(f"pythia {args.command}: Metaflow could not tell your user name (root, and no "
              "$METAFLOW_USER, $USER or $USERNAME): export METAFLOW_USER=<your name> and run "
              "it again", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
