"""Writing a synthetic world in the data-contract layout (Parquet) and resolving synthetic sources.

Users and labels come from the seed alone (``population``); each ``date=/hour=`` impression
partition from (seed, date, hour) alone (``impressions``), so partitions are written in any
order, in parallel, one at a time (bounded memory). A world is complete when its ``_SUCCESS``
marker exists; it is written last.
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import hashlib
import io
import json
import multiprocessing as mp
import sys
import time
import urllib.parse
import zipfile
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pythia import storage
from pythia.paths import join
from pythia.synth.impressions import PartitionSampler
from pythia.synth.population import (build_labels, build_provider_metrics, build_users,
                                     realised_weights, truth_table)
from pythia.synth.world import (GENERATOR_VERSION, PRESETS, WorldConfig, build_params,
                                dumps_meta)

SUCCESS = "_SUCCESS"


# ------------------------------------------------------------------ writing

def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")
    return sink.getvalue().to_pybytes()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``np.load``-able .npz with fixed zip timestamps, so equal worlds are equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(arrays[name]), allow_pickle=False)
    return buf.getvalue()


def partition_path(root: str, date: dt.date, hour: int) -> str:
    return join(root, "impressions", f"date={date.isoformat()}", f"hour={hour:02d}",
                "part-00000.parquet")


@contextmanager
def _staging(out: str) -> Iterator[str]:
    """Local: a hidden sibling renamed into place at the end. S3: the prefix itself, where the
    ``_SUCCESS`` object written last is what marks the world complete."""
    if storage.is_s3(out):
        yield out.rstrip("/")
        return
    with storage.staged_dir(out) as tmp:
        yield tmp


_WORKER: dict = {}


def _init_worker(config: WorldConfig, seed: int, base: str) -> None:
    params = build_params(config, seed)
    _WORKER.update(sampler=PartitionSampler(params, build_users(params)), base=base)


def _write_partition(task: tuple[str, int]) -> int:
    date, hour = dt.date.fromisoformat(task[0]), task[1]
    table = _WORKER["sampler"].sample(date, hour)
    storage.write_bytes_atomic(partition_path(_WORKER["base"], date, hour), _parquet_bytes(table))
    return table.num_rows


def resolve_config(preset: str | WorldConfig) -> tuple[str, WorldConfig]:
    """(name, config) for a preset name or a WorldConfig; unknown names raise ValueError."""
    if isinstance(preset, WorldConfig):
        return "custom", preset
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose from {sorted(PRESETS)}")
    return preset, PRESETS[preset]


def generate_world(out: str, preset: str | WorldConfig = "default", seed: int = 0,
                   progress: bool = False, workers: int = 1) -> dict:
    """Write a whole synthetic world (impressions, labels, provider metrics, truth) to ``out``.

    Args:
        out: local folder or ``s3://`` prefix; replaced atomically (local) or completed by the
            ``_SUCCESS`` object written last (S3).
        preset: a name in ``PRESETS`` or a ``WorldConfig``.
        seed: everything is a deterministic function of (config, seed).
        progress: show a tqdm bar over partitions.
        workers: processes writing partitions in parallel (1 = in this process).

    Returns:
        A summary dict: row counts per table, dates, seconds taken.
    """
    # Long on purpose: every write happens inside one ``_staging`` folder, published at the end.
    name, config = resolve_config(preset)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    t_start = time.perf_counter()
    params = build_params(config, seed)
    users = build_users(params)
    labels = build_labels(params, users)
    metrics = build_provider_metrics(params, users, labels)
    tasks = [(d.isoformat(), h) for d in config.dates for h in range(24)]
    rows: list[int] = []
    with _staging(out) as base:
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(tasks), desc=f"synth {name} seed={seed}", unit="part",
                       file=sys.stderr)
        if workers == 1:
            _WORKER.update(sampler=PartitionSampler(params, users), base=base)
            try:
                for t in tasks:
                    rows.append(_write_partition(t))
                    if bar:
                        bar.update()
            finally:
                _WORKER.clear()
        else:
            with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                        initializer=_init_worker,
                                        initargs=(config, seed, base)) as pool:
                for n_rows in pool.map(_write_partition, tasks):
                    rows.append(n_rows)
                    if bar:
                        bar.update()
        if bar:
            bar.close()
        for pname, table in labels.tables.items():
            storage.write_bytes_atomic(join(base, "labels", f"provider={pname}",
                                            "part-00000.parquet"), _parquet_bytes(table))
        storage.write_bytes_atomic(join(base, "provider_metrics", "part-00000.parquet"),
                                   _parquet_bytes(metrics))
        weights = realised_weights(params, users, labels)
        storage.write_bytes_atomic(join(base, "truth", "users.parquet"),
                                   _parquet_bytes(truth_table(params, users)))
        storage.write_bytes_atomic(join(base, "truth", "world.npz"),
                                   _npz_bytes({**params.arrays, **weights}))
        summary = {
            "preset": name, "seed": seed, "dates": [d.isoformat() for d in config.dates],
            "hours": 24, "partitions": len(tasks), "impressions": int(sum(rows)),
            "users": config.n_users,
            "labelled_users": {p: int(len(labels.latest[p][0])) for p in labels.latest},
            "label_rows": {p: t.num_rows for p, t in labels.tables.items()},
            "provider_metrics": metrics.num_rows,
            "rows_per_partition": {"min": int(min(rows)), "max": int(max(rows))},
        }
        storage.write_bytes_atomic(join(base, "truth", "world.json"),
                                   dumps_meta(params, {"summary": summary}))
        summary["seconds"] = round(time.perf_counter() - t_start, 2)
        storage.write_json_atomic(join(base, SUCCESS), summary)
    summary["root"] = out
    return summary


def is_complete(root: str) -> bool:
    """A world folder is complete only once its ``_SUCCESS`` marker exists."""
    return storage.exists(join(root, SUCCESS))


def world_fingerprint(root: str | None) -> str | None:
    """A short hash of a synthetic world's ``truth/world.json`` (its generator version, config,
    seed, vocabularies and summary): the same world always gives the same one, a world
    regenerated under a new generator or preset another; None for a source without one."""
    if not root or not storage.exists(join(root, "truth", "world.json")):
        return None
    meta = storage.read_json(join(root, "truth", "world.json"))
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]


def check_world(root: str, expected: str | None) -> None:
    """Raise a one-line ValueError when the world at ``root`` is not the one whose
    ``world_fingerprint`` a run recorded (``expected``; None: a run from before the record,
    or real data: nothing to check). A cached ``synthetic://`` world is regenerated in place
    when the generator or its preset changes, and a run scored against the new one would be
    measured against another world's truth without a word."""
    got = world_fingerprint(root) if expected is not None else None
    if got != expected:
        raise ValueError(f"{root}: not the synthetic world the run was made on (fingerprint "
                         f"{got}, the run's {expected}): it was regenerated since, by another "
                         "generator or preset; score the run against the world it used, or "
                         "run the flow again")


def _is_current(root: str, config: WorldConfig | None = None) -> bool:
    """A complete world written by this generator: its clock is pythia.geo's offset table
    (worlds written before used fixed offsets without daylight saving), its version is
    ``GENERATOR_VERSION`` (older worlds drew continuous activity) and, given ``config``, it
    was drawn from that config (a preset that changed, e.g. its activity levels, regenerates)."""
    meta = storage.read_json(join(root, "truth", "world.json"))
    return (meta.get("offset_table") is not None
            and meta.get("generator_version") == GENERATOR_VERSION
            and (config is None or WorldConfig.from_json(meta.get("config", {})) == config))


def resolve_source(source: str, cache_root: str) -> str:
    """Turn ``synthetic://PRESET[?seed=N]`` into a generated (cached) folder; pass others through.

    The world goes to ``{cache_root}/{preset}-seed{seed}`` unless a complete copy written by
    this generator from the preset's config is there (an older copy -- fixed UTC offsets,
    another ``GENERATOR_VERSION``, or a preset changed since -- is regenerated).
    """
    if not source.startswith("synthetic://"):
        return source
    parts = urllib.parse.urlsplit(source)
    preset = parts.netloc or "default"
    if parts.path.strip("/"):
        raise ValueError(f"synthetic source {source!r} has a path; use synthetic://PRESET?seed=N")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"seed"}
    if unknown:
        raise ValueError(f"synthetic source {source!r}: unknown option(s) {sorted(unknown)}; "
                         f"only 'seed' is understood")
    try:
        seed = int(query.get("seed", ["0"])[-1])
    except ValueError as exc:
        raise ValueError(f"synthetic source {source!r}: seed must be an integer") from exc
    _, config = resolve_config(preset)  # the unknown-preset error names the choices
    root = join(cache_root, f"{preset}-seed{seed}")
    if is_complete(root) and _is_current(root, config):
        return root
    why = ("the cached copy was drawn by another generator or another config of the preset"
           if is_complete(root) else "no complete cached copy")
    print(f"generating synthetic world {preset!r} seed={seed} in {root} ({why})", flush=True)
    try:
        generate_world(root, preset, seed)
    except OSError:
        # Another process may have published the same world between our check and rename.
        if not (is_complete(root) and _is_current(root, config)):
            raise
    return root


def run_synth_cli(preset: str, out: str, seed: int) -> int:
    """``pythia synth``: generate a world with a progress bar and print a short summary."""
    try:
        summary = generate_world(out, preset, seed, progress=True)
    except ValueError as exc:
        print(f"pythia synth: {exc}", file=sys.stderr)
        return 2
    print(f"wrote synthetic world {summary['preset']!r} seed={seed} to {out}")
    print(f"  dates {summary['dates'][0]} .. {summary['dates'][-1]}, "
          f"{summary['partitions']} hour partitions, {summary['impressions']:,} impressions")
    print(f"  {summary['users']:,} users; labelled per provider: "
          + ", ".join(f"{p}={n:,}" for p, n in summary["labelled_users"].items()))
    print(f"  {summary['provider_metrics']} provider metric rows; {summary['seconds']} s")
    print(json.dumps({k: summary[k] for k in ("impressions", "partitions", "seconds")}))
    return 0
