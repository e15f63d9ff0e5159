"""What a kept slot costs the scorer: a bundle whose region scores with its own encoders (a
previous run's champion, bundle format 7) against the same bundle without them.

Writes a copy of a bundle in which one region's slot carries encoders of its own (the bundle's,
every vocabulary in reverse order: the same sizes, other ids, as another day's vocabularies
give), loads both, checks that the other regions' rows score alike, then times in turns, threads
pinned to one core:

* ``Scorer.score``, one request at a time (p50 / p99 us; the median of alternating rounds);
* ``Scorer.score_arrays`` on the same batches as a list of dicts and as an Arrow table of
  dictionary columns (rows/s: best wall, median wall, median CPU), and, as the baseline of
  session 64, the kept bundle's batches encoded whole by every encoder (``encode_twice``).

Prints ratios against the plain bundle measured in the same run. Usage::

    python benchmarks/kept_slot_bench.py                     # the latest DemoFlow run's bundle
    python benchmarks/kept_slot_bench.py --bundle PATH --region EU
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy starts its thread pool

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scoring_bench import (as_arrow, as_columns, make_requests,  # noqa: E402
                           time_interleaved, time_single)

from pythia.config import GLOBAL_REGION  # noqa: E402
from pythia.features import TARGETS, Encoders, Vocabulary  # noqa: E402
from pythia.scoring import Scorer  # noqa: E402
from pythia.scoring.bundle_doc import (BUNDLE_FILE, ENCODERS_FILE, SLOT_ENCODERS,  # noqa: E402
                                       slot_encoders_file)


def kept_copy(bundle: str, region: str, out: str) -> str:
    """A copy of ``bundle`` whose ``region`` slot reads its own encoders (reversed
    vocabularies). Returns the copy's folder."""
    folder = shutil.copytree(bundle, out)
    with open(os.path.join(folder, BUNDLE_FILE)) as f:
        doc = json.load(f)
    if doc["models"][region].get(SLOT_ENCODERS):
        raise SystemExit(f"{bundle}: slot {region!r} already has its own encoders")
    with open(os.path.join(folder, ENCODERS_FILE)) as f:
        ours = Encoders.from_json(json.load(f))
    theirs = Encoders(vocabularies={k: Vocabulary(list(reversed(v.values)))
                                    for k, v in ours.vocabularies.items()},
                      numeric=ours.numeric, age_edges=ours.age_edges)
    name = slot_encoders_file(region)
    with open(os.path.join(folder, name), "w") as f:
        json.dump(theirs.to_json(), f)
    doc["models"][region][SLOT_ENCODERS] = name
    with open(os.path.join(folder, BUNDLE_FILE), "w") as f:
        json.dump(doc, f)
    return folder


def encode_twice(scorer: Scorer, requests, now: float) -> dict:
    """Session 64's batch path: the whole batch by the bundle's encoders, then the whole batch
    again by each kept slot's present in it (the baseline this bench was written to beat)."""
    ids, numeric, route_at, routes = scorer.encoder.encode_routed(requests, now)
    for k, region in enumerate(routes):
        rows = route_at == k
        if region in scorer.slot_encoders and rows.any():
            own_ids, own_numeric, _, _ = scorer.slot_encoders[region].encode_routed(requests,
                                                                                     now)
            ids[rows], numeric[rows] = own_ids[rows], own_numeric[rows]
    out = {t: np.empty((len(ids), len(scorer.labels[t]))) for t in TARGETS}
    for k, region in enumerate(routes):
        rows = np.flatnonzero(route_at == k)
        probs = scorer.models[region].predict(ids[rows], numeric[rows])
        for t in TARGETS:
            out[t][rows] = probs[t]
    return out


def score_twice(scorer: Scorer, request: dict, now: float) -> dict:
    """Session 64's ``Scorer.score``: the request encoded by the bundle's encoders (which
    route it), then again by its slot's own."""
    ids, numeric, region = scorer.encoder.encode_one(request, now)
    if region in scorer.slot_encoders:
        ids, numeric, _ = scorer.slot_encoders[region].encode_one(request, now)
    return scorer.models[region].predict_one(ids, numeric)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="a bundle folder (default: the latest DemoFlow run's)")
    parser.add_argument("--region", help="the slot to keep (default: the regional slot with "
                                         "the most requests)")
    parser.add_argument("--rows", type=int, default=4096, help="rows per batch")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--single", type=int, default=2000, help="requests per single round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args(argv)
    if args.bundle is None:
        from pythia.runs import bundle_path_of_run
        args.bundle = bundle_path_of_run(None)
    plain = Scorer.load(args.bundle)
    now = time.time()
    reqs = make_requests(plain.encoders, args.rows * args.batches, seed=0)
    routed = Counter(r["region"] for r in plain.score_batch(reqs, now=now))
    region = args.region or max((r for r in routed if r != GLOBAL_REGION),
                                key=routed.get, default=None)
    if region is None or region not in plain.models:
        raise SystemExit(f"{args.bundle}: no regional slot to keep (slots "
                         f"{sorted(plain.models)}; requests routed {dict(routed)})")
    with tempfile.TemporaryDirectory() as tmp:
        kept = Scorer.load(kept_copy(args.bundle, region, os.path.join(tmp, "kept")))
        share = routed[region] / len(reqs)
        print(f"bundle {args.bundle}; slot {region} kept with its own encoders; "
              f"{share:.1%} of {len(reqs):,} requests route to it")
        check(plain, kept, reqs, region, now)
        single(plain, kept, reqs[:args.single], args.rounds, now)
        batched(plain, kept, reqs, args, now)
    return 0


def check(plain: Scorer, kept: Scorer, reqs: list, region: str, now: float) -> None:
    """The other regions' rows score alike; the kept slot's differ (other ids); the new path
    and the old one agree."""
    a, b = plain.score_arrays(reqs, now=now), kept.score_arrays(reqs, now=now)
    other = np.array([r["region"] != region for r in plain.score_batch(reqs, now=now)])
    assert np.abs(a["age_gender"][other] - b["age_gender"][other]).max() < 1e-9
    assert np.abs(a["age_gender"][~other] - b["age_gender"][~other]).max() > 1e-6
    twice = encode_twice(kept, reqs, now)
    assert np.abs(twice["age_gender"] - b["age_gender"]).max() < 1e-9
    print("checked: other regions' rows equal (1e-9), the kept slot's differ, "
          "session 64's path gives the same scores")


def single(plain: Scorer, kept: Scorer, reqs: list, rounds: int, now: float) -> None:
    paths = {"plain": lambda r: plain.score(r, now=now), "kept": lambda r: kept.score(r, now=now),
             "kept, session 64 (encode, then again)": lambda r: score_twice(kept, r, now)}
    p50: dict = {name: [] for name in paths}
    p99: dict = {name: [] for name in paths}
    order = list(paths.items())
    for i in range(rounds):  # each round starts with another path: no path always first
        for name, fn in order[i % len(order):] + order[:i % len(order)]:
            a, b = time_single(fn, reqs)
            p50[name].append(a)
            p99[name].append(b)
    med = {k: (float(np.median(p50[k])), float(np.median(p99[k]))) for k in p50}
    print("\nScorer.score, one request (median of rounds)   p50 us   p99 us")
    for name in med:
        print(f"  {name:<44} {med[name][0]:>7.1f}  {med[name][1]:>7.1f}")
    print(f"  kept / plain p50: {med['kept'][0] / med['plain'][0]:.3f}; session 64's / plain "
          f"{med['kept, session 64 (encode, then again)'][0] / med['plain'][0]:.3f}")


def batched(plain: Scorer, kept: Scorer, reqs: list, args: argparse.Namespace,
            now: float) -> None:
    rows = args.rows
    lists = [reqs[i * rows:(i + 1) * rows] for i in range(args.batches)]
    kinds = {"list": lists, "arrays": [as_columns(b) for b in lists],
             "pandas": [pd.DataFrame(b) for b in lists], "Arrow": [as_arrow(b) for b in lists]}
    contenders = {}
    for kind, batches in kinds.items():
        contenders.update({
            f"plain, {kind}": (lambda b: plain.score_arrays(b, now=now), batches),
            f"kept, {kind}": (lambda b: kept.score_arrays(b, now=now), batches),
            f"kept, {kind}, session 64": (lambda b: encode_twice(kept, b, now), batches)})
    got = time_interleaved(contenders, seconds=args.seconds)
    print(f"\nScorer.score_arrays, {rows:,} rows a batch     best rows/s  median  median CPU")
    for name, (best, med, cpu) in got.items():
        print(f"  {name:<40} {best:>11,.0f} {med:>8,.0f} {cpu:>11,.0f}")
    for kind in kinds:
        base = got[f"plain, {kind}"][2]
        print(f"  {kind}: median CPU rows/s kept / plain {got[f'kept, {kind}'][2] / base:.3f}; "
              f"session 64's / plain "
              f"{got[f'kept, {kind}, session 64'][2] / base:.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
