"""Tiny hand-made sources in the contract layout, for tests and the ETL benchmark.

Not a world model (that is ``pythia.synth``): rows are plain and predictable so a test can say
exactly which row must land where. ``write_*`` functions write one partition/table each, so a
test can add a bad partition next to good ones.
"""
from __future__ import annotations

import datetime as dt
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pythia import contract
from pythia.features import COUNTRY, DATE, GENDER, GENDER_CLASSES, IMPRESSION_ID, TS, USER_ID
from pythia.paths import join

IMPRESSION_SCHEMA = contract.IMPRESSION_SCHEMA
LABEL_SCHEMA = contract.LABEL_SCHEMA
METRIC_SCHEMA = contract.PROVIDER_METRICS_SCHEMA

_DEFAULTS = {"geo_region": "R1", "metro": "M1", "zip": "00001", "inventory_type": "site",
             "site_or_app": "news.example", "content_category": "news", "supply_vendor": "sv1",
             "ad_format": "banner", "ad_size": "300x250", "device_type": "mobile",
             "device_make": "acme", "device_model": "a1", "os": "android", "os_version": "14",
             "browser": "chrome"}


def at(day: dt.date, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    """A UTC datetime inside ``day``/``hour`` (shorthand for fixtures)."""
    return dt.datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=dt.timezone.utc)


def impression(impression_id: str, user_id: str, ts: dt.datetime, country: str = "US",
               **overrides: Any) -> dict:
    """One valid impression row; ``overrides`` replace any column (use None for null)."""
    row = {IMPRESSION_ID: impression_id, USER_ID: user_id, TS: ts, COUNTRY: country}
    row.update(_DEFAULTS)
    row.update(overrides)
    return row


def _write(table: pa.Table, uri: str) -> str:
    from pythia import storage

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes_atomic(uri, sink.getvalue().to_pybytes())
    return uri


def write_impressions(source: str, day: dt.date, hour: int, rows: Sequence[Mapping],
                      name: str = "part-0.parquet", schema: pa.Schema | None = None) -> str:
    """Write ``rows`` as one Parquet file of the ``date=…/hour=…`` partition; returns its URI.

    ``schema`` overrides the contract schema (to write a wrong-typed or extra column).
    """
    schema = schema or IMPRESSION_SCHEMA
    table = pa.Table.from_pylist([dict(r) for r in rows], schema=schema)
    return _write(table, join(source, "impressions", f"date={day.isoformat()}", f"hour={hour:02d}",
                              name))


def write_labels(source: str, provider: str, rows: Sequence[Mapping],
                 name: str = "part-0.parquet", schema: pa.Schema | None = None) -> str:
    """Write label rows of one provider (keys of LABEL_SCHEMA; missing keys are null)."""
    schema = schema or LABEL_SCHEMA
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows],
                                 schema=schema)
    return _write(table, join(source, "labels", f"provider={provider}", name))


def write_metrics(source: str, rows: Sequence[Mapping], name: str = "part-0.parquet") -> str:
    """Write provider metric rows (keys of METRIC_SCHEMA)."""
    table = pa.Table.from_pylist([{k: r.get(k) for k in METRIC_SCHEMA.names} for r in rows],
                                 schema=METRIC_SCHEMA)
    return _write(table, join(source, "provider_metrics", name))


def write_sample_source(root: str, test_date: dt.date, hours: Iterable[int] = range(24),
                        n_users: int = 40, impressions_per_user_hour: float = 0.5,
                        countries: Sequence[str] = ("US", "GB", "DE", "JP"),
                        providers: Sequence[str] = ("acme", "lucid"), extra_days: int = 0,
                        seed: int = 0) -> dict:
    """A small, valid source: impressions of the 5-day window (+``extra_days`` before/after),
    labels from every provider (the second provider disagrees on ~20% of users) and metrics.

    Returns a summary: the root, the dates written, and the number of impression rows.
    """
    rng = np.random.default_rng(seed)
    users = [f"u{i:05d}" for i in range(n_users)]
    user_country = {u: countries[i % len(countries)] for i, u in enumerate(users)}
    ages = rng.integers(18, 80, size=n_users)
    genders = rng.choice(list(GENDER_CLASSES), size=n_users)
    dates = [test_date - dt.timedelta(days=k) for k in range(4 + extra_days, -1 - extra_days, -1)]
    hours = list(hours)
    n_rows = 0
    for day in dates:
        for hour in hours:
            counts = rng.poisson(impressions_per_user_hour, size=n_users)
            rows = []
            for ui in np.flatnonzero(counts):
                u = users[ui]
                for k in range(int(counts[ui])):
                    sec = int(rng.integers(0, 3600))
                    rows.append(impression(
                        f"{day:%Y%m%d}{hour:02d}-{u}-{k}", u,
                        at(day, hour) + dt.timedelta(seconds=sec), user_country[u],
                        site_or_app=f"site{int(rng.integers(0, 20))}",
                        device_type=["mobile", "desktop", "tablet", "ctv"][int(ages[ui]) % 4],
                        os=["android", "ios", "windows"][int(rng.integers(0, 3))]))
            write_impressions(root, day, hour, rows)
            n_rows += len(rows)
    observed = test_date - dt.timedelta(days=10)
    for pi, provider in enumerate(providers):
        rows = []
        for ui, u in enumerate(users):
            if rng.random() > 0.9:  # each provider covers ~90% of users
                continue
            g, a = str(genders[ui]), int(ages[ui])
            if pi > 0 and rng.random() < 0.2:
                g, a = GENDER_CLASSES[1 - GENDER_CLASSES.index(g)], a + 11  # the other one
            rows.append({USER_ID: u, GENDER: g, "age": a, COUNTRY: user_country[u],
                         "observed_date": observed})
        write_labels(root, provider, rows)
    metrics = []
    for pi, provider in enumerate(providers):
        for c in countries:
            for k in range(3):
                metrics.append({"provider": provider, COUNTRY: c,
                                DATE: test_date - dt.timedelta(days=k),
                                "coverage": 0.9 - 0.1 * pi, "accuracy": 0.8 - 0.05 * pi,
                                "consistency": 0.7, "n_labels": 1000})
    write_metrics(root, metrics)
    return {"root": os.fspath(root), "dates": [d.isoformat() for d in dates], "rows": n_rows,
            "hours": hours}
