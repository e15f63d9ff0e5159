"""Bid-time scoring latency and throughput: the NumPy bundle scorer, ONNX Runtime, the Keras model.

Trains a small MLP of realistic shape (default hparams: 17 embedding tables, trunk 256-128) on
random data, exports it as a bundle, then measures in one run: single-request latency (p50/p99,
feature encoding included) and batched throughput of ``Scorer``, float32 vs float64, against a
plain NumPy forward pass (per-table gathers + concat), against the bundle's ONNX export run by
ONNX Runtime in-process (one intra-op thread; ``pythia.scoring.onnx_export``) and against the
Keras model called through a ``tf.function`` with a fixed input signature and through
``model(x)``. The batched encoder is timed on the same batches as a list of dicts, as a dict of
NumPy arrays and as a pyarrow Table of dictionary columns; raw-in also as the record batches
of an Arrow IPC stream (one dictionary per column shared by the batches, as a producer's
stream delivers them: the encoder keeps the last dictionary's ids).

Issue 16's batched goal is printed as two like-for-like comparisons:

* forward vs forward: encoded ids in on both sides; the bundle's forward (probabilities) against
  a ``tf.function`` returning the same probabilities (AgeGender's logits with the bundle's
  temperature and prior ratio, softmax, marginals), and against the plain ``tf.function``
  returning every head's logits (the older peer);
* raw in -> probabilities out: ``Scorer.score_arrays`` on Arrow dictionary columns against a
  ``tf.function`` that encodes the same raw columns in its graph (``tf_raw_peer.py``: hash-table
  vocabularies, the UTC offset table searched in the graph, local hour / day, normalisation),
  checked equal to the scorer (1e-5) on a sample with DST edges before it is timed.

Each comparison's contenders are timed in turns (``time_interleaved``) and reported as best wall
call, median wall call and median call per CPU second: on a shared machine the CPU-time median
is the steadiest of the three.

Prints ratios. Threads are pinned to 1 (one core); the heap is ``gc.freeze()``-d before latency
loops, as a bidder would after loading. On a shared machine the figures move with other load:
compare rows of one run, not runs. Usage::

    python benchmarks/scoring_bench.py                 # train a model, bundle it, measure
    python benchmarks/scoring_bench.py --bundle PATH   # measure a bundle (Keras too if its
                                                       # MLP's model folder still exists)
    python benchmarks/scoring_bench.py --bundle A --against B   # two bundles, in turns

``--against B`` weighs one bundle against another on this machine, e.g. ``members = 3``
against one fit (docs/new-users.md, session 42): the same requests, each timed in turns with
threads pinned, so both sides share whatever else the machine does. Printed: ``Scorer.score``
p50 / p99 per request (encoding included; the median of ``--rounds`` alternating rounds),
``Scorer.score_arrays`` raw columns -> probabilities, and the global model's forward on
encoded rows, as rows/s (best wall, median wall, median CPU), with B / A and A / B ratios.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
             "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
    os.environ[_var] = "1"  # before numpy / TensorFlow start their thread pools
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import gc  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from pythia import features  # noqa: E402
from pythia.config import GLOBAL_REGION, Geography  # noqa: E402
from pythia.features import (CATEGORICAL_FEATURES, COUNTRY, DERIVED, FEATURES,  # noqa: E402
                             GEO_REGION, IMPRESSION_ID, NUMERIC_FEATURES, TARGETS, TS,
                             USER_ID, USER_IMPRESSIONS_TODAY, Y_AGE, Y_AGE_GENDER, Y_GENDER,
                             Encoders, NumericStats, Vocabulary)
from pythia.scoring import Scorer, read_bundle_doc  # noqa: E402

TS0 = 1_700_000_000
# Realistic vocabulary sizes per categorical (values beyond these are OOV at score time).
VOCAB_SIZES = {"country": 12, "geo_region": 300, "metro": 210, "inventory_type": 2,
               "site_or_app": 20_000, "content_category": 400, "supply_vendor": 60,
               "ad_format": 4, "ad_size": 40, "device_type": 4, "device_make": 300,
               "device_model": 5_000, "os": 12, "os_version": 200, "browser": 30,
               "local_hour": 24, "local_dow": 7}


def make_encoders() -> Encoders:
    vocab = {}
    for name, size in VOCAB_SIZES.items():
        if name in features.DERIVED_FEATURES:  # local hour / day of week: small integers
            vocab[name] = Vocabulary([str(i) for i in range(size)])
        elif name == "country":
            vocab[name] = Vocabulary(sorted(Geography().region_of_country))
        else:
            vocab[name] = Vocabulary([f"{name}-{i}" for i in range(size)])
    # each make in each region of the map (the train days' vocabulary of a many-market log)
    regions = sorted(set(Geography().region_of_country.values()))
    vocab["region_device_make"] = Vocabulary([f"{r}|{v}" for r in regions
                                              for v in vocab["device_make"].values])
    # numerics with the transform their feature has (the activity counter: log1p, as the ETL)
    return Encoders(vocabularies=vocab,
                    numeric={f.name: NumericStats(0.0, 0.7, f.transform) for f in FEATURES
                             if f.name in NUMERIC_FEATURES})


def make_requests(encoders: Encoders, n: int, seed: int) -> list[dict]:
    """Random requests: Zipf-ish vocabulary values, a few unknown / missing ones, string ts,
    the activity counter (``user_impressions_today``; a tenth of the requests without it)."""
    rng = np.random.default_rng(seed)
    cols = {}
    for f in FEATURES:
        if f.kind != features.CATEGORICAL or f.source in (DERIVED, features.REGIONAL):
            continue  # derived from the request's other fields
        values = np.array(encoders.vocabularies[f.name].values + ["unseen-value", ""], object)
        weights = 1.0 / np.arange(1, len(values) + 1)
        cols[f.source] = rng.choice(values, size=n, p=weights / weights.sum())
    ts = TS0 + rng.integers(0, 86400 * 7, size=n)
    counts = np.floor(rng.lognormal(1.0, 1.5, size=n))
    out = []
    for i in range(n):
        r = {c: v[i] for c, v in cols.items()}
        r[IMPRESSION_ID] = f"imp-{i}"
        r[USER_ID] = f"u-{i % 997}"
        r[TS] = int(ts[i]) if i % 4 else f"2023-11-15T{i % 24:02d}:13:20Z"
        if i % 10:  # impressions so far today: mostly few, a heavy tail; a tenth unknown
            r[USER_IMPRESSIONS_TODAY] = int(counts[i])
        out.append(r)
    return out


def as_columns(requests: list[dict]) -> dict[str, np.ndarray]:
    """The same batch as columns: a dict of NumPy object arrays (cells unchanged)."""
    names = list(dict.fromkeys(k for r in requests for k in r))
    out = {}
    for c in names:
        column = np.empty(len(requests), dtype=object)
        column[:] = [r.get(c) for r in requests]
        out[c] = column
    return out


def as_arrow(requests: list[dict]):
    """The same batch as a pyarrow Table a producer would write: dictionary-encoded strings,
    ``ts`` as int64 epoch seconds, the activity counter as int64 (null when unknown). None
    when pyarrow is not installed."""
    try:
        import pyarrow as pa
    except ImportError:
        return None
    from pythia.scoring.boundary import clean_ts

    columns = as_columns(requests)
    table = {c: pa.array(v.tolist(), type=pa.string()).dictionary_encode()
             for c, v in columns.items() if c not in (TS, USER_IMPRESSIONS_TODAY)}
    if USER_IMPRESSIONS_TODAY in columns:
        table[USER_IMPRESSIONS_TODAY] = pa.array(columns[USER_IMPRESSIONS_TODAY].tolist(),
                                                 type=pa.int64())
    table[TS] = pa.array([clean_ts(v) for v in columns[TS].tolist()], type=pa.int64())
    return pa.table(table)


def as_arrow_stream(tables: list) -> list:
    """The same batches as a producer's Arrow IPC stream delivers them: record batches sharing
    one dictionary per column (the union of the batches' values)."""
    import pyarrow as pa

    whole = pa.concat_tables(tables).unify_dictionaries().combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, whole.schema) as writer:
        for table in tables:  # the same rows per batch as ``tables``
            writer.write_batch(whole.slice(0, table.num_rows).to_batches()[0])
            whole = whole.slice(table.num_rows)
    return list(pa.ipc.open_stream(sink.getvalue()))


def train_bundle(workdir: str, rows: int, hparams: dict | None = None,
                 before_save: Any = None) -> tuple[str, str]:
    """Fit the default-shape MLP (or ``hparams``') on random data for one epoch, call
    ``before_save(model)`` when given, save and export it; returns (bundle, model_dir)."""
    from pythia.config import TrainConfig
    from pythia.models import get_model
    from pythia.models.priors import priors_from_labels
    from pythia.scoring import export_bundle
    from pythia.scoring.boundary import RequestEncoder

    encoders = make_encoders()
    geo = Geography()
    ids, numeric, _ = RequestEncoder(encoders, geo, [GLOBAL_REGION]).encode_many(
        make_requests(encoders, rows, seed=1))
    rng = np.random.default_rng(2)
    n_age = len(encoders.age_edges)
    g, a = rng.integers(0, 2, rows), rng.integers(0, n_age, rows)
    data = {n: ids[:, j] for j, n in enumerate(CATEGORICAL_FEATURES)}
    data.update({n: numeric[:, j] for j, n in enumerate(NUMERIC_FEATURES)})
    data.update({Y_GENDER: g, Y_AGE: a, Y_AGE_GENDER: features.age_gender_index(g, a, n_age)})
    cut = rows * 3 // 4
    train, valid = ({k: v[:cut] for k, v in data.items()}, {k: v[cut:] for k, v in data.items()})
    n_classes = {t: len(features.class_labels(t, encoders.age_edges)) for t in TARGETS}
    priors = priors_from_labels({t: data[c][:cut] for t, c in features.LABEL_COLUMNS.items()},
                                n_classes)
    model = get_model("mlp")(encoders, hparams or {}, TrainConfig(max_epochs=1, batch_size=256))
    model.fit(train, valid, {"train": priors, "natural": priors})  # the models' prior keys
    if before_save is not None:
        before_save(model)
    model_dir = os.path.join(workdir, "model")
    model.save(model_dir)
    bundle = export_bundle([{"region": GLOBAL_REGION, "model": "mlp", "model_dir": model_dir}],
                           encoders, geo, "bench/0", os.path.join(workdir, "bundle"))
    return bundle, model_dir


def percentiles_us(samples_ns: list[int]) -> tuple[float, float]:
    a = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def time_single(fn, items: list, repeats: int = 1) -> tuple[float, float]:
    """p50 / p99 microseconds of ``fn(item)`` (a warm-up pass first)."""
    for item in items[:200]:
        fn(item)
    # What a latency-sensitive server does after start-up: collect once, then freeze the
    # long-lived heap so later collections never walk it (the test requests live there too).
    gc.collect()
    gc.freeze()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(repeats):
        for item in items:
            t0 = clock()
            fn(item)
            samples.append(clock() - t0)
    return percentiles_us(samples)


def time_rows_per_s(fn, batches: list, seconds: float = 2.0) -> tuple[float, float]:
    """(best, median) rows/s over repeated batch calls for about ``seconds``.

    The machine is shared, so the median mixes in other people's load; the best call is the
    closest to an undisturbed core (timeit's rule).
    """
    fn(batches[0])
    rates, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(rates) < 5:
        for b in batches:
            t0 = time.perf_counter()
            fn(b)
            rates.append(_rows_of(b) / (time.perf_counter() - t0))
    return max(rates), float(np.median(rates))


def time_interleaved(contenders: dict, seconds: float = 8.0) -> dict:
    """{name: (best wall, median wall, median CPU) rows/s} of ``{name: (fn, batches)}`` timed
    in turns: every round calls each contender on each of its batches, so load from other
    processes falls on all of them alike (timed one after the other, a contender can draw a
    quiet or a busy spell). CPU time is the process's (``time.process_time``: every thread,
    TensorFlow's pools included), which other processes' load barely moves."""
    wall: dict = {name: [] for name in contenders}
    cpu: dict = {name: [] for name in contenders}
    for fn, batches in contenders.values():
        fn(batches[0])
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or min(map(len, wall.values())) < 5:
        for name, (fn, batches) in contenders.items():
            for b in batches:
                c0, t0 = time.process_time(), time.perf_counter()
                fn(b)
                t1, c1 = time.perf_counter(), time.process_time()
                wall[name].append(_rows_of(b) / (t1 - t0))
                cpu[name].append(_rows_of(b) / max(c1 - c0, 1e-9))
    return {name: (max(wall[name]), float(np.median(wall[name])), float(np.median(cpu[name])))
            for name in contenders}


# Issue 16's like-for-like comparisons, filled in as the sections build their callables:
# {group: {label: (fn, batches)}}, the group's peer first.
CONTENDERS: dict = {"forward": {}, "raw": {}}


def _rows_of(batch) -> int:
    if isinstance(batch, dict):
        return len(next(iter(batch.values())))
    return len(batch[0]) if isinstance(batch, tuple) else len(batch)


def pin_tf_threads() -> None:
    """One TensorFlow thread per pool; must run before TensorFlow executes anything."""
    try:
        import tensorflow as tf
    except ImportError:
        return
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def naive_forward(export: dict, ids: np.ndarray, numeric: np.ndarray) -> dict:
    """The export's definition computed plainly (per-table gathers, concat, layer by layer)."""
    from pythia.models.links import link_probabilities

    x = np.concatenate([t[ids[:, j]] for j, (_, t) in enumerate(export["embeddings"])]
                       + [numeric], axis=1)
    for W, b, _ in export["trunk"]:
        x = np.maximum(x @ W + b, 0)
    out = {}
    for t, (W, b, link) in export["heads"].items():
        p = link_probabilities((x @ W + b) / export["temperature"][t], link)
        p = p * export["prior_ratio"][t]
        out[t] = p / p.sum(axis=1, keepdims=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", help="measure this bundle instead of training one")
    parser.add_argument("--rows", type=int, default=4096, help="training rows (when training)")
    parser.add_argument("--single", type=int, default=20_000, help="single requests timed")
    parser.add_argument("--batch", type=int, default=4096, help="rows per batched call")
    parser.add_argument("--keras-single", type=int, default=300,
                        help="single calls timed for model(x) (slow)")
    parser.add_argument("--against", metavar="BUNDLE",
                        help="with --bundle: time that bundle and this one in turns (ratios)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="--against: alternating rounds of single requests")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="--against: seconds of interleaved batch calls per comparison")
    args = parser.parse_args(argv)
    if args.against:
        if not args.bundle:
            raise SystemExit("--against needs --bundle: the two bundles to time in turns")
        for path in (args.bundle, args.against):
            if not os.path.isfile(os.path.join(path, "bundle.json")):
                raise SystemExit(f"{path}: not a bundle folder (no bundle.json); pass the "
                                 "'bundle_path' a run's end step printed")
        if args.rounds < 1 or args.single < args.rounds or args.batch < 1:
            raise SystemExit("--against needs --rounds >= 1, --single >= --rounds and "
                             "--batch >= 1")
        compare(args.bundle, args.against, args)
        return 0

    pin_tf_threads()
    with tempfile.TemporaryDirectory(prefix="pythia-bench-") as workdir:
        if args.bundle:
            bundle = args.bundle
            entry = read_bundle_doc(bundle)["models"][GLOBAL_REGION]
            model_dir = entry.get("source") if entry["kind"] == "mlp" else None
            if model_dir and not os.path.exists(os.path.join(model_dir, "meta.json")):
                model_dir = None
        else:
            t0 = time.perf_counter()
            bundle, model_dir = train_bundle(workdir, args.rows)
            print(f"trained + exported a default-shape MLP in {time.perf_counter() - t0:.1f}s")
        return _measure(bundle, model_dir, args)


def compare(bundle_a: str, bundle_b: str, args: argparse.Namespace) -> dict:
    """``--against``: bundles A and B on the same requests, timed in turns; prints the table
    and returns {measure: {"A": value, "B": value}}. NumPy only: TensorFlow is not used."""
    scorers = {"A": Scorer.load(bundle_a, dtype="float32"),
               "B": Scorer.load(bundle_b, dtype="float32")}
    requests = make_requests(scorers["A"].encoders, args.single, seed=3)
    batches = [make_requests(scorers["A"].encoders, args.batch, seed=10 + i) for i in range(2)]
    for name, path in (("A", bundle_a), ("B", bundle_b)):
        export = scorers[name].models[GLOBAL_REGION]
        print(f"{name}: {path} (global model: {type(export).__name__})")
    out: dict = {}
    print(f"\n-- single request (Scorer.score, encoding included), microseconds: the median "
          f"of {args.rounds} alternating rounds of {args.single // args.rounds:,} requests")
    per = args.single // args.rounds
    rounds: dict = {k: [] for k in scorers}
    for r in range(args.rounds):
        chunk = requests[r * per:(r + 1) * per]
        for name, scorer in scorers.items():
            rounds[name].append(time_single(scorer.score, chunk))
    for i, label in enumerate(("p50", "p99")):
        out[f"score_{label}_us"] = {k: float(np.median([v[i] for v in rounds[k]]))
                                    for k in scorers}
        a, b = out[f"score_{label}_us"]["A"], out[f"score_{label}_us"]["B"]
        print(f"  {label}: A {a:8.1f}   B {b:8.1f}   B / A {b / a:5.2f}")
    arrays = [as_columns(b) for b in batches]
    encoded = {}
    for name, scorer in scorers.items():
        encoded[name] = [dict(zip(("ids", "numeric"), scorer.encoder.encode_many(b)[:2]))
                         for b in batches]
    groups = {
        "raw columns -> probabilities (Scorer.score_arrays)": {
            k: (s.score_arrays, arrays) for k, s in scorers.items()},
        "the global model's forward on encoded rows": {
            k: (lambda e, rt=s.models[GLOBAL_REGION]: rt.predict(e["ids"], e["numeric"]),
                encoded[k]) for k, s in scorers.items()},
    }
    for title, contenders in groups.items():
        res = time_interleaved(contenders, args.seconds)
        print(f"\n-- {title}, rows/s ({args.batch:,} a call; best wall, median wall, "
              "median CPU)")
        for name, (best, med, cpu) in res.items():
            print(f"  {name}: {best:12,.0f} {med:12,.0f} {cpu:12,.0f}")
        ratio = res["A"][2] / res["B"][2]
        print(f"  A / B (median CPU rows/s): {ratio:.2f}")
        out[title] = {k: res[k][2] for k in res}
    return out


def _measure(bundle: str, model_dir: str | None, args: argparse.Namespace) -> int:
    from pythia.scoring.runtime import load_export_npz

    results: dict[str, float] = {}
    scorers = {d: Scorer.load(bundle, dtype=d) for d in ("float32", "float64")}
    scorer = scorers["float32"]
    encoders = scorer.encoders
    single = make_requests(encoders, args.single, seed=3)
    batches = [make_requests(encoders, args.batch, seed=10 + i) for i in range(4)]
    rt = scorer.models[GLOBAL_REGION]
    export = load_export_npz(os.path.join(bundle, read_bundle_doc(bundle)["models"]
                                          [GLOBAL_REGION]["file"]))
    shape = (f"{len(CATEGORICAL_FEATURES)} tables, "
             f"{sum(len(t) for _, t in export['embeddings'])} vocabulary rows, embedding widths "
             f"{sorted({t.shape[1] for _, t in export['embeddings']}, reverse=True)}, trunk "
             f"{[W.shape[1] for W, _, _ in export['trunk']]}, heads "
             f"{ {t: W.shape[1] for t, (W, _, _) in export['heads'].items()} } (AgeGender's "
             f"computed), wide part: {'wide' in export}")
    print(f"model: {shape}; numpy {np.__version__}; threads pinned to 1")

    print("\n-- single request (Scorer.score, feature encoding included), microseconds")
    for dtype, s in scorers.items():
        p50, p99 = time_single(s.score, single)
        results[f"score_p50_{dtype}"], results[f"score_p99_{dtype}"] = p50, p99
        print(f"  Scorer.score [{dtype}]        p50 {p50:8.1f}   p99 {p99:8.1f}")
    enc = scorer.encoder
    p50, p99 = time_single(enc.encode_one, single)
    print(f"  of which encode_one           p50 {p50:8.1f}   p99 {p99:8.1f}")
    encoded = [enc.encode_one(r) for r in single[:5000]]
    p50, p99 = time_single(lambda e: rt.predict_one(e[0], e[1]), encoded, repeats=2)
    results["fused_p50"] = p50
    print(f"  of which fused predict_one    p50 {p50:8.1f}   p99 {p99:8.1f}")
    pairs = [(np.array([e[0]], dtype=np.int64), np.array([e[1]], dtype=np.float32))
             for e in encoded]
    p50, p99 = time_single(lambda p: rt.predict(*p), pairs, repeats=2)
    print(f"  batch path with 1 row         p50 {p50:8.1f}   p99 {p99:8.1f}")
    p50, p99 = time_single(lambda p: naive_forward(export, *p), pairs, repeats=2)
    results["naive_p50"] = p50
    print(f"  plain NumPy forward (float64) p50 {p50:8.1f}   p99 {p99:8.1f}")

    print(f"\n-- batched ({args.batch} rows per call), rows/s on one core: best call / median")
    enc_batches = [enc.encode_many(b)[:2] for b in batches]
    col_batches = [as_columns(b) for b in batches]
    arrow_batches = [as_arrow(b) for b in batches]
    rows = [("arrays_float32", "Scorer.score_arrays [float32]", scorers["float32"].score_arrays,
             batches),
            ("arrays_float64", "Scorer.score_arrays [float64]", scorers["float64"].score_arrays,
             batches),
            ("batch", "Scorer.score_batch (dicts out)", scorer.score_batch, batches),
            ("arrays_float32_arrow", "score_arrays [float32], Arrow", scorer.score_arrays,
             arrow_batches),
            ("encode_rows", "  of which encode_many", enc.encode_many, batches),
            ("encode_columns", "encode_many, dict of arrays", enc.encode_many, col_batches),
            ("encode_arrow", "encode_many, Arrow (dictionary)", enc.encode_many,
             arrow_batches),
            ("fused_rows", "  of which fused forward", lambda p: rt.predict(*p), enc_batches),
            ("naive_rows", "plain NumPy forward", lambda p: naive_forward(export, *p),
             enc_batches)]
    if arrow_batches[0] is None:
        rows = [r for r in rows if r[0] not in ("encode_arrow", "arrays_float32_arrow")]
        print("  (pyarrow not installed: the Arrow rows are skipped)")
    for key, label, fn, data in rows:
        best, median = time_rows_per_s(fn, data)
        results[key], results[key + "_median"] = best, median
        print(f"  {label:32s} {best:10,.0f} / {median:10,.0f}")
    forward_numpy = ("bundle NumPy forward -> probabilities", (lambda p: rt.predict(*p),
                                                                enc_batches))
    raw_numpy = [("Scorer.score_arrays [numpy float32], Arrow", (scorer.score_arrays,
                                                                 arrow_batches)),
                 ("Scorer.score_arrays [numpy float32], Arrow IPC stream",
                  (scorer.score_arrays, as_arrow_stream(arrow_batches)
                   if arrow_batches[0] is not None else None)),
                 ("Scorer.score_arrays [numpy float32], dicts", (scorer.score_arrays, batches))]

    try:
        onnx_forward, onnx_raw = _measure_onnx(bundle, export, encoded, batches, enc_batches,
                                               single, results, arrow_batches)
    except ImportError as exc:
        onnx_forward, onnx_raw = [], []
        print(f"\n(ONNX Runtime comparison skipped: {exc})")

    if model_dir:
        _measure_keras(model_dir, enc_batches, pairs, args, results, export, scorer,
                       arrow_batches)
        CONTENDERS["forward"].update([forward_numpy] + onnx_forward)
        if CONTENDERS["raw"]:
            CONTENDERS["raw"].update(raw_numpy + onnx_raw)
    else:
        print("\n(no MLP model folder: Keras comparison skipped)")

    print("\n-- ratios (each figure: best call of its own row, one run; on a shared machine trust "
          "the timed-in-turns sections below)")
    print(f"  plain forward / predict_one, 1 row  "
          f"{results['naive_p50'] / results['fused_p50']:6.2f}x")
    print(f"  fused / plain forward, batched {results['fused_rows'] / results['naive_rows']:6.2f}x")
    print(f"  float32 / float64 rows/s       "
          f"{results['arrays_float32'] / results['arrays_float64']:6.2f}x")
    print(f"  encode_many: dict of arrays / list of dicts  "
          f"{results['encode_columns'] / results['encode_rows']:6.2f}x")
    if "encode_arrow" in results:
        print(f"  encode_many: Arrow dictionary / list of dicts "
              f"{results['encode_arrow'] / results['encode_rows']:6.2f}x")
    if "onnx_rows" in results:
        print(f"  ONNX Runtime / fused NumPy forward, batched  "
              f"{results['onnx_rows'] / results['fused_rows']:6.2f}x")
        print(f"  score_arrays [onnx] / [numpy float32]        "
              f"{results['arrays_onnx'] / results['arrays_float32']:6.2f}x")
        print(f"  ONNX Runtime predict p50 / fused predict_one p50 (1 row) "
              f"{results['onnx_one_p50'] / results['fused_p50']:6.2f}x")
    if "tf_function_p50" in results:
        p50 = results["score_p50_float32"]
        print(f"  tf.function p50 / Scorer.score p50  {results['tf_function_p50'] / p50:8.1f}x")
        print(f"  model(x) p50 / Scorer.score p50     {results['model_call_p50'] / p50:8.1f}x")
        _print_peer_comparisons(results)
    print("\n-- goals: p50 <= 50 us, p99 <= 150 us, >= 100k rows/s, >= 10x tf.function at p50")
    print(f"  p50 {results['score_p50_float32']:.1f} us, p99 {results['score_p99_float32']:.1f} us,"
          f" {results['arrays_float32']:,.0f} rows/s best call "
          f"({results['arrays_float32_median']:,.0f} median); forward alone "
          f"{results['fused_rows']:,.0f} rows/s")
    if "tf_function_p50" in results:
        print(f"  one request: tf.function p50 / Scorer.score p50 = "
              f"{results['tf_function_p50'] / results['score_p50_float32']:.1f}x (goal >= 10x)")
    return 0


def _print_peer_comparisons(results: dict) -> None:
    """Issue 16's batched goal, like for like, each group timed in turns (``time_interleaved``):
    forward vs forward (encoded ids in), and raw request columns in -> probabilities out."""
    titles = {"forward": "forward vs forward: encoded ids + numerics in, no encoding on "
                         "either side",
              "raw": "raw in -> probabilities out: request columns in (Arrow: dictionary "
                     "strings, int64 ts; the peer takes them as string tensors)"}
    for group, contenders in CONTENDERS.items():
        if len(contenders) < 2:
            continue
        timed = time_interleaved(contenders)
        peer = next(iter(timed))
        print(f"\n-- batched, {titles[group]}; timed in turns. rows/s: best call (wall), "
              f"median call (wall), median call per CPU second; ratios to the peer")
        for label, (best, median, cpu) in timed.items():
            results[f"{group}: {label}"] = best
            print(f"    {label:50s} {best:9,.0f} {best / timed[peer][0]:5.2f}x "
                  f"{median:9,.0f} {cpu:9,.0f} {cpu / timed[peer][2]:5.2f}x")
    if CONTENDERS["raw"]:
        print(f"    (the raw peer equals Scorer.score_arrays to {results['tf_raw_max_diff']:.1e} "
              f"over {results['tf_raw_check_rows']:,} rows, DST edges and subdivisions "
              f"included; its UTC offsets are computed in the graph; one model, no routing)")


def _measure_onnx(bundle: str, export: dict, encoded: list, batches: list,
                  enc_batches: list, single: list, results: dict, arrow_batches: list
                  ) -> tuple[list, list]:
    """The same model through ONNX Runtime: forward alone, and behind the Scorer's encoder."""
    import onnxruntime

    from pythia.scoring.onnx_export import OnnxMLP, build_onnx_model, load_onnx_scorer

    encoders = Scorer.load(bundle).encoders
    t0 = time.perf_counter()
    engine = OnnxMLP(build_onnx_model(export, encoders), threads=1)
    built = time.perf_counter() - t0
    print(f"\n-- ONNX Runtime {onnxruntime.__version__}, 1 intra-op thread (graph built + "
          f"session in {built:.2f}s), microseconds")
    p50, p99 = time_single(lambda e: engine.predict_one(e[0], e[1]), encoded, repeats=2)
    results["onnx_one_p50"] = p50
    print(f"  ORT predict, 1 row (encoded)  p50 {p50:8.1f}   p99 {p99:8.1f}")
    pure = load_onnx_scorer(bundle, numpy_for_small=False)  # every call on ORT
    p50, p99 = time_single(pure.score, single)
    results["onnx_score_p50"], results["onnx_score_p99"] = p50, p99
    print(f"  Scorer.score [onnx, all ORT]  p50 {p50:8.1f}   p99 {p99:8.1f}")
    best, median = time_rows_per_s(lambda p: engine.predict(*p), enc_batches)
    results["onnx_rows"], results["onnx_rows_median"] = best, median
    print(f"  ORT forward batched rows/s     {best:10,.0f} / {median:10,.0f} (best / median)")
    hybrid = load_onnx_scorer(bundle)  # batches on ORT, single requests on NumPy
    best, median = time_rows_per_s(hybrid.score_arrays, batches)
    results["arrays_onnx"], results["arrays_onnx_median"] = best, median
    print(f"  Scorer.score_arrays [onnx]     {best:10,.0f} / {median:10,.0f} (encoding "
          f"included)")
    if arrow_batches[0] is not None:
        best, median = time_rows_per_s(hybrid.score_arrays, arrow_batches)
        results["arrays_onnx_arrow"], results["arrays_onnx_arrow_median"] = best, median
        print(f"  score_arrays [onnx], Arrow     {best:10,.0f} / {median:10,.0f} (dictionary "
              f"columns, encoding included)")
    return ([("bundle ONNX Runtime forward -> probabilities",
              (lambda p: engine.predict(*p), enc_batches))],
            [("Scorer.score_arrays [onnx], Arrow", (hybrid.score_arrays, arrow_batches))]
            if arrow_batches[0] is not None else [])


def _measure_keras(model_dir: str, enc_batches: list, pairs: list, args: argparse.Namespace,
                   results: dict, export: dict, scorer: Scorer, arrow_batches: list) -> None:
    import tensorflow as tf

    from pythia.models import load_model

    keras_model = load_model(model_dir).keras_model

    def as_inputs(ids: np.ndarray, numeric: np.ndarray) -> dict:
        x = {n: tf.constant(ids[:, j]) for j, n in enumerate(CATEGORICAL_FEATURES)}
        x.update({n: tf.constant(numeric[:, j].astype(np.float32))
                  for j, n in enumerate(NUMERIC_FEATURES)})
        return x

    signature = [{**{n: tf.TensorSpec([None], tf.int64, name=n) for n in CATEGORICAL_FEATURES},
                  **{n: tf.TensorSpec([None], tf.float32, name=n) for n in NUMERIC_FEATURES}}]
    serve = tf.function(lambda x: keras_model(x, training=False), input_signature=signature)
    singles = [as_inputs(i, n) for i, n in pairs[:2000]]
    print("\n-- Keras model (pre-encoded tensors: encoding NOT included), microseconds")
    p50, p99 = time_single(serve, singles)
    results["tf_function_p50"] = p50
    print(f"  tf.function (fixed signature) p50 {p50:8.1f}   p99 {p99:8.1f}")
    p50, p99 = time_single(lambda x: keras_model(x, training=False),
                           singles[:args.keras_single])
    results["model_call_p50"] = p50
    print(f"  model(x)                      p50 {p50:8.1f}   p99 {p99:8.1f}")
    tf_batches = [as_inputs(i, n) for i, n in enc_batches]
    best, median = time_rows_per_s(serve, tf_batches)
    results["tf_function_rows"] = best
    print(f"  tf.function batched rows/s     {best:10,.0f} / {median:10,.0f} (best / median; "
          f"logits of all three heads)")
    proba = _proba_peer(keras_model, export, signature, scorer)
    diff = max(float(np.max(np.abs(proba(tf_batches[0])[t].numpy() - v)))
               for t, v in scorer.models[GLOBAL_REGION].predict(*enc_batches[0]).items())
    CONTENDERS["forward"]["tf.function -> probabilities (the peer)"] = (proba, tf_batches)
    CONTENDERS["forward"]["tf.function -> all heads' logits (the older peer)"] = (serve,
                                                                                  tf_batches)
    best, median = time_rows_per_s(proba, tf_batches)
    results["tf_proba_rows"] = best
    print(f"  tf.function -> probabilities   {best:10,.0f} / {median:10,.0f} (AgeGender "
          f"calibrated as the bundle does, marginals; max |diff| to the bundle {diff:.1e})")
    if arrow_batches[0] is None:
        print("  (pyarrow not installed: the raw-in peer is skipped)")
        return
    _measure_raw_peer(keras_model, export, scorer, arrow_batches, results)


def _proba_peer(keras_model, export: dict, signature: list, scorer: Scorer):
    """tf.function: encoded tensors in, the bundle's probabilities out (AgeGender's logits
    calibrated as the bundle does -- temperature, or per activity bin with its wide-only
    bins, and prior ratio -- softmax, gender / age marginals)."""
    import tensorflow as tf
    from tf_raw_peer import calibrated_joint

    joint_of = calibrated_joint(keras_model, export)
    n_age = len(scorer.labels["age"])

    @tf.function(input_signature=signature)
    def proba(x):
        joint = joint_of(x)
        cube = tf.reshape(joint, [-1, len(features.GENDER_CLASSES), n_age])
        return {"gender": tf.reduce_sum(cube, axis=2), "age": tf.reduce_sum(cube, axis=1),
                "age_gender": joint}

    return proba


def dst_sample(encoders: Encoders, n: int = 2000) -> list[dict]:
    """Requests in countries with daylight saving and subdivision zones, a minute either side
    of 2024's changes (the raw-in peer's correctness check)."""
    rng = np.random.default_rng(7)
    places = [("US", "CA"), ("US", "NY"), ("US", " tx "), ("US", "US-AZ"), ("US", None),
              ("AU", "NSW"), ("AU", "WA"), ("DE", None), ("BR", "SP"), ("GB", None),
              ("JP", None), ("XX", "CA"), (None, None)]
    changes = [1_710_054_000, 1_730_613_600, 1_711_846_800, 1_729_990_800, 1_712_415_600,
               1_728_144_000]  # US, DE, AU (Sydney) 2024
    rows = make_requests(encoders, n, seed=8)
    for r in rows:
        r[COUNTRY], r[GEO_REGION] = places[rng.integers(len(places))]
        r[TS] = int(changes[rng.integers(len(changes))] + rng.integers(-90, 90) * 60)
    return rows


def _measure_raw_peer(keras_model, export: dict, scorer: Scorer, arrow_batches: list,
                      results: dict) -> None:
    from tf_raw_peer import arrow_to_tensors, check_peer, make_raw_peer

    peer = make_raw_peer(keras_model, scorer.encoders, scorer.geo.offset_table.to_json(),
                         export, scorer.geo.region_of_country)
    sample = as_arrow(dst_sample(scorer.encoders) + make_requests(scorer.encoders, 2000, seed=9))
    results["tf_raw_max_diff"] = check_peer(peer, scorer, sample)
    results["tf_raw_check_rows"] = sample.num_rows
    tensors = [arrow_to_tensors(b) for b in arrow_batches]
    CONTENDERS["raw"]["tf.function raw peer, string tensors in (the peer)"] = (peer, tensors)
    CONTENDERS["raw"]["tf.function raw peer, Arrow -> tensors timed too"] = (
        lambda b: peer(arrow_to_tensors(b)), arrow_batches)
    best, median = time_rows_per_s(peer, tensors)
    results["tf_raw_rows"] = best
    print(f"  tf.function raw peer           {best:10,.0f} / {median:10,.0f} (string tensors + "
          f"int64 ts in, probabilities out; max |diff| to Scorer {results['tf_raw_max_diff']:.1e})")
    best, median = time_rows_per_s(lambda b: peer(arrow_to_tensors(b)), arrow_batches)
    results["tf_raw_arrow_rows"] = best
    print(f"  tf.function raw peer, Arrow in {best:10,.0f} / {median:10,.0f} (Arrow -> tensors "
          f"included)")


if __name__ == "__main__":
    raise SystemExit(main())
