"""The in-between gauge (issue #15): the exact posterior of a reader who knows the generative
tables and every row a model was given (training days: features, time, provider label), but
not the test day nor which user is which beyond the rows' user ids.

Every gauge is linear in the cell weights (``posterior.World``), so this one is
``World(root, params, in_between_weights(world, observed))`` with each weight replaced by its
expectation given the observed rows D: E[RN[cell] | D] = Σ_u P(cell_u = cell | D_u) over all
drawn users (likewise RNL by label, R and RL times the cell's activity). A user's rows are a
thinned Poisson process given its cell (level l, power flag s, country, class c, interest z):

    P(D_u | cell) ∝ exp(-a_ls Σ_parts keep_part[label] H_s,c(part's days)) · a_ls^N_u
                    · Π_rows A_s(x)[c] · B_s(x)[z]

with A, B the posterior's per-row factors (every feature, the metro included, is drawn per
impression, so the product of per-row densities is exact) and the provider's label entering
once per user (``activity.label_given_class``). Users with no row (unlabelled by the
country's chosen provider, or labelled with no kept row) are one closed form per cell.

Activity within a level (docs/in-between-gauge.md item 4) needs no approximation: since
GENERATOR_VERSION 2 every user's activity is its level's rate (``population.build_users``), so
E[a_u 1{cell_u = cell} | D] = rate[l, s] · P(cell_u = cell | D). Not modelled: runs that drop
power users (``drop_power_users`` truncates user-days; the rows must be kept irrespective of
the power flag), runs that hold out users (``holdout_users``: they would count as unseen by
chance) and label rows the ETL rejected (a synthetic world's labels are all valid).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import scipy.sparse as sp

from pythia import storage
from pythia.parquet_footers import iter_dataset_batches
from pythia.features import AGE_BUCKET, COUNTRY, GENDER, LABEL_PROVIDER, USER_ID
from pythia.synth.activity import (DAY, ExposureClock, expected_weights, label_given_class,
                                   row_runs, ts_seconds_of)
from pythia.synth.posterior import World
from pythia.synth.world import CLASS_LABELS, N_CLASS

BATCH_ROWS = 1 << 16  # observed rows per batch (their factors are (rows, 2 * (12 + K)) floats)
USERS_PER_BLOCK = 1024  # users per vectorised block: (users, L, 2, 12, K) floats, ~38 MB at L=16
_TINY = 1e-300  # a zero factor stays finite in the log-sums: the cell is impossible all the same


@dataclass
class Observed:
    """One part of what the reader saw, e.g. a run's train split.

    Attributes:
        rows: the kept rows: ``user_id``, the posterior's impression columns (country,
            geo_region, metro, site_or_app, device_model, os_version, browser, ad_format, ts or
            ts_seconds), ``label_provider`` and the label (``gender``, ``age_bucket``); or a
            function giving them in batches (memory then grows with the users, not the rows).
        days: the UTC days the rows were drawn from (every impression of a labelled user on
            them could have been kept); None: the rows' own UTC dates.
        keep: P(a row is kept | its label), by AgeGender label (e.g. ``F_25-34``); missing
            labels keep every row. A run's ``resample_rates`` of the split.
    """

    rows: pd.DataFrame | Callable[[], Iterable[pd.DataFrame]]
    days: Sequence[dt.date] | None = None
    keep: Mapping[str, float] | None = None

    def batches(self) -> Iterator[pd.DataFrame]:
        """The rows, in one or more non-empty frames."""
        for df in ([self.rows] if isinstance(self.rows, pd.DataFrame) else self.rows()):
            for lo in range(0, len(df), BATCH_ROWS):  # bounded factors per batch
                yield df.iloc[lo:lo + BATCH_ROWS]


@dataclass
class _Users:
    """Per seen user: id, country, the country's provider, label and the rows' evidence."""

    ids: np.ndarray
    country: np.ndarray
    provider: np.ndarray
    label: np.ndarray
    n: np.ndarray  # rows
    log_a: np.ndarray  # (u, 2, N_CLASS) Σ_rows log A_s(x)[c]
    log_b: np.ndarray  # (u, 2, K) Σ_rows log B_s(x)[z]


def in_between_world(world: World, observed: Sequence[Observed],
                     providers: Mapping[str, str] | None = None) -> World:
    """``world`` with its weights replaced by their expectation given ``observed``."""
    return World(world.root, world.params, in_between_weights(world, observed, providers))


def in_between_weights(world: World, observed: Sequence[Observed],
                       providers: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """E[R, RP, RL, RN, RNL | observed rows] (``population.realised_weights``' shapes, float).

    Args:
        world: the generated world (its tables; its realised weights are not read).
        observed: the rows the reader saw, in parts (``Observed``); empty: the population gauge.
        providers: country -> the provider whose labels the rows carry (a run's provider
            map). Countries in neither this nor the rows have no provider: no user of theirs
            can be seen.
    """
    params, cfg = world.params, world.params.config
    countries, names = params.vocab["countries"], params.vocab["providers"]
    L, n_cty, K, P = len(params.activity_level), len(countries), cfg.n_interests, len(names)
    prior = expected_weights(params)["RN"] / cfg.n_users  # (L, 2, country, c, z)
    lc = label_given_class(params)  # (P, country, c, label)
    rate = _rates(world)
    users, days = _seen_users(world, observed)
    chosen = _chosen_providers(params, users, providers)
    heff = _exposure_by_label(world, observed, days)  # (label, country, 2, c)
    RN = np.zeros(prior.shape)
    RNL = np.zeros((P,) + prior.shape + (N_CLASS,))
    for cty, idx, post in _blocks(world, users, prior, lc, rate, heff):
        RN[:, :, cty] += post.sum(axis=0)
        onehot = np.eye(N_CLASS)[users.label[idx]]  # (u, label)
        by_label = (onehot.T @ post.reshape(len(idx), -1)).reshape((N_CLASS,) + post.shape[1:])
        RNL[chosen[cty], :, :, cty] += np.moveaxis(by_label, 0, -1)
    # seen users under the other providers: their labels are independent of the rows given c
    for cty in range(n_cty):
        for p in range(P):
            if p != chosen[cty]:
                RNL[p, :, :, cty] += RN[:, :, cty, :, :, None] * lc[p, cty][:, None, :]
    _add_unseen(RN, RNL, cfg.n_users - len(users.ids), prior, lc, chosen, rate, heff)
    R = np.einsum("ls,lsckz->sckz", rate, RN)
    RL = np.einsum("ls,plsckzy->psckzy", rate, RNL)
    return {"R": R, "RP": RL.sum(axis=-1), "RL": RL, "RN": RN, "RNL": RNL}


def read_observed(split_manifest: Mapping, splits: Sequence[str]) -> list[Observed]:
    """A DemoFlow run's ``splits`` (e.g. train and validation) as ``Observed`` parts: each
    split's kept rows (its Parquet, local or s3://, read in batches when used) and the
    keep-rate of each label (its resample rates)."""
    names = split_manifest["class_names"]
    parts = []
    for s in splits:
        if s not in split_manifest["paths"]:
            raise ValueError(f"split {s!r} is not in the run's split manifest: "
                             f"choose among {sorted(split_manifest['paths'])}")
        rates = split_manifest.get("resample_rates", {}).get(s, {})
        parts.append(Observed(_parquet_batches(split_manifest["paths"][s]),
                              keep={names[int(k)]: float(v) for k, v in rates.items()}))
    return parts


def _parquet_batches(uri: str) -> Callable[[], Iterator[pd.DataFrame]]:
    def batches() -> Iterator[pd.DataFrame]:
        fs, path = storage.filesystem(uri)
        dataset = ds.dataset(path, filesystem=fs, format="parquet")
        for batch in iter_dataset_batches(dataset, BATCH_ROWS):  # a row group at a time
            yield batch.to_pandas()
    return batches


def user_posteriors(world: World, observed: Sequence[Observed]
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(user ids, (u, L, 2, N_CLASS, K) P(level, s, class, z | the user's rows)) per block of
    seen users (each of one country)."""
    params = world.params
    prior = expected_weights(params)["RN"] / params.config.n_users
    users, days = _seen_users(world, observed)
    blocks = _blocks(world, users, prior, label_given_class(params), _rates(world),
                     _exposure_by_label(world, observed, days))
    for _, idx, post in blocks:
        yield users.ids[idx], post


def cell_posteriors(log_prior: np.ndarray, log_label: np.ndarray, log_a: np.ndarray,
                    log_b: np.ndarray, n: np.ndarray, rate: np.ndarray, heff: np.ndarray
                    ) -> np.ndarray:
    """(u, L, S, C, Z) P(cell | a user's rows), for users of one country.

    Args:
        log_prior: (L, S, C, Z) log P(cell).
        log_label: (u, C) log P(labelled by the country's provider, with the user's label | c).
        log_a, log_b: (u, S, C) and (u, S, Z) the rows' summed log factors.
        n: (u,) the user's rows.
        rate: (L, S) activity of each level and power flag.
        heff: (u, S, C) the exposure of the user's days, each part's times its keep-rate of
            the user's label.
    """
    log_w = (log_prior[None] + log_label[:, None, None, :, None]
             + log_a[:, None, :, :, None] + log_b[:, None, :, None, :]
             + (n[:, None, None] * np.log(rate)[None])[..., None, None]
             - (rate[None, :, :, None] * heff[:, None])[..., None])
    top = log_w.reshape(len(n), -1).max(axis=1)
    if not np.all(np.isfinite(top)):
        bad = np.flatnonzero(~np.isfinite(top))[:3].tolist()
        raise ValueError(f"users {bad} (block positions) have rows of zero probability under "
                         f"this world: check the rows' country, provider and label columns")
    w = np.exp(log_w - top[:, None, None, None, None])
    return w / w.sum(axis=(1, 2, 3, 4), keepdims=True)


def unseen_given_cell(rate: np.ndarray, lc: np.ndarray, heff: np.ndarray) -> np.ndarray:
    """(L, S, C) P(a user of the cell has no observed row), for one country.

    Args:
        rate: (L, S) activity of each level and power flag.
        lc: (C, label) P(labelled by the country's provider, with that label | c); zeros
            when the country has no provider.
        heff: (label, S, C) the exposure of the observed days times the keep-rate of the label.
    """
    kept_none = np.exp(-rate[:, None, :, None] * heff[None])  # (L, label, S, C)
    labelled = np.einsum("cy,lysc->lsc", lc, kept_none)
    return 1.0 - lc.sum(axis=1)[None, None, :] + labelled


# ---------------------------------------------------------------- internals

def _rates(world: World) -> np.ndarray:
    """(L, 2) activity of each level and power flag: every user's own (population.build_users)."""
    p = world.params
    return (float(p.base_rate) * p.activity_level[:, None]
            * np.array([1.0, p.config.power_user_multiplier]))


def _blocks(world: World, users: _Users, prior: np.ndarray, lc: np.ndarray, rate: np.ndarray,
            heff: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(country, user indices, their cell posteriors) per block of seen users."""
    with np.errstate(divide="ignore"):
        log_prior, log_lc = np.log(prior), np.log(lc)
    for idx, (cty, p) in row_runs((users.country, users.provider), USERS_PER_BLOCK):
        lab = users.label[idx]
        post = cell_posteriors(log_prior[:, :, cty], log_lc[p, cty][:, lab].T,
                               users.log_a[idx], users.log_b[idx],
                               users.n[idx].astype(np.float64), rate, heff[lab, cty])
        yield cty, idx, post


def _add_unseen(RN: np.ndarray, RNL: np.ndarray, n_unseen: int, prior: np.ndarray,
                lc: np.ndarray, chosen: np.ndarray, rate: np.ndarray, heff: np.ndarray) -> None:
    """Add the users with no row: iid, each in a cell with P(cell | no row), over all countries."""
    n_cty, P = prior.shape[2], lc.shape[0]
    joint = np.empty(prior.shape)
    kept_none = np.exp(-rate[:, None, None, :, None] * heff[None])  # (L, label, country, s, c)
    for cty in range(n_cty):
        own = lc[chosen[cty], cty] if chosen[cty] >= 0 else np.zeros((N_CLASS, N_CLASS))
        joint[:, :, cty] = (prior[:, :, cty]
                            * unseen_given_cell(rate, own, heff[:, cty])[..., None])
    total = joint.sum()
    if n_unseen == 0 or total <= 0:
        return
    scale = n_unseen / total
    unseen = joint * scale
    RN += unseen
    for cty in range(n_cty):
        for p in range(P):
            if p == chosen[cty]:  # labelled with label y, and none of its rows kept
                none_y = np.moveaxis(kept_none[:, :, cty], 1, -1)  # (L, s, c, label)
                RNL[p, :, :, cty] += (scale * prior[:, :, cty, :, :, None]
                                      * (lc[p, cty][None, None] * none_y)[:, :, :, None, :])
            else:
                RNL[p, :, :, cty] += unseen[:, :, cty, :, :, None] * lc[p, cty][:, None, :]


def _chosen_providers(params, users: _Users, providers: Mapping[str, str] | None
                      ) -> np.ndarray:
    """(country,) the provider index whose labels a country's rows carry; -1 for none."""
    countries, names = params.vocab["countries"], params.vocab["providers"]
    chosen = np.full(len(countries), -1)
    for cty, p in zip(users.country, users.provider):
        chosen[cty] = p
    for name, prov in (providers or {}).items():
        if name not in countries or prov not in names:
            raise ValueError(f"providers maps {name!r} -> {prov!r}: the world has countries "
                             f"{countries} and providers {names}")
        i = countries.index(name)
        if chosen[i] >= 0 and chosen[i] != names.index(prov):
            raise ValueError(f"providers maps {name!r} to {prov!r} but its rows carry "
                             f"{names[chosen[i]]!r} labels: pass the run's provider map")
        chosen[i] = names.index(prov)
    mixed = pd.Series(users.provider).groupby(users.country).nunique()
    if (mixed > 1).any():
        raise ValueError(f"rows of country {countries[int(mixed.idxmax())]!r} carry labels of "
                         f"several providers: the gauge needs one provider per country")
    return chosen


def _day_exposure(world: World, clock: ExposureClock, days: np.ndarray) -> np.ndarray:
    """(country, 2, c) the exposure of whole UTC days (epoch day numbers), summed."""
    n_cty = len(world.params.vocab["countries"])
    out = np.zeros((n_cty, 2, N_CLASS))
    for d in days:  # just before the next UTC midnight: the whole day, as the posterior's
        t = np.full(n_cty, d * DAY + DAY - 1e-6)
        out += clock.exposure(t, np.arange(n_cty))
    return out


def _exposure_by_label(world: World, observed: Sequence[Observed],
                       row_days: Sequence[set]) -> np.ndarray:
    """(label, country, 2, c) Σ_parts keep_part[label] · exposure of the part's days (its
    ``days``, else ``row_days``: the epoch days of its rows)."""
    clock = ExposureClock(world.params)
    out = np.zeros((N_CLASS, len(world.params.vocab["countries"]), 2, N_CLASS))
    for part, seen in zip(observed, row_days):
        if part.days is None:
            days = sorted(seen)
        else:
            days = [(d - dt.date(1970, 1, 1)).days for d in part.days]
        keep = np.ones(N_CLASS)
        for name, rate in (part.keep or {}).items():
            if name not in CLASS_LABELS or not 0 < float(rate) <= 1:
                raise ValueError(f"keep-rate {name!r}: {rate!r}: need an AgeGender label of "
                                 f"{list(CLASS_LABELS)} and a rate in (0, 1]")
            keep[CLASS_LABELS.index(name)] = float(rate)
        out += keep[:, None, None, None] * _day_exposure(world, clock, days)[None]
    return out


def _seen_users(world: World, observed: Sequence[Observed]) -> tuple[_Users, list[set]]:
    """Every user with a row in ``observed`` (label, provider, the rows' summed log factors),
    read batch by batch, and each part's epoch days with rows."""
    K = world.params.config.n_interests
    empty = np.zeros(0, dtype=np.int64)
    users = _Users(np.zeros(0, dtype=object), empty, empty, empty, empty,
                   np.zeros((0, 2, N_CLASS)), np.zeros((0, 2, K)))
    days = []
    for part in observed:
        seen: set = set()
        for df in part.batches():
            seen.update(np.unique(ts_seconds_of(df) // DAY).tolist())
            users = _merge_users(users, _batch_users(world, df))
        days.append(seen)
    return users, days


def _merge_users(a: _Users, b: _Users) -> _Users:
    """Two sets of users' evidence summed per user id (a user's country, provider and label
    must agree)."""
    if not len(a.ids):
        return b
    ids, user = np.unique(np.concatenate([a.ids, b.ids]), return_inverse=True)
    out = {}
    for col in ("country", "provider", "label"):
        values = np.concatenate([getattr(a, col), getattr(b, col)])
        out[col] = _one_per_user(ids, user, values, col)
    to_user = sp.csr_matrix((np.ones(len(user)), (user, np.arange(len(user)))),
                            shape=(len(ids), len(user)))
    n = to_user @ np.concatenate([a.n, b.n])
    log_a = to_user @ np.concatenate([a.log_a, b.log_a]).reshape(len(user), -1)
    log_b = to_user @ np.concatenate([a.log_b, b.log_b]).reshape(len(user), -1)
    return _Users(ids=ids, n=n.astype(np.int64), log_a=log_a.reshape(len(ids), 2, -1),
                  log_b=log_b.reshape(len(ids), 2, -1), **out)


def _one_per_user(ids: np.ndarray, user: np.ndarray, values: np.ndarray, col: str
                  ) -> np.ndarray:
    """Per user id, its one value of ``col`` across rows (different values raise)."""
    first = np.zeros(len(ids), dtype=np.int64)
    first[user] = values
    if (first[user] != values).any():
        bad = ids[np.unique(user[first[user] != values])][:3].tolist()
        raise ValueError(f"users {bad} have rows with different {col}s: a user has one "
                         f"{col} (check the observed rows)")
    return first


def _batch_users(world: World, df: pd.DataFrame) -> _Users:
    """The users of one batch of rows, with their rows' summed log factors."""
    params = world.params
    K = params.config.n_interests
    missing = [c for c in (USER_ID, LABEL_PROVIDER, GENDER, AGE_BUCKET) if c not in df.columns]
    if missing:
        raise ValueError(f"observed rows lack column(s) {missing}: pass a split's rows (user, "
                         f"provider and label columns)")
    df = df.reset_index(drop=True)
    ids, user = np.unique(df[USER_ID].to_numpy(dtype=object), return_inverse=True)
    names = (df[GENDER].astype(str) + "_" + df[AGE_BUCKET].astype(str)).to_numpy(dtype=object)
    label = pd.Index(CLASS_LABELS).get_indexer(names)
    if (label < 0).any():
        raise ValueError(f"columns {GENDER!r}/{AGE_BUCKET!r} hold labels outside the world's "
                         f"{list(CLASS_LABELS)}, e.g. {names[label < 0][:3].tolist()} (age "
                         f"edges must be the world's)")
    prov = pd.Index(params.vocab["providers"]).get_indexer(df[LABEL_PROVIDER])
    if (prov < 0).any():
        raise ValueError(f"column {LABEL_PROVIDER!r} holds providers outside the world's "
                         f"{params.vocab['providers']}")
    codes = world._encode(df)  # the posterior's own per-row codes and factors
    f = world._factors(codes, np.arange(len(df)))
    to_user = sp.csr_matrix((np.ones(len(df)), (user, np.arange(len(df)))),
                            shape=(len(ids), len(df)))
    log_a = to_user @ np.log(np.maximum(np.hstack(f.A), _TINY))
    log_b = to_user @ np.log(np.maximum(np.hstack(f.B), _TINY))
    return _Users(ids=ids, country=_one_per_user(ids, user, codes["country"], "country"),
                  provider=_one_per_user(ids, user, prov, "provider"),
                  label=_one_per_user(ids, user, label, "label"),
                  n=np.bincount(user, minlength=len(ids)),
                  log_a=log_a.reshape(-1, 2, N_CLASS), log_b=log_b.reshape(-1, 2, K))


__all__ = ["Observed", "in_between_world", "in_between_weights", "read_observed",
           "user_posteriors",
           "cell_posteriors", "unseen_given_cell"]
