"""Sampling the synthetic world and writing it in the data-contract layout (Parquet, pyarrow).

Users and labels come from the seed alone; each ``date=/hour=`` impression partition comes from
(seed, date, hour) alone, so partitions can be written in any order, in parallel, one at a time
(bounded memory). A world is complete when its ``_SUCCESS`` marker exists; it is written last.
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import io
import json
import multiprocessing as mp
import sys
import time
import urllib.parse
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pythia import contract, storage
from pythia.config import DEFAULT_AGE_EDGES
from pythia.paths import join
from pythia.synth.world import (AGE_LABELS, CLASS_LABELS, DEVICE_TYPES, MAX_SYNTH_AGE, N_AGE,
                                N_CLASS, PRESETS, WorldConfig, WorldParams, build_params,
                                dumps_meta)

SUCCESS = "_SUCCESS"
# the contract's schemas (pythia.contract is the one place they are defined)
IMPRESSION_SCHEMA = contract.IMPRESSION_SCHEMA
LABEL_SCHEMA = contract.LABEL_SCHEMA
PROVIDER_METRICS_SCHEMA = contract.PROVIDER_METRICS_SCHEMA
_CTV = DEVICE_TYPES.index("ctv")
_EPOCH = dt.date(1970, 1, 1)


# ------------------------------------------------------------------ sampling helpers

class _Categorical:
    """Many categorical distributions (rows of a table) sampled in one vectorised call."""

    def __init__(self, table: np.ndarray):
        p = np.asarray(table, dtype=np.float64).reshape(-1, table.shape[-1])
        total = p.sum(axis=1, keepdims=True)
        cdf = np.cumsum(p, axis=1) / np.where(total > 0, total, 1.0)
        # Pin everything from the last possible category on to exactly 1, so rounding can never
        # pick a trailing zero-probability category; rows with no mass are never sampled.
        last = p.shape[1] - 1 - np.argmax(p[:, ::-1] > 0, axis=1)
        cdf[np.arange(p.shape[1])[None, :] >= last[:, None]] = 1.0
        self.width = p.shape[1]
        self.n_rows = p.shape[0]
        self._flat = (cdf + np.arange(p.shape[0])[:, None]).ravel()

    def sample(self, keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        keys = np.asarray(keys, dtype=np.int64)
        u = rng.random(len(keys))
        pos = np.searchsorted(self._flat, keys + u, side="right")
        return pos - keys * self.width


def _stack(*tables: np.ndarray) -> np.ndarray:
    """Concatenate tables as rows of one categorical table (last axis = categories)."""
    return np.concatenate([t.reshape(-1, t.shape[-1]) for t in tables], axis=0)


def _format_ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """Fixed-width ids ``prefix`` + zero-padded number, built without a Python loop."""
    numbers = np.asarray(numbers, dtype=np.int64)
    n = len(numbers)
    if n and numbers.max() >= 10 ** width:
        raise ValueError(f"id number {numbers.max()} does not fit in {width} digits")
    digits = (numbers[:, None] // 10 ** np.arange(width - 1, -1, -1)) % 10 + ord("0")
    pre = np.frombuffer(prefix.encode(), dtype=np.uint8)
    buf = np.concatenate([np.broadcast_to(pre, (n, len(pre))), digits.astype(np.uint8)], axis=1)
    offsets = (np.arange(n + 1) * buf.shape[1]).astype(np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()),
                                       pa.py_buffer(np.ascontiguousarray(buf).tobytes()))


def _strings(vocab: list[str], idx: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    indices = pa.array(idx.astype(np.int32), mask=None if valid is None else ~valid)
    return pc.take(pa.array(vocab, type=pa.string()), indices)


# ------------------------------------------------------------------ users and labels

@dataclass
class Users:
    """The latent state of every user (index = position; ids are ``u`` + 8 digits)."""

    country: np.ndarray  # int, index into vocab['countries']
    cls: np.ndarray  # int, AgeGender class index
    interest: np.ndarray  # int, latent interest z
    power: np.ndarray  # bool, latent power-user flag
    activity: np.ndarray  # float, expected impressions per hour at mean intensity
    age: np.ndarray  # int, true age in years

    @property
    def ids(self) -> pa.Array:
        return _format_ids("u", np.arange(len(self.cls)), 8)


def build_users(params: WorldParams) -> Users:
    """Draw every user's country, AgeGender, true age, interest, power flag and activity."""
    cfg = params.config
    rng = np.random.default_rng(np.random.SeedSequence([params.seed, 2]))
    n = cfg.n_users
    country = rng.choice(len(params.country_share), n, p=params.country_share)
    cls = _Categorical(params.prior).sample(country, rng)
    interest = _Categorical(params.theta).sample(cls, rng)
    power = rng.random(n) < cfg.power_user_share
    sigma = cfg.activity_sigma
    activity = (float(params.base_rate) * rng.lognormal(-0.5 * sigma ** 2, sigma, n)
                * np.where(power, cfg.power_user_multiplier, 1.0))
    age = _draw_age(cls % N_AGE, rng)
    return Users(country=country, cls=cls, interest=interest, power=power, activity=activity,
                 age=age)


def _draw_age(bucket: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    lo = np.asarray(DEFAULT_AGE_EDGES)[bucket]
    hi = np.append(np.asarray(DEFAULT_AGE_EDGES[1:]) - 1, MAX_SYNTH_AGE)[bucket]
    return (lo + np.floor(rng.random(len(bucket)) * (hi - lo + 1))).astype(np.int64)


@dataclass
class Labels:
    """Raw label rows per provider and each covered user's latest label (what should win)."""

    tables: dict[str, pa.Table]
    latest: dict[str, tuple[np.ndarray, np.ndarray]]  # provider -> (user index, label class)
    rows_per_day: np.ndarray  # (provider, country, label day) label row counts
    covered: np.ndarray  # (provider, country) covered user counts


def build_labels(params: WorldParams, users: Users) -> Labels:
    """Noisy provider labels: per-country coverage, several observations, drifting confusion."""
    cfg = params.config
    rng = np.random.default_rng(np.random.SeedSequence([params.seed, 4]))
    countries = params.vocab["countries"]
    label_dates = [dt.date.fromisoformat(d) for d in params.vocab["label_dates"]]
    D, n_cty = len(label_dates), len(countries)
    user_ids = users.ids
    tables, latest = {}, {}
    rows_per_day = np.zeros((len(cfg.providers), n_cty, D), dtype=np.int64)
    covered_n = np.zeros((len(cfg.providers), n_cty), dtype=np.int64)
    for p, name in enumerate(cfg.providers):
        covered = np.flatnonzero(rng.random(len(users.cls)) < params.coverage[p, users.country])
        covered_n[p] = np.bincount(users.country[covered], minlength=n_cty)
        n_obs = np.minimum(1 + rng.poisson(cfg.extra_observations, len(covered)), D)
        # distinct observation days per user, so "the latest observation" is never a tie
        day_order = np.argsort(rng.random((len(covered), D)), axis=1)
        take = np.arange(D)[None, :] < n_obs[:, None]
        row_user = np.repeat(covered, n_obs)
        row_day = day_order[take]
        cty, true_cls = users.country[row_user], users.cls[row_user]
        conf = _Categorical(params.confusion[p])  # rows: (country, day, true class)
        lab = conf.sample((cty * D + row_day) * N_CLASS + true_cls, rng)
        lab_age, lab_gender = lab % N_AGE, lab // N_AGE
        right_bucket = lab_age == true_cls % N_AGE
        age = np.where(right_bucket, users.age[row_user], _draw_age(lab_age, rng))
        bucket_only = rng.random(len(row_user)) < cfg.bucket_only_share
        np.add.at(rows_per_day[p], (cty, row_day), 1)
        # the latest observation of each user wins
        order = np.lexsort((row_day, row_user))  # by user, then day
        user_sorted, lab_sorted = row_user[order], lab[order]
        ends = np.flatnonzero(np.append(user_sorted[1:] != user_sorted[:-1], True))
        latest[name] = (user_sorted[ends], lab_sorted[ends])
        days_since_epoch = np.array([(d - _EPOCH).days for d in label_dates])[row_day]
        order = np.lexsort((row_user, row_day))  # written by observed date, then user
        table = pa.table({
            "user_id": pc.take(user_ids, pa.array(row_user[order])),
            "gender": _strings(["F", "M"], lab_gender[order]),
            "age": pa.array(age[order].astype(np.int32), mask=bucket_only[order]),
            "age_bucket": _strings(list(AGE_LABELS), lab_age[order], valid=bucket_only[order]),
            "country": _strings(countries, cty[order]),
            "observed_date": pa.array(days_since_epoch[order].astype(np.int32), type=pa.date32()),
        }, schema=LABEL_SCHEMA)
        tables[name] = table
    return Labels(tables=tables, latest=latest, rows_per_day=rows_per_day, covered=covered_n)


def build_provider_metrics(params: WorldParams, users: Users, labels: Labels) -> pa.Table:
    """Published provider quality per provider × country × date: truth plus noise."""
    cfg = params.config
    rng = np.random.default_rng(np.random.SeedSequence([params.seed, 5]))
    countries = params.vocab["countries"]
    users_per_cty = np.bincount(users.country, minlength=len(countries))
    rows = {k: [] for k in PROVIDER_METRICS_SCHEMA.names}
    for p, name in enumerate(cfg.providers):
        for i, cty in enumerate(countries):
            cov_true = (labels.covered[p, i] / users_per_cty[i] if users_per_cty[i]
                        else params.coverage[p, i])
            for d, day in enumerate(params.vocab["label_dates"]):
                conf = params.confusion[p, i, d]
                prior = params.prior[i]
                acc = float(prior @ np.diag(conf))
                consistency = float(prior @ (conf ** 2).sum(axis=1))
                noise = rng.normal(0, cfg.metrics_noise, 3)
                rows["provider"].append(name)
                rows["country"].append(cty)
                rows["date"].append(dt.date.fromisoformat(day))
                rows["coverage"].append(float(np.clip(cov_true + noise[0], 0, 1)))
                rows["accuracy"].append(float(np.clip(acc + noise[1], 0, 1)))
                rows["consistency"].append(float(np.clip(consistency + noise[2], 0, 1)))
                rows["n_labels"].append(int(labels.rows_per_day[p, i, d]))
    return pa.table(rows, schema=PROVIDER_METRICS_SCHEMA)


def realised_weights(params: WorldParams, users: Users, labels: Labels) -> dict[str, np.ndarray]:
    """Activity summed per latent group: the exact impression-level prior of this realised world.

    R[s, country, class, z] over all users; RP[p, ...] over users labelled by provider p; and
    RL[p, ..., label] split by the provider's latest label of each user.
    """
    n_cty, K = len(params.vocab["countries"]), params.config.n_interests
    shape = (2, n_cty, N_CLASS, K)
    idx = (users.power.astype(int), users.country, users.cls, users.interest)
    R = np.zeros(shape)
    np.add.at(R, idx, users.activity)
    P = len(params.config.providers)
    RL = np.zeros((P,) + shape + (N_CLASS,))
    for p, name in enumerate(params.config.providers):
        u, lab = labels.latest[name]
        np.add.at(RL[p], (users.power[u].astype(int), users.country[u], users.cls[u],
                          users.interest[u], lab), users.activity[u])
    return {"R": R, "RP": RL.sum(axis=-1), "RL": RL}


# ------------------------------------------------------------------ impressions

class PartitionSampler:
    """Samples one UTC ``date/hour`` impression partition from (seed, date, hour) alone."""

    def __init__(self, params: WorldParams, users: Users):
        self.params, self.users = params, users
        a = params.arrays
        n_cty, K = len(params.vocab["countries"]), params.config.n_interests
        n_os = len(params.vocab["oses"])
        self._n = {"cty": n_cty, "K": K, "os": n_os}
        self._model = _Categorical(_stack(a["p_model"], a["m_model"]))
        self._osv = _Categorical(_stack(a["p_osv"], a["m_osv"]))
        self._site = _Categorical(_stack(a["p_site"], a["m_site"]))
        self._browser = _Categorical(_stack(a["p_browser"], a["m_browser"]))
        self._format = _Categorical(_stack(a["p_format"], a["m_format"]))
        self._size = _Categorical(a["p_size"])
        self._vendor = _Categorical(a["p_vendor"])
        self._metro = _Categorical(_stack(a["p_metro"], a["m_metro"]))
        self._zip = _Categorical(a["p_zip"])
        self._has_browser = a["p_browser"].sum(axis=(1, 2)) > 0  # per OS
        self._offsets = np.array(params.vocab["utc_offset_minutes"], dtype=np.int64)
        self._user_ids = users.ids
        self._vocab_arrays = {k: pa.array(v, type=pa.string()) for k, v in params.vocab.items()
                              if v and isinstance(v[0], str)}

    def sample(self, date: dt.date, hour: int) -> pa.Table:
        """All impressions whose UTC timestamp falls in [date hour:00, hour+1:00)."""
        p, u_all = self.params, self.users
        rng = np.random.default_rng(np.random.SeedSequence(
            [p.seed, 3, date.toordinal(), hour]))
        # Local time is piecewise constant within the UTC hour: one segment per local hour
        # (two for half-hour offsets such as IN's +05:30).
        t0 = ((date - _EPOCH).days * 24 + hour) * 60  # epoch minutes
        local0 = t0 + self._offsets[u_all.country]
        first_len = 60 - local0 % 60
        segments = [(np.zeros_like(first_len), first_len), (first_len, 60 - first_len)]
        user_parts, start_parts, len_parts = [], [], []
        for start, length in segments:
            lm = local0 + start
            lh, ld = (lm // 60) % 24, ((lm // 1440) + 3) % 7
            intensity = np.where(u_all.power, p.W_power[u_all.cls, ld, lh],
                                 p.W[u_all.cls, ld, lh])
            counts = rng.poisson(u_all.activity * intensity * length / 60.0)
            users_here = np.repeat(np.arange(len(counts)), counts)
            user_parts.append(users_here)
            start_parts.append(start[users_here])
            len_parts.append(length[users_here])
        u = np.concatenate(user_parts)
        start = np.concatenate(start_parts)
        length = np.concatenate(len_parts)
        ts_us = ((t0 + start) * 60_000_000
                 + np.floor(rng.random(len(u)) * length * 60_000_000).astype(np.int64))
        order = np.argsort(ts_us, kind="stable")
        u, ts_us = u[order], ts_us[order]
        return self._features(u, ts_us, date, hour, rng)

    def _features(self, u: np.ndarray, ts_us: np.ndarray, date: dt.date, hour: int,
                  rng: np.random.Generator) -> pa.Table:
        p, users, n = self.params, self.users, len(u)
        n_cty, K, n_os = self._n["cty"], self._n["K"], self._n["os"]
        cty, c, z, s = users.country[u], users.cls[u], users.interest[u], users.power[u]
        lam = p.config.power_user_informative

        def marginal() -> np.ndarray:  # per feature: does this power-user row ignore demography
            return s & (rng.random(n) >= lam)

        m = marginal()
        model = self._model.sample(np.where(m, n_cty * N_CLASS + cty, cty * N_CLASS + c), rng)
        dtype, os_ = p.model_type[model], p.model_os[model]
        m = marginal()
        osv = self._osv.sample(np.where(m, n_os * N_CLASS + os_, os_ * N_CLASS + c), rng)
        m = marginal()
        site = self._site.sample(np.where(m, n_cty * K * 4 + cty * 4 + dtype,
                                          (cty * K + z) * 4 + dtype), rng)
        inv = p.site_inventory[site]
        m = marginal()
        browser = self._browser.sample(np.where(m, n_os * N_CLASS + os_, os_ * N_CLASS + c), rng)
        has_browser = (inv == 0) & (dtype != _CTV) & self._has_browser[os_]
        m = marginal()
        fmt = self._format.sample(np.where(m, 4 * K + dtype, dtype * K + z), rng)
        size = self._size.sample(fmt * 4 + dtype, rng)
        vendor = self._vendor.sample(cty * 2 + inv, rng)
        m = marginal()
        metro = self._metro.sample(np.where(m, n_cty * N_CLASS + cty, cty * N_CLASS + c), rng)
        zip_ = self._zip.sample(metro, rng)
        v = p.vocab
        prefix = f"{date:%Y%m%d}{hour:02d}-"
        cols = {
            "impression_id": _format_ids(prefix, np.arange(n), 8),
            "user_id": pc.take(self._user_ids, pa.array(u)),
            "ts": pa.array(ts_us, type=pa.timestamp("us", tz="UTC")),
            "country": _strings(v["countries"], cty),
            "geo_region": _strings(v["geo_regions"], p.metro_region[metro]),
            "metro": _strings(v["metros"], metro),
            "zip": _strings(v["zips"], zip_),
            "inventory_type": _strings(v["inventory_types"], inv),
            "site_or_app": _strings(v["sites"], site),
            "content_category": _strings(v["categories"], p.site_category[site]),
            "supply_vendor": _strings(v["vendors"], vendor),
            "ad_format": _strings(v["formats"], fmt),
            "ad_size": _strings(v["sizes"], size),
            "device_type": _strings(v["device_types"], dtype),
            "device_make": _strings(v["makes"], p.model_make[model]),
            "device_model": _strings(v["models"], model),
            "os": _strings(v["oses"], os_),
            "os_version": _strings(v["os_versions"], osv),
            "browser": _strings(v["browsers"], browser, valid=has_browser),
        }
        return pa.table(cols, schema=IMPRESSION_SCHEMA)


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


def truth_table(params: WorldParams, users: Users) -> pa.Table:
    """``truth/users.parquet``: every user's true demographics and latent state."""
    return pa.table({
        "user_id": users.ids,
        "country": _strings(params.vocab["countries"], users.country),
        "gender": _strings(["F", "M"], users.cls // N_AGE),
        "age": pa.array(users.age.astype(np.int32)),
        "age_bucket": _strings(list(AGE_LABELS), users.cls % N_AGE),
        "age_gender": _strings(list(CLASS_LABELS), users.cls),
        "interest": _strings(params.vocab["interests"], users.interest),
        "is_power_user": pa.array(users.power),
        "activity": pa.array(users.activity),
    })


def is_complete(root: str) -> bool:
    """A world folder is complete only once its ``_SUCCESS`` marker exists."""
    return storage.exists(join(root, SUCCESS))


def resolve_source(source: str, cache_root: str) -> str:
    """Turn ``synthetic://PRESET[?seed=N]`` into a generated (cached) folder; pass others through.

    The world goes to ``{cache_root}/{preset}-seed{seed}`` unless a complete copy is there.
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
    resolve_config(preset)  # the unknown-preset error names the choices
    root = join(cache_root, f"{preset}-seed{seed}")
    if is_complete(root):
        return root
    try:
        generate_world(root, preset, seed)
    except OSError:
        # Another process may have published the same world between our check and rename.
        if not is_complete(root):
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
