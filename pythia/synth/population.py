"""The world's people: users' latent state, their provider labels, published provider metrics.

All drawn from the seed alone (``build_users``, ``build_labels``, ``build_provider_metrics``);
``realised_weights`` sums the realised activity per latent group for the exact posterior, and
``truth_table`` is ``truth/users.parquet``.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pythia.config import DEFAULT_AGE_EDGES
from pythia.contract import LABEL_SCHEMA, PROVIDER_METRICS_SCHEMA
from pythia.features import (AGE_BUCKET, COUNTRY, DATE, GENDER, GENDER_CLASSES, IS_POWER_USER,
                             USER_ID)
from pythia.synth.activity import activity_level_of
from pythia.synth.sampling import Categorical, format_ids, take_strings
from pythia.synth.world import (AGE_LABELS, CLASS_LABELS, MAX_SYNTH_AGE, N_AGE, N_CLASS,
                                WorldParams)

EPOCH = dt.date(1970, 1, 1)


@dataclass
class Users:
    """The latent state of every user (index = position; ids are ``u`` + 8 digits)."""

    country: np.ndarray  # int, index into vocab['countries']
    cls: np.ndarray  # int, AgeGender class index
    interest: np.ndarray  # int, latent interest z
    power: np.ndarray  # bool, latent power-user flag
    activity: np.ndarray  # float, expected impressions per hour at mean intensity
    level: np.ndarray  # int, activity level (index into params.activity_level)
    age: np.ndarray  # int, true age in years

    @property
    def ids(self) -> pa.Array:
        return format_ids("u", np.arange(len(self.cls)), 8)


def build_users(params: WorldParams) -> Users:
    """Draw every user's country, AgeGender, true age, interest, power flag and activity."""
    cfg = params.config
    rng = np.random.default_rng(np.random.SeedSequence([params.seed, 2]))
    n = cfg.n_users
    country = rng.choice(len(params.country_share), n, p=params.country_share)
    cls = Categorical(params.prior).sample(country, rng)
    interest = Categorical(params.theta).sample(cls, rng)
    power = rng.random(n) < cfg.power_user_share
    sigma = cfg.activity_sigma
    # the same lognormal draw as before levels existed (so every later draw is unchanged),
    # replaced by its level's mean
    level = activity_level_of(rng.lognormal(-0.5 * sigma ** 2, sigma, n), cfg)
    activity = (float(params.base_rate) * params.activity_level[level]
                * np.where(power, cfg.power_user_multiplier, 1.0))
    age = _draw_age(cls % N_AGE, rng)
    return Users(country=country, cls=cls, interest=interest, power=power, activity=activity,
                 level=level, age=age)


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
        conf = Categorical(params.confusion[p])  # rows: (country, day, true class)
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
        days_since_epoch = np.array([(d - EPOCH).days for d in label_dates])[row_day]
        order = np.lexsort((row_user, row_day))  # written by observed date, then user
        table = pa.table({
            USER_ID: pc.take(user_ids, pa.array(row_user[order])),
            GENDER: take_strings(list(GENDER_CLASSES), lab_gender[order]),
            "age": pa.array(age[order].astype(np.int32), mask=bucket_only[order]),
            AGE_BUCKET: take_strings(list(AGE_LABELS), lab_age[order], valid=bucket_only[order]),
            COUNTRY: take_strings(countries, cty[order]),
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
                rows[COUNTRY].append(cty)
                rows[DATE].append(dt.date.fromisoformat(day))
                rows["coverage"].append(float(np.clip(cov_true + noise[0], 0, 1)))
                rows["accuracy"].append(float(np.clip(acc + noise[1], 0, 1)))
                rows["consistency"].append(float(np.clip(consistency + noise[2], 0, 1)))
                rows["n_labels"].append(int(labels.rows_per_day[p, i, d]))
    return pa.table(rows, schema=PROVIDER_METRICS_SCHEMA)


def realised_weights(params: WorldParams, users: Users, labels: Labels) -> dict[str, np.ndarray]:
    """Activity summed per latent group: the exact impression-level prior of this realised world.

    R[s, country, class, z] over all users; RP[p, ...] over users labelled by provider p; and
    RL[p, ..., label] split by the provider's latest label of each user. RN[level, s, country,
    class, z] and RNL[p, level, ..., label] count the users, for the posteriors given a user's
    impressions so far today (they sum over activity levels).
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
    L = len(params.activity_level)
    RN = np.zeros((L,) + shape, dtype=np.int32)
    np.add.at(RN, (users.level,) + idx, 1)
    RNL = np.zeros((P, L) + shape + (N_CLASS,), dtype=np.int32)
    for p, name in enumerate(params.config.providers):
        u, lab = labels.latest[name]
        np.add.at(RNL[p], (users.level[u], users.power[u].astype(int), users.country[u],
                           users.cls[u], users.interest[u], lab), 1)
    return {"R": R, "RP": RL.sum(axis=-1), "RL": RL, "RN": RN, "RNL": RNL}


def truth_table(params: WorldParams, users: Users) -> pa.Table:
    """``truth/users.parquet``: every user's true demographics and latent state."""
    return pa.table({
        USER_ID: users.ids,
        COUNTRY: take_strings(params.vocab["countries"], users.country),
        GENDER: take_strings(list(GENDER_CLASSES), users.cls // N_AGE),
        "age": pa.array(users.age.astype(np.int32)),
        AGE_BUCKET: take_strings(list(AGE_LABELS), users.cls % N_AGE),
        "age_gender": take_strings(list(CLASS_LABELS), users.cls),
        "interest": take_strings(params.vocab["interests"], users.interest),
        IS_POWER_USER: pa.array(users.power),
        "activity": pa.array(users.activity),
    })
